"""The service model: what the serving simulator asks of fidoperf's cost model.

The simulator (:mod:`fidoperf.whatif.simulate`) needs, millions of times per run, the
time of an encode call and of a run of decoding steps for a batch as composed at that
moment, and the memory one request holds. Asking ``predict`` each time would cost
milliseconds per event; instead this module evaluates fidoperf's own operator list once,
vectorised over every batch size and token count a run can meet, and answers lookups
with plain float arithmetic on Python lists (no numpy per event).

Glossary (as in :mod:`fidoperf.costmodel.ops`):
    b   requests in a batch                  P   passages of a request
    N   tokens per passage                   X = P*N  cross-attention tokens of a request
    t   self-attention cache length at a step (1 .. T)
    T   target tokens of a request (decoding steps)

What one call costs, and why it decomposes exactly:
- encode (encoder + cross-attention K/V projection): every op depends only on the number
  of passages in the call (b*P, the batch dimension the encoder flattens) and on N, so
  the table is indexed by (passages in the call, N). A call pads its passages to the
  longest N in it.
- one decoding step of b requests = base(b) + self-attention(b, mean t) + cross-attention
  (b, mean X): weights are read once per step (in base), each request adds its own
  self-attention cache and cross-attention K/V. The attention ops' FLOPs and bytes are
  linear in the summed tokens of the batch, so evaluating them at the batch mean is the
  cost model's own answer for the unpadded batch (continuous batching with per-request
  attention); static batches pad, and pass their padded sizes.
- Between table points the time is interpolated linearly (attention time is close to
  affine in tokens at a fixed batch); the grids hold every exact size of the run's
  requests (when there are at most a few hundred), and every integer cache length, so
  identical requests and lone requests hit table points and match ``predict`` exactly.

:func:`op_list_time_s` is the one place that asks the cost model for times.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

import numpy as np

from ..costmodel import ops as costs
from ..costmodel.kernels import kernel_times
from ..costmodel.prediction import Settings, dtype_bytes, flash_rows, stack_dims
from ..errors import SpecError
from ..specs import Hardware, ModelSpec, Workload

# Grids: at most this many exact values of N or X before falling back to a log-spaced grid.
MAX_EXACT_VALUES = 256
LOG_GRID_POINTS = 64


def op_list_time_s(ops: Iterable[tuple[costs.Op, float]], hw: Hardware, wl: Workload, settings: Settings):
    """Summed time (s) of ``calls`` calls of each op in ``ops`` (pairs of Op and calls);
    the ops' fields may be arrays, which broadcast.

    This is the only call into the cost model's timing in the simulator: when op times
    change (a per-kernel model, fused attention), this function is what changes."""
    total = 0.0
    impl = settings.impl(hw)
    for op, calls in ops:
        k = kernel_times(op, hw, wl.compute_dtype, wl.act_dtype, settings.efficiency, settings.overlap, impl)
        total = total + calls * k.time_s
    return np.asarray(total, dtype=float)


# --------------------------------------------------------------------------- operator lists


def _encode_ops(model: ModelSpec, wl: Workload, passages, N, impl, rows) -> list[tuple[costs.Op, float]]:
    """Encoder and cross-attention K/V projection of ``passages`` passages of N tokens
    (the encoder treats the b*P passages of a batch alike: B=1, P=passages), cut as
    the implementation ``impl`` cuts them (``rows``: flash rows of the chip)."""
    w, a, c = dtype_bytes(wl)
    enc, dec = model.encoder, model.decoder
    De, He, Ge, dke, Fe, ne = stack_dims(enc)
    _, _, Gd, dkd, _, _ = stack_dims(dec)
    out = [(op, 1) for op in costs.encoder_embed(De, 1, passages, N, w, a, impl)]
    out += [(op, enc.num_layers)
            for op in costs.encoder_layer(De, He, Ge, dke, Fe, ne, 1, passages, N, w, a, impl, rows)]
    out.append((costs.encoder_final(De, 1, passages, N, w, a, impl), 1))
    out += [(op, dec.num_cross_layers) for op in costs.cross_kv_layer(De, Gd, dkd, 1, passages, N, w, a, c, impl)]
    return out


def _is_attention(op: costs.Op, prefix: str) -> bool:
    # The attention kernels proper (scores, softmax, weighted values; flash attention;
    # an eager framework's copy of the growing cache): the ops whose cost follows the
    # tokens attended over. Projections, norms and MLP follow b only.
    if op.op == "self_kv_cache_cat":
        return prefix == "self_attn"
    return op.kind in ("attention", "softmax") and op.op.startswith(prefix)


def _decode_ops(model: ModelSpec, wl: Workload, B, X, t, part: str, impl, rows) -> list[tuple[costs.Op, float]]:
    """One decoding step's ops of one ``part``: "base" (everything but attention),
    "self" (self-attention kernels at cache length t) or "cross" (cross-attention
    kernels over X tokens per request)."""
    w, a, c = dtype_bytes(wl)
    dec = model.decoder
    Dd, Hd, Gd, dkd, Fd, nd = stack_dims(dec)
    n_cross = dec.num_cross_layers
    counts = {True: n_cross, False: dec.num_layers - n_cross}
    out: list[tuple[costs.Op, float]] = []
    for cross, layers in counts.items():
        if not layers:
            continue
        for op in costs.decoder_layer(Dd, Hd, Gd, dkd, Fd, nd, B, 1, X, t, cross, w, a, c, impl, rows):
            is_self, is_cross = _is_attention(op, "self_attn"), _is_attention(op, "cross_attn")
            if (part == "base" and not (is_self or is_cross)) or (part == "self" and is_self) or (
                part == "cross" and is_cross
            ):
                out.append((op, layers))
    if part == "base":
        out += [(op, 1) for op in costs.decoder_embed(Dd, B, w, a, impl)]
        out += [(op, 1) for op in costs.decoder_head(Dd, model.vocab_size, B, w, a, impl)]
    return out


def _grid(values: Sequence[float], lo: float, hi: float) -> list[float]:
    """Exact values (when few) plus a log-spaced grid from lo to hi, sorted, unique."""
    vals = sorted({float(v) for v in values})
    pts = set(vals) if len(vals) <= MAX_EXACT_VALUES else set()
    if hi > lo:
        pts |= {float(v) for v in np.geomspace(lo, hi, LOG_GRID_POINTS)}
    pts |= {float(lo), float(hi)}
    return sorted(pts)


def _interp(grid: list[float], row: list[float], x: float) -> float:
    i = bisect.bisect_left(grid, x)
    if i < len(grid) and grid[i] == x:
        return row[i]
    if i == 0 or i == len(grid):
        raise SpecError("simulate", "", f"internal: {x:g} outside the precomputed range {grid[0]:g}..{grid[-1]:g}")
    x0, x1 = grid[i - 1], grid[i]
    return row[i - 1] + (row[i] - row[i - 1]) * (x - x0) / (x1 - x0)


# --------------------------------------------------------------------------- the model


class ServiceModel:
    """Step times and memory of one model on one chip, precomputed for the sizes a run
    can meet. Build with :meth:`build`; every lookup is plain float arithmetic.

    Ranges: batches 1..``max_batch`` (already capped by memory), encode calls of up to
    ``max_batch * max(P)`` passages, passage lengths and cross-attention tokens between
    the smallest and largest of the requests (padded sizes included), cache lengths
    0..max(T)+1.
    """

    def __init__(self, *, model, hardware, workload, settings, max_batch, free_bytes, weight_bytes,
                 base, self_prefix, self_step, x_grid, x_table, n_grid, enc_table):
        self.model, self.hardware, self.workload, self.settings = model, hardware, workload, settings
        self.max_batch = int(max_batch)
        self.free_bytes = int(free_bytes)  # chip capacity minus weights
        self.weight_bytes = float(weight_bytes)
        self._base = base  # [b] -> s: one step's time of everything but attention
        self._self_prefix = self_prefix  # [b][m] -> sum of self-attention time over t = 0 .. m-1
        self._self = self_step  # [b][t] -> self-attention time of one step at cache length t
        self._x_grid = x_grid  # cross tokens per request
        self._x = x_table  # [b][j] -> cross-attention time at x_grid[j] tokens per request
        self._n_grid = n_grid  # passage lengths
        self._enc_np = enc_table  # numpy [passages, j] -> encode time at n_grid[j]
        self._enc_cols: dict[int, list[float]] = {}
        self._mem_cache: dict[tuple[int, int, int], int] = {}

    # ----------------------------------------------------------------- building

    @classmethod
    def build(cls, model: ModelSpec, hw: Hardware, workload: Workload, settings: Settings = Settings(), *,
              passages: Sequence[int], passage_len: Sequence[int], target_len: Sequence[int],
              max_batch: int, pad: bool) -> ServiceModel:
        """Tables for requests of the given sizes (arrays, one entry per request),
        batches of at most ``max_batch`` (lowered to what memory holds), padded (static
        batches: passages, lengths and outputs to the batch maximum) or not."""
        hw.peak(workload.compute_dtype)  # fail early, naming the missing dtype
        P = np.asarray(passages, dtype=np.int64)
        N = np.asarray(passage_len, dtype=np.int64)
        T = np.asarray(target_len, dtype=np.int64)
        terms = _memory_terms(model, workload, hw, P, N, T, settings)
        weight_bytes = float(np.asarray(terms["weight_bytes"]).max())
        free = int(hw.hbm_capacity_bytes - weight_bytes)
        per_request = np.asarray(terms["per_sample_peak_bytes"], dtype=float)
        if free <= 0:
            raise SpecError(
                hw.path or hw.name, "", f"{model.name} does not fit: its weights take {weight_bytes / 1e9:.1f} GB of "
                f"{hw.hbm_capacity_bytes / 1e9:.1f} GB (model and tensor parallelism are not modelled yet)")
        worst = int(per_request.argmax())
        if per_request[worst] > free:
            raise SpecError(
                "simulate", "request size",
                f"a request of {P[worst]} passages x {N[worst]} tokens, {T[worst]} target tokens needs "
                f"{per_request[worst] / 1e9:.2f} GB, more than the {free / 1e9:.2f} GB left beside the weights "
                f"of {model.name} on {hw.name}")
        if pad:
            smallest = float(_memory_terms(model, workload, hw, P.min(), N.min(), T.min(),
                                           settings)["per_sample_peak_bytes"])
        else:
            smallest = float(per_request.min())
        B = int(max(1, min(max_batch, math.floor(free / smallest))))
        b = np.arange(1, B + 1, dtype=float)
        wl = workload
        settings = settings.resolve(hw)
        impl, rows = settings.impl(hw), flash_rows(hw)

        base = op_list_time_s(_decode_ops(model, wl, b, 1.0, 1.0, "base", impl, rows), hw, wl, settings)
        t_max = int(T.max())
        t = np.arange(0, t_max + 2, dtype=float)
        self_ops = _decode_ops(model, wl, b[:, None], 1.0, t[None, :], "self", impl, rows)
        self_tab = op_list_time_s(self_ops, hw, wl, settings)
        self_tab = np.broadcast_to(self_tab, (B, t.size))
        prefix = np.concatenate([np.zeros((B, 1)), np.cumsum(self_tab, axis=1)], axis=1)

        X = P * N
        x_exact = np.unique(X)
        if pad:
            x_exact = np.unique(np.multiply.outer(np.unique(P), np.unique(N)))
        x_grid = _grid(x_exact, float(X.min()), float(x_exact.max()))
        xg = np.asarray(x_grid)
        cross_ops = _decode_ops(model, wl, b[:, None], xg[None, :], 1.0, "cross", impl, rows)
        x_tab = op_list_time_s(cross_ops, hw, wl, settings)
        x_tab = np.broadcast_to(x_tab, (B, xg.size))

        n_grid = _grid(np.unique(N), float(N.min()), float(N.max()))
        ng = np.asarray(n_grid)
        p = np.arange(0, B * int(P.max()) + 1, dtype=float)
        enc = op_list_time_s(_encode_ops(model, wl, p[:, None], ng[None, :], impl, rows), hw, wl, settings)
        enc = np.array(np.broadcast_to(enc, (p.size, ng.size)))

        pad_row = lambda a: [[0.0] * a.shape[1]] + a.tolist()  # noqa: E731  (row 0: b = 0, unused)
        return cls(
            model=model, hardware=hw, workload=workload, settings=settings, max_batch=B, free_bytes=free,
            weight_bytes=weight_bytes, base=[0.0] + np.broadcast_to(base, (B,)).tolist(),
            self_prefix=pad_row(prefix), self_step=pad_row(np.asarray(self_tab)), x_grid=x_grid,
            x_table=pad_row(np.asarray(x_tab)), n_grid=n_grid, enc_table=enc,
        )

    # ----------------------------------------------------------------- lookups

    def _enc_col(self, j: int) -> list[float]:
        col = self._enc_cols.get(j)
        if col is None:
            col = self._enc_cols[j] = self._enc_np[:, j].tolist()
        return col

    def encode_passages_time_s(self, passages: int, passage_len: float) -> float:
        """One encode call (encoder and cross-attention K/V projection) of ``passages``
        passages, all padded to ``passage_len`` tokens."""
        grid = self._n_grid
        i = bisect.bisect_left(grid, passage_len)
        if i < len(grid) and grid[i] == passage_len:
            return self._enc_col(i)[passages]
        if i == 0 or i == len(grid):
            raise SpecError("simulate", "", f"internal: passage length {passage_len} outside the precomputed range")
        lo, hi = self._enc_col(i - 1)[passages], self._enc_col(i)[passages]
        return lo + (hi - lo) * (passage_len - grid[i - 1]) / (grid[i] - grid[i - 1])

    def encode_time_s(self, b: int, passages_max: int, passage_len_max: float) -> float:
        """A static batch's encode: b requests padded to ``passages_max`` passages of
        ``passage_len_max`` tokens."""
        return self.encode_passages_time_s(b * passages_max, passage_len_max)

    def decode_step_time_s(self, b: int, cross_tokens_total: float, self_tokens_total: float) -> float:
        """One decoding step of b requests whose cross-attention tokens and
        self-attention cache lengths (this step's token included) sum to the totals."""
        return self.decode_run_time_s(b, cross_tokens_total / b, self_tokens_total / b, 1)

    def decode_run_time_s(self, b: int, cross_tokens_mean: float, self_tokens_mean: float, steps: int) -> float:
        """``steps`` consecutive decoding steps of the same b requests: the mean cache
        length is ``self_tokens_mean`` at the first step and grows by one a step."""
        i = int(self_tokens_mean)
        f = self_tokens_mean - i
        c = self._self_prefix[b]
        attn = (c[i + steps] - c[i]) if f == 0.0 else (1.0 - f) * (c[i + steps] - c[i]) + f * (
            c[i + steps + 1] - c[i + 1])
        return steps * (self._base[b] + _interp(self._x_grid, self._x[b], cross_tokens_mean)) + attn

    def steps_until(self, b: int, cross_tokens_mean: float, self_tokens_mean: float, max_steps: int,
                    duration_s: float) -> int:
        """The fewest steps (1 .. max_steps) whose run lasts at least ``duration_s``;
        ``max_steps`` if even those do not."""
        lo, hi = 1, max_steps
        if self.decode_run_time_s(b, cross_tokens_mean, self_tokens_mean, hi) < duration_s:
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            if self.decode_run_time_s(b, cross_tokens_mean, self_tokens_mean, mid) >= duration_s:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def request_bytes(self, passages: int, passage_len: int, target_len: int) -> int:
        """Memory one request holds while it is served: the peak of its encoder
        activations, encoder output with cross-attention K/V, and both K/V caches with
        the logits (``fidoperf.costmodel.ops.memory_per_sample``)."""
        key = (int(passages), int(passage_len), int(target_len))
        v = self._mem_cache.get(key)
        if v is None:
            per = _memory_terms(self.model, self.workload, self.hardware, *key, self.settings)["per_sample_peak_bytes"]
            v = self._mem_cache[key] = int(math.ceil(float(per)))
        return v

    def requests_bytes(self, passages, passage_len, target_len) -> list[int]:
        """:meth:`request_bytes` of many requests at once (arrays)."""
        per = _memory_terms(self.model, self.workload, self.hardware, np.asarray(passages), np.asarray(passage_len),
                            np.asarray(target_len), self.settings)["per_sample_peak_bytes"]
        return np.ceil(np.asarray(per, dtype=float)).astype(np.int64).tolist()

    def lone_time_s(self, passages: int, passage_len: int, target_len: int) -> float:
        """Latency of a request served alone: its encode and its T decoding steps at
        batch 1 (what ``predict`` gives for batch 1)."""
        x = float(passages * passage_len)
        return self.encode_passages_time_s(passages, passage_len) + self.decode_run_time_s(1, x, 1.0, target_len)


def _memory_terms(model: ModelSpec, wl: Workload, hw: Hardware, P, N, T, settings: Settings = Settings()) -> dict:
    """:func:`fidoperf.costmodel.ops.memory_terms` of one request of P passages x N
    tokens and T target tokens (arrays broadcast); flash attention keeps the encoder's
    attention scores on chip."""
    w, a, c = dtype_bytes(wl)
    enc, dec = model.encoder, model.decoder
    return costs.memory_terms(*stack_dims(enc), enc.num_layers, *stack_dims(dec), dec.num_layers,
                              dec.num_cross_layers, model.vocab_size, 1, P, N, T, w, a, c, hw.hbm_capacity_bytes,
                              settings.impl(hw).flash)
