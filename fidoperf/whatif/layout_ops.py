"""The ops one chip of a replica runs for one encode call, one cross-attention key/value
projection, one decoding step and one shipment between pools, under a parallel layout.

The serving simulator needs these pieces separately and vectorised over batch size,
passages and cache length; :func:`fidoperf.costmodel.prediction.operator_list` builds the
same ops for one whole batch of scalar sizes. Both compose the same builders
(:mod:`fidoperf.costmodel.ops` for the kernels, :mod:`fidoperf.costmodel.parallel` for the
per-chip shapes, the collectives and the shipment), in the same order, so for identical
requests the pieces add up to ``predict``'s batch time (tests/test_simulate.py checks
this for tensor parallelism, batch-sharded keys and values, and separate pools).

These functions belong with ``operator_list`` in ``fidoperf.costmodel``; they live here
until ``operator_list`` is rebuilt from them (the costmodel package is owned elsewhere).

Glossary (as in :mod:`fidoperf.costmodel.ops`): b requests in a call or step,
``passages`` the passages of a call (the encoder flattens b x P), N tokens per passage,
X cross-attention tokens per request, t self-attention cache length, T tensor
parallelism (chips per replica).
"""

from __future__ import annotations

import numpy as np

from ..costmodel import ops as costs
from ..costmodel import parallel
from ..costmodel.prediction import dtype_bytes
from ..specs import ModelSpec, Workload
from ..specs.implementation import Implementation
from ..specs.layout import Layout

Ops = list[tuple[costs.Op, float]]  # (op, calls)


def encoder_call_ops(model: ModelSpec, wl: Workload, layout: Layout, passages, N, impl: Implementation,
                     rows: int) -> Ops:
    """The encoder stack over ``passages`` passages of N tokens on one chip of a
    T-way replica (heads and MLP split, two all-reduces of [passages x N, D] per layer);
    the encoder treats the b x P passages of a call alike (B = 1, P = passages)."""
    cd = parallel.chip_dims(model, layout)
    w, a, _ = dtype_bytes(wl)
    De, He, Ge, dke, Fe, ne = cd.encoder
    layer = costs.encoder_layer(De, He, Ge, dke, Fe, ne, 1, passages, N, w, a, impl, rows)
    layer += parallel.encoder_layer_comm(passages * N, De, a, cd.T)
    out: Ops = [(op, 1) for op in costs.encoder_embed(De, 1, passages, N, w, a, impl)]
    out += [(op, model.encoder.num_layers) for op in layer]
    out.append((costs.encoder_final(De, 1, passages, N, w, a, impl), 1))
    return out


def cross_kv_call_ops(model: ModelSpec, wl: Workload, layout: Layout, passages, N, impl: Implementation) -> Ops:
    """The cross-attention key/value projection of ``passages`` passages of N tokens on
    one chip, for every decoder layer with cross-attention: with keys and values split by
    head, the chip's G/T heads of every passage of the call; batch-sharded, all G heads of
    the passages of the requests it holds (:func:`kv_passages_per_chip`)."""
    cd = parallel.chip_dims(model, layout)
    w, a, c = dtype_bytes(wl)
    De = cd.encoder[0]
    dkd = cd.decoder[3]
    layer = costs.cross_kv_layer(De, cd.cross_kv_heads, dkd, 1, passages, N, w, a, c, impl)
    return [(op, model.decoder.num_cross_layers) for op in layer]


def kv_passages_per_chip(layout: Layout, requests, passages):
    """Passages whose keys and values one chip projects and holds when ``requests``
    requests of ``passages`` passages in all join: all of them, or with batch-sharded keys
    and values the ceil(b / T) requests of the fullest chip (at the mean passages per
    request, rounded up: exact for identical requests, as ``predict`` counts them)."""
    T = layout.tensor_parallel
    if layout.shard_kv != "batch" or T == 1:
        return passages
    b = np.asarray(requests, dtype=float)
    return np.ceil(np.ceil(b / T) * np.asarray(passages, dtype=float) / b)


def is_attention(op: costs.Op, prefix: str) -> bool:
    """The attention kernels proper (scores, softmax, weighted values; flash attention;
    an eager framework's copy of the growing cache): the ops whose cost follows the
    tokens attended over. Projections, norms, MLP and collectives follow b only."""
    if op.op == "self_kv_cache_cat":
        return prefix == "self_attn"
    return op.kind in ("attention", "softmax") and op.op.startswith(prefix)


def decode_step_ops(model: ModelSpec, wl: Workload, layout: Layout, B, X, t, part: str, impl: Implementation,
                    rows: int) -> Ops:
    """One decoding step of B requests on one chip, one ``part`` of it: "base"
    (everything but attention: weights, projections, MLP, logits over V/T columns, and
    every collective of the step), "self" (the self-attention kernels at cache length t)
    or "cross" (the cross-attention kernels over X tokens per request; batch-sharded, of
    the ceil(B / T) requests a chip holds, all heads)."""
    cd = parallel.chip_dims(model, layout)
    w, a, c = dtype_bytes(wl)
    dec = model.decoder
    Dd, Hd, Gd, dkd, Fd, nd = cd.decoder
    cross_b = np.ceil(np.asarray(B, dtype=float) * cd.cross_batch_share) if cd.batch_sharded else B
    n_cross = dec.num_cross_layers
    out: Ops = []
    for cross, layers in ((True, n_cross), (False, dec.num_layers - n_cross)):
        if not layers:
            continue
        ops = costs.decoder_layer(Dd, Hd, Gd, dkd, Fd, nd, B, 1, X, t, cross, w, a, c, impl, rows,
                                  cross_attention=(cross_b, cd.cross_heads, cd.cross_kv_heads))
        ops += parallel.decoder_layer_comm(B, Dd, Hd, dkd, a, cd.T, cross, cd.batch_sharded)
        for op in ops:
            is_self, is_cross = is_attention(op, "self_attn"), is_attention(op, "cross_attn")
            if (part == "base" and not (is_self or is_cross)) or (part == "self" and is_self) or (
                    part == "cross" and is_cross):
                out.append((op, layers))
    if part == "base":
        out += [(op, 1) for op in costs.decoder_embed(Dd, B, w, a, impl)]
        out += [(op, 1) for op in costs.decoder_head(Dd, cd.vocab_out, B, w, a, impl) + parallel.head_comm(B, cd.T)]
    return out


def ship_bytes_per_token(model: ModelSpec, wl: Workload, ship: str) -> float:
    """Bytes the encoder pool ships per cross-attention token of a request: its encoder
    output, or the projected keys and values of every cross-attention layer."""
    _, a, c = dtype_bytes(wl)
    dec = model.decoder
    return float(parallel.ship_bytes(ship, 1, 1, model.encoder.emb_dim, dec.num_cross_layers, dec.num_kv_heads,
                                     dec.head_dim, a, c))


def ship_op(model: ModelSpec, wl: Workload, layout: Layout, ship: str, tokens) -> costs.Op:
    """Shipping the data of ``tokens`` cross-attention tokens (summed over the requests
    shipped together) from an encoder replica to a decoder replica, its T chips sending
    their shards at once (as ``operator_list`` counts a batch's shipment)."""
    nbytes = ship_bytes_per_token(model, wl, ship) * np.asarray(tokens, dtype=float)
    return parallel.transfer(f"ship_{ship}", nbytes, layout.tensor_parallel)
