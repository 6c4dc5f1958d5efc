"""Closed-form FLOPs and bytes of every kernel of FiD / FiDO inference, per implementation.

Pure functions: every argument may be a Python number or a numpy array, and the
results broadcast, so one function serves a single prediction and a million-point
sweep. Counts are for the whole batch and one call of the operator.

Dimension letters (flaxformer names in brackets):
    B  batch (samples decoded together)       P   passages per sample
    N  tokens per passage (question included) S = P*N encoder tokens per sample
    t  self-attention cache length at a step  T   target tokens (decoding steps)
    D  residual width [emb_dim]               F   MLP width [mlp_dim]
    H  query heads [num_heads]                G   key/value heads (H: MHA, 1: MQA)
    dk head width [head_dim]                  V   vocabulary [vocab_size]
    n_in  MLP input matrices (2 for gated-GELU, T5 v1.1)
    w, a, c  bytes per element of weights, activations, KV caches

Conventions:
- FLOPs: 2 per multiply-add for matrix products. Non-matmul work has these
  per-element counts: RMS norm 4 (square, accumulate, scale, weight), softmax 5
  (position-bias add, max, subtract+exp, sum, divide), GELU (tanh form) 8 plus 1 for
  the gate product, residual add 1. The FLOPs of a layer are the same for every
  implementation; what differs is which kernels they run in and the bytes moved.
- Bytes: each kernel reads its inputs from and writes its outputs to main memory
  (HBM) once, split by source: weights, activations, the decoder self-attention
  cache, and the cross-attention keys and values. Data kept on chip between
  kernels is not modelled, except inside a fused kernel.
- How the kernels are cut is the implementation's (:mod:`fidoperf.specs.implementation`):
  ``xla`` (unfused attention, separate element-wise passes), ``tuned`` (flash
  attention, residual add fused with the next RMS norm, activation fused into the
  MLP input product) and ``eager`` (Hugging Face T5 in PyTorch eager, one kernel per
  framework operation). Each :class:`Op` says which time mechanism applies to it
  (``kernel``: ``gemm``, ``flash`` or plain streaming) with the shape that mechanism
  needs, and how many kernel launches it stands for (``launches``).
- Left out (each well under 1% of FLOPs or bytes in the default setting):
  relative position bias bucketing (except as the eager implementation's small
  kernels), dropout (inference), layout copies of compiled implementations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..specs.implementation import IMPLEMENTATIONS, Implementation

# Non-matmul FLOPs per element (see module docstring).
NORM_FLOPS = 4
SOFTMAX_FLOPS = 5
GELU_FLOPS = 8
RESIDUAL_FLOPS = 1

XLA = IMPLEMENTATIONS["xla"]

# Hugging Face T5 in PyTorch eager (transformers 5.x modeling_t5.py, SDPA attention, its
# default): framework operations (dispatches) per module, counted with torch.profiler
# (top-level aten:: operators, transformers 5.24, torch 2.13; tests/test_torch.py checks
# them against the library installed). Views, transposes, dtype no-ops and eval-mode
# dropouts are dispatches without data movement: each costs the host's dispatch time.
EAGER_NORM_OPS = 7  # T5LayerNorm: to(float32), pow, mean, add eps, rsqrt, multiply, multiply by weight
EAGER_GELU_OPS = 8  # NewGELUActivation: pow, scale, add, scale, tanh, add 1, halve, multiply
EAGER_PROJECTION_OPS = 3  # nn.Linear, then .view() and .transpose(1, 2) to heads
EAGER_ATTENTION_OUT_OPS = 3  # the SDPA output's transpose, reshape, reshape(...).contiguous()
EAGER_ENCODER_STACK_OPS = 31  # per encoder forward beside the embedding and final norm: the
#                               N x N relative position bias, the masks, dropouts
EAGER_STEP_OPS = 61  # per decoding step beside the embedding, final norm, logits and argmax:
#                      the position bias of the new token, masks, generate's bookkeeping
EAGER_CROSS_SETUP_OPS = 17  # per cross-attention layer in the first step beside its k and v
#                             projections: the cache's creation and its two torch.cat
EAGER_GENERATE_SETUP_OPS = 28  # per generate call, once (27 or 28: one varies between runs)


@dataclass(frozen=True)
class Op:
    """Cost of one call of one operator, for the whole batch.

    ``kind`` is the family the efficiency factors of a profile are keyed by
    (matmul, attention, softmax, vector, gather); ``kernel`` the time mechanism
    (``gemm``: tile and wave quantisation of a matrix product with ``shape``
    m, n, k, batch; ``flash``: a fused attention kernel with ``shape`` batch,
    q_len, kv_len, heads, kv_heads, head_dim, causal; ``""``: streaming work whose
    time is its bytes). ``launches``: kernels (or framework operations) it stands for.
    """

    op: str
    kind: str  # matmul (weights) | attention (QK^T, PV) | softmax | vector (elementwise) | gather
    flops: object
    weight_bytes: object = 0
    act_bytes: object = 0
    self_kv_bytes: object = 0
    cross_kv_bytes: object = 0
    rows: object = 1  # M of the matrix product: rows sharing one read operand
    kernel: str = ""
    shape: Mapping = field(default_factory=dict)
    launches: object = 1

    @property
    def bytes(self):
        return self.weight_bytes + self.act_bytes + self.self_kv_bytes + self.cross_kv_bytes


# --------------------------------------------------------------------------- building blocks


def rms_norm(name: str, M, D, w, a, impl: Implementation = XLA) -> Op:
    if impl.eager:  # pow, mean, +eps, rsqrt (on M values), x * rsqrt, weight * x
        act = (2 * M * D + (M * D + M) + 2 * M + 2 * M + (2 * M * D + M) + 2 * M * D) * a
        return Op(name, "vector", NORM_FLOPS * M * D, weight_bytes=D * w, act_bytes=act, rows=M,
                  launches=EAGER_NORM_OPS)
    return Op(name, "vector", NORM_FLOPS * M * D, weight_bytes=D * w, act_bytes=2 * M * D * a, rows=M)


def residual(name: str, M, D, a, impl: Implementation = XLA) -> Op:
    """x + sublayer(x); eager: an eval-mode dropout dispatch first."""
    return Op(name, "vector", RESIDUAL_FLOPS * M * D, act_bytes=3 * M * D * a, rows=M, launches=2 if impl.eager else 1)


def residual_norm(name: str, M, D, w, a) -> Op:
    """Residual add fused with the next RMS norm: reads the residual stream and the
    sub-layer output, writes the new residual stream and its normalised copy."""
    return Op(name, "vector", (RESIDUAL_FLOPS + NORM_FLOPS) * M * D, weight_bytes=D * w,
              act_bytes=4 * M * D * a, rows=M)


def elementwise(name: str, elements, reads: int, writes: int, a, flops_per_element=1, launches=1,
                kind: str = "vector") -> Op:
    """A streaming kernel over ``elements`` values: ``reads`` inputs, ``writes`` outputs."""
    return Op(name, kind, flops_per_element * elements, act_bytes=(reads + writes) * elements * a,
              rows=elements, launches=launches)


def linear(name: str, M, K, N, w, a, out_bytes=None, **extra) -> Op:
    """x[M, K] @ W[K, N]: weights read once per call, shared by all M rows."""
    out = M * N * a if out_bytes is None else out_bytes
    return Op(name, "matmul", 2 * M * K * N, weight_bytes=K * N * w, act_bytes=M * K * a + out,
              rows=M, kernel="gemm", shape={"m": M, "n": N, "k": K, "batch": 1}, **extra)


def kv_passes(Q, flash_rows):
    """How many times a flash kernel reads all keys and values: once per block of
    ``flash_rows`` query rows (the FlashAttention IO count; see attention())."""
    return np.ceil(np.asarray(Q, dtype=float) / flash_rows)


def attention(prefix: str, Q, Kv, H, G, dk, a, c, kv_source: str, groups=1, impl: Implementation = XLA,
              flash_rows=128, causal: bool = False) -> list[Op]:
    """Scaled dot-product attention of ``Q`` query tokens over ``Kv`` key tokens, in
    ``groups`` independent blocks (samples, or passages in the encoder).

    Keys/values come from ``kv_source``: "act" (computed in this layer), "self_kv" or
    "cross_kv" (a cache). Each of the G key/value heads is shared by H/G query heads.

    Unfused (xla): a batched product writes the H x Q x Kv scores, a softmax reads and
    writes them, a second product reads them back with the values.

    Flash (tuned; eager runs PyTorch's fused scaled_dot_product_attention): one kernel;
    the scores never leave the chip; keys and values are
    read once per ``flash_rows`` query rows (FlashAttention, Dao et al. 2022, arXiv
    2205.14135, Theorem 2 and Algorithm 1: the outer loop over blocks of query rows
    reads every key/value block; ``flash_rows`` is the block height times the blocks
    that share one read through the cache), so its key/value bytes are
    ``(K + V) x ceil(Q / flash_rows)``. ``causal``: query i sees keys 0..i (Q = Kv).
    """
    pairs = Q * Kv if not causal else Q * (Kv + 1) / 2.0  # (query, key) pairs computed
    scores = groups * H * pairs
    kv_once = groups * G * Kv * dk * c
    q_or_out = groups * H * Q * dk * a
    cache_key = None if kv_source == "act" else f"{kv_source}_bytes"
    if impl.flash:
        kv_read = 2 * kv_once * kv_passes(Q, flash_rows)
        extra = {cache_key: kv_read} if cache_key else {}
        # eager (PyTorch SDPA under Hugging Face T5): the additive position bias [1, H, Q, Kv]
        # is read with the scores; the output goes back to [tokens, H x dk] by a copy
        bias = H * Q * Kv * 4 if impl.eager else 0
        ops = [Op(f"{prefix}", "attention", 4 * scores * dk + SOFTMAX_FLOPS * scores, rows=Q * H / G,
                  act_bytes=2 * q_or_out + (0 if cache_key else kv_read) + bias, kernel="flash",
                  shape={"batch": groups, "q_len": Q, "kv_len": Kv, "heads": H, "kv_heads": G,
                         "head_dim": dk, "causal": causal},
                  launches=2 if impl.eager and kv_source != "cross_kv" else 1, **extra)]  # + the bias' contiguous()
        if impl.eager:
            ops.append(Op(f"{prefix}_output", "vector", 0 * q_or_out, act_bytes=2 * q_or_out, rows=Q * H / G,
                          launches=EAGER_ATTENTION_OUT_OPS))
        return ops
    on_act = kv_once if kv_source == "act" else 0
    cache = {} if kv_source == "act" else {cache_key: kv_once}
    rows = Q * H / G
    stored = groups * H * Q * Kv  # unfused kernels store the full score matrix
    logits = Op(f"{prefix}_logits", "attention", 2 * scores * dk, rows=rows,
                act_bytes=q_or_out + stored * a + on_act, kernel="gemm",
                shape={"m": rows, "n": Kv, "k": dk, "batch": groups * G}, **cache)
    softmax = Op(f"{prefix}_softmax", "softmax", SOFTMAX_FLOPS * scores, act_bytes=2 * stored * a, rows=rows)
    values = Op(f"{prefix}_values", "attention", 2 * scores * dk, rows=rows,
                act_bytes=stored * a + q_or_out + on_act, kernel="gemm",
                shape={"m": rows, "n": dk, "k": Kv, "batch": groups * G}, **cache)
    return [logits, softmax, values]


def projections(prefix: str, M, D, H, G, dk, w, a, impl: Implementation, with_kv: bool = True,
                kv_out=None, self_kv=None) -> list[Op]:
    """The Q (and K, V) projections of an attention sub-layer: one fused product, or
    one product per weight matrix (Hugging Face T5: q, k, v)."""
    if impl.projections == "fused" or not with_kv:
        if not with_kv:
            return [linear(f"{prefix}_q", M, D, H * dk, w, a, launches=EAGER_PROJECTION_OPS if impl.eager else 1)]
        extra = {} if self_kv is None else {"self_kv_bytes": self_kv}
        return [linear(f"{prefix}_qkv", M, D, (H + 2 * G) * dk, w, a, out_bytes=kv_out, **extra)]
    launches = EAGER_PROJECTION_OPS if impl.eager else 1
    ops = [linear(f"{prefix}_q", M, D, H * dk, w, a, launches=launches)]
    for name in ("k", "v"):
        extra = {} if self_kv is None else {"self_kv_bytes": self_kv / 2, "out_bytes": 0}
        ops.append(linear(f"{prefix}_{name}", M, D, G * dk, w, a, launches=launches, **extra))
    return ops


def mlp(M, D, F, n_in, w, a, impl: Implementation = XLA) -> list[Op]:
    act_flops = (GELU_FLOPS + (n_in - 1)) * M * F
    if impl.fused_elementwise:  # the activation is the input product's epilogue
        mlp_in = linear("mlp_in", M, D, n_in * F, w, a, out_bytes=M * F * a)
        mlp_in = Op(**{**mlp_in.__dict__, "flops": mlp_in.flops + act_flops})
        return [mlp_in, linear("mlp_out", M, F, D, w, a)]
    if impl.projections == "separate":  # wi_0, gelu (eight operations), wi_1, gate product
        ops = [linear("mlp_in", M, D, F, w, a)]
        ops.append(elementwise("mlp_act", M * F, 1, 1, a, GELU_FLOPS, EAGER_GELU_OPS if impl.eager else 1))
        if impl.eager:  # the tanh form's eight kernels each read and write M x F values (two read two)
            ops[-1] = Op("mlp_act", "vector", GELU_FLOPS * M * F, act_bytes=18 * M * F * a, rows=M * F,
                         launches=EAGER_GELU_OPS)
        if n_in == 2:
            ops.append(linear("mlp_in_gate", M, D, F, w, a))
            ops.append(elementwise("mlp_gate", M * F, 2, 1, a, 1, launches=2 if impl.eager else 1))  # + dropout
        return ops + [linear("mlp_out", M, F, D, w, a)]
    return [
        linear("mlp_in", M, D, n_in * F, w, a),
        Op("mlp_act", "vector", act_flops, act_bytes=(n_in + 1) * M * F * a, rows=M),
        linear("mlp_out", M, F, D, w, a),
    ]


# --------------------------------------------------------------------------- phases


def encoder_layer(D, H, G, dk, F, n_in, B, P, N, w, a, impl: Implementation = XLA, flash_rows=128) -> list[Op]:
    """One T5 encoder layer over B*P passages, each encoded separately (attention
    within a passage only)."""
    M = B * P * N
    attn = attention("attn", N, N, H, G, dk, a, a, "act", groups=B * P, impl=impl, flash_rows=flash_rows)
    if impl.fused_elementwise:
        return [
            *projections("attn", M, D, H, G, dk, w, a, impl),
            *attn,
            linear("attn_out", M, H * dk, D, w, a),
            residual_norm("attn_residual_norm", M, D, w, a),
            *mlp(M, D, F, n_in, w, a, impl),
            residual_norm("mlp_residual_norm", M, D, w, a),
        ]
    return [
        rms_norm("attn_norm", M, D, w, a, impl),
        *projections("attn", M, D, H, G, dk, w, a, impl),
        *attn,
        linear("attn_out", M, H * dk, D, w, a),
        residual("attn_residual", M, D, a, impl),
        rms_norm("mlp_norm", M, D, w, a, impl),
        *mlp(M, D, F, n_in, w, a, impl),
        residual("mlp_residual", M, D, a, impl),
    ]


def encoder_embed(D, B, P, N, w, a, impl: Implementation = XLA) -> list[Op]:
    """The embedding lookup; eager adds the forward's position bias and masks and the
    generate call's one-off setup (dispatches counted once per batch here)."""
    M = B * P * N
    ops = [Op("embed", "gather", 0 * M, weight_bytes=M * D * w, act_bytes=M * D * a, rows=M)]
    if impl.eager:  # the relative position bias of N x N positions (int64 buckets, then [1, H, N, N] floats)
        bias = 12 * N * N * 8
        ops.append(Op("stack_setup", "vector", 0 * M, act_bytes=bias + 0 * M, rows=1,
                      launches=EAGER_ENCODER_STACK_OPS + EAGER_GENERATE_SETUP_OPS))
    return ops


def encoder_final(D, B, P, N, w, a, impl: Implementation = XLA) -> Op:
    """The stack's last RMS norm; with fused element-wise kernels, the residual adds
    carry the norms, and this is the first layer's input norm instead."""
    name = "first_norm" if impl.fused_elementwise else "final_norm"
    return rms_norm(name, B * P * N, D, w, a, impl)


def cross_kv_layer(D_enc, G, dk, B, P, N, w, a, c, impl: Implementation = XLA) -> list[Op]:
    """The one-off key/value projection of the encoder outputs for one decoder layer
    with cross-attention: [B*S, D_enc] @ [D_enc, 2*G*dk], written to the cache.
    Eager (Hugging Face) runs it inside the first decoding step as two products (k, v)
    and copies the result into its cache (``torch.cat`` onto an empty cache)."""
    M = B * P * N
    if impl.projections == "separate":
        launches = EAGER_PROJECTION_OPS if impl.eager else 1
        ops = [linear(f"cross_{x}_proj", M, D_enc, G * dk, w, a, launches=launches) for x in ("k", "v")]
        ops.append(Op("cross_kv_cache_copy", "vector", 0 * M, act_bytes=M * 2 * G * dk * a,
                      cross_kv_bytes=M * 2 * G * dk * c, rows=M, launches=EAGER_CROSS_SETUP_OPS if impl.eager else 2))
        return ops
    return [linear("cross_kv_proj", M, D_enc, 2 * G * dk, w, a, out_bytes=0, cross_kv_bytes=M * 2 * G * dk * c)]


def decoder_layer(D, H, G, dk, F, n_in, B, P, N, t, cross: bool, w, a, c, impl: Implementation = XLA,
                  flash_rows=128, cross_attention=None) -> list[Op]:
    """One decoder layer at one incremental step, the self-attention cache holding
    ``t`` tokens once this step's key and value are written (t = 1 .. T).

    ``cross_attention``: (samples, query heads, key/value heads) of the cross-attention
    kernel when they differ from (B, H, G): a tensor-parallel chip holding the keys and
    values of B/T samples for all heads (see fidoperf.specs.layout)."""
    cross_b, cross_h, cross_g = cross_attention or (B, H, G)
    fused = impl.fused_elementwise
    self_new = B * 2 * G * dk * c  # this step's key and value, written to the cache
    ops = [] if fused else [rms_norm("self_attn_norm", B, D, w, a, impl)]
    ops += projections("self_attn", B, D, H, G, dk, w, a, impl, kv_out=B * H * dk * a, self_kv=self_new)
    if impl.eager:  # DynamicCache.update: torch.cat of the old cache and the new token, keys and values
        ops.append(Op("self_kv_cache_cat", "vector", 0 * t, self_kv_bytes=2 * B * G * dk * c * (2 * t - 1),
                      rows=B, launches=2))
    ops += [
        *attention("self_attn", 1, t, H, G, dk, a, c, "self_kv", groups=B, impl=impl, flash_rows=flash_rows),
        linear("self_attn_out", B, H * dk, D, w, a),
        residual_norm("self_attn_residual_norm", B, D, w, a) if fused
        else residual("self_attn_residual", B, D, a, impl),
    ]
    if cross:
        if not fused:
            ops.append(rms_norm("cross_attn_norm", B, D, w, a, impl))
        ops += [
            linear("cross_attn_q", B, D, H * dk, w, a, launches=EAGER_PROJECTION_OPS if impl.eager else 1),
            *attention("cross_attn", 1, P * N, cross_h, cross_g, dk, a, c, "cross_kv", groups=cross_b, impl=impl,
                       flash_rows=flash_rows),
            linear("cross_attn_out", B, H * dk, D, w, a),
            residual_norm("cross_attn_residual_norm", B, D, w, a) if fused
            else residual("cross_attn_residual", B, D, a, impl),
        ]
    if not fused:
        ops.append(rms_norm("mlp_norm", B, D, w, a, impl))
    ops += mlp(B, D, F, n_in, w, a, impl)
    ops.append(residual_norm("mlp_residual_norm", B, D, w, a) if fused else residual("mlp_residual", B, D, a, impl))
    return ops


def decoder_embed(D, B, w, a, impl: Implementation = XLA) -> list[Op]:
    """The embedding lookup of this step's tokens (with fused element-wise kernels,
    the first layer's input norm too); eager adds the step's bookkeeping kernels."""
    ops = [Op("embed", "gather", 0 * B, weight_bytes=B * D * w, act_bytes=B * D * a, rows=B)]
    if impl.fused_elementwise:
        ops.append(rms_norm("first_norm", B, D, w, a, impl))
    if impl.eager:
        ops.append(Op("step_setup", "vector", 0 * B, act_bytes=0 * B, rows=1, launches=EAGER_STEP_OPS))
    return ops


def decoder_head(D, V, B, w, a, impl: Implementation = XLA) -> list[Op]:
    """Final norm, the output projection to the vocabulary, and greedy argmax (with
    fused element-wise kernels, the last residual add already wrote the final norm)."""
    ops = [] if impl.fused_elementwise else [rms_norm("final_norm", B, D, w, a, impl)]
    return ops + [
        linear("logits", B, D, V, w, a),
        Op("argmax", "vector", B * V, act_bytes=B * V * a, rows=B),
    ]


# --------------------------------------------------------------------------- memory


def stack_params(D, H, G, dk, F, n_in, L, cross_layers=0, D_enc=None, num_buckets=32):
    """Parameters of one stack: attention, MLP, RMS-norm scales, relative position
    bias (num_buckets x H, shared by the layers of a stack, as in T5)."""
    self_attn = D * (H + 2 * G) * dk + H * dk * D
    mlp_p = (n_in + 1) * D * F
    layer = self_attn + mlp_p + 2 * D
    D_enc = D if D_enc is None else D_enc
    cross = cross_layers * (D * H * dk + D_enc * 2 * G * dk + H * dk * D + D)
    return L * layer + cross + D + num_buckets * H


def embedding_params(V, D_enc, D_dec):
    """T5 v1.1: the input embedding is shared by encoder and decoder (one table when
    the widths agree) and the output projection is a separate V x D matrix."""
    tables = np.where(np.asarray(D_enc) == np.asarray(D_dec), 1, 2)
    inputs = np.where(tables == 1, V * D_enc, V * (D_enc + D_dec))
    return inputs + V * D_dec


def kv_cache_bytes(layers, B, tokens, G, dk, c):
    """2 (keys and values) x layers x batch x tokens x kv heads x head width x bytes."""
    return 2 * layers * B * tokens * G * dk * c


def activation_bytes_per_sample(D_enc, H_enc, G_enc, dk_enc, F_enc, n_in_enc, P, N, a, flash: bool = False):
    """Peak live activations of one sample while encoding, layer by layer: the
    residual stream and its normalised copy, plus the largest intermediate of a
    layer (MLP hidden, attention scores with their softmax, or Q/K/V). Flash
    attention keeps the scores on chip."""
    S = P * N
    scores = 0 if flash else 2 * H_enc * N
    largest = np.maximum(np.maximum(n_in_enc * F_enc, scores), (H_enc + 2 * G_enc) * dk_enc)
    return S * (2 * D_enc + largest) * a


def memory_per_sample(enc_act, D_enc, S, cross_layers, dec_layers, T, G, dk, V, a, c):
    """Bytes one sample needs at the peak of each phase; the largest one counts.

    encode: its activations; cross-K/V projection: the encoder output and the
    cross-attention cache; decode: both KV caches and the logits.
    """
    cross = kv_cache_bytes(cross_layers, 1, S, G, dk, c)
    self_kv = kv_cache_bytes(dec_layers, 1, T, G, dk, c)
    return np.maximum(np.maximum(enc_act, S * D_enc * a + cross), cross + self_kv + V * a)


def memory_terms(De, He, Ge, dke, Fe, ne, Le, Dd, Hd, Gd, dkd, Fd, nd, Ld, Lc, V, B, P, N, T, w, a, c,
                 capacity, flash: bool = False):
    """Memory footprint of one batch and the largest batch that fits ``capacity``.

    Returns a dict of arrays: params, weight_bytes, self_kv_bytes, cross_kv_bytes,
    activation_bytes (encoder peak), per_sample_peak_bytes, peak_bytes, max_batch,
    fits. Weights are held once; everything else scales with the batch.
    """
    params = (stack_params(De, He, Ge, dke, Fe, ne, Le)
              + stack_params(Dd, Hd, Gd, dkd, Fd, nd, Ld, Lc, De)
              + embedding_params(V, De, Dd))
    weights = params * w
    enc_act = activation_bytes_per_sample(De, He, Ge, dke, Fe, ne, P, N, a, flash)
    per_sample = memory_per_sample(enc_act, De, P * N, Lc, Ld, T, Gd, dkd, V, a, c)
    free = capacity - weights
    max_batch = np.where(free > 0, np.floor(np.maximum(free, 0) / per_sample), 0)
    return {
        "params": params,
        "weight_bytes": weights,
        "self_kv_bytes": kv_cache_bytes(Ld, B, T, Gd, dkd, c),
        "cross_kv_bytes": kv_cache_bytes(Lc, B, P * N, Gd, dkd, c),
        "activation_bytes": B * enc_act,
        "per_sample_peak_bytes": per_sample,
        "peak_bytes": weights + B * per_sample,
        "max_batch": max_batch,
        "fits": B <= max_batch,
    }
