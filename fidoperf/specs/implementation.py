"""How the kernels of a layer are implemented: the presets `--implementation` chooses.

A prediction is always of some implementation: the same model on the same chip runs
10-20x apart between a tuned serving engine and PyTorch eager (FasterTransformer
against Hugging Face T5 on an A100, NVIDIA/FasterTransformer docs/t5_guide.md). Each
preset is a documented bundle of choices; every output names the preset it used
(``settings.implementation`` in JSON).

``attention``
    ``unfused``: the logits ``Q K^T`` are one batched matrix product written to main
    memory, a softmax reads and writes them, and a second product reads them back with
    the values (T5X/flaxformer's ``dot_product_attention``, as XLA compiles it on TPU
    and CPU). ``flash``: one fused kernel; the scores stay on chip, and keys and
    values are re-read once per block of query rows, the IO count of the
    FlashAttention papers (Dao et al. 2022, arXiv 2205.14135, section 3.2; FA2 arXiv
    2307.08691, algorithm 1): bytes = Q + O + (K + V) x ceil(q_len / block_q).
``elementwise``
    ``separate``: every RMS norm, residual add and activation is its own pass over
    main memory (its own kernel). ``fused``: the residual add and the following RMS
    norm are one kernel that reads the residual stream and the sub-layer output and
    writes both the new residual stream and its normalised copy; the gated-GELU
    activation is the epilogue of the MLP input product (which then writes F, not 2F,
    values per token); softmax lives inside flash attention.
``projections``
    ``fused``: Q, K and V of self-attention are one product with a (H + 2G) x d_kv
    wide weight, and the two gated-MLP input matrices are one product. ``separate``:
    one product per weight matrix (Hugging Face T5: ``q``, ``k``, ``v``, ``wi_0``,
    ``wi_1``).
``framework``
    ``compiled``: kernels are launched back to back by a compiled program or a tuned
    engine; each costs the chip's per-kernel floor. ``eager``: every framework
    operation is dispatched from Python (PyTorch eager), each with a dispatch cost, and
    Hugging Face T5's own operator sequence is modelled (its RMS norm in six
    element-wise operations, GELU's tanh form in eight, the key/value cache grown by
    concatenation, the cross-attention keys and values projected inside the first
    decoding step, a zero position bias materialised for cross-attention).

The fixed cost per kernel belongs to the chip and the software, so it lives in the
hardware profile (``overhead_s_per_op``, per implementation where they differ).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError

ATTENTION_MODES = ("unfused", "flash")
ELEMENTWISE_MODES = ("separate", "fused")
PROJECTION_MODES = ("fused", "separate")
FRAMEWORKS = ("compiled", "eager")


@dataclass(frozen=True)
class Implementation:
    """One documented bundle of kernel choices (see the module docstring)."""

    name: str
    attention: str
    elementwise: str
    projections: str
    framework: str
    description: str

    def __post_init__(self):
        for field, allowed in (("attention", ATTENTION_MODES), ("elementwise", ELEMENTWISE_MODES),
                               ("projections", PROJECTION_MODES), ("framework", FRAMEWORKS)):
            if getattr(self, field) not in allowed:
                raise SpecError("implementation", field, f"must be one of {', '.join(allowed)}")

    @property
    def flash(self) -> bool:
        return self.attention == "flash"

    @property
    def fused_elementwise(self) -> bool:
        return self.elementwise == "fused"

    @property
    def eager(self) -> bool:
        return self.framework == "eager"

    def as_dict(self) -> dict:
        return {"name": self.name, "attention": self.attention, "elementwise": self.elementwise,
                "projections": self.projections, "framework": self.framework}


IMPLEMENTATIONS: dict[str, Implementation] = {
    "xla": Implementation(
        "xla", attention="unfused", elementwise="separate", projections="fused", framework="compiled",
        description="T5X/flaxformer compiled by XLA (TPU, CPU): unfused attention with the scores in main "
                    "memory, each norm, residual and activation a separate pass over memory, fused Q|K|V and "
                    "gated-MLP input products."),
    "tuned": Implementation(
        "tuned", attention="flash", elementwise="fused", projections="fused", framework="compiled",
        description="A tuned GPU serving engine: flash attention (prefill) and flash decoding (one query token "
                    "over a key/value cache), residual add fused with the next RMS norm, GELU and gate fused "
                    "into the MLP input product, fused Q|K|V."),
    "eager": Implementation(
        "eager", attention="unfused", elementwise="separate", projections="separate", framework="eager",
        description="PyTorch eager running Hugging Face T5: one kernel per framework operation, each with a "
                    "dispatch cost; separate q/k/v and wi_0/wi_1 products; the key/value cache grown by "
                    "concatenation; cross-attention keys and values projected in the first decoding step."),
}


def implementation(name: str, option: str = "--implementation") -> Implementation:
    """The preset called ``name``; a clear error naming ``option`` otherwise."""
    if isinstance(name, Implementation):
        return name
    if name not in IMPLEMENTATIONS:
        raise SpecError(option, "", f"unknown implementation {name!r} (known: {', '.join(IMPLEMENTATIONS)})")
    return IMPLEMENTATIONS[name]
