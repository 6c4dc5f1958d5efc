"""How a model is spread over chips: tensor parallelism, data-parallel replicas, and
separate encoder and decoder pools.

``Layout(chips=8, tensor_parallel=2)``: four replicas of the model, each split over two
chips Megatron-style (Shoeybi et al. 2019, arXiv 1909.08053: attention heads and the
MLP's inner width split, one all-reduce after each sub-layer). ``Layout(encoder_chips=2,
decoder_chips=6, tensor_parallel=2)``: the encoder runs on its own pool of two chips and
ships what the decoder needs to a pool of six (three decoder replicas of two chips).

``shard_kv``: how a tensor-parallel decoder splits the cross-attention keys and values.
``heads`` (the default): by key/value head, each chip holding G/T of them; when T exceeds
the G key/value heads (MQA, GQA) each chip holds a full copy of the one(s) its query
heads use, so the cache per chip stops shrinking. ``batch``: as Pope et al. do for
multi-query attention (arXiv 2211.05102, section 3.3), the keys and values are split
over the batch instead, each chip holding all G heads of B/T samples; the queries are
resharded from heads to batch and back with two all-to-alls per attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SpecError

SHARD_KV = ("heads", "batch")


@dataclass(frozen=True)
class Layout:
    """Chips and how the model is split over them (see the module docstring).

    chips            every chip used; with pools, encoder_chips + decoder_chips
                     (may be left out then). Default: tensor_parallel.
    tensor_parallel  T: chips that split one replica (of each pool) Megatron-style.
    shard_kv         "heads" or "batch": how the cross-attention K/V is split.
    encoder_chips,   separate pools: the encoder pool encodes and ships to the decoder
    decoder_chips    pool; both given, or neither.
    """

    chips: int | None = None
    tensor_parallel: int = 1
    shard_kv: str = "heads"
    encoder_chips: int | None = None
    decoder_chips: int | None = None

    def __post_init__(self):
        for name in ("chips", "tensor_parallel", "encoder_chips", "decoder_chips"):
            v = getattr(self, name)
            if v is None and name != "tensor_parallel":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError("layout", name, f"must be a whole number of at least 1, got {v!r}")
        if self.shard_kv not in SHARD_KV:
            raise SpecError("layout", "shard_kv", f"must be one of {', '.join(SHARD_KV)}, got {self.shard_kv!r}")
        T = self.tensor_parallel
        if (self.encoder_chips is None) != (self.decoder_chips is None):
            raise SpecError("layout", "encoder_chips" if self.encoder_chips is None else "decoder_chips",
                            "separate pools need both encoder_chips and decoder_chips")
        if self.pooled:
            total = self.encoder_chips + self.decoder_chips
            if self.chips is not None and self.chips != total:
                raise SpecError("layout", "chips", f"{self.chips} chips given, but the pools use "
                                                   f"{self.encoder_chips} + {self.decoder_chips} = {total}")
            for name in ("encoder_chips", "decoder_chips"):
                if getattr(self, name) % T:
                    raise SpecError("layout", name, f"tensor parallelism {T} does not divide the "
                                                    f"{getattr(self, name)} chips of the pool")
        else:
            chips = T if self.chips is None else self.chips
            if chips % T:
                raise SpecError("layout", "tensor_parallel", f"{T} does not divide the {chips} chips")

    @property
    def pooled(self) -> bool:
        return self.encoder_chips is not None

    @property
    def total_chips(self) -> int:
        if self.pooled:
            return self.encoder_chips + self.decoder_chips
        return self.tensor_parallel if self.chips is None else self.chips

    @property
    def replicas(self) -> int:
        """Data-parallel copies (colocated layouts; pools have their own, below)."""
        return self.total_chips // self.tensor_parallel if not self.pooled else self.decoder_replicas

    @property
    def encoder_replicas(self) -> int:
        return (self.encoder_chips if self.pooled else self.total_chips) // self.tensor_parallel

    @property
    def decoder_replicas(self) -> int:
        return (self.decoder_chips if self.pooled else self.total_chips) // self.tensor_parallel

    @property
    def single_chip(self) -> bool:
        return self.total_chips == 1

    def as_dict(self) -> dict:
        return {"chips": self.total_chips, "tensor_parallel": self.tensor_parallel, "shard_kv": self.shard_kv,
                "encoder_chips": self.encoder_chips, "decoder_chips": self.decoder_chips,
                "replicas": None if self.pooled else self.replicas,
                "encoder_replicas": self.encoder_replicas if self.pooled else None,
                "decoder_replicas": self.decoder_replicas if self.pooled else None}

    def label(self) -> str:
        if self.pooled:
            return f"enc {self.encoder_chips} + dec {self.decoder_chips} chips, TP {self.tensor_parallel}"
        reps = self.replicas
        return f"{self.total_chips} chip{'s' if self.total_chips > 1 else ''}, TP {self.tensor_parallel}" + (
            f" x {reps} replicas" if reps > 1 else "")


def check_tensor_parallel(T: int, heads: int, kv_heads: int, where: str, stack: str) -> None:
    """Megatron-style splitting needs T to divide the query heads, and the key/value heads
    either divided by T or dividing it (then each kv head is held by T/G chips)."""
    if heads % T:
        raise SpecError(where, "tensor_parallel", f"{T} does not divide the {heads} heads of the {stack}")
    if kv_heads % T and T % kv_heads:
        raise SpecError(where, "tensor_parallel", f"{T} and the {kv_heads} key/value heads of the {stack} do not "
                                                  "divide one another")


def kv_heads_per_chip(kv_heads: int, T: int) -> int:
    """Key/value heads one chip holds: G/T, or 1 when T exceeds G (replicated)."""
    return max(1, kv_heads // T) if T <= kv_heads else 1


def ceil_div(a, b):
    return math.ceil(a / b)
