"""What-if sweeps: the roofline model over a cartesian grid of configurations, vectorised.

``parse_vary(["batch=1,8,32", "passages=10:100:10"])`` turns ``--vary`` options into
a dict of value lists; ``sweep(...)`` evaluates the full grid (cartesian product) and
returns one DataFrame row per configuration, in ``itertools.product`` order of the
fields as given (the first field changes slowest).

How it is evaluated. The grid is split into groups by the categorical fields (model,
encoder/decoder size, hardware, dtype, overlap). Inside a group every numeric field is
one axis of a numpy array: a field varied over n values has shape (1, .., n, .., 1).
The cost functions of :mod:`fidoperf.costmodel.ops` and :func:`fidoperf.costmodel.kernels.kernel_times` are
called once per group with these arrays, and broadcasting evaluates every
sub-expression only over the axes it depends on (the encoder over batch, passages and
passage length; the self-attention cache over batch, kv heads and the step). The
decoding steps are one more trailing axis ``t = 1 .. max(T)``, in blocks when the
arrays would be large: per-step costs are summed with a cumulative sum and read at
each configuration's own T (the same as masking t > T). Ops that do not depend on t
come out with a trailing axis of length 1 and count T times. Layer counts multiply
per-layer costs: L encoder layers; of L decoder layers, L // K have cross-attention
(flaxformer placement (i+1) % K == 0), so the decoder is L times the ops every layer
has plus L // K times those only a cross-attention layer adds.

A row holds exactly what ``fidoperf.costmodel.prediction.predict`` gives for that configuration
(to float rounding; tests/test_sweep.py checks a relative 1e-9). Rows whose
combination is impossible (kv heads that do not divide the query heads, K larger than
the decoder layers, a dtype the chip has no peak for) are kept, with the one-line
reason in ``error`` and NaN figures, as Calculon records an infeasible point.

Columns (SI units; 1 GB = 1e9 B; figures per sample unless said otherwise):
    inputs       model .. target_len: the value each row used (varied or base)
    *_flops, *_bytes, *_time_s   encoder, cross_kv (the one-off cross-attention K/V
                 projection), decoder (all T steps) and total, as predict().totals
    time_per_sample_s  batch_time_s / batch;  batch_time_s: one batch, encode + decode
    time_per_step_s    one decoding step of the whole batch (decoder time / T)
    samples_per_s, tokens_per_s, decoder_share_of_time   as predict().totals
    peak_memory_bytes, max_batch, fits   costs.memory_terms on the chip's capacity;
                 rows that do not fit are kept (fits = False)
    decoder_bound      "compute" or "memory": the roof of the op calls that take most
                 of the decoder time (each call by its larger term; ties: memory)
    decoder_kv_heads, decoder_cross_attn_every, decoder_cross_layers: the resolved
                 decoder (G, K, L // K); missing in error rows
    error        why the row is impossible, or missing
Dimension letters are those of :mod:`fidoperf.costmodel.ops` (B, P, N, T, G, K, L).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..costmodel import ops as costs
from ..costmodel import parallel
from ..costmodel.kernels import EFFICIENCY_MODELS, kernel_times
from ..costmodel.prediction import OVERLAP_MODELS, Settings, flash_rows
from ..errors import SpecError
from ..specs import (
    DTYPE_BYTES,
    DTYPE_PRESETS,
    Hardware,
    ModelSpec,
    Workload,
    load_hardware,
    load_model,
    override_model,
    t5_sizes,
    validate_stack,
)
from ..specs.implementation import IMPLEMENTATIONS
from ..specs.layout import SHARD_KV, Layout, check_tensor_parallel

WORKLOAD_INT_FIELDS = ("batch", "passages", "passage_len", "target_len")
MODEL_INT_FIELDS = ("encoder_layers", "decoder_layers", "kv_heads", "cross_attn_every")
INT_FIELDS = WORKLOAD_INT_FIELDS + MODEL_INT_FIELDS
CATEGORICAL_FIELDS = (
    "model", "encoder_size", "decoder_size", "hardware", "dtype", "overlap", "efficiency", "implementation",
    "shard_kv",
)
# Whole numbers that change the layout: each value is a group of its own, like the
# categorical fields (0 in encoder_chips / decoder_chips: no separate pools).
LAYOUT_FIELDS = ("chips", "tensor_parallel", "encoder_chips", "decoder_chips")
GROUP_FIELDS = CATEGORICAL_FIELDS + LAYOUT_FIELDS
VARY_FIELDS = GROUP_FIELDS + INT_FIELDS

# Column order of the result: inputs, per-sample totals, memory, bound, resolved model.
INPUT_COLUMNS = (
    "model",
    "encoder_size",
    "decoder_size",
    "encoder_layers",
    "decoder_layers",
    "kv_heads",
    "cross_attn_every",
    "hardware",
    "dtype",
    "overlap",
    "efficiency",
    "implementation",
    "chips",
    "tensor_parallel",
    "shard_kv",
    "encoder_chips",
    "decoder_chips",
    "batch",
    "passages",
    "passage_len",
    "target_len",
)
FIGURE_COLUMNS = (
    "encoder_flops",
    "cross_kv_flops",
    "decoder_flops",
    "total_flops",
    "encoder_bytes",
    "cross_kv_bytes",
    "decoder_bytes",
    "total_bytes",
    "encoder_time_s",
    "cross_kv_time_s",
    "decoder_time_s",
    "time_per_sample_s",
    "time_per_step_s",
    "samples_per_s",
    "batch_time_s",
    "tokens_per_s",
    "decoder_share_of_time",
    "comm_time_s",
    "comm_exposed_s",
    "chip_seconds_per_sample",
    "peak_memory_bytes",
)
RESOLVED_COLUMNS = ("decoder_kv_heads", "decoder_cross_attn_every", "decoder_cross_layers")
COLUMNS = (
    INPUT_COLUMNS + FIGURE_COLUMNS + ("max_batch", "fits", "decoder_bound", "shipped") + RESOLVED_COLUMNS
    + ("error",)
)
SHIPPED = ("encoder_outputs", "cross_kv")  # codes 0, 1; -1 (missing): no separate pools
BOUNDS = ("compute", "memory")

MAX_RANGE_VALUES = 1_000_000  # per field, before the grid is built
MAX_GRID_POINTS = 10_000_000  # about 40 columns x 8 bytes each: ~3 GB, twice that while building
_T_BLOCK_ELEMENTS = 1 << 21  # step block size: elements of the largest per-step array


# --------------------------------------------------------------------------- parsing


def parse_vary(specs: Iterable[str]) -> dict[str, list]:
    """``["batch=1,8,32", "passages=10:100:10", "hardware=tpu-v4,h100-sxm"]`` ->
    ``{"batch": [1, 8, 32], "passages": [10, 20, .., 100], "hardware": [...]}``.

    A value list is comma-separated; for whole-number fields an item ``a:b`` is every
    integer from a to b inclusive and ``a:b:s`` steps by s. Repeated values are kept
    once, in first-seen order. Field names may use dashes (``passage-len``). Raises
    :class:`SpecError` ``("--vary", field, problem)`` for an unknown or repeated field,
    an empty range, a value of the wrong kind or an unknown name.
    """
    out: dict[str, list] = {}
    for spec in specs:
        name, sep, text = str(spec).partition("=")
        field = name.strip().replace("-", "_")
        if not sep:
            raise SpecError("--vary", field or str(spec), f"expected FIELD=VALUES, got {spec!r}")
        if field not in VARY_FIELDS:
            raise SpecError("--vary", field, f"unknown field (known: {', '.join(VARY_FIELDS)})")
        if field in out:
            raise SpecError("--vary", field, "given more than once")
        items = [s.strip() for s in text.split(",")]
        if not text.strip() or any(not s for s in items):
            raise SpecError("--vary", field, f"empty value in {text!r}")
        values: list = []
        for item in items:
            values.extend(_parse_item(field, item) if field in INT_FIELDS + LAYOUT_FIELDS else [item])
        out[field] = values
    return check_vary(out)


def _parse_item(field: str, item: str) -> list[int]:
    parts = item.split(":")
    if len(parts) > 3:
        raise SpecError("--vary", field, f"{item!r}: a range is a:b or a:b:step")
    nums = []
    for p in parts:
        try:
            nums.append(int(p.strip()))
        except ValueError:
            raise SpecError("--vary", field, f"{p.strip()!r} is not a whole number") from None
    if len(nums) == 1:
        return nums
    start, stop, step = nums[0], nums[1], nums[2] if len(nums) == 3 else 1
    if step < 1:
        raise SpecError("--vary", field, f"{item!r}: the step must be at least 1")
    if stop < start:
        raise SpecError("--vary", field, f"{item!r} is an empty range ({stop} < {start})")
    if (stop - start) // step + 1 > MAX_RANGE_VALUES:
        raise SpecError("--vary", field, f"{item!r} has more than {MAX_RANGE_VALUES} values")
    return list(range(start, stop + 1, step))


def check_vary(vary: Mapping[str, Sequence]) -> dict[str, list]:
    """Validates a vary dict (as from :func:`parse_vary`, or built by hand): known
    fields, non-empty lists, whole numbers >= 1, known dtypes, overlaps, sizes, models
    and hardware. Returns a copy with duplicate values dropped."""
    return _check_vary(vary)[0]


def _check_vary(vary: Mapping[str, Sequence]) -> tuple[dict[str, list], dict[str, dict]]:
    """check_vary, and the models and hardware it loaded, by the name given."""
    out: dict[str, list] = {}
    loaded: dict[str, dict] = {"model": {}, "hardware": {}}
    sizes = None
    for field, values in vary.items():
        if field not in VARY_FIELDS:
            raise SpecError("--vary", field, f"unknown field (known: {', '.join(VARY_FIELDS)})")
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            values = [values]
        values = list(dict.fromkeys(values))
        if not values:
            raise SpecError("--vary", field, "no values")
        for v in values:
            if field in INT_FIELDS + LAYOUT_FIELDS:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise SpecError("--vary", field, f"{v!r} is not a whole number")
                if v < 1:
                    raise SpecError("--vary", field, f"must be at least 1, got {v}")
                continue
            if not isinstance(v, str) or not v.strip():
                raise SpecError("--vary", field, f"expected a name, got {v!r}")
            if field == "dtype" and v not in DTYPE_PRESETS:
                raise SpecError("--vary", field, f"unknown dtype {v!r} (known: {', '.join(DTYPE_PRESETS)})")
            if field == "overlap" and v not in OVERLAP_MODELS:
                raise SpecError("--vary", field, f"{v!r} is not one of {', '.join(OVERLAP_MODELS)}")
            if field == "efficiency" and v not in EFFICIENCY_MODELS:
                raise SpecError("--vary", field, f"{v!r} is not one of {', '.join(EFFICIENCY_MODELS)}")
            if field == "shard_kv" and v not in SHARD_KV:
                raise SpecError("--vary", field, f"{v!r} is not one of {', '.join(SHARD_KV)}")
            if field == "implementation" and v not in IMPLEMENTATIONS:
                raise SpecError("--vary", field, f"{v!r} is not one of {', '.join(IMPLEMENTATIONS)}")
            if field in ("encoder_size", "decoder_size"):
                sizes = sizes or t5_sizes()
                if v not in sizes:
                    raise SpecError(
                        "--vary", field, f"unknown T5 v1.1 size {v!r} (known: {', '.join(sizes)})"
                    )
            if field in ("model", "hardware"):
                try:
                    loaded[field][v] = (load_model if field == "model" else load_hardware)(v)
                except SpecError as err:
                    raise SpecError("--vary", field, f"{v!r}: {err}") from None
        out[field] = [int(v) for v in values] if field in INT_FIELDS + LAYOUT_FIELDS else values
    n = math.prod(len(v) for v in out.values())
    if n > MAX_GRID_POINTS:
        raise SpecError(
            "--vary",
            "",
            f"the grid has {n:,} configurations, more than the {MAX_GRID_POINTS:,} one sweep holds; split it",
        )
    return out, loaded


def dtype_label(wl: Workload) -> str:
    """The ``--dtype`` preset a workload was made from, or ``w/a/kv/compute`` dtypes."""
    key = (wl.weight_dtype, wl.act_dtype, wl.kv_dtype, wl.compute_dtype)
    for name, preset in DTYPE_PRESETS.items():
        if preset == key:
            return name
    return "/".join(key)


# --------------------------------------------------------------------------- sweep


def sweep(
    base_model: ModelSpec,
    base_hardware: Hardware,
    base_workload: Workload | None = None,
    vary: Mapping[str, Sequence] | None = None,
    settings: Settings | None = None,
    progress: bool = False,
    layout: Layout | None = None,
) -> pd.DataFrame:
    """The full grid of ``vary`` (field -> values) around the base configuration.

    Fields not varied keep the base value. A varied ``model`` replaces the base model
    (loaded by name or path); sizes, layers, kv heads and K then apply to it as in
    :func:`fidoperf.specs.override_model`. ``settings`` hold for every row unless
    ``overlap``, ``efficiency`` or ``implementation`` vary (an implementation of None
    is each chip's default, recorded per row). One row per configuration; see :data:`COLUMNS`.
    """
    base_workload = Workload() if base_workload is None else base_workload
    settings = Settings() if settings is None else settings
    layout = Layout() if layout is None else layout
    vary, loaded = _check_vary(vary or {})
    fields = list(vary)
    shape = tuple(len(vary[f]) for f in fields)
    n_rows = math.prod(shape)
    cat_fields = [f for f in fields if f in GROUP_FIELDS]
    num_fields = [f for f in fields if f in INT_FIELDS]
    nd = len(num_fields)

    # Every row is written by exactly one group, so the columns start empty.
    out = {c: np.empty(shape) for c in FIGURE_COLUMNS}
    # Whole numbers; max_batch and the resolved model are missing (NA) in error rows.
    out.update({c: np.empty(shape, np.int64) for c in INT_FIELDS + LAYOUT_FIELDS + ("max_batch",) + RESOLVED_COLUMNS})
    out.update({c: np.empty(shape, np.int32) for c in CATEGORICAL_FIELDS + ("error",)})
    out["fits"] = np.empty(shape, bool)
    out["decoder_bound"] = np.empty(shape, np.int8)
    out["shipped"] = np.empty(shape, np.int8)
    cats: dict[str, dict[str, int]] = {c: {} for c in CATEGORICAL_FIELDS + ("error",)}

    # Numeric axes: varied numeric field k lies along axis k; the trailing axis is the
    # decoding step t.
    axes = {}
    for k, f in enumerate(num_fields):
        sh = [1] * (nd + 1)
        sh[k] = len(vary[f])
        axes[f] = np.asarray(vary[f], dtype=float).reshape(sh)

    ctx = _Context(base_model, base_hardware, base_workload, settings, loaded, axes, nd, cats, layout)
    bar = _progress_bar(n_rows, progress)
    try:
        for combo in itertools.product(*(range(len(vary[f])) for f in cat_fields)):
            where = dict(zip(cat_fields, combo, strict=True))
            pick = {f: vary[f][i] for f, i in where.items()}
            # The trailing Ellipsis keeps a single row a (0-d) view, not a scalar.
            idx = tuple(where.get(f, slice(None)) for f in fields) + (Ellipsis,)
            dst = {c: a[idx] for c, a in out.items()}  # views: the group's rows
            _run_group(ctx, pick, dst)
            bar.update(math.prod(len(vary[f]) for f in num_fields))
    finally:
        bar.close()
    return _frame(out, cats, n_rows)


@dataclasses.dataclass
class _Context:
    base_model: ModelSpec
    base_hardware: Hardware
    base_workload: Workload
    settings: Settings
    loaded: dict
    axes: dict
    nd: int
    cats: dict
    layout: Layout
    models: dict = dataclasses.field(default_factory=dict)

    def code(self, col: str, value: str | None) -> int:
        if value is None:
            return -1
        return self.cats[col].setdefault(value, len(self.cats[col]))


def _progress_bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="config",
        unit_scale=True,
        file=sys.stderr,
        leave=False,
        disable=not (progress and sys.stderr.isatty()),
    )


def _run_group(ctx: _Context, pick: dict, dst: dict) -> None:
    """Evaluate one group (fixed categorical values) into ``dst``, views of its rows."""
    wl, nd = ctx.base_workload, ctx.nd
    model_name = pick.get("model", ctx.base_model.name)
    hw_name = pick.get("hardware", ctx.base_hardware.name)
    dtype = pick.get("dtype", dtype_label(wl))
    overlap = pick.get("overlap", ctx.settings.overlap)
    efficiency = pick.get("efficiency", ctx.settings.efficiency)
    impl_name = pick.get("implementation", ctx.settings.implementation)
    base = ctx.layout
    lay_fields = {
        "chips": pick.get("chips", base.chips),
        "tensor_parallel": pick.get("tensor_parallel", base.tensor_parallel),
        "shard_kv": pick.get("shard_kv", base.shard_kv),
        "encoder_chips": pick.get("encoder_chips", base.encoder_chips),
        "decoder_chips": pick.get("decoder_chips", base.decoder_chips),
    }
    for f in ("encoder_chips", "decoder_chips"):
        if lay_fields[f] == 0:
            lay_fields[f] = None
    error = model = layout = None
    try:
        key = (pick.get("model"), pick.get("encoder_size"), pick.get("decoder_size"))
        if key not in ctx.models:
            model = ctx.loaded["model"][key[0]] if key[0] is not None else ctx.base_model
            if key[1] is not None or key[2] is not None:
                model = override_model(model, encoder_size=key[1], decoder_size=key[2])
            ctx.models[key] = model
        model = ctx.models[key]
        hw = ctx.loaded["hardware"][hw_name] if "hardware" in pick else ctx.base_hardware
        if "dtype" in pick:
            w_dt, a_dt, c_dt, comp_dt = DTYPE_PRESETS[dtype]
        else:
            w_dt, a_dt, c_dt, comp_dt = wl.weight_dtype, wl.act_dtype, wl.kv_dtype, wl.compute_dtype
        hw.peak(comp_dt)  # a chip without this dtype: the whole group is infeasible
        impl_name = impl_name or hw.default_implementation
        layout = Layout(**lay_fields)
        if not layout.single_chip and hw.interconnect is None:
            raise SpecError(hw.path or hw.name, "interconnect",
                            f"a layout of {layout.total_chips} chips needs the profile's interconnect block")
        T = layout.tensor_parallel
        for stack, heads in (("encoder", model.encoder.num_heads), ("decoder", model.decoder.num_heads)):
            if heads % T:
                raise SpecError("layout", "tensor_parallel", f"{T} does not divide the {heads} heads of the {stack}")
    except SpecError as err:
        error = str(err)

    for col, value in (("model", model_name), ("hardware", hw_name), ("dtype", dtype), ("overlap", overlap),
                       ("efficiency", efficiency), ("implementation", impl_name), ("shard_kv", lay_fields["shard_kv"])):
        dst[col][...] = ctx.code(col, value)
    chips = (lay_fields["encoder_chips"] + lay_fields["decoder_chips"]
             if lay_fields["encoder_chips"] and lay_fields["decoder_chips"]
             else (lay_fields["chips"] or lay_fields["tensor_parallel"]))
    for col, value in (("chips", chips), ("tensor_parallel", lay_fields["tensor_parallel"]),
                       ("encoder_chips", lay_fields["encoder_chips"] or 0),
                       ("decoder_chips", lay_fields["decoder_chips"] or 0)):
        dst[col][...] = value
    for col, stack in (("encoder_size", "encoder"), ("decoder_size", "decoder")):
        size = getattr(model, stack).size if model is not None else None
        dst[col][...] = ctx.code(col, pick.get(col, size or None))

    # Numeric inputs: varied ones along their axis, the rest from the workload / model.
    base_values = {f: getattr(wl, f) for f in WORKLOAD_INT_FIELDS}
    if model is not None:
        enc, dec = model.encoder, model.decoder
        base_values.update(
            encoder_layers=enc.num_layers,
            decoder_layers=dec.num_layers,
            kv_heads=dec.num_kv_heads,
            cross_attn_every=dec.cross_attn_every,
        )
    X = {f: ctx.axes.get(f, float(base_values.get(f, 0))) for f in INT_FIELDS}
    for f in INT_FIELDS:
        dst[f][...] = _drop_t(X[f], nd)
    if error is not None:
        for col in FIGURE_COLUMNS:
            dst[col][...] = np.nan
        for col in ("max_batch",) + RESOLVED_COLUMNS:
            dst[col][...] = 0
        dst["fits"][...], dst["decoder_bound"][...], dst["shipped"][...] = False, -1, -1
        dst["error"][...] = ctx.code("error", error)
        return

    G, K, Ld = X["kv_heads"], X["cross_attn_every"], X["decoder_layers"]
    T = layout.tensor_parallel
    bad = (np.mod(model.decoder.num_heads, G) != 0) | (K > Ld)  # what validate_stack rejects
    bad = bad | ((np.mod(G, T) != 0) & (np.mod(T, G) != 0))  # T and the kv heads must divide one another
    bad = _drop_t(np.broadcast_to(bad, np.broadcast_shapes(np.shape(bad), (1,) * (nd + 1))), nd)
    dst["error"][...] = _error_codes(ctx, model, X, bad, T)
    group_settings = Settings(overlap=overlap, efficiency=efficiency, implementation=impl_name)
    dt = (DTYPE_BYTES[w_dt], DTYPE_BYTES[a_dt], DTYPE_BYTES[c_dt], comp_dt, a_dt)
    _evaluate(model, hw, dt, group_settings, X, nd, bad if bad.any() else None, dst, layout)


def _error_codes(ctx: _Context, model: ModelSpec, X: dict, bad, T: int = 1):
    """Error codes (-1: none) over the axes of ``bad``, with the message
    override_model (or the layout) would raise for each impossible (kv heads, K,
    decoder layers)."""
    codes = np.full(bad.size, -1, np.int32)
    if not bad.any():
        return codes.reshape(bad.shape)
    G, K, Ld = (
        np.broadcast_to(_drop_t(X[f], ctx.nd), bad.shape).reshape(-1)
        for f in ("kv_heads", "cross_attn_every", "decoder_layers")
    )
    seen: dict[tuple, int] = {}
    for i in np.flatnonzero(bad):
        key = (int(G[i]), int(K[i]), int(Ld[i]))
        if key not in seen:
            dec = dataclasses.replace(
                model.decoder, num_kv_heads=key[0], cross_attn_every=key[1], num_layers=key[2]
            )
            try:
                validate_stack(dec, "options", "decoder")
                check_tensor_parallel(T, dec.num_heads, dec.num_kv_heads, "layout", "decoder")
                msg = "options: decoder: invalid combination"  # not reached: `bad` mirrors the checks
            except SpecError as err:
                msg = str(err)
            seen[key] = ctx.code("error", msg)
        codes[i] = seen[key]
    return codes.reshape(bad.shape)


def _drop_t(x, nd: int):
    """Drop the trailing step axis (length 1 once the steps are summed)."""
    x = np.asarray(x)
    return x[..., 0] if x.ndim == nd + 1 else x


class _Sum:
    """Running sums over ops of FLOPs, bytes, time, interconnect time, and the time of
    compute-bound calls."""

    def __init__(self):
        self.flops = self.bytes = self.time = self.cbound = self.comm = 0.0

    def add(self, op, k, bound: bool = True) -> None:
        self.flops = self.flops + op.flops
        self.bytes = self.bytes + op.bytes
        self.time = self.time + k.time_s
        self.comm = self.comm + k.comm_s
        if bound:
            self.cbound = self.cbound + np.where(k.compute_s >= k.memory_s, k.time_s, 0.0)


def _times(op, args):
    hw, comp_dt, act_dt, settings = args
    return kernel_times(op, hw, comp_dt, act_dt, settings.efficiency, settings.overlap, settings.impl(hw))


def _sum_ops(ops, args, bound: bool = False) -> _Sum:
    s = _Sum()
    for op in ops:
        s.add(op, _times(op, args), bound=bound)
    return s


def _evaluate(
    model: ModelSpec, hw: Hardware, dt, settings: Settings, X: dict, nd: int, bad, dst: dict, layout: Layout
) -> None:
    """Write the figures of one group into ``dst``. ``X`` maps each numeric field to a
    float or an array with nd + 1 axes (the last, of length 1, is the decoding step);
    ``bad`` marks impossible rows (None: all possible), whose figures become NaN. The
    ops are those of one chip of a replica under ``layout`` (fidoperf.costmodel.parallel)."""
    w, a, c, comp_dt, act_dt = dt
    enc, dec = model.encoder, model.decoder
    Tp = layout.tensor_parallel
    cd0 = parallel.chip_dims(model, dataclasses.replace(layout, shard_kv="heads"))
    De, He, Ge, dke, Fe, ne = cd0.encoder
    Dd, Hd, _, dkd, Fd, nd_in = cd0.decoder
    V_out = cd0.vocab_out
    B, P, N, T = X["batch"], X["passages"], X["passage_len"], X["target_len"]
    G, K, Le, Ld = X["kv_heads"], X["cross_attn_every"], X["encoder_layers"], X["decoder_layers"]
    G_c = np.where(Tp <= G, np.maximum(1, G // Tp), 1) if Tp > 1 else G  # kv heads one chip holds
    batch_sharded = layout.shard_kv == "batch" and Tp > 1
    cross_b = np.ceil(B / Tp) if batch_sharded else B
    cross_h, cross_g = (dec.num_heads, G) if batch_sharded else (Hd, G_c)
    Lc = np.floor_divide(Ld, K)
    # NaN in the cross-layer count makes every figure of an impossible row NaN for free.
    nan_mask = 1.0 if bad is None else np.where(bad, np.nan, 1.0)
    Lc_m = Lc if bad is None else Lc * np.expand_dims(nan_mask, -1)
    args = (hw, comp_dt, act_dt, settings)
    impl, rows = settings.impl(hw), flash_rows(hw)

    # Encoder: embedding, L identical layers, final norm. Cross-K/V: one projection per
    # decoder layer with cross-attention.
    embed_final = _sum_ops(
        [*costs.encoder_embed(De, B, P, N, w, a, impl), costs.encoder_final(De, B, P, N, w, a, impl)], args
    )
    layer = _sum_ops(costs.encoder_layer(De, He, Ge, dke, Fe, ne, B, P, N, w, a, impl, rows)
                     + parallel.encoder_layer_comm(B * P * N, De, a, Tp), args)
    kv = _sum_ops(costs.cross_kv_layer(De, cross_g, dkd, cross_b, P, N, w, a, c, impl), args)
    # Decoder: embedding and head once a step; layers summed over the steps 1 .. T,
    # split into the ops every layer has and those only cross-attention layers add.
    head = _sum_ops([*costs.decoder_embed(Dd, B, w, a, impl), *costs.decoder_head(Dd, V_out, B, w, a, impl),
                     *parallel.head_comm(B, Tp)], args, bound=True)
    plain, extra = _decoder_layer_steps(
        lambda t, cross: costs.decoder_layer(Dd, Hd, G_c, dkd, Fd, nd_in, B, P, N, t, cross, w, a, c, impl, rows,
                                             cross_attention=(cross_b, cross_h, cross_g))
        + parallel.decoder_layer_comm(B, Dd, Hd, dkd, a, Tp, cross, batch_sharded),
        (B, P, N, G),
        T,
        nd,
        args,
    )

    def sq(x):
        return _drop_t(x, nd)

    Bs, Ts = sq(B), sq(T)

    # Batch-level sums; the decoder ones are the only full-grid arrays, written in place.
    def decoder_total(name, into):
        fixed = sq(T * getattr(head, name) + Ld * getattr(plain, name))
        np.multiply(sq(Lc_m), sq(getattr(extra, name)), out=into)
        return np.add(into, fixed, out=into)

    enc = {n: sq(getattr(embed_final, n) + Le * getattr(layer, n)) for n in ("flops", "bytes", "time", "comm")}
    kvs = {n: sq(Lc_m * getattr(kv, n)) for n in ("flops", "bytes", "time", "comm")}
    for n, col in (("flops", "decoder_flops"), ("bytes", "decoder_bytes"), ("time", "decoder_time_s")):
        decoder_total(n, dst[col])
    dec_comm = decoder_total("comm", np.empty(dst["decoder_time_s"].shape))
    dec_t = dst["decoder_time_s"]  # batch level until divided by B below
    np.add(enc["time"] + kvs["time"], dec_t, out=dst["batch_time_s"])
    batch = dst["batch_time_s"]
    comm = dec_comm + enc["comm"] + kvs["comm"]
    ship_kv = None
    if layout.pooled:
        shipped = {}
        for what in parallel.SHIP_OPTIONS:
            nbytes = parallel.ship_bytes(what, B, P * N, De, Lc, G, dkd, a, c)
            shipped[what] = sq(_times(parallel.transfer(what, nbytes, Tp), args).time_s)
        ship_kv = shipped["cross_kv"] < shipped["encoder_outputs"]  # ties: the encoder outputs
        transfer = np.where(ship_kv, shipped["cross_kv"], shipped["encoder_outputs"])
        np.add(batch, transfer, out=batch)
        enc_stage = enc["time"] + np.where(ship_kv, kvs["time"], 0.0)
        dec_stage = dec_t + np.where(ship_kv, 0.0, kvs["time"])
        er, dr = layout.encoder_replicas, layout.decoder_replicas
        rate = np.minimum(np.minimum(er * Bs / enc_stage, dr * Bs / dec_stage),
                          np.where(transfer > 0, min(er, dr) * Bs / np.where(transfer > 0, transfer, 1.0), np.inf))
        np.copyto(dst["samples_per_s"], rate)
        hidden = np.minimum(transfer, np.maximum(enc_stage / er, dec_stage / dr))
        comm = comm + transfer
        np.copyto(dst["shipped"], np.where(ship_kv, 1, 0), casting="unsafe")
    else:
        np.divide(layout.replicas * Bs, batch, out=dst["samples_per_s"])
        hidden = 0.0
        dst["shipped"][...] = -1
    np.divide(dec_t, Ts, out=dst["time_per_step_s"])
    np.divide(dec_t, batch, out=dst["decoder_share_of_time"])
    np.multiply(dst["samples_per_s"], Ts, out=dst["tokens_per_s"])
    np.divide(batch, Bs, out=dst["time_per_sample_s"])
    np.divide(comm, Bs, out=dst["comm_time_s"])
    np.divide(comm - hidden, Bs, out=dst["comm_exposed_s"])
    np.divide(layout.total_chips, dst["samples_per_s"], out=dst["chip_seconds_per_sample"])
    # The roof that binds for most of the decoder time (each op call classified by its
    # larger term, as in the op table); ties go to memory.
    cbound = decoder_total("cbound", np.empty(dec_t.shape))
    np.less_equal(2 * cbound, dec_t, out=dst["decoder_bound"], casting="unsafe")
    for n, phase in (("flops", "flops"), ("bytes", "bytes"), ("time", "time_s")):
        np.multiply(enc[n] / Bs, nan_mask, out=dst[f"encoder_{phase}"])
        np.divide(kvs[n], Bs, out=dst[f"cross_kv_{phase}"])
        np.divide(dst[f"decoder_{phase}"], Bs, out=dst[f"decoder_{phase}"])
        total = dst[f"total_{phase}"] if phase != "time_s" else None
        if total is not None:
            np.add(dst[f"encoder_{phase}"], dst[f"cross_kv_{phase}"], out=total)
            np.add(total, dst[f"decoder_{phase}"], out=total)
    for col, value in zip(RESOLVED_COLUMNS, (G, K, Lc), strict=True):
        np.copyto(dst[col], sq(value), casting="unsafe")
    cd = parallel.ChipDims(Tp, cd0.encoder, (Dd, Hd, G_c, dkd, Fd, nd_in), V_out,
                           1.0 / Tp if batch_sharded else 1.0, cross_h, cross_g)
    _write_memory(cd, model.vocab_size, X, Lc, G, w, a, c, nd, dst, impl.flash, layout, hw.hbm_capacity_bytes,
                  ship_kv)
    if bad is not None:
        np.copyto(dst["peak_memory_bytes"], np.nan, where=bad)
        np.copyto(dst["fits"], False, where=bad)
        np.copyto(dst["decoder_bound"], -1, where=bad)


def _decoder_layer_steps(layer_ops, arg_fields, T, nd: int, args) -> tuple[_Sum, _Sum]:
    """A decoder layer summed over its steps t = 1 .. T, for every configuration: the
    ops of a layer without cross-attention, and those a cross-attention layer adds.

    ``layer_ops(t, cross)`` gives the ops with t an array along the trailing axis. Ops
    whose figures come out without that axis do not depend on t and count T times; the
    others are summed step by step with a cumulative sum read at each row's T (the same
    as masking t > T). Steps go in blocks so no per-step array passes ~2M elements.
    """
    T_arr = np.asarray(T, dtype=float)
    T_arr = T_arr.reshape(T_arr.shape if T_arr.ndim == nd + 1 else (1,) * (nd + 1))
    max_t = int(T_arr.max())
    others = math.prod(np.broadcast_shapes(*(np.shape(x) for x in arg_fields)) or (1,))
    block = int(min(max_t, max(2, _T_BLOCK_ELEMENTS // max(1, others))))
    names = ("flops", "bytes", "time", "cbound", "comm")
    fixed = {"plain": _Sum(), "extra": _Sum()}
    carry = {k: dict.fromkeys(names, 0.0) for k in fixed}
    summed = {k: dict.fromkeys(names, 0.0) for k in fixed}
    plan = None  # per op of the cross-attention layer: (plain or extra, depends on t)
    for t0 in range(0, max_t, block):
        t1 = min(t0 + block, max_t)
        t = np.arange(t0 + 1, t1 + 1, dtype=float).reshape((1,) * nd + (t1 - t0,))
        ops = layer_ops(t, True)
        steps = {"plain": _Sum(), "extra": _Sum()}
        if plan is None:
            # A layer with cross-attention has every op of one without, plus its own.
            shared = {op.op for op in layer_ops(t, False)}
            plan = []
            for op in ops:
                times = _times(op, args)
                # The first block has two steps or more (unless T = 1 everywhere, when
                # it does not matter), so an op that depends on t has a trailing axis > 1.
                dep = any(np.ndim(x) and np.shape(x)[-1] > 1 for x in (op.flops, op.bytes, times.time_s))
                kind = "plain" if op.op in shared else "extra"
                plan.append((kind, dep))
                (steps if dep else fixed)[kind].add(op, times)
        else:
            for op, (kind, dep) in zip(ops, plan, strict=True):
                if dep:
                    steps[kind].add(op, _times(op, args))
        # Cumulative sums over this block, read where this block holds the row's T.
        in_block = (T_arr > t0) & (T_arr <= t1)
        pos = (np.clip(T_arr, t0 + 1, t1) - t0 - 1).astype(np.intp)
        for kind, step in steps.items():
            for name in names:
                x = np.asarray(getattr(step, name), dtype=float)
                x = np.broadcast_to(x, np.broadcast_shapes(x.shape, t.shape))
                cum = carry[kind][name] + np.cumsum(x, axis=-1)
                picked = np.take_along_axis(cum, pos, axis=-1)
                summed[kind][name] = np.where(in_block, picked, summed[kind][name])
                carry[kind][name] = cum[..., -1:]
    out = []
    for kind in ("plain", "extra"):
        s = _Sum()
        for name in names:
            setattr(s, name, T * getattr(fixed[kind], name) + summed[kind][name])
        out.append(s)
    return out[0], out[1]


def _write_memory(cd, vocab: int, X: dict, Lc, G, w, a, c, nd: int, dst: dict, flash: bool, layout: Layout,
                  capacity, ship_kv) -> None:
    """Per-chip memory (fidoperf.costmodel.parallel.chip_memory) over the group's arrays,
    into peak_memory_bytes, max_batch and fits; with pools, for what each row ships."""
    args = (cd, (X["encoder_layers"], X["decoder_layers"], np.asarray(Lc, dtype=float)), vocab, G, layout,
            X["batch"], X["passages"], X["passage_len"], X["target_len"], w, a, c, capacity, flash)
    if ship_kv is None:
        m = parallel.chip_memory(*args)
    else:
        m_out = parallel.chip_memory(*args, ship="encoder_outputs")
        m_kv = parallel.chip_memory(*args, ship="cross_kv")
        pick = np.expand_dims(ship_kv, -1)
        m = {k: np.where(pick, m_kv[k], m_out[k]) for k in ("peak_bytes", "max_batch", "fits")}
    for col, key in (("peak_memory_bytes", "peak_bytes"), ("max_batch", "max_batch"), ("fits", "fits")):
        np.copyto(dst[col], _drop_t(np.asarray(m[key]), nd), casting="unsafe")


# --------------------------------------------------------------------------- frame


def _frame(out: dict, cats: dict, n_rows: int) -> pd.DataFrame:
    data: dict[str, Any] = {}
    missing = None
    for col in COLUMNS:
        x = out[col].reshape(n_rows)
        if col in cats:
            data[col] = pd.Categorical.from_codes(x, categories=list(cats[col]))
        elif col == "decoder_bound":
            data[col] = pd.Categorical.from_codes(x, categories=list(BOUNDS))
        elif col == "shipped":
            data[col] = pd.Categorical.from_codes(x, categories=list(SHIPPED))
        elif col == "max_batch" or col in RESOLVED_COLUMNS:
            if missing is None:
                missing = out["error"].reshape(n_rows) >= 0
            data[col] = pd.arrays.IntegerArray(x, missing)
        else:
            data[col] = x
    return pd.DataFrame(data, copy=False)


# --------------------------------------------------------------------------- selection


def best(
    df: pd.DataFrame,
    top: int = 10,
    time_limit_s: float | None = None,
    memory_limit_bytes: float | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """The ``top`` fastest rows by time per sample among those that fit the chip and
    meet the limits (batch latency ``batch_time_s`` <= time_limit_s, peak memory <=
    memory_limit_bytes), and the boolean mask of all rows that qualify."""
    ok = df["fits"] & df["error"].isna()
    if time_limit_s is not None:
        ok &= df["batch_time_s"] <= time_limit_s
    if memory_limit_bytes is not None:
        ok &= df["peak_memory_bytes"] <= memory_limit_bytes
    return df.loc[ok].nsmallest(top, "time_per_sample_s"), ok
