"""Storage dtypes and what each ``--dtype`` preset means."""

from __future__ import annotations

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

