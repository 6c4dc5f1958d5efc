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

Layouts (:class:`fidoperf.specs.layout.Layout`): every time is that of one chip of a
replica, its ops cut by :mod:`fidoperf.whatif.layout_ops` from the same builders
``predict`` uses (heads and MLP split over T chips, the all-reduces of every sub-layer,
the all-to-alls of batch-sharded keys and values, the vocabulary split of the logits),
and its memory that of one chip (:func:`fidoperf.costmodel.parallel.chip_memory`). With
separate pools there are two sides: the encoder pool's replicas encode, and the decoder
pool's decode; the shipment between them is a transfer op of its own.

What one call costs, and why it decomposes exactly:
- encode: the encoder stack, whose ops depend only on the number of passages in the call
  (b*P, the batch dimension the encoder flattens) and on N, so its table is indexed by
  (passages in the call, N); plus the cross-attention K/V projection, indexed likewise by
  the passages a chip projects (all of them, or with batch-sharded keys and values those
  of its ceil(b/T) requests), run by the encoding side unless the encoder pool ships its
  outputs, in which case the decoder pool projects when the requests join it. A call
  pads its passages to the longest N in it.
- one decoding step of b requests = base(b) + self-attention(b, mean t) + cross-attention
  (b, mean X): weights are read once per step (in base, with the step's collectives),
  each request adds its own self-attention cache and cross-attention K/V. The attention
  ops' FLOPs and bytes are linear in the summed tokens of the batch, so evaluating them
  at the batch mean is the cost model's own answer for the unpadded batch (continuous
  batching with per-request attention); static batches pad, and pass their padded sizes.
- shipping the requests of one call: a transfer op of the bytes of their summed tokens
  (encoder outputs or projected keys and values), evaluated once per distinct size.
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
from ..costmodel import parallel
from ..costmodel.kernels import kernel_times
from ..costmodel.prediction import Settings, dtype_bytes, flash_rows
from ..errors import SpecError
from ..specs import Hardware, ModelSpec, Workload
from ..specs.layout import Layout
from . import layout_ops

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
    """Step times and memory of one model under one layout, precomputed for the sizes a
    run can meet. Build with :meth:`build`; every lookup is plain float arithmetic.

    Times are those of one chip of a replica (all T chips of a tensor-parallel replica
    run the same ops at once; collectives included). Without separate pools one replica
    encodes and decodes; with pools an encoder replica encodes (and projects the
    cross-attention keys and values when those are what it ships), the link ships, and a
    decoder replica decodes (projecting the keys and values when it receives encoder
    outputs).

    Memory: the decoding side (the replica, or a decoder-pool replica) under
    ``free_bytes``/``request_bytes``; with pools, the encoder side under
    ``enc_free_bytes``/``enc_requests_bytes`` (both per chip, from
    :func:`fidoperf.costmodel.parallel.chip_memory`).

    Ranges: decoding batches 1..``max_batch`` (already capped by memory), encode calls
    of up to ``enc_max_batch * max(P)`` passages, passage lengths and cross-attention
    tokens between the smallest and largest of the requests (padded sizes included),
    cache lengths 0..max(T)+1.
    """

    def __init__(self, *, model, hardware, workload, settings, layout, ship, max_batch, free_bytes, weight_bytes,
                 enc_max_batch, enc_free_bytes, enc_weight_bytes, base, self_prefix, self_step, x_grid, x_table,
                 n_grid, enc_table, kv_table):
        self.model, self.hardware, self.workload, self.settings = model, hardware, workload, settings
        self.layout = layout
        self.ship = ship  # pools: "encoder_outputs" or "cross_kv"; None without pools
        self.kv_on_encoder = ship != "encoder_outputs"  # who projects the cross-attention keys and values
        self.max_batch = int(max_batch)  # decoding side
        self.free_bytes = int(free_bytes)  # chip capacity minus weights, decoding side
        self.weight_bytes = float(weight_bytes)
        self.enc_max_batch = int(enc_max_batch)  # encoding side (= decoding side without pools)
        self.enc_free_bytes = int(enc_free_bytes)
        self.enc_weight_bytes = float(enc_weight_bytes)
        self._base = base  # [b] -> s: one step's time of everything but attention (collectives included)
        self._self_prefix = self_prefix  # [b][m] -> sum of self-attention time over t = 0 .. m-1
        self._self = self_step  # [b][t] -> self-attention time of one step at cache length t
        self._x_grid = x_grid  # cross tokens per request
        self._x = x_table  # [b][j] -> cross-attention time at x_grid[j] tokens per request
        self._n_grid = n_grid  # passage lengths
        self._enc_np = enc_table  # numpy [passages, j] -> encoder stack time at n_grid[j]
        self._kv_np = kv_table  # numpy [passages, j] -> cross K/V projection time at n_grid[j]
        self._cols: dict[tuple[str, int], list[float]] = {}
        self._mem_cache: dict[tuple[int, int, int], int] = {}
        self._enc_mem_cache: dict[tuple[int, int, int], int] = {}
        self._ship_cache: dict[float, float] = {}

    # ----------------------------------------------------------------- building

    @classmethod
    def build(cls, model: ModelSpec, hw: Hardware, workload: Workload, settings: Settings = Settings(), *,
              passages: Sequence[int], passage_len: Sequence[int], target_len: Sequence[int],
              max_batch: int, pad: bool, layout: Layout | None = None, ship: str | None = None) -> ServiceModel:
        """Tables for requests of the given sizes (arrays, one entry per request),
        batches of at most ``max_batch`` (lowered to what memory holds), padded (static
        batches: passages, lengths and outputs to the batch maximum) or not, on one chip
        of a replica of ``layout`` (default: one chip). With separate pools, ``ship``
        says what the encoder pool ships (None: what ``predict`` finds cheaper for one
        request of the median size)."""
        hw.peak(workload.compute_dtype)  # fail early, naming the missing dtype
        layout = layout or Layout()
        parallel.chip_dims(model, layout)  # fail early: T must split the heads
        if (layout.tensor_parallel > 1 or layout.pooled) and hw.interconnect is None:
            raise SpecError(hw.path or hw.name, "interconnect",
                            f"{layout.label()} needs the profile's interconnect block")
        if layout.pooled:
            if ship is None:
                ship = default_ship(model, hw, workload, settings, layout, passages, passage_len, target_len)
            elif ship not in parallel.SHIP_OPTIONS:
                raise SpecError("--ship", "", f"must be one of {', '.join(parallel.SHIP_OPTIONS)}, got {ship!r}")
        else:
            ship = None
        P = np.asarray(passages, dtype=np.int64)
        N = np.asarray(passage_len, dtype=np.int64)
        T = np.asarray(target_len, dtype=np.int64)
        mem = chip_memory(model, workload, hw, settings, layout, ship, P, N, T)
        sides = {}
        for side in ("encoder", "decoder"):
            m = mem["pools"][side] if layout.pooled else mem
            weight_bytes = float(np.asarray(m["weight_bytes"]).max())
            free = int(hw.hbm_capacity_bytes - weight_bytes)
            per_request = np.asarray(m["per_sample_peak_bytes"], dtype=float) * np.ones(P.shape)
            where = f" in the {side} pool" if layout.pooled else ""
            if free <= 0:
                raise SpecError(
                    hw.path or hw.name, "", f"{model.name} does not fit under the layout ({layout.label()}): its "
                    f"weights take {weight_bytes / 1e9:.1f} GB per chip{where} of {hw.hbm_capacity_bytes / 1e9:.1f} GB")
            worst = int(per_request.argmax())
            if per_request[worst] > free:
                raise SpecError(
                    "simulate", "request size",
                    f"a request of {P[worst]} passages x {N[worst]} tokens, {T[worst]} target tokens needs "
                    f"{per_request[worst] / 1e9:.2f} GB per chip{where}, more than the {free / 1e9:.2f} GB left "
                    f"beside the weights of {model.name} on {hw.name} ({layout.label()})")
            if pad:
                small = chip_memory(model, workload, hw, settings, layout, ship, P.min(), N.min(), T.min())
                smallest = float((small["pools"][side] if layout.pooled else small)["per_sample_peak_bytes"])
            else:
                smallest = float(per_request.min())
            sides[side] = (weight_bytes, free, int(max(1, min(max_batch, math.floor(free / smallest)))))
        B, B_enc = sides["decoder"][2], sides["encoder"][2]
        b = np.arange(1, B + 1, dtype=float)
        wl = workload
        settings = settings.resolve(hw)
        impl, rows = settings.impl(hw), flash_rows(hw)

        def decode_ops(B_, X, t, part):
            return layout_ops.decode_step_ops(model, wl, layout, B_, X, t, part, impl, rows)

        base = op_list_time_s(decode_ops(b, 1.0, 1.0, "base"), hw, wl, settings)
        t_max = int(T.max())
        t = np.arange(0, t_max + 2, dtype=float)
        self_tab = op_list_time_s(decode_ops(b[:, None], 1.0, t[None, :], "self"), hw, wl, settings)
        self_tab = np.broadcast_to(self_tab, (B, t.size))
        prefix = np.concatenate([np.zeros((B, 1)), np.cumsum(self_tab, axis=1)], axis=1)

        X = P * N
        x_exact = np.unique(X)
        if pad:
            x_exact = np.unique(np.multiply.outer(np.unique(P), np.unique(N)))
        x_grid = _grid(x_exact, float(X.min()), float(x_exact.max()))
        xg = np.asarray(x_grid)
        x_tab = op_list_time_s(decode_ops(b[:, None], xg[None, :], 1.0, "cross"), hw, wl, settings)
        x_tab = np.broadcast_to(x_tab, (B, xg.size))

        n_grid = _grid(np.unique(N), float(N.min()), float(N.max()))
        ng = np.asarray(n_grid)
        p = np.arange(0, max(B, B_enc) * int(P.max()) + 1, dtype=float)
        p_enc = p[: B_enc * int(P.max()) + 1]
        enc = op_list_time_s(layout_ops.encoder_call_ops(model, wl, layout, p_enc[:, None], ng[None, :], impl, rows),
                             hw, wl, settings)
        kv = op_list_time_s(layout_ops.cross_kv_call_ops(model, wl, layout, p[:, None], ng[None, :], impl),
                            hw, wl, settings)

        pad_row = lambda a: [[0.0] * a.shape[1]] + a.tolist()  # noqa: E731  (row 0: b = 0, unused)
        return cls(
            model=model, hardware=hw, workload=workload, settings=settings, layout=layout, ship=ship, max_batch=B,
            free_bytes=sides["decoder"][1], weight_bytes=sides["decoder"][0], enc_max_batch=B_enc,
            enc_free_bytes=sides["encoder"][1], enc_weight_bytes=sides["encoder"][0],
            base=[0.0] + np.broadcast_to(base, (B,)).tolist(), self_prefix=pad_row(prefix),
            self_step=pad_row(np.asarray(self_tab)), x_grid=x_grid, x_table=pad_row(np.asarray(x_tab)),
            n_grid=n_grid, enc_table=np.array(np.broadcast_to(enc, (p_enc.size, ng.size))),
            kv_table=np.array(np.broadcast_to(kv, (p.size, ng.size))),
        )

    # ----------------------------------------------------------------- lookups

    def _col(self, table: str, j: int) -> list[float]:
        col = self._cols.get((table, j))
        if col is None:
            col = self._cols[(table, j)] = (self._enc_np if table == "enc" else self._kv_np)[:, j].tolist()
        return col

    def _lookup(self, table: str, passages: int, passage_len: float) -> float:
        grid = self._n_grid
        i = bisect.bisect_left(grid, passage_len)
        if i < len(grid) and grid[i] == passage_len:
            return self._col(table, i)[passages]
        if i == 0 or i == len(grid):
            raise SpecError("simulate", "", f"internal: passage length {passage_len} outside the precomputed range")
        lo, hi = self._col(table, i - 1)[passages], self._col(table, i)[passages]
        return lo + (hi - lo) * (passage_len - grid[i - 1]) / (grid[i] - grid[i - 1])

    def kv_passages(self, requests: int, passages: int) -> int:
        """Passages whose cross-attention keys and values one chip projects when
        ``requests`` requests of ``passages`` passages in all join (see
        :func:`fidoperf.whatif.layout_ops.kv_passages_per_chip`)."""
        return int(layout_ops.kv_passages_per_chip(self.layout, requests, passages))

    def encode_passages_time_s(self, passages: int, passage_len: float, kv_passages: int | None = None) -> float:
        """One encode call on the encoding side of ``passages`` passages, all padded to
        ``passage_len`` tokens: the encoder stack, and the projection of the keys and
        values of ``kv_passages`` passages (default: all) where the encoding side does it."""
        t = self._lookup("enc", passages, passage_len)
        if self.kv_on_encoder:
            t += self._lookup("kv", passages if kv_passages is None else kv_passages, passage_len)
        return t

    def encode_time_s(self, b: int, passages_max: int, passage_len_max: float) -> float:
        """A static batch's encode: b requests padded to ``passages_max`` passages of
        ``passage_len_max`` tokens."""
        kv = self.kv_passages(b, b * passages_max)
        return self.encode_passages_time_s(b * passages_max, passage_len_max, kv)

    def join_time_s(self, kv_passages: int, passage_len: float) -> float:
        """What a decoder-pool replica spends when requests join it: the projection of
        the keys and values of ``kv_passages`` passages when it receives encoder outputs;
        nothing when it receives the keys and values (and without pools)."""
        return 0.0 if self.kv_on_encoder else self._lookup("kv", kv_passages, passage_len)

    def ship_time_s(self, tokens: float) -> float:
        """Shipping the data of ``tokens`` cross-attention tokens (summed over the requests
        shipped together) from an encoder replica to a decoder replica; 0 without pools."""
        if self.ship is None:
            return 0.0
        v = self._ship_cache.get(tokens)
        if v is None:
            op = layout_ops.ship_op(self.model, self.workload, self.layout, self.ship, tokens)
            v = self._ship_cache[tokens] = float(op_list_time_s([(op, 1)], self.hardware, self.workload,
                                                                self.settings))
        return v

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

    def _side(self, side: str, P, N, T) -> dict:
        m = chip_memory(self.model, self.workload, self.hardware, self.settings, self.layout, self.ship, P, N, T)
        return m["pools"][side] if self.layout.pooled else m

    def request_bytes(self, passages: int, passage_len: int, target_len: int) -> int:
        """Memory one request holds per chip on the decoding side while it is served:
        the peak of its encoder activations, encoder output with cross-attention K/V,
        and both K/V caches with the logits (without pools; see
        :func:`fidoperf.costmodel.parallel.chip_memory` for what each pool holds)."""
        return self._peak_bytes("decoder", self._mem_cache, passages, passage_len, target_len)

    def enc_request_bytes(self, passages: int, passage_len: int, target_len: int) -> int:
        """Memory one request holds per chip on the encoding side (pools: from its encode
        until it has been shipped; without pools, :meth:`request_bytes`)."""
        if not self.layout.pooled:
            return self.request_bytes(passages, passage_len, target_len)
        return self._peak_bytes("encoder", self._enc_mem_cache, passages, passage_len, target_len)

    def _peak_bytes(self, side: str, cache: dict, passages, passage_len, target_len) -> int:
        """Whole bytes one request holds per chip on ``side``, memoised in ``cache``."""
        key = (int(passages), int(passage_len), int(target_len))
        v = cache.get(key)
        if v is None:
            v = cache[key] = int(math.ceil(float(self._side(side, *key)["per_sample_peak_bytes"])))
        return v

    def requests_bytes(self, passages, passage_len, target_len, side: str = "decoder") -> list[int]:
        """:meth:`request_bytes` (or the encoding side's) of many requests at once (arrays)."""
        P, N, T = (np.asarray(x) for x in (passages, passage_len, target_len))
        per = self._side(side, P, N, T)["per_sample_peak_bytes"] * np.ones(P.shape)
        return np.ceil(np.asarray(per, dtype=float)).astype(np.int64).tolist()

    def lone_time_s(self, passages: int, passage_len: int, target_len: int) -> float:
        """Latency of a request served alone: its encode, shipment (pools) and T decoding
        steps at batch 1 (what ``predict`` gives for batch 1 under the layout)."""
        x = float(passages * passage_len)
        kv = self.kv_passages(1, passages)
        return (self.encode_passages_time_s(passages, passage_len, kv) + self.ship_time_s(x)
                + self.join_time_s(kv, passage_len) + self.decode_run_time_s(1, x, 1.0, target_len))


def chip_memory(model: ModelSpec, wl: Workload, hw: Hardware, settings: Settings, layout: Layout,
                ship: str | None, P, N, T, B=1) -> dict:
    """:func:`fidoperf.costmodel.parallel.chip_memory` of B requests of P passages x N
    tokens and T target tokens (arrays broadcast) on one chip under ``layout``; flash
    attention keeps the encoder's attention scores on chip. One chip and T = 1 give
    exactly :func:`fidoperf.costmodel.ops.memory_terms`."""
    w, a, c = dtype_bytes(wl)
    cd = parallel.chip_dims(model, layout)
    dec = model.decoder
    layers = (model.encoder.num_layers, dec.num_layers, dec.num_cross_layers)
    return parallel.chip_memory(cd, layers, model.vocab_size, dec.num_kv_heads, layout, B, P, N, T, w, a, c,
                                hw.hbm_capacity_bytes, settings.impl(hw).flash, ship)



def batch_phase_times_s(model: ModelSpec, hw: Hardware, wl: Workload, settings: Settings, layout: Layout,
                        ship: str | None, b: int = 1) -> dict[str, float]:
    """Seconds of the phases of one batch of ``b`` identical requests of the workload's
    sizes on one chip of a replica, from the same op lists as the simulation: the encode
    call (with the key/value projection where the encoding side does it), the shipment
    (pools), the projection on the decoder side (pools shipping encoder outputs) and the
    T decoding steps. Their sum is ``predict``'s batch time under the layout (and, at
    b = 1, the latency of a lone request)."""
    settings = settings.resolve(hw)
    impl, rows = settings.impl(hw), flash_rows(hw)
    P, N, T = wl.passages, wl.passage_len, wl.target_len
    X = P * N
    kv_p = layout_ops.kv_passages_per_chip(layout, b, b * P)
    kv = float(op_list_time_s(layout_ops.cross_kv_call_ops(model, wl, layout, kv_p, N, impl), hw, wl, settings))
    enc = float(op_list_time_s(layout_ops.encoder_call_ops(model, wl, layout, b * P, N, impl, rows), hw, wl,
                               settings))
    t = np.arange(1, T + 1, dtype=float)
    steps = sum(float(np.sum(op_list_time_s(layout_ops.decode_step_ops(model, wl, layout, b, X, tt, part, impl, rows),
                                            hw, wl, settings) * np.ones(T)))
                for part, tt in (("base", 1.0), ("self", t), ("cross", 1.0)))
    pooled = layout.pooled
    shipped = 0.0
    if pooled:
        op = layout_ops.ship_op(model, wl, layout, ship, b * X)
        shipped = float(op_list_time_s([(op, 1)], hw, wl, settings))
    on_enc = not pooled or ship == "cross_kv"
    return {"encode_s": enc + (kv if on_enc else 0.0), "ship_s": shipped, "join_s": 0.0 if on_enc else kv,
            "decode_s": steps}


def default_ship(model: ModelSpec, hw: Hardware, wl: Workload, settings: Settings, layout: Layout,
                 passages, passage_len, target_len) -> str:
    """What the encoder pool ships: what ``predict`` keeps (the shorter batch time) for
    one request of the median size."""
    med = {k: int(np.median(np.asarray(v))) for k, v in
           (("passages", passages), ("passage_len", passage_len), ("target_len", target_len))}
    one = wl.replace(batch=1, **med)
    times = {ship: sum(batch_phase_times_s(model, hw, one, settings, layout, ship).values())
             for ship in parallel.SHIP_OPTIONS}
    return min(parallel.SHIP_OPTIONS, key=lambda k: times[k])
