"""Plots of predictions: roofline, time breakdown, decoder step time against batch,
answer quality against cost.

Each plot comes as two functions: a pure one that computes the plotted numbers as a
DataFrame from predictions (tests compare these with ``predict(...).ops``), and one
that draws them on a matplotlib ``Axes`` (a new one on an Agg canvas when ``ax`` is
None) and returns it. Only callers save; save with ``bbox_inches="tight"`` so that
legends placed outside the axes are kept.

Units on the axes: operational intensity in FLOP/byte, performance in FLOP/s, times
in ms. Plotted artists carry a ``gid`` (``points|<variant>|<hardware>|<phase>``,
``roof-compute|<hardware>``, ``roof-memory|<hardware>``, ``ridge|<hardware>``,
``bar|<component>``, ``step|<model>|<passages>``, ``quality|<dataset>``) so that tests
and callers can find them.

Labels are placed by a small greedy search in display space: each label tries
positions around its point, nearest first, and takes the first that overlaps no
placed label, no point and does not leave the axes (a leader line joins a label
moved away from its point). Positions are computed for the axes' size when the
function runs: resize the figure afterwards and they may drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..costmodel.prediction import Prediction, Settings, predict
from ..errors import SpecError
from ..specs import Hardware, ModelSpec, Workload
from .report import summed_over_layers

DEFAULT_SETTINGS = Settings()
DEFAULT_WORKLOAD = Workload()

PHASES = ("encoder", "cross_kv", "decoder")
PHASE_LABEL = {"encoder": "encoder", "cross_kv": "cross-attn K/V projection", "decoder": "decoder (per step)"}
PHASE_MARKER = {"encoder": "o", "cross_kv": "s", "decoder": "^"}
VARIANT_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

# Short operator names for labels; the marker says the phase.
SHORT_OP = {
    "attn_qkv": "QKV proj",
    "attn_logits": "QKᵀ",
    "attn_softmax": "softmax",
    "attn_values": "AV",
    "attn_out": "out proj",
    "mlp_in": "MLP in",
    "mlp_act": "GELU",
    "mlp_out": "MLP out",
    "cross_kv_proj": "cross K/V proj",
    "self_attn_qkv": "self QKV",
    "self_attn_logits": "self QKᵀ",
    "self_attn_softmax": "softmax",
    "self_attn_values": "self AV",
    "self_attn_out": "self out",
    "cross_attn_q": "cross Q",
    "cross_attn_logits": "cross QKᵀ",
    "cross_attn_softmax": "softmax",
    "cross_attn_values": "cross AV",
    "cross_attn_out": "cross out",
    "logits": "LM head",
    "argmax": "argmax",
}

# Breakdown components, bottom of the stack first: (column, legend label, colour).
BREAKDOWN = [
    ("encoder_s", "encoder", "#4c72b0"),
    ("cross_kv_s", "cross-attn K/V projection", "#8da0cb"),
    ("self_attn_s", "decoder self-attention", "#dd8452"),
    ("cross_attn_s", "decoder cross-attention", "#c44e52"),
    ("mlp_s", "decoder MLP", "#55a868"),
    ("other_s", "decoder other (norms, residuals, embedding, logits)", "#b3b3b3"),
    ("comm_s", "communication (collectives, shipping between pools)", "#8172b2"),
]


def short_op(op: str) -> str:
    if op.endswith("norm"):
        return "norm"
    if op.endswith("residual"):
        return "residual"
    return SHORT_OP.get(op, op)


def workload_text(wl: Workload) -> str:
    return (
        f"{wl.passages} passages × {wl.passage_len} tokens, {wl.target_len} target tokens, "
        f"batch {wl.batch}, {wl.weight_dtype}"
    )


# --------------------------------------------------------------------------- axes helpers


def new_axes(figsize=(8.0, 5.5)):
    """A fresh Axes on a Figure with an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def _renderer(fig):
    get = getattr(fig.canvas, "get_renderer", None)
    if get is not None:
        return get()
    from matplotlib.backends.backend_agg import RendererAgg

    w, h = fig.bbox.size
    return RendererAgg(int(w), int(h), fig.dpi)


def _ms_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:g}")


def _log_ticks_125(axis) -> None:
    """Major ticks at 1, 2 and 5 times powers of ten, written as plain numbers."""
    from matplotlib.ticker import LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(_ms_formatter())
    axis.set_minor_formatter(NullFormatter())


@dataclass
class _Label:
    text: str
    x: float  # anchor, display pixels
    y: float
    color: str = "0.15"
    fontsize: float = 7.5
    xy: tuple | None = None  # anchor in data coordinates (None: use x, y via ax.transData)
    xycoords: Any = "data"


def _overlap(a, b) -> float:
    dx = min(a[2], b[2]) - max(a[0], b[0])
    dy = min(a[3], b[3]) - max(a[1], b[1])
    return dx * dy if dx > 0 and dy > 0 else 0.0


def place_labels(ax, labels: list[_Label], obstacles: list[tuple] = (), fixed: list = ()) -> list:
    """Greedy label placement (see module docstring). ``obstacles`` and ``fixed`` are
    display-space boxes (x0, y0, x1, y1) to keep clear; returns the annotations."""
    fig = ax.figure
    renderer = _renderer(fig)
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    placed = [tuple(b) for b in fixed]
    obstacles = [tuple(b) for b in obstacles]
    out = []
    radii = (5, 11, 19, 30, 44, 62, 85)
    angles = (30, -30, 150, -150, 90, -90, 0, 180, 60, -60, 120, -120)
    for lab in labels:
        probe = ax.text(0, 0, lab.text, fontsize=lab.fontsize, transform=None)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 2, ext.height + 2
        best, best_cost = None, math.inf
        for r in radii:
            for a in angles:
                dx, dy = r * math.cos(math.radians(a)), r * math.sin(math.radians(a))
                x0 = lab.x + dx - (0 if dx > 1e-6 else w if dx < -1e-6 else w / 2)
                y0 = lab.y + dy - (0 if dy > 1e-6 else h if dy < -1e-6 else h / 2)
                box = (x0, y0, x0 + w, y0 + h)
                inside = (
                    box[0] >= frame.x0 + 2
                    and box[2] <= frame.x1 - 2
                    and box[1] >= frame.y0 + 2
                    and box[3] <= frame.y1 - 2
                )
                padded = (box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2)  # keep a gap between labels
                cost = sum(_overlap(padded, p) for p in placed) * 10 + sum(
                    _overlap(box, o) for o in obstacles
                )
                cost += 0 if inside else 1e6
                cost += r * 1e-3  # nearer is better among free spots
                if cost < best_cost:
                    best, best_cost = (box, dx, dy), cost
                if cost < 1:
                    break
            if best_cost < 1:
                break
        box, dx, dy = best
        placed.append(box)
        ha = "left" if dx > 1e-6 else "right" if dx < -1e-6 else "center"
        va = "bottom" if dy > 1e-6 else "top" if dy < -1e-6 else "center"
        far = math.hypot(dx, dy) > 12
        ann = ax.annotate(
            lab.text,
            xy=lab.xy,
            xycoords=lab.xycoords,
            xytext=(dx / px_per_pt, dy / px_per_pt),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=lab.fontsize,
            color=lab.color,
            arrowprops=dict(arrowstyle="-", lw=0.5, color="0.55", shrinkA=0, shrinkB=3) if far else None,
            annotation_clip=False,
        )
        ann.set_gid("label")
        out.append(ann)
    return out


def _point_boxes(ax, xy, sizes_pt2) -> list[tuple]:
    disp = ax.transData.transform(np.asarray(xy, dtype=float))
    px_per_pt = ax.figure.dpi / 72.0
    boxes = []
    for (x, y), s in zip(disp, sizes_pt2, strict=True):
        r = math.sqrt(s) / 2 * px_per_pt + 1
        boxes.append((x - r, y - r, x + r, y + r))
    return boxes


# --------------------------------------------------------------------------- roofline


def roofline_points(prediction: Prediction, variant: str | None = None) -> pd.DataFrame:
    """One row per phase and operator (layers summed; decoder rows also summed over
    the decoding steps): intensity = flops / bytes and achieved FLOP/s = flops /
    time_s, as the calculator gives them. Ops with no FLOPs (embedding gathers) are
    left out: they have no place on log axes."""
    ops = summed_over_layers(prediction.ops)
    ops = ops[(ops["flops"] > 0) & (ops["time_s"] > 0)].copy()
    out = pd.DataFrame(
        {
            "variant": variant or prediction.model.name,
            "model": prediction.model.name,
            "hardware": prediction.hardware.name,
            "compute_dtype": prediction.workload.compute_dtype,
            "phase": ops["phase"].to_numpy(),
            "op": ops["op"].to_numpy(),
            "kind": ops["kind"].to_numpy(),
            "layers": ops["layers"].to_numpy(),
            "flops": ops["flops"].to_numpy(),
            "bytes": ops["bytes"].to_numpy(),
            "time_s": ops["time_s"].to_numpy(),
            "bound": ops["bound"].to_numpy(),
        }
    )
    out["intensity"] = out["flops"] / out["bytes"]
    out["achieved_flops_per_s"] = out["flops"] / out["time_s"]
    out["time_share"] = out["time_s"] / float(prediction.ops["time_s"].sum())
    out["label"] = out["op"].map(short_op)
    return out


def roofline_points_many(
    predictions: Sequence[Prediction], variants: Sequence[str] | None = None
) -> pd.DataFrame:
    variants = variants or [None] * len(predictions)
    return pd.concat(
        [roofline_points(p, v) for p, v in zip(predictions, variants, strict=True)], ignore_index=True
    )


def _marker_sizes(share: np.ndarray) -> np.ndarray:
    """Marker area (pt^2) grows with the op's share of the batch time."""
    return np.clip(12 + 300 * np.sqrt(np.asarray(share, dtype=float)), 12, 200)


def roofline(
    ax,
    hardware_list: Sequence[Hardware],
    points,
    *,
    dtype: str | None = None,
    arrows: bool = True,
    labels: bool = True,
    title: str | None = None,
):
    """Log-log roofline: each chip's compute roof (peak FLOP/s of ``dtype``), bandwidth
    roof (HBM bytes/s x intensity) and ridge point; every op of ``points`` (a frame
    from :func:`roofline_points_many`, or a list of predictions) at (intensity,
    achieved FLOP/s). Colour: variant; marker: phase; area: share of the batch time.
    Arrows join an op of the first variant to the same op of each later variant when
    it moved (MQA moves cross-attention right)."""
    from matplotlib.lines import Line2D

    if not isinstance(points, pd.DataFrame):
        points = roofline_points_many(list(points))
    if points.empty:
        raise SpecError("roofline", "points", "nothing to plot")
    ax = ax if ax is not None else new_axes((9.0, 6.0))
    dtype = dtype or str(points["compute_dtype"].iloc[0])
    hardware_list = list(hardware_list) or []
    variants = list(dict.fromkeys(points["variant"]))
    color = {v: VARIANT_COLORS[i % len(VARIANT_COLORS)] for i, v in enumerate(variants)}
    hw_order = [h.name for h in hardware_list] + [
        n for n in dict.fromkeys(points["hardware"]) if n not in {h.name for h in hardware_list}
    ]

    ax.set_xscale("log")
    ax.set_yscale("log")
    ridges = [h.ridge_point(dtype) for h in hardware_list]
    peaks = [h.peak(dtype) for h in hardware_list]
    x_lo = min([points["intensity"].min()] + [r / 1e3 for r in ridges]) / 3
    x_hi = max([points["intensity"].max()] + ridges) * 15
    y_lo = min([points["achieved_flops_per_s"].min()]) / 4
    y_hi = max([points["achieved_flops_per_s"].max()] + peaks) * 4
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)

    styles = ["-", "--", "-.", ":"]
    hw_handles = []
    for i, h in enumerate(hardware_list):
        peak, bw, ridge = h.peak(dtype), h.hbm_bytes_per_s, h.ridge_point(dtype)
        ls = styles[i % len(styles)]
        xs = np.geomspace(x_lo, ridge, 50)
        ax.plot(xs, bw * xs, color="0.2", lw=1.3, ls=ls, gid=f"roof-memory|{h.name}", zorder=1)
        ax.plot(
            [ridge, x_hi], [peak, peak], color="0.2", lw=1.3, ls=ls, gid=f"roof-compute|{h.name}", zorder=1
        )
        ax.plot([ridge], [peak], marker="D", ms=5, color="0.2", ls="none", gid=f"ridge|{h.name}", zorder=4)
        hw_handles.append(
            Line2D(
                [],
                [],
                color="0.2",
                lw=1.3,
                ls=ls,
                label=f"{h.name}: {peak / 1e12:.0f} TFLOP/s {dtype}, "
                f"{h.hbm_bytes_per_s / 1e12:.2g} TB/s, ridge {ridge:.0f} FLOP/B",
            )
        )

    # Points: one collection per variant, hardware and phase; the first variant on top,
    # so that ops a later variant leaves unchanged show in the first one's colour.
    for vi, v in enumerate(variants):
        for hi, hw_name in enumerate(hw_order):
            for phase in PHASES:
                sel = points[
                    (points["variant"] == v) & (points["hardware"] == hw_name) & (points["phase"] == phase)
                ]
                if sel.empty:
                    continue
                hollow = hi > 0
                ax.scatter(
                    sel["intensity"],
                    sel["achieved_flops_per_s"],
                    s=_marker_sizes(sel["time_share"]),
                    marker=PHASE_MARKER[phase],
                    facecolors="none" if hollow else color[v],
                    edgecolors=color[v],
                    linewidths=0.9 if hollow else 0.5,
                    alpha=0.9,
                    zorder=3 + 0.1 * (len(variants) - vi),
                    gid=f"points|{v}|{hw_name}|{phase}",
                )

    ax.set_xlabel("operational intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s): roofs attainable, points achieved")
    ax.grid(True, which="major", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    first_wl = title
    ax.set_title(first_wl if first_wl is not None else "Roofline, layers summed", fontsize=10)

    # Arrows from the first variant's op to the same op of each later variant.
    main_hw = hw_order[0]
    ref = points[(points["variant"] == variants[0]) & (points["hardware"] == main_hw)].set_index(
        ["phase", "op"]
    )
    moved = set()
    if len(variants) > 1:
        for v in variants[1:]:
            other = points[(points["variant"] == v) & (points["hardware"] == main_hw)].set_index(
                ["phase", "op"]
            )
            for key in ref.index.intersection(other.index):
                x0, y0 = ref.loc[key, ["intensity", "achieved_flops_per_s"]]
                x1, y1 = other.loc[key, ["intensity", "achieved_flops_per_s"]]
                if abs(math.log10(x1 / x0)) > 0.1 or abs(math.log10(y1 / y0)) > 0.1:
                    moved.add((v,) + key)
                    if not arrows:
                        continue
                    ax.annotate(
                        "",
                        xy=(x1, y1),
                        xytext=(x0, y0),
                        gid=f"arrow|{v}|{key[0]}|{key[1]}",
                        arrowprops=dict(
                            arrowstyle="-|>",
                            color=color[v],
                            lw=0.9,
                            alpha=0.7,
                            shrinkA=4,
                            shrinkB=4,
                            mutation_scale=9,
                        ),
                        zorder=2,
                    )

    # Legend outside the axes, on the right: variants, phases, marker area, chips.
    still = {v for v in variants[1:] if not any(m[0] == v for m in moved)}
    handles = [Line2D([], [], ls="none", label="model (colour)")]
    handles += [
        Line2D(
            [],
            [],
            ls="none",
            marker="o",
            color=color[v],
            label=v + (" (no op moves: hidden\nunder the first model's points)" if v in still else ""),
        )
        for v in variants
    ]
    handles += [Line2D([], [], ls="none", label="phase (marker)")]
    handles += [
        Line2D([], [], ls="none", marker=PHASE_MARKER[p], color="0.4", label=PHASE_LABEL[p])
        for p in PHASES
        if (points["phase"] == p).any()
    ]
    handles += [Line2D([], [], ls="none", label="marker area ∝ √(share of time)")]
    if points["hardware"].nunique() > 1:
        handles += [
            Line2D([], [], ls="none", marker="o", color="0.4", label=f"filled: on {hw_order[0]}"),
            Line2D([], [], ls="none", marker="o", mfc="none", color="0.4", label="hollow: other chips"),
        ]
    handles += [Line2D([], [], ls="none", label="chip (roof line)")] + hw_handles
    leg = ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        handletextpad=0.4,
        borderaxespad=0.0,
    )
    headers = {"model (colour)", "phase (marker)", "chip (roof line)", "marker area ∝ √(share of time)"}
    for t in leg.get_texts():
        if t.get_text() in headers:
            t.set_fontweight("bold" if "∝" not in t.get_text() else "normal")
            t.set_color("0.1" if "∝" not in t.get_text() else "0.35")
            t.set_position((-20, 0))

    if labels:
        _label_roofline(ax, hardware_list, points, variants, color, main_hw, moved, dtype)
    return ax


def _label_roofline(ax, hardware_list, points, variants, color, main_hw, moved, dtype):
    """Roof and ridge labels, then op labels: every op of the first variant, and ops
    of later variants that moved; ops that coincide share one label."""
    renderer = _renderer(ax.figure)
    main = points[points["hardware"] == main_hw]
    xy = main[["intensity", "achieved_flops_per_s"]].to_numpy()
    obstacles = _point_boxes(ax, xy, _marker_sizes(main["time_share"]))
    for line in ax.get_lines():
        if str(line.get_gid()).startswith("roof-"):
            obstacles += _line_boxes(ax, line)
    fixed: list[tuple] = []
    px_per_pt = ax.figure.dpi / 72.0
    for h in hardware_list:
        peak, bw, ridge = h.peak(dtype), h.hbm_bytes_per_s, h.ridge_point(dtype)
        x_hi = ax.get_xlim()[1]
        t = ax.annotate(
            f"{h.name} {peak / 1e12:.0f} TFLOP/s",
            xy=(x_hi, peak),
            xytext=(-3, 8),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.2",
        )
        fixed.append(_nudge_clear(t, renderer, fixed + obstacles, px_per_pt))
        fixed += _slope_label(ax, renderer, h, bw, ridge, fixed + obstacles)
    ridge_labels = []
    for h in hardware_list:
        peak, ridge = h.peak(dtype), h.ridge_point(dtype)
        px, py = ax.transData.transform((ridge, peak))
        ridge_labels.append(_Label(f"ridge {ridge:.0f} FLOP/B", px, py, color="0.2", xy=(ridge, peak)))

    # Candidate labels: every op of the first variant, moved ops of the others.
    cands = []
    for _, r in main.iterrows():
        first = r["variant"] == variants[0]
        if not first and (r["variant"], r["phase"], r["op"]) not in moved:
            continue
        px, py = ax.transData.transform((r["intensity"], r["achieved_flops_per_s"]))
        cands.append(
            (
                r["variant"],
                r["phase"],
                r["kind"],
                r["label"],
                px,
                py,
                (r["intensity"], r["achieved_flops_per_s"]),
            )
        )
    # Merge labels that sit within a few pixels of each other.
    groups: list[dict] = []
    for v, phase, kind, text, px, py, xy_data in cands:
        cls = "vector" if kind in ("vector", "softmax") else "compute"
        for g in groups:
            if g["cls"] == cls and abs(g["px"] - px) < 6 and abs(g["py"] - py) < 6:
                if all(t != text for t, _, _ in g["items"]):
                    g["items"].append((text, phase, kind))
                break
        else:
            groups.append(
                {"variant": v, "cls": cls, "items": [(text, phase, kind)], "px": px, "py": py, "xy": xy_data}
            )
    labs = []
    for g in sorted(groups, key=lambda g: (g["variant"] != variants[0], g["px"])):
        labs.append(
            _Label(_group_text(g["items"]), g["px"], g["py"], color=_darker(color[g["variant"]]), xy=g["xy"])
        )
    place_labels(ax, ridge_labels + labs, obstacles=obstacles, fixed=fixed)


def _line_boxes(ax, line, step_px: float = 6.0, half: float = 1.5) -> list[tuple]:
    """Small boxes along a line (display space), so that labels do not sit on it."""
    pts = ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
    boxes = []
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step_px))
        for t in np.linspace(0, 1, n + 1):
            x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            boxes.append((x - half, y - half, x + half, y + half))
    return boxes


def _group_text(items: list[tuple[str, str, str]]) -> str:
    """One short label for ops (text, phase, kind) that share a point: "self QKᵀ" and
    "self AV" become "self QKᵀ/AV"; more than two weight matmuls of a phase become
    "N <phase> weight matmuls"; beyond three parts, a count."""
    matmuls: dict[str, list[str]] = {}
    texts: list[str] = []
    for text, phase, kind in items:
        if kind == "matmul":
            matmuls.setdefault(phase, []).append(text)
        texts.append(text)
    for phase, names in matmuls.items():
        if len(names) > 2:
            at = texts.index(names[0])
            texts = [t for t in texts if t not in names]
            texts.insert(min(at, len(texts)), f"{len(names)} {phase} weight matmuls")
    for prefix in ("self ", "cross ", ""):
        q, v = f"{prefix}QKᵀ", f"{prefix}AV"
        if q in texts and v in texts:
            texts[texts.index(q)] = f"{prefix}QKᵀ/AV"
            texts.remove(v)
    if len(texts) <= 3:
        return ", ".join(texts)
    return ", ".join(texts[:2]) + f" +{len(texts) - 2}"


def _slope_label(ax, renderer, h, bw, ridge, avoid) -> list[tuple]:
    """The bandwidth roof's label, rotated along its line, on the side and at the
    place where it covers the fewest points, lines and labels. The rotated text is
    tested as a grid of sample points; returns small boxes around them, for later
    labels to avoid."""
    text = f"{h.name} {bw / 1e12:.3g} TB/s"
    probe = ax.text(0, 0, text, fontsize=7.5, transform=None)
    ext = probe.get_window_extent(renderer)
    probe.remove()
    w, hgt, gap = ext.width, ext.height, 3.0
    frame = ax.get_window_extent(renderer)
    boxes = np.asarray(avoid, dtype=float).reshape(-1, 4)
    grid_a, grid_b = np.meshgrid(np.linspace(0, w, 16), np.linspace(0, hgt, 3))
    best = None
    for side in (-1.0, 1.0):  # below (right of) the line first, then above
        for x in np.geomspace(ax.get_xlim()[0] * 1.5, ridge / 3, 30):
            p0 = ax.transData.transform((x, bw * x))
            p1 = ax.transData.transform((x * 10, bw * x * 10))
            ang = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
            u = np.array([math.cos(ang), math.sin(ang)])
            n = np.array([-math.sin(ang), math.cos(ang)]) * side
            origin = p0 + n * gap
            pts = origin + grid_a.reshape(-1, 1) * u + grid_b.reshape(-1, 1) * n
            if (
                pts[:, 0].min() < frame.x0 + 2
                or pts[:, 0].max() > frame.x1 - 2
                or pts[:, 1].min() < frame.y0 + 2
                or pts[:, 1].max() > frame.y1 - 2
            ):
                continue
            hit = (
                (pts[:, None, 0] >= boxes[None, :, 0])
                & (pts[:, None, 0] <= boxes[None, :, 2])
                & (pts[:, None, 1] >= boxes[None, :, 1])
                & (pts[:, None, 1] <= boxes[None, :, 3])
            )
            cost = int(hit.any(axis=1).sum()) if len(boxes) else 0
            if best is None or cost < best[0]:
                best = (cost, x, ang, side, pts)
            if cost == 0:
                break
        if best is not None and best[0] == 0:
            break
    if best is None:
        return []
    _, x, ang, side, pts = best
    px_per_pt = ax.figure.dpi / 72.0
    n = np.array([-math.sin(ang), math.cos(ang)]) * side * gap / px_per_pt
    ax.annotate(
        text,
        xy=(x, bw * x),
        xytext=tuple(n),
        textcoords="offset points",
        rotation=math.degrees(ang),
        rotation_mode="anchor",
        ha="left",
        va="top" if side < 0 else "bottom",
        fontsize=7.5,
        color="0.2",
    )
    r = max(w / 15, hgt / 2) / 2 + 1
    return [(px - r, py - r, px + r, py + r) for px, py in pts]  # fmt: skip


def _nudge_clear(text, renderer, avoid, px_per_pt):
    """Move a fixed label up (in offset points) until it clears the boxes in ``avoid``."""
    for _ in range(12):
        e = text.get_window_extent(renderer)
        b = (e.x0, e.y0, e.x1, e.y1)
        if not any(_overlap(b, f) for f in avoid):
            break
        x, y = text.xyann
        text.xyann = (x, y + 5)
    e = text.get_window_extent(renderer)
    return (e.x0, e.y0, e.x1, e.y1)


def _darker(c: str) -> str:
    from matplotlib.colors import to_hex, to_rgb

    return to_hex(tuple(0.75 * v for v in to_rgb(c)))


# --------------------------------------------------------------------------- breakdown


def _component(phase: str, op: str, kind: str = "") -> str:
    if kind == "collective":
        return "comm_s"
    if phase == "encoder":
        return "encoder_s"
    if phase == "cross_kv":
        return "cross_kv_s"
    if op.endswith("norm") or op.endswith("residual"):
        return "other_s"
    if op == "self_attn" or op.startswith("self_attn_") or op == "self_kv_cache_cat":
        return "self_attn_s"
    if op == "cross_attn" or op.startswith("cross_attn_"):
        return "cross_attn_s"
    if op.startswith("mlp_"):
        return "mlp_s"
    return "other_s"


def breakdown_table(predictions: Sequence[Prediction], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Time per sample (s) of each prediction split into the components of
    :data:`BREAKDOWN`; decoder norms and residuals count as "other", collectives and
    shipping between pools as "communication". Columns sum to ``total_s`` =
    ``totals["time_per_sample_s"]``."""
    rows = []
    many_hw = len({p.hardware.name for p in predictions}) > 1
    for i, p in enumerate(predictions):
        comp = [_component(ph, op, k) for ph, op, k in zip(p.ops["phase"], p.ops["op"], p.ops["kind"], strict=True)]
        per = p.ops["time_s"].groupby(comp).sum() / p.workload.batch
        label = labels[i] if labels else (f"{p.model.name}\n{p.hardware.name}" if many_hw else p.model.name)
        row = {"label": label, "model": p.model.name, "hardware": p.hardware.name, "batch": p.workload.batch}
        row.update({c: float(per.get(c, 0.0)) for c, _, _ in BREAKDOWN})
        row["total_s"] = sum(row[c] for c, _, _ in BREAKDOWN)
        rows.append(row)
    return pd.DataFrame(rows)


def breakdown(ax, predictions, *, title: str | None = None, ylabel: str = "time per sample (ms)"):
    """Stacked bars, one per prediction (or per row of a :func:`breakdown_table`):
    time per sample (ms) by component, the total written on top."""
    table = predictions if isinstance(predictions, pd.DataFrame) else breakdown_table(list(predictions))
    ax = ax if ax is not None else new_axes((8.5, 5.0))
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for col, name, colour in BREAKDOWN:
        if col == "comm_s" and not table[col].any():
            continue  # single chips: no communication segment
        ms = table[col].to_numpy() * 1e3
        bars = ax.bar(x, ms, bottom=bottom, color=colour, width=0.62, label=name, edgecolor="white", lw=0.5)
        for patch in bars:
            patch.set_gid(f"bar|{col}")
        bottom += ms
    top = bottom.max() if len(bottom) else 1.0
    for xi, total in zip(x, bottom, strict=True):
        ax.text(xi, total + top * 0.015, f"{total:.3g} ms", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, table["label"], fontsize=8.5)
    ax.set_ylim(0, top * 1.12)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(
        handles[::-1], names[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
    )
    if title is not None:
        ax.set_title(title, fontsize=10)
    return ax


# --------------------------------------------------------------------------- scaling over chips


def scaling_table(model: ModelSpec, hardware: Hardware, workload: Workload, chips: Sequence[int] = (1, 2, 4, 8),
                  settings: Settings = DEFAULT_SETTINGS, shard_kv: str = "heads") -> pd.DataFrame:
    """For every chip count N and every tensor parallelism T that divides N and splits
    the model's heads: time per sample (one batch through one replica, over the batch)
    and the throughput per chip of N/T data-parallel replicas. Layouts T cannot split
    are left out."""
    from ..errors import SpecError
    from ..specs.layout import Layout

    rows = []
    for n in chips:
        for t in (d for d in range(1, n + 1) if n % d == 0):
            try:
                p = predict(model, hardware, workload, settings, Layout(chips=n, tensor_parallel=t,
                                                                          shard_kv=shard_kv))
            except SpecError:
                continue
            rows.append({"chips": n, "tensor_parallel": t, "replicas": n // t,
                         "time_per_sample_s": p.totals["time_per_sample_s"],
                         "samples_per_s": p.totals["samples_per_s"],
                         "samples_per_s_per_chip": p.totals["samples_per_s"] / n,
                         "comm_share": p.totals["comm_time_s"] / p.totals["time_per_sample_s"],
                         "peak_memory_bytes": p.memory["peak_bytes"], "fits": p.memory["fits"]})
    return pd.DataFrame(rows)


def scaling(axes, table: pd.DataFrame, *, title: str | None = None):
    """Two panels against chips (log2): time per sample and throughput per chip, one
    line per tensor parallelism (hollow markers: the batch does not fit a chip)."""
    if axes is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10.0, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        fig.subplots_adjust(wspace=0.3)
    left, right = axes
    for i, (t, g) in enumerate(table.groupby("tensor_parallel")):
        colour = f"C{i}"
        g = g.sort_values("chips")
        for ax, col, scale in ((left, "time_per_sample_s", 1e3), (right, "samples_per_s_per_chip", 1.0)):
            ax.plot(g["chips"], g[col] * scale, "-", color=colour, lw=1.3, label=f"tensor parallel {t}")
            fit = g["fits"].to_numpy(bool)
            ax.scatter(g["chips"][fit], g[col][fit] * scale, color=colour, s=22, zorder=3)
            ax.scatter(g["chips"][~fit], g[col][~fit] * scale, facecolor="white", edgecolor=colour, s=22, zorder=3)
    for ax, label in ((left, "time per sample (ms)"), (right, "samples/s per chip")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _log_ticks_125(ax.yaxis)
        ax.set_xlabel("chips")
        ax.set_ylabel(label)
        ax.grid(True, which="both", color="0.92", lw=0.6)
        ticks = sorted(table["chips"].unique())
        ax.set_xticks(ticks, [str(int(x)) for x in ticks])
    left.legend(fontsize=8, frameon=False)
    right.set_title("hollow: the batch does not fit a chip's memory", fontsize=8, color="0.4")
    if title is not None:
        left.figure.suptitle(title, fontsize=10)
    return axes


# --------------------------------------------------------------------------- decoder step vs batch


def decoder_step_table(
    models: Sequence[ModelSpec],
    hardware: Hardware,
    *,
    batches: Sequence[int] = tuple(2**i for i in range(10)),
    passages: Sequence[int] = (10, 40, 100),
    workload: Workload = DEFAULT_WORKLOAD,
    settings: Settings = DEFAULT_SETTINGS,
) -> pd.DataFrame:
    """Decoder time per decoding step of the whole batch (``totals["time_per_step_s"]``,
    averaged over the T steps) for every model, passage count and batch size, and
    whether the batch fits in the chip's memory."""
    rows = []
    for m in models:
        for p in passages:
            for b in batches:
                pred = predict(m, hardware, workload.replace(passages=int(p), batch=int(b)), settings)
                rows.append(
                    {
                        "model": m.name,
                        "hardware": hardware.name,
                        "passages": int(p),
                        "batch": int(b),
                        "time_per_step_s": pred.totals["time_per_step_s"],
                        "decoder_time_s": pred.totals["decoder_time_s"] * b,
                        "fits": pred.memory["fits"],
                        "max_batch": pred.memory["max_batch"],
                    }
                )
    return pd.DataFrame(rows)


def decoder_step_vs(ax, table: pd.DataFrame, *, title: str | None = None):
    """Decoder time per step (ms, log) against batch size (log2): colour per model,
    line style per passage count; hollow markers where the batch does not fit."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    ax = ax if ax is not None else new_axes((8.5, 5.5))
    models = list(dict.fromkeys(table["model"]))
    passages = list(dict.fromkeys(table["passages"]))
    styles = ["-", "--", ":", "-."]
    color = {m: VARIANT_COLORS[i % len(VARIANT_COLORS)] for i, m in enumerate(models)}
    for m in models:
        for j, p in enumerate(passages):
            sel = table[(table["model"] == m) & (table["passages"] == p)].sort_values("batch")
            ms = sel["time_per_step_s"].to_numpy() * 1e3
            ax.plot(sel["batch"], ms, color=color[m], ls=styles[j % len(styles)], lw=1.4, gid=f"step|{m}|{p}")
            fits = sel["fits"].to_numpy()
            ax.plot(sel["batch"][fits], ms[fits], ls="none", marker="o", ms=4, color=color[m])
            ax.plot(sel["batch"][~fits], ms[~fits], ls="none", marker="o", ms=4, mfc="white", color=color[m])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(set(table["batch"])))
    ax.xaxis.set_major_formatter(_ms_formatter())
    ax.xaxis.set_minor_locator(NullLocator())
    _log_ticks_125(ax.yaxis)
    ax.set_xlabel("batch size (samples decoded together)")
    ax.set_ylabel("decoder time per step, whole batch (ms)")
    ax.grid(True, which="major", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    handles = [Line2D([], [], color=color[m], lw=2, label=m) for m in models]
    handles += [
        Line2D([], [], color="0.3", ls=styles[j % len(styles)], label=f"{p} passages")
        for j, p in enumerate(passages)
    ]
    handles += [
        Line2D(
            [],
            [],
            color="0.3",
            ls="none",
            marker="o",
            mfc="white",
            label="hollow: batch does not fit in memory",
        )
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return ax


# --------------------------------------------------------------------------- quality vs cost

QUALITY_DATASETS = ("NaturalQuestions", "TriviaQA", "WebQuestions")
QUALITY_FIELDS = (
    "model",
    "fidoperf_model",
    "dataset",
    "exact_match",
    "source",
    "setting",
    "passages",
    "note",
)
QUALITY_MARKER = {"NaturalQuestions": "o", "TriviaQA": "s", "WebQuestions": "^"}


def quality_path() -> Path:
    return Path(str(resources.files("fidoperf") / "data" / "quality.yaml"))


def load_quality(path: str | Path | None = None) -> pd.DataFrame:
    """The published exact-match table (``fidoperf/data/quality.yaml`` by default),
    checked: unknown or missing fields, unknown datasets and models, EM outside 0-100
    raise :class:`SpecError` naming the file, row and field, whatever the file holds.
    Missing figures are NaN."""
    from ..specs import model_names, read_yaml
    from ..specs.yamlio import MAX_WHOLE, is_file, shown

    path = Path(path) if path is not None else quality_path()
    data = read_yaml(path)
    for key in data:
        if key != "rows":
            raise SpecError(path, shown(key) if not isinstance(key, str) else key, "unknown field")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise SpecError(path, "rows", f"expected a non-empty list of rows, got {shown(rows)}")
    out = []
    known = model_names()
    for i, r in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(r, dict):
            raise SpecError(path, where, f"expected a mapping, got {shown(r)}")
        for key in r:
            if key not in QUALITY_FIELDS:
                raise SpecError(path, f"{where}.{key if isinstance(key, str) else shown(key)}", "unknown field")
        for key in ("model", "dataset", "source"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise SpecError(path, f"{where}.{key}", f"expected a non-empty string, got {shown(r.get(key))}")
        for key in ("setting", "note"):
            if r.get(key) is not None and not isinstance(r[key], str):
                raise SpecError(path, f"{where}.{key}", f"expected text or null, got {shown(r[key])}")
        if r["dataset"] not in QUALITY_DATASETS:
            raise SpecError(
                path,
                f"{where}.dataset",
                f"unknown dataset {shown(r['dataset'])} (known: {', '.join(QUALITY_DATASETS)})",
            )
        em = r.get("exact_match")
        if em is not None and (
            isinstance(em, bool) or not isinstance(em, (int, float)) or not 0 <= em <= 100
        ):
            raise SpecError(path, f"{where}.exact_match", f"expected a percentage 0-100 or null, got {shown(em)}")
        p = r.get("passages")
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_WHOLE):
            raise SpecError(path, f"{where}.passages", f"expected a whole number >= 1 or null, got {shown(p)}")
        fm = r.get("fidoperf_model")
        if fm is not None and (not isinstance(fm, str) or not fm.strip()):
            raise SpecError(path, f"{where}.fidoperf_model", f"expected a model name or null, got {shown(fm)}")
        if fm is not None and fm not in known and not is_file(fm):
            raise SpecError(path, f"{where}.fidoperf_model",
                            f"unknown model {shown(fm)} (known: {', '.join(known)}; or a model YAML file)")
        out.append(
            {
                "model": r["model"],
                "fidoperf_model": fm,
                "dataset": r["dataset"],
                "exact_match": float("nan") if em is None else float(em),
                "source": r["source"],
                "setting": r.get("setting") or "",
                "passages": p,
                "note": r.get("note") or "",
            }
        )
    return pd.DataFrame(out, columns=list(QUALITY_FIELDS))


def quality_table(
    hardware: Hardware,
    workload: Workload = DEFAULT_WORKLOAD,
    settings: Settings = DEFAULT_SETTINGS,
    path: str | Path | None = None,
) -> pd.DataFrame:
    """Every row of the quality table that names a fidoperf model, with its predicted
    time per sample on ``hardware`` (with the row's own passage count when it gives
    one, else the workload's). Rows without a figure keep EM = NaN."""
    from ..specs import load_model

    q = load_quality(path)
    q = q[q["fidoperf_model"].notna()].copy()
    times, passages = [], []
    cache: dict = {}
    for _, r in q.iterrows():
        p = int(r["passages"]) if pd.notna(r["passages"]) else workload.passages
        key = (r["fidoperf_model"], p)
        if key not in cache:
            cache[key] = predict(
                load_model(r["fidoperf_model"]), hardware, workload.replace(passages=p), settings
            )
        times.append(cache[key].totals["time_per_sample_s"])
        passages.append(p)
    q["passages_used"] = passages
    q["time_per_sample_s"] = times
    q["hardware"] = hardware.name
    return q.reset_index(drop=True)


def quality_vs_cost(ax, table: pd.DataFrame, *, title: str | None = None):
    """Exact match (%) against predicted time per sample (ms, log). FiD and FiDO in
    two colours, datasets as markers; models whose EM was not found are ticks on the
    bottom edge at their predicted time."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    ax = ax if ax is not None else new_axes((8.5, 5.0))
    fam_color = {"FiD": "#1f77b4", "FiDO": "#d62728"}
    fam = table["fidoperf_model"].map(lambda n: "FiDO" if str(n).startswith("fido") else "FiD")
    known = table[table["exact_match"].notna()]
    short = {"NaturalQuestions": "NQ", "TriviaQA": "TQA", "WebQuestions": "WebQ"}
    missing = table[table["exact_match"].isna()]
    unknown = (
        missing.groupby(["model", "fidoperf_model", "passages_used"], sort=False)
        .agg(
            time_per_sample_s=("time_per_sample_s", "first"),
            datasets=("dataset", lambda d: ", ".join(short[x] for x in d)),
        )
        .reset_index()
    )
    for ds in QUALITY_DATASETS:
        for f in ("FiD", "FiDO"):
            sel = known[(known["dataset"] == ds) & (fam[known.index] == f)]
            if sel.empty:
                continue
            ax.scatter(
                sel["time_per_sample_s"] * 1e3,
                sel["exact_match"],
                marker=QUALITY_MARKER[ds],
                s=46,
                color=fam_color[f],
                zorder=3,
                gid=f"quality|{ds}|{f}",
            )
    ax.set_xscale("log")
    _log_ticks_125(ax.xaxis)
    all_t = table["time_per_sample_s"] * 1e3
    ax.set_xlim(all_t.min() / 2, all_t.max() * 2)
    if len(known):
        lo, hi = known["exact_match"].min(), known["exact_match"].max()
        ax.set_ylim(lo - max(8, 0.3 * (hi - lo)), hi + 5)
    else:
        ax.set_ylim(30, 80)
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for _, r in unknown.iterrows():
        ax.plot(
            [r["time_per_sample_s"] * 1e3] * 2,
            [0, 0.04],
            transform=trans,
            lw=2,
            color=fam_color["FiDO" if str(r["fidoperf_model"]).startswith("fido") else "FiD"],
            gid=f"unknown|{r['fidoperf_model']}",
        )
    ax.set_xlabel(f"predicted time per sample on {table['hardware'].iloc[0] if len(table) else '?'} (ms)")
    ax.set_ylabel("exact match (%)")
    ax.grid(True, which="major", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    labs = []
    for _, r in known.iterrows():
        px, py = ax.transData.transform((r["time_per_sample_s"] * 1e3, r["exact_match"]))
        labs.append(
            _Label(
                f"{r['model']}, {short[r['dataset']]}, {r['passages_used']} passages",
                px,
                py,
                fontsize=8,
                xy=(r["time_per_sample_s"] * 1e3, r["exact_match"]),
            )
        )
    pts = known[["time_per_sample_s", "exact_match"]].to_numpy() * [1e3, 1]
    place_labels(ax, labs, obstacles=_point_boxes(ax, pts, [46] * len(pts)))
    # Models whose EM was not found: numbered ticks, named in a list beside the legend.
    unknown = unknown.sort_values("time_per_sample_s").reset_index(drop=True)
    last_px, level = -1e9, 0
    for i, r in unknown.iterrows():
        x = r["time_per_sample_s"] * 1e3
        px = ax.transData.transform((x, 1))[0]
        level = level + 1 if px - last_px < 14 else 0
        last_px = px
        ax.text(
            x,
            0.05 + 0.045 * level,
            str(i + 1),
            transform=trans,
            ha="center",
            va="bottom",
            fontsize=7.5,
            color="0.3",
        )
    handles = [Line2D([], [], ls="none", marker="o", color=c, label=f) for f, c in fam_color.items()]
    handles += [
        Line2D([], [], ls="none", marker=QUALITY_MARKER[d], color="0.4", label=d)
        for d in QUALITY_DATASETS
        if (known["dataset"] == d).any()
    ]
    if len(unknown):
        handles += [Line2D([], [], lw=2, color="0.4", label="numbered tick: EM not found")]
    leg = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if len(unknown):
        renderer = _renderer(ax.figure)
        bottom = ax.transAxes.inverted().transform(leg.get_window_extent(renderer))[0][1]
        lines = ["EM not found (predicted time only):"]
        lines += [
            f"{i + 1}  {r['model']}, {r['passages_used']} passages: {r['datasets']}"
            for i, r in unknown.iterrows()
        ]
        ax.text(
            1.02,
            bottom - 0.04,
            "\n".join(lines),
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=7.5,
            color="0.25",
            linespacing=1.5,
        )
    if title is not None:
        ax.set_title(title, fontsize=10)
    return ax


# --------------------------------------------------------------------------- capacity plan


def plan_figures(p) -> list[tuple[str, str, Any]]:
    """(title, caption, Axes) for a capacity plan (:class:`fidoperf.whatif.plan.Plan`): the
    roofline of every model at its chosen batch on the best-ranked chip, with the roofs
    of all chips, and the time breakdown of every feasible plan."""
    ok = p.best[p.best["feasible"]]
    if ok.empty:
        return []
    top_hw = ok.iloc[0]["hardware"]
    wl = p.workload
    on_top = [r for _, r in ok.iterrows() if r["hardware"] == top_hw]
    preds = [p.predictions[(r["model"], top_hw)] for r in on_top]
    variants = [f"{r['model']}, batch {int(r['batch'])}" for r in on_top]
    ax = roofline(
        None,
        p.hardware,
        roofline_points_many(preds, variants),
        arrows=False,
        title=f"Operators of each model at its chosen batch on {top_hw}; roofs of every chip considered",
    )
    out = [
        (
            "Roofline",
            f"Points: every operator (layers summed; decoder summed over the {wl.target_len} steps) of "
            f"each model at the batch its plan uses on {top_hw}, the best-ranked chip; lines: compute and "
            "bandwidth roofs of every chip considered, with their ridge points.",
            ax,
        )
    ]
    rows = list(ok.itertuples())
    bpreds = [p.predictions[(r.model, r.hardware)] for r in rows]
    labels = [f"{r.model}\n{r.hardware}\nbatch {int(r.batch)}" for r in rows]
    ax2 = breakdown(
        None,
        breakdown_table(bpreds, labels),
        ylabel="chip time per query (ms)",
        title=f"Chip time per query at the chosen batch ({wl.passages} passages × {wl.passage_len} "
        f"tokens, {wl.target_len} target tokens)",
    )
    ax2.figure.set_size_inches(min(13.0, max(8.5, 1.1 * len(rows) + 3.5)), 5.0)
    out.append(
        (
            "Time per query by component",
            "Chip time per query = batch time / batch for each feasible "
            "plan, split into encoder, cross-attention K/V projection and the decoder's parts.",
            ax2,
        )
    )
    return out
