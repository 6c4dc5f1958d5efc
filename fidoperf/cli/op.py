"""`fidoperf op KIND`: the time of single kernels (and collectives), one shape from
options or a table of shapes from a CSV file."""

from __future__ import annotations

import click

from .options import InputError, check_writable, hardware_option, output_option, settings_options, write_atomic

KIND_HELP = {
    "gemm": "y[m, n] = x[m, k] @ W[k, n]: --m --n --k",
    "decode_attention": "one query token per sequence over a key/value cache: --batch --kv-len --heads "
                        "--kv-heads --head-dim",
    "prefill_attention": "self-attention of --seq-len tokens: --batch --seq-len --heads --kv-heads --head-dim "
                         "[--causal]",
    "all_reduce": "collective over --chips chips of --bytes per chip (nccl-tests' size)",
    "all_gather": "collective: --bytes is the gathered result on each chip",
    "reduce_scatter": "collective: --bytes is the input on each chip",
    "all_to_all": "collective: --bytes is each chip's buffer, all but 1/chips of it sent to the others",
}
SHAPE_OPTIONS = ("m", "n", "k", "batch", "kv_len", "seq_len", "heads", "kv_heads", "head_dim", "bytes", "chips")


def _shape_options(f):
    for name in reversed(SHAPE_OPTIONS):
        f = click.option(f"--{name.replace('_', '-')}", name, type=click.IntRange(min=1), default=None,
                         help=f"Column {name} of a one-row shape table.")(f)
    return click.option("--causal/--no-causal", default=None,
                        help="prefill_attention: causal (decoder-style) or bidirectional (the T5 encoder; "
                             "the default).")(f)


@click.command("op")
@click.argument("kind", metavar="KIND")
@_shape_options
@hardware_option(default="h100-sxm")
@click.option("--dtype", default="bf16", show_default=True,
              type=click.Choice(["bf16", "fp16", "fp32", "tf32", "int8", "fp8"]),
              help="Data type of inputs and outputs, and the matmul rate (as in `fidoperf predict`).")
@settings_options
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="A CSV table of shapes with the kind's columns (one kernel per row).")
@output_option("Write the table here (.csv or .json; the suffix picks the format).")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format; CSV and JSON keep SI units (s, FLOP, bytes).")
def op(kind, hardware, dtype, input_path, output, fmt, overlap, roofline, implementation, causal, **shape):
    """Predict single kernels: FLOPs, bytes, intensity, compute, memory and fixed time,
    the total and the bound, from the same model `fidoperf predict` adds up.

    \b
    KIND is one of:
      gemm               y[m, n] = x[m, k] @ W[k, n]: --m --n --k
      decode_attention   one query token per sequence over a key/value cache:
                         --batch --kv-len --heads --kv-heads --head-dim
      prefill_attention  self-attention of --seq-len tokens: --batch --seq-len
                         --heads --kv-heads --head-dim [--causal]
      all_reduce, all_gather, reduce_scatter, all_to_all
                         --bytes (per chip, as nccl-tests counts) --chips

    Example: fidoperf op gemm --m 32 --n 2048 --k 768 -H a100-80gb
    """
    from ..costmodel.optable import input_columns, kinds, op_table

    if kind not in kinds():
        raise InputError(f"KIND: unknown kernel kind {kind!r} (known: {', '.join(kinds())})")
    columns = input_columns(kind)
    given = {k: v for k, v in shape.items() if v is not None}
    if causal is not None:
        given["causal"] = causal
    stray = [k for k in given if k not in columns]
    if stray:
        raise InputError(f"--{stray[0].replace('_', '-')}: not a column of {kind} "
                         f"(its columns: {', '.join(columns)})")
    if output is not None and fmt == "table":
        fmt = output.suffix.lstrip(".").lower()
        if fmt not in ("csv", "json"):
            raise InputError(f"{output}: cannot tell the format from the suffix (use .csv or .json, or --format)")
    check_writable(output)
    if input_path is not None:
        if given:
            raise InputError(f"--input and --{next(iter(given)).replace('_', '-')} both given; give a table or "
                             "one shape")
        from ..specs.tables import read_table

        required = {c: "positive_int" for c in columns if c != "causal"}
        optional = {"causal": ("bool", False)} if "causal" in columns else None
        shapes = read_table(input_path, required, "--input", optional=optional)
    else:
        missing = [c for c in columns if c not in given and c != "causal"]
        if missing:
            raise InputError(f"--{missing[0].replace('_', '-')}: missing for {kind} (give "
                             f"{' '.join('--' + c.replace('_', '-') for c in columns)}, or --input FILE)")
        shapes = {c: [v] for c, v in given.items()}
    from ..specs import load_hardware

    hw = load_hardware(hardware)
    table = op_table(kind, shapes, hw, dtype, overlap=overlap, efficiency="roofline" if roofline else "derated",
                     implementation=implementation)
    settings = table.attrs.get("settings", {})
    if fmt == "json":
        from ..present.fmt import to_json

        text = to_json({"kind": kind, "settings": settings, "rows": table.to_dict(orient="records")})
    elif fmt == "csv":
        text = table.to_csv(index=False)
    else:
        from ..present.report import op_table_text

        text = op_table_text(kind, table, settings)
    if output is None:
        click.echo(text.rstrip("\n"))
    else:
        write_atomic(output, (text if text.endswith("\n") else text + "\n").encode())
        click.echo(f"wrote {output} ({len(table)} rows)", err=True)
