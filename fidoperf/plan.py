"""Capacity planning: how many chips, at which batch size, serve a load within a
latency limit at the least cost.

For each (model, chip) pair every candidate batch size b is evaluated with
:func:`fidoperf.prediction.predict`:

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

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import SpecError
from .prediction import Prediction, Settings, memory_footprint, predict
from .specs import Hardware, ModelSpec, Workload

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


# --------------------------------------------------------------------------- tables for people


def _num(v, fmt):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def best_table(p: Plan) -> pd.DataFrame:
    """The ranked plans formatted for people (ms, GB, %, J, USD)."""
    rows = []
    for _, r in p.best.iterrows():
        ok = bool(r["feasible"])
        rows.append(
            {
                "rank": int(r["rank"]),
                "model": r["model"],
                "hardware": r["hardware"],
                "batch": int(r["batch"]) if ok else "-",
                "chips": int(r["chips"]) if ok else "-",
                "latency ms": _num(r["batch_time_s"] * 1e3, ".4g") if ok else "-",
                "queries/s/chip": _num(r["throughput_per_chip_qps"], ".4g") if ok else "-",
                "memory": (
                    f"{r['peak_bytes'] / 1e9:.1f} GB ({100 * r['memory_fraction']:.0f}%)" if ok else "-"
                ),
                "J/query": _num(r["energy_per_query_j"], ".3g") if ok else "-",
                "USD/1M queries": _num(r["cost_per_million_usd"], ",.2f") if ok else "-",
                "note": "" if ok else r["reason"],
            }
        )
    out = pd.DataFrame(rows)
    return out.drop(columns="note") if (out["note"] == "").all() else out


def candidates_table(p: Plan) -> pd.DataFrame:
    c = p.candidates
    return pd.DataFrame(
        {
            "model": c["model"],
            "hardware": c["hardware"],
            "batch": c["batch"],
            "latency ms": [_num(v * 1e3, ".4g") for v in c["batch_time_s"]],
            "queries/s/chip": [_num(v, ".4g") for v in c["throughput_per_chip_qps"]],
            "chips": [("-" if pd.isna(v) else str(int(v))) for v in c["chips"]],
            "memory": [f"{100 * v:.0f}%" for v in c["memory_fraction"]],
            "USD/1M queries": [_num(v, ",.2f") for v in c["cost_per_million_usd"]],
            "feasible": ["yes" if v else "no" for v in c["feasible"]],
            "why not": c["reason"],
        }
    )


def summary_line(p: Plan) -> str:
    r = p.best.iloc[0]
    cost = r["cost_per_million_usd"]
    cost_text = (
        f", {cost:,.2f} USD per million queries" if not math.isnan(cost) else " (no price: ranked by chips)"
    )
    return (
        f"best: {int(r['chips'])} x {r['hardware']} running {r['model']} at batch {int(r['batch'])}: "
        f"latency {r['batch_time_s'] * 1e3:.4g} ms, {r['throughput_per_chip_qps']:.4g} queries/s per chip"
        + cost_text
    )


def inputs_lines(p: Plan) -> list[str]:
    wl = p.workload
    lines = [
        f"Load: {p.qps:g} queries/s; latency limit {p.latency_s * 1e3:g} ms per query.",
        f"Workload: {wl.passages} passages x {wl.passage_len} tokens, {wl.target_len} generated tokens, "
        f"weights {wl.weight_dtype}, activations {wl.act_dtype}, KV cache {wl.kv_dtype}, matmuls at "
        f"{wl.compute_dtype} peak; overlap model {p.settings.overlap}"
        + ("" if p.settings.efficiency else ", efficiency factors ignored")
        + ".",
        f"Models: {', '.join(m.name for m in p.models) or ', '.join(dict.fromkeys(p.best['model']))}.",
    ]
    for h, price in p.prices.items():
        ptxt = (
            f"{price.usd_per_chip_hour:g} USD per chip-hour, source: {price.source}"
            if not math.isnan(price.usd_per_chip_hour)
            else price.source
        )
        lines.append(f"{h}: {ptxt}. Power: {p.power_sources[h]}.")
    return lines


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Figure:
    """A rendered figure for a report: title, caption, PNG bytes."""

    title: str
    caption: str
    png: bytes


def _blocks(p: Plan, figures: Sequence[Figure]) -> list[tuple[str, Any]]:
    from . import __version__

    top = p.best.iloc[0]
    blocks: list[tuple[str, Any]] = [
        ("h1", f"Capacity plan: {p.qps:g} queries/s within {p.latency_s * 1e3:g} ms"),
        ("p", f"Written by fidoperf {__version__} from roofline predictions, not measurements."),
        ("h2", "Recommendation"),
        ("p", summary_line(p) + "."),
        ("h2", "Plans, one per model and chip, best first"),
        ("table", best_table(p)),
    ]
    if p.notes:
        blocks.append(("ul", p.notes))
    blocks += [("h2", "Inputs"), ("ul", inputs_lines(p)), ("h2", "Assumptions"), ("ul", p.assumptions)]
    for f in figures:
        blocks += [("h2", f.title), ("img", f), ("p", f.caption)]
    blocks += [
        ("h2", "Every candidate evaluated"),
        (
            "p",
            (
                "Batch sizes tried for each pair: powers of two up to 512 that fit, plus the largest batch "
                "that fits"
                if p.batches is None
                else f"Batch sizes tried for each pair (as asked for): {', '.join(map(str, p.batches))}"
            )
            + f"; the chosen plan of {top['model']} on {top['hardware']} is rank 1 above.",
        ),
        ("table", candidates_table(p)),
    ]
    return blocks


def report_markdown(p: Plan, figures: Sequence[Figure] = ()) -> str:
    """A Markdown report that stands alone: tables, assumptions and figures embedded
    as base64 PNG data URIs (GitHub's viewer does not show data URIs; the HTML
    report is the one to open in a browser)."""
    import base64

    from .fmt import text_table

    out = []
    for kind, body in _blocks(p, figures):
        if kind == "h1":
            out.append(f"# {body}")
            out.append(
                "*Figures are embedded as base64 PNG data URIs; viewers that do not show them (GitHub's, "
                "for one) can use the HTML report (`--output plan.html`).*"
            )
        elif kind == "h2":
            out.append(f"## {body}")
        elif kind == "p":
            out.append(body)
        elif kind == "ul":
            out.append("\n".join(f"- {line}" for line in body))
        elif kind == "table":
            out.append(
                text_table(body.astype(str).apply(lambda col: col.str.replace("|", "\\|")), markdown=True)
            )
        elif kind == "img":
            out.append(f"![{body.title}](data:image/png;base64,{base64.b64encode(body.png).decode()})")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
"""


def _html_table(df: pd.DataFrame) -> str:
    def is_num(v: str) -> bool:
        try:
            float(v.replace(",", "").split(" ")[0].rstrip("%"))
            return True
        except ValueError:
            return False

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.astype(str).itertuples(index=False):
        cells = "".join(
            f'<td class="num">{html.escape(v)}</td>' if is_num(v) else f"<td>{html.escape(v)}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def report_html(p: Plan, figures: Sequence[Figure] = ()) -> str:
    """A self-contained HTML page: inline CSS, figures as base64 PNG, no external links
    needed to read it."""
    import base64

    parts = []
    title = ""
    for kind, body in _blocks(p, figures):
        if kind == "h1":
            title = body
            parts.append(f"<h1>{html.escape(body)}</h1>")
        elif kind == "h2":
            parts.append(f"<h2>{html.escape(body)}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(body)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in body) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(body))
        elif kind == "img":
            data = base64.b64encode(body.png).decode()
            parts.append(f'<img alt="{html.escape(body.title)}" src="data:image/png;base64,{data}">')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
