"""Capacity planning: each chip's rate is the highest that meets the latency
percentile (checked by re-simulating with the public `simulate`, not plan.py's code,
and bounded by `predict`), the chips cover the load, nothing cheaper is ranked below,
and bad input fails in one line with no file left behind. With parallel layouts: a
model too big for one chip gets a multi-chip plan that really meets the target, no
evaluated layout is cheaper, pruning is visible and justified, and the time budget
is honoured."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from fidoperf.cli import cli
from fidoperf.costmodel.prediction import memory_footprint, predict
from fidoperf.errors import SpecError
from fidoperf.specs import Workload, load_hardware, load_model
from fidoperf.specs.layout import Layout
from fidoperf.whatif import plan as P
from fidoperf.whatif.simulate import simulate, steady_load_limit

WL = Workload(passages=40, passage_len=256, target_len=32, batch=1)
SMALL = ["--passages", "10", "--passage-len", "64", "--target-len", "4", "--requests", "600", "--layouts", "single"]
FAST = P.ServingPlan(requests=1000, layouts="single")


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
    bursty = P.plan(m, [tpu], WL, 100, 300, serving=P.ServingPlan(requests=1000, arrivals="gamma", cv=3.0,
                                                                  layouts="single")).best.iloc[0]
    median = P.plan(m, [tpu], WL, 100, 300, serving=P.ServingPlan(requests=1000, percentile=50,
                                                                  layouts="single")).best.iloc[0]
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


@pytest.mark.parametrize("kw", [{"policy": "eager"}, {"percentile": 0}, {"percentile": 101}, {"layouts": "some"},
                                {"time_budget_s": 0}, {"pool_ratios": ((1, 0),)}])
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


# --------------------------------------------------------------------------- parallel layouts

BIG = Workload(passages=20, passage_len=256, target_len=8, batch=1)  # FiD-XXL: 24.3 GB a request on one chip


def test_candidate_layouts_split_the_heads_within_one_node():
    fido, hw = load_model("fido-base"), load_hardware("tpu-v4")  # 12 heads, 1 key/value head; 8-chip slice
    layouts = P.candidate_layouts(fido, hw)
    assert layouts[0] == Layout()
    node = hw.interconnect.node.chips
    tps = sorted({L.tensor_parallel for L in layouts})
    assert tps == [T for T in range(1, node + 1) if 12 % T == 0] == [1, 2, 3, 4, 6]
    for L in layouts:
        assert L.total_chips <= node
        if L.pooled:
            assert (L.encoder_replicas, L.decoder_replicas) in P.POOL_RATIOS
    # with one key/value head, every T > 1 also comes with keys and values sharded over the batch
    assert {L.tensor_parallel for L in layouts if L.shard_kv == "batch"} == {2, 3, 4, 6}
    assert P.candidate_layouts(fido, hw, "colocated") == [L for L in layouts if not L.pooled]
    assert P.candidate_layouts(fido, hw, "single") == [Layout()]


def test_model_too_big_for_one_chip_gets_a_multi_chip_plan_that_meets_the_target():
    """FiD-XXL does not fit one 24 GB L4 with 20 passages of 256 tokens. The plan finds a
    multi-chip layout; re-simulated at its rate per unit with the public `simulate` it
    meets the target and 2% more does not; no evaluated layout needs fewer chips; every
    pruned layout was pruned for a reason that holds."""
    model, l4 = load_model("fid-xxl"), load_hardware("l4")
    qps, latency_ms = 5.0, 1000.0  # one-chip pools (1.12 s alone) miss it; TP 2 (0.70 s alone) may meet it
    sp = P.ServingPlan(requests=500, pool_ratios=((1, 1), (2, 1)))
    result = P.plan([model], [l4], BIG, qps, latency_ms, serving=sp)
    row = result.best.iloc[0]
    lay = result.layouts
    assert row["feasible"] and row["chips_per_unit"] >= 2
    single = lay[lay["layout"] == "1 chip, TP 1"].iloc[0]
    assert single["status"] == "pruned" and single["reason"].startswith("does not fit")
    assert not memory_footprint(model, l4, BIG)["fits"]
    # the chosen layout, re-simulated
    L = Layout(chips=None if not np.isnan(row["encoder_chips"]) else int(row["chips_per_unit"]),
               tensor_parallel=int(row["tensor_parallel"]), shard_kv=row["shard_kv"],
               encoder_chips=None if np.isnan(row["encoder_chips"]) else int(row["encoder_chips"]),
               decoder_chips=None if np.isnan(row["decoder_chips"]) else int(row["decoder_chips"]))
    assert L.total_chips == row["chips_per_unit"]
    r, target = row["rate_per_unit_qps"], latency_ms / 1e3
    sim = dict(requests=sp.requests, seed=sp.seed, policy=sp.policy, latency_target_s=target, layout=L,
               ship=row["shipped"])
    at = simulate(model, l4, BIG, qps=r, **sim).summary
    above = simulate(model, l4, BIG, qps=r * (1 + 2 * sp.rel_tol), **sim).summary
    assert at["meets_target"] and at["latency_p99_s"] <= target and not above["meets_target"]
    assert row["chips"] == math.ceil(qps / r - 1e-9) * L.total_chips
    # nothing cheaper among the evaluated layouts; the counts add up
    ev = lay[lay["status"] == "evaluated"]
    assert len(ev) >= 2 and (ev["chips"].dropna() >= row["chips"]).all()
    assert lay["chosen"].sum() == 1 and lay.loc[lay["chosen"], "chips"].iloc[0] == row["chips"]
    assert row["layouts_considered"] == len(lay) == row["layouts_pruned"] + row["layouts_evaluated"] + row[
        "layouts_not_evaluated"]
    assert row["layouts_not_evaluated"] == 0
    assert lay["reason"].str.startswith("a request served alone").sum() == 2  # the pools without tensor parallelism
    # pruned layouts: each reason checked against predict or the capacity it states
    top = steady_load_limit(sp.requests)
    for _, rec in lay[lay["status"] == "pruned"].iterrows():
        if rec["reason"].startswith("cannot beat"):
            fewest = math.ceil(qps / (top * rec["capacity_per_unit_qps"]) - 1e-9) * rec["chips_per_unit"]
            assert fewest > row["chips"]
        elif not rec["reason"].startswith("does not fit"):
            assert rec["reason"].startswith("a request served alone") and rec["lone_latency_s"] > target
    # the lone latencies that drive the pruning are predict's
    for _, rec in lay.iloc[:3].iterrows():
        Lr = P.candidate_layouts(model, l4, "all", sp.pool_ratios)[_]
        assert rec["lone_latency_s"] == pytest.approx(predict(model, l4, BIG, layout=Lr).totals["batch_time_s"],
                                                      rel=1e-9)


def test_layouts_that_cannot_beat_the_cheapest_found_are_dropped_for_a_reason_that_holds():
    """FiDO-Base on TPU v4 at 30 queries/s: one chip serves it all; every other layout
    would need more chips even at the capacity it serves with its queue never empty
    (which bounds any rate the search could find), so each is dropped after that one run."""
    sp = P.ServingPlan(requests=600)
    wl = WL.replace(passages=10, passage_len=64, target_len=4)
    result = P.plan([load_model("fido-base")], [load_hardware("tpu-v4")], wl, 30, 500, serving=sp)
    row, lay = result.best.iloc[0], result.layouts
    assert row["chips"] == 1 and row["layout"] == "1 chip, TP 1"
    dropped = lay[lay["reason"].str.startswith("cannot beat")]
    assert len(dropped) == len(lay) - 1 == row["layouts_pruned"]
    top = steady_load_limit(sp.requests)
    for _, rec in dropped.iterrows():
        assert math.ceil(30 / (top * rec["capacity_per_unit_qps"]) - 1e-9) * rec["chips_per_unit"] > row["chips"]
    # the capacity bounds the rate: the chosen layout's own search never went above it
    search = result.searches[("fido-base", "tpu-v4")]
    assert search.points["rate_qps"].max() <= top * search.capacity_qps * (1 + 1e-12)


def test_a_tiny_time_budget_reports_layouts_not_evaluated():
    """With a budget of a millisecond each (model, chip) pair still evaluates its most
    promising layout (least predicted chip-seconds per query over the headroom left to a
    lone request), and every other layout that was not pruned is listed as not
    evaluated, never dropped."""
    sp = P.ServingPlan(requests=500, time_budget_s=1e-3)
    models, tpu = [load_model("fido-base"), load_model("fid-base")], load_hardware("tpu-v4")
    result = P.plan(models, [tpu], WL.replace(passages=10, passage_len=64, target_len=4), 50, 500, serving=sp)
    for _, row in result.best.iterrows():
        lay = result.layouts[result.layouts["model"] == row["model"]]
        assert len(lay) == len(P.candidate_layouts(next(m for m in models if m.name == row["model"]), tpu))
        counts = lay["status"].value_counts()
        assert counts["evaluated"] == 1 and counts["not evaluated"] >= 5
        assert (lay.loc[lay["status"] == "not evaluated", "reason"] == "the time budget ran out").all()
        assert row["layouts_not_evaluated"] == counts["not evaluated"]
        assert row["layouts_considered"] == row["layouts_pruned"] + row["layouts_evaluated"] + row[
            "layouts_not_evaluated"] == len(lay)
        first = lay[lay["status"] == "evaluated"].iloc[0]
        assert first["expected_chip_seconds_per_query"] == lay["expected_chip_seconds_per_query"].min()
        alone = lay["lone_latency_s"] / 0.5  # the headroom left to a lone request under the 500 ms target
        assert np.allclose(lay["expected_chip_seconds_per_query"], lay["chip_seconds_per_query"] / (1 - alone),
                           equal_nan=True)
    assert any("time budget ran out" in n for n in result.notes)


def test_plan_command_with_layouts_reports_them(tmp_path):
    out = tmp_path / "plan.md"
    res = _invoke(["plan", "--qps", "20", "--latency-ms", "1500", "-m", "fid-xxl", "-H", "l4", "--passages", "20",
                   "--target-len", "8", "--requests", "400", "--time-budget-s", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert re.search(r"layouts: \d+ considered, \d+ pruned, \d+ evaluated, \d+ not evaluated", res.output)
    assert "TP" in res.output and "units" in res.output
    text = out.read_text()
    assert "## Layouts considered" in text and "does not fit" in text and "(chosen)" in text
    assert "separate encoder and decoder pools" in text  # the layouts searched are stated
