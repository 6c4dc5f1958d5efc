"""Request-level serving simulation of a FiD model: queueing, batching policies,
latency percentiles, and the highest rate that meets a latency target.

Requests arrive (Poisson, gamma-distributed gaps for bursts, evenly spaced, or a
trace), each with its own passages P, tokens per passage N and output length T, and
are served from one first-come-first-served queue by the replicas of a layout
(:class:`fidoperf.specs.layout.Layout`): ``layout.replicas`` copies of the model, each
split over T chips by tensor parallelism (a replica is one server: its T chips run the
same step at once), or separate encoder and decoder pools. The event engine is SimPy;
every service time comes from :class:`fidoperf.whatif.service.ServiceModel`, i.e. from
fidoperf's own prediction for one chip of a replica with the batch as composed at that
moment, collectives included.

Policies:
- ``static``: a free chip takes the oldest waiting requests, up to ``max_batch`` and as
  many as fit in memory when padded to the batch's largest P, N and T, as soon as the
  batch is full (``max_batch``, or the next request would not fit) or the oldest has
  waited ``max_wait_s``. The batch is encoded, then decoded to its longest output; its
  results return together when it ends (as ``generate`` returns them).
- ``continuous``: iteration-level scheduling of the decoder. At every step boundary a
  chip admits the oldest waiting requests that fit (memory and ``max_batch``), encodes
  them in one call (passages padded to the longest N among them), and they join the
  decoding batch; a request leaves after its own T steps and frees its memory. Decoding
  is unpadded: each request attends over its own caches. Without pools, encoding runs
  on the same replica, between decoding steps (the running requests wait for it).
  ``max_wait_s`` does not apply.

Separate pools (``Layout(encoder_chips=..., decoder_chips=...)``): encoder replicas take
requests from the queue and encode them (static: a batch formed as above, within the
encoder's memory; continuous: every waiting request that fits, in one call) and hold
them until they are shipped; a decoder replica pulls the oldest encoded requests when it
has room for them, the link ships them (a transfer op: encoder outputs or projected keys
and values, whichever ``predict`` finds cheaper unless ``ship`` says), and they join its
decoding batch at the next step boundary (continuous; decoding never pauses for an
encode, only for the projection of keys and values when it receives encoder outputs).
Static: a free decoder replica takes all the encoded requests waiting that fit (up to
``max_batch``, padded to their largest P, N and T) as one batch and decodes it to its
longest output, so that its batches grow with the load as a colocated chip's do. See
the comment above ``_Engine._ship``.

Memory: a request holds its peak footprint per chip (encoder activations, encoder
output with its cross-attention K/V, or both K/V caches with the logits; the largest;
:func:`fidoperf.costmodel.parallel.chip_memory`) from admission to completion, beside
the weights: the batch never holds more than fits. With pools, each pool's own figures:
the encoder side from admission until shipped, the decoder side from its pull (its
shipment included) to completion. With keys and values sharded over the batch a request
is counted at its mean share (1/T of its cross-attention cache per chip).

Steps that change nothing are not simulated one by one: between an admission and the
next completion or admissible arrival the decoding batch is fixed, so its steps are one
SimPy timeout whose length is summed from prefix sums of the step-time tables. This
gives the same times as stepping one by one.

``--service-cv`` scales each encode call by an independent gamma factor of mean 1 and
that coefficient of variation, and each decoding step likewise (a run of k steps by the
sum of k such factors: gamma with CV cv/sqrt(k), exact when the steps are equally long).
Run lengths are chosen from the predicted times, so with a spread an admission can land
one step early or late.

``sustainable``: the offered rate is below the chips' capacity, measured as the
throughput of the same requests all queued at time 0 (the chips never idle). Above it
the queue grows without bound, and latency statistics are withheld (None).

Units: seconds, bytes, queries per second.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy

from ..costmodel.prediction import Settings
from ..errors import SpecError
from ..specs import Hardware, ModelSpec, Workload
from ..specs.layout import Layout
from ..specs.tables import read_table
from .service import ServiceModel

POLICIES = ("static", "continuous")
ARRIVALS = ("poisson", "gamma", "deterministic")
SIZE_FIELDS = ("passages", "passage_len", "target_len")
SIZE_DISTS = ("fixed", "uniform", "geometric")
TRACE_COLUMNS = ("arrival_s", "passages", "passage_len", "target_len")

SIZE_DIST_HELP = (
    "fixed: every request has the given value; uniform: whole numbers uniform on 1 .. 2m-1 (mean m); "
    "geometric: whole numbers 1, 2, ... with P(k) = p (1-p)^(k-1), p = 1/m (mean m, standard deviation "
    "sqrt(m(m-1)), the length of an output that stops with probability 1/m after each token)."
)

RECORD_COLUMNS = [
    "request", "arrival_s", "passages", "passage_len", "target_len", "replica", "encoder_replica", "batch",
    "start_s", "encoded_s", "joined_s", "first_token_s", "finish_s", "queue_s", "ttft_s", "latency_s", "tpot_s",
    "measured",
]
"""Per-request records: ``replica`` decoded it (with pools, a decoder replica; without,
the one replica that served it), ``encoder_replica`` encoded it; ``batch`` the requests
encoded with it (continuous; with pools, those that joined the decoding batch with it)
or its static batch; times in seconds from the start of the run: ``start_s`` taken by a
chip, ``encoded_s`` encode done, ``joined_s`` joined the decoding batch (with pools,
after its shipment; with encoder outputs shipped, after the projection of its keys and
values), ``first_token_s``, ``finish_s``; ``queue_s`` = start - arrival."""


# --------------------------------------------------------------------------- inputs


def _positive(name: str, v, integer: bool = False, zero: bool = False) -> None:
    ok = not isinstance(v, bool) and isinstance(v, (int, np.integer) if integer else (int, float, np.number))
    ok = ok and math.isfinite(v) and (v >= 0 if zero else v > 0)
    if not ok:
        what = "a whole number" if integer else "a number"
        raise SpecError(name, "", f"must be {what} {'of at least 0' if zero else 'above 0'}, got {v!r}")


@dataclass(frozen=True)
class Serving:
    """How the chips serve: the batching policy and its limits, and the layout.

    ``replicas`` is the older way to ask for data-parallel copies of one chip each:
    without a layout it means ``Layout(chips=replicas)``; with one it must agree with
    ``layout.replicas`` (and is set to it)."""

    policy: str = "continuous"  # static | continuous
    max_batch: int = 128  # most requests in one batch per replica (memory may allow fewer)
    max_wait_s: float = 0.010  # static: dispatch a batch that is not full after its oldest waited this long
    replicas: int = 1  # data-parallel copies sharing one queue (see the docstring)
    service_cv: float = 0.0  # coefficient of variation of each encode and decoding step (0: as predicted)
    layout: Layout | None = None  # how the model is spread over chips (None: `replicas` chips, one copy each)
    ship: str | None = None  # pools: "encoder_outputs" | "cross_kv" (None: what predict finds cheaper)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise SpecError("--policy", "", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        _positive("--max-batch", self.max_batch, integer=True)
        _positive("--replicas", self.replicas, integer=True)
        _positive("--max-wait-ms", self.max_wait_s, zero=True)
        _positive("--service-cv", self.service_cv, zero=True)
        layout = self.layout
        if layout is None:
            layout = Layout(chips=self.replicas)
        elif not isinstance(layout, Layout):
            raise SpecError("layout", "", f"must be a fidoperf.specs.layout.Layout, got {type(layout).__name__}")
        elif self.replicas != 1 and (layout.pooled or self.replicas != layout.replicas):
            raise SpecError("--replicas", "", f"{self.replicas} replicas given, but the layout ({layout.label()}) "
                                              f"has {'separate pools' if layout.pooled else layout.replicas}")
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "replicas", layout.replicas)


@dataclass(frozen=True)
class Requests:
    """The requests of one run, in arrival order (arrays of one entry per request)."""

    arrival_s: np.ndarray
    passages: np.ndarray
    passage_len: np.ndarray
    target_len: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)


def unit_arrivals(kind: str, n: int, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """Arrival times of ``n`` requests at a mean rate of 1 per second, starting at the
    first gap; divide by the rate for another rate (the same draws at every rate).

    poisson: exponential gaps; gamma: gamma gaps of mean 1 and coefficient of variation
    ``cv`` (cv > 1: bursts; cv = 1: Poisson); deterministic: gaps of exactly 1."""
    if kind not in ARRIVALS:
        raise SpecError("--arrivals", "", f"must be one of {', '.join(ARRIVALS)} (or give --trace), got {kind!r}")
    if kind == "deterministic":
        gaps = np.ones(n)
    elif kind == "poisson":
        gaps = rng.exponential(1.0, n)
    else:
        _positive("--cv", cv)
        gaps = rng.gamma(1.0 / cv**2, cv**2, n)
    return np.cumsum(gaps)


def draw_sizes(workload: Workload, n: int, rng: np.random.Generator,
               dists: Mapping[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(passages, passage_len, target_len) of ``n`` requests: each field fixed at the
    workload's value or drawn around it as its mean (see :data:`SIZE_DIST_HELP`)."""
    dists = dict(dists or {})
    for k, v in dists.items():
        if k not in SIZE_FIELDS:
            raise SpecError("--dist", "", f"unknown field {k!r} (known: {', '.join(SIZE_FIELDS)})")
        if v not in SIZE_DISTS:
            raise SpecError("--dist", k, f"unknown distribution {v!r} (known: {', '.join(SIZE_DISTS)})")
    out = []
    for name in SIZE_FIELDS:
        m = getattr(workload, name)
        kind = dists.get(name, "fixed")
        if kind == "fixed" or m == 1:
            out.append(np.full(n, m, dtype=np.int64))
        elif kind == "uniform":
            out.append(rng.integers(1, 2 * m, n, dtype=np.int64))
        else:
            out.append(rng.geometric(1.0 / m, n).astype(np.int64))
    return out[0], out[1], out[2]


def read_trace(path: str | Path, limit: int | None = None) -> Requests:
    """A trace CSV: a header with exactly the columns ``arrival_s, passages,
    passage_len, target_len`` (any order), one request a row; arrival_s in seconds,
    at least 0 and not decreasing; the others whole numbers of at least 1. Errors name
    the file, the row (the header is row 1) and the column. ``limit`` keeps the first
    requests only."""
    kinds = {"arrival_s": "float", "passages": "positive_int", "passage_len": "positive_int",
             "target_len": "positive_int"}
    table = read_table(path, kinds, "--trace")
    if limit is not None:
        table = table.iloc[: int(limit)]
    arrival = table["arrival_s"].to_numpy(dtype=float)
    back = np.flatnonzero(np.diff(arrival) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise SpecError(f"--trace {path}", f"row {i + 2}, column arrival_s",
                        f"arrivals must not go back in time ({arrival[i]:g} after {arrival[i - 1]:g})")
    return Requests(arrival, *(table[c].to_numpy(dtype=np.int64) for c in SIZE_FIELDS))


# --------------------------------------------------------------------------- the engine


class _Engine:
    """One run of the discrete-event simulation (SimPy). The waiting queue is FIFO, so
    it is the range of requests [head, arrived): nothing but two counters. A server is
    one replica (its T chips act as one); with separate pools, encoder replicas take
    from that queue and decoder replicas from the queue of encoded requests."""

    def __init__(self, svc: ServiceModel, reqs: Requests, serving: Serving, rng: np.random.Generator):
        self.svc, self.serving, self.rng = svc, serving, rng
        self.layout = svc.layout
        self.pooled = self.layout.pooled
        env = self.env = simpy.Environment()
        n = self.n = len(reqs)
        self.arrival = reqs.arrival_s.tolist()
        self.P, self.N, self.T = reqs.passages.tolist(), reqs.passage_len.tolist(), reqs.target_len.tolist()
        self.bytes = svc.requests_bytes(reqs.passages, reqs.passage_len, reqs.target_len)
        self.max_batch = min(serving.max_batch, svc.max_batch)
        self.free = svc.free_bytes
        self.cv = serving.service_cv
        self.head = 0  # oldest request not yet taken by a chip
        self.arrived = 0  # requests that have arrived
        self.in_system = 0
        self.wake = env.event()
        nan = math.nan
        self.start, self.first, self.finish = [nan] * n, [nan] * n, [nan] * n
        self.encoded, self.joined = [nan] * n, [nan] * n
        self.replica, self.source, self.batch = [-1] * n, [-1] * n, [0] * n
        self.q_time, self.q_wait, self.q_sys = [0.0], [0], [0]
        self.busy_s = 0.0  # replica-seconds busy (both pools)
        self.enc_busy_s = 0.0  # pools: encoder replica-seconds busy
        self.link_busy_s = 0.0  # pools: seconds of shipping, summed over shipments
        self.decode_s = 0.0
        self.decode_batch_s = 0.0  # sum of batch x duration over decoding
        # static: the batch forming at the head of the queue
        self._form = (0, 0, 0, 0, False)  # (count, P max, N max, T max, full)
        if self.pooled:
            L = self.layout
            E, D = L.encoder_replicas, L.decoder_replicas
            self.enc_bytes = svc.requests_bytes(reqs.passages, reqs.passage_len, reqs.target_len, side="encoder")
            self.enc_free = svc.enc_free_bytes
            self.enc_max_batch = min(serving.max_batch, svc.enc_max_batch)
            self.enc_held = [0] * E  # bytes of requests encoded or encoding, not yet shipped
            self.enc_hold = [0] * n  # what each of those holds on its encoder replica
            self.enc_freed = [env.event() for _ in range(E)]
            self.send_free_s = [0.0] * E  # when each replica's links are free to send / receive
            self.recv_free_s = [0.0] * D
            self.dec_queue: deque = deque()  # encoded, not yet taken by a decoder replica
            self.dec_wake = env.event()
            self.landed: list[list[int]] = [[] for _ in range(D)]  # shipped to replica d, not yet joined
            self.landed_ev = [env.event() for _ in range(D)]

    # ----------------------------------------------------------------- shared

    def run(self) -> _Engine:
        env = self.env
        env.process(self._arrivals())
        static = self.serving.policy == "static"
        if self.pooled:
            enc, dec = (self._enc_static, self._dec_static) if static else (self._enc_continuous,
                                                                            self._dec_continuous)
            for e in range(self.layout.encoder_replicas):
                env.process(enc(e))
            for d in range(self.layout.decoder_replicas):
                env.process(dec(d))
        else:
            server = self._static if static else self._continuous
            for r in range(self.serving.replicas):
                env.process(server(r))
        env.run()
        return self

    def utilisation(self, span: float) -> dict[str, float]:
        """Busy fractions over ``span`` seconds: of all chips (every chip of a busy
        replica counts as busy), and with pools of each pool and of the links."""
        if not span > 0:
            return {"utilisation": math.nan}
        L = self.layout
        if not self.pooled:
            return {"utilisation": self.busy_s / (L.replicas * span)}
        E, D = L.encoder_replicas, L.decoder_replicas
        dec_busy = self.busy_s - self.enc_busy_s
        return {"utilisation": self.busy_s / ((E + D) * span), "encoder_utilisation": self.enc_busy_s / (E * span),
                "decoder_utilisation": dec_busy / (D * span),
                "link_utilisation": self.link_busy_s / (min(E, D) * span)}

    def _log(self) -> None:
        self.q_time.append(self.env.now)
        self.q_wait.append(self.arrived - self.head)
        self.q_sys.append(self.in_system)

    def _arrivals(self):
        env, arr = self.env, self.arrival
        for i in range(self.n):
            dt = arr[i] - env.now
            if dt > 0:
                yield env.timeout(dt)
            self.arrived = i + 1
            self.in_system += 1
            self._log()
            if not self.wake.triggered:
                self.wake.succeed()

    def _wait_arrival(self):
        if self.wake.triggered:
            self.wake = self.env.event()
        return self.wake

    def _settle(self):
        """Let arrivals due at this very instant join the queue before deciding."""
        if self.arrived < self.n and self.arrival[self.arrived] <= self.env.now:
            yield self.env.timeout(0)

    def _decoded(self, dur: float, b: int, running: list, steps: int) -> tuple:
        """Count a decoding run of ``dur`` seconds at batch ``b``, then retire every request
        of the heap ``running`` ((last step, id)) whose last step is among the ``steps``
        done: their finish is now. Returns what they held, to take off the batch's sums:
        (steps started, cross-attention tokens, memory)."""
        self.busy_s += dur
        self.decode_s += dur
        self.decode_batch_s += b * dur
        T, P, N, need = self.T, self.P, self.N, self.bytes
        started = x_sum = held = 0
        done = 0
        while running and running[0][0] <= steps:
            end, i = heapq.heappop(running)
            self.finish[i] = self.env.now
            started += end - T[i]
            x_sum += P[i] * N[i]
            held += need[i]
            done += 1
        if done:
            self.in_system -= done
            self._log()
        return started, x_sum, held

    def _noise(self, steps: int = 1) -> float:
        if not self.cv:
            return 1.0
        shape = steps / self.cv**2
        return float(self.rng.gamma(shape, 1.0 / shape))

    # ----------------------------------------------------------------- static

    def _form_batch(self):
        """Extend the forming batch over newly arrived requests; returns its state."""
        k, Pm, Nm, Tm, full = self._form
        svc, P, N, T = self.svc, self.P, self.N, self.T
        # with pools, the encoder pool's batch: its memory and cap (the decoder pool forms its own)
        cap, free = (self.enc_max_batch, self.enc_free) if self.pooled else (self.max_batch, self.free)
        need = svc.enc_request_bytes if self.pooled else svc.request_bytes
        while not full and self.head + k < self.arrived:
            if k == cap:
                full = True
                break
            i = self.head + k
            p, n_, t = max(Pm, P[i]), max(Nm, N[i]), max(Tm, T[i])
            if (k + 1) * need(p, n_, t) > free:
                full = True
                break
            k, Pm, Nm, Tm = k + 1, p, n_, t
        full = full or k == cap
        self._form = (k, Pm, Nm, Tm, full)
        return self._form

    def _static_batch(self):
        """Wait until the static policy dispatches a batch: the oldest waiting requests
        fill it (up to the batch cap and memory) or the oldest has waited max_wait_s.
        Returns its size and padded (passages, passage length, target length)."""
        env, max_wait = self.env, self.serving.max_wait_s
        while True:
            if self.head == self.arrived:
                yield self._wait_arrival()
                continue
            yield from self._settle()
            k, Pm, Nm, Tm, full = self._form_batch()
            if k == 0:  # another chip took them meanwhile
                continue
            deadline = self.arrival[self.head] + max_wait
            if not full and env.now < deadline:
                yield env.any_of([env.timeout(deadline - env.now), self._wait_arrival()])
                continue
            return k, Pm, Nm, Tm

    def _static(self, r: int):
        env, svc = self.env, self.svc
        while True:
            k, Pm, Nm, Tm = yield from self._static_batch()
            first_id = self.head
            self.head += k
            self._form = (0, 0, 0, 0, False)
            self._log()
            enc = svc.encode_time_s(k, Pm, Nm) * self._noise()
            g = self._noise(Tm)
            step1 = svc.decode_run_time_s(k, Pm * Nm, 1.0, 1) * g
            dec = svc.decode_run_time_s(k, Pm * Nm, 1.0, Tm) * g
            now = env.now
            for i in range(first_id, first_id + k):
                self.start[i] = now
                self.encoded[i] = self.joined[i] = now + enc
                self.first[i] = now + enc + step1
                self.replica[i] = self.source[i] = r
                self.batch[i] = k
            yield env.timeout(enc + dec)
            for i in range(first_id, first_id + k):
                self.finish[i] = env.now
            self.busy_s += enc + dec
            self.decode_s += dec
            self.decode_batch_s += k * dec
            self.in_system -= k
            self._log()

    # ----------------------------------------------------------------- continuous

    def _continuous(self, r: int):
        env, svc = self.env, self.svc
        P, N, T, need, arrival = self.P, self.N, self.T, self.bytes, self.arrival
        max_batch, free = self.max_batch, self.free
        running: list[tuple[int, int]] = []  # heap of (replica step at which it finishes, request)
        steps = 0  # decoding steps this chip has run
        started = 0  # sum over running requests of the step at which each joined
        x_sum = 0  # cross-attention tokens of the running requests
        held = 0  # bytes the running requests hold
        fresh: list[int] = []  # joined, first token not yet produced
        while True:
            yield from self._settle()
            b = len(running)
            # admit the oldest waiting requests that fit, and encode them in one call
            k, p_sum, n_max = 0, 0, 0
            while self.head + k < self.arrived and b + k < max_batch and held + need[self.head + k] <= free:
                i = self.head + k
                held += need[i]
                p_sum += P[i]
                n_max = max(n_max, N[i])
                k += 1
            if k:
                first_id = self.head
                self.head += k
                self._log()
                now = env.now
                for i in range(first_id, first_id + k):
                    self.start[i], self.replica[i], self.source[i], self.batch[i] = now, r, r, k
                enc = svc.encode_passages_time_s(p_sum, n_max, svc.kv_passages(k, p_sum)) * self._noise()
                yield env.timeout(enc)
                self.busy_s += enc
                now = env.now
                for i in range(first_id, first_id + k):
                    self.encoded[i] = self.joined[i] = now
                    heapq.heappush(running, (steps + T[i], i))
                    started += steps
                    x_sum += P[i] * N[i]
                    fresh.append(i)
                b += k
            if not b:
                yield self._wait_arrival()
                continue
            # decode until something can change: a completion, or an admissible arrival
            t_mean = steps - started / b + 1.0  # mean cache length at the first step
            x_mean = x_sum / b
            k_steps = running[0][0] - steps
            if b < max_batch:
                nxt = self.head
                if nxt < self.arrived and held + need[nxt] <= free:
                    k_steps = 1  # arrived during the encode: admit at the next boundary
                elif nxt == self.arrived < self.n and held + need[nxt] <= free:
                    k_steps = svc.steps_until(b, x_mean, t_mean, k_steps, arrival[nxt] - env.now)
            g = self._noise(k_steps)
            dur = svc.decode_run_time_s(b, x_mean, t_mean, k_steps) * g
            now = env.now
            if fresh:
                t1 = now + svc.decode_run_time_s(b, x_mean, t_mean, 1) * g
                for i in fresh:
                    self.first[i] = t1
                fresh.clear()
            yield env.timeout(dur)
            steps += k_steps
            freed = self._decoded(dur, b, running, steps)
            started -= freed[0]
            x_sum -= freed[1]
            held -= freed[2]

    # ----------------------------------------------------------------- separate pools
    #
    # Encoder replicas take requests from the arrival queue, encode them (and project the
    # cross-attention keys and values when those are what is shipped), and keep them in
    # memory until they have been shipped; encoded requests wait in a second FIFO queue.
    # A decoder replica pulls the oldest encoded requests when it has room for them (the
    # pull of DistServe, Zhong et al., OSDI 2024, arXiv 2401.09670: the encoder pool's
    # memory is the queue, so the decoder pool never takes more than it holds); a
    # shipment holds the sender's and the receiver's links (one shipment at a time on
    # each, in the order they are asked for), and the requests join the decoding batch
    # at the first step boundary after it lands.
    # Decoding is never paused by an encode: the decoder replica only stops for the
    # projection of keys and values when it receives encoder outputs.

    def _event(self, name: str, idx: int):
        """The pending event ``name[idx]`` (a fresh one once the old has fired)."""
        events = getattr(self, name)
        if events[idx].triggered:
            events[idx] = self.env.event()
        return events[idx]

    def _fire(self, name: str, idx: int) -> None:
        ev = getattr(self, name)[idx]
        if not ev.triggered:
            ev.succeed()

    def _dec_wake_event(self):
        if self.dec_wake.triggered:
            self.dec_wake = self.env.event()
        return self.dec_wake

    def _reserve_link(self, e: int, d: int, tokens: float) -> tuple[float, float]:
        """(start, end) of a shipment of ``tokens`` tokens from encoder replica e to
        decoder replica d: each replica's links carry one shipment at a time, first come
        first served in the order shipments are asked for."""
        t = self.svc.ship_time_s(tokens)
        start = max(self.env.now, self.send_free_s[e], self.recv_free_s[d])
        self.send_free_s[e] = self.recv_free_s[d] = start + t
        self.link_busy_s += t
        return start, start + t

    def _ship(self, ids: list[int], d: int, padded: tuple[int, int] | None = None):
        """Ship requests ``ids`` to decoder replica d, one shipment per encoder replica
        they come from (``padded``: as P x N tokens each, a static batch's shape);
        frees their memory on the encoder side as each lands."""
        env, P, N = self.env, self.P, self.N
        groups: dict[int, list[int]] = {}
        for i in ids:
            groups.setdefault(self.source[i], []).append(i)
        for e, group in groups.items():
            tokens = len(group) * padded[0] * padded[1] if padded else sum(P[i] * N[i] for i in group)
            _, end = self._reserve_link(e, d, float(tokens))
            yield env.timeout(end - env.now)
            self.enc_held[e] -= sum(self.enc_hold[i] for i in group)
            self._fire("enc_freed", e)

    def _enc_continuous(self, e: int):
        env, svc = self.env, self.svc
        P, N, need = self.P, self.N, self.enc_bytes
        free, cap = self.enc_free, self.enc_max_batch
        while True:
            if self.head == self.arrived:
                yield self._wait_arrival()
                continue
            yield from self._settle()
            k, p_sum, n_max, held = 0, 0, 0, self.enc_held[e]
            while self.head + k < self.arrived and k < cap and held + need[self.head + k] <= free:
                i = self.head + k
                held += need[i]
                p_sum += P[i]
                n_max = max(n_max, N[i])
                k += 1
            if not k:
                if self.head < self.arrived:  # memory holds requests not yet shipped
                    yield self._event("enc_freed", e)
                continue
            first_id = self.head
            self.head += k
            self.enc_held[e] = held
            self._log()
            now = env.now
            for i in range(first_id, first_id + k):
                self.start[i], self.source[i], self.batch[i] = now, e, k
                self.enc_hold[i] = need[i]
            enc = svc.encode_passages_time_s(p_sum, n_max, svc.kv_passages(k, p_sum)) * self._noise()
            yield from self._pool_encode(enc, range(first_id, first_id + k))

    def _pool_encode(self, enc: float, ids: range):
        """An encoder replica's encode of ``ids`` taking ``enc`` seconds; then they queue
        for a decoder replica, which is woken."""
        yield self.env.timeout(enc)
        self.busy_s += enc
        self.enc_busy_s += enc
        now = self.env.now
        for i in ids:
            self.encoded[i] = now
            self.dec_queue.append(i)
        if not self.dec_wake.triggered:
            self.dec_wake.succeed()

    def _dec_continuous(self, d: int):
        env, svc = self.env, self.svc
        P, N, T, need = self.P, self.N, self.T, self.bytes
        max_batch, free = self.max_batch, self.free
        queue, landed = self.dec_queue, self.landed[d]
        running: list[tuple[int, int]] = []  # heap of (replica step at which it finishes, request)
        steps = started = x_sum = 0  # as in _continuous
        held = 0  # bytes of the running requests and of those being shipped here
        incoming = 0  # requests being shipped here
        fresh: list[int] = []
        while True:
            b = len(running)
            # pull the oldest encoded requests that fit
            pulled = []
            while queue and b + incoming + len(pulled) < max_batch and held + need[queue[0]] <= free:
                i = queue.popleft()
                held += need[i]
                self.replica[i] = d
                pulled.append(i)
            if pulled:
                incoming += len(pulled)
                env.process(self._ship_to(pulled, d))
            # requests whose shipment landed join at this step boundary
            if landed:
                ids = landed[:]
                landed.clear()
                k = len(ids)
                incoming -= k
                p_sum = sum(P[i] for i in ids)
                join = svc.join_time_s(svc.kv_passages(k, p_sum), max(N[i] for i in ids))
                if join:
                    join *= self._noise()
                    yield env.timeout(join)
                    self.busy_s += join
                now = env.now
                for i in ids:
                    self.joined[i] = now
                    self.batch[i] = k
                    heapq.heappush(running, (steps + T[i], i))
                    started += steps
                    x_sum += P[i] * N[i]
                    fresh.append(i)
                b += k
            watch = []
            if incoming:
                watch.append(self._event("landed_ev", d))
            if not queue and b + incoming < max_batch:
                watch.append(self._dec_wake_event())
            if not b:
                if queue and not incoming and not pulled:
                    raise SpecError("simulate", "", "internal: an idle decoder replica cannot take a request")
                yield env.any_of(watch) if len(watch) > 1 else watch[0]
                continue
            # decode until a completion; stop at the next step boundary if a shipment lands
            # or a request is encoded meanwhile
            t_mean = steps - started / b + 1.0
            x_mean = x_sum / b
            k_steps = running[0][0] - steps
            g = self._noise(k_steps)
            dur = svc.decode_run_time_s(b, x_mean, t_mean, k_steps) * g
            t0 = env.now
            if fresh:
                t1 = t0 + svc.decode_run_time_s(b, x_mean, t_mean, 1) * g
                for i in fresh:
                    self.first[i] = t1
                fresh.clear()
            if watch:
                timer = env.timeout(dur)
                yield env.any_of([timer, *watch])
                if not timer.processed:
                    elapsed = env.now - t0
                    k_steps = svc.steps_until(b, x_mean, t_mean, k_steps, elapsed / g)
                    dur = svc.decode_run_time_s(b, x_mean, t_mean, k_steps) * g
                    if dur > elapsed:
                        yield env.timeout(dur - elapsed)
            else:
                yield env.timeout(dur)
            steps += k_steps
            freed = self._decoded(dur, b, running, steps)
            started -= freed[0]
            x_sum -= freed[1]
            held -= freed[2]

    def _ship_to(self, ids: list[int], d: int):
        yield from self._ship(ids, d)
        self.landed[d].extend(ids)
        self._fire("landed_ev", d)

    def _enc_static(self, e: int):
        env, svc = self.env, self.svc
        while True:
            k, Pm, Nm, Tm = yield from self._static_batch()
            first_id = self.head
            self.head += k
            self._form = (0, 0, 0, 0, False)
            self._log()
            per = svc.enc_request_bytes(Pm, Nm, Tm)
            while self.enc_held[e] + k * per > self.enc_free:  # earlier batches not yet shipped
                yield self._event("enc_freed", e)
            self.enc_held[e] += k * per
            now = env.now
            for i in range(first_id, first_id + k):
                self.start[i], self.source[i], self.enc_hold[i] = now, e, per
            enc = svc.encode_time_s(k, Pm, Nm) * self._noise()
            yield from self._pool_encode(enc, range(first_id, first_id + k))

    def _dec_static(self, d: int):
        """A free decoder replica takes the oldest encoded requests, up to the batch cap
        and as many as fit its memory padded to their largest P, N and T, pulls them, and
        decodes them as one batch to its longest output."""
        env, svc = self.env, self.svc
        P, N, T, queue = self.P, self.N, self.T, self.dec_queue
        while True:
            if not queue:
                yield self._dec_wake_event()
                continue
            k, Pm, Nm, Tm = 0, 0, 0, 0
            while k < len(queue) and k < self.max_batch:
                i = queue[k]
                p, n_, t = max(Pm, P[i]), max(Nm, N[i]), max(Tm, T[i])
                if (k + 1) * svc.request_bytes(p, n_, t) > self.free:
                    break
                k, Pm, Nm, Tm = k + 1, p, n_, t
            ids = [queue.popleft() for _ in range(k)]
            for i in ids:
                self.replica[i], self.batch[i] = d, k
            yield from self._ship(ids, d, padded=(Pm, Nm))  # this replica is idle meanwhile
            join = svc.join_time_s(svc.kv_passages(k, k * Pm), Nm)
            if join:
                join *= self._noise()
            g = self._noise(Tm)
            step1 = svc.decode_run_time_s(k, Pm * Nm, 1.0, 1) * g
            dec = svc.decode_run_time_s(k, Pm * Nm, 1.0, Tm) * g
            now = env.now
            for i in ids:
                self.joined[i] = now + join
                self.first[i] = now + join + step1
            yield env.timeout(join + dec)
            for i in ids:
                self.finish[i] = env.now
            self.busy_s += join + dec
            self.decode_s += dec
            self.decode_batch_s += k * dec
            self.in_system -= k
            self._log()


# --------------------------------------------------------------------------- results


@dataclass
class SimulationResult:
    """One simulated run: per-request records, the queue over time, the summary, and
    every input (``settings``)."""

    records: pd.DataFrame  # one row per request (RECORD_COLUMNS)
    queue: pd.DataFrame  # time_s, waiting (not yet on a chip), in_system (waiting or being served)
    summary: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "settings": self.settings}


LATENCY_KEYS = (
    "latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_max_s", "ttft_mean_s",
    "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_mean_s", "tpot_p50_s", "queue_mean_s", "queue_p99_s",
    "latency_percentile_s",
)


def _records(eng: _Engine, reqs: Requests, warmup: float) -> pd.DataFrame:
    n = len(reqs)
    arr = reqs.arrival_s
    finish, first, start = np.asarray(eng.finish), np.asarray(eng.first), np.asarray(eng.start)
    T = reqs.target_len
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(T > 1, (finish - first) / np.maximum(T - 1, 1), np.nan)
    return pd.DataFrame({
        "request": np.arange(n), "arrival_s": arr, "passages": reqs.passages, "passage_len": reqs.passage_len,
        "target_len": T, "replica": eng.replica, "encoder_replica": eng.source, "batch": eng.batch, "start_s": start,
        "encoded_s": eng.encoded, "joined_s": eng.joined, "first_token_s": first, "finish_s": finish,
        "queue_s": start - arr, "ttft_s": first - arr, "latency_s": finish - arr,
        "tpot_s": tpot, "measured": np.arange(n) >= int(math.floor(warmup * n)),
    }, columns=RECORD_COLUMNS)


def _summary(eng: _Engine, rec: pd.DataFrame, offered_qps: float, capacity_qps: float,
             target_s: float | None, percentile: float) -> dict[str, Any]:
    m = rec[rec["measured"]]
    span = float(rec["finish_s"].max() - rec["arrival_s"].min()) if len(rec) else 0.0
    sustainable = bool(offered_qps < capacity_qps) if math.isfinite(offered_qps) else False
    lat = m["latency_s"].to_numpy()
    s: dict[str, Any] = {
        "requests": int(len(rec)),
        "measured_requests": int(len(m)),
        "offered_qps": offered_qps,
        "capacity_qps": capacity_qps,
        "load": offered_qps / capacity_qps if capacity_qps > 0 else math.inf,
        "sustainable": sustainable,
        "steady_state": bool(sustainable and offered_qps <= steady_load_limit(len(rec)) * capacity_qps),
        "throughput_qps": len(rec) / span if span > 0 else math.nan,
        **eng.utilisation(span),
        "mean_decode_batch": eng.decode_batch_s / eng.decode_s if eng.decode_s > 0 else math.nan,
        "max_waiting": int(max(eng.q_wait)),
        "makespan_s": span,
        "percentile": percentile,
        "latency_target_s": target_s,
    }
    stats = {
        "latency_mean_s": float(lat.mean()),
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p90_s": float(np.percentile(lat, 90)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "latency_max_s": float(lat.max()),
        "ttft_mean_s": float(m["ttft_s"].mean()),
        "ttft_p50_s": float(np.percentile(m["ttft_s"], 50)),
        "ttft_p90_s": float(np.percentile(m["ttft_s"], 90)),
        "ttft_p99_s": float(np.percentile(m["ttft_s"], 99)),
        "tpot_mean_s": float(np.nanmean(m["tpot_s"])) if m["tpot_s"].notna().any() else math.nan,
        "tpot_p50_s": float(np.nanpercentile(m["tpot_s"], 50)) if m["tpot_s"].notna().any() else math.nan,
        "queue_mean_s": float(m["queue_s"].mean()),
        "queue_p99_s": float(np.percentile(m["queue_s"], 99)),
        "latency_percentile_s": float(np.percentile(lat, percentile)),
    }
    if not sustainable:
        stats = dict.fromkeys(stats)
    s.update(stats)
    if target_s is not None:
        good = int((m["latency_s"] <= target_s).sum())
        s["fraction_within_target"] = good / len(m) if len(m) else math.nan
        s["goodput_qps"] = s["throughput_qps"] * s["fraction_within_target"]
        s["meets_target"] = bool(sustainable and stats["latency_percentile_s"] <= target_s)
    return s


def layout_label(layout: Layout) -> str:
    """``layout.label()``, saying when the keys and values are sharded over the batch."""
    sharded = layout.shard_kv == "batch" and layout.tensor_parallel > 1
    return layout.label() + (", K/V sharded over the batch" if sharded else "")


def steady_load_limit(requests: int) -> float:
    """The highest fraction of capacity at which a run of ``requests`` requests says
    something about the steady state: near saturation a queue relaxes over about
    (1 - load)^-2 services (heavy traffic), which must stay well below the run length;
    1 - 3 / sqrt(requests), at most 0.999 (0.95 for 4000 requests)."""
    return min(0.999, 1.0 - 3.0 / math.sqrt(max(requests, 10)))


# --------------------------------------------------------------------------- prepared runs


@dataclass
class Prepared:
    """Everything of a run that does not depend on the arrival rate: request sizes,
    arrival times at rate 1 (or the trace's own), the service model, the capacity."""

    model: ModelSpec
    hardware: Hardware
    workload: Workload
    settings: Settings
    serving: Serving
    seed: int
    unit_arrival_s: np.ndarray
    sizes: tuple[np.ndarray, np.ndarray, np.ndarray]
    service: ServiceModel
    own_arrival_s: np.ndarray | None = None  # the trace's arrivals (None: unit_arrival_s)
    capacity_qps: float = math.nan
    trace: bool = False
    arrivals: str = "poisson"  # as given to prepare (echoed in settings)
    cv: float = 1.0
    dists: Mapping[str, str] | None = None

    def __post_init__(self):
        if self.own_arrival_s is None:
            self.own_arrival_s = self.unit_arrival_s

    def requests(self, rate: float | None) -> Requests:
        """The requests at ``rate`` queries/s (the same draws, time scaled); None: as
        drawn or as the trace has them."""
        if rate is None:
            return Requests(self.own_arrival_s, *self.sizes)
        return Requests(self.unit_arrival_s / rate, *self.sizes)

    @property
    def own_rate_qps(self) -> float:
        return _trace_rate(self.own_arrival_s)

    def run(self, rate: float | None, warmup: float = 0.1, target_s: float | None = None,
            percentile: float = 99.0, stream: int = 2) -> tuple[_Engine, pd.DataFrame, dict[str, Any]]:
        reqs = self.requests(rate)
        rng = np.random.default_rng([self.seed, stream])
        eng = _Engine(self.service, reqs, self.serving, rng).run()
        rec = _records(eng, reqs, warmup)
        offered = rate if rate is not None else self.own_rate_qps
        return eng, rec, _summary(eng, rec, offered, self.capacity_qps, target_s, percentile)

    def lone_latencies_s(self) -> np.ndarray:
        """Each request's latency when it meets an idle chip (the vanishing-load limit),
        the batching wait of the static policy included."""
        svc = self.service
        t = np.array([svc.lone_time_s(p, n, t) for p, n, t in zip(*self.sizes)])
        return t + (self.serving.max_wait_s if self.serving.policy == "static" else 0.0)


def _trace_rate(arr: np.ndarray) -> float:
    return (len(arr) - 1) / (arr[-1] - arr[0]) if len(arr) > 1 and arr[-1] > arr[0] else (
        0.0 if len(arr) <= 1 else math.inf)


def measure_capacity(prep: Prepared) -> float:
    """Requests per second the chips complete with the queue never empty: the same
    request sizes (cycled to enough requests to fill the chips many times over) all
    queued at time 0; completions between the 10th and 90th percentile."""
    L, svc = prep.serving.layout, prep.service
    n_sat = max(2000, 20 * svc.max_batch * L.decoder_replicas, 20 * svc.enc_max_batch * L.encoder_replicas)
    sizes = tuple(np.resize(s, n_sat) for s in prep.sizes)
    reqs = Requests(np.zeros(n_sat), *sizes)
    eng = _Engine(prep.service, reqs, prep.serving, np.random.default_rng([prep.seed, 3])).run()
    done = np.sort(np.asarray(eng.finish))
    t10, t90 = done[int(0.1 * n_sat)], done[int(0.9 * n_sat)]
    if t90 > t10:  # requests completed in (t10, t90]: exact when they complete in batches
        between = np.searchsorted(done, t90, side="right") - np.searchsorted(done, t10, side="right")
        return float(between) / float(t90 - t10)
    return n_sat / float(done[-1])


def prepare(model: ModelSpec, hardware: Hardware, workload: Workload = Workload(), *,
            arrivals: str = "poisson", cv: float = 1.0, trace: str | Path | None = None,
            requests: int | None = 10_000, seed: int = 0, serving: Serving = Serving(),
            dists: Mapping[str, str] | None = None, settings: Settings = Settings()) -> Prepared:
    """Draw the requests (seeded), build the service model, measure the capacity."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError("--seed", "", f"must be a whole number of at least 0, got {seed!r}")
    if requests is not None:
        _positive("--requests", requests, integer=True)
    own = None
    if trace is not None:
        tr = read_trace(trace, limit=requests)
        own, sizes = tr.arrival_s, (tr.passages, tr.passage_len, tr.target_len)
        rate = _trace_rate(own)
        arr = own * rate if 0 < rate < math.inf else own  # rate 1, for load curves
    else:
        n = 10_000 if requests is None else int(requests)
        arr = unit_arrivals(arrivals, n, np.random.default_rng([seed, 0]), cv)
        sizes = draw_sizes(workload, n, np.random.default_rng([seed, 1]), dists)
    svc = ServiceModel.build(model, hardware, workload, settings, passages=sizes[0], passage_len=sizes[1],
                             target_len=sizes[2], max_batch=serving.max_batch, pad=serving.policy == "static",
                             layout=serving.layout, ship=serving.ship)
    prep = Prepared(model, hardware, workload, settings, serving, int(seed), arr, sizes, svc, own,
                    trace=trace is not None, arrivals=arrivals, cv=cv, dists=dists)
    prep.capacity_qps = measure_capacity(prep)
    return prep


def _settings_dict(prep: Prepared, *, qps, arrivals, cv, trace, requests, dists, warmup, target_s,
                   percentile) -> dict[str, Any]:
    wl, s = prep.workload, prep.serving
    return {
        "model": prep.model.name,
        "hardware": prep.hardware.name,
        "arrivals": "trace" if trace is not None else arrivals,
        "qps": qps,
        "cv": cv if arrivals == "gamma" and trace is None else None,
        "trace": None if trace is None else str(trace),
        "requests": int(len(prep.unit_arrival_s)),
        "requests_asked": requests,
        "seed": prep.seed,
        "policy": s.policy,
        "max_batch": s.max_batch,
        "batch_cap": min(s.max_batch, prep.service.max_batch),
        "max_wait_s": s.max_wait_s,
        "replicas": s.replicas,
        "layout": s.layout.as_dict(),
        "layout_label": layout_label(s.layout),
        "chips": s.layout.total_chips,
        "tensor_parallel": s.layout.tensor_parallel,
        "shipped": prep.service.ship,
        "service_cv": s.service_cv,
        "passages": wl.passages,
        "passage_len": wl.passage_len,
        "target_len": wl.target_len,
        "size_dists": {f: dict(dists or {}).get(f, "fixed") for f in SIZE_FIELDS},
        "weight_dtype": wl.weight_dtype,
        "act_dtype": wl.act_dtype,
        "kv_dtype": wl.kv_dtype,
        "compute_dtype": wl.compute_dtype,
        "overlap": prep.settings.overlap,
        "efficiency": prep.settings.efficiency,
        "warmup": warmup,
        "latency_target_s": target_s,
        "percentile": percentile,
        "free_bytes": prep.service.free_bytes,
        "weight_bytes": prep.service.weight_bytes,
        "encoder_free_bytes": prep.service.enc_free_bytes if s.layout.pooled else None,
        "encoder_weight_bytes": prep.service.enc_weight_bytes if s.layout.pooled else None,
        "encoder_batch_cap": min(s.max_batch, prep.service.enc_max_batch) if s.layout.pooled else None,
    }


def simulate(model: ModelSpec, hardware: Hardware, workload: Workload = Workload(), *,
             qps: float | None = None, arrivals: str = "poisson", cv: float = 1.0,
             trace: str | Path | None = None, requests: int | None = None, seed: int = 0,
             policy: str = "continuous", max_batch: int = 128, max_wait_ms: float = 10.0, replicas: int = 1,
             service_cv: float = 0.0, dists: Mapping[str, str] | None = None, warmup: float = 0.1,
             latency_target_s: float | None = None, percentile: float = 99.0,
             settings: Settings = Settings(), layout: Layout | None = None,
             ship: str | None = None) -> SimulationResult:
    """Simulate serving ``model`` on chips of ``hardware`` spread as ``layout`` says
    (default: ``replicas`` chips, each a full copy; see :class:`Serving`), with separate
    pools shipping ``ship`` (None: what ``predict`` finds cheaper).

    Requests come at ``qps`` (``arrivals``: poisson, gamma with coefficient of variation
    ``cv``, or deterministic) or from ``trace`` (a CSV, see :func:`read_trace`);
    ``requests`` of them (None: 10000, or the whole trace; a trace keeps its first rows); their sizes are the workload's
    passages, passage_len and target_len, or drawn around them (``dists``: field ->
    fixed|uniform|geometric). Statistics skip the first ``warmup`` fraction of requests
    (by arrival). With ``latency_target_s``, the summary adds goodput and whether the
    ``percentile``-th percentile meets it.
    """
    _positive("--percentile", percentile)
    if percentile > 100:
        raise SpecError("--percentile", "", f"must be at most 100, got {percentile!r}")
    if not (isinstance(warmup, (int, float)) and 0 <= warmup < 1):
        raise SpecError("--warmup", "", f"must be a fraction in [0, 1), got {warmup!r}")
    if latency_target_s is not None:
        _positive("--latency-ms", latency_target_s)
    if trace is None:
        if qps is None:
            raise SpecError("--qps", "", "give an arrival rate (or --trace FILE)")
        _positive("--qps", qps)
    serving = Serving(policy, max_batch, max_wait_ms / 1e3, replicas, service_cv, layout, ship)
    prep = prepare(model, hardware, workload, arrivals=arrivals, cv=cv, trace=trace, requests=requests, seed=seed,
                   serving=serving, dists=dists, settings=settings)
    eng, rec, summary = prep.run(None if trace is not None else float(qps), warmup, latency_target_s, percentile)
    queue = pd.DataFrame({"time_s": eng.q_time, "waiting": eng.q_wait, "in_system": eng.q_sys})
    st = _settings_dict(prep, qps=qps if trace is None else None, arrivals=arrivals, cv=cv, trace=trace,
                        requests=requests, dists=dists, warmup=warmup, target_s=latency_target_s,
                        percentile=percentile)
    return SimulationResult(rec, queue, summary, st)


# --------------------------------------------------------------------------- load curves


LOAD_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def load_curve(prep: Prepared, fractions: Sequence[float] = LOAD_FRACTIONS, warmup: float = 0.1,
               percentile: float = 99.0) -> pd.DataFrame:
    """Latency statistics against offered load: one run per fraction of the capacity,
    with the same draws (time scaled). Columns: offered_qps, load, latency_p50_s,
    latency_p90_s, latency_p99_s, latency_percentile_s, ttft_p50_s, sustainable,
    mean_decode_batch, utilisation."""
    rows = []
    for f in fractions:
        rate = f * prep.capacity_qps
        _, _, s = prep.run(rate, warmup, None, percentile)
        rows.append({"offered_qps": rate, "load": f, **{k: s[k] for k in (
            "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_percentile_s", "ttft_p50_s",
            "sustainable", "mean_decode_batch", "utilisation")}})
    return pd.DataFrame(rows).astype({k: float for k in ("latency_p50_s", "latency_p90_s", "latency_p99_s",
                                                          "latency_percentile_s", "ttft_p50_s")})


# --------------------------------------------------------------------------- rate search


@dataclass
class RateSearch:
    """The highest arrival rate whose ``percentile``-th percentile latency meets the
    target, with the points evaluated on the way."""

    rate_qps: float  # 0 when no rate meets the target
    latency_s: float  # the percentile latency at that rate (NaN if none)
    capacity_qps: float
    floor_latency_s: float  # the percentile latency of requests served alone (no rate does better)
    percentile: float
    target_s: float
    points: pd.DataFrame  # rate_qps, latency_s, latency_p50_s, sustainable, feasible, mean_decode_batch, utilisation
    summary: dict[str, Any] = field(default_factory=dict)  # of the run at rate_qps
    reason: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def max_sustainable_rate(model: ModelSpec, hardware: Hardware, workload: Workload = Workload(), *,
                         target_s: float, percentile: float = 99.0, policy: str = "continuous",
                         arrivals: str = "poisson", cv: float = 1.0, requests: int = 4000, seed: int = 0,
                         max_batch: int = 128, max_wait_ms: float = 10.0, replicas: int = 1,
                         service_cv: float = 0.0, dists: Mapping[str, str] | None = None, warmup: float = 0.1,
                         rel_tol: float = 0.01, settings: Settings = Settings(), layout: Layout | None = None,
                         ship: str | None = None) -> RateSearch:
    """Search the arrival rate, bisecting in log(rate) with the same seed at every rate
    (the same draws, scaled), for the highest rate at which the load is sustainable and
    the ``percentile``-th percentile latency is at most ``target_s``.

    The rate is bracketed first on 9 log-spaced points from 1e-3 of the measured
    capacity to :func:`steady_load_limit` of it, from the top down (latency need not fall monotonically with the
    rate: a static batch fills faster at higher rates), then bisected between the
    highest feasible point and the one above until they are within ``rel_tol``."""
    _positive("--latency-ms", target_s)
    _positive("--percentile", percentile)
    if percentile > 100:
        raise SpecError("--percentile", "", f"must be at most 100, got {percentile!r}")
    serving = Serving(policy, max_batch, max_wait_ms / 1e3, replicas, service_cv, layout, ship)
    prep = prepare(model, hardware, workload, arrivals=arrivals, cv=cv, requests=requests, seed=seed,
                   serving=serving, dists=dists, settings=settings)
    return search_rate(prep, target_s=target_s, percentile=percentile, warmup=warmup, rel_tol=rel_tol)


def search_rate(prep: Prepared, *, target_s: float, percentile: float = 99.0, warmup: float = 0.1,
                rel_tol: float = 0.01) -> RateSearch:
    """:func:`max_sustainable_rate` on requests already drawn and a service model
    already built (:func:`prepare`, without a trace)."""
    _positive("--latency-ms", target_s)
    cap = prep.capacity_qps
    floor = float(np.percentile(prep.lone_latencies_s(), percentile))
    requests = len(prep.unit_arrival_s)
    st = _settings_dict(prep, qps=None, arrivals=prep.arrivals, cv=prep.cv, trace=None, requests=requests,
                        dists=prep.dists, warmup=warmup, target_s=target_s, percentile=percentile)
    st["rel_tol"] = rel_tol
    rows: list[dict[str, Any]] = []
    cache: dict[float, dict[str, Any]] = {}

    def evaluate(rate: float) -> dict[str, Any]:
        if rate not in cache:
            _, _, s = prep.run(rate, warmup, target_s, percentile)
            cache[rate] = s
            rows.append({
                "rate_qps": rate, "latency_s": s["latency_percentile_s"], "latency_p50_s": s["latency_p50_s"],
                "sustainable": s["sustainable"], "feasible": s["meets_target"],
                "mean_decode_batch": s["mean_decode_batch"], "utilisation": s["utilisation"],
            })
        return cache[rate]

    def done(rate, summary, reason=""):
        pts = pd.DataFrame(rows, columns=["rate_qps", "latency_s", "latency_p50_s", "sustainable", "feasible",
                                          "mean_decode_batch", "utilisation"]).sort_values("rate_qps")
        lat = summary["latency_percentile_s"] if summary else math.nan
        return RateSearch(rate, math.nan if lat is None else lat, cap, floor, percentile, target_s,
                          pts.reset_index(drop=True), summary or {}, reason, st)

    if floor > target_s:
        return done(0.0, None, f"even a request served alone takes {floor * 1e3:.4g} ms at the {percentile:g}th "
                               f"percentile, over the {target_s * 1e3:.4g} ms target")
    top = steady_load_limit(len(prep.unit_arrival_s))
    grid = cap * np.geomspace(1e-3, top, 9)
    lo = hi = None
    for k in range(len(grid) - 1, -1, -1):
        if evaluate(float(grid[k]))["meets_target"]:
            lo = float(grid[k])
            hi = float(grid[k + 1]) if k + 1 < len(grid) else None
            break
    if lo is None:
        return done(0.0, None, f"no rate from {grid[0]:.3g} to {grid[-1]:.3g} queries/s meets the target")
    if hi is None:
        return done(lo, cache[lo], f"the target holds up to {100 * top:.3g}% of capacity, the highest load a run of "
                                   f"{len(prep.unit_arrival_s)} requests represents (more requests reach closer)")
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        if evaluate(mid)["meets_target"]:
            lo = mid
        else:
            hi = mid
    return done(lo, cache[lo])
