"""The cost model against closed forms written out by hand, published parameter counts,
the flaxformer cross-attention placement rule, and invariants (hypothesis).

Expected values are derived here from the architecture (T5 v1.1 shapes as published in
the flaxformer gin files, copied below by hand), never from the package's own output.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import T5  # tests/reference.py

from fidoperf.costmodel.prediction import (
    Settings,
    memory_footprint,
    model_dict,
    op_times,
    operator_list,
    ops_table,
    predict,
)
from fidoperf.specs import Workload, load_model, model_names, override_model

VOCAB = 32128
BF16 = 2  # bytes per element

# Published parameter counts of the T5 v1.1 checkpoints:
# https://github.com/google-research/text-to-text-transfer-transformer/blob/main/released_checkpoints.md
PUBLISHED_PARAMS = {"small": 77e6, "base": 248e6, "large": 783e6, "xl": 2.85e9, "xxl": 11.1e9}

FAST = settings(max_examples=40, deadline=None, database=None)


@functools.cache
def model(name: str):
    return load_model(name)


def variant(name: str, **changes):
    return override_model(model(name), **changes)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def cross_layers_by_rule(num_layers: int, period: int) -> list[int]:
    """Flaxformer FiDO: decoder layer i (0-based) has cross-attention when (i+1) % K == 0."""
    return [i for i in range(num_layers) if (i + 1) % period == 0]


def phase(ops, name):
    return ops[ops["phase"] == name]


SMALL_WL = Workload(passages=4, passage_len=32, target_len=8, batch=2)


# --------------------------------------------------------------------------- FLOPs


def test_encoder_flops_of_fid_base_match_the_closed_form(round_chip):
    L, H, dk, D, F = T5["base"]
    G = H  # multi-head attention in the encoder
    P, N, B = 40, 256, 24
    S = P * N
    wl = Workload(passages=P, passage_len=N, target_len=32, batch=B)
    # Per token per layer: Q,K,V projections D x (H+2G)dk and the output Hdk x D, the
    # gated MLP (wi_0, wi_1: D x F; wo: F x D), 2 FLOPs per multiply-add; attention
    # over the N tokens of the passage: QK^T and PV, 2 x N x H x dk each.
    projections = 2 * (D * (H + 2 * G) * dk + H * dk * D) + 2 * 3 * D * F
    attention = 2 * 2 * N * H * dk
    matmul_per_sample = S * L * (projections + attention)
    assert matmul_per_sample == 1_836_098_519_040  # written out: 10240 * 12 * 14,942,208

    pred = predict(model("fid-base"), round_chip, wl)
    enc = phase(pred.ops, "encoder")
    matmul = enc[enc["kind"].isin(["matmul", "attention"])]["flops"].sum() / B
    assert matmul == pytest.approx(matmul_per_sample, rel=1e-12)
    # Norms, softmax, GELU and residual adds are the rest: well under 1% here.
    total = pred.totals["encoder_flops"]
    assert matmul_per_sample < total <= 1.01 * matmul_per_sample


def test_decoder_matmul_flops_match_the_closed_form(round_chip):
    L, H, dk, D, F = T5["base"]
    G, K = 1, 6  # FiDO-Base decoder: MQA, cross-attention every 6 layers
    Lc = len(cross_layers_by_rule(L, K))
    P, N, T, B = 10, 64, 12, 3
    S = P * N
    per_step = (
        L * (2 * D * (H + 2 * G) * dk + 2 * H * dk * D + 2 * 3 * D * F)  # self-attn proj + MLP
        + Lc * (2 * D * H * dk + 2 * H * dk * D)  # cross-attention Q and output projections
        + 2 * D * VOCAB  # output head
        + Lc * 2 * 2 * H * S * dk  # cross-attention QK^T and PV over all S encoder tokens
    )
    self_attention = L * 2 * 2 * H * dk * (T * (T + 1) // 2)  # cache of t tokens at step t
    expected = T * per_step + self_attention

    wl = Workload(passages=P, passage_len=N, target_len=T, batch=B)
    dec = phase(ops_table(model("fido-base"), round_chip, wl), "decoder")
    got = dec[dec["kind"].isin(["matmul", "attention"])]["flops"].sum() / B
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kv_heads", [12, 6, 4, 3, 2, 1])
def test_cross_attention_does_h_over_g_flops_per_byte_of_kv_cache(kv_heads, round_chip):
    """QK^T and PV each do 2 x H x S x dk FLOPs per sample and step and read G x S x dk
    keys (or values) of 2 bytes: H/G FLOPs per cache byte, 1 for MHA, whatever the batch."""
    m = variant("fid-base", kv_heads=kv_heads)
    for batch in (1, 24):
        ops = ops_table(m, round_chip, SMALL_WL.replace(batch=batch))
        x = ops[ops["op"].isin(["cross_attn_logits", "cross_attn_values"])]
        assert len(x) == 2 * 12
        assert x["flops"].sum() / x["cross_kv_bytes"].sum() == pytest.approx(12 / kv_heads, rel=1e-12)
        per_row = x["flops"] / x["cross_kv_bytes"]
        assert np.allclose(per_row, 12 / kv_heads, rtol=1e-12)


@pytest.mark.parametrize("period", [1, 2, 3, 6])
def test_layer_sparse_cross_attention_divides_cross_costs_by_k(period, round_chip):
    L, H, dk, D, F = T5["base"]
    G = H
    P, N, T, B = 8, 64, 6, 4
    S = P * N
    wl = Workload(passages=P, passage_len=N, target_len=T, batch=B)
    ops = ops_table(variant("fid-base", cross_attn_every=period), round_chip, wl)
    Lc = L // period
    # Each step, each cross-attention layer reads all keys (logits) and values (outputs).
    read = T * Lc * 2 * B * S * G * dk * BF16
    assert phase(ops, "decoder")["cross_kv_bytes"].sum() == pytest.approx(read, rel=1e-12)
    # The one-off K/V projection of the encoder output, [B*S, D] @ [D, 2*G*dk], per layer.
    proj_flops = Lc * 2 * B * S * D * 2 * G * dk
    assert phase(ops, "cross_kv")["flops"].sum() == pytest.approx(proj_flops, rel=1e-12)
    # ... so both are the dense (K = 1) figure divided by K.
    dense = ops_table(model("fid-base"), round_chip, wl)
    for ph, col in [("decoder", "cross_kv_bytes"), ("cross_kv", "flops"), ("cross_kv", "bytes")]:
        assert phase(ops, ph)[col].sum() * period == pytest.approx(phase(dense, ph)[col].sum(), rel=1e-12)


# --------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("name", ["fid-base", "fido-base", "fido-base-xl"])
def test_decoder_weights_are_read_once_per_step_whatever_the_batch(name, round_chip):
    m = model(name)
    L, H, dk, D, F = T5[m.decoder.size]
    G = m.decoder.num_kv_heads
    Lc = len(cross_layers_by_rule(L, m.decoder.cross_attn_every))
    # Self-attention QKV + output, gated MLP, two RMS-norm scales per layer; cross-attention
    # Q + output and its norm scale; the final norm and the output head. The cross K/V
    # projections run once, before decoding (phase cross_kv), so they are not here.
    per_step = BF16 * (
        L * (D * (H + 2 * G) * dk + H * dk * D + 3 * D * F + 2 * D)
        + Lc * (D * H * dk + H * dk * D + D)
        + D + D * VOCAB
    )
    T = 5
    for batch in (1, 8, 64):
        dec = phase(ops_table(m, round_chip, SMALL_WL.replace(batch=batch, target_len=T)), "decoder")
        gather = dec["kind"] == "gather"
        assert dec.loc[~gather, "weight_bytes"].sum() / T == pytest.approx(per_step, rel=1e-12)
        # The embedding lookup reads one row of the table per sample: that part does scale.
        assert dec.loc[gather, "weight_bytes"].sum() / T == pytest.approx(batch * D * BF16, rel=1e-12)


@pytest.mark.parametrize("name", ["fid-base", "fido-base"])
def test_kv_bytes_per_sample_do_not_change_with_batch(name, round_chip):
    m = model(name)
    L, H, dk, D, F = T5["base"]
    G = m.decoder.num_kv_heads
    Lc = len(cross_layers_by_rule(L, m.decoder.cross_attn_every))
    P, N, T = 5, 48, 7
    S = P * N
    c = BF16
    # Self-attention cache: this step's K and V written, then t keys and t values read.
    self_kv = L * sum(2 * G * dk * c + 2 * t * G * dk * c for t in range(1, T + 1))
    # Cross-attention cache: written once by the projection, read whole at every step.
    cross_kv = Lc * 2 * S * G * dk * c * (1 + T)
    for batch in (1, 8, 64):
        ops = ops_table(m, round_chip, Workload(passages=P, passage_len=N, target_len=T, batch=batch))
        assert ops["self_kv_bytes"].sum() / batch == pytest.approx(self_kv, rel=1e-12)
        assert ops["cross_kv_bytes"].sum() / batch == pytest.approx(cross_kv, rel=1e-12)


def test_self_attention_cache_read_grows_linearly_with_the_step(round_chip):
    L, H, dk, D, F = T5["base"]
    G, T, B = 12, 16, 3
    wl = SMALL_WL.replace(target_len=T, batch=B)
    per_token = B * G * dk * BF16  # keys (or values) of one cached token, whole batch
    calls = [op for ph, layer, op, _ in operator_list(model("fid-base"), wl)
             if ph == "decoder" and op.op in ("self_attn_logits", "self_attn_values")]
    assert len(calls) == 2 * L
    for op in calls:
        np.testing.assert_array_equal(np.asarray(op.self_kv_bytes), per_token * np.arange(1, T + 1))
    rows = ops_table(model("fid-base"), round_chip, wl)
    rows = rows[rows["op"].isin(["self_attn_logits", "self_attn_values"])]
    assert np.allclose(rows["self_kv_bytes"], per_token * T * (T + 1) / 2, rtol=1e-12)


@pytest.mark.parametrize("name", ["fid-base", "fido-base", "fid-large", "fido-large-xxl", "fido-small"])
@pytest.mark.parametrize("batch", [1, 24])
def test_kv_cache_footprint_formula(name, batch, round_chip):
    """2 (K and V) x layers x batch x tokens x kv heads x d_kv x bytes (Pope et al. 2022)."""
    m = model(name)
    L, H, dk, D, F = T5[m.decoder.size]
    G = m.decoder.num_kv_heads
    Lc = len(cross_layers_by_rule(L, m.decoder.cross_attn_every))
    P, N, T = 40, 256, 32
    wl = Workload(passages=P, passage_len=N, target_len=T, batch=batch)
    mem = memory_footprint(m, round_chip, wl)
    assert mem["self_kv_bytes"] == 2 * L * batch * T * G * dk * BF16
    assert mem["cross_kv_bytes"] == 2 * Lc * batch * (P * N) * G * dk * BF16


def test_each_step_reads_the_whole_cache_that_memory_footprint_holds(round_chip):
    """Two code paths must agree: the cross cache read per step (ops) is the cross cache
    held (memory_footprint); at the last step the self-attention reads its whole cache."""
    for name in ("fid-base", "fido-large"):
        m = model(name)
        wl = SMALL_WL.replace(target_len=6)
        mem = memory_footprint(m, round_chip, wl)
        dec = phase(ops_table(m, round_chip, wl), "decoder")
        assert dec["cross_kv_bytes"].sum() / wl.target_len == pytest.approx(mem["cross_kv_bytes"], rel=1e-12)
        last = sum(float(np.asarray(op.self_kv_bytes)[-1]) for ph, _, op, _ in operator_list(m, wl)
                   if ph == "decoder" and op.op in ("self_attn_logits", "self_attn_values"))
        assert last == pytest.approx(mem["self_kv_bytes"], rel=1e-12)


# --------------------------------------------------------------------------- parameters


def t5_parameter_shapes(enc: str, dec: str, kv_heads: int | None = None, period: int = 1):
    """Every parameter tensor of a (FiDO-style) T5 v1.1 encoder-decoder, named as in the
    released checkpoints: a shared input embedding per width, per layer q, k, v, o, the
    gated MLP (wi_0, wi_1, wo) and RMS-norm scales (no biases), relative position bias
    (32 buckets x heads) in the first layer of each stack, untied lm_head."""
    shapes = {}
    Le, He, dke, De, Fe = T5[enc]
    Ld, Hd, dkd, Dd, Fd = T5[dec]
    Gd = Hd if kv_heads is None else kv_heads
    shapes["shared"] = (VOCAB, De)
    if Dd != De:
        shapes["decoder.embed_tokens"] = (VOCAB, Dd)
    stacks = (("encoder", Le, He, He, dke, De, Fe), ("decoder", Ld, Hd, Gd, dkd, Dd, Fd))
    for stack, L, H, G, dk, D, F in stacks:
        shapes[f"{stack}.block.0.relative_attention_bias"] = (32, H)
        shapes[f"{stack}.final_layer_norm"] = (D,)
        for i in range(L):
            p = f"{stack}.block.{i}"
            shapes.update({f"{p}.self.q": (D, H * dk), f"{p}.self.k": (D, G * dk), f"{p}.self.v": (D, G * dk),
                           f"{p}.self.o": (H * dk, D), f"{p}.self.norm": (D,),
                           f"{p}.mlp.wi_0": (D, F), f"{p}.mlp.wi_1": (D, F), f"{p}.mlp.wo": (F, D),
                           f"{p}.mlp.norm": (D,)})
            if stack == "decoder" and (i + 1) % period == 0:
                shapes.update({f"{p}.cross.q": (D, H * dk), f"{p}.cross.k": (De, G * dk),
                               f"{p}.cross.v": (De, G * dk), f"{p}.cross.o": (H * dk, D),
                               f"{p}.cross.norm": (D,)})
    shapes["lm_head"] = (VOCAB, Dd)
    return shapes


def count(shapes) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


@pytest.mark.parametrize("size", list(T5))
def test_parameter_counts_match_the_published_t5_v1_1_figures(size, round_chip):
    params = memory_footprint(model(f"fid-{size}"), round_chip, SMALL_WL)["params"]
    assert params == pytest.approx(PUBLISHED_PARAMS[size], rel=0.01), f"fid-{size}: {params:,}"
    # The hand-written parameter tree agrees with the published figure too.
    assert count(t5_parameter_shapes(size, size)) == pytest.approx(PUBLISHED_PARAMS[size], rel=0.01)


@pytest.mark.parametrize("name", [n for n in model_names() if n.startswith(("fid-", "fido-"))])
def test_parameter_counts_equal_the_parameter_tree(name, round_chip):
    m = model(name)
    shapes = t5_parameter_shapes(m.encoder.size, m.decoder.size, m.decoder.num_kv_heads,
                                 m.decoder.cross_attn_every)
    params = memory_footprint(m, round_chip, SMALL_WL)["params"]
    assert params == count(shapes), f"{name}: model {params:,} vs parameter tree {count(shapes):,}"


def test_weight_bytes_follow_the_weight_dtype(round_chip):
    m = model("fido-base")
    for dtype, nbytes in (("bf16", 2), ("fp32", 4), ("int8", 1)):
        mem = memory_footprint(m, round_chip, Workload.with_dtype(dtype, batch=2))
        assert mem["weight_bytes"] == mem["params"] * nbytes
        # int8 is W8A8: the caches stay bf16; fp32 stores them in fp32.
        assert mem["self_kv_bytes"] == 2 * 12 * 2 * 32 * 1 * 64 * (4 if dtype == "fp32" else 2)


@pytest.mark.parametrize("name", ["fid-base", "fido-base", "fid-large"])
def test_max_batch_is_the_largest_batch_that_fits(name, tpu_v4):
    m = model(name)
    mb = memory_footprint(m, tpu_v4, Workload())["max_batch"]
    assert mb >= 1
    at = memory_footprint(m, tpu_v4, Workload(batch=mb))
    over = memory_footprint(m, tpu_v4, Workload(batch=mb + 1))
    assert at["fits"] and at["peak_bytes"] <= tpu_v4.hbm_capacity_bytes
    assert not over["fits"] and over["peak_bytes"] > tpu_v4.hbm_capacity_bytes
    # The footprint holds at least the weights and both caches.
    assert at["peak_bytes"] >= at["weight_bytes"] + at["cross_kv_bytes"] + at["self_kv_bytes"]


# --------------------------------------------------------------------------- roofline


# The round chip of conftest.py: 100 TFLOP/s in bf16, 1 TB/s, efficiency 1.0, no overhead.
ROUND_PEAK_BF16, ROUND_BW = 100e12, 1e12


def test_op_times_are_max_of_compute_and_memory(round_chip):
    seen = 0
    for _, _, op, _ in operator_list(model("fido-base"), SMALL_WL):
        flops = np.asarray(op.flops, dtype=float)
        nbytes = np.asarray(op.bytes, dtype=float)
        compute_s, memory_s, time_s = op_times(op, round_chip, "bf16", "bf16")
        np.testing.assert_allclose(compute_s, flops / ROUND_PEAK_BF16, rtol=1e-12)
        np.testing.assert_allclose(memory_s, nbytes / ROUND_BW, rtol=1e-12)
        np.testing.assert_array_equal(time_s, np.maximum(compute_s, memory_s))
        *_, upper = op_times(op, round_chip, "bf16", "bf16", Settings(overlap="no_overlap"))
        np.testing.assert_allclose(upper, compute_s + memory_s, rtol=1e-12)
        seen += 1
    assert seen > 50


def test_ops_table_roofline_columns(round_chip):
    wl = SMALL_WL.replace(target_len=10)
    ops = ops_table(model("fid-base"), round_chip, wl)
    assert set(ops["bound"]) == {"compute", "memory"}
    assert np.allclose(ops["compute_s"], ops["flops"] / ROUND_PEAK_BF16, rtol=1e-12)
    assert np.allclose(ops["memory_s"], ops["bytes"] / ROUND_BW, rtol=1e-12)
    assert ((ops["bound"] == "memory") == (ops["memory_s"] > ops["compute_s"])).all()
    assert np.allclose(ops["intensity"], ops["flops"] / ops["bytes"], rtol=1e-12)
    # One call per row: time is the max. Decoder rows add up steps, each a max.
    single = ops["calls"] == 1
    assert single.sum() > 0
    assert np.allclose(ops.loc[single, "time_s"], np.maximum(ops["compute_s"], ops["memory_s"])[single],
                       rtol=1e-12)
    lo = np.maximum(ops["compute_s"], ops["memory_s"])
    hi = ops["compute_s"] + ops["memory_s"]
    assert ((ops["time_s"] >= lo * (1 - 1e-12)) & (ops["time_s"] <= hi * (1 + 1e-12))).all()
    upper = ops_table(model("fid-base"), round_chip, wl, Settings(overlap="no_overlap"))
    assert np.allclose(upper["time_s"], upper["compute_s"] + upper["memory_s"], rtol=1e-12)


def test_efficiency_and_overhead_are_applied(write_yaml):
    from fidoperf.specs import load_hardware

    path = write_yaml("slow-chip.yaml", """\
        name: slow-chip
        peak_flops_per_s: {bf16: {value: 100.0e+12, source: made up}}
        memory:
          capacity_bytes: {value: 16.0e+9, source: made up}
          bandwidth_bytes_per_s: {value: 1.0e+12, source: made up}
        efficiency:
          compute: {value: 0.5, source: made up}
          memory: {value: 0.8, source: made up}
        overhead_s_per_op: {value: 1.0e-6, source: made up}
        """)
    hw = load_hardware(path)
    ops = ops_table(model("fido-base"), hw, SMALL_WL)
    assert np.allclose(ops["compute_s"], ops["flops"] / (0.5 * 100e12), rtol=1e-12)
    assert np.allclose(ops["memory_s"], ops["bytes"] / (0.8 * 1e12), rtol=1e-12)
    single = ops["calls"] == 1
    expected = np.maximum(ops["compute_s"], ops["memory_s"]) + 1e-6
    assert np.allclose(ops.loc[single, "time_s"], expected[single], rtol=1e-12)
    raw = ops_table(model("fido-base"), hw, SMALL_WL, Settings(efficiency=False))
    assert np.allclose(raw["compute_s"], raw["flops"] / 100e12, rtol=1e-12)


# --------------------------------------------------------------------------- placement


def test_flaxformer_placement_24_layers_period_6(round_chip):
    """flaxformer architectures/fido: 24 decoder layers, period 6 -> layers 5, 11, 17, 23."""
    expected = [5, 11, 17, 23]
    for m in (model("fido-large"), variant("fid-large", cross_attn_every=6)):
        assert m.decoder.num_layers == 24 and m.decoder.cross_attn_every == 6
        assert [i for i in range(24) if m.decoder.has_cross_attn(i)] == expected
        assert m.decoder.num_cross_layers == 4
        assert model_dict(m)["decoder"]["cross_attn_layers"] == expected
        ops = ops_table(m, round_chip, Workload(passages=1, passage_len=8, target_len=2, batch=1))
        cross = ops[ops["op"].str.startswith("cross_attn")]
        assert sorted(set(cross["layer"])) == expected
        assert (cross["phase"] == "decoder").all()
        # Every one of those layers has the whole cross-attention block.
        per_layer = cross.groupby("layer")["op"].apply(frozenset)
        assert len(set(per_layer)) == 1 and {"cross_attn_q", "cross_attn_logits", "cross_attn_values",
                                            "cross_attn_out"} <= next(iter(set(per_layer)))
        assert sorted(phase(ops, "cross_kv")["layer"]) == expected


@pytest.mark.parametrize("name,layers", [("fid-large", 24), ("fid-base", 12), ("fid-small", 8)])
def test_period_1_is_every_layer(name, layers, round_chip):
    m = model(name)
    ops = ops_table(m, round_chip, Workload(passages=1, passage_len=8, target_len=2, batch=1))
    assert sorted(set(ops.loc[ops["op"] == "cross_attn_logits", "layer"])) == list(range(layers))
    assert sorted(phase(ops, "cross_kv")["layer"]) == list(range(layers))


def test_fido_with_all_heads_and_period_1_is_fid(round_chip):
    """The reference code's equivalence test, here on costs: FiDO with G = H and K = 1 is FiD."""
    a = ops_table(variant("fido-base", kv_heads=12, cross_attn_every=1), round_chip, SMALL_WL)
    b = ops_table(model("fid-base"), round_chip, SMALL_WL)
    assert list(a["op"]) == list(b["op"])
    for col in ("flops", "bytes", "time_s", "cross_kv_bytes", "self_kv_bytes"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy())


# --------------------------------------------------------------------------- invariants

SIZES = ("small", "base", "large")

workloads = st.builds(
    Workload,
    passages=st.integers(1, 64),
    passage_len=st.integers(1, 512),
    target_len=st.integers(1, 40),
    batch=st.integers(1, 64),
)


@st.composite
def fido_variants(draw):
    """(encoder size, decoder size, K, G): any FiD or FiDO built from T5 v1.1 sizes."""
    enc, dec = draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES))
    L, H = T5[dec][0], T5[dec][1]
    return enc, dec, draw(st.integers(1, L)), draw(st.sampled_from(divisors(H)))


def build(enc, dec, period=1, kv=None):
    m = model(f"fid-{dec}")
    if enc != dec:
        m = override_model(m, encoder_size=enc)
    return override_model(m, cross_attn_every=period, kv_heads=kv if kv is not None else T5[dec][1])


@FAST
@given(arch=fido_variants(), wl=workloads)
def test_operator_rows_sum_to_the_totals(arch, wl, round_chip):
    hw = round_chip
    pred = predict(build(*arch), hw, wl)
    ops, t, B = pred.ops, pred.totals, wl.batch
    for ph in ("encoder", "cross_kv", "decoder"):
        rows = phase(ops, ph)
        assert len(rows) > 0
        assert t[f"{ph}_flops"] * B == pytest.approx(rows["flops"].sum(), rel=1e-12)
        assert t[f"{ph}_bytes"] * B == pytest.approx(rows["bytes"].sum(), rel=1e-12)
        assert t[f"{ph}_time_s"] * B == pytest.approx(rows["time_s"].sum(), rel=1e-12)
    assert t["time_per_sample_s"] == pytest.approx(
        t["encoder_time_s"] + t["cross_kv_time_s"] + t["decoder_time_s"], rel=1e-12)
    assert t["total_flops"] == pytest.approx(ops["flops"].sum() / B, rel=1e-12)
    assert t["total_bytes"] == pytest.approx(ops["bytes"].sum() / B, rel=1e-12)
    # Bytes split by source add up to the bytes.
    split = ops[["weight_bytes", "act_bytes", "self_kv_bytes", "cross_kv_bytes"]].sum(axis=1)
    assert np.allclose(split, ops["bytes"], rtol=1e-12)
    assert (ops[["flops", "bytes", "time_s"]] >= 0).all().all()


@FAST
@given(arch=fido_variants(), wl=workloads, more=st.integers(1, 64))
def test_more_passages_never_cost_less(arch, wl, more, round_chip):
    hw, m = round_chip, build(*arch)
    a = predict(m, hw, wl)
    b = predict(m, hw, wl.replace(passages=wl.passages + more))
    for key in ("total_flops", "total_bytes", "time_per_sample_s", "encoder_time_s", "cross_kv_time_s",
                "decoder_time_s", "decoder_bytes", "cross_kv_bytes"):
        assert b.totals[key] >= a.totals[key] * (1 - 1e-12), key
    assert b.memory["max_batch"] <= a.memory["max_batch"]


@FAST
@given(arch=fido_variants(), wl=workloads, data=st.data())
def test_fewer_kv_heads_never_move_more_bytes(arch, wl, data, round_chip):
    """MQA (G = 1) <= GQA (1 < G < H) <= MHA (G = H), the rest of the model unchanged."""
    enc, dec, period, _ = arch
    H = T5[dec][1]
    g1, g2 = sorted(data.draw(st.lists(st.sampled_from(divisors(H)), min_size=2, max_size=2)))
    hw = round_chip
    t = {g: predict(build(enc, dec, period, g), hw, wl).totals for g in {1, g1, g2, H}}
    for key in ("total_bytes", "decoder_bytes", "cross_kv_bytes", "time_per_sample_s"):
        assert t[1][key] <= t[g1][key] * (1 + 1e-12), key
        assert t[g1][key] <= t[g2][key] * (1 + 1e-12), key
        assert t[g2][key] <= t[H][key] * (1 + 1e-12), key
    assert t[1]["encoder_bytes"] == t[H]["encoder_bytes"]  # the encoder keeps multi-head attention


@FAST
@given(arch=fido_variants(), wl=workloads, more=st.integers(1, 64))
def test_a_larger_batch_never_lowers_throughput_on_the_roofline(arch, wl, more, round_chip):
    """Per op and sample, time = max(f / peak, (W / B + b) / bw) with f, b per sample and W the
    weights shared by the batch: it cannot grow with B. (Latency per step does grow, and
    the larger batch may not fit in memory: neither is claimed here.)"""
    hw, m = round_chip, build(*arch)
    a = predict(m, hw, wl).totals
    b = predict(m, hw, wl.replace(batch=wl.batch + more)).totals
    assert b["samples_per_s"] >= a["samples_per_s"] * (1 - 1e-12)
    assert b["tokens_per_s"] >= a["tokens_per_s"] * (1 - 1e-12)
    assert b["time_per_step_s"] >= a["time_per_step_s"] * (1 - 1e-12)


@FAST
@given(arch=fido_variants(), wl=workloads)
def test_fido_is_never_slower_than_fid_of_the_same_sizes(arch, wl, round_chip):
    enc, dec, period, kv = arch
    hw = round_chip
    fido = predict(build(enc, dec, period, kv), hw, wl).totals
    fid = predict(build(enc, dec), hw, wl).totals
    for key in ("time_per_sample_s", "encoder_time_s", "cross_kv_time_s", "decoder_time_s", "total_bytes",
                "total_flops"):
        assert fido[key] <= fid[key] * (1 + 1e-12), key
