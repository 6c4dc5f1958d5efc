"""JAX implementations of the FiD / FiDO layers, driven by the same specs as the model.

Shapes (dimension letters as in :mod:`fidoperf.costmodel.ops`; R = H / G query heads per
key/value head):
    encoder input           f[B*P, N, D]      passages encoded separately
    encoder output          f[B, S, D]        S = P * N
    cross-attention cache   f[B, G, S, dk]    head-major (see below)
    self-attention cache    f[B, G, t, dk]    head-major
    decoder state           f[B, D]           one token per sample per step

Layout: keys and values are stored head-major, [batch, kv_head, token, d_kv]. On
XLA:CPU the token-major layout [batch, token, kv_head, d_kv] makes every decoding
step transpose-copy the whole cache (3-18x slower, shared/reference
cpu-jax-notes.md); the cost model assumes the head-major layout, with no copies.
Query heads are grouped as [G, R], so one einsum serves MHA (G = H), GQA and MQA
(G = 1). The fused projections (Q|K|V in one matrix, the two gated-GELU input
matrices in one) match the model's ops `attn_qkv` and `mlp_in`.

Everything here imports jax: import this module only where it is used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..specs import StackSpec

EPS = 1e-6


@dataclass(frozen=True)
class Dims:
    D: int
    H: int
    G: int
    dk: int
    F: int
    n_in: int

    @property
    def R(self) -> int:
        return self.H // self.G

    @classmethod
    def of(cls, s: StackSpec) -> Dims:
        return cls(s.emb_dim, s.num_heads, s.num_kv_heads, s.head_dim, s.mlp_dim, s.mlp_in_mats)


def normal_init(key):
    """``rand(shape, dtype, scale)``: independent normal draws, one key per call."""
    counter = itertools.count()

    def rand(shape, dtype, scale):
        k = jax.random.fold_in(key, next(counter))
        return (jax.random.normal(k, shape, jnp.float32) * scale).astype(dtype)

    return rand


def init_layer(rand, d: Dims, dtype, cross: bool = False, D_enc: int | None = None) -> dict:
    """Random weights of one layer (T5 v1.1 shapes); ``cross`` adds cross-attention.
    ``rand(shape, dtype, scale)`` draws them (``normal_init(key)``, or a faster pool)."""
    s = d.D ** -0.5
    p = {
        "attn_norm": jnp.ones((d.D,), dtype),
        "qkv": rand((d.D, (d.H + 2 * d.G) * d.dk), dtype, s),
        "attn_out": rand((d.H * d.dk, d.D), dtype, (d.H * d.dk) ** -0.5),
        "mlp_norm": jnp.ones((d.D,), dtype),
        "mlp_in": rand((d.D, d.n_in * d.F), dtype, s),
        "mlp_out": rand((d.F, d.D), dtype, d.F ** -0.5),
    }
    if cross:
        De = d.D if D_enc is None else D_enc
        p.update({
            "cross_norm": jnp.ones((d.D,), dtype),
            "cross_q": rand((d.D, d.H * d.dk), dtype, s),
            "cross_kv": rand((De, 2 * d.G * d.dk), dtype, De ** -0.5),
            "cross_out": rand((d.H * d.dk, d.D), dtype, (d.H * d.dk) ** -0.5),
        })
    return p


# --------------------------------------------------------------------------- building blocks


def rms_norm(x, scale):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + EPS)
    return (y * scale).astype(x.dtype)


def mlp(x, p, d: Dims):
    """Gated-GELU (T5 v1.1): gelu(x W0) * (x W1) W_out; plain GELU when n_in == 1."""
    h = (x @ p["mlp_in"]).reshape(*x.shape[:-1], d.n_in, d.F)
    act = jax.nn.gelu(h[..., 0, :])
    if d.n_in == 2:
        act = act * h[..., 1, :]
    return act @ p["mlp_out"]


def _split_qkv(qkv, d: Dims):
    q, k, v = jnp.split(qkv, [d.H * d.dk, (d.H + d.G) * d.dk], axis=-1)
    return q, k, v


# --------------------------------------------------------------------------- encoder


def encoder_layer(p, x, d: Dims):
    """x: f[B*P, N, D] -> f[B*P, N, D]; attention within each passage."""
    n, N, _ = x.shape
    h = rms_norm(x, p["attn_norm"])
    q, k, v = _split_qkv(h @ p["qkv"], d)
    q = q.reshape(n, N, d.G, d.R, d.dk)
    k = k.reshape(n, N, d.G, d.dk)
    v = v.reshape(n, N, d.G, d.dk)
    logits = jnp.einsum("bqgrk,bsgk->bgrqs", q, k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    att = jnp.einsum("bgrqs,bsgk->bqgrk", probs, v).reshape(n, N, d.H * d.dk)
    x = x + att @ p["attn_out"]
    return x + mlp(rms_norm(x, p["mlp_norm"]), p, d)


def cross_kv(p, enc_out, d: Dims):
    """The one-off key/value projection: enc_out f[B, S, D_enc] -> two f[B, G, S, dk]."""
    B, S, _ = enc_out.shape
    kv = (enc_out @ p["cross_kv"]).reshape(B, S, 2, d.G, d.dk)
    kv = jnp.transpose(kv, (2, 0, 3, 1, 4))  # to head-major, written once
    return kv[0], kv[1]


# --------------------------------------------------------------------------- decoder


def attention_logits(q, k):
    """q f[B, G, R, dk] against keys f[B, G, S, dk] -> f[B, G, R, S].

    Contracted with the keys as the tall operand ([S, dk] @ [dk, R] per head) and
    the small result transposed: with R > 1 query rows per key/value head (GQA,
    MQA) XLA:CPU runs this form 2-6x faster than [R, dk] @ [dk, S] over many
    heads (measured here, jax 0.10.2); the transpose touches only the scores."""
    # The barrier keeps XLA's simplifier from folding the transpose into the dot, which
    # it does whenever the batch B is above 1, picking the slow [R, dk] @ [dk, S] form.
    return jnp.swapaxes(jax.lax.optimization_barrier(jnp.einsum("bgsk,bgrk->bgsr", k, q)), -1, -2)


def _attend(q, k, v):
    """q f[B, G, R, dk] over k, v f[B, G, S, dk] -> f[B, G, R, dk]."""
    logits = attention_logits(q, k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    return jnp.einsum("bgrs,bgsk->bgrk", probs, v)


def decoder_layer_step(p, x, self_k, self_v, cross_k, cross_v, d: Dims, mask=None):
    """One incremental step of one decoder layer.

    x f[B, D]; self_k, self_v f[B, G, t-1, dk] (the cache before this step); cross_k,
    cross_v f[B, G, S, dk] or None for a layer without cross-attention. Returns the
    new state and this step's key and value f[B, G, dk] (the caller writes them into
    its cache in place). The current token attends to the cache and to itself
    without copying the cache. ``mask`` (bool, broadcast to f[B, G, R, t-1]) hides
    cache positions not yet written when the cache is preallocated.
    """
    B = x.shape[0]
    h = rms_norm(x, p["attn_norm"])
    q, k_new, v_new = _split_qkv(h @ p["qkv"], d)
    q = q.reshape(B, d.G, d.R, d.dk)
    k_new = k_new.reshape(B, d.G, d.dk)
    v_new = v_new.reshape(B, d.G, d.dk)
    past = attention_logits(q, self_k)
    if mask is not None:
        past = jnp.where(mask, past, -1e9)
    logits = jnp.concatenate([past, jnp.einsum("bgrk,bgk->bgr", q, k_new)[..., None]], axis=-1)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    att = (jnp.einsum("bgrs,bgsk->bgrk", probs[..., :-1], self_v)
           + probs[..., -1:] * v_new[:, :, None, :])
    x = x + att.reshape(B, d.H * d.dk) @ p["attn_out"]
    if cross_k is not None:
        h = rms_norm(x, p["cross_norm"])
        q = (h @ p["cross_q"]).reshape(B, d.G, d.R, d.dk)
        x = x + _attend(q, cross_k, cross_v).reshape(B, d.H * d.dk) @ p["cross_out"]
    x = x + mlp(rms_norm(x, p["mlp_norm"]), p, d)
    return x, k_new, v_new


def has_cross(i: int, every: int) -> bool:
    """Flaxformer FiDO placement: layer i (0-based) has cross-attention when (i+1) % K == 0."""
    return (i + 1) % every == 0


def init_decoder(rand, dec: StackSpec, dtype, vocab: int, D_enc: int) -> dict:
    d = Dims.of(dec)
    return {
        "layers": [init_layer(rand, d, dtype, has_cross(i, dec.cross_attn_every), D_enc)
                   for i in range(dec.num_layers)],
        "embed": rand((vocab, d.D), dtype, 1.0),
        "final_norm": jnp.ones((d.D,), dtype),
        "logits": rand((d.D, vocab), dtype, d.D ** -0.5),
    }


def decoder_step(p, tokens, self_ks, self_vs, cross_ks, cross_vs, dec: StackSpec, mask=None):
    """One greedy decoding step through the whole decoder: embedding, every layer,
    final norm, logits over the vocabulary, argmax. ``cross_ks``/``cross_vs`` hold
    one cache per cross-attention layer, in layer order; ``mask`` as in
    :func:`decoder_layer_step`. Returns the next tokens and the new keys and values
    of every layer."""
    d = Dims.of(dec)
    x = jnp.take(p["embed"], tokens, axis=0)
    new_k, new_v, c = [], [], 0
    for i, lp in enumerate(p["layers"]):
        ck = cv = None
        if has_cross(i, dec.cross_attn_every):
            ck, cv, c = cross_ks[c], cross_vs[c], c + 1
        x, k, v = decoder_layer_step(lp, x, self_ks[i], self_vs[i], ck, cv, d, mask)
        new_k.append(k)
        new_v.append(v)
    logits = rms_norm(x, p["final_norm"]) @ p["logits"]
    return jnp.argmax(logits, axis=-1).astype(tokens.dtype), new_k, new_v


# --------------------------------------------------------------------------- whole sample


def init_model(rand, model, dtype) -> dict:
    """Random weights of a whole FiD/FiDO model (``ModelSpec``)."""
    de = Dims.of(model.encoder)
    return {
        "enc_embed": rand((model.vocab_size, de.D), dtype, 1.0),
        "enc_layers": [init_layer(rand, de, dtype) for _ in range(model.encoder.num_layers)],
        "enc_norm": jnp.ones((de.D,), dtype),
        "dec": init_decoder(rand, model.decoder, dtype, model.vocab_size, de.D),
    }


def generate(p, passages, model, target_len: int):
    """Encode every passage separately, project the cross-attention keys and values
    once, then decode ``target_len`` tokens greedily.

    passages: int32[B, P, N] token ids. Returns int32[B, T]. The self-attention cache
    is allocated for all T steps and masked, so every step reads T positions (the
    cost model's per-step t; the difference is T/2 tokens of self-attention cache per
    step, small next to the S cross-attention tokens).
    """
    enc, dec = model.encoder, model.decoder
    de, dd = Dims.of(enc), Dims.of(dec)
    B, P, N = passages.shape
    x = jnp.take(p["enc_embed"], passages.reshape(B * P, N), axis=0)
    for lp in p["enc_layers"]:
        x = encoder_layer(lp, x, de)
    enc_out = rms_norm(x, p["enc_norm"]).reshape(B, P * N, de.D)
    cross = [cross_kv(lp, enc_out, dd) for i, lp in enumerate(p["dec"]["layers"])
             if has_cross(i, dec.cross_attn_every)]
    cross_ks, cross_vs = [c[0] for c in cross], [c[1] for c in cross]
    L = dec.num_layers
    dtype = enc_out.dtype
    ks = jnp.zeros((L, B, dd.G, target_len, dd.dk), dtype)
    vs = jnp.zeros((L, B, dd.G, target_len, dd.dk), dtype)

    def step(carry, t):
        tokens, ks, vs = carry
        mask = (jnp.arange(target_len) < t)[None, None, None, :]
        nxt, new_k, new_v = decoder_step(p["dec"], tokens, ks, vs, cross_ks, cross_vs, dec, mask)
        ks = jax.lax.dynamic_update_slice(ks, jnp.stack(new_k)[:, :, :, None, :], (0, 0, 0, t, 0))
        vs = jax.lax.dynamic_update_slice(vs, jnp.stack(new_v)[:, :, :, None, :], (0, 0, 0, t, 0))
        return (nxt, ks, vs), nxt

    start = jnp.zeros((B,), jnp.int32)
    _, out = jax.lax.scan(step, (start, ks, vs), jnp.arange(target_len))
    return out.T

