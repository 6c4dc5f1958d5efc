"""Plots of serving simulations (:mod:`fidoperf.whatif.simulate`): latency against
offered load, and the queue over time.

Each function draws on a matplotlib ``Axes`` (a new one from
:func:`fidoperf.present.plots.new_axes` when ``ax`` is None) and returns it; only
callers save. Artists carry a ``gid``: ``p50|<label>``, ``p99|<label>`` (or
``p<percentile>|<label>``), ``target``, ``capacity|<label>``, ``waiting``, ``in_system``.
Units: queries/s, ms, s, requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .plots import VARIANT_COLORS, _log_ticks_125, new_axes

MAX_STEPS_DRAWN = 2000  # longer queue series are drawn as per-bin averages and maxima
QUEUE_BINS = 400


def latency_vs_load(ax, curves: Mapping[str, pd.DataFrame], *, percentiles: Sequence[float] = (50, 99),
                    target_s: float | None = None, capacity_qps: Mapping[str, float] | None = None,
                    log_x: bool = False, title: str | None = None):
    """Latency percentiles (ms, log scale) against offered load (queries/s), one colour
    per curve (``label -> frame`` from :func:`fidoperf.whatif.simulate.load_curve`),
    one line style per percentile; loads that are not sustainable are left out. A
    horizontal line marks the target, vertical dotted lines each curve's capacity.
    ``log_x``: load on a log axis (for rates spanning decades, as a rate search tries)."""
    ax = ax if ax is not None else new_axes((8.0, 5.0))
    styles = ["--", "-", ":", "-."]
    for j, (label, df) in enumerate(curves.items()):
        color = VARIANT_COLORS[j % len(VARIANT_COLORS)]
        ok = df[df["sustainable"].astype(bool)]
        for k, p in enumerate(percentiles):
            col = f"latency_p{p:g}_s"
            if col not in ok:
                continue
            ax.plot(ok["offered_qps"], ok[col] * 1e3, color=color, ls=styles[k % len(styles)], marker="o", ms=3,
                    lw=1.4, label=f"{label}, p{p:g}", gid=f"p{p:g}|{label}")
        if capacity_qps and label in capacity_qps:
            ax.axvline(capacity_qps[label], color=color, ls=":", lw=1.0, gid=f"capacity|{label}")
    if target_s is not None:
        ax.axhline(target_s * 1e3, color="0.3", lw=1.0, ls="-.", gid="target", label=f"target {target_s * 1e3:g} ms")
    ax.set_yscale("log")
    _log_ticks_125(ax.yaxis)
    if log_x:
        ax.set_xscale("log")
        _log_ticks_125(ax.xaxis)
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel("offered load (queries/s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="major", color="0.9", lw=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def queue_binned(queue: pd.DataFrame, bins: int = QUEUE_BINS) -> pd.DataFrame:
    """The step functions of ``queue`` (time_s, waiting, in_system) over ``bins`` equal
    time bins: the time average of each (exact integrals of the steps) and the most
    waiting at any moment of the bin. Columns: start_s, end_s, waiting_mean,
    in_system_mean, waiting_max."""
    t = queue["time_s"].to_numpy(dtype=float)
    edges = np.linspace(t[0], t[-1], bins + 1)
    out = {"start_s": edges[:-1], "end_s": edges[1:]}
    for col in ("waiting", "in_system"):
        v = queue[col].to_numpy(dtype=float)
        area = np.concatenate([[0.0], np.cumsum(v[:-1] * np.diff(t))])  # integral up to each change point
        at_edges = np.interp(edges, t, area)
        out[f"{col}_mean"] = np.diff(at_edges) / np.diff(edges)
    w = queue["waiting"].to_numpy()
    first = np.maximum(np.searchsorted(t, edges[:-1], side="right") - 1, 0)  # value carried into each bin
    last = np.searchsorted(t, edges[1:], side="right")
    out["waiting_max"] = np.array([w[a:b].max() if b > a else w[a] for a, b in zip(first, last)])
    return pd.DataFrame(out)


def queue_over_time(ax, queue: pd.DataFrame, *, in_system: bool = True, title: str | None = None):
    """Requests waiting (not yet on a chip) and, optionally, in the system (waiting or
    being served) against simulated time (s). Up to :data:`MAX_STEPS_DRAWN` changes
    are drawn as step functions; longer runs as time averages per bin (with the most
    waiting in each bin as a light band), so that the plot stays readable."""
    ax = ax if ax is not None else new_axes((8.0, 4.0))
    c_wait, c_sys = VARIANT_COLORS[1], VARIANT_COLORS[0]
    if len(queue) <= MAX_STEPS_DRAWN:
        t = queue["time_s"].to_numpy()
        if in_system:
            ax.step(t, queue["in_system"].to_numpy(), where="post", color=c_sys, lw=1.0,
                    label="in system (waiting or served)", gid="in_system", zorder=2)
        ax.step(t, queue["waiting"].to_numpy(), where="post", color=c_wait, lw=1.0, label="waiting", gid="waiting",
                zorder=3)
        top = float(queue["in_system" if in_system else "waiting"].max())
        lo, hi = float(t.min()), float(t.max())
    else:
        b = queue_binned(queue)
        mid = 0.5 * (b["start_s"] + b["end_s"])
        ax.fill_between(mid, 0, b["waiting_max"], color=c_wait, alpha=0.18, lw=0, step="mid",
                        label="waiting, most in the bin", gid="waiting_max")
        if in_system:
            ax.plot(mid, b["in_system_mean"], color=c_sys, lw=1.0, label="in system (waiting or served), mean",
                    gid="in_system", zorder=2)
        ax.plot(mid, b["waiting_mean"], color=c_wait, lw=1.0, label="waiting, mean", gid="waiting", zorder=3)
        top = float(max(b["waiting_max"].max(), b["in_system_mean"].max() if in_system else 0.0))
        lo, hi = float(b["start_s"].iloc[0]), float(b["end_s"].iloc[-1])
        ax.text(0.99, 0.97, f"{len(b)} bins of {(hi - lo) / len(b):.3g} s", transform=ax.transAxes, ha="right",
                va="top", fontsize=7.5, color="0.35")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests")
    ax.set_xlim(lo, hi if hi > lo else lo + 1.0)
    ax.set_ylim(bottom=0, top=max(1.0, top * 1.08))
    ax.grid(True, color="0.9", lw=0.6)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def new_figure_axes(n: int = 2, figsize=(9.0, 8.0)):
    """``n`` stacked Axes on one Figure with an Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return list(np.atleast_1d(fig.subplots(n, 1)))


def plan_search_figures(p) -> list[tuple[str, str, object]]:
    """(title, caption, Axes) for a capacity plan (:class:`fidoperf.whatif.plan.Plan`):
    the target percentile and the median latency against the rate per unit of the chosen
    layout, at every rate the searches tried, one colour per (model, chip)."""
    if p.candidates.empty:
        return []
    pct = p.percentile
    curves, caps = {}, {}
    for (m, h), df in p.candidates.groupby(["model", "hardware"], sort=False):
        label = f"{m} on {h}" + (f" ({df['layout'].iloc[0]})" if "layout" in df else "")
        curves[label] = pd.DataFrame({
            "offered_qps": df["rate_qps"].astype(float),
            f"latency_p{pct:g}_s": df["latency_s"].astype(float),
            "latency_p50_s": df["latency_p50_s"].astype(float),
            "sustainable": df["sustainable"].astype(bool),
        }).sort_values("offered_qps")
        search = p.searches.get((m, h))
        if search is not None:
            caps[label] = search.capacity_qps
    ax = latency_vs_load(None, curves, percentiles=(50, pct), target_s=p.latency_s, capacity_qps=caps, log_x=True,
                         title=f"Latency against the rate per unit of the chosen layout ({p.serving.policy} batching, "
                               f"{p.serving.arrivals} arrivals)")
    ax.set_xlabel("arrival rate per unit of the layout (queries/s)")
    return [(
        "Latency against load",
        f"p50 (dashed) and p{pct:g} (solid) latency at every rate per unit of the chosen layout (a replica, or "
        f"a set of pools) the searches simulated ({p.serving.requests} requests each); horizontal line: the "
        "target; dotted lines: each unit's capacity with its queue never empty. The plan's rate per unit is the "
        "highest at which the solid line stays under the target.",
        ax,
    )]
