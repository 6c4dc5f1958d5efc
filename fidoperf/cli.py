"""The `fidoperf` command line: a thin layer over the library.

Heavy imports (pandas, jax, matplotlib) happen inside the commands, so that
``fidoperf --help`` starts in well under half a second.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

FORMATS = ("table", "csv", "json", "markdown")


class InputError(click.ClickException):
    """One line on stderr, exit status 2, no traceback."""

    exit_code = 2


class FidoGroup(click.Group):
    def invoke(self, ctx):
        from .errors import SpecError

        try:
            return super().invoke(ctx)
        except SpecError as err:
            raise InputError(str(err)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:  # click's own four-line usage errors, as one line
            raise InputError(err.format_message()) from None
        except MemoryError:
            raise InputError("out of memory: try a smaller grid or suite") from None


@click.group(cls=FidoGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fidoperf")
def cli():
    """Roofline performance model of FiD and FiDO (Fusion-in-Decoder) inference.

    Predicts FLOPs, memory traffic, operational intensity and latency per operator
    of T5 encoder-decoder models that read many retrieved passages, on datasheet or
    measured hardware profiles, and checks the predictions against JAX runs.
    """


def main():
    cli(prog_name="fidoperf")


# --------------------------------------------------------------------------- shared options


def model_options(f):
    """--model and the architecture overrides, which make any what-if one command."""
    opts = [
        click.option("--model", "-m", default="fido-base", show_default=True,
                     help="Shipped model name (see `fidoperf list`) or a model YAML file."),
        click.option("--kv-heads", type=int, help="Decoder key/value heads (self and cross): 1 = MQA."),
        click.option("--cross-attn-every", type=int, help="K: cross-attention in decoder layers with (i+1) % K == 0."),
        click.option("--encoder-size", help="Replace the encoder by this T5 v1.1 size (small ... xxl)."),
        click.option("--decoder-size", help="Replace the decoder by this T5 v1.1 size (small ... xxl)."),
        click.option("--decoder-layers", type=int, help="Number of decoder layers."),
        click.option("--encoder-layers", type=int, help="Number of encoder layers."),
    ]
    return functools.reduce(lambda g, o: o(g), reversed(opts), f)


def workload_options(f):
    opts = [
        click.option("--passages", "-p", type=int, default=40, show_default=True, help="Passages per sample."),
        click.option("--passage-len", type=int, default=256, show_default=True,
                     help="Tokens per passage, question included."),
        click.option("--target-len", type=int, default=32, show_default=True,
                     help="Generated tokens (decoding steps)."),
        click.option("--batch", "-b", type=int, default=24, show_default=True, help="Samples decoded together."),
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


def settings_options(f):
    f = click.option("--overlap", type=click.Choice(["roofline", "no_overlap"]), default="roofline",
                     show_default=True,
                     help="roofline: time = max(compute, memory); no_overlap: their sum.")(f)
    f = click.option("--no-efficiency", is_flag=True,
                     help="Ignore the profile's efficiency factors (raw datasheet peaks).")(f)
    return f


def format_option(formats=FORMATS, default="table"):
    return click.option("--format", "-f", "fmt", type=click.Choice(formats), default=default, show_default=True,
                        help="Output format; CSV and JSON keep SI units (s, FLOP, bytes).")


def output_option(help_text="Write to this file instead of standard output."):
    return click.option("--output", "-o", type=click.Path(path_type=Path), help=help_text)


def build_model(model, kv_heads=None, cross_attn_every=None, encoder_size=None, decoder_size=None,
                decoder_layers=None, encoder_layers=None, **_):
    from .specs import load_model, override_model

    return override_model(load_model(model), kv_heads=kv_heads, cross_attn_every=cross_attn_every,
                          encoder_size=encoder_size, decoder_size=decoder_size,
                          decoder_layers=decoder_layers, encoder_layers=encoder_layers)


def build_workload(passages, passage_len, target_len, batch, dtype, **_):
    from .specs import Workload

    return Workload.with_dtype(dtype, passages=passages, passage_len=passage_len,
                               target_len=target_len, batch=batch)


def build_settings(overlap="roofline", no_efficiency=False, **_):
    from .prediction import Settings

    return Settings(overlap=overlap, efficiency=not no_efficiency)


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


# --------------------------------------------------------------------------- list


@cli.command("list")
@format_option(("table", "json"))
def list_cmd(fmt):
    """The shipped hardware profiles and models."""
    from . import fmt as F
    from .specs import hardware_names, load_hardware, load_model, model_names

    hws = [load_hardware(n) for n in hardware_names()]
    models = [load_model(n) for n in model_names()]
    if fmt == "json":
        from .prediction import hardware_dict, model_dict

        click.echo(F.to_json({"hardware": [hardware_dict(h) for h in hws],
                              "models": [model_dict(m) for m in models]}))
        return
    import pandas as pd

    hw_rows = pd.DataFrame([{
        "hardware": h.name, "bf16": F.si(h.peak_flops_per_s.get("bf16"), "FLOP/s"),
        "memory": F.si(h.hbm_capacity_bytes, "B"), "bandwidth": F.si(h.hbm_bytes_per_s, "B/s"),
        "ridge (bf16)": f"{h.ridge_point('bf16'):.0f}" if "bf16" in h.peak_flops_per_s else "-",
        "kind": h.kind, "description": h.description} for h in hws])
    m_rows = pd.DataFrame([{
        "model": m.name, "encoder": f"{m.encoder.size or 'custom'} x{m.encoder.num_layers}",
        "decoder": f"{m.decoder.size or 'custom'} x{m.decoder.num_layers}",
        "heads/kv": f"{m.decoder.num_heads}/{m.decoder.num_kv_heads}",
        "K": m.decoder.cross_attn_every, "cross layers": m.decoder.num_cross_layers} for m in models])
    click.echo("Hardware profiles (dense peaks; 1 GB = 1e9 B)\n" + F.text_table(hw_rows))
    click.echo("\nModels (decoder heads / key-value heads; K = cross-attention period)\n" + F.text_table(m_rows))


# --------------------------------------------------------------------------- predict


@cli.command()
@model_options
@hardware_option()
@workload_options
@settings_options
@click.option("--per-layer", is_flag=True, help="Table: one row per operator and layer, not summed over layers.")
@format_option()
@output_option()
def predict(fmt, output, per_layer, hardware, **kw):
    """Predict FLOPs, bytes, intensity and time per operator, and per-sample totals.

    Every option has a default: a bare `fidoperf predict` is FiDO-Base on TPU v4 in
    the FiDO paper's setting. Decoder rows are summed over the decoding steps.
    """
    from .prediction import predict as run_predict
    from .specs import load_hardware

    check_writable(output)
    pred = run_predict(build_model(**kw), load_hardware(hardware), build_workload(**kw), build_settings(**kw))
    from .report import prediction_text

    if fmt == "json":
        from .fmt import to_json

        text = to_json(pred.to_dict())
    elif fmt == "csv":
        text = pred.ops.to_csv(index=False)
    else:
        text = prediction_text(pred, markdown=fmt == "markdown", per_layer=per_layer)
    write_output(text, output)
    for w in pred.warnings:
        click.echo(f"warning: {w}", err=True)


# Commands defined in their own modules register themselves on `cli` when imported;
# those modules import only click at the top, like this one.
from . import cli_bench, cli_plots, cli_sweep  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
