"""`fidoperf list` and `fidoperf predict`."""

from __future__ import annotations

import click

from .options import (
    build_layout,
    build_model,
    build_settings,
    build_workload,
    check_writable,
    format_option,
    hardware_option,
    layout_options,
    model_options,
    output_option,
    settings_options,
    workload_options,
    write_output,
)

# --------------------------------------------------------------------------- list


@click.command("list")
@format_option(("table", "json"))
def list_cmd(fmt):
    """The shipped hardware profiles and models."""
    from ..present import fmt as F
    from ..specs import hardware_names, load_hardware, load_model, model_names

    hws = [load_hardware(n) for n in hardware_names()]
    models = [load_model(n) for n in model_names()]
    if fmt == "json":
        from ..costmodel.prediction import hardware_dict, model_dict

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


@click.command()
@model_options
@hardware_option()
@workload_options
@layout_options
@settings_options
@click.option("--per-layer", is_flag=True, help="Table: one row per operator and layer, not summed over layers.")
@format_option()
@output_option()
def predict(fmt, output, per_layer, hardware, **kw):
    """Predict FLOPs, bytes, intensity and time per operator, and per-sample totals.

    Every option has a default: a bare `fidoperf predict` is FiDO-Base on TPU v4 in
    the FiDO paper's setting. Decoder rows are summed over the decoding steps.
    """
    from ..costmodel.prediction import predict as run_predict
    from ..specs import load_hardware

    check_writable(output)
    pred = run_predict(build_model(**kw), load_hardware(hardware), build_workload(**kw), build_settings(**kw),
                       build_layout(**kw))
    from ..present.report import prediction_text

    if fmt == "json":
        from ..present.fmt import to_json

        text = to_json(pred.to_dict())
    elif fmt == "csv":
        text = pred.ops.to_csv(index=False)
    else:
        text = prediction_text(pred, markdown=fmt == "markdown", per_layer=per_layer)
    write_output(text, output)
    for w in pred.warnings:
        click.echo(f"warning: {w}", err=True)


# Commands defined in their own modules register themselves on `cli` when imported;
