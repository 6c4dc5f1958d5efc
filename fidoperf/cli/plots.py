"""`fidoperf` commands: roofline, breakdown, quality (plots) and plan (capacity
planning). See fidoperf/cli/options.py for the shared options; matplotlib and pandas are
imported inside the commands."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (
    WHOLE,
    InputError,
    build_settings,
    build_workload,
    check_writable,
    hardware_option,
    output_option,
    settings_options,
    workload_options,
    write_atomic,
)

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
REPORT_SUFFIXES = (".md", ".html")
ROOFLINE_MODELS = ("fid-base", "fid-base+mqa", "fid-base+lsa", "fido-base")
BREAKDOWN_MODELS = ("fid-base", "fid-large", "fido-base", "fido-base-xl", "fido-large-xxl")
PLAN_MODELS = ("fid-base", "fido-base", "fido-base-xl")
VARIANT_HELP = (
    "Model name or YAML file; repeat for several. A name may carry what-if suffixes: +mqa (one "
    "key/value head), +lsa (cross-attention every 6th decoder layer), +lsa<K>, +kv<G>, "
    "e.g. fid-base+mqa+lsa."
)


def load_variant(text: str):
    """``fid-base+mqa+lsa4`` -> fid-base with one key/value head and cross-attention
    every 4th decoder layer, named as written."""
    from ..errors import SpecError
    from ..specs import load_model, override_model
    from ..specs.yamlio import is_file

    if is_file(text) or "+" not in text:
        return load_model(text)
    base, *mods = text.split("+")
    changes: dict = {}
    for mod in mods:
        key = mod.strip().lower()
        try:
            if key == "mqa":
                changes["kv_heads"] = 1
            elif key.startswith("lsa"):
                changes["cross_attn_every"] = int(key[3:] or 6)
            elif key.startswith("kv"):
                changes["kv_heads"] = int(key[2:])
            else:
                raise ValueError
        except ValueError:
            raise SpecError(
                "--model", "", f"unknown what-if {mod!r} in {text!r} (known: +mqa, +lsa, +lsa<K>, +kv<G>)"
            ) from None
    try:
        model = override_model(load_model(base), **changes)
    except SpecError as err:  # the library names its field; the user typed --model NAME+...
        if err.where != "options":
            raise
        raise SpecError("--model", text, err.problem) from None
    return model.replace(name=text)


def _figure_output(output: Path | None) -> None:
    if output is not None and output.suffix.lower() not in FIGURE_SUFFIXES:
        raise InputError(
            f"{output}: unknown figure format {output.suffix or '(none)'!r} "
            f"(use {', '.join(FIGURE_SUFFIXES)})"
        )
    check_writable(output)


def figure_bytes(ax, fmt: str = "png", dpi: int = 150) -> bytes:
    import io

    buf = io.BytesIO()
    ax.figure.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_metadata(fmt))
    return buf.getvalue()


def _metadata(fmt: str) -> dict:
    # Reproducible files: no creation date in PDF/SVG.
    if fmt == "pdf":
        return {"CreationDate": None}
    if fmt == "svg":
        return {"Date": None}
    return {}


def save_figure(ax, output: Path) -> None:
    """Render the whole figure, then write it in one step (no half-written file)."""
    write_atomic(output, figure_bytes(ax, output.suffix.lower().lstrip(".")))
    click.echo(f"wrote {output}", err=True)


def _models(names):
    return [load_variant(n) for n in names]


def _setting_text(wl, hw_name: str) -> str:
    return (
        f"{hw_name}: {wl.passages} passages × {wl.passage_len} tokens, {wl.target_len} target tokens, "
        f"batch {wl.batch}, {wl.weight_dtype}"
    )


# --------------------------------------------------------------------------- roofline


@click.command()
@click.option(
    "--model", "-m", "models", multiple=True, default=ROOFLINE_MODELS, show_default=True, help=VARIANT_HELP
)
@hardware_option(multiple=True)
@workload_options
@settings_options
@output_option("Write the figure here (.png, .svg or .pdf); without it, print the plotted points.")
def roofline(models, hardware, output, **kw):
    """Roofline of every operator of one or more models (log-log).

    Points: each operator, layers summed, at (FLOP/byte, achieved FLOP/s) on the first
    --hardware; lines: the compute and bandwidth roofs and ridge point of every
    --hardware. The default compares FiD-Base with +MQA, +LSA and FiDO-Base.
    """
    _figure_output(output)
    from ..costmodel.prediction import predict
    from ..present import plots
    from ..specs import load_hardware

    hws = [load_hardware(h) for h in hardware]
    wl, settings = build_workload(**kw), build_settings(**kw)
    preds = [predict(m, hws[0], wl, settings) for m in _models(models)]
    points = plots.roofline_points_many(preds)
    if output is None:
        from ..present import fmt as F
        show = points.assign(
            FLOPs=points["flops"].map(lambda v: F.si(v, "FLOP")),
            bytes=points["bytes"].map(lambda v: F.si(v, "B")),
            **{
                "FLOP/B": points["intensity"].map(lambda v: f"{v:.3g}"),
                "achieved": points["achieved_flops_per_s"].map(lambda v: F.si(v, "FLOP/s")),
                "time": points["time_s"].map(F.seconds),
            },
        )
        click.echo(
            F.text_table(
                show[
                    [
                        "variant",
                        "phase",
                        "op",
                        "layers",
                        "FLOPs",
                        "bytes",
                        "FLOP/B",
                        "achieved",
                        "time",
                        "bound",
                    ]
                ]
            )
        )
        return
    ax = plots.roofline(
        None,
        hws,
        points,
        title=f"Roofline on {_setting_text(wl, hws[0].name)}\n"
        "(layers summed; decoder ops summed over all steps)",
    )
    save_figure(ax, output)


# --------------------------------------------------------------------------- breakdown


@click.command()
@click.option(
    "--model", "-m", "models", multiple=True, default=BREAKDOWN_MODELS, show_default=True, help=VARIANT_HELP
)
@hardware_option()
@workload_options
@settings_options
@output_option("Write the figure here (.png, .svg or .pdf); without it, print the table (ms).")
def breakdown(models, hardware, output, **kw):
    """Time per sample split into encoder, cross-attention K/V projection and the
    decoder's self-attention, cross-attention, MLP and the rest, one bar per model."""
    _figure_output(output)
    from ..costmodel.prediction import predict
    from ..present import plots
    from ..specs import load_hardware

    hw = load_hardware(hardware)
    wl, settings = build_workload(**kw), build_settings(**kw)
    preds = [predict(m, hw, wl, settings) for m in _models(models)]
    table = plots.breakdown_table(preds)
    if output is None:
        from ..present.fmt import text_table

        cols = {c: name for c, name, _ in plots.BREAKDOWN}
        show = table[["model"]].copy()
        for c, name in cols.items():
            show[name.split(" (")[0] + " ms"] = (table[c] * 1e3).map(lambda v: f"{v:.3g}")
        show["total ms"] = (table["total_s"] * 1e3).map(lambda v: f"{v:.3g}")
        click.echo(f"Time per sample on {_setting_text(wl, hw.name)}\n" + text_table(show))
        return
    ax = plots.breakdown(None, table, title=f"Time per sample on {_setting_text(wl, hw.name)}")
    save_figure(ax, output)


# --------------------------------------------------------------------------- quality


@click.command()
@hardware_option()
@workload_options
@settings_options
@click.option(
    "--quality-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your own quality YAML (same fields as the shipped fidoperf/data/quality.yaml).",
)
@output_option("Write the figure here (.png, .svg or .pdf); without it, print the table.")
def quality(hardware, output, quality_file, **kw):
    """Published exact match of FiD and FiDO models against their predicted time per
    sample. Figures not found are left empty, never estimated; each has a source."""
    _figure_output(output)
    from ..present import plots
    from ..specs import load_hardware

    hw = load_hardware(hardware)
    wl, settings = build_workload(**kw), build_settings(**kw)
    table = plots.quality_table(hw, wl, settings, quality_file)
    if output is None:
        from ..present.fmt import text_table

        allrows = plots.load_quality(quality_file)
        times = {(r.model, r.dataset): r for r in table.itertuples()}
        show = allrows.assign(
            EM=allrows["exact_match"].map(lambda v: "not found" if v != v else f"{v:g}"),
            passages=[
                times[(m, d)].passages_used if (m, d) in times else "-"
                for m, d in zip(allrows["model"], allrows["dataset"], strict=True)
            ],
            **{
                f"ms/sample ({hw.name})": [
                    f"{times[(m, d)].time_per_sample_s * 1e3:.3g}" if (m, d) in times else "-"
                    for m, d in zip(allrows["model"], allrows["dataset"], strict=True)
                ]
            },
        )
        click.echo(
            text_table(show[["model", "dataset", "EM", "passages", f"ms/sample ({hw.name})", "source"]])
        )
        return
    ax = plots.quality_vs_cost(
        None,
        table,
        title=f"Published exact match against predicted time per sample on "
        f"{hw.name} ({wl.passage_len} tokens per passage, batch {wl.batch})",
    )
    save_figure(ax, output)


# --------------------------------------------------------------------------- plan


def _batches(text):
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"--batches: expected comma-separated whole numbers, got {text!r}") from None


@click.command()
@click.option("--qps", type=float, required=True, help="Target load, queries per second.")
@click.option("--latency-ms", type=float, required=True, help="Latency limit per query (ms).")
@click.option(
    "--model", "-m", "models", multiple=True, default=PLAN_MODELS, show_default=True, help=VARIANT_HELP
)
@hardware_option(multiple=True)
@click.option("--passages", "-p", type=WHOLE, default=40, show_default=True, help="Passages per query.")
@click.option(
    "--passage-len", type=WHOLE, default=256, show_default=True, help="Tokens per passage, question included."
)
@click.option(
    "--target-len", type=WHOLE, default=32, show_default=True, help="Generated tokens (decoding steps)."
)
@click.option(
    "--dtype",
    default="bf16",
    show_default=True,
    type=click.Choice(["bf16", "fp16", "fp32", "tf32", "int8", "fp8"]),
    help="Weights/activations/KV cache and matmul rate (as in `fidoperf predict`).",
)
@click.option(
    "--batches",
    help="Comma-separated batch sizes to try [default: powers of two 1..512 that fit, "
    "plus the largest batch that fits].",
)
@click.option(
    "--price-per-chip-hour",
    type=float,
    help="USD per chip-hour for every chip [default: each profile's list price, with its source].",
)
@settings_options
@output_option("Write a report here: .md (Markdown) or .html (self-contained page), tables and figures.")
def plan(qps, latency_ms, models, hardware, batches, price_per_chip_hour, output, **kw):
    """Chips and batch size that serve --qps within --latency-ms at the least cost,
    for every model and chip.

    A query's latency is the time of its batch (no queueing beyond one batch); every
    chip holds a full copy of the model and serves one batch at a time. The
    assumptions are printed in the report.
    """
    if output is not None and output.suffix.lower() not in REPORT_SUFFIXES:
        raise InputError(
            f"{output}: unknown report format {output.suffix or '(none)'!r} "
            f"(use {', '.join(REPORT_SUFFIXES)})"
        )
    check_writable(output)
    from ..present import plan_report as R
    from ..present.fmt import text_table
    from ..specs import load_hardware
    from ..whatif import plan as P

    wl = build_workload(batch=1, **kw)
    result = P.plan(
        _models(models),
        [load_hardware(h) for h in hardware],
        wl,
        qps,
        latency_ms,
        price_per_chip_hour=price_per_chip_hour,
        batches=_batches(batches),
        settings=build_settings(**kw),
    )
    table = R.best_table(result)
    cols = ["rank", "model", "hardware", "batch", "chips", "latency ms", "J/query", "USD/1M queries", "note"]
    short = table[[c for c in cols if c in table.columns]]
    click.echo(
        f"{qps:g} queries/s within {latency_ms:g} ms; {wl.passages} passages x {wl.passage_len} tokens, "
        f"{wl.target_len} target tokens\n{R.summary_line(result)}\n\n{text_table(short)}"
    )
    for note in result.notes:
        click.echo(f"note: {note}")
    if output is None:
        return
    from ..present import plots
    figures = [
        R.Figure(title, caption, figure_bytes(ax, "png", dpi=110))
        for title, caption, ax in plots.plan_figures(result)
    ]
    text = (R.report_html if output.suffix.lower() == ".html" else R.report_markdown)(result, figures)
    write_atomic(output, text.encode())
    click.echo(f"wrote {output}", err=True)
