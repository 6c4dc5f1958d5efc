"""A model spread over chips: what one chip of a tensor-parallel replica runs and holds,
the collectives between the chips, and what an encoder pool ships to a decoder pool.

Tensor parallelism T (Megatron-LM, Shoeybi et al. 2019, arXiv 1909.08053, section 3):
the Q/K/V and MLP input products are split by columns (heads, MLP width) and the
output products by rows, so every chip computes H/T heads and F/T of the MLP, and the
partial outputs of the attention and MLP output products are summed by one all-reduce
of the [M, D] activations per sub-layer: two per encoder layer, two per decoder layer
plus one for its cross-attention. Norms, residual adds and the input embedding are
replicated; the output projection is split over the vocabulary (V/T columns per chip)
and greedy decoding all-gathers each chip's best (value, index) per sample. Key/value
heads: G/T per chip, or, when T exceeds G, each chip computes and holds the one its
query heads share (replicated: the per-chip cache stops shrinking). With
``shard_kv="batch"`` the cross-attention keys and values are split over the batch
instead (Pope et al., arXiv 2211.05102, section 3.3): a chip projects and holds all G
heads of B/T samples, and the queries are resharded from heads to batch and back by
two all-to-alls of B x H/T x d_kv values per cross-attention.

Separate pools: the encoder pool encodes and ships to the decoder pool either its
outputs ([B, S, D_enc], the decoder pool then projects the cross-attention keys and
values) or the projected keys and values themselves (L_c x 2 x B x S x G x d_kv);
``fidoperf.costmodel.prediction`` evaluates both and keeps the cheaper. With LSA and
MQA the keys and values are several times smaller than the encoder outputs; with
multi-head cross-attention in every layer, many times larger.

Dimension letters as in :mod:`fidoperf.costmodel.ops`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..specs import ModelSpec
from ..specs.layout import Layout, check_tensor_parallel, kv_heads_per_chip
from .ops import Op

SHIP_OPTIONS = ("encoder_outputs", "cross_kv")


@dataclass(frozen=True)
class ChipDims:
    """What one chip of a T-way tensor-parallel replica computes: (D, H, G, dk, F, n_in)
    of each stack as that chip sees them, the logits' columns, and the cross-attention
    kernel's (sample share, query heads, key/value heads)."""

    T: int
    encoder: tuple
    decoder: tuple
    vocab_out: int
    cross_batch_share: float  # fraction of the batch whose cross K/V a chip holds
    cross_heads: int
    cross_kv_heads: int

    @property
    def batch_sharded(self) -> bool:
        return self.cross_batch_share < 1.0


def chip_dims(model: ModelSpec, layout: Layout, where: str = "layout") -> ChipDims:
    """Per-chip shapes of ``model`` under ``layout``; SpecError if T does not split it."""
    T = layout.tensor_parallel
    e, d = model.encoder, model.decoder
    check_tensor_parallel(T, e.num_heads, e.num_kv_heads, where, "encoder")
    check_tensor_parallel(T, d.num_heads, d.num_kv_heads, where, "decoder")
    ge, gd = kv_heads_per_chip(e.num_kv_heads, T), kv_heads_per_chip(d.num_kv_heads, T)
    enc = (e.emb_dim, e.num_heads // T, ge, e.head_dim, math.ceil(e.mlp_dim / T), e.mlp_in_mats)
    dec = (d.emb_dim, d.num_heads // T, gd, d.head_dim, math.ceil(d.mlp_dim / T), d.mlp_in_mats)
    if layout.shard_kv == "batch" and T > 1:
        cross = (1.0 / T, d.num_heads, d.num_kv_heads)
    else:
        cross = (1.0, d.num_heads // T, gd)
    return ChipDims(T, enc, dec, math.ceil(model.vocab_size / T), *cross)


def comm(name: str, collective: str, nbytes, chips: int) -> Op:
    """A collective of ``nbytes`` (nccl-tests' size: the whole buffer on each chip) over
    ``chips`` chips, as an op (no FLOPs, no HBM bytes counted: its time is the
    interconnect's, see fidoperf.costmodel.collectives)."""
    return Op(name, "collective", 0.0 * nbytes, kernel="collective", launches=0,
              shape={"collective": collective, "bytes": nbytes, "chips": chips})


def transfer(name: str, nbytes, streams: int) -> Op:
    """Shipping ``nbytes`` from the encoder pool to the decoder pool over ``streams``
    chip pairs at once."""
    return Op(name, "collective", 0.0 * nbytes, kernel="transfer", launches=0,
              shape={"bytes": nbytes, "streams": streams})


def encoder_layer_comm(M, D, a, T: int) -> list[Op]:
    if T == 1:
        return []
    return [comm("attn_all_reduce", "all_reduce", M * D * a, T), comm("mlp_all_reduce", "all_reduce", M * D * a, T)]


def decoder_layer_comm(B, D, H_chip, dk, a, T: int, cross: bool, batch_sharded: bool) -> list[Op]:
    if T == 1:
        return []
    ops = [comm("self_attn_all_reduce", "all_reduce", B * D * a, T)]
    if cross:
        if batch_sharded:  # queries heads -> batch before the attention, and back after it
            ops += [comm("cross_attn_all_to_all", "all_to_all", 2 * B * H_chip * dk * a, T)]
        ops.append(comm("cross_attn_all_reduce", "all_reduce", B * D * a, T))
    ops.append(comm("mlp_all_reduce", "all_reduce", B * D * a, T))
    return ops


def head_comm(B, T: int) -> list[Op]:
    """Greedy decoding over a vocabulary split V/T per chip: all-gather of each chip's
    best (value, index) per sample, 8 bytes each."""
    return [] if T == 1 else [comm("argmax_all_gather", "all_gather", 8.0 * B * T, T)]


def ship_bytes(what: str, B, S, D_enc, cross_layers, G, dk, a, c):
    """Bytes the encoder pool ships per batch: its outputs, or the projected keys and values."""
    if what == "encoder_outputs":
        return B * S * D_enc * a
    return cross_layers * 2 * B * S * G * dk * c


def cross_kv_per_chip(cd: ChipDims, B, S, cross_layers, dk, c, G_full):
    """Bytes of cross-attention keys and values one chip holds."""
    if cd.batch_sharded:
        return cross_layers * 2 * np.ceil(np.asarray(B, float) * cd.cross_batch_share) * S * G_full * dk * c
    return cross_layers * 2 * B * S * cd.decoder[2] * dk * c


def chip_memory(cd: ChipDims, layers: tuple, vocab: int, kv_heads, layout: Layout, B, P, N, T_len, w, a, c,
                capacity, flash: bool = False, ship: str | None = None) -> dict:
    """Bytes one chip holds (weights, caches, activations) and the largest batch a
    replica can take, for each pool; numbers or numpy arrays (broadcast).

    ``layers``: (encoder layers, decoder layers, cross-attention layers); ``kv_heads``:
    the decoder's key/value heads G (all of them; ``cd`` has those of one chip).
    Returns the figures of the pool whose chips fill up first (its name in ``pool``)
    under the keys of :func:`fidoperf.costmodel.ops.memory_terms`, and, with separate
    pools, each pool's figures under ``pools``. One chip and T = 1 give exactly
    ``memory_terms``."""
    from .ops import activation_bytes_per_sample, kv_cache_bytes, stack_params

    De, He, Ge, dke, Fe, ne = cd.encoder
    Dd, Hd, Gd, dkd, Fd, nd = cd.decoder
    Le, Ld, Lc = layers
    V = vocab
    S = P * N
    cross_g = kv_heads if cd.batch_sharded else Gd
    enc_w = stack_params(De, He, Ge, dke, Fe, ne, Le)
    dec_w = stack_params(Dd, Hd, Gd, dkd, Fd, nd, Ld, 0)
    cross_proj_w = Lc * De * 2 * cross_g * dkd
    cross_w = Lc * (Dd * Hd * dkd + Hd * dkd * Dd + Dd) + cross_proj_w
    emb_in_enc, emb_in_dec = V * De, np.where(np.asarray(De) == np.asarray(Dd), 0, V * Dd)
    emb_out = cd.vocab_out * Dd
    enc_act = activation_bytes_per_sample(De, He, Ge, dke, Fe, ne, P, N, a, flash)
    cross_ps = kv_cache_bytes(Lc, 1, S, cross_g, dkd, c) * cd.cross_batch_share
    self_ps = kv_cache_bytes(Ld, 1, T_len, Gd, dkd, c)
    logits = cd.vocab_out * a
    Bf = np.asarray(B, dtype=float)
    cross_batch = kv_cache_bytes(Lc, 1, S, cross_g, dkd, c) * np.ceil(Bf * cd.cross_batch_share)

    def pool(params, per_sample, self_kv, cross_kv, act):
        weights = params * w
        free = capacity - weights
        max_batch = np.where(free > 0, np.floor(np.maximum(free, 0) / per_sample), 0)
        return {"params": params, "weight_bytes": weights, "self_kv_bytes": self_kv, "cross_kv_bytes": cross_kv,
                "activation_bytes": act, "per_sample_peak_bytes": per_sample,
                "peak_bytes": weights + Bf * per_sample, "max_batch": max_batch, "fits": Bf <= max_batch}

    if not layout.pooled:
        params = enc_w + dec_w + cross_w + emb_in_enc + emb_in_dec + emb_out
        per = np.maximum(np.maximum(enc_act, S * De * a + cross_ps), cross_ps + self_ps + logits)
        out = pool(params, per, Bf * self_ps, cross_batch, Bf * enc_act)
        out["pool"] = "all"
        return out
    on_enc = ship == "cross_kv"
    enc_params = enc_w + emb_in_enc + (cross_proj_w if on_enc else 0)
    enc_per = np.maximum(enc_act, S * De * a + (cross_ps if on_enc else 0))
    dec_params = dec_w + cross_w - (cross_proj_w if on_enc else 0) + emb_in_enc + emb_in_dec + emb_out
    dec_per = np.maximum(0 if on_enc else S * De * a + cross_ps, cross_ps + self_ps + logits)
    pools = {"encoder": pool(enc_params, enc_per, 0.0 * Bf, cross_batch if on_enc else 0.0 * Bf, Bf * enc_act),
             "decoder": pool(dec_params, dec_per, Bf * self_ps, cross_batch, 0.0 * Bf)}
    binding = "encoder" if np.all(pools["encoder"]["max_batch"] < pools["decoder"]["max_batch"]) else "decoder"
    out = dict(pools[binding])
    out["max_batch"] = np.minimum(pools["encoder"]["max_batch"], pools["decoder"]["max_batch"])
    out["fits"] = pools["encoder"]["fits"] & pools["decoder"]["fits"]
    out["pool"] = binding
    out["pools"] = pools
    return out
