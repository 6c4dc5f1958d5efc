"""Predictions: cost records per operator and layer, times, totals, memory.

For each op the time comes from :func:`fidoperf.costmodel.kernels.kernel_times`:
the derated model of the chip's kernels (the default) or the pure roofline
(``Settings(efficiency="roofline")``: datasheet peaks, no fixed costs), of one
implementation (``Settings(implementation=...)``, by default the profile's own; see
:mod:`fidoperf.specs.implementation`). The bound is the larger of the compute and
memory terms. Decoding is evaluated step by step (the self-attention cache grows by
one token a step) and summed over the T steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..specs import DTYPE_BYTES, Hardware, ModelSpec, StackSpec, Workload
from ..specs.implementation import IMPLEMENTATIONS, Implementation, implementation
from ..specs.layout import Layout
from . import ops as costs
from . import parallel
from .kernels import EFFICIENCY_MODELS, kernel_times, peak_for  # noqa: F401 (peak_for: public helper)

OVERLAP_MODELS = ("roofline", "no_overlap")
# Version of the JSON `predict` writes: 2 added the layout (per-chip memory and ops,
# comm_time_s, comm_exposed_s, chip_seconds_per_sample), implementation and efficiency.
SCHEMA_VERSION = 2

OP_COLUMNS = [
    "phase", "layer", "op", "kind", "calls", "launches", "flops", "bytes", "weight_bytes", "act_bytes",
    "self_kv_bytes", "cross_kv_bytes", "intensity", "compute_s", "memory_s", "overhead_s", "comm_s", "time_s",
    "bound", "pool",
]


@dataclass(frozen=True)
class Settings:
    """How op times are made; named, so every result says which model made it.

    overlap         "roofline": max(compute, memory); "no_overlap": their sum.
    efficiency      "derated" (default): the profile's efficiency curves, kernel
                    mechanisms and fixed costs per kernel; "roofline": datasheet peaks,
                    no fixed costs (the lower bound). True/False are read as these two.
    implementation  a preset of fidoperf.specs.implementation (xla, tuned, eager), or
                    None for the hardware profile's default_implementation.
    """

    overlap: str = "roofline"
    efficiency: str = "derated"
    implementation: str | None = None

    def __post_init__(self):
        if self.overlap not in OVERLAP_MODELS:
            raise SpecError("--overlap", "", f"must be one of {', '.join(OVERLAP_MODELS)}, got {self.overlap!r}")
        if isinstance(self.efficiency, bool):
            object.__setattr__(self, "efficiency", "derated" if self.efficiency else "roofline")
        if self.efficiency not in EFFICIENCY_MODELS:
            raise SpecError("--efficiency", "", f"must be one of {', '.join(EFFICIENCY_MODELS)}, "
                                                f"got {self.efficiency!r}")
        if self.implementation is not None:
            implementation(self.implementation)

    @property
    def derated(self) -> bool:
        return self.efficiency == "derated"

    def resolve(self, hw: Hardware) -> Settings:
        """The same settings with the implementation named (the profile's default if None)."""
        if self.implementation is not None:
            return self
        return dataclasses.replace(self, implementation=hw.default_implementation)

    def impl(self, hw: Hardware) -> Implementation:
        return IMPLEMENTATIONS[self.resolve(hw).implementation]


def op_times(op: costs.Op, hw: Hardware, compute_dtype: str, act_dtype: str, settings: Settings = Settings()):
    """(compute_s, memory_s, time_s) of one call of ``op``; arrays broadcast. The fixed
    cost per kernel is in time_s (see :func:`fidoperf.costmodel.kernels.kernel_times`)."""
    k = kernel_times(op, hw, compute_dtype, act_dtype, settings.efficiency, settings.overlap, settings.impl(hw))
    return k.compute_s, k.memory_s, k.time_s


def flash_rows(hw: Hardware) -> int:
    """Query rows served by one read of the keys and values in flash attention: a block
    of query rows, times the blocks that run at once and share that read through the
    cache (one per compute unit), in the FlashAttention IO count (see costmodel.ops)."""
    km = hw.kernel_model
    return km.flash_block_q * (km.compute_units or 1)


def dtype_bytes(wl: Workload) -> tuple[int, int, int]:
    """Bytes per element of weights, activations and KV caches."""
    return DTYPE_BYTES[wl.weight_dtype], DTYPE_BYTES[wl.act_dtype], DTYPE_BYTES[wl.kv_dtype]


def stack_dims(s: StackSpec) -> tuple[int, int, int, int, int, int]:
    """(D, H, G, dk, F, n_in) of a stack, the argument order of the costs functions."""
    return s.emb_dim, s.num_heads, s.num_kv_heads, s.head_dim, s.mlp_dim, s.mlp_in_mats


def operator_list(model: ModelSpec, wl: Workload, impl: Implementation = costs.XLA, rows: int = 128,
                  layout: Layout | None = None, ship: str | None = None):
    """Every op call of one batch on one chip of a replica: (phase, layer or None, Op,
    calls). Decoder ops hold arrays over the T steps (calls = 1 each step). ``impl``
    cuts the kernels; ``rows`` is :func:`flash_rows` of the chip; ``layout`` splits the
    model over chips (its collectives are ops of kind "collective"); with separate pools,
    ``ship`` says what the encoder pool sends (see :mod:`fidoperf.costmodel.parallel`)."""
    layout = layout or Layout()
    cd = parallel.chip_dims(model, layout)
    Tp = cd.T
    w, a, c = dtype_bytes(wl)
    B, P, N, T = wl.batch, wl.passages, wl.passage_len, wl.target_len
    enc, dec = model.encoder, model.decoder
    De, He, Ge, dke, Fe, ne = cd.encoder
    Dd, Hd, Gd, dkd, Fd, nd = cd.decoder
    steps = np.arange(1, T + 1)
    out = [("encoder", None, op, 1) for op in costs.encoder_embed(De, B, P, N, w, a, impl)]
    layer_ops = costs.encoder_layer(De, He, Ge, dke, Fe, ne, B, P, N, w, a, impl, rows)
    layer_ops += parallel.encoder_layer_comm(B * P * N, De, a, Tp)
    out += [("encoder", i, op, 1) for i in range(enc.num_layers) for op in layer_ops]
    out.append(("encoder", None, costs.encoder_final(De, B, P, N, w, a, impl), 1))
    cross_b = math.ceil(B * cd.cross_batch_share)
    kv_ops = costs.cross_kv_layer(De, cd.cross_kv_heads, dkd, cross_b, P, N, w, a, c, impl)
    kv = [("cross_kv", i, op, 1) for i in range(dec.num_layers) if dec.has_cross_attn(i) for op in kv_ops]
    if layout.pooled:
        ship = ship or "cross_kv"
        shipped = parallel.ship_bytes(ship, B, P * N, enc.emb_dim, dec.num_cross_layers, dec.num_kv_heads,
                                      dkd, a, c)
        streams = min(layout.encoder_replicas, layout.decoder_replicas) and Tp
        moved = [("transfer", None, parallel.transfer(f"ship_{ship}", shipped, streams), 1)]
        out += kv + moved if ship == "cross_kv" else moved + kv
    else:
        out += kv
    out += [("decoder", None, op, T) for op in costs.decoder_embed(Dd, B, w, a, impl)]
    for i in range(dec.num_layers):
        cross = dec.has_cross_attn(i)
        ops = costs.decoder_layer(Dd, Hd, Gd, dkd, Fd, nd, B, P, N, steps, cross, w, a, c, impl, rows,
                                  cross_attention=(cross_b, cd.cross_heads, cd.cross_kv_heads))
        ops += parallel.decoder_layer_comm(B, Dd, Hd, dkd, a, Tp, cross, cd.batch_sharded)
        out += [("decoder", i, op, T) for op in ops]
    head = costs.decoder_head(Dd, cd.vocab_out, B, w, a, impl) + parallel.head_comm(B, Tp)
    out += [("decoder", None, op, T) for op in head]
    return out


def pool_of(phase: str, layout: Layout, ship: str | None) -> str:
    """Which pool runs a phase: "all" without separate pools."""
    if not layout.pooled:
        return "all"
    if phase == "encoder" or (phase == "cross_kv" and ship == "cross_kv"):
        return "encoder"
    return "link" if phase == "transfer" else "decoder"


def ops_table(model: ModelSpec, hw: Hardware, wl: Workload, settings: Settings = Settings(),
              layout: Layout | None = None, ship: str | None = None) -> pd.DataFrame:
    """One row per operator and layer for one batch on one chip of a replica; decoder
    rows are summed over the T decoding steps (``calls`` says how many calls a row
    holds, ``launches`` how many kernels; ``comm_s`` is interconnect time)."""
    settings = settings.resolve(hw)
    impl = settings.impl(hw)
    layout = layout or Layout()
    rows = []
    for phase, layer, op, calls in operator_list(model, wl, impl, flash_rows(hw), layout, ship):
        k = kernel_times(op, hw, wl.compute_dtype, wl.act_dtype, settings.efficiency, settings.overlap, impl)

        def total(x, calls=calls):
            x = np.asarray(x, dtype=float)
            return float(x.sum()) if x.ndim else float(x) * calls

        rows.append({
            "phase": phase, "pool": pool_of(phase, layout, ship), "layer": layer, "op": op.op, "kind": op.kind,
            "calls": calls, "launches": total(op.launches),
            "flops": total(op.flops), "weight_bytes": total(op.weight_bytes),
            "act_bytes": total(op.act_bytes), "self_kv_bytes": total(op.self_kv_bytes),
            "cross_kv_bytes": total(op.cross_kv_bytes), "compute_s": total(k.compute_s),
            "memory_s": total(k.memory_s), "overhead_s": total(k.overhead_s), "comm_s": total(k.comm_s),
            "time_s": total(k.time_s),
        })
    df = pd.DataFrame(rows)
    df["bytes"] = df[["weight_bytes", "act_bytes", "self_kv_bytes", "cross_kv_bytes"]].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df["intensity"] = df["flops"] / df["bytes"]
    df["bound"] = np.where(df["comm_s"] > np.maximum(df["compute_s"], df["memory_s"]), "comm",
                           np.where(df["compute_s"] >= df["memory_s"], "compute", "memory"))
    df["layer"] = df["layer"].astype("Int64")
    return df[OP_COLUMNS]


def memory_footprint(model: ModelSpec, hw: Hardware, wl: Workload, settings: Settings = Settings(),
                     layout: Layout | None = None, ship: str | None = None) -> dict[str, Any]:
    """Bytes one chip holds (weights, caches, activations) and the largest batch a
    replica can take (flash attention keeps the encoder's attention scores on chip)."""
    layout = layout or Layout()
    w, a, c = dtype_bytes(wl)
    cd = parallel.chip_dims(model, layout)
    layers = (model.encoder.num_layers, model.decoder.num_layers, model.decoder.num_cross_layers)
    m = parallel.chip_memory(cd, layers, model.vocab_size, model.decoder.num_kv_heads, layout, wl.batch,
                             wl.passages, wl.passage_len, wl.target_len, w, a, c, hw.hbm_capacity_bytes,
                             settings.impl(hw).flash, ship)
    out = _plain_memory(m)
    out["capacity_bytes"] = float(hw.hbm_capacity_bytes)
    if "pools" in m:
        out["pools"] = {name: {**_plain_memory(p), "capacity_bytes": float(hw.hbm_capacity_bytes)}
                        for name, p in m["pools"].items()}
    return out


def _plain_memory(m: dict) -> dict[str, Any]:
    out = {k: float(v) for k, v in m.items() if k not in ("pool", "pools")}
    out["params"] = int(m["params"])
    out["max_batch"] = int(m["max_batch"])
    out["fits"] = bool(m["fits"])
    if "pool" in m:
        out["pool"] = m["pool"]
    return out


@dataclass
class Prediction:
    """Everything predicted for one model, hardware and workload."""

    model: ModelSpec
    hardware: Hardware
    workload: Workload
    settings: Settings
    ops: pd.DataFrame
    totals: dict[str, Any]
    memory: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    layout: Layout = field(default_factory=Layout)

    def to_dict(self) -> dict[str, Any]:
        ops = self.ops.astype(object).where(self.ops.notna(), None)
        return {
            "schema_version": SCHEMA_VERSION,
            "model": model_dict(self.model),
            "hardware": hardware_dict(self.hardware),
            "workload": dataclasses.asdict(self.workload),
            "settings": {**dataclasses.asdict(self.settings),
                         "implementation_detail": IMPLEMENTATIONS[self.settings.implementation].as_dict()
                         if self.settings.implementation else None},
            "layout": self.layout.as_dict(),
            "ops": ops.to_dict(orient="records"),
            "totals": self.totals,
            "memory": self.memory,
            "warnings": self.warnings,
        }


def model_dict(m: ModelSpec) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    d["decoder"]["cross_attn_layers"] = [i for i in range(m.decoder.num_layers) if m.decoder.has_cross_attn(i)]
    return d


def hardware_dict(hw: Hardware) -> dict[str, Any]:
    return {
        "name": hw.name, "description": hw.description, "kind": hw.kind,
        "peak_flops_per_s": dict(hw.peak_flops_per_s), "hbm_bytes_per_s": hw.hbm_bytes_per_s,
        "hbm_capacity_bytes": hw.hbm_capacity_bytes, "tdp_w": hw.tdp_w,
        "price_per_chip_hour_usd": hw.price_per_chip_hour_usd,
        "overhead_s_per_op": hw.overhead_s_per_op,
        "overhead_s_per_op_by_implementation": dict(hw.overheads_by_implementation),
        "default_implementation": hw.default_implementation, "path": hw.path,
        "efficiency": {k: {"axis": v.axis, "points": [list(p) for p in v.points], "source": v.source,
                           **({"transfer_bytes": v.transfer_bytes} if v.transfer_bytes else {})}
                       for k, v in hw.efficiency.items()},
        "measured": dict(hw.measured),
    }


def totals_from_ops(ops: pd.DataFrame, wl: Workload, layout: Layout | None = None) -> dict[str, Any]:
    """Per-sample totals (the batch's figures divided by B), the wall time of one batch
    through one replica (with pools: encode, ship, decode in sequence), and the rates
    of the whole layout (replicas, and pipelined pools, included)."""
    layout = layout or Layout()
    B, T = wl.batch, wl.target_len
    by = ops.groupby("phase")[["flops", "bytes", "time_s", "comm_s"]].sum()
    get = lambda phase, col: float(by[col].get(phase, 0.0)) if phase in by.index else 0.0  # noqa: E731
    t = {}
    for phase in ("encoder", "cross_kv", "decoder"):
        t[f"{phase}_flops"] = get(phase, "flops") / B
        t[f"{phase}_bytes"] = get(phase, "bytes") / B
        t[f"{phase}_time_s"] = get(phase, "time_s") / B
    batch_time = float(ops["time_s"].sum())
    t["total_flops"] = float(ops["flops"].sum()) / B
    t["total_bytes"] = float(ops["bytes"].sum()) / B
    t["time_per_sample_s"] = batch_time / B
    t["batch_time_s"] = batch_time
    t["time_per_step_s"] = get("decoder", "time_s") / T
    comm = float(ops["comm_s"].sum())
    transfer = get("transfer", "time_s")
    if layout.pooled:
        stage = ops.groupby("pool")["time_s"].sum()
        enc_stage, dec_stage = float(stage.get("encoder", 0.0)), float(stage.get("decoder", 0.0))
        rates = [layout.encoder_replicas * B / enc_stage, layout.decoder_replicas * B / dec_stage]
        if transfer > 0:
            rates.append(min(layout.encoder_replicas, layout.decoder_replicas) * B / transfer)
        samples_per_s = min(rates)
        slowest = max(enc_stage / layout.encoder_replicas, dec_stage / layout.decoder_replicas)
        hidden = min(transfer, slowest)  # the link is a pipeline stage of its own
        t["transfer_time_s"] = transfer
        t["encoder_pool_time_s"], t["decoder_pool_time_s"] = enc_stage, dec_stage
    else:
        samples_per_s = layout.replicas * B / batch_time
        hidden = 0.0
    t["comm_time_s"] = comm / B
    t["comm_exposed_s"] = (comm - hidden) / B
    t["samples_per_s"] = samples_per_s
    t["tokens_per_s"] = samples_per_s * T
    t["chip_seconds_per_sample"] = layout.total_chips / samples_per_s
    t["decoder_share_of_time"] = get("decoder", "time_s") / batch_time
    return t


def predict(model: ModelSpec, hardware: Hardware, workload: Workload = Workload(),
            settings: Settings = Settings(), layout: Layout | None = None) -> Prediction:
    """The full prediction: the op table (one chip of a replica), per-sample totals,
    the rates of the whole layout, and the memory of one chip. With separate encoder
    and decoder pools, both things the encoder pool may ship are evaluated and the one
    that gives the shorter batch time is kept (``totals["shipped"]``)."""
    hardware.peak(workload.compute_dtype)  # fail early, naming the missing dtype
    settings = settings.resolve(hardware)
    layout = layout or Layout()
    parallel.chip_dims(model, layout)  # fail early: T must split the heads
    if not layout.single_chip and hardware.interconnect is None:
        raise SpecError(hardware.path or hardware.name, "interconnect",
                        f"a layout of {layout.total_chips} chips needs the profile's interconnect block")
    ships = parallel.SHIP_OPTIONS if layout.pooled else (None,)
    best = None
    for ship in ships:
        ops = ops_table(model, hardware, workload, settings, layout, ship)
        totals = totals_from_ops(ops, workload, layout)
        if best is None or totals["batch_time_s"] < best[1]["batch_time_s"]:
            best = (ops, totals, ship)
    ops, totals, ship = best
    memory = memory_footprint(model, hardware, workload, settings, layout, ship)
    totals["max_batch"] = memory["max_batch"]
    totals["fits_in_memory"] = memory["fits"]
    if layout.pooled:
        totals["shipped"] = ship
    warnings = []
    if not memory["fits"]:
        where = "" if layout.single_chip else " per chip"
        warnings.append(
            f"batch {workload.batch} needs {memory['peak_bytes'] / 1e9:.1f} GB{where}, more than the "
            f"{hardware.hbm_capacity_bytes / 1e9:.1f} GB of {hardware.name} (largest batch that fits: "
            f"{memory['max_batch']}); predicted anyway")
    return Prediction(model, hardware, workload, settings, ops, totals, memory, warnings, layout)
