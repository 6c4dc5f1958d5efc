"""Parallel layouts (fidoperf.specs.layout, fidoperf.costmodel.parallel): tensor, data and
encoder/decoder parallelism against what must hold whatever the numbers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner

import fidoperf as fp
from fidoperf.costmodel.prediction import Settings
from fidoperf.specs import hardware_from_dict, read_yaml
from fidoperf.specs.layout import Layout

WL = fp.Workload(batch=8, passages=10, passage_len=128, target_len=8)


def predict(model, hw, layout=None, wl=WL, **settings):
    m = fp.load_model(model) if isinstance(model, str) else model
    h = fp.load_hardware(hw) if isinstance(hw, str) else hw
    return fp.predict(m, h, wl, Settings(**settings), layout)


@pytest.mark.parametrize("hw", ["h100-sxm", "tpu-v4", "a100-80gb"])
@pytest.mark.parametrize("model", ["fid-base", "fido-base-xl"])
@pytest.mark.parametrize("efficiency", ["derated", "roofline"])
def test_one_chip_and_tensor_parallel_1_reproduce_the_single_chip_prediction(hw, model, efficiency):
    single = predict(model, hw, efficiency=efficiency)
    same = predict(model, hw, Layout(chips=1, tensor_parallel=1), efficiency=efficiency)
    assert same.totals == single.totals
    assert same.memory == single.memory
    assert same.ops.equals(single.ops)


def test_data_parallel_replicas_multiply_throughput_not_latency():
    one = predict("fido-base", "h100-sxm")
    eight = predict("fido-base", "h100-sxm", Layout(chips=8))
    assert eight.totals["batch_time_s"] == one.totals["batch_time_s"]
    assert eight.totals["samples_per_s"] == pytest.approx(8 * one.totals["samples_per_s"])
    assert eight.totals["chip_seconds_per_sample"] == pytest.approx(one.totals["chip_seconds_per_sample"])
    assert eight.totals["comm_time_s"] == 0.0
    assert eight.memory["peak_bytes"] == one.memory["peak_bytes"]


@pytest.mark.parametrize("model", ["fid-xl", "fid-xxl"])
def test_weights_and_kv_per_chip_fall_as_tensor_parallelism_grows(model):
    mem = [predict(model, "h100-sxm", Layout(tensor_parallel=t)).memory for t in (1, 2, 4, 8)]
    for a, b in zip(mem, mem[1:]):
        assert b["weight_bytes"] < a["weight_bytes"]
        assert b["cross_kv_bytes"] == pytest.approx(a["cross_kv_bytes"] / 2)
        assert b["self_kv_bytes"] == pytest.approx(a["self_kv_bytes"] / 2)
        assert b["max_batch"] >= a["max_batch"]


def test_replicated_mqa_kv_does_not_shrink_unless_batch_sharded():
    # the Base encoder's 12 heads allow T = 1, 2, 4
    heads = [predict("fido-base-xl", "h100-sxm", Layout(tensor_parallel=t)).memory for t in (1, 2, 4)]
    assert len({m["cross_kv_bytes"] for m in heads}) == 1  # one key/value head: every chip holds a copy
    assert heads[-1]["weight_bytes"] < heads[0]["weight_bytes"]
    batch = [predict("fido-base-xl", "h100-sxm", Layout(tensor_parallel=t, shard_kv="batch")).memory
             for t in (1, 2, 4)]
    for t, m in zip((1, 2, 4), batch):
        assert m["cross_kv_bytes"] == pytest.approx(heads[0]["cross_kv_bytes"] / t)


def test_batch_sharded_kv_adds_all_to_alls():
    p = predict("fido-base-xl", "h100-sxm", Layout(tensor_parallel=4, shard_kv="batch"))
    ops = set(p.ops["op"])
    assert "cross_attn_all_to_all" in ops and "cross_attn_all_reduce" in ops
    assert "cross_attn_all_to_all" not in set(predict("fido-base-xl", "h100-sxm", Layout(tensor_parallel=4)).ops["op"])


def test_each_sublayer_has_its_all_reduce():
    p = predict("fid-base", "h100-sxm", Layout(tensor_parallel=2))
    counts = p.ops.groupby(["phase", "op"]).size()
    assert counts[("encoder", "attn_all_reduce")] == 12 and counts[("encoder", "mlp_all_reduce")] == 12
    for op in ("self_attn_all_reduce", "cross_attn_all_reduce", "mlp_all_reduce"):
        assert counts[("decoder", op)] == 12  # every FiD decoder layer has cross-attention
    fido = predict("fido-base", "h100-sxm", Layout(tensor_parallel=2)).ops.groupby(["phase", "op"]).size()
    assert fido[("decoder", "cross_attn_all_reduce")] == 2  # LSA: layers 5 and 11


@pytest.mark.parametrize("hw", ["h100-sxm", "a100-80gb", "tpu-v4"])
def test_communication_grows_with_tensor_parallelism(hw):
    preds = [predict("fid-xl", hw, Layout(tensor_parallel=t)) for t in (1, 2, 4, 8)]
    comm = [p.totals["comm_time_s"] for p in preds]
    share = [p.totals["comm_time_s"] / p.totals["time_per_sample_s"] for p in preds]
    assert comm[0] == 0.0
    assert all(b > a for a, b in zip(share, share[1:])), share  # compute shrinks with T, comm does not
    if hw != "tpu-v4":  # on a switch every chip has one port: the ring's bytes per chip grow with T
        assert all(b > a for a, b in zip(comm, comm[1:])), comm
    else:  # a 2x2x2 torus slice drives more links as it grows (scaling-book): per-chip time falls
        assert comm[2] < comm[1]


def test_roofline_communication_is_a_lower_bound():
    lay = Layout(tensor_parallel=4)
    d = predict("fid-xl", "h100-sxm", lay)
    r = predict("fid-xl", "h100-sxm", lay, efficiency="roofline")
    assert 0 < r.totals["comm_time_s"] < d.totals["comm_time_s"]


def infinite_link(name: str):
    data = copy.deepcopy(read_yaml(fp.load_hardware(name).path))
    ic = data["interconnect"]
    ic["call_latency_s"]["value"] = 1e-30
    ic["node"]["latency_s"]["value"] = 1e-30
    ic["node"]["link_bytes_per_s"]["value"] = 1e30
    return hardware_from_dict(data, f"{name} with an infinite link")


@pytest.mark.parametrize("model", ["fid-base", "fido-base"])
@pytest.mark.parametrize("tp", [1, 2])
def test_pools_with_an_infinite_link_take_the_sum_of_the_two_phases(model, tp):
    hw = infinite_link("h100-sxm")
    colocated = predict(model, hw, Layout(tensor_parallel=tp))
    pools = predict(model, hw, Layout(encoder_chips=2 * tp, decoder_chips=2 * tp, tensor_parallel=tp))
    c, p = colocated.totals, pools.totals
    assert p["batch_time_s"] == pytest.approx(c["batch_time_s"], rel=1e-9)
    assert p["transfer_time_s"] == pytest.approx(0.0, abs=1e-12)
    assert p["batch_time_s"] == pytest.approx(
        (c["encoder_time_s"] + c["cross_kv_time_s"] + c["decoder_time_s"]) * WL.batch, rel=1e-9)
    enc_stage, dec_stage = p["encoder_pool_time_s"], p["decoder_pool_time_s"]
    assert enc_stage + dec_stage == pytest.approx(p["batch_time_s"], rel=1e-9)
    expected = min(2 * WL.batch / enc_stage, 2 * WL.batch / dec_stage)
    assert p["samples_per_s"] == pytest.approx(expected, rel=1e-9)


def test_pools_ship_the_smaller_thing():
    fid = predict("fid-base", "h100-sxm", Layout(encoder_chips=1, decoder_chips=1))
    fido = predict("fido-base", "h100-sxm", Layout(encoder_chips=1, decoder_chips=1))
    # multi-head cross-attention in 12 layers: 12 x 2 x 12 heads x 64 = 18432 values per token
    # against the encoder's 768; FiDO (LSA + MQA): 2 x 2 x 1 x 64 = 256
    assert fid.totals["shipped"] == "encoder_outputs"
    assert fido.totals["shipped"] == "cross_kv"
    assert set(fido.ops.loc[fido.ops["phase"] == "cross_kv", "pool"]) == {"encoder"}
    assert set(fid.ops.loc[fid.ops["phase"] == "cross_kv", "pool"]) == {"decoder"}


@pytest.mark.parametrize("layout, needle", [
    (dict(chips=10, tensor_parallel=4), "does not divide the 10 chips"),
    (dict(encoder_chips=2), "both"),
    (dict(encoder_chips=3, decoder_chips=4, tensor_parallel=2), "does not divide"),
    (dict(chips=5, encoder_chips=2, decoder_chips=2), "2 \\+ 2"),
    (dict(tensor_parallel=0), "at least 1"),
    (dict(shard_kv="rows"), "heads, batch"),
])
def test_bad_layouts_are_refused(layout, needle):
    with pytest.raises(fp.SpecError, match=needle):
        Layout(**layout)


def test_tensor_parallelism_must_split_the_heads():
    with pytest.raises(fp.SpecError, match="does not divide the 12 heads"):
        predict("fid-base", "h100-sxm", Layout(tensor_parallel=8))


def test_a_model_that_does_not_fit_one_chip_fits_on_several():
    wl = fp.Workload(batch=1)
    one = predict("fid-xxl", "l4", wl=wl)
    assert not one.memory["fits"]
    eight = predict("fid-xxl", "l4", Layout(tensor_parallel=8), wl=wl)
    assert eight.memory["fits"]


def test_predict_json_has_the_schema_version_and_layout(cli_error):
    from fidoperf.cli import cli

    r = CliRunner().invoke(cli, ["predict", "-m", "fid-xl", "-H", "h100-sxm", "--chips", "8", "-t", "4", "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["schema_version"] == 2
    assert out["layout"]["chips"] == 8 and out["layout"]["tensor_parallel"] == 4 and out["layout"]["replicas"] == 2
    t = out["totals"]
    for key in ("comm_time_s", "comm_exposed_s", "batch_time_s", "time_per_sample_s", "samples_per_s",
                "chip_seconds_per_sample"):
        assert key in t
    assert t["time_per_sample_s"] == pytest.approx(t["batch_time_s"] / 24)
    assert t["chip_seconds_per_sample"] == pytest.approx(8 / t["samples_per_s"])
    assert out["memory"]["peak_bytes"] < 80e9  # per chip
    cli_error(["predict", "-t", "5"], "--tensor-parallel")
    cli_error(["predict", "--encoder-chips", "2"], "--decoder-chips")


def test_sweep_varies_the_layout_like_any_other_field():
    from fidoperf.sweep import parse_vary, sweep

    m, h = fp.load_model("fido-base-xl"), fp.load_hardware("h100-sxm")
    vary = parse_vary(["chips=8", "tensor_parallel=1,2,4", "batch=8,24", "shard_kv=heads,batch"])
    df = sweep(m, h, WL, vary)
    assert df["error"].isna().all()
    for _, r in df.iterrows():
        p = fp.predict(m, h, WL.replace(batch=int(r["batch"])), Settings(),
                       Layout(chips=8, tensor_parallel=int(r["tensor_parallel"]), shard_kv=r["shard_kv"]))
        for col in ("batch_time_s", "samples_per_s", "comm_time_s", "chip_seconds_per_sample"):
            assert r[col] == pytest.approx(p.totals[col], rel=1e-9), col
        assert r["peak_memory_bytes"] == pytest.approx(p.memory["peak_bytes"], rel=1e-9)
        assert r["max_batch"] == p.memory["max_batch"]
    pools = sweep(m, h, WL, parse_vary(["encoder_chips=2,4", "decoder_chips=4,6"]))
    assert set(pools["shipped"]) == {"cross_kv"}
    bad = sweep(fp.load_model("fid-base"), h, WL, parse_vary(["tensor_parallel=5"]))
    assert bad["error"].str.contains("does not divide the 12 heads").all()
    assert np.isnan(bad["batch_time_s"]).all()
