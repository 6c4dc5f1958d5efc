"""Human-readable summaries of a prediction (terminal table or Markdown)."""

from __future__ import annotations

import math

import pandas as pd

from ..costmodel.prediction import Prediction
from . import fmt as F

PHASE_ORDER = {"encoder": 0, "cross_kv": 1, "decoder": 2}


def summed_over_layers(ops: pd.DataFrame) -> pd.DataFrame:
    """One row per phase and operator, layers added up; bound and intensity recomputed."""
    num = ["calls", "flops", "bytes", "weight_bytes", "act_bytes", "self_kv_bytes", "cross_kv_bytes",
           "compute_s", "memory_s", "time_s"]
    g = ops.assign(layers=1).groupby(["phase", "op", "kind"], sort=False)[num + ["layers"]].sum().reset_index()
    g["intensity"] = g["flops"] / g["bytes"]
    g["bound"] = g["compute_s"].ge(g["memory_s"]).map({True: "compute", False: "memory"})
    return g.sort_values("phase", key=lambda s: s.map(PHASE_ORDER), kind="stable")


def _human_ops(df: pd.DataFrame, total_time: float, per_layer: bool) -> pd.DataFrame:
    out = pd.DataFrame({
        "phase": df["phase"],
        **({"layer": df["layer"].astype(object).where(df["layer"].notna(), "-")} if per_layer else
           {"layers": df["layers"]}),
        "op": df["op"],
        "FLOPs": df["flops"].map(lambda v: F.si(v, "FLOP")),
        "bytes": df["bytes"].map(lambda v: F.si(v, "B")),
        "FLOP/B": df["intensity"].map(lambda v: f"{v:.3g}"),
        "bound": df["bound"],
        "time": df["time_s"].map(F.seconds),
        "share": (df["time_s"] / total_time).map(lambda v: f"{100 * v:.1f}%"),
    })
    return out


def prediction_text(pred: Prediction, markdown: bool = False, per_layer: bool = False) -> str:
    m, hw, wl, t, mem = pred.model, pred.hardware, pred.workload, pred.totals, pred.memory
    dec = m.decoder
    ridge = hw.peak(wl.compute_dtype) / hw.hbm_bytes_per_s
    head = (
        f"{m.name} on {hw.name} ({hw.kind}): {wl.passages} passages x {wl.passage_len} tokens, "
        f"{wl.target_len} target tokens, batch {wl.batch}, weights {wl.weight_dtype}, "
        f"activations {wl.act_dtype}, KV {wl.kv_dtype}, matmuls at {wl.compute_dtype} peak\n"
        f"decoder: {dec.num_layers} layers, {dec.num_heads} query / {dec.num_kv_heads} key-value heads, "
        f"cross-attention every {dec.cross_attn_every} ({dec.num_cross_layers} layers); "
        f"ridge point {ridge:.0f} FLOP/B; overlap model: {pred.settings.overlap}\n"
        f"implementation: {pred.settings.implementation}; {pred.settings.efficiency} model"
        + (" (datasheet peaks, no fixed costs)" if pred.settings.efficiency == "roofline" else
           " (kernel efficiencies and fixed costs of the profile)")
    )
    rows = []
    for name, key in [("encoder", "encoder"), ("cross-attn K/V projection", "cross_kv"),
                      ("decoder (all steps)", "decoder")]:
        rows.append({"per sample": name, "FLOPs": t[f"{key}_flops"], "bytes": t[f"{key}_bytes"],
                     "time_s": t[f"{key}_time_s"]})
    rows.append({"per sample": "total", "FLOPs": t["total_flops"], "bytes": t["total_bytes"],
                 "time_s": t["time_per_sample_s"]})
    phases = pd.DataFrame([{
        "per sample": r["per sample"], "FLOPs": F.si(r["FLOPs"], "FLOP"), "bytes": F.si(r["bytes"], "B"),
        "FLOP/B": f"{r['FLOPs'] / r['bytes']:.3g}", "time": F.seconds(r["time_s"]),
        "share": f"{100 * r['time_s'] / t['time_per_sample_s']:.1f}%"} for r in rows])
    lay = pred.layout
    per_chip = "" if lay.single_chip else " per chip"
    layout_line = ""
    if not lay.single_chip:
        layout_line = (f"layout: {lay.label()}; communication {F.seconds(t['comm_time_s'])} per sample "
                       f"({100 * t['comm_time_s'] / t['time_per_sample_s']:.1f}% of its time), exposed "
                       f"{F.seconds(t['comm_exposed_s'])}"
                       + (f"; the encoder pool ships {t['shipped'].replace('_', ' ')}" if lay.pooled else "")
                       + f"; {t['chip_seconds_per_sample'] * 1e3:.3g} chip-ms per sample\n")
    summary = (
        layout_line
        + f"time per sample {F.seconds(t['time_per_sample_s'])} (one batch through one replica: "
        f"{F.seconds(t['batch_time_s'])}), per decoding step (batch) {F.seconds(t['time_per_step_s'])}; "
        f"{t['samples_per_s']:.3g} samples/s, {t['tokens_per_s']:.3g} tokens/s "
        + ("per chip" if lay.single_chip else f"over {lay.total_chips} chips") + "\n"
        f"memory{per_chip}: weights {F.si(mem['weight_bytes'], 'B')}, "
        f"cross-attn K/V {F.si(mem['cross_kv_bytes'], 'B')}, "
        f"self-attn K/V {F.si(mem['self_kv_bytes'], 'B')}, peak {F.si(mem['peak_bytes'], 'B')} of "
        f"{F.si(mem['capacity_bytes'], 'B')}; largest batch that fits: {mem['max_batch']}"
        + ("" if mem["fits"] else "  ** DOES NOT FIT **")
    )
    ops = pred.ops if per_layer else summed_over_layers(pred.ops)
    op_table = F.text_table(_human_ops(ops, t["batch_time_s"], per_layer), markdown)
    title = "Operators (whole batch; decoder rows summed over steps"
    title += ")" if per_layer else ", layers summed)"
    sep = "\n\n"
    if markdown:
        return sep.join([f"**{head}**".replace("\n", "  \n"), F.text_table(phases, True), summary.replace("\n", "  \n"),
                         f"**{title}**", op_table])
    return sep.join([head, F.text_table(phases), summary, title, op_table])


def validation_table(df: pd.DataFrame) -> pd.DataFrame:
    """The validation table for people: one row per case (of :func:`fidoperf.measure.validate.summary`)."""
    return pd.DataFrame({
        "case": df["case"],
        "predicted": df["predicted_s"].map(F.seconds),
        "measured": df["measured_s"].map(F.seconds),
        "IQR/median": df["spread"].map(lambda v: f"{100 * v:.0f}%" + (" !" if v > 0.25 else "")),
        "runs (spread)": [f"{t} ({100 * s:.0f}%)" + ("" if ok else " !")
                          for t, s, ok in zip(df["tries"], df["tries_spread"], df["settled"])],
        "pred/meas": df["ratio"].map(lambda v: f"{v:.2f}"),
        "bound": df["predicted_bound"],
        "model/XLA FLOPs": df["flops_ratio"].map(lambda v: "-" if math.isnan(v) else f"{v:.3f}"),
    })


def op_table_text(kind: str, table: pd.DataFrame, settings: dict) -> str:
    """``fidoperf op`` for people: inputs as given, figures with SI prefixes."""
    if "library" in settings:
        head = f"{kind} on {settings['hardware']} ({settings['library']}); bytes per chip as nccl-tests counts them"
    else:
        head = (f"{kind} on {settings.get('hardware', '?')}, {settings.get('dtype', '')}, "
                f"implementation {settings.get('implementation', '?')}, {settings.get('efficiency', '?')} model")
    show = table.copy()
    for col, unit in (("flops", "FLOP"), ("bytes", "B"), ("bytes_per_chip", "B")):
        if col in show:
            show[col] = show[col].map(lambda v, u=unit: F.si(v, u))
    if "intensity" in show:
        show["intensity"] = show["intensity"].map(lambda v: f"{v:.3g}")
    for col in ("compute_s", "memory_s", "overhead_s", "latency_s", "transfer_s", "time_s"):
        if col in show:
            show[col] = show[col].map(F.seconds)
    return head + "\n" + F.text_table(show)
