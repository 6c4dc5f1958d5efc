"""Build the analysis notebooks from the Python source below, execute them, save them.

The cells of every notebook live in this file (the source of truth); the committed
``.ipynb`` files are its executed output, saved with their outputs so that they read
well on a code host. ``tests/test_notebooks.py`` checks that the committed cells equal
the ones built here and executes every notebook again from scratch.

Usage, from the repository root::

    .venv/bin/python notebooks/build_notebooks.py              # build, execute, save all three
    .venv/bin/python notebooks/build_notebooks.py 01 02        # only these (name prefixes)
    .venv/bin/python notebooks/build_notebooks.py --no-execute # cells only, no outputs

Notebook 03 runs JAX benchmarks on this machine (30-50 s on 2 CPU cores):
rebuild it only when its cells change. Execution writes nothing in the home
directory: Jupyter's, IPython's and matplotlib's folders point into a temporary one.
Takeaways that quote model figures are rendered by code cells, so that they follow
the package when its cost model changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNEL_NAME = "python3"
KERNELSPEC = {"name": KERNEL_NAME, "display_name": "Python 3 (ipykernel)", "language": "python"}
TIMEOUT_S = {"01": 300, "02": 300, "03": 900}  # per notebook, on a loaded 2-core CPU

# First lines of every notebook: inline PNG figures at a modest resolution (small .ipynb files).
SETUP = """\
%matplotlib inline
%config InlineBackend.figure_formats = ["png"]
%config InlineBackend.print_figure_kwargs = {"bbox_inches": "tight", "dpi": 80}
"""


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", textwrap.dedent(text).strip("\n"))


def setup_code(text: str) -> tuple[str, str]:
    """The first code cell: the display settings, then ``text``."""
    return ("code", SETUP + "\n" + textwrap.dedent(text).strip("\n"))


# --------------------------------------------------------------------------- 01


def cells_01() -> list[tuple[str, str]]:
    return [
        md("""
        # From T5 v1.1 to FiD to FiDO on TPU v4: where FLOPs, bytes and time go

        FiDO (de Jong et al. 2022, [arXiv 2212.08153](https://arxiv.org/abs/2212.08153)) argues that
        Fusion-in-Decoder spends most of its FLOPs in the encoder but most of its inference time in a
        memory-bound decoder, and that two decoder changes fix it: **layer-sparse cross-attention**
        (LSA: cross-attention only in every K-th decoder layer) and **multi-query attention** (MQA: one
        key/value head in the decoder's attention). This notebook sets those statements next to
        fidoperf's roofline model.

        Setting (fidoperf's defaults, the paper's as far as it is known): 40 passages x 256 tokens
        (10,240 encoder tokens per sample), 32 generated tokens, batch 24, bf16 weights, activations and
        caches, one TPU v4 chip. Every number comes from `fidoperf`'s public API; the notebook formats
        and plots. Units: FLOP, bytes (1 GB = 1e9 B), ms; "per sample" = one batch divided by 24.
        Rebuild with `python notebooks/build_notebooks.py 01`.
        """),
        setup_code("""
        import json

        import matplotlib.pyplot as plt
        import pandas as pd
        from IPython.display import Markdown, display

        import fidoperf as fp
        from fidoperf.present import plots
        from fidoperf.present.fmt import text_table
        from fidoperf.present.report import summed_over_layers

        pd.set_option("display.width", 160)
        pd.set_option("display.max_columns", 30)

        tpu = fp.load_hardware("tpu-v4")
        wl = fp.Workload()  # 40 passages x 256 tokens, 32 target tokens, batch 24, bf16
        print(f"workload: {wl.passages} passages x {wl.passage_len} tokens = {wl.encoder_tokens:,} encoder "
              f"tokens per sample, {wl.target_len} target tokens, batch {wl.batch}, {wl.weight_dtype}")
        print(f"{tpu.name}: {tpu.peak('bf16') / 1e12:.0f} TFLOP/s bf16, "
              f"{tpu.hbm_bytes_per_s / 1e12:.2f} TB/s "
              f"HBM, ridge point {tpu.ridge_point('bf16'):.0f} FLOP/byte, "
              f"{tpu.hbm_capacity_bytes / 2**30:.0f} GiB HBM")
        """),
        md("""
        ## 1. The models

        FiD is T5 v1.1 reading 40 passages: each passage is encoded on its own, and the decoder
        cross-attends to all 10,240 encoder tokens. The ablation adds one change at a time to FiD-Base:
        LSA with K = 6 (cross-attention in decoder layers 6 and 12 only, as in Flaxformer's
        `architectures/fido`), then MQA on top, which is FiDO-Base (the shipped `fido-base` spec; a
        check below confirms the two are the same). The faster decoder then pays for a larger one:
        FiDO-Base-XL and FiDO-Large-XXL (FiDO-{encoder}-{decoder}), against FiD-Large and FiD-XL.
        "T5 v1.1 Base, 1 passage" is the same network reading a single passage, for scale.
        """),
        code("""
        fid_base = fp.load_model("fid-base")
        lsa = fp.override_model(fid_base, cross_attn_every=6)
        lsa_mqa = fp.override_model(fid_base, cross_attn_every=6, kv_heads=1)

        variants = {  # label -> (model, workload)
            "T5 v1.1 Base, 1 passage": (fid_base, wl.replace(passages=1)),
            "FiD-Base": (fid_base, wl),
            "+LSA (K=6)": (lsa, wl),
            "+MQA (LSA + MQA)": (lsa_mqa, wl),
            "FiDO-Base": (fp.load_model("fido-base"), wl),
            "FiD-Large": (fp.load_model("fid-large"), wl),
            "FiD-XL": (fp.load_model("fid-xl"), wl),
            "FiDO-Base-XL": (fp.load_model("fido-base-xl"), wl),
            "FiDO-Large-XXL": (fp.load_model("fido-large-xxl"), wl),
        }
        preds = {label: fp.predict(m, tpu, w) for label, (m, w) in variants.items()}

        pd.DataFrame([{
            "model": label,
            "encoder": f"{m.encoder.size}, {m.encoder.num_layers} layers",
            "decoder": f"{m.decoder.size}, {m.decoder.num_layers} layers",
            "query heads H": m.decoder.num_heads,
            "kv heads G": m.decoder.num_kv_heads,
            "K": m.decoder.cross_attn_every,
            "cross-attn layers": m.decoder.num_cross_layers,
            "params (M)": round(preds[label].memory["params"] / 1e6),
        } for label, (m, _) in variants.items()]).set_index("model")
        """),
        code("""
        # +MQA built by overriding FiD-Base must be the shipped FiDO-Base, op for op.
        cols = ["op", "flops", "bytes", "time_s"]
        assert preds["+MQA (LSA + MQA)"].ops[cols].equals(preds["FiDO-Base"].ops[cols])
        print("+MQA (LSA + MQA) and FiDO-Base: identical operator tables")
        """),
        md("""
        ## 2. FLOPs per component

        Per sample. The **encoder** runs once over all passages. The **cross-attention K/V projection**
        turns the encoder output into the keys and values of each cross-attention layer, once per sample:
        it runs over all 10,240 tokens like encoder work, although its weights belong to the decoder.
        The **decoder** column sums the 32 decoding steps. The paper: FiD "devotes an order of magnitude
        more FLOPs to the encoder than the decoder".
        """),
        code("""
        flops = pd.DataFrame([{
            "model": label,
            "encoder (GFLOP)": t["encoder_flops"] / 1e9,
            "K/V projection (GFLOP)": t["cross_kv_flops"] / 1e9,
            "decoder, 32 steps (GFLOP)": t["decoder_flops"] / 1e9,
            "total (GFLOP)": t["total_flops"] / 1e9,
            "encoder / decoder": t["encoder_flops"] / t["decoder_flops"],
            "encoder / (decoder + K/V proj.)":
                t["encoder_flops"] / (t["decoder_flops"] + t["cross_kv_flops"]),
        } for label, p in preds.items() for t in [p.totals]]).set_index("model")
        flops.round(1)
        """),
        code("""
        f = flops.loc["FiD-Base"]
        display(Markdown(
            f"In FiD-Base the encoder does **{f['encoder / decoder']:.0f}x** the decoder's FLOPs, and still "
            f"**{f['encoder / (decoder + K/V proj.)']:.1f}x** when the K/V projection counts as "
            "decoder work. LSA drops "
            f"{1 - flops.loc['+LSA (K=6)', 'K/V projection (GFLOP)'] / f['K/V projection (GFLOP)']:.0%} "
            "of the K/V projection (only the cross-attention layers need keys and values). By FLOPs alone, "
            "FiD's decoder would hardly matter."))
        """),
        md("""
        ## 3. Bytes per component

        Bytes moved to or from HBM per sample. Weights are read once per decoding step for the whole
        batch, so a sample's share is 1/24 of them. The decoder's bytes are split by source: weights,
        activations, its own self-attention cache, and the **cross-attention keys and values**, which
        every step reads in full for every sample (2 x cross-attention layers x 10,240 tokens x kv heads
        x 64 x 2 bytes).
        """),
        code("""
        rows = []
        for label, p in preds.items():
            t, B = p.totals, p.workload.batch
            dec = p.ops[p.ops["phase"] == "decoder"]
            rows.append({
                "model": label,
                "encoder (GB)": t["encoder_bytes"] / 1e9,
                "K/V proj. (GB)": t["cross_kv_bytes"] / 1e9,
                "decoder (GB)": t["decoder_bytes"] / 1e9,
                "dec. weights (GB)": dec["weight_bytes"].sum() / B / 1e9,
                "dec. activations (GB)": dec["act_bytes"].sum() / B / 1e9,
                "dec. self-attn K/V (GB)": dec["self_kv_bytes"].sum() / B / 1e9,
                "dec. cross-attn K/V (GB)": dec["cross_kv_bytes"].sum() / B / 1e9,
                "decoder FLOP/byte": t["decoder_flops"] / t["decoder_bytes"],
                "cross-attn K/V cache, batch (GB)": p.memory["cross_kv_bytes"] / 1e9,
            })
        nbytes = pd.DataFrame(rows).set_index("model")
        nbytes.round(3)
        """),
        code("""
        b, o = nbytes.loc["FiD-Base"], nbytes.loc["FiDO-Base"]
        display(Markdown(
            f"FiD-Base's decoder moves **{b['decoder (GB)']:.1f} GB** per sample, "
            f"{b['dec. cross-attn K/V (GB)'] / b['decoder (GB)']:.0%} of it cross-attention keys and values: "
            f"the same {b['cross-attn K/V cache, batch (GB)']:.1f} GB cache (whole batch) is read at "
            "every one "
            f"of the {wl.target_len} steps. LSA reads it in 2 layers instead of 12 and MQA keeps 1 key/value "
            f"head instead of 12: FiDO-Base's decoder moves **{o['decoder (GB)']:.2f} GB** per sample "
            f"({b['decoder (GB)'] / o['decoder (GB)']:.0f}x less), now "
            f"{o['dec. weights (GB)'] / o['decoder (GB)']:.0%} weights. The decoder's FLOPs per byte stay "
            f"between {nbytes['decoder FLOP/byte'].min():.1f} and {nbytes['decoder FLOP/byte'].max():.1f} in "
            f"every model, against a ridge point of {tpu.ridge_point('bf16'):.0f}."))
        """),
        md("""
        ## 4. Operational intensity of the decoder's operators

        Every decoder operator (layers and the 32 steps summed) against the TPU v4 ridge point,
        275e12 FLOP/s / 1.2e12 B/s = 229 FLOP/byte. With multi-head attention, cross-attention does about
        1 FLOP per byte whatever the batch, because each sample's keys and values are its own; with one
        key/value head each byte read serves all 12 query heads.
        """),
        code("""
        ridge = tpu.ridge_point(wl.compute_dtype)
        dec_ops = {label: summed_over_layers(preds[label].ops).query("phase == 'decoder'").set_index("op")
                   for label in ("FiD-Base", "FiDO-Base")}
        fid, fido = dec_ops["FiD-Base"], dec_ops["FiDO-Base"]
        intensity = pd.DataFrame({
            "FiD-Base FLOP/byte": fid["intensity"],
            "FiD-Base % of decoder time": 100 * fid["time_s"] / fid["time_s"].sum(),
            "FiDO-Base FLOP/byte": fido["intensity"].reindex(fid.index),
            "FiDO-Base % of decoder time": (100 * fido["time_s"] / fido["time_s"].sum()).reindex(fid.index),
            "FiDO-Base bound": fido["bound"].reindex(fid.index),
        }).sort_values("FiD-Base % of decoder time", ascending=False)
        print(f"ridge point of {tpu.name} (bf16): {ridge:.0f} FLOP/byte; operators under 0.1% of both "
              "decoders' time are left out")
        intensity[(intensity["FiD-Base % of decoder time"] >= 0.1)
                  | (intensity["FiDO-Base % of decoder time"] >= 0.1)].round(2)
        """),
        code("""
        fig, ax = plt.subplots(figsize=(8.5, 5.8))
        plots.roofline(ax, [tpu],
                       plots.roofline_points_many([preds["FiD-Base"], preds["FiDO-Base"]],
                                                  ["FiD-Base", "FiDO-Base"]),
                       title=f"FiD-Base and FiDO-Base on {tpu.name}: {plots.workload_text(wl)}")
        plt.show()
        """),
        code("""
        def cross_share(ops):
            return ops.filter(like="cross_attn", axis=0)["time_s"].sum() / ops["time_s"].sum()


        display(Markdown(
            "The encoder's matmuls (circles, hundreds of FLOP/byte) sit on the compute roof; its attention "
            "scores, softmax, norms and residuals, which fidoperf charges as HBM traffic (no fused "
            "attention), sit on the bandwidth roof. Every decoder operator (triangles) is memory-bound, the "
            f"densest at {max(fid['intensity'].max(), fido['intensity'].max()):.0f} FLOP/byte (the weight "
            f"matmuls: 24 rows per weight read) against the ridge at {ridge:.0f}. MQA moves cross-attention "
            f"right (arrows): {fid.loc['cross_attn_logits', 'intensity']:.1f} -> "
            f"{fido.loc['cross_attn_logits', 'intensity']:.1f} FLOP/byte. Cross-attention takes "
            f"{cross_share(fid):.0%} of FiD-Base's decoder time and {cross_share(fido):.0%} of FiDO-Base's."))
        """),
        md("""
        ## 5. Time per sample

        `predict` charges each operator max(FLOPs / peak, bytes / bandwidth), the roofline: compute and
        memory overlap perfectly at 100% of peak and of bandwidth, a lower bound. The last column is the
        upper bound, compute and memory time added (`Settings(overlap="no_overlap")`).
        """),
        code("""
        upper = fp.Settings(overlap="no_overlap")
        timed = [label for label in preds if label != "T5 v1.1 Base, 1 passage"]


        def time_row(label, p, base):
            t, b = p.totals, base.totals
            return {
                "model": label,
                "encoder (ms)": 1e3 * t["encoder_time_s"],
                "K/V proj. (ms)": 1e3 * t["cross_kv_time_s"],
                "decoder (ms)": 1e3 * t["decoder_time_s"],
                "total (ms)": 1e3 * t["time_per_sample_s"],
                "decoder share (%)": 100 * t["decoder_share_of_time"],
                "speedup vs FiD-Base": b["time_per_sample_s"] / t["time_per_sample_s"],
                "decoder speedup vs FiD-Base": b["decoder_time_s"] / t["decoder_time_s"],
                "largest batch": t["max_batch"],
            }


        rows = []
        for label in timed:
            m, w = variants[label]
            row = time_row(label, preds[label], preds["FiD-Base"])
            row["total, no overlap (ms)"] = 1e3 * fp.predict(m, tpu, w, upper).totals["time_per_sample_s"]
            rows.append(row)
            for warning in preds[label].warnings:
                print(f"{label}: {warning}")
        times = pd.DataFrame(rows).set_index("model")
        times.round(2)
        """),
        code("""
        # Two panels with their own scales: Base encoders, then Large and XL encoders.
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), width_ratios=[4, 3])
        for ax, labels, title in (
            (left, ["FiD-Base", "+LSA (K=6)", "FiDO-Base", "FiDO-Base-XL"], "Base encoder"),
            (right, ["FiD-Large", "FiDO-Large-XXL", "FiD-XL"], "Large and XL encoders"),
        ):
            plots.breakdown(ax, plots.breakdown_table([preds[label] for label in labels], labels),
                            title=f"{title}: time per sample on {tpu.name}, roofline")
        left.get_legend().remove()
        fig.suptitle(plots.workload_text(wl), fontsize=9, y=0.02, va="bottom")
        fig.subplots_adjust(wspace=0.25, bottom=0.16)
        plt.show()
        """),
        md("""
        ## 6. The paper's claims next to the roofline

        Each row: the claim as the paper states it, what fidoperf predicts for it on TPU v4, and whether
        the two agree (the test is written next to the verdict).
        """),
        code("""
        T = {label: p.totals for label, p in preds.items()}
        fb, fo, xxl, bxl = T["FiD-Base"], T["FiDO-Base"], T["FiDO-Large-XXL"], T["FiDO-Base-XL"]
        enc_to_dec = fb["encoder_flops"] / fb["decoder_flops"]
        enc_to_dec_kv = fb["encoder_flops"] / (fb["decoder_flops"] + fb["cross_kv_flops"])
        share = fb["decoder_share_of_time"]
        share_kv = (fb["decoder_time_s"] + fb["cross_kv_time_s"]) / fb["time_per_sample_s"]
        speedup = fb["time_per_sample_s"] / fo["time_per_sample_s"]
        dec_speedup = fb["decoder_time_s"] / fo["decoder_time_s"]


        def verdict(ok, test):
            return ("yes" if ok else "no") + f" (test: {test})"


        claims = pd.DataFrame([
            {"FiDO paper": 'FiD "devotes an order of magnitude more FLOPs to the encoder than the decoder"',
             "fidoperf, FiD-Base": f"encoder / decoder FLOPs {enc_to_dec:.0f}x; {enc_to_dec_kv:.1f}x "
                                   "with the K/V projection counted as decoder",
             "agrees": verdict(enc_to_dec >= 10, "ratio >= 10")},
            {"FiDO paper": '"the majority of inference time is actually spent in the decoder"',
             "fidoperf, FiD-Base": f"decoder {share:.0%} of the time; {share_kv:.0%} with the K/V projection",
             "agrees": verdict(share > 0.5, "share > 50%")},
            {"FiDO paper": 'LSA and MQA "speed up inference by 7x"',
             "fidoperf, FiD-Base": f"FiDO-Base {speedup:.2f}x faster end to end; "
                                   f"its decoder {dec_speedup:.0f}x",
             "agrees": verdict(speedup >= 7, "end to end >= 7x")},
            {"FiDO paper": '"FiDO-Large-XXL performs faster inference than FiD-Base"',
             "fidoperf, FiD-Base": f"FiDO-Large-XXL {1e3 * xxl['time_per_sample_s']:.1f} ms, FiD-Base "
                                   f"{1e3 * fb['time_per_sample_s']:.1f} ms (FiDO-Base-XL "
                                   f"{1e3 * bxl['time_per_sample_s']:.1f} ms)",
             "agrees": verdict(xxl["time_per_sample_s"] < fb["time_per_sample_s"], "faster per sample")},
        ])
        display(Markdown(text_table(claims, markdown=True)))
        """),
        md("""
        **What would have to be true.** Split each model's time into prefill P (encoder and K/V
        projection: large matmuls, mostly compute-bound) and decoder D (memory-bound), and suppose the
        real decoder runs s times slower than its bandwidth roof while prefill runs at its roofline. The
        end-to-end speedup is then (P_FiD + s D_FiD) / (P_FiDO + s D_FiDO); solve for the s that each
        claim needs. The formula uses only the predicted phase times above.
        """),
        code("""
        def prefill(t):
            return t["encoder_time_s"] + t["cross_kv_time_s"]


        s_7x = (7 * prefill(fo) - prefill(fb)) / (fb["decoder_time_s"] - 7 * fo["decoder_time_s"])
        s_xxl = (prefill(xxl) - prefill(fb)) / (fb["decoder_time_s"] - xxl["decoder_time_s"])
        share_7x = s_7x * fb["decoder_time_s"] / (prefill(fb) + s_7x * fb["decoder_time_s"])
        enc_ops = summed_over_layers(preds["FiD-Base"].ops).query("phase == 'encoder'")
        enc_mem = enc_ops.loc[enc_ops["bound"] == "memory", "time_s"].sum() / enc_ops["time_s"].sum()
        print(f"7x end to end needs s = {s_7x:.1f}: the decoder at {1 / s_7x:.0%} of HBM bandwidth; "
              f"FiD-Base would then spend {share_7x:.0%} of its time decoding")
        print(f"FiDO-Large-XXL faster than FiD-Base needs s > {s_xxl:.0f}: the decoder under "
              f"{1 / s_xxl:.1%} of HBM bandwidth")
        """),
        code("""
        display(Markdown(f\"\"\"
        **Takeaway.** The pure roofline agrees with the paper on the mechanism: FiD's decoder is
        memory-bound at about 1 FLOP per byte because every step reads every sample's cross-attention keys
        and values, and LSA and MQA cut those bytes so that FiDO-Base's decoder is **{dec_speedup:.0f}x**
        faster. It does not reproduce the end-to-end figures. At 100% of peak for the encoder and 100% of
        bandwidth for the decoder, FiD-Base already spends {1 - share_kv:.0%} of its time in the encoder
        ({enc_mem:.0%} of the encoder's {1e3 * fb['encoder_time_s']:.1f} ms is memory-bound: fidoperf
        charges its attention scores, softmax and norms as HBM traffic, no fused attention), so even a
        free decoder and K/V projection would make it at most {1 / (1 - share_kv):.2f}x faster; FiDO-Base
        gets **{speedup:.2f}x**, not 7x. 7x needs the real decoder about **{s_7x:.0f}x** slower than its
        bandwidth roof (~{1 / s_7x:.0%} of HBM bandwidth) while prefill runs at its roofline; plausible for
        small, latency-bound decoding steps (Pope et al. report 33% of peak FLOPs for large-batch decoding
        against 76% for prefill). The FiDO-Large-XXL claim would need s > {s_xxl:.0f}, since the Large
        encoder alone ({1e3 * prefill(xxl):.0f} ms with the K/V projection) costs more than all of
        FiD-Base ({1e3 * fb['time_per_sample_s']:.0f} ms): the roofline cannot reach it in this setting,
        and the paper's exact setting (passages, batch, K, chips) is not confirmed. FiDO-Base-XL does beat
        FiD-Base here ({1e3 * bxl['time_per_sample_s']:.1f} vs {1e3 * fb['time_per_sample_s']:.1f} ms).
        \"\"\"))
        """),
        md("""
        ## 7. A100 and H100

        The same models on `a100-80gb` and `h100-sxm` (datasheet figures, dense bf16, pure roofline).
        The ridge point says how many FLOPs per byte an operator needs to be compute-bound.
        """),
        code("""
        chips = [fp.load_hardware(name) for name in ("tpu-v4", "a100-80gb", "h100-sxm")]
        pd.DataFrame([{
            "chip": h.name,
            "bf16 peak (TFLOP/s)": h.peak("bf16") / 1e12,
            "HBM bandwidth (TB/s)": h.hbm_bytes_per_s / 1e12,
            "ridge point (FLOP/byte)": h.ridge_point("bf16"),
            "HBM capacity (GB)": h.hbm_capacity_bytes / 1e9,
        } for h in chips]).set_index("chip").round(2)
        """),
        code("""
        rows = []
        for h in chips:
            on_chip = {label: fp.predict(variants[label][0], h, variants[label][1]) for label in timed}
            for label in timed:
                row = time_row(label, on_chip[label], on_chip["FiD-Base"])
                rows.append({"chip": h.name, **row, "fits": on_chip[label].memory["fits"]})
        by_chip = pd.DataFrame(rows)
        table = by_chip.pivot(index="model", columns="chip",
                              values=["total (ms)", "decoder share (%)", "speedup vs FiD-Base"])
        table.loc[timed, [(v, h.name) for v in table.columns.levels[0] for h in chips]].round(2)
        """),
        code("""
        g = by_chip.set_index(["chip", "model"])
        ridges = {h.name: h.ridge_point("bf16") for h in chips}
        lo, hi = min(ridges, key=ridges.get), max(ridges, key=ridges.get)
        share_of = {h.name: g.loc[(h.name, "FiD-Base"), "decoder share (%)"] for h in chips}
        sp = [g.loc[(h.name, "FiDO-Base"), "speedup vs FiD-Base"] for h in chips]
        dsp = [g.loc[(h.name, "FiDO-Base"), "decoder speedup vs FiD-Base"] for h in chips]
        no_fit = sorted({f"{m} on {c}" for (c, m), ok in g["fits"].items() if not ok})


        def span(values, fmt):
            lo_text, hi_text = format(min(values), fmt), format(max(values), fmt)
            return lo_text if lo_text == hi_text else f"{lo_text}-{hi_text}"


        a100, h100 = chips[1], chips[2]
        display(Markdown(
            f"**Takeaway.** {lo} has the lowest ridge point ({ridges[lo]:.0f} FLOP/byte), {hi} the highest "
            f"({ridges[hi]:.0f}): H100 has {h100.peak('bf16') / a100.peak('bf16'):.1f}x A100's bf16 "
            f"FLOP/s but {h100.hbm_bytes_per_s / a100.hbm_bytes_per_s:.1f}x its bandwidth, so the "
            "memory-bound decoder's share of FiD-Base's time is "
            f"{', '.join(f'{share_of[c]:.0f}% on {c}' for c in share_of)}. The ranking does not change: "
            f"FiDO-Base is {span(sp, '.1f')}x faster than FiD-Base end to end on all three chips and its "
            f"decoder {span(dsp, '.0f')}x faster (every decoder operator is memory-bound on every chip, so "
            "the decoder's speedup is its ratio of bytes). Predicted anyway although the batch of "
            f"{wl.batch} does not fit in memory: {', '.join(no_fit) or 'none'}."))
        """),
        code("""
        # One machine-readable line of key numbers (SI units in the keys); tests/test_notebooks.py checks it.
        key_numbers = {
            "hardware": tpu.name,
            "batch": wl.batch,
            "passages": wl.passages,
            "fid_base_time_per_sample_s": fb["time_per_sample_s"],
            "fido_base_time_per_sample_s": fo["time_per_sample_s"],
            "fido_base_xl_time_per_sample_s": bxl["time_per_sample_s"],
            "fido_large_xxl_time_per_sample_s": xxl["time_per_sample_s"],
            "fid_base_decoder_share_of_time": share,
            "fid_base_encoder_to_decoder_flops": enc_to_dec,
            "fido_base_speedup": speedup,
            "fido_base_decoder_speedup": dec_speedup,
            "decoder_slowdown_for_7x": s_7x,
        }
        print("key numbers: " + json.dumps(key_numbers))
        """),
    ]


# --------------------------------------------------------------------------- 02


def cells_02() -> list[tuple[str, str]]:
    return [
        md("""
        # What if? Passages, batch, K, key/value heads, decoder size and chip

        A guided sweep with `fidoperf.sweep`: the roofline model over a grid of FiD/FiDO configurations,
        evaluated with numpy broadcasting (thousands of rows in well under a second). The base is FiD-Base
        on TPU v4 in the paper's setting (40 passages x 256 tokens, 32 target tokens, batch 24, bf16); each
        knob below replaces one field. Combinations that cannot exist (kv heads that do not divide the
        query heads) stay in the table with the reason, and rows whose batch does not fit in HBM are
        marked. All times are roofline predictions (100% of peak and bandwidth), not measurements. Units:
        ms, GB (1e9 B). Rebuild with `python notebooks/build_notebooks.py 02`.
        """),
        setup_code("""
        import time

        import matplotlib.pyplot as plt
        import pandas as pd
        from IPython.display import Markdown, display

        import fidoperf as fp
        from fidoperf.present import plots
        from fidoperf.present.fmt import text_table
        from fidoperf.present.plan_report import best_table, summary_line
        from fidoperf.whatif.plan import ASSUMPTIONS, plan
        from fidoperf.sweep import best, parse_vary, sweep

        pd.set_option("display.width", 160)
        pd.set_option("display.max_columns", 30)
        """),
        md("""
        ## 1. The grid

        The values are written as the CLI's `--vary` options (`fidoperf sweep --vary passages=10,20,...`);
        `parse_vary` reads them. K is the cross-attention period (K = 1: every decoder layer, FiD), kv heads
        G the key/value heads of the decoder's attention (1 = MQA, 12 = MHA for the Base decoder; for
        larger decoders the full count is 16 or 32, so 12 does not divide and those rows are errors).
        """),
        code("""
        vary = parse_vary([
            "passages=10,20,40,70,100",
            "batch=1,4,8,16,24,32,64,128",
            "cross_attn_every=1,2,3,6,12",
            "kv_heads=1,2,4,12",
            "decoder_size=base,large,xl",
            "hardware=tpu-v4,a100-80gb,h100-sxm",
        ])
        base_model, base_hw, base_wl = fp.load_model("fid-base"), fp.load_hardware("tpu-v4"), fp.Workload()
        t0 = time.perf_counter()
        grid = sweep(base_model, base_hw, base_wl, vary)
        elapsed = time.perf_counter() - t0
        ok = grid["error"].isna()
        print(f"{len(grid):,} configurations in {elapsed:.2f} s: {(~ok).sum():,} impossible, "
              f"{(ok & ~grid['fits']).sum():,} do not fit in HBM, {(ok & grid['fits']).sum():,} feasible")
        print(grid.loc[~ok, "error"].value_counts().to_string())
        """),
        code("""
        # The columns people read, in ms and GB.
        def view(df):
            return pd.DataFrame({
                "decoder": df["decoder_size"], "chip": df["hardware"], "passages": df["passages"],
                "batch": df["batch"], "K": df["cross_attn_every"], "kv heads": df["kv_heads"],
                "encoder+K/V (ms)": 1e3 * (df["encoder_time_s"] + df["cross_kv_time_s"]),
                "decoder (ms)": 1e3 * df["decoder_time_s"],
                "per sample (ms)": 1e3 * df["time_per_sample_s"],
                "batch latency (ms)": 1e3 * df["batch_time_s"],
                "samples/s": df["samples_per_s"],
                "memory (GB)": df["peak_memory_bytes"] / 1e9,
                "largest batch": df["max_batch"],
                "fits": df["fits"],
            }).round(2)


        # The paper's FiDO-Base point, and the knobs one at a time around it.
        fido = dict(passages=40, batch=24, cross_attn_every=6, kv_heads=1, decoder_size="base",
                    hardware="tpu-v4")


        def around(field):
            sel = ok.copy()
            for k, v in fido.items():
                if k != field:
                    sel &= grid[k] == v
            order = {v: i for i, v in enumerate(vary[field])}
            return grid[sel].sort_values(field, key=lambda s: s.map(order))


        view(around("cross_attn_every"))
        """),
        md("""
        ## 2. One knob at a time around FiDO-Base

        Each panel moves one field from the FiDO-Base point (40 passages, batch 24, K = 6, 1 kv head, Base
        decoder, TPU v4) and shows time per sample split into prefill (encoder and K/V projection) and
        decoder. Solid: FiDO-Base's configuration; dashed, for K and kv heads: the same with FiD's other
        setting (MHA, resp. K = 1), to show how the two changes interact.
        """),
        code("""
        fig, axes = plt.subplots(2, 3, figsize=(12, 6.4), constrained_layout=True)
        labels = {"passages": "passages", "batch": "batch size",
                  "cross_attn_every": "K (cross-attention period)", "kv_heads": "kv heads G",
                  "decoder_size": "decoder size", "hardware": "chip"}
        for ax, field in zip(axes.flat, labels):
            d = around(field)
            x = range(len(d)) if field in ("decoder_size", "hardware") else d[field]
            pre = 1e3 * (d["encoder_time_s"] + d["cross_kv_time_s"])
            ax.plot(x, pre, "o-", color="#4c72b0", label="prefill (encoder + K/V proj.)")
            ax.plot(x, 1e3 * d["decoder_time_s"], "^-", color="#c44e52", label="decoder, 32 steps")
            ax.plot(x, 1e3 * d["time_per_sample_s"], "s-", color="0.2", label="total")
            other = {"cross_attn_every": ("kv_heads", 12, "total with MHA (G = 12)"),
                     "kv_heads": ("cross_attn_every", 1, "total with K = 1")}.get(field)
            if other:
                key, value, text = other
                sel = ok & (grid[key] == value)
                for k, v in fido.items():
                    if k not in (field, key):
                        sel &= grid[k] == v
                alt = grid[sel].sort_values(field)
                ax.plot(alt[field], 1e3 * alt["time_per_sample_s"], "s--", color="0.5", label=text)
                ax.legend(fontsize=7, loc="upper right" if field == "cross_attn_every" else "center right",
                          handles=ax.get_lines()[-1:])
            if field in ("decoder_size", "hardware"):
                ax.set_xticks(list(x), d[field])
            if field in ("batch", "passages", "cross_attn_every", "kv_heads"):
                ax.set_xscale("log")
                ticks = [v for v in vary[field] if v != 24]  # 24 would overlap 32 on a log axis
                ax.set_xticks(ticks, [str(v) for v in ticks])
                ax.minorticks_off()
            ax.set_yscale("log")
            ax.set_xlabel(labels[field])
            ax.set_ylabel("time per sample (ms)")
            ax.grid(True, color="0.9", lw=0.6)
        axes.flat[0].legend(fontsize=7, loc="upper left")
        fig.suptitle("FiDO-Base on TPU v4, one field changed at a time (roofline)", fontsize=10)
        plt.show()
        """),
        code("""
        p40, p100 = around("passages").set_index("passages").loc[[40, 100]].itertuples()
        b1, b128 = around("batch").set_index("batch").loc[[1, 128]].itertuples()
        k = around("cross_attn_every").set_index("cross_attn_every")["time_per_sample_s"]
        hw = around("hardware").set_index("hardware")["time_per_sample_s"]
        display(Markdown(
            "From 40 to 100 passages FiDO-Base's time per sample grows "
            f"{p100.time_per_sample_s / p40.time_per_sample_s:.1f}x "
            "(the encoder is linear in passages; with MQA and K = 6 the decoder barely notices them). "
            "Batch 1 -> 128 cuts the decoder's time per sample "
            f"{b1.decoder_time_s / b128.decoder_time_s:.0f}x (weights "
            "are read once per step for the whole batch) but leaves prefill unchanged. K = 1 -> 12 gains "
            f"{k.loc[1] / k.loc[12]:.2f}x with MQA: once the cross-attention bytes are gone, the encoder "
            "sets the pace. "
            f"H100 is {hw.loc['tpu-v4'] / hw.loc['h100-sxm']:.1f}x faster than TPU v4 here and A100 "
            f"{hw.loc['tpu-v4'] / hw.loc['a100-80gb']:.1f}x."))
        """),
        md("""
        ## 3. K against kv heads

        Time per sample (ms) for the Base decoder in the paper's setting (40 passages, batch 24, TPU v4):
        rows K, columns kv heads G. FiD is the bottom-right corner (K = 1, G = 12), FiDO-Base K = 6, G = 1.
        """),
        code("""
        sel = ok & (grid["passages"] == 40) & (grid["batch"] == 24) & (grid["decoder_size"] == "base") \\
            & (grid["hardware"] == "tpu-v4")
        kg = grid[sel]
        total = kg.pivot(index="cross_attn_every", columns="kv_heads", values="time_per_sample_s") * 1e3
        decoder = kg.pivot(index="cross_attn_every", columns="kv_heads", values="decoder_time_s") * 1e3
        display(Markdown("**Time per sample (ms)**"))
        display(total.rename_axis(index="K", columns="kv heads G").round(2))
        display(Markdown("**Decoder time per sample, 32 steps (ms)**"))
        display(decoder.rename_axis(index="K", columns="kv heads G").round(3))
        fid_d = decoder.loc[1, 12]
        print(f"decoder: FiD (K=1, G=12) / FiDO (K=6, G=1) = {fid_d / decoder.loc[6, 1]:.1f}x; "
              f"LSA alone {fid_d / decoder.loc[6, 12]:.1f}x, MQA alone {fid_d / decoder.loc[1, 1]:.1f}x")
        """),
        md("""
        ## 4. The best configurations

        `best` keeps the rows that fit in HBM and meet a batch latency limit (here 1 s for the whole batch,
        prefill and all 32 steps) and returns the fastest per sample. The number of passages is a
        requirement of the application rather than a knob, so it is fixed at 40. The model knows speed,
        not answer quality: it always prefers the fewest cross-attention layers (largest K) and one
        key/value head, whereas the paper chose K = 6 and larger decoders for accuracy. Read these as the
        cost of each choice, not as recommendations.
        """),
        code("""
        at40 = grid[grid["passages"] == 40]
        top, qualifies = best(at40, top=5, time_limit_s=1.0)
        print(f"{qualifies.sum():,} of {len(at40):,} configurations at 40 passages fit and meet 1 s; "
              "the 5 fastest:")
        view(top)
        """),
        code("""
        # The fastest configuration of every (decoder size, chip) pair.
        winners = pd.concat([best(at40[(at40["decoder_size"] == size) & (at40["hardware"] == chip)],
                                  top=1, time_limit_s=1.0)[0]
                             for size in vary["decoder_size"] for chip in vary["hardware"]])
        view(winners)
        """),
        code("""
        w = winners.set_index(["decoder_size", "hardware"])["time_per_sample_s"]
        display(Markdown(
            "With LSA and MQA pushed to their limit, the decoder is cheap: an XL decoder costs "
            + ", ".join(f"{w.loc[('xl', chip)] / w.loc[('base', chip)] - 1:.0%} more on {chip}"
                        for chip in vary["hardware"])
            + " per sample than a Base decoder, because the Base encoder sets the cost. This is FiDO's "
            "argument "
            "for spending the decoder's saving on a larger decoder."))
        """),
        md("""
        The roofline and the time breakdown of the winners on TPU v4, one per decoder size, each predicted
        again with `predict` (the sweep promises the same numbers as `predict`; the printed difference
        checks it).
        """),
        code("""
        chosen = []
        for r in winners[winners["hardware"] == "tpu-v4"].itertuples():
            m = fp.override_model(base_model, decoder_size=r.decoder_size, kv_heads=int(r.kv_heads),
                                  cross_attn_every=int(r.cross_attn_every))
            m = m.replace(name=f"{r.decoder_size} decoder, K={r.cross_attn_every}, G={r.kv_heads}, "
                               f"batch {r.batch}")
            p = fp.predict(m, fp.load_hardware(r.hardware), base_wl.replace(batch=int(r.batch)))
            rel = abs(p.totals["time_per_sample_s"] / r.time_per_sample_s - 1)
            print(f"{m.name} on {r.hardware}: {1e3 * p.totals['time_per_sample_s']:.3f} ms per sample "
                  f"(sweep vs predict: {rel:.1e} relative)")
            chosen.append(p)
        """),
        code("""
        fig, ax = plt.subplots(figsize=(8.5, 5.8))
        hws = [fp.load_hardware(h) for h in dict.fromkeys(p.hardware.name for p in chosen)]
        plots.roofline(ax, hws, chosen, arrows=False,
                       title="Fastest configuration per decoder size on TPU v4 "
                             "(40 passages, <= 1 s per batch)")
        plt.show()
        """),
        code("""
        fig, ax = plt.subplots(figsize=(8, 4.6))
        labels = [p.model.name.replace(", batch", "\\nbatch").replace("decoder, ", "decoder\\n")
                  + f"\\n{p.hardware.name}" for p in chosen]
        plots.breakdown(ax, plots.breakdown_table(chosen, labels),
                        title="Time per sample of the fastest configuration per decoder size on TPU v4")
        plt.show()
        """),
        md("""
        ## 5. Decoder time per step against batch

        One decoding step of the whole batch (ms), averaged over the 32 steps, for FiD-Base, FiDO-Base and
        FiDO-Base-XL on TPU v4 with 10, 40 and 100 passages. Weights are read once per step whatever the
        batch; each sample adds its own cross-attention keys and values. Hollow markers: the batch does not
        fit in 32 GiB.
        """),
        code("""
        step_models = [fp.load_model(m) for m in ("fid-base", "fido-base", "fido-base-xl")]
        steps = plots.decoder_step_table(step_models, base_hw)
        fig, ax = plt.subplots(figsize=(8.5, 5.2))
        plots.decoder_step_vs(ax, steps, title=f"Decoder time per step on {base_hw.name} (roofline)")
        plt.show()
        """),
        code("""
        ms = 1e3 * steps[steps["passages"] == 40].set_index(["model", "batch"])["time_per_step_s"]
        per_sample = {m: ms.loc[(m, 64)] / 64 for m in ("fid-base", "fido-base", "fido-base-xl")}
        display(Markdown(
            f"At 40 passages a FiD-Base step takes {ms.loc[('fid-base', 1)]:.2f} ms at batch 1 and "
            f"{ms.loc[('fid-base', 64)]:.1f} ms at batch 64 "
            f"({ms.loc[('fid-base', 64)] / ms.loc[('fid-base', 1)]:.0f}x): almost linear in the batch, "
            "because each sample brings its own cross-attention cache. FiDO-Base's "
            f"step grows from {ms.loc[('fido-base', 1)]:.2f} to {ms.loc[('fido-base', 64)]:.2f} ms "
            f"({ms.loc[('fido-base', 64)] / ms.loc[('fido-base', 1)]:.1f}x): it is mostly the weight "
            "read, shared by the batch. Per sample at batch 64: "
            + ", ".join(f"{m} {v:.3f} ms" for m, v in per_sample.items())
            + " per step: FiDO-Base-XL's much larger decoder still costs less per step than FiD-Base's."))
        """),
        md("""
        ## 6. A capacity plan

        `fidoperf.plan` answers: how many chips, at which batch size, serve **200 queries/s with at most
        1 s latency** per query, for each model and chip? Latency is the time of the whole batch a query is
        served in; every chip holds a full copy of the model; the assumptions are printed below the table.
        Only TPU v4 has a list price in its profile: the GPUs have no cost and rank by chips after it.
        """),
        code("""
        plan_models = [fp.load_model(m) for m in ("fid-base", "fido-base", "fido-base-xl", "fido-large-xxl")]
        plan_hw = [fp.load_hardware(h) for h in ("tpu-v4", "a100-80gb", "h100-sxm")]
        capacity = plan(plan_models, plan_hw, base_wl, qps=200, latency_ms=1000)
        print(summary_line(capacity))
        display(Markdown(text_table(best_table(capacity), markdown=True)))
        for note in capacity.notes:
            print("note:", note)
        """),
        code("""
        display(Markdown("**Assumptions**\\n\\n" + "\\n".join(f"- {a}" for a in ASSUMPTIONS)))
        """),
        code("""
        for title, caption, ax in plots.plan_figures(capacity):
            display(Markdown(f"**{title}.** {caption}"))
            display(ax.figure)
        """),
        code("""
        b = capacity.best[capacity.best["feasible"]]
        chips_by = b.pivot(index="model", columns="hardware", values="chips")
        display(Markdown("**Chips needed for 200 queries/s within 1 s**"))
        display(chips_by.loc[[m.name for m in plan_models], [h.name for h in plan_hw]])
        fewest = b.sort_values(["chips", "batch_time_s"]).iloc[0]


        def chips_of(model):
            return ", ".join(f"{int(chips_by.loc[model, h.name])} {h.name}" for h in plan_hw)


        display(Markdown(
            f"Fewest chips: {int(fewest['chips'])} x {fewest['hardware']} running {fewest['model']} at batch "
            f"{int(fewest['batch'])} (latency {1e3 * fewest['batch_time_s']:.0f} ms). FiD-Base needs "
            f"{chips_of('fid-base')}; FiDO-Base {chips_of('fido-base')}; FiDO-Base-XL, with its XL decoder, "
            f"{chips_of('fido-base-xl')}; FiDO-Large-XXL {chips_of('fido-large-xxl')}. Queueing delay is not "
            "counted (see the assumptions), so a real deployment needs some headroom on top."))
        """),
    ]


# --------------------------------------------------------------------------- 03


def cells_03() -> list[tuple[str, str]]:
    return [
        md("""
        # Validation on this machine: predicted against measured

        fidoperf's claim to usefulness is that its predictions, made from a measured hardware profile,
        match what JAX actually takes. This notebook checks it end to end on whatever device runs it:

        1. calibrate this device (`fidoperf.measure.calibrate.calibrate("quick")`: peak matmul rate, streaming
           bandwidth by size, small-matmul and attention efficiency by rows, fixed costs per call and op;
           generic kernels, never the layers below);
        2. run the quick benchmark suite (`fidoperf.measure.bench.suite("quick")`: encoder layer, cross-attention
           K/V projection, decoder layers and whole decoding steps with MHA and MQA, LSA; fp32, small
           shapes) and predict each case from the calibrated profile;
        3. compare: error statistics (`fidoperf.measure.validate.summary`) and a parity plot.

        **The numbers below come from the machine that executed this notebook**, at that moment (see the
        next cell); on a shared 2-core CPU single timings move by 5-25% between runs. The full
        validation (full calibration, full suite of decoder sizes, batches, passages, K and kv heads) lives in
        `benchmarks/results/` (`fidoperf validate --suite full --calibration full`). Runs in under a minute
        on 2 CPU cores. Rebuild with `python notebooks/build_notebooks.py 03`.
        """),
        setup_code("""
        import json
        import time

        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        from IPython.display import Markdown, display
        from matplotlib.ticker import FuncFormatter, LogLocator

        from fidoperf.measure import bench, validate
        from fidoperf.present.report import validation_table
        from fidoperf.measure.calibrate import calibrate
        from fidoperf.specs import hardware_from_dict
        from fidoperf.measure.timing import environment

        pd.set_option("display.width", 160)
        pd.set_option("display.max_colwidth", 80)
        env = environment()
        print(f"executed on {env['host']}: {env['cpu'] or env['device']} ({env['platform']}, "
              f"{env['cpu_threads_available']} threads), {env['date']}")
        print(f"jax {env['jax']}, jaxlib {env['jaxlib']}, numpy {env['numpy']}, python {env['python']}, "
              f"load average {env['load_average_1min']:.2f}")
        """),
        md("""
        ## 1. Calibrate this device

        The profile is a plain dict in the shipped YAML schema (`fidoperf calibrate -o FILE` writes the
        same); `hardware_from_dict` validates it into the `Hardware` the predictions use. Nothing is
        written to disk.
        """),
        code("""
        t0 = time.perf_counter()
        profile = calibrate("quick", ("fp32",))
        hw = hardware_from_dict(profile, "profile calibrated in this notebook")
        calibration_s = time.perf_counter() - t0
        print(f"calibration (quick): {calibration_s:.0f} s")
        print(f"peak fp32 matmul {hw.peak('fp32') / 1e9:.0f} GFLOP/s; "
              f"best cold streaming {hw.hbm_bytes_per_s / 1e9:.1f} GB/s; "
              f"ridge point {hw.ridge_point('fp32'):.1f} FLOP/byte")
        print(f"fixed costs: {1e6 * hw.overhead_s_per_call:.1f} µs per call, "
              f"{1e6 * hw.overhead_s_per_op:.2f} µs per op")
        pd.DataFrame([{
            "efficiency curve": name,
            "by": curve.axis,
            "points (size: fraction of peak)": ", ".join(
                f"{x:.3g}: {e:.2f}" if curve.axis == "rows" else f"{x / 2**20:.3g} MiB: {e:.2f}"
                for x, e in curve.points),
        } for name, curve in hw.efficiency.items() if len(curve.points) > 1]).set_index("efficiency curve")
        """),
        md("""
        ## 2. Run the quick suite

        Each case is one jitted function of fixed shapes, compiled outside the timer, warmed up, timed
        with `block_until_ready` over inputs rotated through enough copies to be read cold, median of at
        least 7 calls. `run_cases` also predicts every case from the profile above and counts the model's
        FLOPs and bytes against XLA's cost analysis.
        """),
        code("""
        cases = bench.suite("quick")
        t0 = time.perf_counter()
        records, skipped = bench.run_cases(cases, hw, progress=False)
        bench_s = time.perf_counter() - t0
        results = pd.DataFrame(records)
        results.index = pd.RangeIndex(1, len(results) + 1, name="#")
        print(f"{len(records)} of {len(cases)} cases in {bench_s:.0f} s; skipped: "
              + ("; ".join(f"{s['case']} ({s['reason']})" for s in skipped) or "none"))
        validation_table(results).set_index(results.index)
        """),
        md("""
        ## 3. Predicted against measured

        Relative error = (predicted - measured) / measured. The speedups compare decoding steps that
        differ only in the attention variant and K (MQA + LSA K = 6 over MHA K = 1). The XLA cross-check
        compares the model's matmul FLOPs with those of the lowered program's dot operations.
        """),
        code("""
        stats = validate.summary(results)
        print(validate.summary_text(stats))
        """),
        code("""
        fig, ax = plt.subplots(figsize=(7, 6.2))
        meas, pred = 1e3 * results["measured_s"], 1e3 * results["predicted_s"]
        lo = min(meas.min(), pred.min()) / 1.6
        hi = max(meas.max(), pred.max()) * 1.6
        xs = np.geomspace(lo, hi, 200)
        ax.fill_between(xs, 0.7 * xs, 1.3 * xs, color="0.93", lw=0, label="±30%")
        ax.fill_between(xs, 0.85 * xs, 1.15 * xs, color="0.83", lw=0, label="±15%")
        ax.plot(xs, xs, color="0.2", lw=1, label="y = x (prediction = measurement)")
        markers = {"encoder_layer": "o", "cross_kv": "s", "decoder_layer": "^", "decoder_step": "D",
                   "generate": "*"}
        for kind, g in results.groupby("kind", sort=False):
            xerr = 1e3 * np.vstack([g["measured_s"] - g["q1_s"], g["q3_s"] - g["measured_s"]]).clip(min=0)
            ax.errorbar(1e3 * g["measured_s"], 1e3 * g["predicted_s"], xerr=xerr, ls="none",
                        marker=markers.get(kind, "o"), ms=7, capsize=2, label=kind.replace("_", " "),
                        zorder=3)
        for i, (x, y) in enumerate(zip(meas, pred), start=1):
            ax.annotate(str(i), (x, y), xytext=(5, -11), textcoords="offset points", fontsize=8, color="0.25")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # ticks at 1, 2, 5 x 10^n, written as plain numbers
            axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_locator(LogLocator(base=10, subs=(3, 4, 6, 7, 8, 9)))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("measured time per call (ms), median; bars: interquartile range")
        ax.set_ylabel("predicted time per call (ms)")
        ax.set_title(f"fidoperf quick suite, calibrated profile, {env['platform']}: "
                     f"{env['cpu'] or env['device']}\\n"
                     f"{env['date']}; numbers: rows of the table above", fontsize=9)
        ax.grid(True, which="major", color="0.9", lw=0.6)
        ax.legend(fontsize=8, loc="upper left")
        plt.show()
        """),
        code("""
        err = (results["predicted_s"] - results["measured_s"]) / results["measured_s"]
        within15, within30 = int((err.abs() <= 0.15).sum()), int((err.abs() <= 0.30).sum())
        worst = err.abs().idxmax()
        lines = [
            f"On this machine {within15} of {len(err)} cases are within ±15% and {within30} within ±30%; "
            f"the median absolute error is {stats['median_abs_rel_error']:.0%} and the prediction is "
            f"{'high' if stats['median_rel_error'] > 0 else 'low'} by {abs(stats['median_rel_error']):.0%} "
            f"at the median. The worst case is #{worst} ({results.loc[worst, 'case']}): predicted "
            f"{1e3 * results.loc[worst, 'predicted_s']:.3g} ms, "
            f"measured {1e3 * results.loc[worst, 'measured_s']:.3g} ms.",
        ]
        for v in stats["speedups"].values():
            lines.append(f"{v['label']}: predicted {v['predicted']:.2f}x, measured {v['measured']:.2f}x.")
        noisy = stats["noisy_cases"]
        if noisy:
            lines.append(f"{noisy} timing{'s' if noisy > 1 else ''} had an interquartile range over 25% of "
                         "the median (flagged `!` in the table): noise from whatever else ran on the "
                         "machine.")
        display(Markdown(" ".join(lines)))
        """),
        md("""
        The quick suite is a smoke test of the whole chain (calibration, cost model, timing) with small
        shapes; cases under ~5 ms can differ by up to 2x between runs on a shared CPU. The calibration and
        the benchmarks run one after the other: if another process loads the CPU during only one of them,
        the compute-bound cases (encoder layer, K/V projection) err together by the same factor (compare
        the peak printed above with the ~190 GFLOP/s a quiet 2-core machine of this kind reaches), while
        speedups, ratios of two timings, suffer less. Judge the model by the full validation in
        `benchmarks/results/`.
        """),
        code("""
        # One machine-readable line (SI units in the keys); tests/test_notebooks.py checks it.
        print("validation: " + json.dumps({
            "device": env["device"], "platform": env["platform"], "date": env["date"],
            "cases": stats["cases"], "skipped": len(skipped),
            "median_abs_rel_error": stats["median_abs_rel_error"],
            "p90_abs_rel_error": stats["p90_abs_rel_error"],
            "calibration_s": calibration_s, "bench_s": bench_s,
        }))
        """),
    ]


# --------------------------------------------------------------------------- build and run

NOTEBOOKS = {
    "01_fido_analysis.ipynb": cells_01,
    "02_what_if.ipynb": cells_02,
    "03_validation.ipynb": cells_03,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with its cells and no outputs; cell ids are stable."""
    cells = []
    for i, (kind, source) in enumerate(NOTEBOOKS[name]()):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell["id"] = f"nb{name[:2]}-{i:02d}"
        cells.append(cell)
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python", "pygments_lexer": "ipython3"},
        },
    )
    nbformat.validate(nb)
    return nb


def jupyter_env(root: Path) -> dict[str, str]:
    """Environment variables that keep Jupyter, IPython and matplotlib out of the home
    directory, and a ``python3`` kernelspec under ``root`` that runs this interpreter."""
    dirs = {
        key: root / sub
        for key, sub in (
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_CONFIG_DIR", "config"),
            ("IPYTHONDIR", "ipython"),
            ("MPLCONFIGDIR", "matplotlib"),
        )
    }
    spec_dir = dirs["JUPYTER_DATA_DIR"] / "kernels" / KERNEL_NAME
    for d in [*dirs.values(), spec_dir]:
        d.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNELSPEC["display_name"],
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    # In a venv Jupyter searches the venv's kernelspecs before the user's: not here.
    return {key: str(d) for key, d in dirs.items()} | {"JUPYTER_PREFER_ENV_PATH": "0"}


def execute(nb: nbformat.NotebookNode, timeout_s: float) -> float:
    """Run every cell in a fresh kernel, in the notebooks folder, within ``timeout_s``
    for the whole notebook; raises on the first error. Returns the wall time (s)."""
    from nbclient import NotebookClient

    start = time.monotonic()
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(HERE)}},
        record_timing=False,
        timeout=int(timeout_s),
        timeout_func=lambda cell: max(1, int(timeout_s - (time.monotonic() - start))),
    )
    client.execute()
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to build (name prefixes, e.g. 01); default: all")
    ap.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    args = ap.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.names or any(n.startswith(p) for p in args.names)]
    if not names:
        ap.error(f"no notebook matches {args.names} (known: {', '.join(NOTEBOOKS)})")
    with tempfile.TemporaryDirectory(prefix="fidoperf-notebooks-") as tmp:
        saved = dict(os.environ)
        os.environ.update(jupyter_env(Path(tmp)))
        try:
            for name in names:
                nb = build(name)
                took = "" if args.no_execute else f", executed in {execute(nb, TIMEOUT_S[name[:2]]):.1f} s"
                path = HERE / name
                nbformat.write(nb, path)
                print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size / 1e3:.0f} kB){took}")
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
