"""Specs: hardware profiles, model architectures and workloads, read from YAML and validated once.

Data flows one way: YAML -> the frozen dataclasses here -> pure cost functions
(:mod:`fidoperf.costs`) -> DataFrames (:mod:`fidoperf.prediction`). Every problem in a
file raises :class:`~fidoperf.errors.SpecError` naming the file and the field.

Units: FLOP/s, bytes (decimal: 1 GB = 1e9 B; GiB = 2**30 B), bytes/s, seconds, W.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

# Bytes per element of each storage dtype. "tf32" is stored as fp32 and only computed
# on tensor cores at the TF32 rate.
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

# What `--dtype X` means: (weights, activations, KV cache, matmul compute rate).
# int8 is W8A8: int8 weights and an int8 matmul rate; activations and KV caches stay
# bf16 (the cost of quantising activations on the fly is left out).
DTYPE_PRESETS = {
    "bf16": ("bf16", "bf16", "bf16", "bf16"),
    "fp16": ("fp16", "fp16", "fp16", "fp16"),
    "fp32": ("fp32", "fp32", "fp32", "fp32"),
    "tf32": ("fp32", "fp32", "fp32", "tf32"),
    "int8": ("int8", "bf16", "bf16", "int8"),
    "fp8": ("fp8", "bf16", "bf16", "fp8"),
}

OP_KINDS = ("matmul", "attention", "softmax", "vector", "gather")
EFFICIENCY_KEYS = ("compute", "memory") + tuple(
    f"{k}_{r}" for k in OP_KINDS for r in ("compute", "memory")
)
CURVE_AXES = ("flops", "bytes", "rows")


def _data_dir(name: str) -> Path:
    """Folder of the shipped YAML files (`hardware`, `models`): inside the package in
    an installed wheel, at the top of the checkout in an editable install."""
    here = Path(__file__).resolve().parent
    installed = here / name
    return installed if installed.is_dir() else here.parent / name


# --------------------------------------------------------------------------- reading YAML


def read_yaml(path: Path | str) -> dict[str, Any]:
    """``yaml.safe_load`` a file that must hold a mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(path, "", f"cannot read file ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SpecError(path, "", f"malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(path, "", "expected a mapping of fields at the top level")
    return data


class _Fields:
    """Reads typed fields out of one mapping, rejecting unknown and missing keys."""

    def __init__(self, data: Mapping[str, Any], where: str, prefix: str = ""):
        if not isinstance(data, Mapping):
            raise SpecError(where, prefix.rstrip(".") or "(top)", "expected a mapping")
        self.data, self.where, self.prefix = data, where, prefix
        self.seen: set[str] = set()

    def err(self, key: str, problem: str) -> SpecError:
        return SpecError(self.where, self.prefix + key, problem)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ..., required: bool = True) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is not ...:
            return default
        raise self.err(key, "missing required field")

    def str(self, key: str, default: Any = ...) -> str:
        value = self.raw(key, default)
        if value is None or not isinstance(value, str) or not value.strip():
            if value is default and default is not ...:
                return value
            raise self.err(key, f"expected a non-empty string, got {value!r}")
        return value

    def int(self, key: str, default: Any = ..., minimum: int = 1) -> int:
        value = self.raw(key, default)
        if value is default and default is not ... and value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected a whole number, got {value!r}")
        if value < minimum:
            raise self.err(key, f"must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any = ..., positive: bool = True) -> float:
        value = self.raw(key, default)
        return _as_number(value, self.err, key, positive)

    def bool(self, key: str, default: Any = ...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.err(key, f"expected true or false, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.err(str(unknown[0]), "unknown field")


def _as_number(value: Any, err, key: str, positive: bool = True) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e12 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise err(key, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(key, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise err(key, f"expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise err(key, f"must be positive, got {value!r}")
    return float(value)


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


def _sourced(f: _Fields, key: str, nullable: bool = False, required: bool = True) -> Sourced | None:
    if not f.has(key) and not required:
        f.seen.add(key)
        return None
    g = _Fields(f.raw(key), f.where, f.prefix + key + ".")
    value = g.raw("value")
    if not (nullable and value is None):
        value = _as_number(value, g.err, "value")
    out = Sourced(value, g.str("source"), g.str("note", ""))
    g.done()
    return out


def _curve(raw: Any, where: str, key: str) -> Curve:
    g = _Fields(raw, where, key + ".")
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
        parsed.append((_as_number(p[0], g.err, f"points[{i}][0]"), _as_number(p[1], g.err, f"points[{i}][1]")))
    if any(b[0] <= a[0] for a, b in zip(parsed, parsed[1:])):
        raise g.err("points", "sizes must be strictly increasing")
    if not source:
        raise g.err("source", "an efficiency curve must name its source")
    g.done()
    return Curve(tuple(parsed), axis, source)


def _overhead(f: _Fields, key: str) -> float:
    """A fixed time in seconds, measured (with a source) or 0."""
    o = _Fields(f.raw(key, {"value": 0.0, "source": "none"}), f.where, key + ".")
    value = _as_number(o.raw("value"), o.err, "value", positive=False)
    if value < 0:
        raise o.err("value", f"must not be negative, got {value}")
    if value and not o.str("source", ""):
        raise o.err("source", f"a {key} other than 0 must name its source")
    o.str("source", "")
    o.str("note", "")
    o.done()
    return value


def hardware_from_dict(data: Mapping[str, Any], where: str) -> Hardware:
    f = _Fields(data, where)
    name = f.str("name")
    kind = f.str("kind", "datasheet")
    if kind not in ("datasheet", "measured"):
        raise f.err("kind", f"must be 'datasheet' or 'measured', got {kind!r}")
    peaks_raw = _Fields(f.raw("peak_flops_per_s"), where, "peak_flops_per_s.")
    peaks, sources = {}, {}
    for dtype in list(peaks_raw.data):
        if dtype not in DTYPE_BYTES:
            raise peaks_raw.err(str(dtype), f"unknown dtype (known: {', '.join(DTYPE_BYTES)})")
        s = _sourced(peaks_raw, dtype)
        peaks[dtype] = s.value
        sources[f"peak_flops_per_s.{dtype}"] = s
    if not peaks:
        raise f.err("peak_flops_per_s", "needs at least one dtype")
    mem = _Fields(f.raw("memory"), where, "memory.")
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
    e = _Fields(eff_raw, where, "efficiency.")
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
    if kind == "measured":
        m = _Fields(measured, where, "measured.")
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
    return sorted(p.stem for p in _data_dir("hardware").glob("*.yaml"))


def load_hardware(name_or_path: str | Path) -> Hardware:
    """A shipped profile by name (``tpu-v4``) or a YAML file by path."""
    path = _resolve(name_or_path, "hardware", hardware_names)
    hw = hardware_from_dict(read_yaml(path), str(path))
    return hw


def _resolve(name_or_path: str | Path, folder: str, names) -> Path:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise SpecError(text, "", "no such file")
        return path
    path = _data_dir(folder) / f"{text}.yaml"
    if not path.is_file():
        raise SpecError(
            f"--{'model' if folder == 'models' else folder}", "",
            f"unknown {folder.rstrip('s')} {text!r} (known: {', '.join(names())}; or give a path to a YAML file)",
        )
    return path


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class StackSpec:
    """One transformer stack (encoder or decoder), in flaxformer's T5 names."""

    num_layers: int  # L
    emb_dim: int  # D, the residual width
    num_heads: int  # H, query heads
    num_kv_heads: int  # G, key/value heads: H = MHA, 1 = MQA, else GQA
    head_dim: int  # d_kv
    mlp_dim: int  # F
    gated_mlp: bool = True  # gated-GELU (T5 v1.1): wi_0, wi_1, wo; else wi, wo
    cross_attn_every: int = 0  # K: decoder layer i has cross-attention when (i+1) % K == 0; 0 = none
    size: str = ""  # T5 size it was built from, if any

    @property
    def mlp_in_mats(self) -> int:
        return 2 if self.gated_mlp else 1

    @property
    def num_cross_layers(self) -> int:
        return self.num_layers // self.cross_attn_every if self.cross_attn_every else 0

    def has_cross_attn(self, layer: int) -> bool:
        """Flaxformer FiDO: layer i (0-based) has cross-attention when (i+1) % K == 0."""
        return bool(self.cross_attn_every) and (layer + 1) % self.cross_attn_every == 0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    encoder: StackSpec
    decoder: StackSpec
    vocab_size: int
    description: str = ""
    source: str = ""
    path: str = ""

    def replace(self, **changes) -> ModelSpec:
        return dataclasses.replace(self, **changes)


STACK_FIELDS = ("num_layers", "emb_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")


@functools.lru_cache(maxsize=1)
def t5_family() -> dict[str, Any]:
    """The T5 v1.1 sizes and vocabulary (models/sizes/t5-v1.1.yaml)."""
    return read_yaml(_data_dir("models") / "sizes" / "t5-v1.1.yaml")


def t5_sizes() -> dict[str, dict[str, Any]]:
    return t5_family()["sizes"]


def _stack(raw: Any, where: str, key: str, is_decoder: bool, sizes: Mapping[str, Any]) -> StackSpec:
    f = _Fields(raw, where, key + ".")
    values: dict[str, Any] = {}
    size = f.str("size", None)
    if size is not None:
        if size not in sizes:
            raise f.err("size", f"unknown T5 v1.1 size {size!r} (known: {', '.join(sizes)})")
        values.update(sizes[size])
    for name in STACK_FIELDS:
        if f.has(name) or name not in values:
            if name == "num_kv_heads" and not f.has(name):
                continue
            values[name] = f.int(name)
    values.setdefault("num_kv_heads", values["num_heads"])
    gated = f.bool("gated_mlp", True)
    every = f.int("cross_attn_every", 1, minimum=1) if is_decoder else 0
    f.done()
    spec = StackSpec(**{k: values[k] for k in STACK_FIELDS}, gated_mlp=gated,
                     cross_attn_every=every, size=size or "")
    validate_stack(spec, where, key)
    return spec


def validate_stack(s: StackSpec, where: str, key: str) -> None:
    """Checks that hold whatever the source (file or CLI override)."""
    for name in STACK_FIELDS:
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(where, f"{key}.{name}", f"must be a whole number of at least 1, got {v!r}")
    if s.num_heads % s.num_kv_heads:
        raise SpecError(where, f"{key}.num_kv_heads",
                        f"{s.num_kv_heads} key/value heads do not divide {s.num_heads} query heads")
    if s.cross_attn_every > s.num_layers:
        raise SpecError(where, f"{key}.cross_attn_every",
                        f"period {s.cross_attn_every} is larger than the {s.num_layers} decoder layers "
                        "(no layer would have cross-attention)")


def model_from_dict(data: Mapping[str, Any], where: str) -> ModelSpec:
    family = t5_family()
    sizes = family["sizes"]
    f = _Fields(data, where)
    model = ModelSpec(
        name=f.str("name"),
        description=f.str("description", ""),
        source=f.str("source", ""),
        vocab_size=f.int("vocab_size", family["vocab_size"]),
        encoder=_stack(f.raw("encoder"), where, "encoder", False, sizes),
        decoder=_stack(f.raw("decoder"), where, "decoder", True, sizes),
        path=str(where),
    )
    f.done()
    return model


def model_names() -> list[str]:
    return sorted(p.stem for p in _data_dir("models").glob("*.yaml"))


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A shipped model by name (``fido-base``) or a YAML file by path."""
    path = _resolve(name_or_path, "models", model_names)
    return model_from_dict(read_yaml(path), str(path))


def override_model(
    model: ModelSpec,
    *,
    encoder_size: str | None = None,
    decoder_size: str | None = None,
    kv_heads: int | None = None,
    cross_attn_every: int | None = None,
    decoder_layers: int | None = None,
    encoder_layers: int | None = None,
) -> ModelSpec:
    """A what-if variant. Sizes replace the shape of a stack but keep its attention
    variant (kv heads clamp to the new head count when MQA/MHA, and K to the layers)."""
    sizes = t5_sizes()
    enc, dec = model.encoder, model.decoder
    changed = False

    def resize(stack: StackSpec, size: str, option: str) -> StackSpec:
        if size not in sizes:
            raise SpecError(option, "", f"unknown T5 v1.1 size {size!r} (known: {', '.join(sizes)})")
        s = sizes[size]
        kv = s["num_heads"] if stack.num_kv_heads == stack.num_heads else stack.num_kv_heads
        if s["num_heads"] % kv:
            kv = 1
        every = min(stack.cross_attn_every, s["num_layers"]) if stack.cross_attn_every else 0
        return dataclasses.replace(stack, **{k: s[k] for k in STACK_FIELDS if k != "num_kv_heads"},
                                   num_kv_heads=kv, cross_attn_every=every, size=size)

    if encoder_size is not None:
        enc, changed = resize(enc, encoder_size, "--encoder-size"), True
    if decoder_size is not None:
        dec, changed = resize(dec, decoder_size, "--decoder-size"), True
    if encoder_layers is not None:
        enc, changed = dataclasses.replace(enc, num_layers=encoder_layers), True
    if decoder_layers is not None:
        dec, changed = dataclasses.replace(dec, num_layers=decoder_layers), True
    if kv_heads is not None:
        dec, changed = dataclasses.replace(dec, num_kv_heads=kv_heads), True
    if cross_attn_every is not None:
        dec, changed = dataclasses.replace(dec, cross_attn_every=cross_attn_every), True
    if not changed:
        return model
    where = "options"
    validate_stack(enc, where, "encoder")
    validate_stack(dec, where, "decoder")
    if dec.cross_attn_every < 1:
        raise SpecError(where, "decoder.cross_attn_every", f"must be at least 1, got {dec.cross_attn_every}")
    return model.replace(encoder=enc, decoder=dec, name=model.name + "*")


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """What is served. Defaults: the FiDO paper's setting as far as it is known.

    40 passages follows the paper; 256 tokens per passage (question included), 32
    target tokens and batch 24 are assumptions (see README, "Defaults").
    """

    passages: int = 40  # P
    passage_len: int = 256  # N_p, tokens per passage, question included
    target_len: int = 32  # T, generated tokens (greedy, one per decoding step)
    batch: int = 24  # B, samples decoded together
    weight_dtype: str = "bf16"
    act_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    compute_dtype: str = "bf16"  # which peak of the hardware the matmuls run at

    def __post_init__(self):
        for name in ("passages", "passage_len", "target_len", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError("workload", name, f"must be a whole number of at least 1, got {v!r}")
        for name in ("weight_dtype", "act_dtype", "kv_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPE_BYTES:
                raise SpecError("workload", name,
                                f"unknown dtype {getattr(self, name)!r} (known: {', '.join(DTYPE_BYTES)})")

    @classmethod
    def with_dtype(cls, dtype: str = "bf16", **fields) -> Workload:
        if dtype not in DTYPE_PRESETS:
            raise SpecError("--dtype", "", f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_PRESETS)})")
        w, a, kv, c = DTYPE_PRESETS[dtype]
        return cls(weight_dtype=w, act_dtype=a, kv_dtype=kv, compute_dtype=c, **fields)

    def replace(self, **changes) -> Workload:
        return dataclasses.replace(self, **changes)

    @property
    def encoder_tokens(self) -> int:
        """Tokens of all passages of one sample (n_s in the FiDO paper)."""
        return self.passages * self.passage_len
