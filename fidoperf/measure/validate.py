"""Predicted against measured: the validation table and its summary statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .timing import STABLE_WITHIN

# (label, what changes, from -> to) for the speedups of the FiDO changes, measured on
# decoder_step cases that agree in everything else.
SPEEDUPS = {
    "mqa": ("MQA over MHA (K=1)", {"attention": "MHA", "cross_attn_every": 1},
            {"attention": "MQA", "cross_attn_every": 1}),
    "lsa": ("LSA K=6 over K=1 (MHA)", {"attention": "MHA", "cross_attn_every": 1},
            {"attention": "MHA", "cross_attn_every": 6}),
    "lsa_k2": ("LSA K=2 over K=1 (MHA)", {"attention": "MHA", "cross_attn_every": 1},
               {"attention": "MHA", "cross_attn_every": 2}),
    "both": ("MQA + LSA K=6 over MHA K=1", {"attention": "MHA", "cross_attn_every": 1},
             {"attention": "MQA", "cross_attn_every": 6}),
}
PAIR_KEYS = ["decoder_size", "batch", "passages", "passage_len", "step", "dtype"]


def speedups(df: pd.DataFrame) -> dict:
    """Geometric-mean speedups, predicted and measured, over matching case pairs."""
    steps = df[df["kind"] == "decoder_step"]
    out = {}
    for key, (label, base, new) in SPEEDUPS.items():
        a = steps.loc[np.logical_and.reduce([steps[k] == v for k, v in base.items()])]
        b = steps.loc[np.logical_and.reduce([steps[k] == v for k, v in new.items()])]
        pairs = a.merge(b, on=PAIR_KEYS, suffixes=("_from", "_to"))
        if pairs.empty:
            continue
        pred = pairs["predicted_s_from"] / pairs["predicted_s_to"]
        meas = pairs["measured_s_from"] / pairs["measured_s_to"]
        gp, gm = float(np.exp(np.log(pred).mean())), float(np.exp(np.log(meas).mean()))
        out[key] = {"label": label, "pairs": int(len(pairs)), "predicted": gp, "measured": gm,
                    "rel_error": gp / gm - 1.0,
                    "per_pair": [{**{k: r[k] for k in PAIR_KEYS}, "predicted": float(p), "measured": float(m)}
                                 for (_, r), p, m in zip(pairs.iterrows(), pred, meas)]}
    return out


def summary(df: pd.DataFrame) -> dict:
    err = (df["predicted_s"] - df["measured_s"]) / df["measured_s"]
    abs_err = err.abs()
    by_kind = {k: {"cases": int(len(g)), "median_abs_rel_error": float(g.abs().median())}
               for k, g in err.groupby(df["kind"])}
    return {
        "cases": int(len(df)),
        "median_abs_rel_error": float(abs_err.median()),
        "p90_abs_rel_error": float(abs_err.quantile(0.9)),
        "median_rel_error": float(err.median()),
        "max_abs_rel_error": float(abs_err.max()),
        "noisy_cases": int(df["noisy"].sum()),
        "unsettled_cases": int((~df["settled"].astype(bool)).sum()),
        "by_kind": by_kind,
        "speedups": speedups(df),
        "xla_matmul_flops_ratio_range": [float(df["matmul_flops_ratio"].min()),
                                         float(df["matmul_flops_ratio"].max())],
        "xla_flops_ratio_range": [float(df["flops_ratio"].min()), float(df["flops_ratio"].max())],
        "xla_bytes_ratio_range": [float(df["bytes_ratio"].min()), float(df["bytes_ratio"].max())],
    }


def summary_text(s: dict) -> str:
    lines = [
        f"{s['cases']} cases: median |error| {100 * s['median_abs_rel_error']:.1f}%, "
        f"90th percentile {100 * s['p90_abs_rel_error']:.1f}%, max {100 * s['max_abs_rel_error']:.1f}% "
        f"(median signed {100 * s['median_rel_error']:+.1f}%); {s['noisy_cases']} noisy timings flagged, "
        f"{s['unsettled_cases']} whose timing runs never agreed within {100 * STABLE_WITHIN:g}%",
        "by kind: " + ", ".join(f"{k} {100 * v['median_abs_rel_error']:.1f}% ({v['cases']})"
                                for k, v in s["by_kind"].items()),
    ]
    for v in s["speedups"].values():
        lines.append(f"speedup {v['label']}: predicted {v['predicted']:.2f}x, measured {v['measured']:.2f}x "
                     f"({100 * v['rel_error']:+.1f}%, {v['pairs']} pairs)")
    lo, hi = s["xla_matmul_flops_ratio_range"]
    blo, bhi = s["xla_bytes_ratio_range"]
    lines.append(f"XLA cross-check: model/HLO matmul FLOPs {lo:.4f}-{hi:.4f}; "
                 f"model/XLA bytes accessed {blo:.2f}-{bhi:.2f}")
    return "\n".join(lines)
