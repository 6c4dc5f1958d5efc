"""Capacity plans for people: ranked tables, the summary line, and stand-alone
Markdown and HTML reports with their figures (of :class:`fidoperf.whatif.plan.Plan`)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..whatif.plan import Plan

# --------------------------------------------------------------------------- tables for people


def _num(v, fmt):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def best_table(p: Plan) -> pd.DataFrame:
    """The ranked plans formatted for people (queries/s, ms, GB, %, J, USD)."""
    pct = f"p{p.percentile:g}"
    rows = []
    for _, r in p.best.iterrows():
        ok = bool(r["feasible"])
        rows.append(
            {
                "rank": int(r["rank"]),
                "model": r["model"],
                "hardware": r["hardware"],
                "layout": r["layout"] if ok else "-",
                "units": int(r["units"]) if ok else "-",
                "queries/s/unit": _num(r["rate_per_unit_qps"], ".4g") if ok else "-",
                "queries/s/chip": _num(r["throughput_per_chip_qps"], ".4g") if ok else "-",
                "chips": int(r["chips"]) if ok else "-",
                f"{pct} ms": _num(r["latency_s"] * 1e3, ".4g") if ok else "-",
                "p50 ms": _num(r["latency_p50_s"] * 1e3, ".4g") if ok else "-",
                "mean batch": int(r["batch"]) if ok else "-",
                "utilisation": f"{100 * r['utilisation']:.0f}%" if ok else "-",
                "memory per chip": (
                    f"{r['peak_bytes'] / 1e9:.1f} GB ({100 * r['memory_fraction']:.0f}%)" if ok else "-"
                ),
                "layouts (pruned/evaluated/not evaluated)": f"{int(r['layouts_considered'])} "
                f"({int(r['layouts_pruned'])}/{int(r['layouts_evaluated'])}/{int(r['layouts_not_evaluated'])})",
                "J/query": _num(r["energy_per_query_j"], ".3g") if ok else "-",
                "USD/1M queries": _num(r["cost_per_million_usd"], ",.2f") if ok else "-",
                "note": "" if ok else r["reason"],
            }
        )
    out = pd.DataFrame(rows)
    return out.drop(columns="note") if (out["note"] == "").all() else out


def candidates_table(p: Plan) -> pd.DataFrame:
    """Every rate the searches tried."""
    c = p.candidates
    pct = f"p{p.percentile:g}"
    return pd.DataFrame(
        {
            "model": c["model"],
            "hardware": c["hardware"],
            "layout": c["layout"],
            "queries/s/unit": [_num(v, ".4g") for v in c["rate_qps"]],
            f"{pct} ms": [_num(None if v is None else v * 1e3, ".4g") for v in c["latency_s"]],
            "p50 ms": [_num(None if v is None else v * 1e3, ".4g") for v in c["latency_p50_s"]],
            "mean batch": [_num(v, ".3g") for v in c["mean_decode_batch"]],
            "utilisation": [f"{100 * v:.0f}%" for v in c["utilisation"]],
            "chips": [("-" if pd.isna(v) else str(int(v))) for v in c["chips"]],
            "USD/1M queries": [_num(v, ",.2f") for v in c["cost_per_million_usd"]],
            "meets target": ["yes" if v else "no" for v in c["feasible"]],
            "sustainable": ["yes" if v else "no" for v in c["sustainable"]],
        }
    )


def summary_line(p: Plan) -> str:
    r = p.best.iloc[0]
    cost = r["cost_per_million_usd"]
    cost_text = (
        f", {cost:,.2f} USD per million queries" if not math.isnan(cost) else " (no price: ranked by chips)"
    )
    units = int(r["units"])
    unit = f"{units} unit{'s' if units > 1 else ''} of {r['layout']}"
    return (
        f"best: {int(r['chips'])} x {r['hardware']} running {r['model']} as {unit}: each unit sustains "
        f"{r['rate_per_unit_qps']:.4g} queries/s ({r['throughput_per_chip_qps']:.4g} per chip) with "
        f"p{p.percentile:g} latency {r['latency_s'] * 1e3:.4g} ms (p50 {r['latency_p50_s'] * 1e3:.4g} ms)" + cost_text
    )


def layouts_line(p: Plan) -> str:
    """How the layout search went, all pairs together."""
    c = p.layouts["status"].value_counts()
    return (f"layouts: {len(p.layouts)} considered, {int(c.get('pruned', 0))} pruned, "
            f"{int(c.get('evaluated', 0))} evaluated, {int(c.get('not evaluated', 0))} not evaluated "
            f"(time budget {p.serving.time_budget_s:g} s, {p.elapsed_s:.3g} s used)")


def layouts_table(p: Plan) -> pd.DataFrame:
    """Every layout considered, with what became of it."""
    t = p.layouts
    return pd.DataFrame(
        {
            "model": t["model"],
            "hardware": t["hardware"],
            "layout": t["layout"] + [" (chosen)" if c else "" for c in t["chosen"]],
            "ships": [("-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("_", " "))
                      for v in t["shipped"]],
            "status": t["status"],
            "alone ms": [_num(v * 1e3, ".4g") for v in t["lone_latency_s"]],
            "GB/chip": [_num(v / 1e9, ".3g") for v in t["peak_bytes_per_chip"]],
            "chip-s/query": [_num(v, ".3g") for v in t["chip_seconds_per_query"]],
            "capacity q/s/unit": [_num(v, ".4g") for v in t["capacity_per_unit_qps"]],
            "queries/s/unit": [_num(v, ".4g") for v in t["rate_per_unit_qps"]],
            "chips": [("-" if pd.isna(v) else str(int(v))) for v in t["chips"]],
            "reason": t["reason"],
        }
    )


def inputs_lines(p: Plan) -> list[str]:
    wl = p.workload
    lines = [
        f"Load: {p.qps:g} queries/s; target: p{p.percentile:g} latency within {p.latency_s * 1e3:g} ms per query.",
        f"Serving assumed: {p.serving.describe()}.",
        f"Workload: {wl.passages} passages x {wl.passage_len} tokens, {wl.target_len} generated tokens, "
        f"weights {wl.weight_dtype}, activations {wl.act_dtype}, KV cache {wl.kv_dtype}, matmuls at "
        f"{wl.compute_dtype} peak; overlap model {p.settings.overlap}"
        + ("" if p.settings.efficiency else ", efficiency factors ignored")
        + ".",
        f"Models: {', '.join(m.name for m in p.models) or ', '.join(dict.fromkeys(p.best['model']))}.",
        f"Layouts searched: {p.serving.describe_layouts()}; {layouts_line(p)}.",
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
    from .. import __version__
    top = p.best.iloc[0]
    blocks: list[tuple[str, Any]] = [
        ("h1", f"Capacity plan: {p.qps:g} queries/s, p{p.percentile:g} within {p.latency_s * 1e3:g} ms"),
        ("p", f"Written by fidoperf {__version__} from serving simulations fed by fidoperf's predictions, not "
              f"measurements. Assumed: {p.serving.describe()}. Layouts searched: {p.serving.describe_layouts()}."),
        ("h2", "Recommendation"),
        ("p", summary_line(p) + "."),
        ("h2", "Plans, one per model and chip, best first"),
        ("table", best_table(p)),
    ]
    if p.notes:
        blocks.append(("ul", p.notes))
    blocks += [("h2", "Inputs"), ("ul", inputs_lines(p)), ("h2", "Assumptions"), ("ul", p.assumptions)]
    blocks += [
        ("h2", "Layouts considered"),
        ("p", f"Every layout of every model and chip, one unit each (a replica of T chips, or one set of encoder "
              f"and decoder pools), with what became of it: {layouts_line(p)}. 'alone ms' is the latency of a "
              "request served alone (the pruning test), 'chip-s/query' the predicted chip-seconds per query at "
              "the largest batch (divided by the headroom 1 - alone / target, the order of evaluation), "
              "'capacity' what a unit serves with its queue never empty."),
        ("table", layouts_table(p)),
    ]
    for f in figures:
        blocks += [("h2", f.title), ("img", f), ("p", f.caption)]
    blocks += [
        ("h2", "Every rate tried"),
        (
            "p",
            f"Arrival rates per unit of the chosen layout of each model and chip simulated by its search "
            f"({p.serving.requests} requests each), with the chips and cost each would need for {p.qps:g} "
            f"queries/s; the chosen plan of {top['model']} on {top['hardware']} is rank 1 above.",
        ),
        ("table", candidates_table(p)),
    ]
    return blocks


def report_markdown(p: Plan, figures: Sequence[Figure] = ()) -> str:
    """A Markdown report that stands alone: tables, assumptions and figures embedded
    as base64 PNG data URIs (GitHub's viewer does not show data URIs; the HTML
    report is the one to open in a browser)."""
    import base64

    from ..present.fmt import text_table

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
