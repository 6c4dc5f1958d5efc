"""The time of one kernel on one chip: the derated model and the pure roofline.

Every prediction goes through :func:`kernel_times`, so what ``fidoperf op`` says for a
single kernel is what ``fidoperf predict`` adds up for a whole model.

Roofline (``Settings(efficiency="roofline")``): datasheet peaks, no fixed costs, the
implementation's own byte counts::

    compute_s = flops / peak          memory_s = bytes / bandwidth
    time_s    = max(compute_s, memory_s)   (or their sum, overlap "no_overlap")

Derated (the default), each mechanism with its parameters in the hardware profile
(``efficiency`` curves and the ``kernel_model`` block, every figure sourced)::

    compute_s  = flops / (peak x eff_compute(kind, size) x quantisation)
    memory_s   = bytes / (bandwidth x eff_memory(kind, bytes) x parallelism)
    overhead_s = launches x the chip's fixed cost per kernel for this implementation
    time_s     = max(compute_s, memory_s) + overhead_s

- Matrix products (``kernel == "gemm"``): the output is cut into tiles; a wave runs
  one tile per compute unit (SM); the time is the number of waves times the time of
  one tile at the large-GEMM rate (tile quantisation: a partial tile costs a whole
  one; wave quantisation: a partial wave costs a whole one; NVIDIA, "Matrix
  Multiplication Background User's Guide"). The library's choice among tile shapes
  and split-K factors is modelled as the best candidate (an ideal heuristic). With
  few tiles in flight the memory side streams slower too (``bandwidth_units``).
  On TPUs the dimensions are padded to the MXU (``gemm_pad``).
- Flash attention (``kernel == "flash"``): one thread block per block of query rows
  and head; each does a fixed amount of work (``flash_block_overhead``) plus one
  iteration per key/value block it sees (causal blocks see only the keys before
  them); blocks are spread over the compute units, and the time is the larger of the
  average load and the longest block. Decoding (one query row per head, or the H/G
  rows of a key/value head) splits the keys across blocks as FlashAttention-2's
  ``num_splits_heuristic`` does, so that the blocks fill the chip; the partial
  results cost one more small kernel.
- Everything else streams its bytes at the attainable bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..specs import Hardware
from ..specs.hardware import KernelModel
from ..specs.implementation import Implementation
from .ops import Op

EFFICIENCY_MODELS = ("derated", "roofline")


@dataclass(frozen=True)
class KernelTimes:
    """Seconds of one call of an op, for the whole batch (arrays broadcast)."""

    compute_s: object
    memory_s: object
    overhead_s: object
    time_s: object


def peak_for(kind: str, hw: Hardware, compute_dtype: str, act_dtype: str) -> float:
    """Matmuls against weights run at the compute dtype's peak; attention between
    activations and caches at it too unless that is an integer/fp8 weight format;
    vector work at the activation dtype's peak when the chip lists one."""
    if kind == "matmul" or (kind == "attention" and compute_dtype not in ("int8", "fp8")):
        return hw.peak(compute_dtype)
    if act_dtype in hw.peak_flops_per_s:
        return hw.peak(act_dtype)
    return hw.peak(compute_dtype)


def _f(x):
    return np.asarray(x, dtype=float)


def _curve_size(op: Op, axis: str):
    if axis == "head_dim":
        return op.shape.get("head_dim", 64)
    return getattr(op, axis)


def kernel_times(op: Op, hw: Hardware, compute_dtype: str, act_dtype: str, efficiency: str = "derated",
                 overlap: str = "roofline", implementation: Implementation | None = None) -> KernelTimes:
    """Compute, memory, fixed and total seconds of one call of ``op`` (module docstring)."""
    peak, bw = peak_for(op.kind, hw, compute_dtype, act_dtype), hw.hbm_bytes_per_s
    flops, nbytes = _f(op.flops), _f(op.bytes)
    combine = np.maximum if overlap == "roofline" else np.add
    if efficiency == "roofline":
        compute_s, memory_s = flops / peak, nbytes / bw
        zero = 0.0 * compute_s
        return KernelTimes(compute_s, memory_s, zero, combine(compute_s, memory_s))
    ce, me = hw.curve(op.kind, "compute"), hw.curve(op.kind, "memory")
    rate = peak * ce(_curve_size(op, ce.axis))
    bw_eff = bw * me(_curve_size(op, me.axis))
    km = hw.kernel_model
    launches = _f(op.launches)
    if op.kernel == "gemm" and (km.compute_units or km.gemm_pad != (1, 1, 1)):
        compute_s, memory_s = gemm_times(op.shape, flops, nbytes, rate, bw_eff, km)
    elif op.kernel == "flash" and km.compute_units:
        compute_s, memory_s, extra = flash_times(op.shape, flops, nbytes, rate, bw_eff, km)
        launches = launches + extra
    else:
        compute_s, memory_s = flops / rate, nbytes / bw_eff
    impl_name = implementation.name if implementation is not None else hw.default_implementation
    fixed = launches * hw.overhead_for(impl_name)
    work = combine(compute_s, memory_s)
    if implementation is not None and implementation.eager and km.async_launch:
        time_s = np.maximum(work, fixed)  # the host dispatches ahead while the device runs
    else:
        time_s = work + fixed
    return KernelTimes(compute_s, memory_s, fixed, time_s)


# --------------------------------------------------------------------------- matrix products


def _ceil_div(a, b):
    return np.ceil(_f(a) / b)


def gemm_times(shape, flops, nbytes, rate, bw, km: KernelModel):
    """(compute_s, memory_s) of y[m, n] = x[m, k] @ W[k, n] (``batch`` independent
    products), tile- and wave-quantised over ``km.compute_units``, the best of the
    candidate tiles and split-K factors (module docstring)."""
    m, n, k, batch = (_f(shape.get(key, 1)) for key in ("m", "n", "k", "batch"))
    pm, pn, pk = km.gemm_pad
    m_p, n_p, k_p = _ceil_div(m, pm) * pm, _ceil_div(n, pn) * pn, _ceil_div(k, pk) * pk
    if not km.compute_units or not km.gemm_tiles:
        padding = (m_p * n_p * k_p) / np.maximum(m * n * k, 1e-300)
        return flops / rate * padding, nbytes / bw
    units = float(km.compute_units)
    per_unit = rate / units  # FLOP/s of one compute unit at the large-GEMM rate
    best_t = best_c = best_m = None
    for tm, tn, rel in km.gemm_tiles:
        tiles = batch * _ceil_div(m_p, tm) * _ceil_div(n_p, tn)
        for s in km.gemm_split_k:
            blocks = tiles * s
            waves = np.ceil(blocks / units)
            k_slice = _ceil_div(k_p, s)
            compute = waves * (2.0 * tm * tn * k_slice) / (per_unit * rel)
            extra = 0.0 if s == 1 else 2.0 * s * batch * m * n * 4.0  # fp32 partial sums out and back
            memory = (nbytes + extra) / (bw * _bandwidth_fraction(blocks, km))
            t = np.maximum(compute, memory)
            if best_t is None:
                best_t, best_c, best_m = t, compute, memory
            else:
                better = t < best_t
                best_t = np.where(better, t, best_t)
                best_c = np.where(better, compute, best_c)
                best_m = np.where(better, memory, best_m)
    return best_c, best_m


def _bandwidth_fraction(blocks, km: KernelModel):
    """Fraction of the attainable bandwidth that ``blocks`` thread blocks in flight reach."""
    if not km.bandwidth_units:
        return 1.0
    return np.minimum(1.0, _f(blocks) / km.bandwidth_units)


# --------------------------------------------------------------------------- attention


def decode_splits(bh, n_blocks, units: float, max_splits: int):
    """FlashAttention-2's ``num_splits_heuristic`` (csrc/flash_attn/flash_api.cpp),
    vectorised: the fewest splits of the key/value blocks whose wave efficiency
    (blocks / (waves x units)) is at least 85% of the best one, splits never more
    than the blocks and ``max_splits``; no split when ``bh`` blocks already nearly
    fill the chip (bh >= 0.8 x units)."""
    bh, n_blocks = np.broadcast_arrays(_f(bh), np.minimum(_f(n_blocks), max_splits))
    # few distinct (bh, blocks) pairs even over a million-point sweep: solve those once
    keys, inverse = np.unique(bh.ravel() * (max_splits + 1) + n_blocks.ravel(), return_inverse=True)
    return _splits(keys // (max_splits + 1), keys % (max_splits + 1), units, max_splits)[inverse].reshape(bh.shape)


def _splits(bh, n_blocks, units: float, max_splits: int):
    cap = np.minimum(np.minimum(max_splits, units), n_blocks)
    effs = []
    for s in range(1, max_splits + 1):
        waves = bh * s / units
        eff = waves / np.ceil(waves)
        ok = s <= cap
        effs.append(np.where(ok, eff, 0.0))
    best = np.max(np.stack(np.broadcast_arrays(*effs)), axis=0)
    chosen = np.ones_like(best)
    found = np.zeros(best.shape, bool)
    for s, eff in enumerate(effs, start=1):
        take = (~found) & (eff >= 0.85 * best) & (s <= cap)
        chosen = np.where(take, s, chosen)
        found |= take
    return np.where(bh >= 0.8 * units, 1.0, chosen)


def flash_times(shape, flops, nbytes, rate, bw, km: KernelModel):
    """(compute_s, memory_s, extra launches) of a flash-attention kernel."""
    batch, q_len, kv_len, heads, kv_heads = (_f(shape[k]) for k in ("batch", "q_len", "kv_len", "heads",
                                                                      "kv_heads"))
    causal = bool(np.any(shape.get("causal", False)))
    units = float(km.compute_units)
    per_unit = rate / units
    decode = np.all(q_len <= 1)
    if decode:
        # one query row per head: the H/G heads sharing a key/value head are one block's rows
        bh = batch * kv_heads
        n_blocks = _ceil_div(kv_len, km.decode_block_kv)
        splits = decode_splits(bh, n_blocks, units, km.decode_max_splits)
        blocks = bh * splits
        per_block = flops / blocks
        waves = np.ceil(blocks / units)
        compute = waves * per_block / per_unit + 0.0 * flops
        memory = nbytes / (bw * _bandwidth_fraction(blocks, km))
        extra = np.where(splits > 1, 1.0, 0.0)  # the kernel that combines the partial results
        return compute, memory, extra
    bq, bkv = km.flash_block_q, km.flash_block_kv
    q_blocks = _ceil_div(q_len, bq)
    kv_blocks = _ceil_div(kv_len, bkv)
    bh = batch * heads
    per_iter = flops / np.maximum(bh * _iterations(q_blocks, kv_blocks, bq, bkv, causal), 1e-300)
    fixed = km.flash_block_overhead
    if causal:
        total = bh * (q_blocks * fixed + _iterations(q_blocks, kv_blocks, bq, bkv, True))
        longest = fixed + kv_blocks
        work = np.maximum(total / units, longest)
    else:
        work = np.ceil(bh * q_blocks / units) * (fixed + kv_blocks)
    compute = work * per_iter / per_unit
    memory = nbytes / (bw * _bandwidth_fraction(bh * q_blocks, km))
    return compute, memory, 0.0 * compute


def _iterations(q_blocks, kv_blocks, bq, bkv, causal: bool):
    """Key/value block iterations summed over the query blocks of one head: all of
    them, or for causal attention those at or before the diagonal (query block i of
    bq rows sees ceil((i + 1) x bq / bkv) key blocks)."""
    if not causal:
        return q_blocks * kv_blocks
    # sum_{i=0}^{q-1} min(kv, ceil((i+1) bq / bkv)) with bq a multiple of bkv or the reverse:
    # close to kv (q + 1) / 2 for q = kv; computed exactly for the common case bq == bkv.
    ratio = bq / bkv
    full = q_blocks * (q_blocks + 1) / 2.0 * ratio
    return np.minimum(full, q_blocks * kv_blocks)
