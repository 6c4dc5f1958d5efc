"""Capacity planning: the chosen plan meets the load and the latency limit, nothing
cheaper exists in the searched space (checked by brute force with predict, not with
plan.py's own code), and bad input fails in one line with no file left behind."""

from __future__ import annotations

import math
import re

import pytest
from click.testing import CliRunner

from fidoperf.cli import cli
from fidoperf.costmodel.prediction import predict
from fidoperf.errors import SpecError
from fidoperf.specs import Workload, load_hardware, load_model
from fidoperf.whatif import plan as P

WL = Workload(passages=40, passage_len=256, target_len=32, batch=1)
SMALL = ["--passages", "10", "--passage-len", "64", "--target-len", "4"]


def brute_force(model, hw, wl, qps, latency_s, price):
    """Every batch of the documented space, straight from predict: (cost, chips,
    latency, batch) of the cheapest."""
    max_batch = predict(model, hw, wl.replace(batch=1)).memory["max_batch"]
    space = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= max_batch} | {max_batch} - {0})
    best = None
    for b in space:
        pred = predict(model, hw, wl.replace(batch=b))
        t = pred.totals["batch_time_s"]
        if not pred.memory["fits"] or t > latency_s:
            continue
        chips = 1
        while chips * b / t < qps * (1 - 1e-12):  # fewest chips whose throughput covers the load
            chips += 1
        cost = chips * price / (qps * 3600) * 1e6
        cand = (cost, chips, t, b)
        best = cand if best is None or cand < best else best
    return best


@pytest.fixture(scope="module")
def chips():
    return [load_hardware("tpu-v4"), load_hardware("a100-80gb")]


@pytest.fixture(scope="module")
def models():
    return [load_model("fid-base"), load_model("fido-base-xl")]


@pytest.mark.parametrize("qps,latency_ms", [(100, 500), (40, 60)])
def test_plan_meets_load_and_latency_and_nothing_is_cheaper(models, chips, qps, latency_ms):
    price = 2.5
    result = P.plan(models, chips, WL, qps, latency_ms, price_per_chip_hour=price)
    assert len(result.best) == len(models) * len(chips)
    for _, row in result.best.iterrows():
        m = next(x for x in models if x.name == row["model"])
        h = next(x for x in chips if x.name == row["hardware"])
        expect = brute_force(m, h, WL, qps, latency_ms / 1e3, price)
        if expect is None:
            assert not row["feasible"]
            continue
        assert row["feasible"]
        # meets the load and the latency limit
        assert row["batch_time_s"] <= latency_ms / 1e3
        assert row["chips"] * row["batch"] / row["batch_time_s"] >= qps * (1 - 1e-12)
        assert predict(m, h, WL.replace(batch=int(row["batch"]))).memory["fits"]
        # and no cheaper plan exists in the searched space
        assert row["cost_per_million_usd"] == pytest.approx(expect[0], rel=1e-12)
        assert row["chips"] == expect[1]
        assert row["batch_time_s"] == pytest.approx(expect[2], rel=1e-12)
    costs = result.best["cost_per_million_usd"][result.best["feasible"]].tolist()
    assert costs == sorted(costs)  # ranked cheapest first


def test_reported_figures_follow_their_formulas(chips):
    tpu = chips[0]
    result = P.plan([load_model("fido-base")], [tpu], WL, 30, 1000)
    row = result.best.iloc[0]
    pred = predict(load_model("fido-base"), tpu, WL.replace(batch=int(row["batch"])))
    t = pred.totals["batch_time_s"]
    assert row["throughput_per_chip_qps"] == pytest.approx(row["batch"] / t)
    assert row["energy_per_query_j"] == pytest.approx(tpu.tdp_w * t / row["batch"])
    assert row["peak_bytes"] == pred.memory["peak_bytes"]
    assert row["memory_fraction"] == pytest.approx(pred.memory["peak_bytes"] / tpu.hbm_capacity_bytes)
    # the profile's own price, with its source
    assert row["cost_per_million_usd"] == pytest.approx(row["chips"] * 3.22 / (30 * 3600) * 1e6)
    assert "cloud.google.com" in result.prices["tpu-v4"].source


def test_no_price_means_nan_cost_ranked_by_chips():
    hws = [load_hardware("a100-80gb"), load_hardware("h100-sxm")]
    result = P.plan([load_model("fido-base")], hws, WL, 200, 1000)
    assert result.best["cost_per_million_usd"].isna().all()
    assert result.best["chips"].tolist() == sorted(result.best["chips"].tolist())
    assert any("No price" in n for n in result.notes)


def test_no_power_figure_means_nan_energy():
    result = P.plan([load_model("fido-base")], [load_hardware("tpu-v5e")], WL, 10, 1000)
    assert math.isnan(result.best.iloc[0]["energy_per_query_j"])
    assert any("No power figure" in n for n in result.notes)


def test_model_that_does_not_fit_at_batch_1_is_infeasible_on_that_chip():
    result = P.plan([load_model("fid-xxl"), load_model("fido-base")], [load_hardware("l4")], WL, 1, 10_000)
    row = result.best.set_index("model").loc["fid-xxl"]
    assert not row["feasible"] and "does not fit on one chip at batch 1" in row["reason"]
    assert result.best.iloc[0]["model"] == "fido-base"


def test_latency_nothing_meets_names_the_tightest(models, chips):
    fastest = min(predict(m, h, WL.replace(batch=1)).totals["batch_time_s"] for m in models for h in chips)
    with pytest.raises(SpecError) as err:
        P.plan(models, chips, WL, 10, 0.5)
    assert f"{fastest * 1e3:.4g} ms" in str(err.value)
    assert "tightest latency achievable" in str(err.value)


@pytest.mark.parametrize("kw", [{"qps": 0}, {"latency_ms": -1}, {"price_per_chip_hour": 0}])
def test_bad_numbers(kw):
    args = {"qps": 10, "latency_ms": 100} | kw
    with pytest.raises(SpecError):
        P.plan([load_model("fido-base")], [load_hardware("tpu-v4")], WL, **args)


# --------------------------------------------------------------------------- command


def _invoke(args):
    return CliRunner().invoke(cli, args)


def test_plan_command_prints_a_short_table():
    res = _invoke(
        ["plan", "--qps", "100", "--latency-ms", "500", "-m", "fid-base", "-m", "fido-base", *SMALL]
    )
    assert res.exit_code == 0, res.output
    assert "best:" in res.output and "USD/1M queries" in res.output and "fido-base" in res.output


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_plan_report_is_written_and_self_contained(tmp_path, suffix):
    out = tmp_path / f"plan{suffix}"
    res = _invoke(
        [
            "plan",
            "--qps",
            "50",
            "--latency-ms",
            "200",
            "-m",
            "fido-base",
            "-H",
            "tpu-v4",
            "-H",
            "l4",
            *SMALL,
            "-o",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "Capacity plan" in text and "Assumptions" in text and "no queueing delay beyond one batch" in text
    assert len(re.findall(r"data:image/png;base64,", text)) == 2  # roofline and breakdown embedded
    if suffix == ".html":
        assert text.startswith("<!DOCTYPE html>") and "<table>" in text
        assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing to fetch
    else:
        assert "| rank |" in text
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--latency-ms", "0.01", "-o", "{tmp}/plan.md"], "tightest latency achievable"),
        (["--latency-ms", "500", "-o", "{tmp}/plan.txt"], "unknown report format"),
        (["--latency-ms", "500", "-o", "{tmp}/no/such/folder/plan.html"], "cannot write"),
        (["--latency-ms", "500", "--batches", "4,x"], "--batches"),
        (["--latency-ms", "500", "-m", "fid-base+turbo"], "unknown what-if"),
    ],
)
def test_plan_bad_input_is_one_line_exit_2_no_file(tmp_path, args, message):
    res = _invoke(["plan", "--qps", "100", *SMALL, *[a.format(tmp=tmp_path) for a in args]])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []
