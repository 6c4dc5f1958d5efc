"""Model architectures: T5 v1.1 encoder and decoder stacks in flaxformer's names, from YAML."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .yamlio import Fields, data_dir, read_yaml, resolve_path

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
    path = data_dir("models") / "sizes" / "t5-v1.1.yaml"
    return check_family(read_yaml(path), str(path))


def check_family(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A table of T5 sizes, checked: ``vocab_size``, and ``sizes`` mapping each name to
    the stack fields but ``num_kv_heads`` (whole numbers >= 1)."""
    f = Fields(data, where)
    f.str("source", "")
    f.int("vocab_size")
    sizes = Fields(f.raw("sizes"), where, "sizes.")
    for name in sizes.data:
        if not isinstance(name, str):
            raise sizes.err(name, "a size name must be text")
        g = Fields(sizes.raw(name), where, f"sizes.{name}.")
        for key in STACK_FIELDS:
            if key != "num_kv_heads" or g.has(key):
                g.int(key)
        g.done()
    if not sizes.data:
        raise f.err("sizes", "needs at least one size")
    f.done()
    return dict(data)


def t5_sizes() -> dict[str, dict[str, Any]]:
    return t5_family()["sizes"]


def _stack(raw: Any, where: str, key: str, is_decoder: bool, sizes: Mapping[str, Any]) -> StackSpec:
    f = Fields(raw, where, key + ".")
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
    f = Fields(data, where)
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
    return sorted(p.stem for p in data_dir("models").glob("*.yaml"))


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A shipped model by name (``fido-base``) or a YAML file by path."""
    path = resolve_path(name_or_path, "models", model_names)
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


