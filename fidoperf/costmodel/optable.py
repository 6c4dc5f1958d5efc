"""The per-kernel query: ``fidoperf op KIND`` and :func:`op_table`.

One kernel, vectorised over a table of shapes, through the same op builders
(:mod:`fidoperf.costmodel.ops`) and the same time model
(:func:`fidoperf.costmodel.kernels.kernel_times`) that ``predict`` adds up, so that
what ``op`` says for a kernel is what ``predict`` charges for it.

Kinds and their input columns:

    gemm               m, n, k            y[m, n] = x[m, k] @ W[k, n], one kernel
    decode_attention   batch, kv_len, heads, kv_heads, head_dim
                       one new query token per sequence over kv_len cached keys and
                       values (kv_heads shared by heads query heads); the attention
                       kernel alone, no projections
    prefill_attention  batch, seq_len, heads, kv_heads, head_dim, [causal]
                       self-attention of seq_len tokens (causal: default False, the T5
                       encoder is bidirectional); the attention kernel alone

    all_reduce, all_gather, reduce_scatter, all_to_all
                       bytes, chips: ``bytes`` is the whole buffer on each chip, as
                       nccl-tests counts it (the reduced buffer; the gathered result;
                       the reduce-scatter input), over ``chips`` chips

Output columns: the inputs, then flops, bytes, intensity (FLOP/byte), compute_s,
memory_s, overhead_s (fixed cost of the kernel launches), time_s, bound, and
``launches`` (kernels the implementation runs: unfused attention is several).
Collectives: the inputs, then latency_s (the alpha part), transfer_s, time_s, the
algorithm chosen (``ring/LL``, ``nvls/Simple``, ``torus``, ...) and bytes_per_chip
(what that algorithm moves through each chip's links); see
:mod:`fidoperf.costmodel.collectives`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..specs import DTYPE_BYTES, DTYPE_PRESETS, Hardware, load_hardware
from . import ops as costs
from .kernels import kernel_times
from .prediction import Settings, flash_rows

KERNEL_COLUMNS = {
    "gemm": ("m", "n", "k"),
    "decode_attention": ("batch", "kv_len", "heads", "kv_heads", "head_dim"),
    "prefill_attention": ("batch", "seq_len", "heads", "kv_heads", "head_dim"),
}
OPTIONAL_COLUMNS = {"prefill_attention": {"causal": False}}
OUTPUT_COLUMNS = ("flops", "bytes", "intensity", "compute_s", "memory_s", "overhead_s", "time_s", "bound",
                  "launches")


def kinds() -> tuple[str, ...]:
    return tuple(KERNEL_COLUMNS) + collective_kinds()


def collective_kinds() -> tuple[str, ...]:
    from .collectives import OPS

    return OPS


def input_columns(kind: str) -> tuple[str, ...]:
    if kind in KERNEL_COLUMNS:
        return KERNEL_COLUMNS[kind] + tuple(OPTIONAL_COLUMNS.get(kind, {}))
    if kind in collective_kinds():
        return ("bytes", "chips")
    raise SpecError("op", "KIND", f"unknown kernel kind {kind!r} (known: {', '.join(kinds())})")


def _columns(kind: str, shapes: Any) -> dict[str, np.ndarray]:
    """The shape table as whole-number (or boolean) numpy columns, checked."""
    required = KERNEL_COLUMNS.get(kind) or ("bytes", "chips")
    optional = OPTIONAL_COLUMNS.get(kind, {})
    if isinstance(shapes, pd.DataFrame):
        data = {c: shapes[c].to_numpy() for c in shapes.columns}
    elif isinstance(shapes, Mapping):
        data = {c: np.atleast_1d(np.asarray(v)) for c, v in shapes.items()}
    else:
        data = {c: np.asarray([row[c] for row in shapes]) for c in (shapes[0] if len(shapes) else {})}
    missing = [c for c in required if c not in data]
    if missing:
        raise SpecError("shapes", missing[0], f"missing column for kind {kind} (needs: {', '.join(required)})")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise SpecError("shapes", unknown[0], f"unknown column for kind {kind} (known: "
                                              f"{', '.join((*required, *optional))})")
    out = {}
    # a column of one value stands for every row, as numpy broadcasts it
    n = max((len(v) for v in data.values()), default=0)
    uneven = [c for c, v in data.items() if len(v) not in (1, n)]
    if uneven:
        raise SpecError("shapes", uneven[0], f"{len(data[uneven[0]])} values where other columns have {n} "
                                             "(give one value, or one per row)")
    data = {c: np.repeat(v, n) if len(v) == 1 and n > 1 else v for c, v in data.items()}
    for c in required:
        v = np.asarray(data[c])
        if v.dtype == bool or not np.issubdtype(v.dtype, np.number) or not np.all(np.isfinite(v)):
            raise SpecError("shapes", c, "expected finite numbers")
        if np.any(v < 1) or np.any(v != np.round(v)):
            bad = v[(v < 1) | (v != np.round(v))][0]
            raise SpecError("shapes", c, f"expected whole numbers of at least 1, got {bad!r}")
        out[c] = v.astype(float)
    for c, default in optional.items():
        v = np.asarray(data[c]) if c in data else np.full(n, default)
        if v.dtype != bool:
            if not np.all(np.isin(v, (0, 1))):
                raise SpecError("shapes", c, "expected true or false")
            v = v.astype(bool)
        out[c] = v
    if kind in ("decode_attention", "prefill_attention"):
        bad = np.mod(out["heads"], out["kv_heads"]) != 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SpecError("shapes", "kv_heads", f"{int(out['kv_heads'][i])} key/value heads do not divide "
                                                  f"{int(out['heads'][i])} query heads (row {i + 1})")
    return out


def kernel_ops(kind: str, cols: Mapping[str, np.ndarray], hw: Hardware, dtype: str, settings: Settings):
    """The ops the implementation runs for one kernel of ``kind`` at the shapes ``cols``."""
    weight_dt, act_dt, kv_dt, _ = DTYPE_PRESETS[dtype]
    w, a, c = DTYPE_BYTES[weight_dt], DTYPE_BYTES[act_dt], DTYPE_BYTES[kv_dt]
    impl, rows = settings.impl(hw), flash_rows(hw)
    if kind == "gemm":
        return [costs.linear("gemm", cols["m"], cols["k"], cols["n"], w, a)]
    H, G, dk, B = cols["heads"], cols["kv_heads"], cols["head_dim"], cols["batch"]
    if kind == "decode_attention":
        return costs.attention("decode_attention", 1, cols["kv_len"], H, G, dk, a, c, "self_kv", groups=B,
                               impl=impl, flash_rows=rows)
    S = cols["seq_len"]
    causal = cols["causal"]
    out = None
    for flag in (False, True):  # a kernel is causal or not: build both and pick per row
        if not np.any(causal == flag):
            continue
        ops = costs.attention("prefill_attention", S, S, H, G, dk, a, a, "act", groups=B, impl=impl,
                              flash_rows=rows, causal=flag)
        out = ops if out is None else [_where(causal, o_new, o_old) for o_new, o_old in zip(ops, out, strict=True)]
    return out


def _where(mask, a: costs.Op, b: costs.Op) -> costs.Op:
    """An op whose array fields come from ``a`` where ``mask`` and from ``b`` elsewhere."""
    fields = {}
    for name, va in a.__dict__.items():
        vb = b.__dict__[name]
        if name == "shape":
            fields[name] = {k: np.where(mask, va[k], vb[k]) for k in va}
        elif isinstance(va, str):
            fields[name] = va
        else:
            fields[name] = np.where(mask, va, vb)
    return costs.Op(**fields)


def op_table(kind: str, shapes: Any, hardware: str | Hardware, dtype: str = "bf16", **settings) -> pd.DataFrame:
    """Flops, bytes and times of one kernel of ``kind`` for every row of ``shapes``
    (a DataFrame, a mapping of columns, where a column of one value stands for every
    row, or a list of row mappings) on ``hardware`` (a shipped name, a YAML path or a
    loaded :class:`Hardware`), in ``dtype`` (a ``--dtype`` preset). ``settings``:
    overlap, efficiency ("derated" or "roofline") and implementation, as
    :class:`Settings`. Returns the input columns followed by flops, bytes, intensity,
    compute_s, memory_s, overhead_s, time_s, bound, launches (collectives: latency_s,
    transfer_s, time_s, algorithm)."""
    hw = hardware if isinstance(hardware, Hardware) else load_hardware(hardware)
    if dtype not in DTYPE_PRESETS:
        raise SpecError("--dtype", "", f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_PRESETS)})")
    input_columns(kind)
    s = Settings(**settings).resolve(hw)
    cols = _columns(kind, shapes)
    if kind in collective_kinds():
        return collective_table(kind, cols, hw)
    _, act_dt, _, compute_dt = DTYPE_PRESETS[dtype]
    hw.peak(compute_dt)
    n = len(next(iter(cols.values())))
    total = {k: np.zeros(n) for k in ("flops", "bytes", "compute_s", "memory_s", "overhead_s", "time_s", "launches")}
    for op in kernel_ops(kind, cols, hw, dtype, s):
        k = kernel_times(op, hw, compute_dt, act_dt, s.efficiency, s.overlap, s.impl(hw))
        for name, value in (("flops", op.flops), ("bytes", op.bytes), ("compute_s", k.compute_s),
                            ("memory_s", k.memory_s), ("overhead_s", k.overhead_s), ("time_s", k.time_s),
                            ("launches", op.launches)):
            total[name] = total[name] + np.broadcast_to(np.asarray(value, dtype=float), (n,))
    out = pd.DataFrame({c: (cols[c].astype(int) if cols[c].dtype != bool else cols[c]) for c in input_columns(kind)})
    for name in ("flops", "bytes"):
        out[name] = total[name]
    out["intensity"] = total["flops"] / total["bytes"]
    for name in ("compute_s", "memory_s", "overhead_s", "time_s"):
        out[name] = total[name]
    out["bound"] = np.where(total["compute_s"] >= total["memory_s"], "compute", "memory")
    out["launches"] = total["launches"].astype(int)
    out.attrs["settings"] = {"efficiency": s.efficiency, "overlap": s.overlap, "implementation": s.implementation,
                             "hardware": hw.name, "dtype": dtype}
    return out


def collective_table(kind: str, cols: Mapping[str, np.ndarray], hw: Hardware) -> pd.DataFrame:
    """A collective of ``cols["bytes"]`` over ``cols["chips"]`` on ``hw``'s interconnect."""
    from .collectives import collective_times

    if hw.interconnect is None:
        raise SpecError(hw.path or hw.name, "interconnect", "this profile has no interconnect block")
    r = collective_times(kind, cols["bytes"], cols["chips"], hw.interconnect)
    out = pd.DataFrame({"bytes": cols["bytes"].astype(np.int64), "chips": cols["chips"].astype(int)})
    for name in ("latency_s", "transfer_s", "time_s"):
        out[name] = np.asarray(r[name], dtype=float)
    out["algorithm"] = r["algorithm"]
    out["bytes_per_chip"] = np.asarray(r["bytes_per_chip"], dtype=float)
    out.attrs["settings"] = {"hardware": hw.name, "library": hw.interconnect.library}
    return out
