"""Plots: the plotted numbers are the calculator's, roofs sit at the datasheet figures,
labels do not overlap, and the commands write every figure format atomically."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.text import Text

from fidoperf.cli import cli
from fidoperf.cli.plots import load_variant
from fidoperf.costmodel.prediction import predict
from fidoperf.errors import SpecError
from fidoperf.present import plots
from fidoperf.specs import Workload, load_hardware, load_model, override_model

WL = Workload(passages=20, passage_len=128, target_len=8, batch=8)


@pytest.fixture(scope="module")
def tpu():
    return load_hardware("tpu-v4")


@pytest.fixture(scope="module")
def variants(tpu):
    base = load_model("fid-base")
    models = [
        base,
        override_model(base, kv_heads=1).replace(name="fid-base+mqa"),
        override_model(base, cross_attn_every=6).replace(name="fid-base+lsa"),
        load_model("fido-base"),
    ]
    return [predict(m, tpu, WL) for m in models]


def _expected_points(pred):
    """Independently of plots.py: per (phase, op), FLOPs / bytes and FLOPs / time."""
    ops = pred.ops[pred.ops["flops"] > 0]
    g = ops.groupby(["phase", "op"], sort=False)[["flops", "bytes", "time_s"]].sum()
    return {k: (r.flops / r.bytes, r.flops / r.time_s) for k, r in g.iterrows()}


def test_roofline_points_are_the_calculators(tpu, variants):
    ax = plots.roofline(None, [tpu], plots.roofline_points_many(variants))
    by_gid = {c.get_gid(): c for c in ax.collections}
    for pred in variants:
        expected = _expected_points(pred)
        for phase in ("encoder", "cross_kv", "decoder"):
            coll = by_gid[f"points|{pred.model.name}|tpu-v4|{phase}"]
            want = np.array([v for (ph, _), v in expected.items() if ph == phase])
            got = np.asarray(coll.get_offsets())
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_every_op_with_flops_is_a_point(variants):
    pts = plots.roofline_points(variants[0])
    ops = variants[0].ops
    assert set(zip(pts["phase"], pts["op"], strict=True)) == set(
        zip(ops["phase"][ops["flops"] > 0], ops["op"][ops["flops"] > 0], strict=True)
    )
    # embedding gathers have no FLOPs and no place on log axes
    assert "embed" not in set(pts["op"])


def test_mqa_moves_cross_attention_right(variants):
    pts = plots.roofline_points_many(variants).set_index(["variant", "phase", "op"])
    mha = pts.loc[("fid-base", "decoder", "cross_attn_logits"), "intensity"]
    mqa = pts.loc[("fid-base+mqa", "decoder", "cross_attn_logits"), "intensity"]
    lsa = pts.loc[("fid-base+lsa", "decoder", "cross_attn_logits"), "intensity"]
    assert mqa > 5 * mha  # 12 query heads share one key/value head
    assert lsa == pytest.approx(mha)  # LSA removes layers, not bytes per FLOP


@pytest.mark.parametrize("names", [("tpu-v4",), ("a100-80gb", "h100-sxm", "tpu-v4")])
def test_roofs_sit_at_peak_and_bandwidth(variants, names):
    hws = [load_hardware(n) for n in names]
    ax = plots.roofline(None, hws, plots.roofline_points(variants[0]), labels=False)
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    for h in hws:
        comp = lines[f"roof-compute|{h.name}"]
        mem = lines[f"roof-memory|{h.name}"]
        ridge = lines[f"ridge|{h.name}"]
        assert np.all(np.asarray(comp.get_ydata()) == h.peak_flops_per_s["bf16"])
        x, y = np.asarray(mem.get_xdata()), np.asarray(mem.get_ydata())
        np.testing.assert_allclose(y / x, h.hbm_bytes_per_s, rtol=1e-12)
        assert ridge.get_xdata()[0] == pytest.approx(h.ridge_point("bf16"))
        assert ridge.get_ydata()[0] == h.peak_flops_per_s["bf16"]
        assert comp.get_xdata()[0] == pytest.approx(h.ridge_point("bf16"))  # the roofs meet at the ridge
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "FLOP/byte" in ax.get_xlabel() and "FLOP/s" in ax.get_ylabel()


def _rotated_text_points(t, r):
    """Sample points of a rotated label (display space): its unrotated box, turned
    about the anchor by the label's angle."""
    angle = t.get_rotation()
    t.set_rotation(0)
    b = Text.get_window_extent(t, r)
    t.set_rotation(angle)
    ax0 = b.x0 if t.get_ha() == "left" else b.x1
    ay0 = b.y1 if t.get_va() == "top" else b.y0
    gx, gy = np.meshgrid(np.linspace(b.x0, b.x1, 20), np.linspace(b.y0, b.y1, 4))
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    dx, dy = gx.ravel() - ax0, gy.ravel() - ay0
    return np.column_stack([ax0 + c * dx - s * dy, ay0 + s * dx + c * dy])


@pytest.mark.parametrize("names", [("tpu-v4",), ("tpu-v4", "h100-sxm", "a100-40gb")])
def test_roofline_labels_do_not_overlap(variants, names):
    ax = plots.roofline(None, [load_hardware(n) for n in names], plots.roofline_points_many(variants))
    ax.figure.canvas.draw()
    r = ax.figure.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text()]
    for t in texts:
        t.get_window_extent(r)  # lays out annotations
    flat = [Text.get_window_extent(t, r) for t in texts if t.get_rotation() == 0]  # the text, not its leader
    assert len(flat) > 10
    for a, b in itertools.combinations(flat, 2):
        assert not a.overlaps(b), "two labels overlap"
    for t in texts:  # bandwidth labels run along their roof
        if t.get_rotation() != 0:
            pts = _rotated_text_points(t, r)
            for b in flat:
                inside = (
                    (pts[:, 0] > b.x0 + 1)
                    & (pts[:, 0] < b.x1 - 1)
                    & (pts[:, 1] > b.y0 + 1)
                    & (pts[:, 1] < b.y1 - 1)
                )
                assert not inside.any(), f"{t.get_text()!r} runs over another label"
    frame = ax.get_window_extent(r)
    for b in flat:  # labels stay inside the axes
        assert frame.x0 - 1 <= b.x0 and b.x1 <= frame.x1 + 1


def test_breakdown_sums_to_time_per_sample(tpu, variants):
    table = plots.breakdown_table(variants)
    for pred, (_, row) in zip(variants, table.iterrows(), strict=True):
        assert row["total_s"] == pytest.approx(pred.totals["time_per_sample_s"], rel=1e-12)
        assert row["encoder_s"] == pytest.approx(pred.totals["encoder_time_s"], rel=1e-12)
        assert row["cross_kv_s"] == pytest.approx(pred.totals["cross_kv_time_s"], rel=1e-12)
        dec = pred.ops[pred.ops["phase"] == "decoder"]
        cross = dec[
            dec["op"].isin(
                [
                    "cross_attn_q",
                    "cross_attn_logits",
                    "cross_attn_softmax",
                    "cross_attn_values",
                    "cross_attn_out",
                ]
            )
        ]["time_s"].sum()
        assert row["cross_attn_s"] == pytest.approx(cross / pred.workload.batch, rel=1e-12)
    ax = plots.breakdown(None, variants)
    for col, _, _ in plots.BREAKDOWN:
        heights = [p.get_height() for p in ax.patches if p.get_gid() == f"bar|{col}"]
        if col == "comm_s":  # one chip: no communication, no segment
            assert heights == [] and not table[col].any()
            continue
        np.testing.assert_allclose(heights, table[col].to_numpy() * 1e3, rtol=1e-12)
    assert "(ms)" in ax.get_ylabel()


def test_lsa_and_mqa_shrink_the_decoder_cross_attention(variants):
    t = plots.breakdown_table(variants).set_index("model")
    assert (
        t.loc["fido-base", "cross_attn_s"]
        < t.loc["fid-base+mqa", "cross_attn_s"]
        < t.loc["fid-base", "cross_attn_s"]
    )
    assert t.loc["fid-base+lsa", "cross_attn_s"] < t.loc["fid-base", "cross_attn_s"]


def test_decoder_step_lines_are_the_calculators(tpu):
    models = [load_model("fid-base"), load_model("fido-base")]
    table = plots.decoder_step_table(models, tpu, batches=(1, 8, 64), passages=(10, 40), workload=WL)
    ax = plots.decoder_step_vs(None, table)
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    for m in models:
        for p in (10, 40):
            ln = lines[f"step|{m.name}|{p}"]
            want = [
                predict(m, tpu, WL.replace(passages=p, batch=b)).totals["time_per_step_s"] * 1e3
                for b in (1, 8, 64)
            ]
            np.testing.assert_allclose(ln.get_xdata(), [1, 8, 64])
            np.testing.assert_allclose(ln.get_ydata(), want, rtol=1e-12)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and "(ms)" in ax.get_ylabel()


def test_quality_table_has_sources_and_no_invented_figures():
    q = plots.load_quality()
    assert set(q["dataset"]) <= set(plots.QUALITY_DATASETS)
    assert (q["source"].str.len() > 0).all()
    found = q[q["exact_match"].notna()]
    assert len(found) >= 1
    assert found["source"].str.contains("http").all()  # every figure names where it was read
    assert q["exact_match"].isna().any()  # unknown cells stay empty


def test_quality_points_are_predicted_times(tpu):
    table = plots.quality_table(tpu, WL)
    ax = plots.quality_vs_cost(None, table)
    known = table[table["exact_match"].notna()]
    got = np.vstack(
        [np.asarray(c.get_offsets()) for c in ax.collections if str(c.get_gid()).startswith("quality|")]
    )
    want = known[["time_per_sample_s", "exact_match"]].to_numpy() * [1e3, 1]
    np.testing.assert_allclose(sorted(map(tuple, got)), sorted(map(tuple, want)), rtol=1e-12)
    for _, r in known.iterrows():
        pred = predict(load_model(r["fidoperf_model"]), tpu, WL.replace(passages=int(r["passages_used"])))
        assert r["time_per_sample_s"] == pytest.approx(pred.totals["time_per_sample_s"], rel=1e-12)


def test_quality_file_is_checked(tmp_path):
    bad = tmp_path / "q.yaml"
    bad.write_text(
        "rows:\n  - {model: X, dataset: NaturalQuestions, exact_match: 50, source: s, colour: red}\n"
    )
    with pytest.raises(SpecError, match="colour"):
        plots.load_quality(bad)
    bad.write_text("rows:\n  - {model: X, dataset: SQuAD, exact_match: 50, source: s}\n")
    with pytest.raises(SpecError, match="unknown dataset"):
        plots.load_quality(bad)
    bad.write_text("rows:\n  - {model: X, dataset: TriviaQA, exact_match: 150, source: s}\n")
    with pytest.raises(SpecError, match="0-100"):
        plots.load_quality(bad)


def test_variant_names():
    m = load_variant("fid-base+mqa+lsa4")
    assert m.name == "fid-base+mqa+lsa4"
    assert m.decoder.num_kv_heads == 1 and m.decoder.cross_attn_every == 4
    with pytest.raises(SpecError, match="unknown what-if"):
        load_variant("fid-base+fast")


# --------------------------------------------------------------------------- commands

MAGIC = {".png": b"\x89PNG", ".svg": b"<?xml", ".pdf": b"%PDF"}
SMALL = ["--passages", "10", "--passage-len", "64", "--target-len", "4", "--batch", "4"]


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


ROOF = ["-m", "fid-base", "-m", "fid-base+mqa"]
BARS = ["-m", "fid-base", "-m", "fido-base"]


@pytest.mark.parametrize(
    "command,extra,suffix",
    # every format once on the cheapest figure, every command once
    [("breakdown", BARS, ".png"), ("breakdown", BARS, ".svg"), ("breakdown", BARS, ".pdf"),
     ("roofline", ROOF, ".svg"), ("quality", [], ".png")],
)  # fmt: skip
def test_commands_write_every_format(tmp_path, command, extra, suffix):
    out = tmp_path / f"fig{suffix}"
    res = _run([command, *extra, *SMALL, "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data.startswith(MAGIC[suffix]) and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_commands_print_tables_without_output():
    res = _run(["breakdown", "-m", "fid-base", "-m", "fido-base", *SMALL])
    assert res.exit_code == 0 and "fido-base" in res.output and "encoder ms" in res.output
    res = _run(["roofline", "-m", "fido-base", *SMALL])
    assert res.exit_code == 0 and "cross_attn_logits" in res.output
    res = _run(["quality"])
    assert res.exit_code == 0 and "not found" in res.output and "51.4" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["roofline", "-o", "{tmp}/fig.jpg"],
        ["breakdown", "-o", "{tmp}/fig"],
        ["quality", "-o", "{tmp}/missing/fig.png"],
        ["roofline", "-m", "no-such-model", "-o", "{tmp}/fig.png"],
    ],
)
def test_bad_output_is_one_line_exit_2_no_file(tmp_path, args):
    res = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make", ["folder", "file-parent"])
def test_unwritable_output(tmp_path, make):
    if make == "folder":
        target = tmp_path / "fig.png"
        target.mkdir()
        before = {target}
    else:  # a path through a plain file (a permission test would pass as root, as CI runs)
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "fig.png"
        before = {tmp_path / "plain"}
    try:
        res = CliRunner().invoke(cli, ["breakdown", "-m", "fido-base", *SMALL, "-o", str(target)])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        assert "cannot write" in res.output and len(res.output.strip().splitlines()) == 1
        if make == "folder":
            assert "it is a folder" in res.output
        assert set(tmp_path.iterdir()) == before
        assert not any(p.is_file() and p.suffix == ".tmp" for p in tmp_path.rglob("*"))
    finally:
        for p in tmp_path.iterdir():
            p.chmod(0o700)


def test_breakdown_of_a_layout_has_a_communication_segment():
    from fidoperf.specs.layout import Layout

    hw = load_hardware("h100-sxm")
    preds = [predict(load_model(m), hw, Workload(batch=8), layout=Layout(tensor_parallel=2))
             for m in ("fid-base", "fido-base")]
    table = plots.breakdown_table(preds)
    comm = [p.ops.loc[p.ops["kind"] == "collective", "time_s"].sum() / 8 for p in preds]
    np.testing.assert_allclose(table["comm_s"], comm, rtol=1e-12)
    assert (table["comm_s"] > 0).all()
    np.testing.assert_allclose(table["total_s"], [p.totals["time_per_sample_s"] for p in preds], rtol=1e-12)
    ax = plots.breakdown(None, table)
    assert len([p for p in ax.patches if p.get_gid() == "bar|comm_s"]) == 2


def test_scaling_table_and_plot():
    hw = load_hardware("h100-sxm")
    table = plots.scaling_table(load_model("fid-xl"), hw, Workload(batch=8), chips=(1, 2, 4))
    assert set(map(tuple, table[["chips", "tensor_parallel"]].to_numpy())) == {(1, 1), (2, 1), (2, 2), (4, 1), (4, 2),
                                                                              (4, 4)}
    one = table[(table["tensor_parallel"] == 1)]
    # data-parallel replicas: same latency, same throughput per chip
    assert one["time_per_sample_s"].nunique() == 1 and one["samples_per_s_per_chip"].round(12).nunique() == 1
    by_t = table[table["chips"] == 4].set_index("tensor_parallel")
    assert by_t.loc[4, "peak_memory_bytes"] < by_t.loc[2, "peak_memory_bytes"] < by_t.loc[1, "peak_memory_bytes"]
    assert by_t.loc[4, "comm_share"] > by_t.loc[2, "comm_share"] > 0 == by_t.loc[1, "comm_share"]
    axes = plots.scaling(None, table)
    assert axes[0].get_xlabel() == "chips" and "per chip" in axes[1].get_ylabel()
    assert len(axes[0].get_lines()) == 3
