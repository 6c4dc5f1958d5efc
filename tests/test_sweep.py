"""fidoperf.sweep and `fidoperf sweep`: a grid row equals the single-configuration
prediction, --vary parsing, infeasible rows, the memory flag, and the CLI end to end.

The reference for every figure is :func:`fidoperf.costmodel.prediction.predict` (per-op pandas
tables, step by step), a different code path from the broadcasting evaluator.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fidoperf.whatif.sweep as sweep_mod
from fidoperf.cli import cli
from fidoperf.costmodel.prediction import Settings, predict
from fidoperf.errors import SpecError
from fidoperf.specs import Workload, load_hardware, load_model, override_model
from fidoperf.whatif.sweep import COLUMNS, FIGURE_COLUMNS, parse_vary, sweep

REL = 1e-9
MODEL_FIELDS = ("encoder_size", "decoder_size", "encoder_layers", "decoder_layers", "kv_heads",
                "cross_attn_every")
DEFAULT = Settings()
WORKLOAD_FIELDS = ("batch", "passages", "passage_len", "target_len")


def reference(row, base_model, base_hw, base_wl, vary, base_settings=DEFAULT):
    """predict() for one row, built from the row's varied inputs only."""
    model = load_model(row["model"]) if "model" in vary else base_model
    overrides = {f: (row[f] if f.endswith("_size") else int(row[f])) for f in MODEL_FIELDS if f in vary}
    model = override_model(model, **overrides)
    hw = load_hardware(row["hardware"]) if "hardware" in vary else base_hw
    fields = {f: int(row[f]) if f in vary else getattr(base_wl, f) for f in WORKLOAD_FIELDS}
    wl = Workload.with_dtype(row["dtype"], **fields) if "dtype" in vary else base_wl.replace(**fields)
    s = Settings(overlap=row["overlap"], efficiency=base_settings.efficiency)
    return predict(model, hw, wl, s)


def assert_row_matches(row, pred):
    assert pd.isna(row["error"])
    for key, want in pred.totals.items():
        got = row["fits" if key == "fits_in_memory" else key]
        if key in ("max_batch", "fits_in_memory"):
            assert got == want, key
        else:
            assert got == pytest.approx(want, rel=REL, abs=0), key
    assert row["peak_memory_bytes"] == pytest.approx(pred.memory["peak_bytes"], rel=REL, abs=0)
    dec = pred.model.decoder
    assert (row["decoder_kv_heads"], row["decoder_cross_attn_every"], row["decoder_cross_layers"]) == (
        dec.num_kv_heads, dec.cross_attn_every, dec.num_cross_layers)
    # The bound of most of the decoder time, from the op table's own per-row bounds.
    d = pred.ops[pred.ops["phase"] == "decoder"]
    by = d.groupby("bound")["time_s"].sum()
    assert row["decoder_bound"] == ("compute" if by.get("compute", 0.0) > by.get("memory", 0.0) else "memory")


def check_rows(df, base_model, base_hw, base_wl, vary, rows, s=DEFAULT):
    checked = 0
    for i in rows:
        row = df.iloc[i]
        if pd.notna(row["error"]):
            continue
        assert_row_matches(row, reference(row, base_model, base_hw, base_wl, vary, s))
        checked += 1
    return checked


@pytest.fixture(scope="module")
def fido():
    return load_model("fido-base"), load_hardware("tpu-v4")


@pytest.fixture(scope="module")
def mixed_grid(fido):
    """MHA / GQA / MQA, K = 1, 2, 3, 6, several T, two chips, two dtypes."""
    vary = parse_vary(["kv_heads=1,4,12", "cross_attn_every=1,2,3,6", "target_len=1,5,32",
                       "hardware=tpu-v4,h100-sxm", "dtype=bf16,fp32"])
    return vary, sweep(*fido, Workload(batch=8), vary)


# --------------------------------------------------------------------------- equivalence


def test_grid_rows_equal_predict(fido, mixed_grid):
    vary, df = mixed_grid
    assert len(df) == 3 * 4 * 3 * 2 * 2
    assert df["error"].isna().all()
    assert check_rows(df, *fido, Workload(batch=8), vary, range(0, len(df), 5)) == math.ceil(len(df) / 5)


def test_rows_in_product_order(mixed_grid):
    vary, df = mixed_grid
    want = list(itertools.product(*vary.values()))
    got = list(df[list(vary)].astype(object).itertuples(index=False, name=None))
    assert got == want
    assert list(df.columns) == list(COLUMNS)


def test_efficiency_curves_overhead_and_no_overlap(tmp_path):
    """A chip with size-dependent efficiencies and a per-op overhead: the curves must be
    applied to the same op sizes as in predict()."""
    path = tmp_path / "chip.yaml"
    path.write_text(textwrap.dedent("""\
        name: test-chip
        peak_flops_per_s: {bf16: {value: 2.0e+14, source: test}, fp32: {value: 5.0e+13, source: test}}
        memory:
          capacity_bytes: {value: 1.6e+10, source: test}
          bandwidth_bytes_per_s: {value: 8.0e+11, source: test}
        overhead_s_per_op: {value: 3.0e-6, source: test}
        efficiency:
          compute: {value: 0.8, source: test}
          memory: {value: 0.9, source: test}
          matmul_compute: {by: rows, points: [[1, 0.2], [64, 0.6], [4096, 0.9]], source: test}
          attention_memory: {by: bytes, points: [[1.0e+4, 0.3], [1.0e+8, 0.85]], source: test}
          vector_compute: {by: flops, points: [[1.0e+3, 0.1], [1.0e+9, 0.7]], source: test}
        """))
    model = override_model(load_model("fid-base"), decoder_size="small")
    hw = load_hardware(str(path))
    wl = Workload(batch=3, passages=7, passage_len=33, target_len=9)
    vary = parse_vary(["batch=1,5,64", "passages=2,7", "passage_len=16,100", "decoder_layers=3,8",
                       "encoder_layers=2,12", "overlap=roofline,no_overlap", "target_len=2,9"])
    df = sweep(model, hw, wl, vary)
    assert len(df) == 3 * 2 * 2 * 2 * 2 * 2 * 2
    assert check_rows(df, model, hw, wl, vary, range(0, len(df), 9)) > 15
    # Raw peaks (efficiency off) hold for every row too.
    s = Settings(efficiency=False)
    raw = sweep(model, hw, wl, vary, s)
    assert check_rows(raw, model, hw, wl, vary, range(4, len(raw), 23), s) > 5
    assert (raw["time_per_sample_s"] < df["time_per_sample_s"]).all()


def test_models_and_sizes_vary(fido):
    """A varied model and sizes: overrides resize as override_model does (MHA/MQA kept)."""
    wl = Workload(batch=4, target_len=6)
    vary = parse_vary(["model=fid-small,fido-base", "decoder_size=small,large", "encoder_size=base,small",
                       "kv_heads=1,2", "passages=3,20"])
    df = sweep(*fido, wl, vary)
    assert len(df) == 32
    assert check_rows(df, *fido, wl, vary, range(0, len(df), 3)) == 11


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_grids_match_predict(fido, data):
    picks = {
        "batch": st.lists(st.integers(1, 300), min_size=1, max_size=3, unique=True),
        "passages": st.lists(st.integers(1, 60), min_size=1, max_size=2, unique=True),
        "target_len": st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True),
        "kv_heads": st.lists(st.sampled_from([1, 2, 3, 4, 6, 12]), min_size=1, max_size=2, unique=True),
        "cross_attn_every": st.lists(st.integers(1, 12), min_size=1, max_size=2, unique=True),
        "dtype": st.lists(st.sampled_from(["bf16", "fp32", "int8"]), min_size=1, max_size=2, unique=True),
    }
    chosen = data.draw(st.lists(st.sampled_from(sorted(picks)), min_size=1, max_size=4, unique=True))
    vary = {f: data.draw(picks[f]) for f in chosen}
    wl = Workload(batch=8, passages=10, passage_len=64, target_len=4)
    df = sweep(*fido, wl, vary)
    assert len(df) == math.prod(len(v) for v in vary.values())
    i = data.draw(st.integers(0, len(df) - 1))
    check_rows(df, *fido, wl, vary, [i])


def test_decoder_bound_compute_and_memory():
    """H100 at fp32 (CUDA cores, ridge ~20 FLOP/B): large batches make the decoder
    compute-bound, small ones memory-bound."""
    model, hw = load_model("fido-base"), load_hardware("h100-sxm")
    wl = Workload.with_dtype("fp32", passages=4, passage_len=32, target_len=8)
    vary = {"batch": [1, 8, 64, 512, 4096], "cross_attn_every": [1, 12]}
    df = sweep(model, hw, wl, vary)
    assert set(df["decoder_bound"]) == {"compute", "memory"}
    assert check_rows(df, model, hw, wl, vary, range(len(df))) == len(df)


def test_step_blocks_give_the_same_sums(fido, monkeypatch):
    """Forcing the decoding steps into blocks of two (the last one a single step)
    changes nothing."""
    vary = {"target_len": [1, 2, 3, 7], "batch": [1, 9], "kv_heads": [1, 12]}
    whole = sweep(*fido, Workload(), vary)
    monkeypatch.setattr(sweep_mod, "_T_BLOCK_ELEMENTS", 1)
    blocks = sweep(*fido, Workload(), vary)
    num = [c for c in whole.columns if whole[c].dtype == float]
    np.testing.assert_allclose(blocks[num].to_numpy(), whole[num].to_numpy(), rtol=1e-12)


def test_sweep_never_calls_the_single_predictor(fido, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("predict() called per row")

    # The module itself: the package may export the function under the same name.
    predict_mod = importlib.import_module("fidoperf.costmodel.prediction")
    monkeypatch.setattr(predict_mod, "predict", boom)
    monkeypatch.setattr(predict_mod, "ops_table", boom)
    assert len(sweep(*fido, Workload(), {"batch": [1, 2], "passages": [5, 6]})) == 4


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("spec, want", [
    ("batch=1:5", {"batch": [1, 2, 3, 4, 5]}),
    ("passages=10:100:10", {"passages": list(range(10, 101, 10))}),
    ("passages=10:25:10", {"passages": [10, 20]}),
    ("target_len=1,8,32", {"target_len": [1, 8, 32]}),
    ("batch=1,4:6,16", {"batch": [1, 4, 5, 6, 16]}),
    ("batch=3:3", {"batch": [3]}),
    ("batch=2,1,2", {"batch": [2, 1]}),
    ("passage-len = 64", {"passage_len": [64]}),
    ("overlap=roofline,no_overlap", {"overlap": ["roofline", "no_overlap"]}),
])
def test_parse_vary(spec, want):
    assert parse_vary([spec]) == want


def test_parse_vary_mixed_with_hardware_names():
    got = parse_vary(["hardware=tpu-v4,h100-sxm", "batch=1:3", "dtype=bf16,int8", "kv_heads=1,12",
                      "decoder_size=large"])
    assert got == {"hardware": ["tpu-v4", "h100-sxm"], "batch": [1, 2, 3], "dtype": ["bf16", "int8"],
                   "kv_heads": [1, 12], "decoder_size": ["large"]}
    assert list(got) == ["hardware", "batch", "dtype", "kv_heads", "decoder_size"]


@pytest.mark.parametrize("specs, field, words", [
    (["batch=10:5"], "batch", "empty range"),
    (["passages=5:1:2"], "passages", "empty range"),
    (["batch=1:10:0"], "batch", "step"),
    (["bogus=1,2"], "bogus", "unknown field"),
    (["batch=1,x"], "batch", "not a whole number"),
    (["batch=1.5"], "batch", "not a whole number"),
    (["kv_heads=0"], "kv_heads", "at least 1"),
    (["target_len=1,,2"], "target_len", "empty"),
    (["batch=1", "batch=2"], "batch", "more than once"),
    (["batch=1", "batch-=2"], "batch_", "unknown field"),
    (["hardware=tpu-v99"], "hardware", "tpu-v99"),
    (["model=no-such-model"], "model", "no-such-model"),
    (["dtype=bf17"], "dtype", "bf17"),
    (["encoder_size=huge"], "encoder_size", "huge"),
    (["overlap=partial"], "overlap", "partial"),
    (["batch"], "batch", "FIELD=VALUES"),
])
def test_parse_vary_errors_name_the_field(specs, field, words):
    with pytest.raises(SpecError) as info:
        parse_vary(specs)
    assert info.value.where == "--vary" and info.value.field == field
    assert words in str(info.value)


def test_sweep_checks_a_hand_made_vary(fido):
    with pytest.raises(SpecError, match="batch"):
        sweep(*fido, Workload(), {"batch": [0]})
    with pytest.raises(SpecError, match="heads"):
        sweep(*fido, Workload(), {"heads": [1]})


# --------------------------------------------------------------------------- infeasible and memory


def test_impossible_combinations_are_rows_with_a_reason(fido):
    vary = {"kv_heads": [1, 5], "cross_attn_every": [6, 13], "dtype": ["bf16", "fp16"]}
    df = sweep(*fido, Workload(), vary)
    assert len(df) == 8
    err = df["error"].astype(object)
    ok = df["kv_heads"].eq(1) & df["cross_attn_every"].eq(6) & df["dtype"].eq("bf16")
    assert err[ok].isna().all() and err[~ok].notna().all()
    assert err[df["kv_heads"].eq(5) & df["dtype"].eq("bf16")].str.contains(
        "5 key/value heads do not divide").all()
    assert err[df["cross_attn_every"].eq(13) & df["kv_heads"].eq(1) & df["dtype"].eq("bf16")].str.contains(
        "larger than the 12 decoder layers").all()
    assert err[df["dtype"].eq("fp16")].str.contains("no fp16 peak").all()
    assert df.loc[~ok, list(FIGURE_COLUMNS)].isna().all().all()
    # The valid row shares its arrays with rows of no cross-attention layer (K > L).
    assert check_rows(df, *fido, Workload(), vary, np.flatnonzero(ok.to_numpy())) == 1
    assert df.loc[~ok, ["max_batch", "decoder_kv_heads"]].isna().all().all()
    assert not df.loc[~ok, "fits"].any()
    # The same reason as override_model gives for that combination.
    with pytest.raises(SpecError) as info:
        override_model(fido[0], kv_heads=5)
    assert str(info.value) in set(err.dropna())


def test_memory_flag_and_batches_above_max_batch_are_kept(fido):
    model, hw = fido
    wl = Workload(passages=100, passage_len=256)
    mb = predict(model, hw, wl).memory["max_batch"]
    assert mb > 2
    batches = [1, mb - 1, mb, mb + 1, 2 * mb]
    df = sweep(model, hw, wl, {"batch": batches})
    assert df["batch"].tolist() == batches  # nothing dropped
    for b, row in zip(batches, df.itertuples(), strict=True):
        mem = predict(model, hw, wl.replace(batch=b)).memory
        assert row.peak_memory_bytes == pytest.approx(mem["peak_bytes"], rel=REL)
        assert row.fits == (mem["peak_bytes"] <= hw.hbm_capacity_bytes)
        assert row.max_batch == mb
    assert df["fits"].tolist() == [True, True, True, False, False]
    assert df["time_per_sample_s"].notna().all()


def test_best_respects_fit_and_limits(mixed_grid):
    _, df = mixed_grid
    top, ok = sweep_mod.best(df, 5, time_limit_s=0.2, memory_limit_bytes=20e9)
    want = df[df["fits"] & (df["batch_time_s"] <= 0.2) & (df["peak_memory_bytes"] <= 20e9)]
    assert ok.sum() == len(want)
    assert top.index.tolist() == want.sort_values("time_per_sample_s", kind="stable").index[:5].tolist()


# --------------------------------------------------------------------------- CLI


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("suffix, read", [
    (".csv", pd.read_csv),
    (".json", lambda p: pd.read_json(p, orient="records")),
    (".parquet", pd.read_parquet),
])
def test_cli_writes_each_format(tmp_path, suffix, read):
    out = tmp_path / f"grid{suffix}"
    r = run(["sweep", "--vary", "batch=1,8,32", "--vary", "kv_heads=1,5", "--vary",
             "hardware=tpu-v4,h100-sxm", "--top", "3", "-o", str(out)])
    assert r.exit_code == 0, r.output
    back = read(out)
    assert len(back) == 12
    assert list(back.columns) == list(COLUMNS)
    assert back["error"].notna().sum() == 6
    direct = sweep(load_model("fido-base"), load_hardware("tpu-v4"), Workload(),
                   parse_vary(["batch=1,8,32", "kv_heads=1,5", "hardware=tpu-v4,h100-sxm"]))
    np.testing.assert_allclose(back["time_per_sample_s"].to_numpy(float),
                               direct["time_per_sample_s"].to_numpy(float), rtol=1e-12)
    assert "12 configurations" in r.output and "6 valid" in r.output
    assert r.stderr == ""


def test_cli_json_is_records_in_si_units(tmp_path):
    out = tmp_path / "g.json"
    assert run(["sweep", "--vary", "batch=2,4", "-o", str(out)]).exit_code == 0
    recs = json.loads(out.read_text())
    p = predict(load_model("fido-base"), load_hardware("tpu-v4"), Workload(batch=4))
    assert recs[1]["batch"] == 4
    assert recs[1]["time_per_sample_s"] == pytest.approx(p.totals["time_per_sample_s"], rel=1e-12)
    assert recs[1]["peak_memory_bytes"] == pytest.approx(p.memory["peak_bytes"], rel=1e-12)
    assert recs[1]["error"] is None and recs[1]["fits"] is True


def test_cli_top_table_is_sorted_and_limited(tmp_path):
    out = tmp_path / "g.csv"
    r = run(["sweep", "--vary", "batch=1,2,4,8,16", "--vary", "passages=10,40", "--top", "3", "-o", str(out)])
    assert r.exit_code == 0
    df = pd.read_csv(out)
    lines = r.output.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("rank"))) + 2:]
    assert len(table) == 3
    want = df.nsmallest(3, "time_per_sample_s")[["batch", "passages"]].to_numpy().tolist()
    assert [[int(x) for x in row.split()[1:3]] for row in table] == want


def test_cli_missing_folder_fails_before_work(tmp_path):
    out = tmp_path / "nope" / "g.csv"
    r = run(["sweep", "--vary", "batch=1,2", "-o", str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0 and str(out) in r.stderr
    assert not out.exists() and not out.parent.exists()
    assert r.stdout == ""


@pytest.mark.parametrize("args, words", [
    (["--vary", "bogus=1"], "bogus"),
    (["--vary", "batch=9:1"], "empty range"),
    (["--batch", "3", "--vary", "batch=1,2"], "--batch"),
    (["--vary", "hardware=tpu-v99"], "tpu-v99"),
    (["--kv-heads", "0"], "'--kv-heads': 0 is not in the range x>=1"),
    (["--kv-heads", "5"], "--kv-heads: 5 key/value heads do not divide 12 query heads"),
    (["--vary", "batch=100000,200000"], "no configuration fits in memory"),
])
def test_cli_bad_vary_is_one_line_exit_2(args, words):
    r = CliRunner().invoke(cli, ["sweep", *args])
    assert r.exit_code == 2 and not isinstance(r.exception, AssertionError)
    assert r.stderr.strip().count("\n") == 0 and words in r.stderr
    assert "Traceback" not in r.output + r.stderr


def test_cli_unknown_suffix(tmp_path):
    out = tmp_path / "g.xlsx"
    r = run(["sweep", "-o", str(out)])
    assert r.exit_code == 2 and ".xlsx" in r.stderr and not out.exists()


def test_cli_unmet_limit_writes_output_then_exits_2(tmp_path):
    out = tmp_path / "g.parquet"
    r = run(["sweep", "--vary", "batch=1,2", "--time-limit-ms", "0.001", "-o", str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0 and "no configuration meets the limits" in r.stderr
    assert len(pd.read_parquet(out)) == 2
    r = run(["sweep", "--vary", "batch=1,2", "--memory-limit-gb", "1000", "--time-limit-ms", "1000"])
    assert r.exit_code == 0 and "2 of the 2 that fit meet them" in r.output


def test_cli_model_overrides_apply_to_every_varied_model(tmp_path):
    out = tmp_path / "g.csv"
    r = run(["sweep", "--kv-heads", "2", "--cross-attn-every", "3", "--vary", "model=fid-base,fido-base",
             "--target-len", "4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert df["kv_heads"].tolist() == [2, 2] and df["decoder_cross_layers"].tolist() == [4, 4]
    for name, row in zip(["fid-base", "fido-base"], df.itertuples(), strict=True):
        m = override_model(load_model(name), kv_heads=2, cross_attn_every=3)
        p = predict(m, load_hardware("tpu-v4"), Workload(target_len=4))
        assert row.time_per_sample_s == pytest.approx(p.totals["time_per_sample_s"], rel=REL)


def test_cli_help_documents_vary_and_exit_status():
    r = run(["sweep", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "--vary" in text and "FIELD=VALUES" in text and "status 2" in text
