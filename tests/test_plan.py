"""Capacity planning: each chip's rate is the highest that meets the latency
percentile (checked by re-simulating with the public `simulate`, not plan.py's code,
and bounded by `predict`), the chips cover the load, nothing cheaper is ranked below,
and bad input fails in one line with no file left behind."""

from __future__ import annotations

import math
import re

import pytest
from click.testing import CliRunner

from fidoperf.cli import cli
from fidoperf.costmodel.prediction import memory_footprint, predict
from fidoperf.errors import SpecError
from fidoperf.specs import Workload, load_hardware, load_model
from fidoperf.whatif import plan as P
from fidoperf.whatif.simulate import simulate

WL = Workload(passages=40, passage_len=256, target_len=32, batch=1)
SMALL = ["--passages", "10", "--passage-len", "64", "--target-len", "4", "--requests", "600"]
FAST = P.ServingPlan(requests=1000)


def best_rate_bound(model, hw, wl, max_batch):
    """No policy serves more than b / batch_time(b) at its largest batch b: per request,
    encode and decoding steps cost least in the fullest batch (weights read once)."""
    cap = min(max_batch, memory_footprint(model, hw, wl)["max_batch"])
    return max(b / predict(model, hw, wl.replace(batch=b)).totals["batch_time_s"]
               for b in sorted({1, 2, 4, 8, 16, 32, 64, cap}) if b <= cap)


@pytest.fixture(scope="module")
def chips():
    return [load_hardware("tpu-v4"), load_hardware("a100-80gb")]


@pytest.fixture(scope="module")
def models():
    return [load_model("fid-base"), load_model("fido-base-xl")]


@pytest.mark.parametrize("qps,latency_ms", [(100, 500), (40, 60)])
def test_plan_rate_is_the_edge_chips_cover_the_load_and_nothing_is_cheaper(models, chips, qps, latency_ms):
    price = 2.5
    target = latency_ms / 1e3
    result = P.plan(models, chips, WL, qps, latency_ms, price_per_chip_hour=price, serving=FAST)
    assert len(result.best) == len(models) * len(chips)
    for _, row in result.best.iterrows():
        m = next(x for x in models if x.name == row["model"])
        h = next(x for x in chips if x.name == row["hardware"])
        alone = predict(m, h, WL).totals["batch_time_s"]
        if not row["feasible"]:
            assert alone > target and "alone" in row["reason"]  # not even an idle chip meets it
            continue
        r = row["throughput_per_chip_qps"]
        sim = dict(requests=FAST.requests, seed=FAST.seed, policy=FAST.policy, latency_target_s=target)
        at = simulate(m, h, WL, qps=r, **sim).summary
        above = simulate(m, h, WL, qps=r * (1 + 2 * FAST.rel_tol), **sim).summary
        assert at["sustainable"] and at["latency_p99_s"] <= target  # meets the target at that rate
        assert not above["meets_target"]  # and a little more does not
        assert row["latency_s"] == pytest.approx(at["latency_p99_s"])
        assert alone <= row["latency_s"] <= target
        assert r < best_rate_bound(m, h, WL, FAST.max_batch) * (1 + 1e-9)
        # the fewest chips whose rates cover the load, and the cost they imply
        n = 1
        while n * r < qps * (1 - 1e-12):
            n += 1
        assert row["chips"] == n
        assert row["cost_per_million_usd"] == pytest.approx(n * price / (qps * 3600) * 1e6, rel=1e-12)
    costs = result.best["cost_per_million_usd"][result.best["feasible"]].tolist()
    assert costs == sorted(costs)  # ranked cheapest first
    assert result.best["feasible"].any()


def test_reported_figures_follow_their_formulas(chips):
    tpu = chips[0]
    result = P.plan([load_model("fido-base")], [tpu], WL, 30, 1000, serving=FAST)
    row = result.best.iloc[0]
    pred = predict(load_model("fido-base"), tpu, WL.replace(batch=int(row["batch"])))
    assert row["batch_time_s"] == pytest.approx(pred.totals["batch_time_s"])
    assert row["peak_bytes"] == pred.memory["peak_bytes"]
    assert row["memory_fraction"] == pytest.approx(pred.memory["peak_bytes"] / tpu.hbm_capacity_bytes)
    search = result.searches[("fido-base", "tpu-v4")]
    assert row["throughput_per_chip_qps"] == search.rate_qps
    assert row["capacity_per_chip_qps"] == search.capacity_qps > search.rate_qps
    assert row["batch"] == max(1, round(search.summary["mean_decode_batch"]))
    # a loaded fleet: every chip at its power all the time
    assert row["energy_per_query_j"] == pytest.approx(tpu.tdp_w * row["chips"] / 30)
    assert row["energy_per_million_j"] == pytest.approx(row["energy_per_query_j"] * 1e6)
    # the profile's own price, with its source
    assert row["cost_per_million_usd"] == pytest.approx(row["chips"] * 3.22 / (30 * 3600) * 1e6)
    assert "cloud.google.com" in result.prices["tpu-v4"].source
    assert any("continuous batching" in a and "Poisson arrivals" in a for a in result.assumptions)


def test_bursty_arrivals_and_a_lower_percentile_move_the_rate(chips):
    tpu, m = chips[0], [load_model("fido-base")]
    base = P.plan(m, [tpu], WL, 100, 300, serving=FAST).best.iloc[0]
    bursty = P.plan(m, [tpu], WL, 100, 300, serving=P.ServingPlan(requests=1000, arrivals="gamma", cv=3.0)).best.iloc[0]
    median = P.plan(m, [tpu], WL, 100, 300, serving=P.ServingPlan(requests=1000, percentile=50)).best.iloc[0]
    assert bursty["throughput_per_chip_qps"] < base["throughput_per_chip_qps"] < median["throughput_per_chip_qps"]
    assert bursty["chips"] >= base["chips"] >= median["chips"]


def test_no_price_means_nan_cost_ranked_by_chips():
    hws = [load_hardware("a100-80gb"), load_hardware("h100-sxm")]
    result = P.plan([load_model("fido-base")], hws, WL, 200, 1000, serving=FAST)
    assert result.best["cost_per_million_usd"].isna().all()
    assert result.best["chips"].tolist() == sorted(result.best["chips"].tolist())
    assert any("No price" in n for n in result.notes)


def test_no_power_figure_means_nan_energy():
    result = P.plan([load_model("fido-base")], [load_hardware("tpu-v5e")], WL, 10, 1000, serving=FAST)
    assert math.isnan(result.best.iloc[0]["energy_per_query_j"])
    assert any("No power figure" in n for n in result.notes)


def test_model_that_does_not_fit_at_batch_1_is_infeasible_on_that_chip():
    result = P.plan([load_model("fid-xxl"), load_model("fido-base")], [load_hardware("l4")], WL, 1, 10_000,
                    serving=FAST)
    row = result.best.set_index("model").loc["fid-xxl"]
    assert not row["feasible"] and "does not fit on one chip at batch 1" in row["reason"]
    assert result.best.iloc[0]["model"] == "fido-base"


def test_latency_nothing_meets_names_the_tightest(models, chips):
    fastest = min(predict(m, h, WL.replace(batch=1)).totals["batch_time_s"] for m in models for h in chips)
    with pytest.raises(SpecError) as err:
        P.plan(models, chips, WL, 10, 0.5, serving=FAST)
    assert f"{fastest * 1e3:.4g} ms" in str(err.value)
    assert "tightest latency achievable" in str(err.value) and "99th percentile" in str(err.value)


@pytest.mark.parametrize("kw", [{"qps": 0}, {"latency_ms": -1}, {"price_per_chip_hour": 0}])
def test_bad_numbers(kw):
    args = {"qps": 10, "latency_ms": 100} | kw
    with pytest.raises(SpecError):
        P.plan([load_model("fido-base")], [load_hardware("tpu-v4")], WL, serving=FAST, **args)


@pytest.mark.parametrize("kw", [{"policy": "eager"}, {"percentile": 0}, {"percentile": 101}])
def test_bad_serving(kw):
    with pytest.raises(SpecError):
        P.ServingPlan(**kw)


# --------------------------------------------------------------------------- command


def _invoke(args):
    return CliRunner().invoke(cli, args)


def test_plan_command_prints_a_short_table():
    res = _invoke(
        ["plan", "--qps", "100", "--latency-ms", "500", "-m", "fid-base", "-m", "fido-base", *SMALL]
    )
    assert res.exit_code == 0, res.output
    assert "best:" in res.output and "USD/1M queries" in res.output and "fido-base" in res.output
    assert "p99 ms" in res.output and "continuous batching" in res.output and "Poisson arrivals" in res.output


def test_plan_command_static_policy_and_percentile():
    res = _invoke(["plan", "--qps", "100", "--latency-ms", "500", "-m", "fido-base", "--policy", "static",
                   "--percentile", "90", "--arrivals", "gamma", "--cv", "3", *SMALL])
    assert res.exit_code == 0, res.output
    assert "p90 ms" in res.output and "static batching" in res.output and "cv 3" in res.output


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
    assert "Capacity plan" in text and "Assumptions" in text and "queueing, batch formation" in text
    assert "continuous batching" in text and "Poisson arrivals" in text and "p99 within 200 ms" in text
    assert len(re.findall(r"data:image/png;base64,", text)) == 3  # roofline, breakdown, latency against load
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
        (["--latency-ms", "500", "--percentile", "0"], "--percentile"),
        (["--latency-ms", "500", "--policy", "eager"], "--policy"),
        (["--latency-ms", "500", "-m", "fid-base+turbo"], "unknown what-if"),
    ],
)
def test_plan_bad_input_is_one_line_exit_2_no_file(tmp_path, args, message):
    res = _invoke(["plan", "--qps", "100", *SMALL, *[a.format(tmp=tmp_path) for a in args]])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []
