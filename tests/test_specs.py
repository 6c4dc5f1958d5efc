"""Specs: the shipped hardware and model files, and bad YAML given by the user.

Bad input must give exit status 2 and one line naming the file and the field, never a
traceback (STYLE.md, habits 2 and 9). The files are written into tmp_path.
"""

from __future__ import annotations

import json
import numbers

import pytest
import yaml
from click.testing import CliRunner
from reference import T5  # tests/reference.py

from fidoperf.cli import cli
from fidoperf.errors import SpecError
from fidoperf.specs import hardware_names, load_hardware, load_model, model_names

# Datasheet tensor-core figures WITH 2:4 structured sparsity (the ones printed with "*").
# A dense peak must be about half of these; a profile at or near them took sparse as dense.
SPARSE_DATASHEET = {
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    "a100-40gb": {"bf16": 624e12, "fp16": 624e12, "tf32": 312e12, "int8": 1248e12},
    "a100-80gb": {"bf16": 624e12, "fp16": 624e12, "tf32": 312e12, "int8": 1248e12},
    # https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM and PCIe columns)
    "h100-sxm": {"bf16": 1979e12, "fp16": 1979e12, "tf32": 989e12, "fp8": 3958e12, "int8": 3958e12},
    "h100-pcie": {"bf16": 1513e12, "fp16": 1513e12, "tf32": 756e12, "fp8": 3026e12, "int8": 3026e12},
    # https://www.nvidia.com/en-us/data-center/h200/
    "h200": {"bf16": 1979e12, "fp16": 1979e12, "tf32": 989e12, "fp8": 3958e12, "int8": 3958e12},
    # https://www.nvidia.com/en-us/data-center/l4/
    "l4": {"bf16": 242e12, "fp16": 242e12, "tf32": 120e12, "fp8": 485e12, "int8": 485e12},
    # https://www.nvidia.com/en-us/data-center/l40s/
    "l40s": {"bf16": 733e12, "fp16": 733e12, "tf32": 366e12, "fp8": 1466e12, "int8": 1466e12},
}


# --------------------------------------------------------------------------- shipped hardware


@pytest.mark.parametrize("name", hardware_names())
def test_shipped_hardware_loads_and_is_sane(name):
    hw = load_hardware(name)
    assert hw.name == name
    assert hw.peak_flops_per_s and all(v > 0 for v in hw.peak_flops_per_s.values())
    assert hw.hbm_bytes_per_s > 0 and hw.hbm_capacity_bytes > 0
    # Ridge points of real accelerators lie between a few and a few thousand FLOP/B.
    for dtype in hw.peak_flops_per_s:
        assert 1 < hw.ridge_point(dtype) < 5000, (dtype, hw.ridge_point(dtype))


def _figures_without_source(node, path=""):
    """Paths of numbers in a hardware file that are not the `value` (or `points`) of a
    mapping that also names a non-empty `source`."""
    bad = []
    if isinstance(node, dict):
        if "value" in node or "points" in node:
            if not (isinstance(node.get("source"), str) and node["source"].strip()):
                bad.append(path or "(top)")
            rest = {k: v for k, v in node.items() if k not in ("value", "points")}
        else:
            rest = node
        for k, v in rest.items():
            if k == "measured":  # machine description, dates and versions, not figures
                continue
            bad += _figures_without_source(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            bad += _figures_without_source(v, f"{path}[{i}]")
    elif isinstance(node, numbers.Number) and not isinstance(node, bool):
        bad.append(path)
    return bad


@pytest.mark.parametrize("name", hardware_names())
def test_shipped_hardware_names_a_source_for_every_figure(name, repo_root):
    raw = yaml.safe_load((repo_root / "hardware" / f"{name}.yaml").read_text())
    assert _figures_without_source(raw) == []
    hw = load_hardware(name)
    expected = {f"peak_flops_per_s.{d}" for d in hw.peak_flops_per_s}
    expected |= {"memory.capacity_bytes", "memory.bandwidth_bytes_per_s"}
    for key in ("on_chip_bytes", "interconnect_bytes_per_s", "tdp_w", "price_per_chip_hour_usd"):
        if getattr(hw, key) is not None:
            expected.add(key)
    assert expected <= set(hw.sources)
    for key in expected:
        assert hw.sources[key].source.strip(), key
    for key, curve in hw.efficiency.items():
        assert curve.source.strip(), f"efficiency.{key}"


@pytest.mark.parametrize("name", sorted(SPARSE_DATASHEET))
def test_dense_peaks_are_not_the_sparse_datasheet_figures(name):
    """Sparse-as-dense regression: NVIDIA prints 2:4-sparse tensor figures; dense is half."""
    if name not in hardware_names():
        pytest.skip(f"{name} is not shipped")
    hw = load_hardware(name)
    checked = 0
    for dtype, sparse in SPARSE_DATASHEET[name].items():
        if dtype in hw.peak_flops_per_s:
            peak = hw.peak_flops_per_s[dtype]
            assert peak <= 0.55 * sparse, f"{name} {dtype}: {peak:.4g} looks like the sparse {sparse:.4g}"
            assert peak >= 0.45 * sparse, f"{name} {dtype}: {peak:.4g} is far below half of {sparse:.4g}"
            checked += 1
    assert "bf16" in hw.peak_flops_per_s and checked >= 2


def test_h100_sxm_bf16_is_the_dense_figure():
    assert "h100-sxm" in hardware_names()
    assert load_hardware("h100-sxm").peak("bf16") < 1.5e15  # dense 989.4e12; sparse 1979e12


def test_tpu_v4_figures_are_the_published_ones():
    """275 TFLOP/s bf16 and 1200 GB/s HBM: https://cloud.google.com/tpu/docs/v4 and Pope et al.
    (arXiv 2211.05102); 32 GiB HBM."""
    hw = load_hardware("tpu-v4")
    assert hw.peak("bf16") == 275e12
    assert hw.hbm_bytes_per_s == 1.2e12
    assert hw.hbm_capacity_bytes == 32 * 2**30


# --------------------------------------------------------------------------- shipped models


@pytest.mark.parametrize("name", model_names())
def test_shipped_models_have_t5_v1_1_shapes(name):
    m = load_model(name)
    assert m.name == name
    if not name.startswith(("fid-", "fido-")):
        return  # a model with shapes of its own; the loader's checks are tested below
    assert m.vocab_size == 32128
    for stack in (m.encoder, m.decoder):
        assert stack.size in T5, name
        layers, heads, d_kv, d_model, d_ff = T5[stack.size]
        assert (stack.num_layers, stack.num_heads, stack.head_dim, stack.emb_dim, stack.mlp_dim) == (
            layers, heads, d_kv, d_model, d_ff)
        assert stack.gated_mlp
    # The encoder keeps multi-head attention (GQA paper, section 3.1).
    assert m.encoder.num_kv_heads == m.encoder.num_heads
    if name.startswith("fid-"):  # FiD: multi-head, cross-attention in every decoder layer
        assert m.decoder.num_kv_heads == m.decoder.num_heads and m.decoder.cross_attn_every == 1
        assert m.encoder.size == m.decoder.size
    elif name.startswith("fido-"):  # FiDO: MQA and LSA with K = 6 (flaxformer's example)
        assert m.decoder.num_kv_heads == 1 and m.decoder.cross_attn_every == 6
        parts = name.split("-")[1:]
        assert (m.encoder.size, m.decoder.size) == (parts[0], parts[-1])


# --------------------------------------------------------------------------- bad YAML

GOOD_MODEL = """\
name: my-model
encoder: {size: base}
decoder: {size: base, num_kv_heads: 1, cross_attn_every: 6}
"""

GOOD_HARDWARE = """\
name: my-chip
description: a chip of my own
peak_flops_per_s:
  bf16: {value: 100.0e+12, source: "my measurement"}
memory:
  capacity_bytes: {value: 16.0e+9, source: "my measurement"}
  bandwidth_bytes_per_s: {value: 1.0e+12, source: "my measurement"}
"""

# (case id, file text, field the error must name)
BAD_MODELS = [
    ("malformed", "name: x\nencoder: {size: base\ndecoder: {size: base}\n", "YAML"),
    ("not-a-mapping", "- encoder\n- decoder\n", "mapping"),
    ("empty", "", "mapping"),
    ("missing-decoder", "name: x\nencoder: {size: base}\n", "decoder"),
    ("missing-shape", "name: x\nencoder: {num_layers: 2, emb_dim: 64}\ndecoder: {size: base}\n",
     "encoder.num_heads"),
    ("unknown-field", "name: x\nencoder: {size: base}\ndecoder: {size: base, colour: red}\n",
     "decoder.colour"),
    ("unknown-top-field", GOOD_MODEL + "colour: red\n", "colour"),
    ("encoder-period", "name: x\nencoder: {size: base, cross_attn_every: 2}\ndecoder: {size: base}\n",
     "encoder.cross_attn_every"),
    ("string-for-number", "name: x\nencoder: {size: base}\ndecoder: {size: base, num_heads: '12'}\n",
     "decoder.num_heads"),
    ("float-for-int", "name: x\nencoder: {size: base}\ndecoder: {size: base, num_layers: 12.5}\n",
     "decoder.num_layers"),
    ("list-for-size", "name: x\nencoder: {size: [base]}\ndecoder: {size: base}\n", "encoder.size"),
    ("unknown-size", "name: x\nencoder: {size: medium}\ndecoder: {size: base}\n", "encoder.size"),
    ("string-for-bool", "name: x\nencoder: {size: base}\ndecoder: {size: base, gated_mlp: 'yes'}\n",
     "decoder.gated_mlp"),
    ("zero-layers", "name: x\nencoder: {size: base}\ndecoder: {size: base, num_layers: 0}\n",
     "decoder.num_layers"),
    ("negative-width", "name: x\nencoder: {size: base, mlp_dim: -1}\ndecoder: {size: base}\n",
     "encoder.mlp_dim"),
    ("zero-vocab", GOOD_MODEL + "vocab_size: 0\n", "vocab_size"),
    ("kv-not-dividing", "name: x\nencoder: {size: base}\ndecoder: {size: base, num_kv_heads: 5}\n",
     "decoder.num_kv_heads"),
    ("zero-kv", "name: x\nencoder: {size: base}\ndecoder: {size: base, num_kv_heads: 0}\n",
     "decoder.num_kv_heads"),
    ("period-too-large", "name: x\nencoder: {size: base}\ndecoder: {size: base, cross_attn_every: 13}\n",
     "decoder.cross_attn_every"),
    ("zero-period", "name: x\nencoder: {size: base}\ndecoder: {size: base, cross_attn_every: 0}\n",
     "decoder.cross_attn_every"),
    ("missing-name", "encoder: {size: base}\ndecoder: {size: base}\n", "name"),
]

BAD_HARDWARE = [
    ("malformed", GOOD_HARDWARE + "  oops: [\n", "YAML"),
    ("missing-capacity", GOOD_HARDWARE.replace(
        '  capacity_bytes: {value: 16.0e+9, source: "my measurement"}\n', ""), "memory.capacity_bytes"),
    ("missing-memory", GOOD_HARDWARE.split("memory:")[0], "memory"),
    ("unknown-field", GOOD_HARDWARE + "colour: red\n", "colour"),
    ("unknown-memory-field", GOOD_HARDWARE + "  latency_s: {value: 1.0e-7, source: x}\n", "memory.latency_s"),
    ("string-for-number", GOOD_HARDWARE.replace("100.0e+12", "'100 TFLOP/s'"), "peak_flops_per_s.bf16.value"),
    ("bare-number", GOOD_HARDWARE.replace('{value: 1.0e+12, source: "my measurement"}', "1.0e+12"),
     "memory.bandwidth_bytes_per_s"),
    ("zero-capacity", GOOD_HARDWARE.replace("16.0e+9", "0"), "memory.capacity_bytes"),
    ("negative-bandwidth", GOOD_HARDWARE.replace("1.0e+12", "-1.0e+12"), "memory.bandwidth_bytes_per_s"),
    ("no-source", GOOD_HARDWARE.replace('source: "my measurement"}\nmemory', 'note: x}\nmemory'),
     "peak_flops_per_s.bf16.source"),
    ("unknown-dtype", GOOD_HARDWARE.replace("  bf16:", "  bf17:"), "peak_flops_per_s.bf17"),
    ("efficiency-without-source", GOOD_HARDWARE + "efficiency:\n  compute: {value: 0.8}\n",
     "efficiency.compute"),
    ("curve-without-source", GOOD_HARDWARE + "efficiency:\n  memory: {by: bytes, points: [[1.0e+3, 0.1], "
     "[1.0e+9, 0.9]]}\n", "efficiency.memory"),
    ("unknown-efficiency", GOOD_HARDWARE + "efficiency:\n  speed: {value: 1.0}\n", "efficiency.speed"),
    ("transfer-on-a-bytes-curve", GOOD_HARDWARE + "efficiency:\n  memory: {by: bytes, points: [[1.0e+3, 0.1], "
     "[1.0e+9, 0.9]], source: x, transfer_bytes: 1.0e+6}\n", "efficiency.memory.transfer_bytes"),
    ("negative-transfer", GOOD_HARDWARE + "efficiency:\n  matmul_compute: {by: rows, points: [[1, 0.1], "
     "[64, 0.9]], source: x, transfer_bytes: -1}\n", "efficiency.matmul_compute.transfer_bytes"),
]


@pytest.mark.parametrize("case,text,field", BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_bad_model_yaml_gives_one_line_naming_file_and_field(case, text, field, tmp_path, cli_error):
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    cli_error(["predict", "--model", path], str(path), field)
    # The library raises the one error type, with the file and field as attributes.
    with pytest.raises(SpecError) as err:
        load_model(path)
    assert err.value.where == str(path)
    assert field in str(err.value)


@pytest.mark.parametrize("case,text,field", BAD_HARDWARE, ids=[c[0] for c in BAD_HARDWARE])
def test_bad_hardware_yaml_gives_one_line_naming_file_and_field(case, text, field, tmp_path, cli_error):
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    cli_error(["predict", "--hardware", path], str(path), field)
    with pytest.raises(SpecError) as err:
        load_hardware(path)
    assert err.value.where == str(path)


def test_good_fixtures_load(tmp_path):
    """The files the bad cases are made from are themselves valid (else the cases prove nothing)."""
    (tmp_path / "m.yaml").write_text(GOOD_MODEL)
    (tmp_path / "h.yaml").write_text(GOOD_HARDWARE)
    assert load_model(tmp_path / "m.yaml").decoder.num_kv_heads == 1
    assert load_hardware(tmp_path / "h.yaml").peak("bf16") == 100e12


def test_missing_file_names_the_file(tmp_path, cli_error):
    missing = tmp_path / "nowhere.yaml"
    cli_error(["predict", "--model", missing], str(missing))
    cli_error(["predict", "--hardware", missing], str(missing))


def test_unknown_names(cli_error):
    line = cli_error(["predict", "--model", "fid-medium"], "--model", "fid-medium")
    assert "fid-base" in line  # lists the known names
    cli_error(["predict", "--hardware", "tpu-v9"], "--hardware", "tpu-v9")


def test_int8_on_a_chip_without_int8(tmp_path, cli_error):
    path = tmp_path / "no-int8.yaml"
    path.write_text(GOOD_HARDWARE)
    cli_error(["predict", "--hardware", path, "--dtype", "int8"], str(path), "int8")
    cli_error(["predict", "--hardware", path, "--dtype", "fp32"], str(path), "fp32")


def test_users_own_model_and_hardware_files_work(tmp_path):
    """A model with explicit shapes (no T5 size) and a chip of one's own, given by path."""
    model = tmp_path / "tiny.yaml"
    model.write_text(
        "name: tiny-fido\n"
        "encoder: {num_layers: 2, emb_dim: 256, num_heads: 4, head_dim: 64, mlp_dim: 512}\n"
        "decoder: {num_layers: 4, emb_dim: 256, num_heads: 4, num_kv_heads: 2, head_dim: 64, mlp_dim: 512,\n"
        "          cross_attn_every: 2}\n"
        "vocab_size: 1000\n")
    hw = tmp_path / "chip.yaml"
    hw.write_text(GOOD_HARDWARE)
    result = CliRunner().invoke(cli, ["predict", "-m", str(model), "-H", str(hw), "-f", "json",
                                      "--passages", "3", "--passage-len", "16", "--target-len", "4",
                                      "--batch", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"]["name"] == "tiny-fido" and out["hardware"]["name"] == "my-chip"
    assert out["model"]["decoder"]["cross_attn_layers"] == [1, 3]
    ops = out["ops"]
    assert {r["layer"] for r in ops if r["op"] == "cross_attn_logits"} == {1, 3}
    # Timed on the user's chip: 100 TFLOP/s and 1 TB/s.
    for r in ops:
        if r["phase"] == "encoder":
            assert r["time_s"] == pytest.approx(max(r["flops"] / 100e12, r["bytes"] / 1e12), rel=1e-9)
    # Cross-attention reads G = 2 of 4 heads' keys and values: 2 FLOPs per byte in bf16.
    x = [r for r in ops if r["op"] in ("cross_attn_logits", "cross_attn_values")]
    assert sum(r["flops"] for r in x) / sum(r["cross_kv_bytes"] for r in x) == pytest.approx(2.0)
    # Table and Markdown output work for it too.
    for fmt in ("table", "markdown"):
        r = CliRunner().invoke(cli, ["predict", "-m", str(model), "-H", str(hw), "-f", fmt])
        assert r.exit_code == 0 and "tiny-fido" in r.stdout, r.output
