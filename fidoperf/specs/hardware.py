"""Hardware profiles: one chip's roofs, capacity and efficiency factors, from YAML.

Units: FLOP/s, bytes (decimal: 1 GB = 1e9 B; GiB = 2**30 B), bytes/s, seconds, W.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .dtypes import DTYPE_BYTES
from .yamlio import Fields, as_number, check_plain, data_dir, read_yaml, resolve_path

OP_KINDS = ("matmul", "attention", "softmax", "vector", "gather")
EFFICIENCY_KEYS = ("compute", "memory") + tuple(
    f"{k}_{r}" for k in OP_KINDS for r in ("compute", "memory")
)
CURVE_AXES = ("flops", "bytes", "rows")



# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Sourced:
    """A figure and where it comes from."""

    value: float | None
    source: str
    note: str = ""


@dataclass(frozen=True)
class Curve:
    """An efficiency factor: a constant, or a function of op size interpolated linearly
    in log(size) between measured points and held flat beyond them.

    ``axis`` is what the size is: ``flops`` or ``bytes`` of one op call, or ``rows``
    (the M dimension of the matrix product: the rows that share one read operand).
    """

    points: tuple[tuple[float, float], ...]  # ((size, fraction), ...), sizes ascending
    axis: str = "flops"
    source: str = ""

    @property
    def constant(self) -> float | None:
        return self.points[0][1] if len(self.points) == 1 else None

    def __call__(self, size):
        import numpy as np

        if len(self.points) == 1:
            return self.points[0][1] + 0.0 * np.asarray(size, dtype=float)
        xs = np.log(np.array([p[0] for p in self.points]))
        ys = np.array([p[1] for p in self.points])
        return np.interp(np.log(np.maximum(np.asarray(size, dtype=float), 1e-30)), xs, ys)


@dataclass(frozen=True)
class Hardware:
    """One chip: roofs, capacity and efficiency factors. All figures per chip."""

    name: str
    description: str
    kind: str  # "datasheet" or "measured"
    peak_flops_per_s: Mapping[str, float]  # dense, by compute dtype
    hbm_bytes_per_s: float
    hbm_capacity_bytes: float
    on_chip_bytes: float | None
    interconnect_bytes_per_s: float | None
    tdp_w: float | None
    price_per_chip_hour_usd: float | None
    efficiency: Mapping[str, Curve]
    overhead_s_per_op: float = 0.0  # added to every op call (kernel launch, dispatch)
    overhead_s_per_call: float = 0.0  # added once per call of a compiled function (validation only)
    sources: Mapping[str, Sourced] = field(default_factory=dict)
    measured: Mapping[str, Any] = field(default_factory=dict)  # machine, date, versions
    vendor: str = ""
    decisions: str = ""
    path: str = ""

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flops_per_s:
            raise SpecError(
                self.path or self.name,
                f"peak_flops_per_s.{dtype}",
                f"this chip has no {dtype} peak (has: {', '.join(sorted(self.peak_flops_per_s))})",
            )
        return self.peak_flops_per_s[dtype]

    def curve(self, kind: str, resource: str) -> Curve:
        """Efficiency for ``resource`` ("compute" or "memory") of ops of ``kind``."""
        return self.efficiency.get(f"{kind}_{resource}") or self.efficiency[resource]

    def ridge_point(self, dtype: str) -> float:
        """FLOPs per byte where the compute and bandwidth roofs meet (peak values)."""
        return self.peak(dtype) / self.hbm_bytes_per_s


def _sourced(f: Fields, key: str, nullable: bool = False, required: bool = True) -> Sourced | None:
    if not f.has(key) and not required:
        f.seen.add(key)
        return None
    g = Fields(f.raw(key), f.where, f.prefix + key + ".")
    value = g.raw("value")
    if not (nullable and value is None):
        value = as_number(value, g.err, "value")
    out = Sourced(value, g.str("source"), g.str("note", ""))
    g.done()
    return out


def _curve(raw: Any, where: str, key: str) -> Curve:
    g = Fields(raw, where, key + ".")
    source = g.str("source", "")
    if g.has("value"):
        value = g.number("value")
        if value > 1.5:
            raise g.err("value", f"an efficiency is a fraction of peak, got {value}")
        g.done()
        if value != 1.0 and not source:
            raise g.err("source", "an efficiency other than 1.0 must name its source")
        return Curve(((1.0, value),), "flops", source or "pure roofline")
    axis = g.str("by")
    if axis not in CURVE_AXES:
        raise g.err("by", f"must be one of {', '.join(CURVE_AXES)}, got {axis!r}")
    pts = g.raw("points")
    if not isinstance(pts, list) or not pts:
        raise g.err("points", "expected a non-empty list of [size, fraction] pairs")
    parsed = []
    for i, p in enumerate(pts):
        if not isinstance(p, list) or len(p) != 2:
            raise g.err(f"points[{i}]", f"expected [size, fraction], got {p!r}")
        parsed.append((as_number(p[0], g.err, f"points[{i}][0]"), as_number(p[1], g.err, f"points[{i}][1]")))
    if any(b[0] <= a[0] for a, b in zip(parsed, parsed[1:])):
        raise g.err("points", "sizes must be strictly increasing")
    if not source:
        raise g.err("source", "an efficiency curve must name its source")
    g.done()
    return Curve(tuple(parsed), axis, source)


def _overhead(f: Fields, key: str) -> float:
    """A fixed time in seconds, measured (with a source) or 0."""
    o = Fields(f.raw(key, {"value": 0.0, "source": "none"}), f.where, key + ".")
    value = as_number(o.raw("value"), o.err, "value", positive=False)
    if value < 0:
        raise o.err("value", f"must not be negative, got {value}")
    if value and not o.str("source", ""):
        raise o.err("source", f"a {key} other than 0 must name its source")
    o.str("source", "")
    o.str("note", "")
    o.done()
    return value


def hardware_from_dict(data: Mapping[str, Any], where: str) -> Hardware:
    f = Fields(data, where)
    name = f.str("name")
    kind = f.str("kind", "datasheet")
    if kind not in ("datasheet", "measured"):
        raise f.err("kind", f"must be 'datasheet' or 'measured', got {kind!r}")
    peaks_raw = Fields(f.raw("peak_flops_per_s"), where, "peak_flops_per_s.")
    peaks, sources = {}, {}
    for dtype in list(peaks_raw.data):
        if dtype not in DTYPE_BYTES:
            raise peaks_raw.err(str(dtype), f"unknown dtype (known: {', '.join(DTYPE_BYTES)})")
        s = _sourced(peaks_raw, dtype)
        peaks[dtype] = s.value
        sources[f"peak_flops_per_s.{dtype}"] = s
    if not peaks:
        raise f.err("peak_flops_per_s", "needs at least one dtype")
    mem = Fields(f.raw("memory"), where, "memory.")
    cap = _sourced(mem, "capacity_bytes")
    bw = _sourced(mem, "bandwidth_bytes_per_s")
    mem.done()
    sources.update({"memory.capacity_bytes": cap, "memory.bandwidth_bytes_per_s": bw})
    optional = {}
    for key in ("on_chip_bytes", "interconnect_bytes_per_s", "tdp_w", "price_per_chip_hour_usd"):
        s = _sourced(f, key, nullable=True, required=False)
        optional[key] = s.value if s else None
        if s:
            sources[key] = s
    eff_raw = f.raw("efficiency", {"compute": {"value": 1.0}, "memory": {"value": 1.0}})
    e = Fields(eff_raw, where, "efficiency.")
    efficiency = {}
    for key in list(e.data):
        if key not in EFFICIENCY_KEYS:
            raise e.err(str(key), f"unknown efficiency (known: {', '.join(EFFICIENCY_KEYS)})")
        efficiency[key] = _curve(e.raw(key), where, f"efficiency.{key}")
    for key in ("compute", "memory"):
        efficiency.setdefault(key, Curve(((1.0, 1.0),), "flops", "pure roofline"))
    overhead_op = _overhead(f, "overhead_s_per_op")
    overhead_call = _overhead(f, "overhead_s_per_call")
    measured = f.raw("measured", {})
    m = Fields({} if measured is None else measured, where, "measured.")  # a mapping whatever the kind
    check_plain(m.data, f.err, "measured")  # free-form, but it goes into JSON output
    if kind == "measured":
        for key in ("machine", "date", "versions"):
            m.raw(key)
    hw = Hardware(
        name=name,
        description=f.str("description", ""),
        kind=kind,
        peak_flops_per_s=peaks,
        hbm_bytes_per_s=bw.value,
        hbm_capacity_bytes=cap.value,
        efficiency=efficiency,
        overhead_s_per_op=overhead_op,
        overhead_s_per_call=overhead_call,
        sources=sources,
        measured=measured or {},
        vendor=f.str("vendor", ""),
        decisions=f.str("decisions", ""),
        path=str(where),
        **optional,
    )
    f.done()
    return hw


def hardware_names() -> list[str]:
    return sorted(p.stem for p in data_dir("hardware").glob("*.yaml"))


def load_hardware(name_or_path: str | Path) -> Hardware:
    """A shipped profile by name (``tpu-v4``) or a YAML file by path."""
    path = resolve_path(name_or_path, "hardware", hardware_names)
    hw = hardware_from_dict(read_yaml(path), str(path))
    return hw

