"""The FiDO paper's qualitative analysis, reproduced by the model on TPU v4.

de Jong et al., "FiDO: Fusion-in-Decoder optimized for stronger performance and faster
inference", arXiv 2212.08153 (Findings of ACL 2023). The setting is the package's
default (40 passages x 256 tokens, 32 target tokens, batch 24, bf16); only the passage
count is the paper's, the rest are assumptions (shared/reference/fido.md). Only
directions and orders of magnitude are asserted; the speedups are reported in the README.
"""

from __future__ import annotations

import pytest

from fidoperf.costmodel.prediction import predict
from fidoperf.specs import Workload, load_model, override_model

SETTING = Workload()


@pytest.fixture(scope="module")
def results(tpu_v4):
    fid = load_model("fid-base")
    models = {
        "fid-base": fid,
        "lsa": override_model(fid, cross_attn_every=6),
        "mqa": override_model(fid, kv_heads=1),
        "fido-base": load_model("fido-base"),
        "fid-base+both": override_model(fid, kv_heads=1, cross_attn_every=6),
        "fido-large-xxl": load_model("fido-large-xxl"),
    }
    return {name: predict(m, tpu_v4, SETTING) for name, m in models.items()}


def test_the_setting():
    assert (SETTING.passages, SETTING.passage_len, SETTING.target_len, SETTING.batch) == (40, 256, 32, 24)
    assert {SETTING.weight_dtype, SETTING.act_dtype, SETTING.kv_dtype, SETTING.compute_dtype} == {"bf16"}


def test_fid_spends_an_order_of_magnitude_more_flops_in_the_encoder(results):
    """'FiD devotes an order of magnitude more FLOPs to the encoder than the decoder.'"""
    t = results["fid-base"].totals
    assert t["encoder_flops"] > 10 * t["decoder_flops"]


def test_fid_decoder_is_memory_bound(results, tpu_v4):
    """'for typical inference settings the FiD decoder is memory-bandwidth bound'."""
    pred = results["fid-base"]
    ridge = tpu_v4.ridge_point("bf16")  # 275e12 / 1.2e12 ~ 229 FLOP/B
    t = pred.totals
    assert t["decoder_flops"] / t["decoder_bytes"] < ridge / 10
    dec = pred.ops[pred.ops["phase"] == "decoder"]
    assert dec["memory_s"].sum() > 10 * dec["compute_s"].sum()
    memory_bound_time = dec.loc[dec["bound"] == "memory", "time_s"].sum()
    assert memory_bound_time > 0.95 * dec["time_s"].sum()
    # ... while the encoder's matmuls sit at or above the ridge point.
    enc_mm = pred.ops[(pred.ops["phase"] == "encoder") & (pred.ops["kind"] == "matmul")]
    assert enc_mm["flops"].sum() / enc_mm["bytes"].sum() > ridge


def test_fid_cross_attention_does_about_one_flop_per_byte(results):
    """Multi-head cross-attention: ~1 FLOP per byte in bf16 whatever the batch."""
    ops = results["fid-base"].ops
    x = ops[ops["op"].isin(["cross_attn_logits", "cross_attn_values"])]
    assert x["flops"].sum() / x["bytes"].sum() == pytest.approx(1.0, rel=0.1)
    # It is the decoder's largest cost: most of the decoder's time.
    dec_time = ops.loc[ops["phase"] == "decoder", "time_s"].sum()
    assert x["time_s"].sum() > 0.5 * dec_time


def test_lsa_and_mqa_each_cut_decoder_time_and_together_more(results):
    dec = {k: v.totals["decoder_time_s"] for k, v in results.items()}
    assert dec["lsa"] < dec["fid-base"]
    assert dec["mqa"] < dec["fid-base"]
    assert dec["fid-base+both"] < min(dec["lsa"], dec["mqa"])
    # The shipped FiDO-Base is exactly FiD-Base with both changes.
    assert dec["fido-base"] == pytest.approx(dec["fid-base+both"], rel=1e-12)


def test_fido_base_is_faster_than_fid_base(results):
    fid, fido = results["fid-base"].totals, results["fido-base"].totals
    assert fido["time_per_sample_s"] < fid["time_per_sample_s"]
    assert fido["encoder_time_s"] == pytest.approx(fid["encoder_time_s"], rel=1e-12)  # same encoder
    assert fido["cross_kv_bytes"] < fid["cross_kv_bytes"] / 6  # K = 6 and one KV head instead of 12


def test_after_fido_the_encoder_dominates_again(results):
    """Once the decoder is optimised, encoding the passages is most of the cost again
    (LUMEN, de Jong et al., arXiv 2301.10448)."""
    t = results["fido-base"].totals
    assert t["encoder_time_s"] > 0.5 * t["time_per_sample_s"]


# The paper's two measured claims below are not reproduced by a pure roofline (efficiency
# 1.0): it puts FiD-Base's encoder at ~51% of the time, and FiDO-Large-XXL's Large encoder
# alone above FiD-Base's total. Measured decoders run far below the bandwidth roof. When the
# TPU v4 profile gains measured efficiencies these may start to pass: then drop the marks.


@pytest.mark.xfail(strict=True, reason="derated TPU v4 model (and roofline): decoder 43% of the time, not most")
def test_fid_spends_most_time_in_the_decoder(results):
    """'the majority of inference time is actually spent in the decoder'."""
    t = results["fid-base"].totals
    assert t["decoder_time_s"] + t["cross_kv_time_s"] > t["encoder_time_s"]


@pytest.mark.xfail(strict=True, reason="derated TPU v4 model (and roofline): a Large encoder costs more than FiD-Base")
def test_fido_large_xxl_is_faster_than_fid_base(results):
    """'FiDO-Large-XXL performs faster inference than FiD-Base'."""
    assert (results["fido-large-xxl"].totals["time_per_sample_s"]
            < results["fid-base"].totals["time_per_sample_s"])
