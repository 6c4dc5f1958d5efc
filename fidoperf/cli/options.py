"""Shared pieces of the command line: option decorators, builders of specs from
options, the one-line input error, and all-or-nothing output files.

Command modules import this one and click only at the top; heavy imports (pandas,
jax, matplotlib) happen inside the commands, so that ``fidoperf --help`` stays fast.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

FORMATS = ("table", "csv", "json", "markdown")
# Whole-number options are checked by click, whose one-line message names the option.
WHOLE = click.IntRange(min=1)


class InputError(click.ClickException):
    """One line on stderr, exit status 2, no traceback."""

    exit_code = 2



# --------------------------------------------------------------------------- shared options


def model_options(f):
    """--model and the architecture overrides, which make any what-if one command."""
    opts = [
        click.option("--model", "-m", default="fido-base", show_default=True,
                     help="Shipped model name (see `fidoperf list`) or a model YAML file."),
        click.option("--kv-heads", type=WHOLE, help="Decoder key/value heads (self and cross): 1 = MQA."),
        click.option("--cross-attn-every", type=WHOLE,
                     help="K: cross-attention in decoder layers with (i+1) % K == 0."),
        click.option("--encoder-size", help="Replace the encoder by this T5 v1.1 size (small ... xxl)."),
        click.option("--decoder-size", help="Replace the decoder by this T5 v1.1 size (small ... xxl)."),
        click.option("--decoder-layers", type=WHOLE, help="Number of decoder layers."),
        click.option("--encoder-layers", type=WHOLE, help="Number of encoder layers."),
    ]
    return functools.reduce(lambda g, o: o(g), reversed(opts), f)


def workload_options(f):
    opts = [
        click.option("--passages", "-p", type=WHOLE, default=40, show_default=True, help="Passages per sample."),
        click.option("--passage-len", type=WHOLE, default=256, show_default=True,
                     help="Tokens per passage, question included."),
        click.option("--target-len", type=WHOLE, default=32, show_default=True,
                     help="Generated tokens (decoding steps)."),
        click.option("--batch", "-b", type=WHOLE, default=24, show_default=True, help="Samples decoded together."),
        click.option("--dtype", default="bf16", show_default=True,
                     type=click.Choice(["bf16", "fp16", "fp32", "tf32", "int8", "fp8"]),
                     help="Weights/activations/KV cache and matmul rate; int8 and fp8 quantise the weights "
                          "(W8A8 rate), keeping activations and caches in bf16."),
    ]
    return functools.reduce(lambda g, o: o(g), reversed(opts), f)


def hardware_option(default="tpu-v4", multiple=False):
    return click.option("--hardware", "-H", default=(default,) if multiple else default, multiple=multiple,
                        show_default=True,
                        help="Shipped hardware name (see `fidoperf list`) or a hardware YAML file"
                             + (" (repeat for several)." if multiple else "."))


def layout_options(f):
    """How the model is spread over chips (fidoperf.specs.layout)."""
    opts = [
        click.option("--chips", type=click.IntRange(min=1), default=None,
                     help="Chips used: tensor-parallel groups times data-parallel replicas [default: "
                          "--tensor-parallel, or the two pools' sum]."),
        click.option("--tensor-parallel", "-t", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Chips that split one replica Megatron-style (heads and MLP width; one all-reduce per "
                          "sub-layer)."),
        click.option("--shard-kv", type=click.Choice(["heads", "batch"]), default="heads", show_default=True,
                     help="How tensor-parallel chips split the cross-attention keys and values: by key/value "
                          "head (replicated when T exceeds them), or over the batch (Pope et al.; two all-to-alls "
                          "per cross-attention)."),
        click.option("--encoder-chips", type=click.IntRange(min=1), default=None,
                     help="Separate encoder pool of this many chips (with --decoder-chips)."),
        click.option("--decoder-chips", type=click.IntRange(min=1), default=None,
                     help="Separate decoder pool of this many chips (with --encoder-chips)."),
    ]
    return functools.reduce(lambda g, o: o(g), reversed(opts), f)


def settings_options(f):
    f = click.option("--overlap", type=click.Choice(["roofline", "no_overlap"]), default="roofline",
                     show_default=True,
                     help="roofline: time = max(compute, memory); no_overlap: their sum.")(f)
    f = click.option("--roofline", "--no-efficiency", "roofline", is_flag=True,
                     help="The pure lower bound of the same implementation: datasheet peaks, no fixed costs per "
                          "kernel, the implementation's own byte counts (default: the derated model of the "
                          "chip's kernels). --no-efficiency is an alias.")(f)
    f = click.option("--implementation", type=click.Choice(["xla", "tuned", "eager"]), default=None,
                     help="How the kernels are implemented: xla (T5X/JAX: unfused attention), tuned (GPU serving "
                          "engines: flash attention, fused element-wise), eager (PyTorch eager, Hugging Face T5). "
                          "[default: the hardware profile's default_implementation]")(f)
    return f


def format_option(formats=FORMATS, default="table"):
    return click.option("--format", "-f", "fmt", type=click.Choice(formats), default=default, show_default=True,
                        help="Output format; CSV and JSON keep SI units (s, FLOP, bytes).")


def output_option(help_text="Write to this file instead of standard output."):
    return click.option("--output", "-o", type=click.Path(path_type=Path), help=help_text)


# --------------------------------------------------------------------------- errors name the options
# The library names its own fields (``workload: batch``, ``options: decoder.num_kv_heads``);
# the builders below turn those into the option the user typed.

WORKLOAD_OPTIONS = {
    "passages": "--passages", "passage_len": "--passage-len", "target_len": "--target-len", "batch": "--batch",
    "weight_dtype": "--dtype", "act_dtype": "--dtype", "kv_dtype": "--dtype", "compute_dtype": "--dtype",
}
# A model field -> the overrides that change it, the one that sets it directly first.
MODEL_OPTIONS = {
    "decoder.num_kv_heads": ("kv_heads", "decoder_size"),
    "decoder.cross_attn_every": ("cross_attn_every", "decoder_layers", "decoder_size"),
    "decoder.num_layers": ("decoder_layers", "decoder_size"),
    "encoder.num_layers": ("encoder_layers", "encoder_size"),
}  # any other field of a stack: its --encoder-size / --decoder-size


def option_name(param: str) -> str:
    return "--" + param.replace("_", "-")


def model_option_error(err, given: dict):
    """The SpecError of ``override_model`` (where "options", field "decoder.num_kv_heads")
    as one naming the option: ``--kv-heads: ...``; when the field was not set directly but
    follows from another option (K of the model larger than --decoder-layers), that option
    and the field: ``--decoder-layers: decoder.cross_attn_every: ...``."""
    from ..errors import SpecError

    if err.where != "options":
        return err
    stack = err.field.split(".")[0]
    related = MODEL_OPTIONS.get(err.field, (f"{stack}_size",))
    for i, param in enumerate(related):
        if param in given:
            direct = i == 0 and not param.endswith("_size")
            return SpecError(option_name(param), "" if direct else err.field, err.problem)
    return err


def build_model(model, kv_heads=None, cross_attn_every=None, encoder_size=None, decoder_size=None,
                decoder_layers=None, encoder_layers=None, **_):
    from ..errors import SpecError
    from ..specs import load_model, override_model

    given = {k: v for k, v in dict(kv_heads=kv_heads, cross_attn_every=cross_attn_every,
                                   encoder_size=encoder_size, decoder_size=decoder_size,
                                   decoder_layers=decoder_layers, encoder_layers=encoder_layers).items()
             if v is not None}
    base = load_model(model)
    try:
        return override_model(base, **given)
    except SpecError as err:
        raise model_option_error(err, given) from None


def build_workload(passages, passage_len, target_len, batch, dtype, **_):
    from ..errors import SpecError
    from ..specs import Workload

    try:
        return Workload.with_dtype(dtype, passages=passages, passage_len=passage_len,
                                   target_len=target_len, batch=batch)
    except SpecError as err:
        if err.where == "workload" and err.field in WORKLOAD_OPTIONS:
            raise SpecError(WORKLOAD_OPTIONS[err.field], "", err.problem) from None
        raise


def build_layout(chips=None, tensor_parallel=1, shard_kv="heads", encoder_chips=None, decoder_chips=None, **_):
    from ..errors import SpecError
    from ..specs.layout import Layout

    try:
        return Layout(chips=chips, tensor_parallel=tensor_parallel, shard_kv=shard_kv,
                      encoder_chips=encoder_chips, decoder_chips=decoder_chips)
    except SpecError as err:  # name the option the user typed
        raise InputError(f"--{err.field.replace('_', '-')}: {err.problem}") from None


def build_settings(overlap="roofline", roofline=False, implementation=None, **_):
    from ..costmodel.prediction import Settings

    return Settings(overlap=overlap, efficiency="roofline" if roofline else "derated",
                    implementation=implementation)


def write_output(text: str, output: Path | None) -> None:
    """Write all of it or nothing: a temporary file renamed into place."""
    if output is None:
        click.echo(text)
        return
    write_atomic(output, (text if text.endswith("\n") else text + "\n").encode())


def write_atomic(path: Path, data: bytes) -> None:
    import os
    import tempfile

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: cannot write: folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise InputError(f"{path}: cannot write: {err.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a written file gets the usual mode
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write: {err.strerror}") from None


def check_writable(path: Path | None) -> None:
    """Fail before long work starts if the output cannot be written."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    import os

    if not parent.is_dir():
        raise InputError(f"{path}: cannot write: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: cannot write: permission denied")
    if path.is_dir():
        raise InputError(f"{path}: cannot write: it is a folder")

