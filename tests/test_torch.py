"""The PyTorch eager side: the eager implementation's operator counts against what Hugging
Face's T5 really dispatches, the calibration through PyTorch, the checks that catch a
broken calibration, and `validate --framework torch` (no timing is asserted).

PyTorch and transformers are the optional extra `fidoperf[torch]`; CI installs it."""

from __future__ import annotations

import collections
import json

import pytest
import yaml
from click.testing import CliRunner
from conftest import halve_second_point

import fidoperf as fp
from fidoperf.costmodel.prediction import Settings, operator_list
from fidoperf.measure.calibrate import profile_problems
from fidoperf.specs.implementation import IMPLEMENTATIONS

torch = pytest.importorskip("torch", reason="needs the optional extra fidoperf[torch] (CI installs it)")
transformers = pytest.importorskip("transformers", reason="needs the optional extra fidoperf[torch]")

EAGER = IMPLEMENTATIONS["eager"]


def tiny(layers: int) -> fp.ModelSpec:
    """A FiD in T5 v1.1's form, small enough to profile in a second."""
    m = fp.load_model("fid-small")
    enc = m.encoder.__class__(**{**m.encoder.__dict__, "num_layers": layers})
    dec = m.decoder.__class__(**{**m.decoder.__dict__, "num_layers": layers})
    return m.replace(encoder=enc, decoder=dec, name=f"fid-small-{layers}")


def aten_dispatches(fn) -> int:
    """Top-level aten:: operators fn dispatches (what the eager model counts)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def hf_counts(layers: int, B=2, P=2, N=16, T=3):
    from transformers.modeling_outputs import BaseModelOutput

    from fidoperf.measure.torch_eager import hf_model

    hf = hf_model(tiny(layers))
    ids = torch.randint(2, 1000, (B * P, N))
    mask = torch.ones(B * P, N, dtype=torch.long)
    with torch.inference_mode():
        enc_state = {}

        def encode():
            enc_state["x"] = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state

        enc = aten_dispatches(encode)
        states = enc_state["x"].reshape(B, P * N, -1)

        def generate(steps):
            return lambda: hf.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                                       attention_mask=mask.reshape(B, P * N), max_new_tokens=steps,
                                       min_new_tokens=steps, do_sample=False, num_beams=1)

        gen = {t: aten_dispatches(generate(t)) for t in (T, T + 2)}
    return enc, gen


def model_counts(layers: int, B=2, P=2, N=16, T=3):
    wl = fp.Workload.with_dtype("fp32", batch=B, passages=P, passage_len=N, target_len=T)
    by_phase = collections.Counter()
    for phase, _, op, calls in operator_list(tiny(layers), wl, EAGER):
        by_phase[phase] += float(op.launches) * calls  # launches do not depend on the step
    return by_phase


def test_eager_operator_counts_match_hugging_face():
    """Per encoder layer, per decoder layer and step, per step outside the layers and the
    one-off work of the first step: the dispatches the model counts are the library's."""
    (e2, g2), (e4, g4) = hf_counts(2), hf_counts(4)
    m2, m4 = model_counts(2), model_counts(4)
    assert m4["encoder"] - m2["encoder"] == e4 - e2  # two encoder layers
    model_step = {L: (model_counts(L, T=5)["decoder"] - m["decoder"]) / 2 for L, m in ((2, m2), (4, m4))}
    assert model_step[2] == (g2[5] - g2[3]) / 2  # one decoding step of a 2-layer decoder
    assert model_step[4] - model_step[2] == (g4[5] - g4[3] - g2[5] + g2[3]) / 2  # two more layers, one step
    # everything of one batch; one dispatch of generate's input handling varies between runs
    for m, e, g in ((m2, e2, g2), (m4, e4, g4)):
        assert abs(m["encoder"] + m["cross_kv"] + m["decoder"] - (e + g[3])) <= 1


@pytest.fixture(scope="module")
def torch_profile():
    from fidoperf.measure.torch_eager import calibrate

    return calibrate("quick")


def test_the_torch_calibration_is_a_usable_eager_profile(torch_profile):
    from fidoperf.measure.calibrate import dump_profile

    assert profile_problems(torch_profile) == []
    hw = fp.specs.hardware_from_dict(yaml.safe_load(dump_profile(torch_profile)), "torch profile")
    assert hw.default_implementation == "eager"
    assert hw.dispatch_s_per_op > 0 and hw.kind == "measured"
    assert hw.measured["versions"]["torch"] == str(torch.__version__)
    p = fp.predict(fp.load_model("fid-small"), hw, fp.Workload.with_dtype("fp32", batch=1, passages=2,
                                                                           passage_len=16, target_len=2))
    assert p.settings.implementation == "eager"
    assert p.ops["launches"].sum() > 0 and p.totals["batch_time_s"] > 0
    # every operation pays the dispatch: the predicted time is at least the dispatches'
    assert p.totals["batch_time_s"] >= p.ops["launches"].sum() * hw.dispatch_s_per_op


@pytest.mark.parametrize("break_it, needle", [
    (lambda p: p["dispatch_s_per_op"].update(value=0.0), "dispatch_s_per_op"),
    (lambda p: halve_second_point(p["efficiency"]["vector_memory"]), "smallest transfer"),
    (lambda p: halve_second_point(p["efficiency"]["memory"]), "smallest transfer"),
    (lambda p: p["efficiency"]["matmul_compute"]["points"].__setitem__(-1, [1e6, 0.01]), "falls with more rows"),
    (lambda p: p["peak_flops_per_s"]["fp32"].update(value=0.0), "peak_flops_per_s.fp32"),
    (lambda p: p["efficiency"].update(flash_compute={"value": 1.7, "source": "x"}), "flash_compute"),
])
def test_a_broken_calibration_is_caught(torch_profile, break_it, needle):
    broken = json.loads(json.dumps(torch_profile))
    break_it(broken)
    problems = profile_problems(broken)
    assert any(needle in p for p in problems), problems


def test_the_committed_torch_calibration_passes_the_checks(repo_root):
    prof = yaml.safe_load((repo_root / "benchmarks" / "results" / "cpu-torch-calibrated.yaml").read_text())
    assert profile_problems(prof) == []
    m = prof["measured"]
    assert m["framework"] == "torch" and m["load_average_1min"] is not None and m["stability"]["measurements"] > 0


def test_validate_torch_runs_fid_on_hugging_face_t5(monkeypatch, tmp_path, torch_profile):
    from fidoperf.cli import cli
    from fidoperf.measure import torch_eager
    from fidoperf.measure.calibrate import dump_profile

    monkeypatch.setitem(torch_eager.SUITES, "quick", [("fid-small", 1, 2, 16, 2)])
    prof = tmp_path / "torch.yaml"
    prof.write_text(dump_profile(torch_profile))
    out = tmp_path / "v.json"
    r = CliRunner().invoke(cli, ["validate", "--framework", "torch", "-H", str(prof), "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["framework"] == "torch" and len(data["cases"]) == 1
    case = data["cases"][0]
    for key in ("measured_encoder_s", "measured_decoder_s", "predicted_encoder_s", "predicted_decoder_s"):
        assert case[key] > 0
    assert case["predicted_s"] == pytest.approx(case["predicted_encoder_s"] + case["predicted_decoder_s"])
    assert set(data["summary"]) >= {"median_abs_rel_error", "encoder_median_abs_rel_error",
                                    "decoder_median_abs_rel_error"}


def test_hugging_face_cannot_run_fido(cli_error):
    from fidoperf.measure.torch_eager import hf_config

    with pytest.raises(fp.SpecError, match="multi-head attention"):
        hf_config(fp.load_model("fido-base"))
    with pytest.raises(fp.SpecError, match="one width"):
        hf_config(fp.load_model("fido-base-xl"))


def test_eager_predictions_state_their_implementation():
    hw = fp.load_hardware("h100-sxm")
    p = fp.predict(fp.load_model("fid-base"), hw, fp.Workload(batch=2), Settings(implementation="eager"))
    d = p.to_dict()
    assert d["settings"]["implementation"] == "eager"
    assert d["settings"]["implementation_detail"]["framework"] == "eager"
