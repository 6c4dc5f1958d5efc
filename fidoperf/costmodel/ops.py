"""Closed-form FLOPs and bytes of every operator of FiD / FiDO inference.

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
- FLOPs: 2 per multiply-add for matrix products. Non-matmul work is listed as its
  own ops (kinds "softmax" and "vector"), with these per-element counts: RMS norm 4 (square,
  accumulate, scale, weight), softmax 5 (position-bias add, max, subtract+exp,
  sum, divide), GELU (tanh form) 8 plus 1 for the gate product, residual add 1.
- Bytes: each op reads its inputs from and writes its outputs to main memory
  (HBM) once, split by source: weights, activations, the decoder self-attention
  cache, and the cross-attention keys and values. Attention is unfused: the
  scores are written and read back (T5X/flaxformer, and XLA here, do this).
  Caches on chip between ops are not modelled: that is the roofline assumption.
- Left out (each well under 1% of FLOPs or bytes in the default setting):
  relative position bias bucketing, dropout (inference), layout copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Non-matmul FLOPs per element (see module docstring).
NORM_FLOPS = 4
SOFTMAX_FLOPS = 5
GELU_FLOPS = 8
RESIDUAL_FLOPS = 1


@dataclass(frozen=True)
class Op:
    """Cost of one call of one operator, for the whole batch."""

    op: str
    kind: str  # matmul (weights) | attention (QK^T, PV) | softmax | vector (elementwise) | gather
    flops: object
    weight_bytes: object = 0
    act_bytes: object = 0
    self_kv_bytes: object = 0
    cross_kv_bytes: object = 0
    rows: object = 1  # M of the matrix product: rows sharing one read operand

    @property
    def bytes(self):
        return self.weight_bytes + self.act_bytes + self.self_kv_bytes + self.cross_kv_bytes


def rms_norm(name: str, M, D, w, a) -> Op:
    return Op(name, "vector", NORM_FLOPS * M * D, weight_bytes=D * w, act_bytes=2 * M * D * a, rows=M)


def residual(name: str, M, D, a) -> Op:
    return Op(name, "vector", RESIDUAL_FLOPS * M * D, act_bytes=3 * M * D * a, rows=M)


def linear(name: str, M, K, N, w, a, out_bytes=None, **extra) -> Op:
    """x[M, K] @ W[K, N]: weights read once per call, shared by all M rows."""
    out = M * N * a if out_bytes is None else out_bytes
    return Op(name, "matmul", 2 * M * K * N, weight_bytes=K * N * w, act_bytes=M * K * a + out,
              rows=M, **extra)


def attention(prefix: str, Q, Kv, H, G, dk, a, c, kv_source: str, groups=1) -> list[Op]:
    """Scaled dot-product attention of ``Q`` query tokens over ``Kv`` key tokens, in
    ``groups`` independent blocks (samples, or passages in the encoder).

    Keys/values come from ``kv_source``: "act" (computed in this layer), "self_kv" or
    "cross_kv" (a cache). Each of the G key/value heads is shared by H/G query heads.
    """
    scores = groups * H * Q * Kv
    kv_read = groups * G * Kv * dk * c
    q_or_out = groups * H * Q * dk * a
    on_act = kv_read if kv_source == "act" else 0
    cache = {} if kv_source == "act" else {f"{kv_source}_bytes": kv_read}
    rows = Q * H / G
    logits = Op(f"{prefix}_logits", "attention", 2 * scores * dk, rows=rows,
                act_bytes=q_or_out + scores * a + on_act, **cache)
    softmax = Op(f"{prefix}_softmax", "softmax", SOFTMAX_FLOPS * scores, act_bytes=2 * scores * a, rows=rows)
    values = Op(f"{prefix}_values", "attention", 2 * scores * dk, rows=rows,
                act_bytes=scores * a + q_or_out + on_act, **cache)
    return [logits, softmax, values]


def mlp(M, D, F, n_in, w, a) -> list[Op]:
    act_flops = (GELU_FLOPS + (n_in - 1)) * M * F
    return [
        linear("mlp_in", M, D, n_in * F, w, a),
        Op("mlp_act", "vector", act_flops, act_bytes=(n_in + 1) * M * F * a, rows=M),
        linear("mlp_out", M, F, D, w, a),
    ]


# --------------------------------------------------------------------------- phases


def encoder_layer(D, H, G, dk, F, n_in, B, P, N, w, a) -> list[Op]:
    """One T5 encoder layer over B*P passages, each encoded separately (attention
    within a passage only)."""
    M = B * P * N
    return [
        rms_norm("attn_norm", M, D, w, a),
        linear("attn_qkv", M, D, (H + 2 * G) * dk, w, a),
        *attention("attn", N, N, H, G, dk, a, a, "act", groups=B * P),
        linear("attn_out", M, H * dk, D, w, a),
        residual("attn_residual", M, D, a),
        rms_norm("mlp_norm", M, D, w, a),
        *mlp(M, D, F, n_in, w, a),
        residual("mlp_residual", M, D, a),
    ]


def encoder_embed(D, B, P, N, w, a) -> Op:
    M = B * P * N
    return Op("embed", "gather", 0 * M, weight_bytes=M * D * w, act_bytes=M * D * a, rows=M)


def encoder_final(D, B, P, N, w, a) -> Op:
    return rms_norm("final_norm", B * P * N, D, w, a)


def cross_kv_layer(D_enc, G, dk, B, P, N, w, a, c) -> Op:
    """The one-off key/value projection of the encoder outputs for one decoder layer
    with cross-attention: [B*S, D_enc] @ [D_enc, 2*G*dk], written to the cache."""
    M = B * P * N
    return linear("cross_kv_proj", M, D_enc, 2 * G * dk, w, a, out_bytes=0,
                  cross_kv_bytes=M * 2 * G * dk * c)


def decoder_layer(D, H, G, dk, F, n_in, B, P, N, t, cross: bool, w, a, c) -> list[Op]:
    """One decoder layer at one incremental step, the self-attention cache holding
    ``t`` tokens once this step's key and value are written (t = 1 .. T)."""
    ops = [
        rms_norm("self_attn_norm", B, D, w, a),
        linear("self_attn_qkv", B, D, (H + 2 * G) * dk, w, a, out_bytes=B * H * dk * a,
               self_kv_bytes=B * 2 * G * dk * c),
        *attention("self_attn", 1, t, H, G, dk, a, c, "self_kv", groups=B),
        linear("self_attn_out", B, H * dk, D, w, a),
        residual("self_attn_residual", B, D, a),
    ]
    if cross:
        ops += [
            rms_norm("cross_attn_norm", B, D, w, a),
            linear("cross_attn_q", B, D, H * dk, w, a),
            *attention("cross_attn", 1, P * N, H, G, dk, a, c, "cross_kv", groups=B),
            linear("cross_attn_out", B, H * dk, D, w, a),
            residual("cross_attn_residual", B, D, a),
        ]
    ops += [
        rms_norm("mlp_norm", B, D, w, a),
        *mlp(B, D, F, n_in, w, a),
        residual("mlp_residual", B, D, a),
    ]
    return ops


def decoder_embed(D, B, w, a) -> Op:
    return Op("embed", "gather", 0 * B, weight_bytes=B * D * w, act_bytes=B * D * a, rows=B)


def decoder_head(D, V, B, w, a) -> list[Op]:
    """Final norm, the output projection to the vocabulary, and greedy argmax."""
    return [
        rms_norm("final_norm", B, D, w, a),
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


def activation_bytes_per_sample(D_enc, H_enc, G_enc, dk_enc, F_enc, n_in_enc, P, N, a):
    """Peak live activations of one sample while encoding, layer by layer: the
    residual stream and its normalised copy, plus the largest intermediate of a
    layer (MLP hidden, attention scores with their softmax, or Q/K/V)."""
    S = P * N
    largest = np.maximum(np.maximum(n_in_enc * F_enc, 2 * H_enc * N), (H_enc + 2 * G_enc) * dk_enc)
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
                 capacity):
    """Memory footprint of one batch and the largest batch that fits ``capacity``.

    Returns a dict of arrays: params, weight_bytes, self_kv_bytes, cross_kv_bytes,
    activation_bytes (encoder peak), per_sample_peak_bytes, peak_bytes, max_batch,
    fits. Weights are held once; everything else scales with the batch.
    """
    params = (stack_params(De, He, Ge, dke, Fe, ne, Le)
              + stack_params(Dd, Hd, Gd, dkd, Fd, nd, Ld, Lc, De)
              + embedding_params(V, De, Dd))
    weights = params * w
    enc_act = activation_bytes_per_sample(De, He, Ge, dke, Fe, ne, P, N, a)
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
