"""Serving simulation: the service model reproduces `predict` (one chip, tensor
parallelism, batch-sharded keys and values, separate pools), the engine reproduces
queueing theory (M/D/1 Pollaczek-Khinchine, Little's law, D/D/1), overload is reported
as such, a lone request takes exactly its predicted time under every layout, separate
pools decode without pausing for encodes, memory per chip caps the batch, runs are
reproducible, and the command line keeps its contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fidoperf.cli import cli
from fidoperf.costmodel.prediction import Settings, memory_footprint, predict
from fidoperf.errors import SpecError
from fidoperf.specs import Workload, load_hardware, load_model
from fidoperf.specs.layout import Layout
from fidoperf.whatif import simulate as S
from fidoperf.whatif.service import ServiceModel, batch_phase_times_s

SMALL = Workload(passages=10, passage_len=64, target_len=6, batch=1)
CALIBRATED = "benchmarks/results/cpu-calibrated.yaml"  # efficiency curves and a per-op overhead

# Two-sided 99% quantile of Student's t with 19 degrees of freedom (20 batch means).
T_0995_19 = 2.861


@pytest.fixture(scope="module")
def fido():
    return load_model("fido-base")


@pytest.fixture(scope="module")
def fid():
    return load_model("fid-base")


@pytest.fixture(scope="module")
def tpu():
    return load_hardware("tpu-v4")


def lone(model, hw, p, n, t, settings=Settings()):
    return predict(model, hw, Workload(passages=p, passage_len=n, target_len=t, batch=1), settings).totals[
        "batch_time_s"]


# --------------------------------------------------------------------------- the service model


@pytest.mark.parametrize("model_name", ["fid-base", "fido-base"])
@pytest.mark.parametrize("hw_name", ["tpu-v4", CALIBRATED])
@pytest.mark.parametrize("overlap", ["roofline", "no_overlap"])
def test_identical_requests_add_up_to_predict(repo_root, model_name, hw_name, overlap):
    """Encode + every decoding step of a batch of identical requests = predict's batch time."""
    model = load_model(model_name)
    hw = load_hardware(str(repo_root / hw_name) if hw_name.endswith(".yaml") else hw_name)
    wl = SMALL if hw_name == "tpu-v4" else Workload.with_dtype("fp32", passages=10, passage_len=64, target_len=6)
    st = Settings(overlap=overlap)
    svc = ServiceModel.build(model, hw, wl, st, passages=[10], passage_len=[64], target_len=[6], max_batch=32,
                             pad=False)
    for b in (1, 5, 24):
        steps = sum(svc.decode_step_time_s(b, b * 640, b * t) for t in range(1, 7))
        mine = svc.encode_time_s(b, 10, 64) + steps
        ref = predict(model, hw, wl.replace(batch=b), st).totals["batch_time_s"]
        assert mine == pytest.approx(ref, rel=1e-6)
        # a run of steps equals its steps one by one
        assert svc.decode_run_time_s(b, 640.0, 1.0, 6) == pytest.approx(steps, rel=1e-12)


def test_unpadded_step_is_the_cost_model_of_the_summed_tokens(fid, tpu):
    """Mixed cache lengths: a step at the batch's mean length costs what the operator
    list gives for the summed tokens (FLOPs and bytes of attention are linear in them)."""
    svc = ServiceModel.build(fid, tpu, SMALL, passages=[10], passage_len=[64], target_len=[40], max_batch=8,
                             pad=False)
    # cache lengths 3 and 6: mean 4.5 sits between table points; the roofline is affine there
    # (memory-bound), so the interpolation is exact: the mean of the two integer steps
    mixed = svc.decode_step_time_s(2, 2 * 640, 3 + 6)
    assert mixed == pytest.approx(0.5 * (svc.decode_step_time_s(2, 1280, 8) + svc.decode_step_time_s(2, 1280, 10)))
    assert svc.decode_step_time_s(2, 1280, 8) < mixed < svc.decode_step_time_s(2, 1280, 10)


def test_memory_figures_match_predict(fid, tpu):
    wl = Workload(batch=1)
    svc = ServiceModel.build(fid, tpu, wl, passages=[40], passage_len=[256], target_len=[32], max_batch=10_000,
                             pad=False)
    mem = memory_footprint(fid, tpu, wl)
    assert svc.free_bytes == pytest.approx(tpu.hbm_capacity_bytes - mem["weight_bytes"])
    assert svc.request_bytes(40, 256, 32) == pytest.approx(mem["per_sample_peak_bytes"])
    assert svc.max_batch == mem["max_batch"]


# --------------------------------------------------------------------------- queueing theory


def batch_means_ci(x: np.ndarray, batches: int = 20) -> tuple[float, float]:
    """Mean and 99% confidence half-width by the method of batch means."""
    means = np.array([c.mean() for c in np.array_split(x, batches)])
    return float(means.mean()), T_0995_19 * float(means.std(ddof=1)) / math.sqrt(batches)


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_md1_mean_wait_matches_pollaczek_khinchine(fido, tpu, policy):
    """Batch size 1, deterministic service S, Poisson arrivals at rho = 0.6:
    Wq = rho S / (2 (1 - rho))."""
    S_ = lone(fido, tpu, 10, 64, 6)
    rho = 0.6
    res = S.simulate(fido, tpu, SMALL, qps=rho / S_, requests=40_000, seed=3, policy=policy, max_batch=1,
                     max_wait_ms=0.0)
    m = res.records[res.records["measured"]]
    assert np.allclose(m["latency_s"] - m["queue_s"], S_, rtol=1e-9)  # service is deterministic
    mean, half = batch_means_ci(m["queue_s"].to_numpy())
    theory = rho * S_ / (2 * (1 - rho))
    assert abs(mean - theory) <= half, (mean, theory, half)
    assert half < 0.1 * theory  # the interval is tight enough to mean something
    assert res.summary["utilisation"] == pytest.approx(rho, rel=0.03)


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_littles_law_on_the_simulated_output(fid, tpu, policy):
    kw = dict(requests=5000, seed=5, policy=policy, max_batch=16, dists={"target_len": "geometric",
                                                                          "passages": "uniform"})
    capacity = S.simulate(fid, tpu, SMALL, qps=1.0, **kw).summary["capacity_qps"]
    res = S.simulate(fid, tpu, SMALL, qps=0.8 * capacity, **kw)  # 80% of capacity
    q, rec = res.queue, res.records
    t = q["time_s"].to_numpy()
    span = rec["finish_s"].max()  # the series starts empty at time 0 and ends empty
    area_sys = float(np.sum(q["in_system"].to_numpy()[:-1] * np.diff(t)))
    area_wait = float(np.sum(q["waiting"].to_numpy()[:-1] * np.diff(t)))
    throughput = len(rec) / span
    assert q["in_system"].iloc[-1] == 0 and q["waiting"].iloc[-1] == 0
    assert area_sys / span == pytest.approx(throughput * rec["latency_s"].mean(), rel=1e-9)  # L = lambda W
    assert area_wait / span == pytest.approx(throughput * rec["queue_s"].mean(), rel=1e-9)  # Lq = lambda Wq
    assert res.summary["sustainable"] and res.summary["mean_decode_batch"] > 4  # the load did batch


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_deterministic_arrivals_below_capacity_never_queue(fido, tpu, policy):
    S_ = lone(fido, tpu, 10, 64, 6)
    res = S.simulate(fido, tpu, SMALL, qps=0.95 / S_, arrivals="deterministic", requests=2000, policy=policy,
                     max_batch=1, max_wait_ms=0.0)
    assert res.summary["sustainable"]
    assert (res.records["queue_s"].abs() < 1e-12).all()
    assert np.allclose(res.records["latency_s"], S_, rtol=1e-9)
    assert res.summary["latency_p99_s"] == pytest.approx(S_, rel=1e-9)


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_replicas_share_the_queue(fido, tpu, policy):
    """Three chips at batch size 1: capacity 3/S, and evenly spaced arrivals at 90% of it
    always find a free chip; the work is spread over all three."""
    S_ = lone(fido, tpu, 10, 64, 6)
    res = S.simulate(fido, tpu, SMALL, qps=2.7 / S_, arrivals="deterministic", requests=900, policy=policy,
                     max_batch=1, max_wait_ms=0.0, replicas=3)
    assert res.summary["capacity_qps"] == pytest.approx(3 / S_, rel=1e-3)
    assert (res.records["queue_s"].abs() < 1e-12).all()
    assert sorted(res.records["replica"].unique()) == [0, 1, 2]
    assert res.summary["utilisation"] == pytest.approx(0.9, rel=0.01)


def test_above_capacity_the_queue_grows_and_no_latency_is_given(fido, tpu):
    S_ = lone(fido, tpu, 10, 64, 6)
    n = 3000
    res = S.simulate(fido, tpu, SMALL, qps=1.5 / S_, arrivals="deterministic", requests=n, max_batch=1,
                     max_wait_ms=0.0)
    s = res.summary
    assert not s["sustainable"] and s["capacity_qps"] == pytest.approx(1 / S_, rel=1e-6)
    for key in ("latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s", "ttft_p50_s"):
        assert s[key] is None
    # the queue grows linearly: after k arrivals about k (1 - 1/1.5) wait
    q = res.queue
    at = q[q["time_s"] <= (n - 0.5) * S_ / 1.5]
    assert at["waiting"].max() == pytest.approx(n / 3, abs=3)
    half = q[q["time_s"] <= (n / 2 - 0.5) * S_ / 1.5]["waiting"].max()
    assert half == pytest.approx(n / 6, abs=3)


def test_near_saturation_a_short_run_is_flagged_not_steady(fido, tpu):
    cap = S.prepare(fido, tpu, SMALL, requests=2000).capacity_qps
    assert S.steady_load_limit(4000) == pytest.approx(1 - 3 / math.sqrt(4000))
    near = S.simulate(fido, tpu, SMALL, qps=0.99 * cap, requests=2000).summary
    fine = S.simulate(fido, tpu, SMALL, qps=0.5 * cap, requests=2000).summary
    assert near["sustainable"] and not near["steady_state"]
    assert fine["sustainable"] and fine["steady_state"]


def test_overload_with_batching_is_not_sustainable(fid, tpu):
    res = S.simulate(fid, tpu, Workload(batch=1), qps=120.0, requests=3000, policy="continuous")
    assert not res.summary["sustainable"] and res.summary["offered_qps"] > res.summary["capacity_qps"]
    assert res.summary["max_waiting"] > 1000
    assert res.summary["utilisation"] > 0.99


# --------------------------------------------------------------------------- exactness at vanishing load


@pytest.fixture
def mixed_trace(tmp_path):
    sizes = [(10, 64, 6), (40, 256, 32), (3, 128, 1), (25, 100, 17), (40, 256, 32), (7, 64, 50)]
    path = tmp_path / "trace.csv"
    rows = ["arrival_s,passages,passage_len,target_len"]
    rows += [f"{100.0 * i:.1f},{p},{n},{t}" for i, (p, n, t) in enumerate(sizes)]
    path.write_text("\n".join(rows) + "\n")
    return path, sizes


@pytest.mark.parametrize("policy", ["static", "continuous"])
@pytest.mark.parametrize("model_name", ["fid-base", "fido-base-xl"])
def test_lone_requests_take_exactly_their_predicted_time(mixed_trace, tpu, policy, model_name):
    path, sizes = mixed_trace
    model = load_model(model_name)
    res = S.simulate(model, tpu, trace=path, policy=policy, max_wait_ms=0.0, warmup=0.0)
    rec = res.records
    for (p, n, t), latency, ttft in zip(sizes, rec["latency_s"], rec["ttft_s"]):
        assert latency == pytest.approx(lone(model, tpu, p, n, t), rel=1e-6)
        # the first token: the encode and the first step, i.e. predict with one target token
        assert ttft == pytest.approx(lone(model, tpu, p, n, 1), rel=1e-6)
    assert (rec["queue_s"] == 0).all()


def test_static_wait_is_added_at_vanishing_load(mixed_trace, tpu, fido):
    path, sizes = mixed_trace
    rec = S.simulate(fido, tpu, trace=path, policy="static", max_wait_ms=25.0).records
    expect = [lone(fido, tpu, *s) + 0.025 for s in sizes]
    assert np.allclose(rec["latency_s"], expect, rtol=1e-9)


def test_service_spread_keeps_the_mean(fido, tpu):
    S_ = lone(fido, tpu, 10, 64, 6)
    res = S.simulate(fido, tpu, SMALL, qps=0.01 / S_, requests=4000, service_cv=0.5, max_wait_ms=0.0)
    lat = res.records["latency_s"] / S_
    assert lat.mean() == pytest.approx(1.0, abs=0.03)
    assert 0.1 < lat.std() < 0.6


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_memory_not_max_batch_caps_the_batch(fid, tpu, policy):
    """FiD-Base's multi-head cross-attention K/V (about 0.38 GB a request at 40 x 256
    tokens) lets 86 requests share a 32 GiB TPU v4 beside the weights: far below
    --max-batch 1000, and the batch never holds more."""
    wl = Workload(batch=1)
    cap = memory_footprint(fid, tpu, wl)["max_batch"]
    assert 50 < cap < 1000
    res = S.simulate(fid, tpu, wl, qps=200.0, requests=1500, policy=policy, max_batch=1000)
    rec = res.records
    assert rec["batch"].max() <= cap
    # requests on the chip at once (joined, not finished), from the records alone
    ev = sorted([(s, 1) for s in rec["start_s"]] + [(f, -1) for f in rec["finish_s"]], key=lambda e: (e[0], e[1]))
    on_chip = np.cumsum([d for _, d in ev])
    assert on_chip.max() == cap  # binds, and is never exceeded
    assert res.settings["batch_cap"] == cap


def test_mixed_sizes_never_overfill_memory(fid, tpu):
    wl = Workload(passages=40, passage_len=256, target_len=32, batch=1)
    res = S.simulate(fid, tpu, wl, qps=150.0, requests=800, policy="continuous", max_batch=1000,
                     dists={"passages": "uniform", "target_len": "geometric"})
    rec = res.records
    free = tpu.hbm_capacity_bytes - memory_footprint(fid, tpu, wl)["weight_bytes"]
    need = {k: memory_footprint(fid, tpu, wl.replace(passages=int(k[0]), target_len=int(k[1])))[
        "per_sample_peak_bytes"] for k in set(zip(rec["passages"], rec["target_len"]))}
    ev = sorted([(r.start_s, 1, need[(r.passages, r.target_len)]) for r in rec.itertuples()]
                + [(r.finish_s, -1, need[(r.passages, r.target_len)]) for r in rec.itertuples()],
                key=lambda e: (e[0], e[1]))
    held = np.cumsum([d * b for _, d, b in ev])
    assert held.max() <= free
    assert held.max() > 0.9 * free  # and the cap was reached


def test_static_batches_pad_to_their_largest_request(fid, tpu):
    wl = Workload(batch=1)
    res = S.simulate(fid, tpu, wl, qps=150.0, requests=600, policy="static", max_batch=1000,
                     dists={"target_len": "geometric"})
    rec = res.records
    for _, g in rec.groupby(["replica", "start_s"]):
        b, t = len(g), int(g["target_len"].max())
        assert memory_footprint(fid, tpu, wl.replace(batch=b, target_len=t))["fits"]
        assert g["finish_s"].nunique() == 1  # the batch returns together


# --------------------------------------------------------------------------- inputs and reproducibility


def test_same_seed_same_run_other_seed_other_run(fido, tpu):
    kw = dict(qps=60.0, requests=1500, arrivals="gamma", cv=3.0, service_cv=0.2,
              dists={"target_len": "geometric"}, policy="continuous")
    a = S.simulate(fido, tpu, SMALL, seed=7, **kw)
    b = S.simulate(fido, tpu, SMALL, seed=7, **kw)
    c = S.simulate(fido, tpu, SMALL, seed=8, **kw)
    pd.testing.assert_frame_equal(a.records, b.records)
    pd.testing.assert_frame_equal(a.queue, b.queue)
    assert a.summary == b.summary
    assert not np.allclose(a.records["arrival_s"], c.records["arrival_s"])


@pytest.mark.parametrize("kind,cv", [("poisson", 1.0), ("gamma", 3.0), ("gamma", 0.5)])
def test_arrival_gaps_have_the_asked_mean_and_spread(kind, cv):
    arr = S.unit_arrivals(kind, 200_000, np.random.default_rng(0), cv)
    gaps = np.diff(np.concatenate([[0.0], arr]))
    assert gaps.mean() == pytest.approx(1.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.03)


@pytest.mark.parametrize("kind", ["uniform", "geometric"])
def test_size_distributions_have_the_given_mean(kind):
    wl = Workload(passages=40, passage_len=256, target_len=32)
    _, _, t = S.draw_sizes(wl, 100_000, np.random.default_rng(1), {"target_len": kind})
    assert t.min() >= 1 and t.mean() == pytest.approx(32, rel=0.02)
    if kind == "uniform":
        assert t.max() == 63


def test_rate_search_finds_the_edge(fido, tpu):
    target = 0.06
    kw = dict(requests=1500, seed=2, policy="continuous")
    r = S.max_sustainable_rate(fido, tpu, SMALL, target_s=target, **kw)
    assert 0 < r.rate_qps <= S.steady_load_limit(1500) * r.capacity_qps
    at = S.simulate(fido, tpu, SMALL, qps=r.rate_qps, latency_target_s=target, **kw).summary
    above = S.simulate(fido, tpu, SMALL, qps=r.rate_qps * 1.02, latency_target_s=target, **kw).summary
    assert at["meets_target"] and at["latency_p99_s"] <= target
    assert not above["meets_target"]
    assert r.latency_s == pytest.approx(at["latency_p99_s"])


def test_rate_search_below_a_lone_request_finds_nothing(fido, tpu):
    r = S.max_sustainable_rate(fido, tpu, SMALL, target_s=1e-4, requests=500)
    assert r.rate_qps == 0 and "alone" in r.reason
    assert r.floor_latency_s == pytest.approx(lone(fido, tpu, 10, 64, 6), rel=1e-9)


def test_bad_arguments_raise_spec_errors(fido, tpu):
    for kw in ({"qps": 0}, {"qps": 10, "policy": "magic"}, {"qps": 10, "max_batch": 0},
               {"qps": 10, "arrivals": "gamma", "cv": 0}, {"qps": 10, "dists": {"target_len": "zipf"}},
               {"qps": 10, "percentile": 120}, {}):
        with pytest.raises(SpecError):
            S.simulate(fido, tpu, SMALL, requests=10, **kw)


# --------------------------------------------------------------------------- command line


def invoke(*args):
    return CliRunner().invoke(cli, ["simulate", "-m", "fido-base", "-p", "10", "--passage-len", "64",
                                    "--target-len", "6", *map(str, args)])


SUMMARY_KEYS = {"latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s", "ttft_p50_s",
                "throughput_qps", "utilisation", "sustainable"}


def test_cli_json_summary_and_settings():
    res = invoke("--qps", "50", "-n", "2000", "--seed", "11", "--format", "json", "--latency-ms", "100",
                 "--dist", "target_len=geometric", "--policy", "static", "--max-wait-ms", "5")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    s, st = out["summary"], out["settings"]
    assert SUMMARY_KEYS <= set(s) and s["sustainable"] is True
    assert all(isinstance(s[k], float) for k in SUMMARY_KEYS - {"sustainable"})
    assert s["latency_p50_s"] <= s["latency_p90_s"] <= s["latency_p99_s"]
    assert {"goodput_qps", "meets_target", "tpot_mean_s"} <= set(s)
    assert st["seed"] == 11 and st["qps"] == 50 and st["requests"] == 2000 and st["policy"] == "static"
    assert st["max_wait_s"] == pytest.approx(0.005) and st["size_dists"]["target_len"] == "geometric"
    assert st["model"] == "fido-base" and st["hardware"] == "tpu-v4" and st["arrivals"] == "poisson"


def test_cli_overload_prints_null_latency_and_says_so():
    res = invoke("--qps", "5000", "-n", "1000", "--format", "json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["summary"]
    assert s["sustainable"] is False
    assert all(s[k] is None for k in ("latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s",
                                      "ttft_p50_s"))
    text = invoke("--qps", "5000", "-n", "1000").stdout
    assert "NOT SUSTAINABLE" in text and "latency   mean" not in text


def test_cli_writes_records_and_figure(tmp_path):
    csv_path, json_path, png = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "s.png"
    res = invoke("--qps", "40", "-n", "300", "-o", csv_path, "--plot", png, "--format", "csv")
    assert res.exit_code == 0, res.output
    assert "latency_p99_s" in res.stdout.splitlines()[0]
    rec = pd.read_csv(csv_path)
    assert list(rec.columns) == S.RECORD_COLUMNS and len(rec) == 300
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert invoke("--qps", "40", "-n", "50", "-o", json_path).exit_code == 0
    assert len(json.loads(json_path.read_text())) == 50


def test_cli_trace_and_find_rate(tmp_path, mixed_trace):
    path, sizes = mixed_trace
    res = invoke("--trace", path, "--format", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["settings"]["trace"] == str(path) and out["summary"]["requests"] == len(sizes)
    res = invoke("--find-rate", "--latency-ms", "60", "-n", "800", "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["search"]["rate_qps"] > 0


@pytest.mark.parametrize(
    "text,needles",
    [
        (None, ["cannot read file"]),
        ("", ["empty file"]),
        ("arrival_s,passages,passage_len\n0,1,1\n", ["column target_len", "missing required column"]),
        ("arrival_s,passages,passage_len,target_len,user\n0,1,1,1,x\n", ["column 'user'", "unknown column"]),
        ("arrival_s,passages,passage_len,target_len\n0,1,1,1\n0.5,ten,1,1\n", ["row 3, column passages",
                                                                                "expected a number"]),
        ("arrival_s,passages,passage_len,target_len\n-1,1,1,1\n", ["row 2, column arrival_s", "negative"]),
        ("arrival_s,passages,passage_len,target_len\n2,1,1,1\n1,1,1,1\n", ["row 3, column arrival_s",
                                                                           "back in time"]),
        ("arrival_s,passages,passage_len,target_len\n0,1.5,1,1\n", ["row 2, column passages", "whole number"]),
        ("arrival_s,passages,passage_len,target_len\n0,1,0,1\n", ["row 2, column passage_len", "positive"]),
        ("arrival_s,passages,passage_len,target_len\n0,1,1\n", ["row 2", "3 cells"]),
        ("arrival_s,passages,passage_len,target_len\n", ["no data rows"]),
    ],
)
def test_bad_trace_is_one_clean_line(tmp_path, cli_error, text, needles):
    path = tmp_path / "t.csv"
    if text is not None:
        path.write_text(text)
    cli_error(["simulate", "--trace", path], str(path), *needles)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--qps", "0"], "--qps"),
        ([], "--qps"),
        (["--qps", "1", "--dist", "target_len"], "--dist"),
        (["--qps", "1", "--dist", "answer=geometric"], "--dist"),
        (["--qps", "1", "--find-rate"], "--find-rate"),
        (["--qps", "1", "-o", "out.txt"], "unknown records format"),
        (["--qps", "1", "--arrivals", "gamma", "--cv", "0"], "--cv"),
        (["--qps", "1", "--trace", "x.csv"], "--qps"),
    ],
)
def test_bad_options_are_one_clean_line(cli_error, args, needle):
    cli_error(["simulate", *args], needle)


# --------------------------------------------------------------------------- parallel layouts

LAYOUTS = [
    Layout(tensor_parallel=2),
    Layout(chips=4, tensor_parallel=4, shard_kv="batch"),
    Layout(chips=6, tensor_parallel=2),
    Layout(encoder_chips=1, decoder_chips=2),
    Layout(encoder_chips=2, decoder_chips=4, tensor_parallel=2, shard_kv="batch"),
]


@pytest.fixture(scope="module")
def h100():
    return load_hardware("h100-sxm")


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda L: L.label())
@pytest.mark.parametrize("model_name", ["fid-base", "fido-base-xl"])
def test_layout_pieces_add_up_to_predict(h100, tpu, model_name, layout):
    """The per-chip op lists of the simulation (encode, shipment, projection on the
    decoder side, decoding steps; fidoperf.whatif.layout_ops) add up to predict's batch
    time under the same layout, for batches that T divides and that it does not (the
    ceil(B/T) requests of a batch-sharded chip), on a GPU node and a TPU slice."""
    model = load_model(model_name)
    for hw in (h100, tpu):
        for b in (1, 3):  # T = 2 and 4 do not divide 3: the ceil(B/T) requests of a batch-sharded chip
            wl = SMALL.replace(batch=b)
            pred = predict(model, hw, wl, layout=layout)
            ship = pred.totals.get("shipped")
            phases = batch_phase_times_s(model, hw, wl, Settings(), layout, ship, b)
            assert sum(phases.values()) == pytest.approx(pred.totals["batch_time_s"], rel=1e-9)
            if layout.pooled:
                assert phases["ship_s"] == pytest.approx(pred.totals["transfer_time_s"], rel=1e-9)
                assert phases["encode_s"] == pytest.approx(pred.totals["encoder_pool_time_s"], rel=1e-9)
                assert phases["join_s"] + phases["decode_s"] == pytest.approx(
                    pred.totals["decoder_pool_time_s"], rel=1e-9)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda L: L.label())
def test_service_model_under_a_layout_adds_up_to_predict(fid, h100, layout):
    """Identical requests: the service model's encode, shipment, projection and steps,
    looked up from its tables, give predict's batch time and per-chip memory."""
    wl = SMALL
    pred1 = predict(fid, h100, wl, layout=layout)
    svc = ServiceModel.build(fid, h100, wl, passages=[10], passage_len=[64], target_len=[6], max_batch=16,
                             pad=False, layout=layout)
    assert svc.ship == pred1.totals.get("shipped")
    for b in (1, 3, 8):
        ref = predict(fid, h100, wl.replace(batch=b), layout=layout)
        kv = svc.kv_passages(b, 10 * b)
        steps = sum(svc.decode_step_time_s(b, b * 640, b * t) for t in range(1, 7))
        mine = svc.encode_time_s(b, 10, 64) + svc.ship_time_s(640.0 * b) + svc.join_time_s(kv, 64) + steps
        assert mine == pytest.approx(ref.totals["batch_time_s"], rel=1e-6)
    mem = memory_footprint(fid, h100, wl, layout=layout, ship=svc.ship)
    dec = mem["pools"]["decoder"] if layout.pooled else mem
    assert svc.free_bytes == pytest.approx(h100.hbm_capacity_bytes - dec["weight_bytes"])
    assert svc.request_bytes(10, 64, 6) == pytest.approx(dec["per_sample_peak_bytes"], abs=1)
    if layout.pooled:
        enc = mem["pools"]["encoder"]
        assert svc.enc_free_bytes == pytest.approx(h100.hbm_capacity_bytes - enc["weight_bytes"])
        assert svc.enc_request_bytes(10, 64, 6) == pytest.approx(enc["per_sample_peak_bytes"], abs=1)


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_one_chip_layout_is_the_single_chip_simulation(fid, tpu, policy):
    """Tensor parallelism 1 on one chip is the single-chip simulation, request for
    request; --replicas is data-parallel copies, the same as Layout(chips=R)."""
    kw = dict(qps=25.0, requests=1500, seed=9, policy=policy, dists={"target_len": "geometric"})
    base = S.simulate(fid, tpu, Workload(batch=1), **kw)
    one = S.simulate(fid, tpu, Workload(batch=1), layout=Layout(chips=1, tensor_parallel=1), **kw)
    pd.testing.assert_frame_equal(base.records, one.records)
    assert base.summary == one.summary
    three = S.simulate(fid, tpu, Workload(batch=1), replicas=3, **kw)
    laid = S.simulate(fid, tpu, Workload(batch=1), layout=Layout(chips=3), **kw)
    pd.testing.assert_frame_equal(three.records, laid.records)
    assert laid.settings["replicas"] == 3 and laid.settings["layout"]["replicas"] == 3
    with pytest.raises(SpecError):
        S.simulate(fid, tpu, Workload(batch=1), replicas=2, layout=Layout(chips=4, tensor_parallel=4), **kw)


LONE_CASES = [  # every layout with both models and both policies, not every combination
    (LAYOUTS[0], "fid-base", "continuous"), (LAYOUTS[0], "fido-base-xl", "static"),
    (LAYOUTS[1], "fido-base-xl", "continuous"), (LAYOUTS[1], "fid-base", "static"),
    (LAYOUTS[2], "fid-base", "continuous"),
    (LAYOUTS[3], "fid-base", "static"), (LAYOUTS[3], "fido-base-xl", "continuous"),
    (LAYOUTS[4], "fid-base", "continuous"), (LAYOUTS[4], "fido-base-xl", "static"),
]


@pytest.mark.parametrize("layout,model_name,policy", LONE_CASES,
                         ids=[f"{c[0].label()}-{c[0].shard_kv}-{c[1]}-{c[2]}" for c in LONE_CASES])
def test_lone_requests_under_a_layout_take_predicts_time(mixed_trace, h100, policy, layout, model_name):
    """At vanishing load each request's latency is predict's batch-1 time under the
    layout (pools: encode, shipment and decode in sequence), and its first token the
    same with one target token. FiD-Base's pools ship encoder outputs, FiDO-Base-XL's the
    projected keys and values (what predict finds cheaper)."""
    path, sizes = mixed_trace
    model = load_model(model_name)
    res = S.simulate(model, h100, trace=path, policy=policy, max_wait_ms=0.0, warmup=0.0, layout=layout,
                     max_batch=4)
    rec = res.records
    if layout.pooled:
        assert res.settings["shipped"] == ("encoder_outputs" if model_name == "fid-base" else "cross_kv")
    for k, ((p, n, t), latency, ttft) in enumerate(zip(sizes, rec["latency_s"], rec["ttft_s"])):
        one = Workload(passages=p, passage_len=n, target_len=t, batch=1)
        ref = predict(model, h100, one, layout=layout)
        assert ref.totals.get("shipped") == res.settings["shipped"]
        assert latency == pytest.approx(ref.totals["batch_time_s"], rel=1e-6)
        if k < 3:
            assert ttft == pytest.approx(predict(model, h100, one.replace(target_len=1), layout=layout).totals[
                "batch_time_s"], rel=1e-6)
    assert (rec["queue_s"] == 0).all()
    if layout.pooled:
        assert rec["replica"].between(0, layout.decoder_replicas - 1).all()
        assert (rec["joined_s"] > rec["encoded_s"]).all()  # the shipment took time


def test_interconnect_is_needed_for_tensor_parallelism_and_pools(fido, round_chip):
    for layout in (Layout(tensor_parallel=2), Layout(encoder_chips=1, decoder_chips=1)):
        with pytest.raises(SpecError, match="interconnect"):
            S.simulate(fido, round_chip, SMALL, qps=1.0, requests=10, layout=layout)
    # data-parallel replicas of one chip need none
    assert S.simulate(fido, round_chip, SMALL, qps=1.0, requests=10, layout=Layout(chips=2)).summary["sustainable"]


def _decoding_trace(tmp_path, long_t=60, others=3, gap_s=0.004):
    """Request 0 with a long output at t = 0, then ``others`` short ones arriving while
    it decodes."""
    path = tmp_path / "trace.csv"
    rows = ["arrival_s,passages,passage_len,target_len", f"0,40,256,{long_t}"]
    rows += [f"{0.02 + gap_s * i:.4f},40,256,4" for i in range(others)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_pools_decode_without_pausing_for_encodes(tmp_path, h100):
    """Continuous batching, FiDO-Base-XL on H100s. Colocated, the long request's decoding
    stops for each newcomer's encode: its latency grows by at least their encode times.
    With separate pools (shipping the projected keys and values) its steps run back to
    back: replaying them, each at the step time of the batch as composed then (the
    newcomers joining at the boundaries the records give), lands exactly on its finish;
    and its decoder replica is busy exactly while it holds a decoding batch."""
    model = load_model("fido-base-xl")
    path = _decoding_trace(tmp_path)
    long_t, x = 60, 40 * 256
    alone = predict(model, h100, Workload(passages=40, passage_len=256, target_len=long_t, batch=1)).totals
    colo = S.simulate(model, h100, trace=path, warmup=0.0, layout=Layout(chips=1)).records
    pooled = Layout(encoder_chips=1, decoder_chips=1)
    res = S.simulate(model, h100, trace=path, warmup=0.0, layout=pooled, ship="cross_kv")
    rec = res.records
    svc = S.prepare(model, h100, trace=path, serving=S.Serving(layout=pooled, ship="cross_kv")).service
    encode = svc.encode_time_s(1, 40, 256)
    # the newcomers were encoded while request 0 was decoding, and joined its batch
    assert (rec["encoded_s"].iloc[1:] < rec["finish_s"].iloc[0]).all()
    assert (rec["joined_s"].iloc[1:] < rec["finish_s"].iloc[0]).all()
    assert rec["encoder_replica"].eq(0).all() and rec["replica"].eq(0).all()
    # colocated: three encodes of 40 passages stall the long request
    assert colo["latency_s"].iloc[0] - alone["batch_time_s"] >= 3 * encode
    # pools: replay request 0's steps
    joined, target = rec["joined_s"].tolist(), rec["target_len"].tolist()
    done = [0] * len(rec)
    t = joined[0]
    while done[0] < long_t:
        batch = [i for i in range(len(rec)) if joined[i] <= t + 1e-12 and done[i] < target[i]]
        t += svc.decode_step_time_s(len(batch), x * len(batch), sum(done[i] + 1 for i in batch))
        for i in batch:
            done[i] += 1
    assert rec["finish_s"].iloc[0] == pytest.approx(t, rel=1e-12)
    assert t - joined[0] < svc.decode_run_time_s(1, x, 1.0, long_t) + encode  # not one encode's worth slower
    # busy time of the decoder replica = the union of the requests' decoding intervals
    spans = sorted(zip(rec["joined_s"], rec["finish_s"]))
    union, end = 0.0, -math.inf
    for a, b in spans:
        union += max(0.0, b - max(a, end))
        end = max(end, b)
    s = res.summary
    assert s["decoder_utilisation"] * s["makespan_s"] == pytest.approx(union, rel=1e-9)


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_memory_per_chip_caps_the_batch_under_tensor_parallelism(fid, tpu, policy):
    """FiD-Base's multi-head cross-attention K/V splits over the heads of a TP-2 replica:
    a chip holds half of each request's, so a replica takes about twice the requests of
    one chip; the per-chip cap binds and is never exceeded."""
    wl = Workload(batch=1)
    one = memory_footprint(fid, tpu, wl)["max_batch"]
    layout = Layout(chips=2, tensor_parallel=2)
    cap = memory_footprint(fid, tpu, wl, layout=layout)["max_batch"]
    assert 1.8 * one < cap < 1000
    res = S.simulate(fid, tpu, wl, qps=300.0, requests=1200, policy=policy, max_batch=1000, layout=layout)
    rec = res.records
    ev = sorted([(s, 1) for s in rec["start_s"]] + [(f, -1) for f in rec["finish_s"]], key=lambda e: (e[0], e[1]))
    on_chip = np.cumsum([d for _, d in ev])
    assert on_chip.max() == cap
    assert res.settings["batch_cap"] == cap


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_memory_per_chip_caps_each_pool(fid, tpu, policy):
    """Separate pools: a decoder replica holds no more requests than its chips' memory
    allows (the cap binds under overload), and the encoder side's cap is that of a chip
    holding only the encoder."""
    wl = Workload(batch=1)
    layout = Layout(encoder_chips=1, decoder_chips=2)
    res = S.simulate(fid, tpu, wl, qps=300.0, requests=1500, max_batch=1000, layout=layout, policy=policy)
    mem = memory_footprint(fid, tpu, wl, layout=layout, ship=res.settings["shipped"])
    cap = mem["pools"]["decoder"]["max_batch"]
    assert res.settings["batch_cap"] == cap and 50 < cap < 1000
    assert res.settings["encoder_batch_cap"] == min(1000, mem["pools"]["encoder"]["max_batch"]) > cap
    rec = res.records
    for _, g in rec.groupby("replica"):
        ev = sorted([(s, 1) for s in g["joined_s"]] + [(f, -1) for f in g["finish_s"]], key=lambda e: (e[0], e[1]))
        assert np.cumsum([d for _, d in ev]).max() == cap


def test_cli_layout_options(tmp_path):
    res = invoke("--qps", "30", "-n", "600", "--format", "json", "-H", "h100-sxm", "-t", "2", "--chips", "4")
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)["settings"]
    assert st["layout"]["chips"] == 4 and st["tensor_parallel"] == 2 and st["replicas"] == 2
    res = invoke("--qps", "30", "-n", "600", "--format", "json", "-H", "h100-sxm", "--replicas", "3", "-t", "2")
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)["settings"]
    assert st["chips"] == 6 and st["replicas"] == 3 and st["layout_options"]["replicas"] == 3
    res = invoke("--qps", "30", "-n", "600", "-H", "h100-sxm", "--encoder-chips", "1", "--decoder-chips", "2",
                 "--ship", "encoder_outputs")
    assert res.exit_code == 0, res.output
    assert "enc 1 + dec 2 chips" in res.stdout and "ships encoder outputs" in res.stdout
    assert "encoder" in res.stdout and "link" in res.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--qps", "1", "--replicas", "2", "--chips", "4"], "--replicas"),
        (["--qps", "1", "--ship", "cross_kv"], "--ship"),
        (["--qps", "1", "-t", "5"], "--tensor-parallel"),
        (["--qps", "1", "--encoder-chips", "1"], "decoder"),
    ],
)
def test_bad_layout_options_are_one_clean_line(cli_error, args, needle):
    cli_error(["simulate", "-H", "h100-sxm", *args], needle)
