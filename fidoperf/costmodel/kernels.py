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
    (a rows curve measured at one transfer size is carried to the op's own size:
    :func:`rows_rate_at_size`)
    overhead_s = launches x the chip's fixed cost per kernel for this implementation
    time_s     = max(compute_s, memory_s) + overhead_s
    (eager: every framework operation also costs the host ``dispatch_s_per_op``: added
    on a synchronous device (CPU), overlapped with the device's time on a GPU stream;
    overhead_s then holds all but the compute and memory time)

- Matrix products (``kernel == "gemm"``, on the matrix units: every compute dtype but
  fp32, which runs on the vector units unquantised): the output is cut into tiles; a wave runs
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
    comm_s: object = 0.0  # interconnect time (collectives, shipping between pools)


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
    if op.kernel in ("collective", "transfer"):
        return comm_times(op, hw, efficiency)
    peak, bw = peak_for(op.kind, hw, compute_dtype, act_dtype), hw.hbm_bytes_per_s
    flops, nbytes = _f(op.flops), _f(op.bytes)
    combine = np.maximum if overlap == "roofline" else np.add
    if efficiency == "roofline":
        compute_s, memory_s = flops / peak, nbytes / bw
        zero = 0.0 * compute_s
        return KernelTimes(compute_s, memory_s, zero, combine(compute_s, memory_s))
    ce, me = hw.curve(op.kind, "compute", op.kernel), hw.curve(op.kind, "memory", op.kernel)
    rate = peak * ce(_curve_size(op, ce.axis))
    bw_eff = bw * me(_curve_size(op, me.axis))
    if ce.transfer_bytes and me.axis == "bytes":
        rate = rows_rate_at_size(rate, flops, nbytes, bw_eff, bw * me(ce.transfer_bytes))
    km = hw.kernel_model
    launches = _f(op.launches)
    # tiles are those of the matrix units (tensor cores, MXUs); fp32 runs on the vector units
    if op.kernel == "gemm" and compute_dtype != "fp32" and (km.compute_units or km.gemm_pad != (1, 1, 1)):
        compute_s, memory_s = gemm_times(op.shape, flops, nbytes, rate, bw_eff, km)
    elif op.kernel == "flash" and km.compute_units:
        compute_s, memory_s, extra = flash_times(op.shape, flops, nbytes, rate, bw_eff, km)
        launches = launches + extra
    else:
        compute_s, memory_s = flops / rate, nbytes / bw_eff
    impl_name = implementation.name if implementation is not None else hw.default_implementation
    fixed = launches * hw.overhead_for(impl_name)
    device = combine(compute_s, memory_s) + fixed
    if implementation is not None and implementation.eager and hw.dispatch_s_per_op:
        dispatch = launches * hw.dispatch_s_per_op
        # the host issues every framework operation; with asynchronous launches (GPU
        # streams) it runs ahead of the device, so the slower of the two sets the pace
        time_s = np.maximum(device, dispatch) if km.async_launch else device + dispatch
        return KernelTimes(compute_s, memory_s, time_s - (device - fixed), time_s)
    return KernelTimes(compute_s, memory_s, fixed, device)


def rows_rate_at_size(rate, flops, nbytes, bw_op, bw_transfer):
    """The rate of a rows curve measured with operands of one transfer size, for an op
    that moves ``nbytes`` and streams at ``bw_op`` (bytes/s, the streaming curve of its
    access pattern at its size); ``bw_transfer`` is that curve at the measured size.

    A product of few rows against a cold operand is a stream of that operand: its
    measured rate is what streaming the measured size allowed, and a larger transfer
    streams faster (the streaming curves rise with size up to hundreds of MiB on the
    development VMs). The share of the measured kernel's time that streaming accounts for
    is ``s = rate / (intensity x bw_transfer)`` (at most 1), with the op's own FLOPs per
    byte as the measured kernel's intensity (a product of the same rows has it); the rate
    is raised by ``(bw_op / bw_transfer) ** s``. One row (``s`` near 1) gets the whole
    gain of the larger transfer; many rows (compute bound, ``s`` small) keep the measured
    rate. A smaller transfer is not lowered here: its memory time, at ``bw_op``, already
    binds."""
    intensity = flops / np.maximum(nbytes, 1e-30)
    share = np.clip(rate / np.maximum(intensity * bw_transfer, 1e-30), 0.0, 1.0)
    return rate * np.maximum(1.0, bw_op / bw_transfer) ** share


def comm_times(op: Op, hw: Hardware, efficiency: str) -> KernelTimes:
    """A collective between the chips of a tensor-parallel group, or the shipping of data
    between pools, on the profile's interconnect (:mod:`fidoperf.costmodel.collectives`):
    derated, its alpha-beta time; roofline, its bytes at the links' datasheet rate."""
    from .collectives import collective_times, lower_bound_s, transfer_times

    net = hw.interconnect
    s = op.shape
    if op.kernel == "transfer":
        t = transfer_times(s["bytes"], s["streams"], net, roofline=efficiency == "roofline")["time_s"]
    elif efficiency == "roofline":
        t = lower_bound_s(s["collective"], s["bytes"], s["chips"], net)
    else:
        t = collective_times(s["collective"], s["bytes"], s["chips"], net)["time_s"]
    zero = 0.0 * np.asarray(t, dtype=float)
    return KernelTimes(zero, zero, zero, t, comm_s=t)


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
    # every (tile, split-K) candidate along a new leading axis, evaluated at once
    cand = np.array([(tm, tn, rel, s) for tm, tn, rel in km.gemm_tiles for s in km.gemm_split_k], dtype=float)
    tm, tn, rel, s = (cand[:, i].reshape((-1,) + (1,) * np.ndim(m_p + n_p + k_p + batch)) for i in range(4))
    tiles = batch * np.ceil(m_p / tm) * np.ceil(n_p / tn)
    blocks = tiles * s
    compute = np.ceil(blocks / units) * (2.0 * tm * tn * np.ceil(k_p / s)) / (per_unit * rel)
    partials = np.where(s > 1, 2.0 * s * batch * m * n * 4.0, 0.0)  # fp32 partial sums out and back
    memory = (nbytes + partials) / (bw * _bandwidth_fraction(blocks, km))
    best = np.argmin(np.maximum(compute, memory), axis=0)[None]
    return (np.take_along_axis(np.broadcast_to(compute, np.broadcast_shapes(compute.shape, memory.shape)), best, 0)[0],
            np.take_along_axis(np.broadcast_to(memory, np.broadcast_shapes(compute.shape, memory.shape)), best, 0)[0])


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
    s = np.arange(1, max_splits + 1, dtype=float)[:, None]
    cap = np.minimum(np.minimum(max_splits, units), n_blocks)[None]
    waves = bh[None] * s / units
    eff = np.where(s <= cap, waves / np.ceil(waves), 0.0)
    ok = (eff >= 0.85 * eff.max(axis=0, keepdims=True)) & (s <= cap)
    chosen = np.where(ok.any(axis=0), np.argmax(ok, axis=0) + 1.0, 1.0)
    return np.where(bh >= 0.8 * units, 1.0, chosen)


def flash_times(shape, flops, nbytes, rate, bw, km: KernelModel):
    """(compute_s, memory_s, extra launches) of a flash-attention kernel."""
    batch, q_len, kv_len, heads, kv_heads = (_f(shape[k]) for k in ("batch", "q_len", "kv_len", "heads",
                                                                      "kv_heads"))
    causal = np.asarray(shape.get("causal", False), dtype=bool)
    units = float(km.compute_units)
    per_unit = rate / units
    decode = np.all(q_len <= 1)
    if decode:
        # FlashAttention-2 (csrc/flash_attn/flash_api.cpp): one query token with H/G heads
        # per key/value head is run as H/G query rows of one block per key/value head;
        # key blocks of 256 rows (head_dim <= 64), 128 (<= 128) or 64; the split heuristic
        # is called with twice the SMs ("128 threads per block").
        dk = _f(shape["head_dim"])
        block_n = np.where(dk <= 64, 256.0, np.where(dk <= 128, 128.0, 64.0))
        bh = batch * kv_heads * _ceil_div(heads / kv_heads, 64)
        n_blocks = np.ceil(kv_len / block_n)
        splits = decode_splits(bh, n_blocks, 2 * units, km.decode_max_splits)
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
    dk = _f(shape["head_dim"])
    # one key/value block iteration of one query block, as executed (whole blocks, the
    # masked half of a diagonal block included): Q K^T and P V, plus the softmax
    per_iter = bq * bkv * (4.0 * dk + 5.0)
    fixed = km.flash_block_overhead
    # causal blocks differ in length: the average load or the longest block, whichever
    # is larger (a balanced schedule); equal blocks run in whole waves
    total = bh * (q_blocks * fixed + _iterations(q_blocks, kv_blocks, bq, bkv, True))
    causal_work = np.maximum(total / units, fixed + kv_blocks)
    full_work = np.ceil(bh * q_blocks / units) * (fixed + kv_blocks)
    work = np.where(causal, causal_work, full_work)
    compute = work * per_iter / per_unit
    memory = nbytes / (bw * _bandwidth_fraction(bh * q_blocks, km))
    return compute, memory, 0.0 * compute


def _iterations(q_blocks, kv_blocks, bq, bkv, causal: bool):
    """Key/value block iterations summed over the query blocks of one head: all of
    them, or for causal attention those at or before the diagonal (query block i of
    bq rows sees (i + 1) x bq / bkv key blocks; exact when bkv divides bq)."""
    if not causal:
        return q_blocks * kv_blocks
    ratio = bq / bkv
    full = q_blocks * (q_blocks + 1) / 2.0 * ratio
    return np.minimum(full, q_blocks * kv_blocks)
