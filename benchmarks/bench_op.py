"""Throughput of the per-kernel query (fidoperf.op_table): shapes per second for each
kind, derated and roofline, on random tables of 1e5 shapes.

    taskset -c 0 .venv/bin/python benchmarks/bench_op.py [--shapes 100000] [--repeat 5]

Each table is timed once cold, then ``--repeat`` times; the median is reported. The last
line is one JSON record. Target: at least 1e5 shapes per second on one core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import numpy as np

from fidoperf.costmodel.optable import op_table


def shapes(kind: str, n: int, rng) -> dict:
    if kind == "gemm":
        return {"m": rng.integers(1, 16384, n), "n": rng.integers(512, 10240, n), "k": rng.integers(512, 10240, n)}
    if kind in ("all_reduce", "all_gather", "reduce_scatter"):
        return {"bytes": (2.0 ** rng.uniform(9, 29, n)).astype(np.int64), "chips": rng.choice([2, 4, 8], n)}
    kv = rng.choice([1, 2, 4, 8], n)
    heads = kv * rng.choice([1, 2, 4, 8], n)
    common = {"batch": rng.integers(1, 257, n), "heads": heads, "kv_heads": kv, "head_dim": rng.choice([64, 128], n)}
    if kind == "decode_attention":
        return {**common, "kv_len": rng.integers(15, 32768, n)}
    return {**common, "seq_len": rng.integers(64, 2049, n), "causal": rng.random(n) < 0.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hardware", default="h100-sxm")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    record = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpu": platform.processor(),
              "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "hardware": args.hardware, "shapes": args.shapes}
    print(f"fidoperf op_table benchmark, {record['date']}, {record['cores_usable']} core(s) usable, "
          f"load {record['load_average_1min']:.2f}; {args.shapes:,} random shapes per table on {args.hardware}")
    print(f"{'kind':>18} {'model':>9} {'cold s':>8} {'median s':>9} {'shapes/s':>10}")
    for kind in ("gemm", "decode_attention", "prefill_attention", "all_reduce"):
        table = shapes(kind, args.shapes, rng)
        for efficiency in ("derated", "roofline"):
            if kind == "all_reduce" and efficiency == "roofline":
                continue
            t0 = time.perf_counter()
            op_table(kind, table, args.hardware, efficiency=efficiency)
            cold = time.perf_counter() - t0
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                op_table(kind, table, args.hardware, efficiency=efficiency)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            record[f"{kind}_{efficiency}_shapes_per_s"] = args.shapes / med
            print(f"{kind:>18} {efficiency:>9} {cold:8.3f} {med:9.3f} {args.shapes / med:10.3g}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
