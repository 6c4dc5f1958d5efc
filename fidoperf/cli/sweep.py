"""`fidoperf` commands: sweep (see fidoperf/cli/options.py for the shared options)."""

from __future__ import annotations

import click

from .options import (
    InputError,
    build_layout,
    build_model,
    build_settings,
    build_workload,
    check_writable,
    hardware_option,
    layout_options,
    model_options,
    output_option,
    settings_options,
    workload_options,
    write_atomic,
)

OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")
MODEL_OVERRIDES = (
    "kv_heads",
    "cross_attn_every",
    "encoder_size",
    "decoder_size",
    "decoder_layers",
    "encoder_layers",
)
VARY_HELP = (
    "Repeatable; the grid is the cartesian product of all of them. VALUES is a comma list; for "
    "whole-number fields a:b is every integer from a to b inclusive and a:b:s steps by s "
    "(batch=1,8,32  passages=10:100:10). Fields: batch, passages, passage_len, target_len, dtype, "
    "model, kv_heads, cross_attn_every, encoder_size, decoder_size, encoder_layers, decoder_layers, "
    "hardware (names or YAML files), overlap (roofline|no_overlap), efficiency (derated|roofline), "
    "implementation (xla|tuned|eager), chips, tensor_parallel, shard_kv (heads|batch), encoder_chips, "
    "decoder_chips (0: no separate pools)."
)


@click.command()
@model_options
@hardware_option()
@workload_options
@layout_options
@settings_options
@click.option("--vary", "vary_specs", multiple=True, metavar="FIELD=VALUES", help=VARY_HELP)
@output_option(
    "Write every configuration to this file; the suffix picks the format: .csv, .json "
    "(records) or .parquet. SI units (s, FLOP, bytes)."
)
@click.option(
    "--time-limit-ms",
    type=click.FloatRange(min=0, min_open=True),
    help="Summary: keep configurations whose batch latency (encode and decode one batch) is at most this.",
)
@click.option(
    "--memory-limit-gb",
    type=click.FloatRange(min=0, min_open=True),
    help="Summary: keep configurations whose peak memory is at most this (1 GB = 1e9 B).",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Summary: show the N fastest configurations by time per sample.",
)
@click.pass_context
def sweep(ctx, vary_specs, output, time_limit_ms, memory_limit_gb, top, hardware, **kw):
    """Evaluate the model over a grid of what-if configurations.

    The options without --vary set the base configuration; each --vary replaces one
    field of it by a list of values. Every configuration is kept: one that does not
    fit in memory is marked (fits = false), an impossible one (kv heads that do not
    divide the query heads, K larger than the decoder layers, a dtype the chip lacks)
    has its reason in the `error` column.

    The terminal shows the grid size, how many configurations fit, and the fastest
    --top configurations by time per sample among those that fit and meet the limits.
    --output is written in full first; if then no configuration fits and meets the
    limits, the command says so in one line and exits with status 2.

    Example: fidoperf sweep --vary batch=1:64 --vary kv_heads=1,4,12 -o grid.parquet
    """
    import time

    from ..specs import load_hardware, load_model
    from ..whatif.sweep import parse_vary
    from ..whatif.sweep import sweep as run_sweep

    if output is not None and output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(
            f"{output}: unknown output format {output.suffix or '(no suffix)'!r} "
            f"(use {', '.join(OUTPUT_SUFFIXES)})"
        )
    check_writable(output)
    if output is not None and output.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError(
                f"{output}: writing Parquet needs pyarrow (pip install 'fidoperf[parquet]')"
            ) from None

    vary = parse_vary(vary_specs)
    options = dict(kw, hardware=hardware)
    for field in vary:
        source = ctx.get_parameter_source(field)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            raise InputError(f"--{field.replace('_', '-')} and --vary {field} both given; keep one")
    # Model overrides apply to every model of the grid (also a varied --model), so they
    # go in as one-value fields.
    fixed = {f: [options[f]] for f in MODEL_OVERRIDES if options[f] is not None and f not in vary}
    if fixed:
        from ..errors import SpecError
        from ..whatif.sweep import check_vary

        for f, value in fixed.items():
            try:
                check_vary({f: value})
            except SpecError as err:
                raise InputError(f"--{f.replace('_', '-')}: {err.problem}") from None
        vary = check_vary({**vary, **fixed})
        if not any(f in vary for f in ("model", *MODEL_OVERRIDES) if f not in fixed):
            # One model for the whole grid: an override that cannot apply to it is an
            # error in that option, not a grid of invalid rows.
            build_model(**options)

    base_model = load_model(options["model"])
    base_hw = load_hardware(hardware)
    base_wl = build_workload(**kw)
    settings = build_settings(**kw)
    start = time.perf_counter()
    df = run_sweep(base_model, base_hw, base_wl, vary, settings, progress=True, layout=build_layout(**kw))
    elapsed = time.perf_counter() - start

    if output is not None:
        write_atomic(output, _serialise(df, output.suffix.lower()))
    limits = {
        "time_limit_s": None if time_limit_ms is None else time_limit_ms / 1e3,
        "memory_limit_bytes": None if memory_limit_gb is None else memory_limit_gb * 1e9,
    }
    text, empty = _summary(df, vary, base_model, base_hw, base_wl, settings, elapsed, top, output, **limits)
    click.echo(text)
    if empty:
        raise InputError(empty)


def _serialise(df, suffix: str) -> bytes:
    if suffix == ".csv":
        return df.to_csv(index=False).encode()
    if suffix == ".json":
        return df.to_json(orient="records", double_precision=15).encode()
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _summary(df, vary, model, hw, wl, settings, elapsed, top, output, time_limit_s, memory_limit_bytes):
    """The terminal summary, and the one-line reason to fail (or None)."""
    import pandas as pd

    from ..present import fmt as F
    from ..whatif.sweep import best, dtype_label

    n = len(df)
    shown = [f for f in vary if len(vary[f]) > 1]
    grid = " x ".join(f"{f} {len(vary[f])}" for f in shown) or "one point"
    invalid = df["error"].notna()
    fits = df["fits"]
    lines = [
        f"{n:,} configuration{'s' if n != 1 else ''} ({grid}) around {model.name} on {hw.name}, "
        f"{dtype_label(wl)}, {settings.overlap}; evaluated in {elapsed:.3g} s",
        f"{n - int(invalid.sum()):,} valid, {int(fits.sum()):,} fit in memory (1 GB = 1e9 B)",
    ]
    if invalid.any():
        lines.append(f"{int(invalid.sum()):,} invalid, e.g. {df.loc[invalid, 'error'].iloc[0]}")
    top_rows, ok = best(df, top, time_limit_s, memory_limit_bytes)
    limit_text = ", ".join(
        ([f"batch latency <= {F.seconds(time_limit_s)}"] if time_limit_s is not None else [])
        + ([f"peak memory <= {F.si(memory_limit_bytes, 'B')}"] if memory_limit_bytes is not None else [])
    )
    if limit_text:
        lines.append(f"limits: {limit_text}: {int(ok.sum()):,} of the {int(fits.sum()):,} that fit meet them")
    if output is not None:
        lines.append(f"wrote {output} ({n:,} rows)")
    if not ok.any():
        if invalid.all():
            reason = f"no valid configuration: {df['error'].iloc[0]}"
        elif not fits.any():
            reason = "no configuration fits in memory"
        else:
            reason = f"no configuration meets the limits ({limit_text})"
        return "\n".join(lines), reason + (f"; {output} was written" if output is not None else "")
    if top:
        cols = shown or ["model", "hardware", "batch"]
        table = pd.DataFrame(
            {
                "rank": range(1, len(top_rows) + 1),
                **{c: top_rows[c].astype(object).to_numpy() for c in cols},
                "time/sample": top_rows["time_per_sample_s"].map(F.seconds).to_numpy(),
                "batch latency": top_rows["batch_time_s"].map(F.seconds).to_numpy(),
                "step": top_rows["time_per_step_s"].map(F.seconds).to_numpy(),
                "samples/s": top_rows["samples_per_s"].map(lambda v: f"{v:.3g}").to_numpy(),
                "peak memory": top_rows["peak_memory_bytes"].map(lambda v: F.si(v, "B")).to_numpy(),
                "max batch": top_rows["max_batch"].astype(object).to_numpy(),
                "decoder bound": top_rows["decoder_bound"].astype(object).to_numpy(),
            }
        )
        qualifier = "fit in memory" + (" and meet the limits" if limit_text else "")
        lines += [
            "",
            f"Fastest {len(top_rows)} by time per sample among the {int(ok.sum()):,} that {qualifier}",
            F.text_table(table),
        ]
    return "\n".join(lines), None
