"""The workload: what is served (passages, lengths, batch, dtypes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import SpecError
from .dtypes import DTYPE_BYTES, DTYPE_PRESETS

# --------------------------------------------------------------------------- workload

# Far beyond any FiD workload, and small enough that counts stay within 64-bit integers
# (predict checked at these bounds: no overflow, no negative or infinite total).
MAX_SIZE = 10**7  # batch, passages, tokens per passage, target tokens
MAX_TOKENS = 10**11  # encoder tokens of one batch


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
            if v > MAX_SIZE:
                raise SpecError("workload", name, f"must be at most {MAX_SIZE:,}, got {v:,}")
        if self.batch * self.passages * self.passage_len > MAX_TOKENS:
            raise SpecError("workload", "batch", f"batch x passages x passage length is "
                            f"{self.batch * self.passages * self.passage_len:,} tokens, over {MAX_TOKENS:,}")
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
