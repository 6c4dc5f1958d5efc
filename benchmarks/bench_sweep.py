"""Throughput of fidoperf.sweep.sweep (configurations per second) on grids of 1e3 to 1e6
points, against calling fidoperf.costmodel.prediction.predict once per configuration in a loop.

    .venv/bin/python benchmarks/bench_sweep.py                # all cores it may use
    taskset -c 0 .venv/bin/python benchmarks/bench_sweep.py   # one core

The loop is timed on a few hundred configurations and extrapolated per configuration
(a million predict() calls would take hours). Each grid is timed once cold (the first
call in the process, which pays for fresh memory pages) and then ``--repeat`` times;
the median and the spread are printed. The last line is one JSON record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import pandas as pd

from fidoperf.costmodel.prediction import Settings, predict
from fidoperf.specs import Workload, load_hardware, load_model, override_model
from fidoperf.sweep import parse_vary, sweep

WORKLOAD_KEYS = ("batch", "passages", "passage_len", "target_len")
GRIDS = {
    "1e3": ["batch=1:10", "passages=10:100:10", "target_len=8:80:8"],
    "1e4": ["batch=1:10", "passages=10:100:10", "target_len=8:80:8", "cross_attn_every=1:10"],
    "1e5": ["batch=1:100", "passages=10:100:10", "target_len=8:80:8", "cross_attn_every=1:10"],
    "1e6": ["batch=1:100", "passages=10:100:10", "target_len=8:80:8", "cross_attn_every=1:10",
            "kv_heads=1:10"],
    # The same size with every row valid (passage length instead of kv heads).
    "1e6v": ["batch=1:100", "passages=10:100:10", "target_len=8:80:8", "cross_attn_every=1:10",
             "passage_len=64:640:64"],
    # Many small groups: every shipped chip x dtype x model (per-group overhead).
    "groups": ["hardware=a100-40gb,a100-80gb,h100-pcie,h100-sxm,h200,l4,l40s,tpu-v4,tpu-v5e,tpu-v5p,tpu-v6e",
               "dtype=bf16,fp32,int8", "model=fid-base,fido-base,fido-large", "batch=1:100",
               "passages=10:100:10"],
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.node()} {cpu}, {cores} of {os.cpu_count()} cores usable"


def time_sweep(model, hw, wl, vary, repeat: int):
    start = time.perf_counter()
    df = sweep(model, hw, wl, vary)
    cold = time.perf_counter() - start
    n, errors = len(df), int(df["error"].notna().sum())
    del df
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        df = sweep(model, hw, wl, vary)
        times.append(time.perf_counter() - start)
        del df
    return n, errors, cold, times


def time_loop(model, hw, wl, vary, count: int, seed: int = 0):
    """Seconds per configuration of predict() in a Python loop, on ``count`` random
    valid configurations of the grid. The model variants and workloads are built
    before the clock starts (override_model reads a YAML file on each call), so only
    predict() is timed."""
    rng = np.random.default_rng(seed)
    model_keys, workload_keys = ("cross_attn_every", "kv_heads"), WORKLOAD_KEYS
    variants, jobs = {}, []
    while len(jobs) < count:
        row = {f: vary[f][rng.integers(len(vary[f]))] for f in vary}
        if model.decoder.num_layers < row.get("cross_attn_every", 1):
            continue
        key = tuple(sorted((k, v) for k, v in row.items() if k in model_keys))
        if key not in variants:
            variants[key] = override_model(model, **dict(key))
        jobs.append((variants[key], wl.replace(**{k: v for k, v in row.items() if k in workload_keys})))
    settings = Settings()
    start = time.perf_counter()
    for m, w in jobs:
        predict(m, hw, w, settings)
    return (time.perf_counter() - start) / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per grid after the cold one")
    ap.add_argument("--loop", type=int, default=300, help="configurations timed with predict() in a loop")
    ap.add_argument("--grids", default=",".join(GRIDS), help="comma list of " + ", ".join(GRIDS))
    args = ap.parse_args()

    print(f"fidoperf sweep benchmark, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
          f"{platform.platform()}")
    model, hw, wl = load_model("fido-base"), load_hardware("tpu-v4"), Workload()
    print(f"base: {model.name} on {hw.name}, {wl}")

    loop_s = time_loop(model, hw, wl, parse_vary(GRIDS["1e4"]), args.loop)
    print(f"predict() in a Python loop: {loop_s * 1e3:.2f} ms per configuration, {1 / loop_s:.0f} "
          f"configurations/s (timed on {args.loop} random configurations of the 1e4 grid; the ratios "
          "below extrapolate it)\n")

    print(f"{'grid':>7} {'points':>10} {'errors':>8} {'cold s':>8} {'median s':>9} {'min-max s':>15} "
          f"{'configs/s':>11} {'x loop':>8}")
    record = {"date": datetime.date.today().isoformat(), "machine": machine(),
              "python": platform.python_version(), "numpy": np.__version__, "loop_s_per_config": loop_s}
    for name in args.grids.split(","):
        vary = parse_vary(GRIDS[name])
        n, errors, cold, times = time_sweep(model, hw, wl, vary, args.repeat)
        med = statistics.median(times)
        rate = n / med
        print(f"{name:>7} {n:>10,} {errors:>8,} {cold:>8.3f} {med:>9.4f} "
              f"{min(times):>7.4f}-{max(times):<7.4f} {rate:>11.3g} {rate * loop_s:>8.3g}")
        record[f"grid_{name}"] = {"points": n, "error_rows": errors, "cold_s": cold, "median_s": med,
                                  "min_s": min(times), "max_s": max(times), "configs_per_s": rate,
                                  "configs_per_s_cold": n / cold, "speedup_vs_loop": rate * loop_s}
    print("\nerrors: rows kept with an `error` reason (kv heads that do not divide 12, a dtype the chip "
          "lacks).\ncold: the first call in the process (fresh memory pages); median: later calls.")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
