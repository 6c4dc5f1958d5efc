"""Capacity planning: how many chips serve a load with a latency percentile within a
target, at the least cost, for each model and chip.

For each (model, chip) pair, :func:`evaluate_pair` asks the serving simulation
(:func:`fidoperf.whatif.simulate.max_sustainable_rate`) for the highest arrival rate one
chip sustains with the ``percentile``-th percentile latency within the target, under the
chosen batching policy and arrival process (queueing, batch formation and memory
limits included), and derives:

    rate per chip     r = max_sustainable_rate(...)              (queries/s)
    chips             = ceil(qps / r)
    cost per 1M       = chips x price per chip-hour / (qps x 3600) x 1e6   (USD)
    energy per query  = TDP x chips / qps                         (J; a loaded fleet)
    energy per 1M     = energy per query x 1e6                    (J)

A pair is feasible when the model fits on one chip and some rate meets the target; the
ranking is by cost, then chips. Assumptions are listed in :func:`assumptions` and
printed with every plan. The evaluation of one pair is one function so that parallel
layouts can be looped over it.

Units: seconds, bytes, W, J, USD; ms only in the human tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..costmodel.prediction import Prediction, Settings, memory_footprint, predict
from ..errors import SpecError
from ..specs import Hardware, ModelSpec, Workload
from .simulate import POLICIES, RateSearch, max_sustainable_rate, steady_load_limit

DEFAULT_SETTINGS = Settings()


@dataclass(frozen=True)
class ServingPlan:
    """How the load is served and how the rate search runs (every field is echoed in
    the report)."""

    percentile: float = 99.0  # the latency target applies to this percentile
    policy: str = "continuous"  # static | continuous (fidoperf.whatif.simulate)
    arrivals: str = "poisson"  # poisson | gamma | deterministic
    cv: float = 2.0  # gamma arrivals: coefficient of variation of the gaps
    max_batch: int = 128  # most requests per batch on a chip (memory may allow fewer)
    max_wait_ms: float = 10.0  # static: dispatch a batch that is not full after this wait
    requests: int = 4000  # simulated requests per rate tried
    seed: int = 0
    rel_tol: float = 0.01  # the search stops when the bracket is this close (relative)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise SpecError("--policy", "", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not (isinstance(self.percentile, (int, float)) and 0 < self.percentile <= 100):
            raise SpecError("--percentile", "", f"must be in (0, 100], got {self.percentile!r}")

    def describe(self) -> str:
        arr = {"poisson": "Poisson arrivals", "deterministic": "evenly spaced arrivals",
               "gamma": f"bursty arrivals (gamma gaps, cv {self.cv:g})"}[self.arrivals]
        pol = ("continuous batching (requests join and leave the decoding batch between steps, encodes "
               "interleaved on the same chip)" if self.policy == "continuous" else
               f"static batching (batches dispatched when full or after {self.max_wait_ms:g} ms)")
        return f"{pol}, {arr}, at most {self.max_batch} requests per batch"


def assumptions(sp: ServingPlan) -> list[str]:
    return [
        f"Latency of a query = from its arrival to its last output token, simulated request by request "
        f"(`fidoperf simulate`): queueing, batch formation and memory limits included. Policy and arrivals "
        f"assumed: {sp.describe()}. The target applies to the {sp.percentile:g}th percentile.",
        f"Rate per chip = the highest arrival rate whose {sp.percentile:g}th percentile latency meets the target "
        f"on one chip, searched by bisection in log(rate) ({sp.requests} simulated requests per rate, the first 10% "
        f"left out, seed {sp.seed}, {100 * sp.rel_tol:g}% tolerance), at most "
        f"{100 * steady_load_limit(sp.requests):.3g}% of the rate the chip serves with its queue never empty "
        "(closer to it, a run of that length does not "
        "reach a steady state).",
        "The load is split evenly over the chips, each an independent copy with its own queue (random "
        "routing); one shared queue over all chips would do somewhat better at the same rate.",
        "Chips = ceil(load / rate per chip): the last chip may be partly idle, and its cost counts.",
        "Replicas are data-parallel: every chip holds a full copy of the model (weights once per chip). "
        "A model that does not fit on one chip at batch 1 is infeasible on that chip: model and tensor "
        "parallelism across chips are not modelled.",
        "Cost per million queries = chips x price per chip-hour / (load x 3600 s) x 1e6; the price is the "
        "user's, else the profile's list price with its source; without either, cost is NaN and plans are "
        "ranked by chips.",
        "Energy per query = TDP x chips / load: a loaded fleet, every chip drawing its rated power (for TPU v4, "
        "its measured maximum) all the time, busy or idle; host and network excluded. An upper bound for the "
        "chips; NaN when the profile lists no power.",
        "Service times are roofline predictions (see `fidoperf predict`) of each batch as composed, not "
        "measurements.",
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
    "max_batch",
    "batch",
    "batch_time_s",
    "latency_s",
    "latency_p50_s",
    "latency_ok",
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
]
"""Columns of a plan row (:attr:`Plan.best`):

- max_batch: the most requests a batch may hold on the chip (``--max-batch``, lowered
  to what fits in memory);
- batch: the mean decoding batch at the sustained rate (rounded), and batch_time_s,
  peak_bytes, memory_fraction: ``predict`` of one batch of that size (for reference and
  the figures; not the latency);
- latency_s, latency_p50_s: the target percentile and the median latency at the
  sustained rate; floor_latency_s: the target percentile of requests served alone;
- throughput_per_chip_qps: the sustained rate per chip; capacity_per_chip_qps: the rate
  a chip serves with its queue never empty."""

CANDIDATE_COLUMNS = [
    "model",
    "hardware",
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


def _empty_row(model: ModelSpec, hw: Hardware, sp: ServingPlan, price: Price) -> dict[str, Any]:
    row: dict[str, Any] = {c: np.nan for c in PLAN_COLUMNS}
    row.update(model=model.name, hardware=hw.name, policy=sp.policy, arrivals=sp.arrivals, fits=False,
               latency_ok=False, feasible=False, reason="", price_per_chip_hour_usd=price.usd_per_chip_hour)
    return row


def evaluate_pair(
    model: ModelSpec,
    hw: Hardware,
    workload: Workload,
    qps: float,
    latency_s: float,
    price: Price,
    serving: ServingPlan = ServingPlan(),
    settings: Settings = DEFAULT_SETTINGS,
) -> tuple[dict[str, Any], pd.DataFrame, Prediction | None, RateSearch | None]:
    """One (model, chip) pair: the plan row, the rates tried (with the chips and cost
    each would need), the prediction of a batch of the mean size at the sustained rate
    (None if the model does not fit), and the rate search itself."""
    row = _empty_row(model, hw, serving, price)
    one = memory_footprint(model, hw, workload.replace(batch=1))
    row.update(peak_bytes=one["peak_bytes"], memory_fraction=one["peak_bytes"] / hw.hbm_capacity_bytes)
    if one["max_batch"] < 1:
        row["reason"] = (
            f"model does not fit on one chip at batch 1 ({one['peak_bytes'] / 1e9:.1f} GB needed, "
            f"{hw.hbm_capacity_bytes / 1e9:.1f} GB available)"
        )
        return row, pd.DataFrame(columns=CANDIDATE_COLUMNS), None, None
    search = max_sustainable_rate(
        model, hw, workload, target_s=latency_s, percentile=serving.percentile, policy=serving.policy,
        arrivals=serving.arrivals, cv=serving.cv, requests=serving.requests, seed=serving.seed,
        max_batch=serving.max_batch, max_wait_ms=serving.max_wait_ms, rel_tol=serving.rel_tol, settings=settings,
    )
    pts = search.points.copy()
    with np.errstate(divide="ignore"):
        pts["chips"] = np.where(pts["rate_qps"] > 0, np.ceil(qps / pts["rate_qps"] - 1e-9), np.nan)
    pts["cost_per_million_usd"] = pts["chips"] * price.usd_per_chip_hour / (qps * 3600.0) * 1e6
    pts.insert(0, "hardware", hw.name)
    pts.insert(0, "model", model.name)
    row.update(fits=True, max_batch=int(search.settings["batch_cap"]), floor_latency_s=search.floor_latency_s,
               capacity_per_chip_qps=search.capacity_qps)
    if search.rate_qps <= 0:
        row["reason"] = f"latency target not met: {search.reason}"
        return row, pts[CANDIDATE_COLUMNS], None, search
    r = search.rate_qps
    s = search.summary
    batch = int(max(1, min(row["max_batch"], round(s["mean_decode_batch"]))))
    pred = predict(model, hw, workload.replace(batch=batch), settings)
    chips = int(math.ceil(qps / r - 1e-9))
    energy = hw.tdp_w * chips / qps if hw.tdp_w is not None else np.nan
    row.update(
        batch=batch,
        batch_time_s=pred.totals["batch_time_s"],
        latency_s=search.latency_s,
        latency_p50_s=s["latency_p50_s"],
        latency_ok=True,
        throughput_per_chip_qps=r,
        utilisation=s["utilisation"],
        chips=chips,
        peak_bytes=pred.memory["peak_bytes"],
        memory_fraction=pred.memory["peak_bytes"] / hw.hbm_capacity_bytes,
        energy_per_query_j=energy,
        energy_per_million_j=energy * 1e6,
        cost_per_million_usd=chips * price.usd_per_chip_hour / (qps * 3600.0) * 1e6,
        feasible=True,
    )
    return row, pts[CANDIDATE_COLUMNS], pred, search


@dataclass
class Plan:
    """The result of :func:`plan`.

    ``best``: one row per (model, chip) pair (:data:`PLAN_COLUMNS` and ``rank``), ranked
    (feasible first, then by cost per million queries, pairs without a price after those
    with one, then by chips); ``candidates``: every rate tried by the searches;
    ``predictions``: a batch of the mean size at the sustained rate of each feasible
    pair, keyed by (model, hardware); ``searches``: the rate searches.
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
    """The cheapest number of chips for every (model, chip) pair that serves ``qps`` with
    the ``serving.percentile``-th percentile latency within ``latency_ms``. Raises
    :class:`SpecError` when no pair can meet the target, naming the tightest latency a
    request served alone gets."""
    for name, v in (("--qps", qps), ("--latency-ms", latency_ms)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SpecError(name, "", f"must be a positive number, got {v!r}")
    if not models or not hardware_list:
        raise SpecError("plan", "", "needs at least one model and one hardware profile")
    latency_s = latency_ms / 1e3
    tables, best_rows, chosen, searches = [], [], {}, {}
    prices = {h.name: chip_price(h, price_per_chip_hour) for h in hardware_list}
    powers = {h.name: power_source(h) for h in hardware_list}
    for m in models:
        for h in hardware_list:
            row, cand, pred, search = evaluate_pair(m, h, workload, qps, latency_s, prices[h.name], serving,
                                                    settings)
            tables.append(cand)
            best_rows.append(row)
            if pred is not None:
                chosen[(m.name, h.name)] = pred
            if search is not None:
                searches[(m.name, h.name)] = search
    candidates = pd.concat([t for t in tables if len(t)] or [pd.DataFrame(columns=CANDIDATE_COLUMNS)],
                           ignore_index=True)
    best = pd.DataFrame(best_rows, columns=PLAN_COLUMNS)
    if not best["feasible"].any():
        fit = best[best["fits"]]
        if fit.empty:
            raise SpecError(
                "plan", "", "no model fits on any of the chips at batch 1 (each chip holds a full copy)"
            )
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
    )
