"""Capacity planning: how many chips, spread over which parallel layout, serve a load
with a latency percentile within a target, at the least cost, for each model and chip.

For each (model, chip) pair, :func:`evaluate_pair` considers the parallel layouts of
:func:`candidate_layouts` (one chip; tensor parallelism T over the divisors that split
the model's heads, up to the chips of one node; replicas of T chips; separate encoder
and decoder pools in small ratios of replicas), and for each one the serving simulation
(:func:`fidoperf.whatif.simulate.search_rate`) finds the highest arrival rate one *unit*
of the layout (one replica of T chips, or one set of pools) sustains with the
``percentile``-th percentile latency within the target, under the chosen batching
policy and arrival process (queueing, batch formation, memory limits, collectives and
shipping between pools included). From it:

    rate per unit     r = search_rate(...)                        (queries/s)
    units             = ceil(qps / r)
    chips             = units x chips per unit
    cost per 1M       = chips x price per chip-hour / (qps x 3600) x 1e6   (USD)
    energy per query  = TDP x chips / qps                         (J; a loaded fleet)
    energy per 1M     = energy per query x 1e6                    (J)

Layouts are pruned before any simulation when one request does not fit a chip's
memory, or when a request served alone (``predict``'s batch-1 time under the layout,
from the simulation's own op lists, plus the static policy's batching wait) already
misses the target; the survivors are
simulated in order of predicted chip-seconds per query at their largest batch divided by
the headroom (1 - lone latency / target), and one whose unit, even at the capacity it
serves with its queue never empty (which bounds any rate its search can find), would
need more chips than the cheapest plan found so far is dropped after that one capacity
run. A time budget bounds the searches: every pair evaluates its most promising layout,
then the pair that has had the least time so far evaluates its next one, until the
budget runs out (a search under way is finished); the layouts left are reported as not
evaluated. Within a pair every chip costs the
same, so the cheapest layout is the one with the fewest chips (then the lower latency).

A pair is feasible when some layout meets the target; the ranking is by cost, then chips.
Assumptions are listed in :func:`assumptions` and printed with every plan.

Units: seconds, bytes, W, J, USD; ms only in the human tables.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..costmodel.parallel import SHIP_OPTIONS
from ..costmodel.prediction import Prediction, Settings, predict
from ..errors import SpecError
from ..specs import Hardware, ModelSpec, Workload
from ..specs.layout import Layout, check_tensor_parallel
from .service import batch_phase_times_s, chip_memory
from .simulate import POLICIES, RateSearch, Serving, layout_label, prepare, search_rate, steady_load_limit

DEFAULT_SETTINGS = Settings()
LAYOUT_CHOICES = ("all", "colocated", "single")
# (encoder replicas, decoder replicas) of one unit of separate pools
POOL_RATIOS = ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1))


@dataclass(frozen=True)
class ServingPlan:
    """How the load is served, which layouts are searched and how the rate search runs
    (every field is echoed in the report)."""

    percentile: float = 99.0  # the latency target applies to this percentile
    policy: str = "continuous"  # static | continuous (fidoperf.whatif.simulate)
    arrivals: str = "poisson"  # poisson | gamma | deterministic
    cv: float = 2.0  # gamma arrivals: coefficient of variation of the gaps
    max_batch: int = 128  # most requests per batch on a replica (memory may allow fewer)
    max_wait_ms: float = 10.0  # static: dispatch a batch that is not full after this wait
    requests: int = 4000  # simulated requests per rate tried
    seed: int = 0
    rel_tol: float = 0.01  # the search stops when the bracket is this close (relative)
    layouts: str = "all"  # all: every candidate layout; colocated: no separate pools; single: one chip
    time_budget_s: float = 60.0  # wall time for the rate searches of the whole plan
    pool_ratios: tuple[tuple[int, int], ...] = POOL_RATIOS  # (encoder, decoder) replicas per unit of pools

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise SpecError("--policy", "", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not (isinstance(self.percentile, (int, float)) and 0 < self.percentile <= 100):
            raise SpecError("--percentile", "", f"must be in (0, 100], got {self.percentile!r}")
        if self.layouts not in LAYOUT_CHOICES:
            raise SpecError("--layouts", "", f"must be one of {', '.join(LAYOUT_CHOICES)}, got {self.layouts!r}")
        t = self.time_budget_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise SpecError("--time-budget-s", "", f"must be a positive number of seconds, got {t!r}")
        for r in self.pool_ratios:
            if len(r) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in r):
                raise SpecError("pool_ratios", "", f"each must be (encoder replicas, decoder replicas), got {r!r}")

    def describe(self) -> str:
        arr = {"poisson": "Poisson arrivals", "deterministic": "evenly spaced arrivals",
               "gamma": f"bursty arrivals (gamma gaps, cv {self.cv:g})"}[self.arrivals]
        pol = ("continuous batching (requests join and leave the decoding batch between steps; encodes "
               "interleaved on the same replica, or on a separate encoder pool)" if self.policy == "continuous"
               else f"static batching (batches dispatched when full or after {self.max_wait_ms:g} ms)")
        return f"{pol}, {arr}, at most {self.max_batch} requests per batch and replica"

    def describe_layouts(self) -> str:
        ratios = ", ".join(f"{e}:{d}" for e, d in self.pool_ratios)
        return {
            "single": "one chip per copy of the model (no tensor parallelism, no separate pools)",
            "colocated": "replicas of T chips, T (tensor parallelism) over the divisors of the model's heads up to "
                         "the chips of one node",
            "all": "replicas of T chips, T (tensor parallelism) over the divisors of the model's heads up to the "
                   f"chips of one node, and separate encoder and decoder pools of T-chip replicas in the ratios "
                   f"{ratios} (encoder:decoder) within one node",
        }[self.layouts]


def candidate_layouts(model: ModelSpec, hw: Hardware, layouts: str = "all",
                      pool_ratios: Sequence[tuple[int, int]] = POOL_RATIOS) -> list[Layout]:
    """One unit of every layout the plan considers for ``model`` on ``hw``: a replica of
    T chips for every T that splits the encoder's and decoder's heads (key/value heads
    divided by T or dividing it) up to the chips of one node (``interconnect.node``; 1
    without an interconnect block), with keys and values also sharded over the batch
    when T exceeds the decoder's key/value heads; and (``layouts="all"``) separate pools
    of ``e`` encoder and ``d`` decoder replicas of T chips for each ratio (e, d), when they
    fit in one node (the shipment is modelled on the node's fabric)."""
    if layouts not in LAYOUT_CHOICES:
        raise SpecError("--layouts", "", f"must be one of {', '.join(LAYOUT_CHOICES)}, got {layouts!r}")
    out = [Layout()]
    if layouts == "single":
        return out
    node = hw.interconnect.node.chips if hw.interconnect is not None else 1
    splits = []
    for T in range(1, node + 1):
        try:
            check_tensor_parallel(T, model.encoder.num_heads, model.encoder.num_kv_heads, "layout", "encoder")
            check_tensor_parallel(T, model.decoder.num_heads, model.decoder.num_kv_heads, "layout", "decoder")
        except SpecError:
            continue
        splits.append(T)
    for T in splits[1:]:
        out.append(Layout(chips=T, tensor_parallel=T))
        if T > model.decoder.num_kv_heads:
            out.append(Layout(chips=T, tensor_parallel=T, shard_kv="batch"))
    if layouts == "all" and node > 1:
        for T in splits:
            for e, d in pool_ratios:
                if (e + d) * T <= node:
                    out.append(Layout(encoder_chips=e * T, decoder_chips=d * T, tensor_parallel=T))
    return out


def assumptions(sp: ServingPlan) -> list[str]:
    return [
        f"Latency of a query = from its arrival to its last output token, simulated request by request "
        f"(`fidoperf simulate`): queueing, batch formation, memory limits, collectives and the shipping between "
        f"separate pools included. Policy and arrivals assumed: {sp.describe()}. The target applies to the "
        f"{sp.percentile:g}th percentile.",
        f"Layouts considered: {sp.describe_layouts()}. A layout is pruned before simulation when one request does "
        "not fit a chip's memory, or when a request served alone (`fidoperf predict` at batch 1 under the layout"
        + (f", plus the {sp.max_wait_ms:g} ms batching wait" if sp.policy == "static" else "")
        + ") misses the target; the others are simulated in order of predicted chip-seconds per query at their "
        "largest batch divided by the headroom (1 - lone latency / target), and one whose unit would need more "
        "chips than the cheapest plan found so far even at the capacity it serves with its queue never empty "
        "(which bounds any rate its search could find) is dropped after that one run.",
        f"Time budget: {sp.time_budget_s:g} s of wall time for the whole plan: every (model, chip) pair evaluates "
        "its most promising layout, then the pair that has had the least time so far evaluates its next one, "
        "until the budget runs out (a search under way is finished); the layouts left are listed as not "
        "evaluated (a larger budget may find a cheaper plan).",
        f"Rate per unit = the highest arrival rate whose {sp.percentile:g}th percentile latency meets the target on "
        f"one unit of the layout (one replica, or one set of pools), searched by bisection in log(rate) "
        f"({sp.requests} simulated requests per rate, the first 10% left out, seed {sp.seed}, {100 * sp.rel_tol:g}% "
        f"tolerance), at most {100 * steady_load_limit(sp.requests):.3g}% of the rate the unit serves with its "
        "queue never empty (closer to it, a run of that length does not reach a steady state).",
        "The load is split evenly over the units, each an independent copy with its own queue (random "
        "routing); one shared queue over all units would do somewhat better at the same rate.",
        "Units = ceil(load / rate per unit); chips = units x chips per unit: the last unit may be partly idle, and "
        "its cost counts.",
        "Cost per million queries = chips x price per chip-hour / (load x 3600 s) x 1e6; the price is the "
        "user's, else the profile's list price with its source; without either, cost is NaN and plans are "
        "ranked by chips.",
        "Energy per query = TDP x chips / load: a loaded fleet, every chip drawing its rated power (for TPU v4, "
        "its measured maximum) all the time, busy or idle; host and network excluded. An upper bound for the "
        "chips; NaN when the profile lists no power.",
        "Service times are fidoperf's predictions (see `fidoperf predict`) of each batch as composed on one chip "
        "of a replica, not measurements.",
    ]


ASSUMPTIONS = assumptions(ServingPlan())


@dataclass(frozen=True)
class Price:
    """Price of one chip for one hour (USD) and where it comes from; NaN if unknown."""

    usd_per_chip_hour: float
    source: str


def chip_price(hw: Hardware, override: float | None = None) -> Price:
    if override is not None:
        if not (isinstance(override, (int, float)) and math.isfinite(override) and override > 0):
            raise SpecError("--price-per-chip-hour", "", f"must be a positive number, got {override!r}")
        return Price(float(override), "given by the user (--price-per-chip-hour)")
    if hw.price_per_chip_hour_usd is not None:
        s = hw.sources.get("price_per_chip_hour_usd")
        src = s.source if s else (hw.path or hw.name)
        if s and s.note:
            src += f" ({s.note})"
        return Price(float(hw.price_per_chip_hour_usd), src)
    return Price(float("nan"), f"no price: profile {hw.name} lists none and none was given")


def power_source(hw: Hardware) -> str:
    s = hw.sources.get("tdp_w")
    if hw.tdp_w is None:
        return f"no power figure in profile {hw.name}: energy is NaN"
    return (s.source + (f" ({s.note})" if s.note else "")) if s else (hw.path or hw.name)



PLAN_COLUMNS = [
    "model",
    "hardware",
    "policy",
    "arrivals",
    "fits",
    "layout",
    "tensor_parallel",
    "shard_kv",
    "encoder_chips",
    "decoder_chips",
    "shipped",
    "chips_per_unit",
    "units",
    "max_batch",
    "batch",
    "batch_time_s",
    "latency_s",
    "latency_p50_s",
    "latency_ok",
    "rate_per_unit_qps",
    "throughput_per_chip_qps",
    "capacity_per_chip_qps",
    "utilisation",
    "chips",
    "peak_bytes",
    "memory_fraction",
    "energy_per_query_j",
    "energy_per_million_j",
    "price_per_chip_hour_usd",
    "cost_per_million_usd",
    "feasible",
    "reason",
    "floor_latency_s",
    "layouts_considered",
    "layouts_pruned",
    "layouts_evaluated",
    "layouts_not_evaluated",
]
"""Columns of a plan row (:attr:`Plan.best`), one per (model, chip), for the cheapest
layout that meets the load:

- layout: its label; tensor_parallel, shard_kv, encoder_chips, decoder_chips (pools;
  else NaN), shipped (pools: what the encoder pool ships), chips_per_unit (chips of one
  replica or one set of pools), units (copies of that unit), chips = units x
  chips_per_unit;
- max_batch: the most requests a batch may hold on a replica (``--max-batch``, lowered
  to what fits in memory; with pools, on a decoder replica);
- batch: the mean decoding batch at the sustained rate (rounded), and batch_time_s,
  peak_bytes (per chip), memory_fraction: ``predict`` of one batch of that size under
  the layout (for reference and the figures; not the latency);
- latency_s, latency_p50_s: the target percentile and the median latency at the
  sustained rate; floor_latency_s: the lowest latency of a request served alone over
  the layouts that fit;
- rate_per_unit_qps: the sustained rate of one unit; throughput_per_chip_qps and
  capacity_per_chip_qps: that rate, and the rate a unit serves with its queue never
  empty, per chip of the unit;
- layouts_considered, _pruned, _evaluated, _not_evaluated: how the layout search went
  (:attr:`Plan.layouts` lists each layout)."""

CANDIDATE_COLUMNS = [
    "model",
    "hardware",
    "layout",
    "rate_qps",
    "latency_s",
    "latency_p50_s",
    "sustainable",
    "feasible",
    "mean_decode_batch",
    "utilisation",
    "chips",
    "cost_per_million_usd",
]
"""Every rate the search of the chosen layout of each pair tried (``rate_qps`` per unit
of the layout), with the chips and cost it would imply."""

LAYOUT_COLUMNS = [
    "model",
    "hardware",
    "layout",
    "tensor_parallel",
    "shard_kv",
    "encoder_chips",
    "decoder_chips",
    "chips_per_unit",
    "shipped",
    "status",
    "reason",
    "lone_latency_s",
    "peak_bytes_per_chip",
    "chip_seconds_per_query",
    "expected_chip_seconds_per_query",
    "capacity_per_unit_qps",
    "rate_per_unit_qps",
    "latency_s",
    "units",
    "chips",
    "cost_per_million_usd",
    "chosen",
    "search_s",
]
"""One row per layout considered (:attr:`Plan.layouts`): status "pruned" (reason: does
not fit, a lone request misses the target, or cannot beat the cheapest found),
"evaluated" (rate searched; rate 0 when no rate meets the target) or "not evaluated"
(the time budget ran out); lone_latency_s and peak_bytes_per_chip: ``predict`` at batch
1; chip_seconds_per_query: ``predict`` at the largest batch; the layouts are evaluated
in order of expected_chip_seconds_per_query = chip_seconds_per_query / (1 - lone latency
/ target) (the closer a lone request comes to the target, the less of the capacity
queueing leaves usable); search_s: wall time spent on the layout's simulations."""

PRUNED, EVALUATED, NOT_EVALUATED = "pruned", "evaluated", "not evaluated"


def _empty_row(model: ModelSpec, hw: Hardware, sp: ServingPlan, price: Price) -> dict[str, Any]:
    row: dict[str, Any] = {c: np.nan for c in PLAN_COLUMNS}
    row.update(model=model.name, hardware=hw.name, policy=sp.policy, arrivals=sp.arrivals, fits=False,
               latency_ok=False, feasible=False, reason="", price_per_chip_hour_usd=price.usd_per_chip_hour,
               layout="", shipped=None)
    return row


def _layout_fields(layout: Layout) -> dict[str, Any]:
    return {"layout": layout_label(layout), "tensor_parallel": layout.tensor_parallel,
            "shard_kv": layout.shard_kv, "encoder_chips": layout.encoder_chips if layout.pooled else np.nan,
            "decoder_chips": layout.decoder_chips if layout.pooled else np.nan,
            "chips_per_unit": layout.total_chips}


def _screen(model: ModelSpec, hw: Hardware, wl: Workload, settings: Settings, sp: ServingPlan,
            latency_s: float, layout: Layout) -> dict[str, Any]:
    """The layout's record before any simulation, from the op lists the simulation uses
    (:func:`fidoperf.whatif.service.batch_phase_times_s`, whose batch times are
    ``predict``'s): what pools ship (the one with the shorter lone request, as
    ``predict`` chooses), the memory of one request per chip, the latency of a request
    served alone, and the chip-seconds per query at the largest batch (the order of
    evaluation); status "pruned" with a reason, or None."""
    rec: dict[str, Any] = {c: np.nan for c in LAYOUT_COLUMNS}
    rec.update(model=model.name, hardware=hw.name, **_layout_fields(layout), shipped=None, status=None, reason="",
               chosen=False, search_s=0.0)
    one = wl.replace(batch=1)
    ships = SHIP_OPTIONS if layout.pooled else (None,)
    lone_by = {k: sum(batch_phase_times_s(model, hw, one, settings, layout, k).values()) for k in ships}
    ship = min(ships, key=lambda k: lone_by[k]) if layout.pooled else None
    lone = lone_by[ship]
    mem = chip_memory(model, one, hw, settings, layout, ship, wl.passages, wl.passage_len, wl.target_len)
    peak, max_batch = float(mem["peak_bytes"]), int(mem["max_batch"])
    rec.update(shipped=ship, lone_latency_s=lone, peak_bytes_per_chip=peak)
    if not bool(mem["fits"]):
        where = f" in the {mem['pool']} pool" if layout.pooled else ""
        rec.update(status=PRUNED, reason=f"does not fit: one request needs {peak / 1e9:.1f} GB per "
                                         f"chip{where}, of {hw.hbm_capacity_bytes / 1e9:.1f} GB")
        return rec
    floor = lone + (sp.max_wait_ms / 1e3 if sp.policy == "static" else 0.0)
    if floor > latency_s:
        rec.update(status=PRUNED, reason=f"a request served alone takes {floor * 1e3:.4g} ms, over the "
                                         f"{latency_s * 1e3:.4g} ms target")
        return rec
    b = int(min(sp.max_batch, max_batch))
    ph = batch_phase_times_s(model, hw, wl.replace(batch=b), settings, layout, ship, b)
    if layout.pooled:  # the pools are pipeline stages, as in predict's totals
        E, D = layout.encoder_replicas, layout.decoder_replicas
        rates = [E * b / ph["encode_s"], D * b / (ph["join_s"] + ph["decode_s"])]
        if ph["ship_s"] > 0:
            rates.append(min(E, D) * b / ph["ship_s"])
        per_s = min(rates)
    else:
        per_s = layout.replicas * b / sum(ph.values())
    rec["chip_seconds_per_query"] = layout.total_chips / per_s
    # the order of evaluation: queueing leaves less of the capacity usable the closer a
    # lone request comes to the target, so the figure is divided by the headroom left
    rec["expected_chip_seconds_per_query"] = rec["chip_seconds_per_query"] / (1.0 - floor / latency_s)
    return rec


@dataclass
class PairPlan:
    """What :func:`evaluate_pair` finds for one (model, chip) pair: the plan row, the
    rates tried for the chosen layout, a prediction of a batch of the mean size at the
    sustained rate under it (None if no layout is feasible), its rate search, and every
    layout considered."""

    row: dict[str, Any]
    candidates: pd.DataFrame
    prediction: Prediction | None
    search: RateSearch | None
    layouts: pd.DataFrame


class _PairSearch:
    """The layout search of one (model, chip) pair, one layout at a time (so that
    :func:`plan` can take the pairs in turns): screened at construction, then
    :meth:`step` evaluates the most promising layout left (module docstring)."""

    def __init__(self, model: ModelSpec, hw: Hardware, workload: Workload, qps: float, latency_s: float,
                 price: Price, serving: ServingPlan, settings: Settings):
        self.model, self.hw, self.workload, self.qps, self.latency_s = model, hw, workload, qps, latency_s
        self.price, self.serving, self.settings = price, serving, settings
        self.layouts = candidate_layouts(model, hw, serving.layouts, serving.pool_ratios)
        self.recs = [_screen(model, hw, workload, settings, serving, latency_s, L) for L in self.layouts]
        self.order = sorted((i for i, r in enumerate(self.recs) if r["status"] is None),
                            key=lambda i: (self.recs[i]["expected_chip_seconds_per_query"],
                                           self.recs[i]["chips_per_unit"]))
        self.best: tuple[int, float, int] | None = None  # (chips, latency, index) of the cheapest feasible so far
        self.searches: dict[int, RateSearch] = {}
        self.evaluated = 0
        self.spent_s = 0.0  # wall time of this pair's simulations so far

    @property
    def pending(self) -> bool:
        return bool(self.order)

    def step(self) -> None:
        """Evaluate the next layout: one capacity run, and the rate search unless that
        capacity cannot beat the cheapest plan found so far."""
        t0 = time.monotonic()
        try:
            self._step()
        finally:
            self.spent_s += time.monotonic() - t0

    def _step(self) -> None:
        i = self.order.pop(0)
        rec, L, sp = self.recs[i], self.layouts[i], self.serving
        t0 = time.monotonic()
        sv = Serving(sp.policy, sp.max_batch, sp.max_wait_ms / 1e3, 1, 0.0, L, rec["shipped"])
        prep = prepare(self.model, self.hw, self.workload, arrivals=sp.arrivals, cv=sp.cv, requests=sp.requests,
                       seed=sp.seed, serving=sv, settings=self.settings)
        rec["capacity_per_unit_qps"] = prep.capacity_qps
        top = steady_load_limit(sp.requests)
        fewest = math.ceil(self.qps / (top * prep.capacity_qps) - 1e-9) * L.total_chips
        if self.best is not None and fewest > self.best[0]:
            rec.update(status=PRUNED, search_s=time.monotonic() - t0,
                       reason=f"cannot beat the cheapest found ({self.best[0]} chips): even at {100 * top:.3g}% of "
                              f"its capacity ({prep.capacity_qps:.4g} queries/s per unit) it needs {fewest} chips")
            return
        search = search_rate(prep, target_s=self.latency_s, percentile=sp.percentile, rel_tol=sp.rel_tol)
        self.evaluated += 1
        self.searches[i] = search
        rec.update(status=EVALUATED, search_s=time.monotonic() - t0, rate_per_unit_qps=search.rate_qps)
        if search.rate_qps <= 0:
            rec["reason"] = f"latency target not met: {search.reason}"
            return
        units = int(math.ceil(self.qps / search.rate_qps - 1e-9))
        chips = units * L.total_chips
        rec.update(latency_s=search.latency_s, units=units, chips=chips,
                   cost_per_million_usd=chips * self.price.usd_per_chip_hour / (self.qps * 3600.0) * 1e6)
        if self.best is None or (chips, search.latency_s) < self.best[:2]:
            self.best = (chips, search.latency_s, i)

    def stop(self) -> None:
        """The time is up: list the layouts left as not evaluated."""
        for i in self.order:
            self.recs[i].update(status=NOT_EVALUATED, reason="the time budget ran out")
        self.order = []

    def result(self) -> PairPlan:
        model, hw, qps, price, workload = self.model, self.hw, self.qps, self.price, self.workload
        serving, recs = self.serving, self.recs
        row = _empty_row(model, hw, serving, price)
        fitting = [r for r in recs if not r["reason"].startswith("does not fit")]
        row.update(fits=bool(fitting), layouts_considered=len(recs))
        if fitting:
            row["floor_latency_s"] = min(r["lone_latency_s"] for r in fitting) + (
                serving.max_wait_ms / 1e3 if serving.policy == "static" else 0.0)
        table = pd.DataFrame(recs, columns=LAYOUT_COLUMNS)
        counts = table["status"].value_counts()
        row.update(layouts_pruned=int(counts.get(PRUNED, 0)), layouts_evaluated=int(counts.get(EVALUATED, 0)),
                   layouts_not_evaluated=int(counts.get(NOT_EVALUATED, 0)))
        if self.best is None:
            row["reason"] = _infeasible_reason(recs, hw)
            return PairPlan(row, pd.DataFrame(columns=CANDIDATE_COLUMNS), None, None, table)
        chips, _, i = self.best
        table.loc[i, "chosen"] = True
        L, rec, search = self.layouts[i], recs[i], self.searches[i]
        pts = search.points.copy()
        with np.errstate(divide="ignore"):
            pts["chips"] = np.where(pts["rate_qps"] > 0, np.ceil(qps / pts["rate_qps"] - 1e-9) * L.total_chips,
                                    np.nan)
        pts["cost_per_million_usd"] = pts["chips"] * price.usd_per_chip_hour / (qps * 3600.0) * 1e6
        pts.insert(0, "layout", rec["layout"])
        pts.insert(0, "hardware", hw.name)
        pts.insert(0, "model", model.name)
        s = search.summary
        r = search.rate_qps
        batch_cap = int(search.settings["batch_cap"])
        batch = int(max(1, min(batch_cap, round(s["mean_decode_batch"]))))
        pred = predict(model, hw, workload.replace(batch=batch), self.settings, L)
        energy = hw.tdp_w * chips / qps if hw.tdp_w is not None else np.nan
        row.update(
            **_layout_fields(L),
            shipped=rec["shipped"],
            units=rec["units"],
            max_batch=batch_cap,
            batch=batch,
            batch_time_s=pred.totals["batch_time_s"],
            latency_s=search.latency_s,
            latency_p50_s=s["latency_p50_s"],
            latency_ok=True,
            rate_per_unit_qps=r,
            throughput_per_chip_qps=r / L.total_chips,
            capacity_per_chip_qps=search.capacity_qps / L.total_chips,
            utilisation=s["utilisation"],
            chips=chips,
            peak_bytes=pred.memory["peak_bytes"],
            memory_fraction=pred.memory["peak_bytes"] / hw.hbm_capacity_bytes,
            energy_per_query_j=energy,
            energy_per_million_j=energy * 1e6,
            cost_per_million_usd=chips * price.usd_per_chip_hour / (qps * 3600.0) * 1e6,
            feasible=True,
        )
        return PairPlan(row, pts[CANDIDATE_COLUMNS], pred, search, table)


def evaluate_pair(
    model: ModelSpec,
    hw: Hardware,
    workload: Workload,
    qps: float,
    latency_s: float,
    price: Price,
    serving: ServingPlan = ServingPlan(),
    settings: Settings = DEFAULT_SETTINGS,
    deadline: float | None = None,
) -> PairPlan:
    """One (model, chip) pair: every layout of :func:`candidate_layouts` screened,
    pruned or simulated (module docstring), the cheapest that meets the load chosen.
    ``deadline``: a ``time.monotonic()`` after which no further layout is evaluated
    (the first one always is)."""
    ps = _PairSearch(model, hw, workload, qps, latency_s, price, serving, settings)
    while ps.pending and not (ps.evaluated and deadline is not None and time.monotonic() > deadline):
        ps.step()
    ps.stop()
    return ps.result()


def _infeasible_reason(recs: list[dict[str, Any]], hw: Hardware) -> str:
    """Why no layout of a pair meets the load, from its layouts' records."""
    fit = [r for r in recs if not r["reason"].startswith("does not fit")]
    if not fit:
        most = max(r["chips_per_unit"] for r in recs)
        least = min(recs, key=lambda r: r["peak_bytes_per_chip"])
        need = f"{least['peak_bytes_per_chip'] / 1e9:.1f} GB"
        if most == 1:
            return (f"model does not fit on one chip at batch 1 ({need} needed, {hw.hbm_capacity_bytes / 1e9:.1f} GB "
                    "available)")
        return (f"model does not fit on any layout considered (up to {most} chips per unit): one request needs "
                f"at least {need} per chip ({least['layout']}), {hw.hbm_capacity_bytes / 1e9:.1f} GB available")
    evaluated = [r for r in recs if r["status"] == EVALUATED]
    if evaluated:
        return evaluated[0]["reason"]
    alone = [r for r in fit if r["reason"].startswith("a request served alone")]
    if len(alone) == len(fit):
        fastest = min(alone, key=lambda r: r["lone_latency_s"])
        return f"latency target not met: even alone ({fastest['layout']}) {fastest['reason']}"
    return "no layout evaluated within the time budget"


@dataclass
class Plan:
    """The result of :func:`plan`.

    ``best``: one row per (model, chip) pair (:data:`PLAN_COLUMNS` and ``rank``), ranked
    (feasible first, then by cost per million queries, pairs without a price after those
    with one, then by chips); ``candidates``: every rate tried by the searches of the
    chosen layouts; ``layouts``: every layout considered (:data:`LAYOUT_COLUMNS`);
    ``predictions``: a batch of the mean size at the sustained rate of each feasible
    pair under its layout, keyed by (model, hardware); ``searches``: the chosen layouts'
    rate searches; ``elapsed_s``: wall time of the plan.
    """

    qps: float
    latency_s: float
    workload: Workload
    settings: Settings
    best: pd.DataFrame
    candidates: pd.DataFrame
    predictions: dict[tuple[str, str], Prediction]
    prices: dict[str, Price]
    power_sources: dict[str, str]
    models: list[ModelSpec] = field(default_factory=list)
    hardware: list[Hardware] = field(default_factory=list)
    serving: ServingPlan = field(default_factory=ServingPlan)
    searches: dict[tuple[str, str], RateSearch] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=lambda: list(ASSUMPTIONS))
    notes: list[str] = field(default_factory=list)
    layouts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LAYOUT_COLUMNS))
    elapsed_s: float = math.nan

    @property
    def percentile(self) -> float:
        return self.serving.percentile


def plan(
    models: Sequence[ModelSpec],
    hardware_list: Sequence[Hardware],
    workload: Workload,
    qps: float,
    latency_ms: float,
    price_per_chip_hour: float | None = None,
    serving: ServingPlan = ServingPlan(),
    settings: Settings = DEFAULT_SETTINGS,
) -> Plan:
    """The cheapest layout and number of chips for every (model, chip) pair that serves
    ``qps`` with the ``serving.percentile``-th percentile latency within ``latency_ms``,
    within ``serving.time_budget_s``. Raises :class:`SpecError` when no pair can meet the
    target, naming the tightest latency a request served alone gets."""
    for name, v in (("--qps", qps), ("--latency-ms", latency_ms)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SpecError(name, "", f"must be a positive number, got {v!r}")
    if not models or not hardware_list:
        raise SpecError("plan", "", "needs at least one model and one hardware profile")
    latency_s = latency_ms / 1e3
    start = time.monotonic()
    tables, best_rows, chosen, searches, layout_tables = [], [], {}, {}, []
    prices = {h.name: chip_price(h, price_per_chip_hour) for h in hardware_list}
    powers = {h.name: power_source(h) for h in hardware_list}
    pairs = [_PairSearch(m, h, workload, qps, latency_s, prices[h.name], serving, settings)
             for m in models for h in hardware_list]
    deadline = start + serving.time_budget_s
    for ps in pairs:  # every pair evaluates its most promising layout
        while ps.pending and not ps.evaluated:
            ps.step()
    while time.monotonic() <= deadline:
        pending = [ps for ps in pairs if ps.pending]
        if not pending:
            break
        min(pending, key=lambda ps: ps.spent_s).step()  # the pair that has had the least time goes next
    for ps in pairs:
        ps.stop()
    for ps in pairs:
        m, h = ps.model, ps.hw
        pp = ps.result()
        tables.append(pp.candidates)
        best_rows.append(pp.row)
        layout_tables.append(pp.layouts)
        if pp.prediction is not None:
            chosen[(m.name, h.name)] = pp.prediction
        if pp.search is not None:
            searches[(m.name, h.name)] = pp.search
    candidates = pd.concat([t for t in tables if len(t)] or [pd.DataFrame(columns=CANDIDATE_COLUMNS)],
                           ignore_index=True)
    best = pd.DataFrame(best_rows, columns=PLAN_COLUMNS)
    if not best["feasible"].any():
        fit = best[best["fits"]]
        if fit.empty:
            raise SpecError(
                "plan", "", "no model fits on any layout considered of any of the chips at batch 1 "
                f"({serving.describe_layouts()})"
            )
        timed_out = best["reason"].str.contains("time budget")
        if timed_out.all():
            raise SpecError("--time-budget-s", "", f"no layout was evaluated within {serving.time_budget_s:g} s")
        t = fit.sort_values("floor_latency_s").iloc[0]
        raise SpecError(
            "--latency-ms",
            "",
            f"no configuration meets {latency_ms:g} ms at the {serving.percentile:g}th percentile: the tightest "
            f"latency achievable is {t['floor_latency_s'] * 1e3:.4g} ms ({t['model']} on {t['hardware']}, a "
            "request served alone)",
        )
    best["_priced"] = best["cost_per_million_usd"].notna()
    best = best.sort_values(
        ["feasible", "_priced", "cost_per_million_usd", "chips", "latency_s"],
        ascending=[False, False, True, True, True],
        kind="stable",
    ).drop(columns="_priced")
    best.insert(0, "rank", np.arange(1, len(best) + 1))
    best = best.reset_index(drop=True)
    notes = []
    unpriced = [h for h, p in prices.items() if math.isnan(p.usd_per_chip_hour)]
    if unpriced:
        notes.append(
            f"No price for {', '.join(unpriced)}: their cost is NaN; they are ranked by chips after the "
            "priced ones (give --price-per-chip-hour to compare costs)."
        )
    unpowered = [h.name for h in hardware_list if h.tdp_w is None]
    if unpowered:
        notes.append(f"No power figure for {', '.join(unpowered)}: energy per query is NaN.")
    all_layouts = pd.concat(layout_tables, ignore_index=True)
    left = int((all_layouts["status"] == NOT_EVALUATED).sum())
    if left:
        notes.append(f"The {serving.time_budget_s:g} s time budget ran out: {left} layout(s) were not evaluated "
                     "(listed with their reason); a larger --time-budget-s may find a cheaper plan.")
    return Plan(
        qps=float(qps),
        latency_s=latency_s,
        workload=workload,
        settings=settings,
        best=best,
        candidates=candidates,
        predictions=chosen,
        prices=prices,
        power_sources=powers,
        models=list(models),
        hardware=list(hardware_list),
        serving=serving,
        searches=searches,
        assumptions=assumptions(serving),
        notes=notes,
        layouts=all_layouts,
        elapsed_s=time.monotonic() - start,
    )
