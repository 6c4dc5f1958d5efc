"""Collectives: the interconnect blocks of the shipped profiles, and the alpha-beta model.

Independent checks: the ring / tree closed forms derived by hand, NCCL's own printed
latencies, and published nccl-tests results (each cited where it is used).
The hardware files are read with yaml.safe_load here because hardware.py does not parse
the ``interconnect`` block yet.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fidoperf.costmodel.collectives import OPS, bytes_per_chip, collective_times, slice_dims
from fidoperf.errors import SpecError
from fidoperf.specs.interconnect import interconnect_from_dict

HARDWARE = Path(__file__).resolve().parent.parent / "hardware"
PROFILES = sorted(p.stem for p in HARDWARE.glob("*.yaml"))
MiB = 2**20


def raw_block(name: str) -> dict:
    return yaml.safe_load((HARDWARE / f"{name}.yaml").read_text())["interconnect"]


def net(name: str):
    return interconnect_from_dict(raw_block(name), str(HARDWARE / f"{name}.yaml"))


# --------------------------------------------------------------------------- the YAML blocks


def _figures(node, path=""):
    """(path, mapping) of every {value, source, note} figure in a block."""
    if isinstance(node, dict):
        if "value" in node:
            yield path, node
        else:
            for k, v in node.items():
                yield from _figures(v, f"{path}.{k}" if path else k)


def _bare_numbers(node, path=""):
    """Numbers in a block that are not the value of a sourced figure (house rule: none)."""
    if isinstance(node, dict):
        if "value" in node:
            return []
        return [p for k, v in node.items() for p in _bare_numbers(v, f"{path}.{k}" if path else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _bare_numbers(v, f"{path}[{i}]")]
    return [path] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def test_every_profile_has_an_interconnect_block():
    assert len(PROFILES) == 11
    for name in PROFILES:
        assert "interconnect" in yaml.safe_load((HARDWARE / f"{name}.yaml").read_text()), name


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_block_parses_and_every_figure_has_a_source(name):
    block = raw_block(name)
    ic = net(name)
    figures = dict(_figures(block))
    assert figures, name
    assert _bare_numbers(block) == [], name
    for path, fig in figures.items():
        assert isinstance(fig.get("source"), str) and fig["source"].strip(), (name, path)
    # Every figure in the file reached the parsed object, with its source.
    assert set(ic.sources) == set(figures), (name, set(figures) ^ set(ic.sources))
    assert all(s.source.strip() for s in ic.sources.values())
    assert 0 < ic.node.efficiency <= 1 and ic.node.link_bytes_per_s > 0
    assert ic.chips_per_node >= 8


def test_nvlink_generations_one_direction():
    """NVIDIA's headline NVLink figures count both directions: NVLink3 600 GB/s, NVLink4 900 GB/s."""
    assert net("a100-80gb").node.link_bytes_per_s == 300e9
    for name in ("h100-sxm", "h200"):
        assert net(name).node.link_bytes_per_s == 450e9
        assert net(name).nvls is not None
    assert net("a100-80gb").nvls is None  # NVLink SHARP arrived with the third-generation NVSwitch
    assert net("h100-pcie").pair.link_bytes_per_s == 300e9


def test_tpu_v4_eight_chip_slice_is_a_2x2x2_mesh():
    tier = net("tpu-v4").node
    assert tier.dims == (2, 2, 2) and tier.topology == "torus"
    assert slice_dims(tier, 8) == (2, 2, 2)
    assert slice_dims(tier, 4) == (2, 2)
    assert slice_dims(tier, 64) == (4, 4, 4)
    assert slice_dims(tier, 6) == (6,)  # no Cloud TPU shape holds 6 chips: one ring


def _malformed(tmp_path, mutate, field):
    block = raw_block("h100-sxm")
    mutate(block)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"interconnect": block}))
    with pytest.raises(SpecError) as err:
        interconnect_from_dict(yaml.safe_load(path.read_text())["interconnect"], str(path))
    assert str(path) in str(err.value) and field in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda b: b["node"].pop("link_bytes_per_s"), "interconnect.node.link_bytes_per_s"),
        (lambda b: b["node"]["efficiency"].update(value=1.7), "interconnect.node.efficiency.value"),
        (lambda b: b["node"]["latency_s"].update(source=""), "interconnect.node.latency_s.source"),
        (lambda b: b["node"]["latency_s"].update(value="fast"), "interconnect.node.latency_s.value"),
        (lambda b: b["node"].update(topology="hypercube"), "interconnect.node.topology"),
        (lambda b: b["node"]["chips"].update(value=0), "interconnect.node.chips.value"),
        (lambda b: b["node"]["chips"].update(value=8.5), "interconnect.node.chips.value"),
        (lambda b: b["node"].update(chips=8), "interconnect.node.chips"),  # a bare number: no source
        (lambda b: b["node"].update(dims=[2, 2]), "interconnect.node.dims"),
        (lambda b: b.update(speed=1), "interconnect.speed"),
        (lambda b: b.pop("library"), "interconnect.library"),
        (lambda b: b.update(nccl_arch="kepler"), "interconnect.nccl_arch"),
        (lambda b: b["network"].pop("latency_s"), "interconnect.network.latency_s"),
        (lambda b: b["nvls"].update(fast=True), "interconnect.nvls.fast"),
    ],
)
def test_malformed_block_names_file_and_key(tmp_path, mutate, field):
    _malformed(tmp_path, mutate, field)


def test_torus_dims_must_multiply_to_chips(tmp_path):
    block = raw_block("tpu-v4")
    block["node"]["dims"]["value"] = [2, 2, 4]
    with pytest.raises(SpecError, match=r"interconnect\.node\.dims: the product of \[2, 2, 4\] is 16, not chips = 8"):
        interconnect_from_dict(block, str(tmp_path / "v4.yaml"))


# --------------------------------------------------------------------------- closed forms


@given(n=st.integers(2, 4096), S=st.floats(1.0, 1e12))
def test_ring_bytes_match_the_closed_forms(n, S):
    # Hand derivation: a reduce-scatter ring passes n-1 pieces of S/n; an all-gather ring
    # forwards the n-1 pieces a chip lacks; an all-reduce is the two in sequence.
    rs = bytes_per_chip("reduce_scatter", S, n)
    ag = bytes_per_chip("all_gather", S, n)
    assert rs == pytest.approx((n - 1) * S / n)
    assert ag == pytest.approx((n - 1) * S / n)
    assert bytes_per_chip("all_reduce", S, n) == pytest.approx(rs + ag)
    assert bytes_per_chip("all_reduce", S, n) == pytest.approx(2 * (n - 1) / n * S)
    # Ring all-reduce is bandwidth-optimal: never more than twice the buffer.
    assert bytes_per_chip("all_reduce", S, n) < 2 * S


def test_tree_nvls_and_torus_closed_forms():
    S = 1e6
    # NCCL double binary tree: algorithm bandwidth is half the bus bandwidth -> 2 S per chip.
    assert bytes_per_chip("all_reduce", S, 8, "tree") == 2 * S
    assert bytes_per_chip("all_reduce", S, 8, "nvls") == S
    # Bidirectional ring all-to-all (scaling-book: AllGather / 4 of the n S array).
    assert bytes_per_chip("all_to_all", S, 8, "torus") == 8 * S / 4
    assert bytes_per_chip("all_to_all", S, 2, "torus") == S / 2  # two chips: swap halves
    for op in OPS:
        assert bytes_per_chip(op, S, 1) == 0
    with pytest.raises(SpecError, match="all-reduce only"):
        bytes_per_chip("all_gather", S, 8, "tree")


# --------------------------------------------------------------------------- times


SIZES = 512 * 2.0 ** np.arange(21)  # 512 B .. 512 MiB


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("op", OPS)
def test_time_grows_with_bytes(name, op):
    ic = net(name)
    for n in (2, 4, 8):
        t = collective_times(op, SIZES, n, ic)["time_s"]
        assert np.all(np.diff(t) > 0), (name, op, n, t)
        assert np.all(t > 0)


@pytest.mark.parametrize("name", ["h100-sxm", "a100-80gb", "l4", "tpu-v4", "tpu-v5e"])
def test_all_gather_time_grows_with_chips_for_a_fixed_shard(name):
    """Each chip contributes the same shard: more chips, more to gather, more steps."""
    ic = net(name)
    shard = np.array([64.0, 64e3, 64e6])
    chips = [2, 4, 8, 16] if ic.network is not None else [2, 4, 8]
    times = np.array([collective_times("all_gather", shard * n, n, ic)["time_s"] for n in chips])
    assert np.all(np.diff(times, axis=0) > 0), times


@pytest.mark.parametrize("name", ["h100-sxm", "a100-80gb", "h100-pcie", "tpu-v4"])
def test_latency_grows_with_chips(name):
    ic = net(name)
    lat = [collective_times("all_reduce", 512, n, ic)["latency_s"] for n in (2, 4, 8)]
    assert lat[0] < lat[1] < lat[2]


def test_h100_two_gpus_small_all_reduce_is_a_few_microseconds():
    ic = net("h100-sxm")
    r = collective_times("all_reduce", 512, 2, ic)
    assert r["algorithm"] == "ring/LL"
    # NCCL's device-side part: baseLat 6.6 + 2(n-1) x 0.6 = 7.8 us, which NCCL 2.29.2 itself
    # prints for 2 H100s (waynehacking8/nccl-collectives-bench results/scaling_attributed/g2_auto.log).
    assert float(r["latency_s"]) - ic.call_latency_s == pytest.approx(7.8e-6)
    assert 3e-6 < float(r["time_s"]) < 25e-6


def test_h100_two_gpus_large_all_reduce_runs_at_the_attainable_bandwidth():
    ic = net("h100-sxm")
    S = 512 * MiB
    r = collective_times("all_reduce", S, 2, ic)
    assert r["algorithm"] == "ring/Simple"
    expected = S * 2 * (2 - 1) / 2 / (ic.node.efficiency * ic.node.link_bytes_per_s)
    assert float(r["time_s"]) == pytest.approx(expected, rel=0.02)
    assert float(r["bytes_per_chip"]) == S


def test_eight_h100_choose_nvls_for_large_all_reduce_and_a100_rings():
    big = 512 * MiB
    assert collective_times("all_reduce", big, 8, net("h100-sxm"))["algorithm"] == "nvls/Simple"
    assert collective_times("all_reduce", big, 8, net("a100-80gb"))["algorithm"] == "ring/Simple"
    assert collective_times("all_gather", big, 8, net("h100-sxm"))["algorithm"] == "ring/Simple"
    # Small messages take the low-latency protocol.
    assert collective_times("all_reduce", 4096, 8, net("h100-sxm"))["algorithm"] == "ring/LL"


@pytest.mark.parametrize(
    "name, op, n, size, measured_s, rel",
    [
        # Azure/AI-benchmarking-guide 'Azure Results/ND_H100_v5_results.md' (f350e7e): 8 H100,
        # NVLS all-reduce busbw 438.46 GB/s at 536,870,912 B -> 536870912 * 14/8 / 438.46e9 s.
        ("h100-sxm", "all_reduce", 8, 512 * MiB, 512 * MiB * 14 / 8 / 438.46e9, 0.10),
        # waynehacking8/nccl-collectives-bench results/quiet/all_reduce.txt (8ab7496): 4 H100,
        # NCCL 2.29.2, 512 MiB out-of-place 2315.40 us; 4 MiB 43.43 us.
        ("h100-sxm", "all_reduce", 4, 512 * MiB, 2315.40e-6, 0.10),
        ("h100-sxm", "all_reduce", 4, 4 * MiB, 43.43e-6, 0.20),
        # Same repository, results/all_gather.csv (f9883f8): 4 H100, 512 MiB 1268.09 us, 512 B 16.82 us.
        ("h100-sxm", "all_gather", 4, 512 * MiB, 1268.09e-6, 0.10),
        ("h100-sxm", "all_gather", 4, 512, 16.82e-6, 0.20),
        # Azure_Results/ND_A100_v4_results.md (3bb66ca): 8 A100-SXM4-80GB, busbw 221.58 GB/s at 536M.
        ("a100-80gb", "all_reduce", 8, 512 * MiB, 512 * MiB * 14 / 8 / 221.58e9, 0.10),
        # Azure_Results/ND_H200_v5_results.md (7f20e5f): 8 H200, NVLS busbw 442.72 GB/s at 536M.
        ("h200", "all_reduce", 8, 512 * MiB, 512 * MiB * 14 / 8 / 442.72e9, 0.10),
    ],
)
def test_published_nccl_tests_figures(name, op, n, size, measured_s, rel):
    t = float(collective_times(op, size, n, net(name))["time_s"])
    assert t == pytest.approx(measured_s, rel=rel), (t, measured_s)


def test_tpu_v4_eight_chip_all_gather_matches_the_torus_closed_form():
    """2x2x2 mesh, no wraparound: one link per axis, one hop per axis (scaling-book)."""
    ic = net("tpu-v4")
    S = 8 * MiB
    r = collective_times("all_gather", S, 8, ic)
    links, hops = 3, 3
    expected = ic.call_latency_s + hops * ic.node.latency_s + 7 / 8 * S / (links * ic.node.bus_bytes_per_s)
    assert float(r["time_s"]) == pytest.approx(expected)
    assert r["algorithm"] == "torus"
    # An all-reduce is a reduce-scatter plus an all-gather: twice the hops and the bytes.
    ar = collective_times("all_reduce", S, 8, ic)
    assert float(ar["transfer_s"]) == pytest.approx(2 * float(r["transfer_s"]))
    assert float(ar["latency_s"]) - ic.call_latency_s == pytest.approx(2 * hops * ic.node.latency_s)


def test_wraparound_axes_use_both_links():
    ic = net("tpu-v4")
    S = 64 * MiB
    # 4x4x4 wraps (every axis a multiple of 4): 6 links; 2x2x4 does not: 3 links.
    t64 = float(collective_times("all_gather", S, 64, ic)["transfer_s"])
    t16 = float(collective_times("all_gather", S, 16, ic)["transfer_s"])
    assert t64 == pytest.approx(63 / 64 * S / (6 * ic.node.bus_bytes_per_s))
    assert t16 == pytest.approx(15 / 16 * S / (3 * ic.node.bus_bytes_per_s))


def test_beyond_one_node_uses_the_network():
    ic = net("h100-sxm")
    r = collective_times("all_reduce", [512, 512 * MiB], 16, ic)
    assert all(a.endswith("+network") for a in r["algorithm"])
    one_node = collective_times("all_reduce", [512, 512 * MiB], 8, ic)
    assert np.all(r["latency_s"] > one_node["latency_s"])
    tpu = collective_times("all_reduce", 512 * MiB, 8192, net("tpu-v4"))
    assert tpu["algorithm"] == "torus+network"


def test_pandas_columns_broadcast_like_single_calls():
    ic = net("h100-sxm")
    df = pd.DataFrame({"bytes": [512, 4096, 2**20, 2**29, 2**29], "chips": [2, 4, 8, 8, 1]})
    out = collective_times("all_reduce", df["bytes"], df["chips"], ic)
    for i, row in df.iterrows():
        one = collective_times("all_reduce", row["bytes"], row["chips"], ic)
        for key in ("latency_s", "transfer_s", "time_s", "bytes_per_chip"):
            assert out[key][i] == pytest.approx(float(one[key])), key
        assert out["algorithm"][i] == one["algorithm"]
    assert out["time_s"][4] == 0 and out["algorithm"][4] == "none"  # one chip: nothing to do
    assert np.allclose(out["time_s"], out["latency_s"] + out["transfer_s"])
    grid = collective_times("all_gather", SIZES[:, None], np.array([2, 4, 8])[None, :], ic)
    assert grid["time_s"].shape == (len(SIZES), 3)


@pytest.mark.parametrize(
    "args, field",
    [
        (("broadcast", 512, 2), "op"),
        (("all_reduce", -1, 2), "bytes"),
        (("all_reduce", 512, 0), "chips"),
        (("all_reduce", 512, 2.5), "chips"),
    ],
)
def test_bad_arguments_raise_spec_error(args, field):
    with pytest.raises(SpecError) as err:
        collective_times(*args, net("h100-sxm"))
    assert err.value.field == field


def test_chips_that_need_a_missing_network_tier_are_refused():
    block = raw_block("h100-sxm")
    block.pop("network")
    ic = interconnect_from_dict(block, "no-network.yaml")
    with pytest.raises(SpecError, match="no-network.yaml: interconnect.network: 16 chips"):
        collective_times("all_reduce", 512, 16, ic)
    with pytest.raises(SpecError, match="do not fill whole nodes"):
        collective_times("all_reduce", 512, 12, net("h100-sxm"))


def test_call_latency_is_the_only_floor_difference():
    """Setting the per-call latency to zero (CUDA-graph replay) removes exactly that much."""
    eager = net("h100-sxm")
    graph = dataclasses.replace(eager, call_latency_s=0.0)
    a = collective_times("all_reduce", 512, 4, eager)["time_s"]
    b = collective_times("all_reduce", 512, 4, graph)["time_s"]
    assert float(a - b) == pytest.approx(eager.call_latency_s, rel=1e-6)
    assert math.isclose(float(b), 6.6e-6 + 6 * 0.6e-6 + 512 * 1.5 / 141e9, rel_tol=1e-3)
