"""Derive the GPU kernel parameters of the hardware profiles from published measurements,
through fidoperf's own kernel model, and print how well they fit (and hold out).

    python benchmarks/calibrate_gpu_kernels.py            # fit, print, check
    python benchmarks/calibrate_gpu_kernels.py --json     # the same as one JSON object

What is fitted, and to what (files in benchmarks/reference/, see its README):

1. GEMM on sm_90 (H100, and H200 whose SMs and clocks are the same): XLA's measured GEMM
   table (a compiler cost table, 375 shapes). The large-GEMM fraction is not fitted: it is
   the median efficiency of the table's largest products (m n k = 4096^3 class). Fitted:
   the fixed time of a kernel and the relative efficiency of three of the four tile
   shapes cuBLAS uses (NVIDIA, "Matrix Multiplication Background User's Guide": 256x128
   and 128x256 most efficient, then 128x128, 128x64 / 64x128, 64x64), with split-K up to
   16. Checked by two-fold cross-validation over the shapes and against two older
   independent runs of the same table.
2. Flash attention on H100: FlashAttention-3 paper, Figure 5 (forward, FP16): per head
   dimension the main loop's fraction of peak, and one fixed cost per block of query rows
   (in units of a key/value block iteration), for FlashAttention-3 (Hopper) and
   FlashAttention-2 (the kernel on A100, L40S, L4).
3. Held out, not fitted: cuBLASLt GEMM on A100 80GB (Azure benchmarking guide), the
   FlashAttention-2 forward figure on A100 80GB (same guide), Flash-Decoding's A100
   micro-benchmark (incremental bandwidth between its 64k and 128k rows).

Nothing here reads a serving engine's kernel-latency database.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import minimize

from fidoperf.costmodel.optable import op_table
from fidoperf.specs import hardware_from_dict, load_hardware, read_yaml

REF = Path(__file__).resolve().parent / "reference"
HARDWARE = Path(__file__).resolve().parent.parent / "hardware"
TILES = [[128, 256], [128, 128], [64, 128], [64, 64]]
SPLIT_K = [1, 2, 4, 8, 16]


def errors(pred, meas) -> dict:
    rel = np.abs(np.asarray(pred) / np.asarray(meas) - 1.0)
    return {"n": int(rel.size), "median": float(np.median(rel)), "p90": float(np.quantile(rel, 0.9)),
            "max": float(rel.max())}


def with_kernel_model(name: str, **params) -> object:
    """The shipped profile ``name`` with some kernel-model/efficiency entries replaced."""
    data = copy.deepcopy(read_yaml(HARDWARE / f"{name}.yaml"))
    km = data.setdefault("kernel_model", {})
    eff = data.setdefault("efficiency", {})
    for key, value in params.items():
        if key in ("matmul_compute", "attention_compute", "memory", "attention_memory"):
            eff[key] = value if isinstance(value, dict) else {"value": value, "source": "fit"}
        elif key == "overhead_s_per_op":
            data["overhead_s_per_op"] = {"value": value, "source": "fit"}
        else:
            km[key] = {"value": value, "source": "fit"}
    return hardware_from_dict(data, f"{name} (fit)")


# --------------------------------------------------------------------------- GEMM


def gemm_table(name="xla_matmul_sm90_bf16.csv") -> pd.DataFrame:
    return pd.read_csv(REF / name)


def gemm_predict(hw, df: pd.DataFrame) -> np.ndarray:
    """Batched products as the table runs them: b independent [m, k] @ [k, n]."""
    out = np.empty(len(df))
    for b, g in df.groupby("b"):  # b products in one kernel: b times the tiles and bytes, one fixed cost
        out[g.index.to_numpy()] = _batched(hw, g, int(b))
    return out


def _batched(hw, g: pd.DataFrame, b: int) -> np.ndarray:
    from fidoperf.costmodel import ops as costs
    from fidoperf.costmodel.kernels import kernel_times
    from fidoperf.specs.implementation import IMPLEMENTATIONS

    m, n, k = (g[c].to_numpy(float) for c in ("m", "n", "k"))
    op = costs.linear("gemm", m, k, n, 2, 2)
    op = costs.Op(**{**op.__dict__, "flops": b * op.flops, "weight_bytes": b * op.weight_bytes,
                     "act_bytes": b * op.act_bytes, "shape": {**op.shape, "batch": b}})
    return np.asarray(kernel_times(op, hw, "bf16", "bf16", "derated", "roofline", IMPLEMENTATIONS["tuned"]).time_s)


def fit_gemm(df: pd.DataFrame, f_large: float, idx=None):
    idx = np.ones(len(df), bool) if idx is None else idx

    def hw_of(z):
        t0, r1, r2, r3 = z[0] * 1e-6, *np.clip(z[1:], 0.2, 1.0)
        return with_kernel_model("h100-sxm", gemm_tiles=[[*TILES[0], 1.0], [*TILES[1], float(r1)],
                                                         [*TILES[2], float(r2)], [*TILES[3], float(r3)]],
                                 gemm_split_k=SPLIT_K, compute_units=132, overhead_s_per_op=float(max(t0, 0.0)),
                                 matmul_compute=f_large)

    meas = df["time_s"].to_numpy()

    def loss(z):
        p = gemm_predict(hw_of(z), df)
        return float(np.mean(np.abs(np.log(p[idx] / meas[idx]))))

    r = minimize(loss, [4.5, 0.95, 0.8, 0.6], method="Nelder-Mead", options={"maxiter": 600, "xatol": 1e-3})
    return r.x, hw_of(r.x)


# --------------------------------------------------------------------------- flash attention


def flash_predict(hw, df: pd.DataFrame) -> np.ndarray:
    """TFLOP/s in the papers' convention (4 s^2 d h, halved when causal)."""
    shapes = {"batch": df["batch"], "seq_len": df["seqlen"], "heads": df["nheads"],
              "kv_heads": df["nheads"], "head_dim": df["head_dim"], "causal": df["causal"].astype(bool)}
    t = op_table("prefill_attention", shapes, hw, implementation="tuned")["time_s"].to_numpy()
    flops = 4.0 * df["seqlen"] ** 2 * df["head_dim"] * df["nheads"] * df["batch"] * np.where(df["causal"], 0.5, 1)
    return flops.to_numpy() / t / 1e12


def fit_flash(df: pd.DataFrame, gpu="h100-sxm"):
    """Per head dimension the main loop's fraction of peak, one shared block overhead."""
    dims = sorted(df["head_dim"].unique())

    def hw_of(z):
        points = [[float(d), float(np.clip(e, 0.05, 1.0))] for d, e in zip(dims, z[1:], strict=True)]
        return with_kernel_model(gpu, flash_block_overhead=float(max(z[0], 0.0)), overhead_s_per_op=0.0,
                                 attention_compute={"by": "head_dim", "points": points, "source": "fit"},
                                 compute_units=132)

    meas = df["tflops_per_s"].to_numpy()

    def loss(z):
        return float(np.mean(np.abs(np.log(flash_predict(hw_of(z), df) / meas))))

    r = minimize(loss, [2.0] + [0.6] * len(dims), method="Nelder-Mead", options={"maxiter": 2000})
    return r.x, hw_of(r.x), dims


# --------------------------------------------------------------------------- held-out checks


def held_out(shipped=True) -> dict:
    """Predictions of the shipped profiles (or the fitted ones) against figures not fitted."""
    out = {}
    pts = pd.read_csv(REF / "published_points.csv")
    a100 = load_hardware("a100-80gb")
    g = pts[pts["kind"] == "gemm"]
    t = op_table("gemm", {"m": g["m"].astype(int), "n": g["n"].astype(int), "k": g["k"].astype(int)}, a100,
                 implementation="tuned")
    pred = 2 * g["m"] * g["n"] * g["k"] / t["time_s"].to_numpy()
    out["a100_cublaslt_gemm"] = {"shapes": [f"{int(m)}^3" for m in g["m"]],
                                 "predicted_tflops": list(np.round(pred / 1e12, 1)),
                                 "measured_tflops": list(g["measured_flops_per_s"] / 1e12),
                                 **errors(pred.to_numpy(), g["measured_flops_per_s"].to_numpy())}
    f = pts[pts["kind"] == "prefill_attention"]
    t = op_table("prefill_attention", {"batch": f["batch"].astype(int), "seq_len": f["seq_len"].astype(int),
                                       "heads": f["heads"].astype(int), "kv_heads": f["heads"].astype(int),
                                       "head_dim": f["head_dim"].astype(int),
                                       "causal": f["causal"].astype(bool)}, a100, implementation="tuned")
    flops = 4.0 * f["seq_len"] ** 2 * f["head_dim"] * f["heads"] * f["batch"]
    pred = (flops.to_numpy() / t["time_s"].to_numpy())
    out["a100_flash_attention_2"] = {"predicted_tflops": list(np.round(pred / 1e12, 1)),
                                     "measured_tflops": list(f["measured_flops_per_s"] / 1e12),
                                     **errors(pred, f["measured_flops_per_s"].to_numpy())}
    fd = pd.read_csv(REF / "flashdecoding_a100.csv")
    big = fd.sort_values("seqlen_kv").tail(2)  # 64k and 128k rows: incremental bandwidth
    kv_bytes = big["batch"] * big["seqlen_kv"] * 2 * big["kv_heads"] * big["head_dim"] * 2
    measured_bw = float(np.diff(kv_bytes.to_numpy())[0] / np.diff(big["time_s"].to_numpy())[0])
    shapes = {"batch": big["batch"], "kv_len": big["seqlen_kv"], "heads": big["q_heads"],
              "kv_heads": big["kv_heads"], "head_dim": big["head_dim"]}
    t = op_table("decode_attention", shapes, a100, implementation="tuned")["time_s"].to_numpy()
    predicted_bw = float(np.diff(kv_bytes.to_numpy())[0] / np.diff(t)[0])
    out["a100_flash_decoding_incremental_bandwidth"] = {
        "measured_bytes_per_s": measured_bw, "predicted_bytes_per_s": predicted_bw,
        "rel_error": predicted_bw / measured_bw - 1.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    report: dict = {}

    df = gemm_table()
    big = df[df["m"] * df["n"] * df["k"] * df["b"] >= 4096**3]
    f_large = float(np.median(2 * big["b"] * big["m"] * big["n"] * big["k"] / big["time_s"] / 989.4e12))
    z, hw = fit_gemm(df, round(f_large, 3))
    pred = gemm_predict(hw, df)
    report["gemm_sm90"] = {"large_gemm_fraction": round(f_large, 3), "fixed_s": round(z[0] * 1e-6, 9),
                           "tiles": [[*TILES[0], 1.0]] + [[*t, round(float(np.clip(r, 0.2, 1.0)), 3)]
                                                           for t, r in zip(TILES[1:], z[1:], strict=True)],
                           "split_k": SPLIT_K, "fit": errors(pred, df["time_s"])}
    cv = []
    for fold in (0, 1):
        idx = (np.arange(len(df)) % 2) == fold
        _, hw_f = fit_gemm(df, round(f_large, 3), idx)
        p = gemm_predict(hw_f, df)
        cv.append(errors(p[~idx], df["time_s"].to_numpy()[~idx]))
    report["gemm_sm90"]["two_fold_held_out"] = cv
    for other in ("jax070", "jax080"):
        o = gemm_table(f"xla_matmul_sm90_bf16_{other}.csv")
        report["gemm_sm90"][f"against_{other}_run"] = errors(gemm_predict(hw, o), o["time_s"])

    fa = pd.read_csv(REF / "fa3_fig5_h100.csv")
    for impl in ("flashattention3", "flashattention2"):
        # T5 and the kernels judged have head dims 64 and 128; 256 is shown, not fitted
        sub = fa[(fa["impl"] == impl) & fa["head_dim"].isin([64, 128])].reset_index(drop=True)
        z, hw_fa, dims = fit_flash(sub)
        report[impl] = {"block_overhead": round(float(z[0]), 3),
                        "fraction_by_head_dim": {int(d): round(float(e), 3) for d, e in zip(dims, z[1:], strict=True)},
                        "fit": errors(flash_predict(hw_fa, sub), sub["tflops_per_s"])}
        for causal in (False, True):
            part = sub[sub["causal"] == causal]
            report[impl][f"fit_{'causal' if causal else 'non_causal'}"] = errors(
                flash_predict(hw_fa, part.reset_index(drop=True)), part["tflops_per_s"])
    report["held_out_with_shipped_profiles"] = held_out()
    report = json.loads(json.dumps(report, default=float))  # numpy scalars to plain numbers
    print(json.dumps(report, indent=2) if args.json else yaml.safe_dump(report, sort_keys=False, width=110))


if __name__ == "__main__":
    main()
