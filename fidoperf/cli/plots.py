"""`fidoperf` commands: roofline, breakdown, quality (plots) and plan (capacity
planning). See fidoperf/cli/options.py for the shared options; matplotlib and pandas are
imported inside the commands."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (
    WHOLE,
    InputError,
    build_layout,
    build_settings,
    build_workload,
    check_writable,
    hardware_option,
    layout_options,
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
@layout_options
@settings_options
@output_option("Write the figure here (.png, .svg or .pdf); without it, print the table (ms).")
def breakdown(models, hardware, output, **kw):
    """Time per sample split into encoder, cross-attention K/V projection and the
    decoder's self-attention, cross-attention, MLP and the rest, one bar per model;
    with a layout of several chips, communication is a segment of its own."""
    _figure_output(output)
    from ..costmodel.prediction import predict
    from ..present import plots
    from ..specs import load_hardware

    hw = load_hardware(hardware)
    wl, settings = build_workload(**kw), build_settings(**kw)
    layout = build_layout(**kw)
    preds = [predict(m, hw, wl, settings, layout) for m in _models(models)]
    table = plots.breakdown_table(preds)
    if output is None:
        from ..present.fmt import text_table

        cols = {c: name for c, name, _ in plots.BREAKDOWN if c != "comm_s" or table[c].any()}
        show = table[["model"]].copy()
        for c, name in cols.items():
            show[name.split(" (")[0] + " ms"] = (table[c] * 1e3).map(lambda v: f"{v:.3g}")
        show["total ms"] = (table["total_s"] * 1e3).map(lambda v: f"{v:.3g}")
        click.echo(f"Time per sample on {_setting_text(wl, hw.name)}\n" + text_table(show))
        return
    where = "" if layout.single_chip else f", {layout.label()}"
    ax = plots.breakdown(None, table, title=f"Time per sample on {_setting_text(wl, hw.name)}{where}")
    save_figure(ax, output)


# --------------------------------------------------------------------------- scaling


@click.command()
@click.option("--model", "-m", default="fido-base-xl", show_default=True, help=VARIANT_HELP.split(";")[0] + ".")
@hardware_option(default="h100-sxm")
@workload_options
@click.option("--chips", "chip_counts", default="1,2,4,8", show_default=True,
              help="Comma-separated chip counts; every tensor parallelism that divides a count and splits the "
                   "model's heads is evaluated (the rest of the chips are data-parallel replicas).")
@click.option("--shard-kv", type=click.Choice(["heads", "batch"]), default="heads", show_default=True,
              help="How tensor-parallel chips split the cross-attention keys and values.")
@settings_options
@output_option("Write the figure here (.png, .svg or .pdf); without it, print the table.")
def scaling(model, hardware, chip_counts, shard_kv, output, **kw):
    """Time per sample and throughput per chip against chips, one line per tensor
    parallelism: what splitting a replica buys and what its communication costs."""
    _figure_output(output)
    from ..present import plots
    from ..specs import load_hardware

    try:
        counts = sorted({int(x) for x in chip_counts.replace(" ", "").split(",") if x})
    except ValueError:
        raise InputError(f"--chips: expected comma-separated whole numbers, got {chip_counts!r}") from None
    if not counts or min(counts) < 1:
        raise InputError(f"--chips: expected whole numbers of at least 1, got {chip_counts!r}")
    hw = load_hardware(hardware)
    m = load_variant(model)
    wl, settings = build_workload(**kw), build_settings(**kw)
    table = plots.scaling_table(m, hw, wl, counts, settings, shard_kv)
    if table.empty:
        raise InputError(f"--chips: no tensor parallelism of {chip_counts} splits the heads of {m.name}")
    if output is None:
        from ..present import fmt as F

        show = table.assign(**{
            "time/sample": table["time_per_sample_s"].map(F.seconds),
            "samples/s/chip": table["samples_per_s_per_chip"].map(lambda v: f"{v:.3g}"),
            "comm share": table["comm_share"].map(lambda v: f"{100 * v:.1f}%"),
            "memory/chip": table["peak_memory_bytes"].map(lambda v: F.si(v, "B")),
            "fits": table["fits"].map({True: "yes", False: "no"}),
        })[["chips", "tensor_parallel", "replicas", "time/sample", "samples/s/chip", "comm share", "memory/chip",
            "fits"]]
        click.echo(f"{m.name} on {_setting_text(wl, hw.name)}\n" + F.text_table(show))
        return
    axes = plots.scaling(None, table, title=f"{m.name} on {_setting_text(wl, hw.name)}")
    save_figure(axes[0], output)


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


@click.command()
@click.option("--qps", type=float, required=True, help="Target load, queries per second.")
@click.option("--latency-ms", type=float, required=True,
              help="Latency target (ms) for the --percentile of queries, queueing included.")
@click.option("--percentile", type=float, default=99.0, show_default=True, help="Percentile the target applies to.")
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
@click.option("--policy", type=click.Choice(["static", "continuous"]), default="continuous", show_default=True,
              help="Batching policy simulated (see `fidoperf simulate --help`).")
@click.option("--arrivals", type=click.Choice(["poisson", "gamma", "deterministic"]), default="poisson",
              show_default=True, help="Arrival process simulated.")
@click.option("--cv", type=float, default=2.0, show_default=True,
              help="Coefficient of variation of the gaps between arrivals (--arrivals gamma).")
@click.option("--max-batch", type=int, default=128, show_default=True,
              help="Most requests in a batch per chip; memory may allow fewer.")
@click.option("--max-wait-ms", type=float, default=10.0, show_default=True,
              help="static: dispatch a batch that is not full once its oldest request waited this long.")
@click.option("--requests", "-n", type=int, default=4000, show_default=True,
              help="Simulated requests per rate tried by the search.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulated arrivals.")
@click.option("--layouts", type=click.Choice(["all", "colocated", "single"]), default="all", show_default=True,
              help="Parallel layouts searched: all (replicas of T tensor-parallel chips, T up to the chips of one "
                   "node, and separate encoder and decoder pools), colocated (no pools), single (one chip per copy).")
@click.option("--time-budget-s", type=float, default=60.0, show_default=True,
              help="Wall time for the whole plan's rate searches; layouts left when it runs out are reported as not "
                   "evaluated (each model and chip evaluates at least one).")
@click.option(
    "--price-per-chip-hour",
    type=float,
    help="USD per chip-hour for every chip [default: each profile's list price, with its source].",
)
@settings_options
@output_option("Write a report here: .md (Markdown) or .html (self-contained page), tables and figures.")
def plan(qps, latency_ms, percentile, models, hardware, policy, arrivals, cv, max_batch, max_wait_ms, requests,
         seed, layouts, time_budget_s, price_per_chip_hour, output, **kw):
    """Chips, and how to spread the model over them, that serve --qps with the
    --percentile latency within --latency-ms at the least cost, for every model and chip.

    For each model and chip, the parallel layouts (--layouts) that can hold a request
    and meet the target alone are simulated (`fidoperf simulate`, --policy and
    --arrivals) to find the highest rate one unit of the layout (a replica of T chips, or
    a set of encoder and decoder pools) sustains under the target; chips = ceil(qps /
    that rate) x chips per unit, and the cheapest layout wins, within --time-budget-s.
    The policy, the arrival process, the layouts and the other assumptions are printed
    in the report.
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
    serving = P.ServingPlan(percentile=percentile, policy=policy, arrivals=arrivals, cv=cv, max_batch=max_batch,
                            max_wait_ms=max_wait_ms, requests=requests, seed=seed, layouts=layouts,
                            time_budget_s=time_budget_s)
    result = P.plan(
        _models(models),
        [load_hardware(h) for h in hardware],
        wl,
        qps,
        latency_ms,
        price_per_chip_hour=price_per_chip_hour,
        serving=serving,
        settings=build_settings(**kw),
    )
    table = R.best_table(result)
    pct = f"p{percentile:g}"
    cols = ["rank", "model", "hardware", "layout", "units", "queries/s/chip", "chips", f"{pct} ms", "J/query",
            "USD/1M queries", "note"]
    short = table[[c for c in cols if c in table.columns]]
    click.echo(
        f"{qps:g} queries/s, {pct} within {latency_ms:g} ms; {wl.passages} passages x {wl.passage_len} tokens, "
        f"{wl.target_len} target tokens; {serving.describe()}\n{R.layouts_line(result)}\n{R.summary_line(result)}"
        f"\n\n{text_table(short)}"
    )
    for note in result.notes:
        click.echo(f"note: {note}")
    if output is None:
        return
    from ..present import plots
    from ..present import serving_plots as SP

    figures = [
        R.Figure(title, caption, figure_bytes(ax, "png", dpi=110))
        for title, caption, ax in plots.plan_figures(result) + SP.plan_search_figures(result)
    ]
    text = (R.report_html if output.suffix.lower() == ".html" else R.report_markdown)(result, figures)
    write_atomic(output, text.encode())
    click.echo(f"wrote {output}", err=True)
