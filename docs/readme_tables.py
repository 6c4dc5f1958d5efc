"""Print the README's model tables (Markdown) from the shipped profiles and models, so
that every figure there can be regenerated and checked:

    .venv/bin/python docs/readme_tables.py            # all tables
    .venv/bin/python docs/readme_tables.py kernels    # one of: paper, chips, efficiency, layouts, kernels

Nothing here is measured: these are predictions (and the sources of the parameters
behind them), in the FiDO paper's setting unless a table says otherwise.
"""

from __future__ import annotations

import sys

import fidoperf as fp
from fidoperf.costmodel.optable import op_table
from fidoperf.costmodel.prediction import Settings
from fidoperf.specs.layout import Layout

WL = fp.Workload()  # 40 passages x 256 tokens, 32 target tokens, batch 24, bf16


def ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def table(rows: list[list], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def chips() -> str:
    """FiD-Base, FiDO-Base and FiDO-Large-XXL per sample, roofline beside derated."""
    rows = []
    for hw_name in ("tpu-v4", "a100-80gb", "h100-sxm"):
        hw = fp.load_hardware(hw_name)
        for m in ("fid-base", "fido-base", "fido-large-xxl"):
            model = fp.load_model(m)
            r = fp.predict(model, hw, WL, Settings(efficiency="roofline")).totals
            d = fp.predict(model, hw, WL).totals
            rows.append([hw_name, hw.default_implementation, m, ms(r["time_per_sample_s"]), ms(d["time_per_sample_s"]),
                         f"{d['time_per_sample_s'] / r['time_per_sample_s']:.2f}x",
                         ms(d["encoder_time_s"]), ms(d["cross_kv_time_s"]), ms(d["decoder_time_s"])])
    return table(rows, ["chip", "implementation", "model", "roofline ms", "derated ms", "derated / roofline",
                        "encoder ms", "K/V proj. ms", "decoder ms"])


def paper() -> str:
    """What the derated TPU v4 model says of the FiDO paper's two claims."""
    hw = fp.load_hardware("tpu-v4")
    out = []
    for setting in ("derated", "roofline"):
        s = Settings(efficiency=setting)
        t = {m: fp.predict(fp.load_model(m), hw, WL, s).totals for m in ("fid-base", "fido-base", "fido-large-xxl")}
        out.append([setting, ms(t["fid-base"]["time_per_sample_s"]), ms(t["fido-base"]["time_per_sample_s"]),
                    f"{t['fid-base']['time_per_sample_s'] / t['fido-base']['time_per_sample_s']:.2f}x",
                    f"{t['fid-base']['decoder_time_s'] / t['fido-base']['decoder_time_s']:.1f}x",
                    ms(t["fido-large-xxl"]["time_per_sample_s"]),
                    f"{t['fid-base']['time_per_sample_s'] / t['fido-large-xxl']['time_per_sample_s']:.2f}x",
                    f"{100 * t['fid-base']['decoder_share_of_time']:.0f}%"])
    return table(out, ["TPU v4 model", "FiD-Base ms", "FiDO-Base ms", "FiDO-Base speedup (paper: ~7x)",
                       "decoder speedup", "FiDO-Large-XXL ms", "FiDO-Large-XXL vs FiD-Base (paper: faster, >1x)",
                       "FiD-Base decoder share (paper: majority)"])


def efficiency() -> str:
    """Every efficiency and kernel-model figure of the shipped profiles, with its source."""
    rows = []
    for name in fp.hardware_names():
        hw = fp.load_hardware(name)
        for key, c in sorted(hw.efficiency.items()):
            value = c.constant if c.constant is not None else ", ".join(f"{x:g}: {y:g}" for x, y in c.points)
            if c.constant == 1.0 and key == "compute":
                continue
            rows.append([name, f"efficiency.{key}", value, c.source.replace("|", "/")])
        for key, s in sorted(hw.kernel_model.sources.items()):
            rows.append([name, f"kernel_model.{key}", getattr(hw.kernel_model, key), s.source.replace("|", "/")])
        for key, s in sorted(hw.sources.items()):
            if key.startswith(("overhead_s_per_op", "dispatch_s_per_op")):
                rows.append([name, key, f"{s.value:g}", s.source.replace("|", "/")])
    return table(rows, ["profile", "figure", "value", "source"])


def layouts() -> str:
    """FiD-XXL, FiDO-Base-XL and FiDO-Large-XXL on 8 chips of TPU v4 and H100 SXM."""
    rows = []
    candidates = [Layout(chips=8, tensor_parallel=t) for t in (1, 2, 4, 8)]
    candidates += [Layout(encoder_chips=e, decoder_chips=8 - e, tensor_parallel=t)
                   for e, t in ((2, 1), (4, 1), (2, 2), (4, 2), (4, 4))]
    for hw_name in ("tpu-v4", "h100-sxm"):
        hw = fp.load_hardware(hw_name)
        for m in ("fid-xxl", "fido-base-xl", "fido-large-xxl"):
            model = fp.load_model(m)
            for lay in candidates:
                try:
                    p = fp.predict(model, hw, WL, layout=lay)
                except fp.SpecError:
                    continue  # tensor parallelism that does not split the heads
                t, mem = p.totals, p.memory
                if not mem["fits"]:
                    continue
                rows.append([hw_name, m, lay.label(), ms(t["time_per_sample_s"]), f"{t['samples_per_s']:.0f}",
                             f"{mem['peak_bytes'] / 1e9:.1f}",
                             f"{100 * t['comm_time_s'] / t['time_per_sample_s']:.0f}%",
                             layer_comm_share(p.ops, "encoder"), layer_comm_share(p.ops, "decoder"),
                             t.get("shipped", "").replace("_", " ")])
    return table(rows, ["chips", "model", "layout (batch 24 per replica)", "ms per sample (latency / 24)",
                        "samples/s (8 chips)", "GB per chip", "communication share", "of an encoder layer",
                        "of a decoder layer", "pools ship"])


def layer_comm_share(ops, phase: str) -> str:
    """The collectives' share of the time of the ``phase``'s layers (all layers together,
    so the decoder's average over layers with and without cross-attention)."""
    rows = ops[(ops["phase"] == phase) & (ops["layer"] >= 0)]
    total = rows["time_s"].sum()
    comm = rows.loc[rows["kind"] == "collective", "time_s"].sum()
    return f"{100 * comm / total:.0f}%" if total > 0 else "-"


def kernels() -> str:
    """A few single kernels on the GPUs the derated model is judged on, roofline beside derated."""
    rows = []
    shapes = [("gemm", {"m": 1, "n": 768, "k": 768}), ("gemm", {"m": 32, "n": 2048, "k": 768}),
              ("gemm", {"m": 4096, "n": 10240, "k": 4096}),
              ("decode_attention", {"batch": 1, "kv_len": 15, "heads": 32, "kv_heads": 8, "head_dim": 128}),
              ("decode_attention", {"batch": 64, "kv_len": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128}),
              ("prefill_attention", {"batch": 1, "seq_len": 2048, "heads": 32, "kv_heads": 8, "head_dim": 128,
                                     "causal": True}),
              ("all_reduce", {"bytes": 2**20, "chips": 8}), ("all_reduce", {"bytes": 2**29, "chips": 8})]
    for hw_name in ("h100-sxm", "h200", "a100-80gb", "l40s"):
        for kind, shape in shapes:
            cols = {k: [v] for k, v in shape.items()}
            d = op_table(kind, cols, hw_name).iloc[0]
            r = op_table(kind, cols, hw_name, efficiency="roofline").iloc[0] if "flops" in d else None
            label = ", ".join(f"{k}={v}" for k, v in shape.items())
            rows.append([hw_name, kind, label, f"{r['time_s'] * 1e6:.2f}" if r is not None else "-",
                         f"{d['time_s'] * 1e6:.2f}", d.get("bound", d.get("algorithm", ""))])
    return table(rows, ["chip", "kernel", "shape", "roofline µs", "derated µs", "bound / algorithm"])


TABLES = {"paper": paper, "chips": chips, "efficiency": efficiency, "layouts": layouts, "kernels": kernels}


def main(argv: list[str]) -> None:
    names = argv or list(TABLES)
    for name in names:
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r} (known: {', '.join(TABLES)})")
        print(f"### {name}\n\n{TABLES[name].__doc__}\n\n{TABLES[name]()}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
