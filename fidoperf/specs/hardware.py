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
from .implementation import IMPLEMENTATIONS
from .interconnect import Interconnect, interconnect_from_dict
from .yamlio import Fields, Sourced, as_number, check_plain, data_dir, read_yaml, resolve_path
from .yamlio import sourced as _sourced

OP_KINDS = ("matmul", "attention", "softmax", "vector", "gather")
# "flash": fused attention kernels (flash attention, flash decoding); they fall back to
# the attention curves, then to the chip-wide ones.
EFFICIENCY_KEYS = ("compute", "memory") + tuple(
    f"{k}_{r}" for k in OP_KINDS + ("flash",) for r in ("compute", "memory")
)
CURVE_AXES = ("flops", "bytes", "rows", "head_dim")


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Curve:
    """An efficiency factor: a constant, or a function of op size interpolated linearly
    in log(size) between measured points and held flat beyond them.

    ``axis`` is what the size is: ``flops`` or ``bytes`` of one op call, ``rows``
    (the M dimension of the matrix product: the rows that share one read operand), or
    ``head_dim`` (the head width of an attention kernel).

    ``transfer_bytes`` (rows curves only, optional): the bytes one kernel of the measurement
    read from main memory (its weight, or its keys or values). A product of few rows
    streams that operand, and a transfer of another size streams at another rate: the
    model carries the curve to other sizes with the streaming curve of the same access
    pattern (:func:`fidoperf.costmodel.kernels.rows_rate_at_size`).
    """

    points: tuple[tuple[float, float], ...]  # ((size, fraction), ...), sizes ascending
    axis: str = "flops"
    source: str = ""
    transfer_bytes: float | None = None

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
class KernelModel:
    """Parameters of the derated model's mechanisms (:mod:`fidoperf.costmodel.kernels`),
    each sourced in the profile's ``kernel_model`` block. A profile without one (the
    measured CPU profiles) uses its efficiency curves alone.

    compute_units       SMs (GPU) or cores over which a kernel's thread blocks are spread:
                        tile and wave quantisation of matrix products, parallelism of
                        attention kernels. None: no quantisation.
    gemm_tiles          (rows, cols, relative efficiency) of the output tiles the GEMM
                        library chooses among; the best candidate is taken (an ideal
                        heuristic). Empty: no tile quantisation.
    gemm_split_k        split-K factors the library may use when tiles are too few.
    gemm_pad            (m, n, k) padded to multiples of these (TPU MXU: 8, 128, 128).
    bandwidth_units     thread blocks in flight needed to reach the attainable bandwidth;
                        fewer blocks stream proportionally slower. None: no such limit.
    flash_block_q/kv    query rows and key/value rows of a flash-attention block.
    flash_block_overhead  a flash block's fixed work (loading Q, softmax rescale, writing
                        O) in units of one key/value block iteration.
    decode_max_splits   flash decoding splits the keys of a sequence across at most this many
                        blocks (FlashAttention-2: 128), chosen as its num_splits_heuristic does.
    async_launch        kernel launches overlap kernel execution (GPU streams): an eager
                        framework operation takes max(dispatch, kernel), not their sum.
    """

    compute_units: int | None = None
    gemm_tiles: tuple = ()
    gemm_split_k: tuple = (1,)
    gemm_pad: tuple = (1, 1, 1)
    bandwidth_units: float | None = None
    flash_block_q: int = 128
    flash_block_kv: int = 128
    flash_block_overhead: float = 0.0
    decode_max_splits: int = 128
    async_launch: bool = False
    sources: Mapping[str, Sourced] = field(default_factory=dict)


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
    overhead_s_per_op: float = 0.0  # added to every kernel launch (launch floor, dispatch)
    overhead_s_per_call: float = 0.0  # added once per call of a compiled function (validation only)
    sources: Mapping[str, Sourced] = field(default_factory=dict)
    overheads_by_implementation: Mapping[str, float] = field(default_factory=dict)  # overrides per preset
    dispatch_s_per_op: float = 0.0  # host time to issue one operation of an eager framework (PyTorch)
    default_implementation: str = "xla"
    kernel_model: KernelModel = field(default_factory=lambda: KernelModel())
    interconnect: Interconnect | None = None  # the fabric between chips (collectives)
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

    def curve(self, kind: str, resource: str, kernel: str = "") -> Curve:
        """Efficiency for ``resource`` ("compute" or "memory") of ops of ``kind`` (a flash
        ``kernel`` looks for ``flash_<resource>`` first)."""
        if kernel == "flash" and f"flash_{resource}" in self.efficiency:
            return self.efficiency[f"flash_{resource}"]
        return self.efficiency.get(f"{kind}_{resource}") or self.efficiency[resource]

    def overhead_for(self, implementation: str) -> float:
        """Fixed seconds per kernel launch (or framework operation) of ``implementation``."""
        return self.overheads_by_implementation.get(implementation, self.overhead_s_per_op)

    def ridge_point(self, dtype: str) -> float:
        """FLOPs per byte where the compute and bandwidth roofs meet (peak values)."""
        return self.peak(dtype) / self.hbm_bytes_per_s


def _curve(raw: Any, where: str, key: str) -> Curve:
    g = Fields(raw, where, key + ".")
    source = g.str("source", "")
    g.str("note", "")
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
    transfer = g.number("transfer_bytes") if g.has("transfer_bytes") else None
    if transfer is not None and axis != "rows":
        raise g.err("transfer_bytes", f"only a curve by rows has a transfer size (this one is by {axis})")
    g.done()
    return Curve(tuple(parsed), axis, source, transfer)


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


def _overheads(f: Fields, key: str) -> tuple[float, dict[str, float]]:
    """``overhead_s_per_op``: one sourced figure for every implementation, or one per
    implementation (``{xla: {...}, tuned: {...}, eager: {...}}``; a missing preset
    takes ``default`` when given, else 0)."""
    raw = f.raw(key, None)
    if not isinstance(raw, Mapping) or "value" in raw:
        return _overhead(f, key), {}
    g = Fields(raw, f.where, key + ".")
    by_impl = {}
    for name in list(g.data):
        if name != "default" and name not in IMPLEMENTATIONS:
            raise g.err(str(name), f"unknown implementation (known: default, {', '.join(IMPLEMENTATIONS)})")
        by_impl[name] = _overhead(g, name)
    default = by_impl.pop("default", 0.0)
    return default, by_impl


_KERNEL_MODEL_INTS = ("compute_units", "flash_block_q", "flash_block_kv", "decode_max_splits")


def _kernel_model(raw: Any, where: str) -> KernelModel:
    """The ``kernel_model`` block: every entry ``{value, source, note}``."""
    if raw is None:
        return KernelModel()
    g = Fields(raw, where, "kernel_model.")
    values: dict[str, Any] = {}
    sources: dict[str, Sourced] = {}
    for key in list(g.data):
        e = Fields(g.raw(key), where, f"kernel_model.{key}.")
        value = e.raw("value")
        sources[key] = Sourced(None, e.str("source"), e.str("note", ""))
        e.done()
        if key in _KERNEL_MODEL_INTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise e.err("value", f"expected a whole number of at least 1, got {value!r}")
        elif key in ("bandwidth_units", "flash_block_overhead"):
            value = as_number(value, e.err, "value", positive=key == "bandwidth_units")
            if value < 0:
                raise e.err("value", f"must not be negative, got {value}")
        elif key == "async_launch":
            if not isinstance(value, bool):
                raise e.err("value", f"expected true or false, got {value!r}")
        elif key == "gemm_tiles":
            value = _tiles(value, e)
        elif key in ("gemm_split_k", "gemm_pad"):
            if (not isinstance(value, list) or not value
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
                    or (key == "gemm_pad" and len(value) != 3)):
                what = "three whole numbers [m, n, k]" if key == "gemm_pad" else "a list of whole numbers >= 1"
                raise e.err("value", f"expected {what}, got {value!r}")
            value = tuple(value)
        else:
            raise g.err(str(key), "unknown field (known: compute_units, gemm_tiles, gemm_split_k, gemm_pad, "
                                  "bandwidth_units, flash_block_q, flash_block_kv, flash_block_overhead, "
                                  "decode_max_splits, async_launch)")
        values[key] = value
    return KernelModel(**values, sources=sources)


def _tiles(value: Any, e: Fields) -> tuple:
    if not isinstance(value, list) or not value:
        raise e.err("value", "expected a list of [rows, cols, relative efficiency]")
    tiles = []
    for i, tile in enumerate(value):
        if (not isinstance(tile, list) or len(tile) != 3
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in tile[:2])):
            raise e.err(f"value[{i}]", f"expected [rows, cols, relative efficiency], got {tile!r}")
        eff = as_number(tile[2], e.err, f"value[{i}][2]")
        if eff > 1.0:
            raise e.err(f"value[{i}][2]", f"a relative efficiency is at most 1, got {eff}")
        tiles.append((tile[0], tile[1], eff))
    return tuple(tiles)


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
    overhead_op, by_impl = _overheads(f, "overhead_s_per_op")
    overhead_call = _overhead(f, "overhead_s_per_call")
    dispatch = _overhead(f, "dispatch_s_per_op")
    for key in ("overhead_s_per_op", "overhead_s_per_call", "dispatch_s_per_op"):  # keep their sources
        raw = f.data.get(key)
        entries = {key: raw} if isinstance(raw, Mapping) and "value" in raw else {
            f"{key}.{k}": v for k, v in (raw.items() if isinstance(raw, Mapping) else ()) if isinstance(v, Mapping)}
        for figure, entry in entries.items():
            sources[figure] = Sourced(entry.get("value"), str(entry.get("source", "")), str(entry.get("note", "")))
    default_impl = f.str("default_implementation", "xla")
    if default_impl not in IMPLEMENTATIONS:
        raise f.err("default_implementation", f"must be one of {', '.join(IMPLEMENTATIONS)}, got {default_impl!r}")
    kernel_model = _kernel_model(f.raw("kernel_model", None), where)
    f.seen.add("interconnect")
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
        overheads_by_implementation=by_impl,
        dispatch_s_per_op=dispatch,
        default_implementation=default_impl,
        kernel_model=kernel_model,
        interconnect=interconnect_from_dict(f.raw("interconnect"), where) if f.has("interconnect") else None,
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

