"""Capacity planning: how many chips, at which batch size, serve a load within a
latency limit at the least cost.

For each (model, chip) pair every candidate batch size b is evaluated with
:func:`fidoperf.costmodel.prediction.predict`:

    latency           = batch_time_s(b)             (the time of the batch a query is in)
    throughput / chip = b / batch_time_s(b)         (queries/s)
    chips             = ceil(qps / throughput per chip)
    cost per 1M       = chips x price per chip-hour / (qps x 3600) x 1e6   (USD)
    energy per query  = TDP x batch_time_s(b) / b   (J)

A candidate is feasible when the batch fits in the chip's memory and its latency is
within the limit; the pair's plan is its feasible candidate with the fewest chips
(hence the least cost: the price is per chip), ties going to the lower latency.
Assumptions are listed in :data:`ASSUMPTIONS` and printed with every plan.

Units: seconds, bytes, W, J, USD; ms only in the human tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..costmodel.prediction import Prediction, Settings, memory_footprint, predict
from ..errors import SpecError
from ..specs import Hardware, ModelSpec, Workload

DEFAULT_SETTINGS = Settings()

DEFAULT_BATCHES = tuple(2**i for i in range(10))  # 1 .. 512; the chip's largest batch is added

ASSUMPTIONS = [
    "Latency of a query = the predicted time of the whole batch it is served in (prefill of all passages "
    "plus every decoding step). Time spent waiting for a batch to fill or for a busy chip is not counted: "
    "no queueing delay beyond one batch. At batch b and load q spread over n chips, filling a batch takes "
    "about b x n / q more seconds.",
    "A chip serves one batch at a time, back to back; throughput per chip = batch / batch time.",
    "Replicas are data-parallel: every chip holds a full copy of the model (weights once per chip). "
    "A model that does not fit on one chip at batch 1 is infeasible on that chip: model and tensor "
    "parallelism across chips are not modelled.",
    "Chips = ceil(load / throughput per chip): the last chip may be partly idle, and its cost counts.",
    "Cost per million queries = chips x price per chip-hour / (load x 3600 s) x 1e6; the price is the "
    "user's, else the profile's list price with its source; without either, cost is NaN and plans are "
    "ranked by chips.",
    "Energy per query = TDP x batch time / batch: the chip at its rated (or, for TPU v4, its measured "
    "maximum) power for the whole batch, host and network excluded; NaN when the profile lists no power.",
    "Times are roofline predictions (see `fidoperf predict`), not measurements.",
]


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


def candidate_batches(max_batch: int, batches: Sequence[int] | None = None) -> list[int]:
    """The batch sizes tried: ``batches`` as given, or powers of two 1..512 that fit
    plus the largest batch that fits."""
    if batches is not None:
        bad = [b for b in batches if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1]
        if bad or not batches:
            raise SpecError(
                "--batches", "", f"batch sizes must be whole numbers of at least 1, got {list(batches)!r}"
            )
        return sorted({int(b) for b in batches})
    out = {b for b in DEFAULT_BATCHES if b <= max_batch}
    if max_batch >= 1:
        out.add(int(max_batch))
    return sorted(out)


CANDIDATE_COLUMNS = [
    "model",
    "hardware",
    "batch",
    "fits",
    "batch_time_s",
    "latency_ok",
    "throughput_per_chip_qps",
    "chips",
    "peak_bytes",
    "memory_fraction",
    "energy_per_query_j",
    "price_per_chip_hour_usd",
    "cost_per_million_usd",
    "feasible",
    "reason",
]


def evaluate_candidates(
    model: ModelSpec,
    hw: Hardware,
    workload: Workload,
    qps: float,
    latency_s: float,
    price: Price,
    batches: Sequence[int] | None = None,
    settings: Settings = DEFAULT_SETTINGS,
) -> tuple[pd.DataFrame, dict[int, Prediction], int]:
    """Every candidate batch of one (model, chip) pair; returns the table, the
    predictions by batch (only for batches that fit) and the largest batch that fits."""
    max_batch = memory_footprint(model, hw, workload.replace(batch=1))["max_batch"]
    rows, preds = [], {}
    for b in candidate_batches(max_batch, batches):
        wl = workload.replace(batch=b)
        row = {
            "model": model.name,
            "hardware": hw.name,
            "batch": b,
            "price_per_chip_hour_usd": price.usd_per_chip_hour,
        }
        if b > max_batch:
            mem = memory_footprint(model, hw, wl)
            reason = (
                f"does not fit: needs {mem['peak_bytes'] / 1e9:.1f} GB of "
                f"{hw.hbm_capacity_bytes / 1e9:.1f} GB"
                if max_batch >= 1
                else f"model does not fit on one chip at batch 1 ({mem['peak_bytes'] / 1e9:.1f} GB needed, "
                f"{hw.hbm_capacity_bytes / 1e9:.1f} GB available)"
            )
            row.update(
                fits=False,
                batch_time_s=np.nan,
                latency_ok=False,
                throughput_per_chip_qps=np.nan,
                chips=np.nan,
                peak_bytes=mem["peak_bytes"],
                memory_fraction=mem["peak_bytes"] / hw.hbm_capacity_bytes,
                energy_per_query_j=np.nan,
                cost_per_million_usd=np.nan,
                feasible=False,
                reason=reason,
            )
            rows.append(row)
            continue
        p = predict(model, hw, wl, settings)
        preds[b] = p
        t = p.totals["batch_time_s"]
        thr = b / t
        chips = int(math.ceil(qps / thr - 1e-9))
        ok = t <= latency_s
        row.update(
            fits=True,
            batch_time_s=t,
            latency_ok=ok,
            throughput_per_chip_qps=thr,
            chips=chips,
            peak_bytes=p.memory["peak_bytes"],
            memory_fraction=p.memory["peak_bytes"] / hw.hbm_capacity_bytes,
            energy_per_query_j=(hw.tdp_w * t / b) if hw.tdp_w is not None else np.nan,
            cost_per_million_usd=chips * price.usd_per_chip_hour / (qps * 3600.0) * 1e6,
            feasible=ok,
            reason="" if ok else f"latency {t * 1e3:.4g} ms over the limit",
        )
        rows.append(row)
    if not rows:  # the model does not fit at batch 1 and no batches were asked for
        mem = memory_footprint(model, hw, workload.replace(batch=1))
        rows.append(
            {
                "model": model.name,
                "hardware": hw.name,
                "batch": 1,
                "fits": False,
                "batch_time_s": np.nan,
                "latency_ok": False,
                "throughput_per_chip_qps": np.nan,
                "chips": np.nan,
                "peak_bytes": mem["peak_bytes"],
                "memory_fraction": mem["peak_bytes"] / hw.hbm_capacity_bytes,
                "energy_per_query_j": np.nan,
                "price_per_chip_hour_usd": price.usd_per_chip_hour,
                "cost_per_million_usd": np.nan,
                "feasible": False,
                "reason": (
                    f"model does not fit on one chip at batch 1 ({mem['peak_bytes'] / 1e9:.1f} GB "
                    f"needed, {hw.hbm_capacity_bytes / 1e9:.1f} GB available)"
                ),
            }
        )
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS), preds, int(max_batch)


@dataclass
class Plan:
    """The result of :func:`plan`.

    ``best``: one row per (model, chip) pair, ranked (feasible first, then by cost per
    million queries, pairs without a price after those with one, then by chips);
    ``candidates``: every batch evaluated; ``predictions``: the prediction behind each
    feasible pair's choice, keyed by (model, hardware).
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
    batches: list[int] | None = None  # as asked for; None: the default space
    assumptions: list[str] = field(default_factory=lambda: list(ASSUMPTIONS))
    notes: list[str] = field(default_factory=list)


def plan(
    models: Sequence[ModelSpec],
    hardware_list: Sequence[Hardware],
    workload: Workload,
    qps: float,
    latency_ms: float,
    price_per_chip_hour: float | None = None,
    batches: Sequence[int] | None = None,
    settings: Settings = DEFAULT_SETTINGS,
) -> Plan:
    """The cheapest (chips, batch) for every (model, chip) pair that meets ``qps`` and
    ``latency_ms``. Raises :class:`SpecError` when no pair can meet the latency limit,
    naming the tightest latency any configuration achieves."""
    for name, v in (("--qps", qps), ("--latency-ms", latency_ms)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SpecError(name, "", f"must be a positive number, got {v!r}")
    if not models or not hardware_list:
        raise SpecError("plan", "", "needs at least one model and one hardware profile")
    latency_s = latency_ms / 1e3
    tables, best_rows, chosen = [], [], {}
    prices = {h.name: chip_price(h, price_per_chip_hour) for h in hardware_list}
    powers = {h.name: power_source(h) for h in hardware_list}
    for m in models:
        for h in hardware_list:
            cand, preds, max_batch = evaluate_candidates(
                m, h, workload, qps, latency_s, prices[h.name], batches, settings
            )
            tables.append(cand)
            ok = cand[cand["feasible"]]
            if len(ok):
                pick = ok.sort_values(["chips", "batch_time_s", "batch"], kind="stable").iloc[0]
                row = pick.to_dict()
                chosen[(m.name, h.name)] = preds[int(pick["batch"])]
            else:
                fits = cand[cand["fits"]]
                if len(fits):
                    fastest = fits.sort_values("batch_time_s").iloc[0]
                    why = (
                        f"latency limit not met: the fastest batch ({int(fastest['batch'])}) takes "
                        f"{fastest['batch_time_s'] * 1e3:.4g} ms"
                    )
                else:
                    why = cand["reason"].iloc[0]
                row = {c: np.nan for c in CANDIDATE_COLUMNS}
                row.update(
                    model=m.name,
                    hardware=h.name,
                    fits=bool(len(fits)),
                    latency_ok=False,
                    feasible=False,
                    reason=why,
                    price_per_chip_hour_usd=prices[h.name].usd_per_chip_hour,
                )
            row["max_batch"] = max_batch
            best_rows.append(row)
    candidates = pd.concat(tables, ignore_index=True)
    best = pd.DataFrame(best_rows)
    if not best["feasible"].any():
        fit = candidates[candidates["fits"]]
        if fit.empty:
            raise SpecError(
                "plan", "", "no model fits on any of the chips at batch 1 (each chip holds a full copy)"
            )
        t = fit.sort_values("batch_time_s").iloc[0]
        raise SpecError(
            "--latency-ms",
            "",
            f"no configuration meets {latency_ms:g} ms: the tightest latency achievable is "
            f"{t['batch_time_s'] * 1e3:.4g} ms ({t['model']} on {t['hardware']} at batch {int(t['batch'])})",
        )
    best["_priced"] = best["cost_per_million_usd"].notna()
    best = best.sort_values(
        ["feasible", "_priced", "cost_per_million_usd", "chips", "batch_time_s"],
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
        batches=None if batches is None else sorted({int(b) for b in batches}),
        notes=notes,
    )
