"""The per-kernel model (fidoperf.costmodel.kernels, fidoperf op): its mechanisms against
closed forms on a made-up chip with round numbers, invariants on every shipped profile,
and the per-kernel rows adding up to the whole-model totals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROUND_CHIP_YAML
from hypothesis import given, settings
from hypothesis import strategies as st

import fidoperf as fp
from fidoperf.costmodel.kernels import decode_splits, kernel_times
from fidoperf.costmodel.optable import op_table
from fidoperf.costmodel.prediction import Settings, flash_rows, operator_list
from fidoperf.specs import hardware_from_dict, hardware_names, load_hardware
from fidoperf.specs.implementation import IMPLEMENTATIONS

UNITS = 4
KERNEL_CHIP_YAML = ROUND_CHIP_YAML.replace("name: round-chip", "name: kernel-chip") + f"""
default_implementation: tuned
overhead_s_per_op: {{value: 2.0e-6, source: "made up for tests"}}
kernel_model:
  compute_units: {{value: {UNITS}, source: "made up"}}
  gemm_tiles: {{value: [[128, 128, 1.0]], source: "made up"}}
  gemm_split_k: {{value: [1], source: "made up"}}
  flash_block_q: {{value: 128, source: "made up"}}
  flash_block_kv: {{value: 128, source: "made up"}}
  flash_block_overhead: {{value: 0.0, source: "made up"}}
"""


@pytest.fixture(scope="module")
def chip():
    return hardware_from_dict(yaml.safe_load(KERNEL_CHIP_YAML), "kernel-chip.yaml")


def gemm(hw, m, n, k, **kw):
    return op_table("gemm", {"m": [m], "n": [n], "k": [k]}, hw, **kw).iloc[0]


# --------------------------------------------------------------------------- rows curves by transfer size

# A measured-style chip: rows curves taken at one transfer size (8 MB of weights, 16 MiB of
# keys), and a streaming curve that doubles from 8 MB to 512 MB.
ROWS_CHIP = {
    "name": "rows-chip",
    "peak_flops_per_s": {"fp32": {"value": 100e9, "source": "made up"}},
    "memory": {"capacity_bytes": {"value": 16e9, "source": "made up"},
               "bandwidth_bytes_per_s": {"value": 50e9, "source": "made up"}},
    "efficiency": {
        "memory": {"by": "bytes", "points": [[1e6, 0.2], [8e6, 0.4], [512e6, 0.8]], "source": "made up"},
        "attention_memory": {"by": "bytes", "points": [[1e6, 0.2], [16 * 2**20, 0.4], [512e6, 0.8]],
                             "source": "made up"},
        # one row at 0.1 of 100 GFLOP/s = 10 GFLOP/s: streaming 20 GB/s of fp32 weights, the
        # streaming curve's 0.4 x 50 GB/s at 8 MB (stream bound); 256 rows compute bound
        "matmul_compute": {"by": "rows", "points": [[1, 0.1], [256, 0.8]], "source": "made up",
                           "transfer_bytes": 8e6},
        "attention_compute": {"by": "rows", "points": [[1, 0.1], [256, 0.8]], "source": "made up",
                              "transfer_bytes": 16 * 2**20},
    },
}


def _matmul(rows, k, n):
    from fidoperf.costmodel.ops import Op

    return Op("proj", "matmul", 2.0 * rows * k * n, weight_bytes=4.0 * k * n, act_bytes=4.0 * rows * (k + n),
              rows=rows, kernel="gemm", shape={"m": rows, "n": n, "k": k, "batch": 1})


def test_a_rows_curve_is_carried_to_the_ops_transfer_size():
    """One row against a weight far larger than the curve's transfer streams at the
    streaming curve's larger-transfer rate; at the curve's own size the curve holds; a
    compute-bound product of many rows keeps its rate; without a transfer size (every
    datasheet profile) nothing changes."""
    hw = hardware_from_dict(ROWS_CHIP, "rows-chip")
    plain = dict(ROWS_CHIP, efficiency={k: {f: v for f, v in c.items() if f != "transfer_bytes"}
                                        for k, c in ROWS_CHIP["efficiency"].items()})
    hw_plain = hardware_from_dict(plain, "rows-chip-plain")

    def t(chip, op):
        return float(kernel_times(op, chip, "fp32", "fp32").time_s)

    at_transfer = _matmul(1, 1000, 2000)  # 8 MB of weights: the curve's own size
    assert t(hw, at_transfer) == pytest.approx(t(hw_plain, at_transfer), rel=1e-3)
    large = _matmul(1, 8000, 16000)  # 512 MB: the streaming curve is twice as fast there
    assert t(hw_plain, large) / t(hw, large) == pytest.approx(2.0, rel=0.02)
    assert t(hw, large) == pytest.approx(512e6 / (0.8 * 50e9), rel=0.02)  # streamed at 40 GB/s
    small = _matmul(1, 250, 500)  # 0.5 MB: its memory time binds, as without the transfer size
    assert t(hw, small) == pytest.approx(t(hw_plain, small), rel=1e-9)
    many = _matmul(256, 8000, 16000)  # compute bound: the rate barely moves
    assert t(hw_plain, many) / t(hw, many) < 1.1
    for chip in ("tpu-v4", "h100-sxm", "a100-80gb"):  # no transfer sizes in shipped profiles
        shipped = load_hardware(chip)
        assert all(c.transfer_bytes is None for c in shipped.efficiency.values())


# --------------------------------------------------------------------------- GEMM quantisation


def test_one_tile_more_than_the_compute_units_takes_two_waves(chip):
    k = 1 << 16  # long enough to be compute-bound
    one_wave = gemm(chip, 128 * UNITS, 128, k)
    two_waves = gemm(chip, 128 * (UNITS + 1), 128, k)
    assert one_wave["bound"] == two_waves["bound"] == "compute"
    assert two_waves["compute_s"] == pytest.approx(2 * one_wave["compute_s"], rel=1e-12)
    # one full wave runs at the chip's peak
    assert one_wave["compute_s"] == pytest.approx(one_wave["flops"] / 100e12, rel=1e-12)


def test_a_partial_tile_costs_a_whole_tile(chip):
    k = 1 << 16
    assert gemm(chip, 129, 128, k)["compute_s"] == pytest.approx(gemm(chip, 256, 128, k)["compute_s"], rel=1e-12)


def test_split_k_fills_idle_compute_units(chip):
    data = yaml.safe_load(KERNEL_CHIP_YAML)
    data["kernel_model"]["gemm_split_k"]["value"] = [1, 2, 4]
    split = hardware_from_dict(data, "split.yaml")
    k = 1 << 16
    # one tile: without split-K one unit of four works; with four slices all do
    assert gemm(split, 128, 128, k)["compute_s"] == pytest.approx(gemm(chip, 128, 128, k)["compute_s"] / 4, rel=1e-9)


def test_mxu_padding(tpu_like=None):
    data = yaml.safe_load(ROUND_CHIP_YAML)
    data["kernel_model"] = {"gemm_pad": {"value": [8, 128, 128], "source": "made up"}}
    hw = hardware_from_dict(data, "tpu-like.yaml")
    padded, exact = gemm(hw, 8, 130, 128), gemm(hw, 8, 256, 128)
    assert padded["compute_s"] == pytest.approx(exact["compute_s"], rel=1e-12)


# --------------------------------------------------------------------------- attention


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_moves_no_score_bytes_and_follows_the_io_formula(chip, causal):
    B, S, H, G, dk, a = 3, 1000, 8, 2, 64, 2
    row = op_table("prefill_attention", {"batch": [B], "seq_len": [S], "heads": [H], "kv_heads": [G],
                                         "head_dim": [dk], "causal": [causal]}, chip, implementation="tuned").iloc[0]
    rows = flash_rows(chip)
    assert rows == 128 * UNITS
    passes = math.ceil(S / rows)
    expected = 2 * B * H * S * dk * a + 2 * B * G * S * dk * a * passes  # Q and O, K and V per pass
    assert row["bytes"] == expected
    assert row["launches"] == 1
    # unfused attention of the same shape writes and reads the B x H x S x S scores
    unfused = op_table("prefill_attention", {"batch": [B], "seq_len": [S], "heads": [H], "kv_heads": [G],
                                             "head_dim": [dk], "causal": [causal]}, chip,
                       implementation="xla").iloc[0]
    assert unfused["bytes"] - row["bytes"] >= 4 * B * H * S * S * a - 2 * B * G * S * dk * a * passes


def test_flash_io_formula_without_cache_sharing(round_chip):
    # no compute units: one block of 128 query rows per read of K and V
    B, S, H, dk = 1, 1000, 4, 64
    row = op_table("prefill_attention", {"batch": [B], "seq_len": [S], "heads": [H], "kv_heads": [H],
                                         "head_dim": [dk]}, round_chip, implementation="tuned").iloc[0]
    assert row["bytes"] == 2 * B * H * S * dk * 2 + 2 * B * H * S * dk * 2 * math.ceil(S / 128)


def test_causal_attention_does_about_half_the_work(chip):
    shape = {"batch": [1], "seq_len": [4096], "heads": [8], "kv_heads": [8], "head_dim": [128]}
    full = op_table("prefill_attention", {**shape, "causal": [False]}, chip, implementation="tuned").iloc[0]
    half = op_table("prefill_attention", {**shape, "causal": [True]}, chip, implementation="tuned").iloc[0]
    assert half["flops"] == pytest.approx(full["flops"] * (4096 + 1) / 2 / 4096, rel=1e-12)
    assert 0.45 < half["compute_s"] / full["compute_s"] < 0.65


def test_decode_splits_follow_flash_attention_2s_heuristic():
    units = 108.0
    # enough (batch x heads) blocks: no split
    assert decode_splits(100, 64, units, 128) == 1
    # one sequence, one key/value head, long cache: split to fill the chip, not past the blocks
    s = decode_splits(1, 1000, units, 128)
    assert 54 <= s <= 108
    assert decode_splits(1, 3, units, 128) == 3
    # vectorised: same answers element by element
    bh = np.array([100, 1, 1])
    nb = np.array([64, 1000, 3])
    assert list(decode_splits(bh, nb, units, 128)) == [1, s, 3]


# --------------------------------------------------------------------------- invariants


def shipped():
    return [load_hardware(n) for n in hardware_names()]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(m=st.integers(1, 20000), n=st.integers(1, 20000), k=st.integers(1, 20000),
       hw_i=st.integers(0, len(hardware_names()) - 1), impl=st.sampled_from(sorted(IMPLEMENTATIONS)))
def test_derated_gemm_is_never_below_the_roofline(m, n, k, hw_i, impl):
    hw = shipped()[hw_i]
    derated = gemm(hw, m, n, k, implementation=impl)
    roof = gemm(hw, m, n, k, implementation=impl, efficiency="roofline")
    assert derated["time_s"] >= roof["time_s"] * (1 - 1e-12)
    assert derated["compute_s"] >= roof["compute_s"] * (1 - 1e-12)
    assert derated["memory_s"] >= roof["memory_s"] * (1 - 1e-12)
    assert roof["overhead_s"] == 0.0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(batch=st.integers(1, 256), length=st.integers(1, 40000), kv=st.sampled_from([1, 2, 4, 8, 16]),
       group=st.sampled_from([1, 2, 4, 8]), dk=st.sampled_from([64, 128]), causal=st.booleans(),
       hw_i=st.integers(0, len(hardware_names()) - 1), impl=st.sampled_from(sorted(IMPLEMENTATIONS)))
def test_derated_attention_is_never_below_the_roofline(batch, length, kv, group, dk, causal, hw_i, impl):
    hw = shipped()[hw_i]
    heads = kv * group
    for kind, shape in (("decode_attention", {"kv_len": [length]}),
                        ("prefill_attention", {"seq_len": [min(length, 4096)], "causal": [causal]})):
        s = {"batch": [batch], "heads": [heads], "kv_heads": [kv], "head_dim": [dk], **shape}
        derated = op_table(kind, s, hw, implementation=impl).iloc[0]
        roof = op_table(kind, s, hw, implementation=impl, efficiency="roofline").iloc[0]
        assert derated["time_s"] >= roof["time_s"] * (1 - 1e-12), kind


@pytest.mark.parametrize("name", hardware_names())
def test_the_launch_floor_holds_for_the_smallest_kernel(name):
    hw = load_hardware(name)
    for impl in IMPLEMENTATIONS:
        row = gemm(hw, 1, 1, 1, implementation=impl)
        floor = hw.overhead_for(impl)
        assert row["overhead_s"] == pytest.approx(floor)
        assert row["time_s"] >= floor


def test_roofline_setting_is_the_pure_lower_bound(chip):
    row = gemm(chip, 4096, 4096, 4096, efficiency="roofline")
    assert row["compute_s"] == pytest.approx(2 * 4096**3 / 100e12)
    assert row["memory_s"] == pytest.approx(3 * 4096**2 * 2 / 1e12)
    assert row["overhead_s"] == 0.0 and row["time_s"] == pytest.approx(max(row["compute_s"], row["memory_s"]))


# --------------------------------------------------------------------------- one path for kernel and model


@pytest.mark.parametrize("hw_name", ["h100-sxm", "tpu-v4", "a100-80gb"])
@pytest.mark.parametrize("impl", ["xla", "tuned"])
def test_per_kernel_rows_add_up_to_the_whole_model(hw_name, impl):
    hw = load_hardware(hw_name)
    model, wl = fp.load_model("fido-base"), fp.Workload(batch=4, passages=10, passage_len=128, target_len=4)
    s = Settings(implementation=impl)
    pred = fp.predict(model, hw, wl, s)
    assert pred.ops["time_s"].sum() == pytest.approx(pred.totals["batch_time_s"], rel=1e-12)
    # every matrix product and attention kernel the model charges is what `op` says for that shape
    checked = 0
    for phase, _, op, _calls in operator_list(model, wl, IMPLEMENTATIONS[impl], flash_rows(hw)):
        s = op.shape
        plain = np.allclose(op.flops, 2.0 * np.asarray(s.get("m", 0)) * s.get("n", 0) * s.get("k", 0))
        if op.kernel == "gemm" and op.shape.get("batch", 1) == 1 and plain:  # fused epilogues add vector work
            m = np.broadcast_to(np.asarray(op.shape["m"], float), np.shape(op.flops) or (1,))
            row = op_table("gemm", {"m": m.astype(int), "n": [int(op.shape["n"])] * len(m),
                                    "k": [int(op.shape["k"])] * len(m)}, hw, implementation=impl)
            k = kernel_times(op, hw, "bf16", "bf16", "derated", "roofline", IMPLEMENTATIONS[impl])
            assert row["time_s"].to_numpy() == pytest.approx(np.broadcast_to(k.time_s, len(m)), rel=1e-12)
            checked += 1
        if op.kernel == "flash" and phase == "decoder":
            t = np.asarray(op.shape["kv_len"], float).reshape(-1)
            row = op_table("decode_attention", {"batch": [wl.batch] * len(t), "kv_len": t.astype(int),
                                                "heads": [int(op.shape["heads"])] * len(t),
                                                "kv_heads": [int(op.shape["kv_heads"])] * len(t),
                                                "head_dim": [int(op.shape["head_dim"])] * len(t)},
                           hw, implementation=impl)
            k = kernel_times(op, hw, "bf16", "bf16", "derated", "roofline", IMPLEMENTATIONS[impl])
            assert row["time_s"].to_numpy() == pytest.approx(np.broadcast_to(k.time_s, len(t)), rel=1e-12)
            checked += 1
    assert checked > 5


def test_every_implementation_does_the_same_flops():
    model, wl, hw = fp.load_model("fid-base"), fp.Workload(batch=2, passages=4, passage_len=64, target_len=3), \
        load_hardware("h100-sxm")
    flops = {impl: fp.predict(model, hw, wl, Settings(implementation=impl)).totals["total_flops"]
             for impl in IMPLEMENTATIONS}
    assert len({round(v) for v in flops.values()}) == 1, flops


def test_flash_attention_moves_fewer_bytes_than_unfused():
    model, wl, hw = fp.load_model("fid-base"), fp.Workload(batch=8), load_hardware("h100-sxm")
    xla = fp.predict(model, hw, wl, Settings(implementation="xla"))
    tuned = fp.predict(model, hw, wl, Settings(implementation="tuned"))
    assert tuned.totals["encoder_bytes"] < 0.6 * xla.totals["encoder_bytes"]
    assert tuned.memory["max_batch"] >= xla.memory["max_batch"]


# --------------------------------------------------------------------------- op_table input checks


@pytest.mark.parametrize("shapes, needle", [
    ({"m": [1], "n": [2]}, "k"),
    ({"m": [1], "n": [2], "k": [0]}, "at least 1"),
    ({"m": [1.5], "n": [2], "k": [3]}, "whole numbers"),
    ({"m": [1], "n": [2], "k": [3], "x": [1]}, "unknown column"),
    ({"m": [1, 2, 3], "n": [2, 2], "k": [3]}, "2 values where other columns have 3"),
])
def test_op_table_rejects_bad_shapes(shapes, needle):
    with pytest.raises(fp.SpecError, match=needle):
        op_table("gemm", shapes, "h100-sxm")


def test_op_table_repeats_a_column_of_one_value():
    one = op_table("gemm", {"m": [1, 64], "n": [3072], "k": [768]}, "h100-sxm")
    full = op_table("gemm", {"m": [1, 64], "n": [3072, 3072], "k": [768, 768]}, "h100-sxm")
    assert list(one["n"]) == [3072, 3072]
    pd.testing.assert_frame_equal(one, full)


def test_op_table_rejects_heads_not_divided_by_kv_heads():
    with pytest.raises(fp.SpecError, match="do not divide"):
        op_table("decode_attention", {"batch": [1], "kv_len": [10], "heads": [12], "kv_heads": [5],
                                      "head_dim": [64]}, "h100-sxm")


def test_op_cli_one_shape_and_table(tmp_path):
    import json

    from click.testing import CliRunner

    from fidoperf.cli import cli

    r = CliRunner().invoke(cli, ["op", "gemm", "--m", "16", "--n", "768", "--k", "768", "-H", "a100-80gb",
                                 "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["settings"]["implementation"] == load_hardware("a100-80gb").default_implementation
    assert out["settings"]["efficiency"] == "derated"
    assert out["rows"][0]["flops"] == 2 * 16 * 768 * 768
    path = tmp_path / "shapes.csv"
    path.write_text("batch,seq_len,heads,kv_heads,head_dim,causal\n1,64,8,8,64,true\n2,2048,16,4,128,false\n")
    outp = tmp_path / "out.csv"
    r = CliRunner().invoke(cli, ["op", "prefill_attention", "--input", str(path), "--output", str(outp)])
    assert r.exit_code == 0, r.output
    import pandas as pd

    df = pd.read_csv(outp)
    assert list(df.columns[:6]) == ["batch", "seq_len", "heads", "kv_heads", "head_dim", "causal"]
    for col in ("flops", "bytes", "intensity", "compute_s", "memory_s", "overhead_s", "time_s", "bound"):
        assert col in df.columns
    assert len(df) == 2 and (df["time_s"] > 0).all()


@pytest.mark.parametrize("args, needle", [
    (["op", "gemm", "--m", "1", "--n", "2"], "--k"),
    (["op", "gemm", "--m", "1", "--n", "2", "--k", "3", "--kv-len", "4"], "--kv-len"),
    (["op", "matmul"], "KIND"),
    (["op", "gemm", "--m", "0", "--n", "2", "--k", "3"], "--m"),
])
def test_op_cli_errors_are_one_line(cli_error, args, needle):
    cli_error(args, needle)
