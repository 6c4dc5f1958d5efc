"""How much this machine's speed moves over minutes: two reference kernels of the
calibration, timed again and again, one line each time.

    .venv/bin/python benchmarks/machine_drift.py [--minutes 5] [--every-s 10]

The kernels are the calibration's own (fidoperf.measure.calibrate): one row and eight
rows against a cold [1024, 1024] fp32 weight (rotated through copies filling 128 MiB),
each timed as `fidoperf calibrate --level quick` times a measurement (median of at least
7 calls and 0.1 s). Run it alone on a quiet machine, before calibrating: where the times
move by more than the error you want from a prediction, a calibration made now will not
hold for measurements made minutes later. The last line is one JSON record (times in µs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

from fidoperf.measure.timing import CALIBRATION_COPIES, RandomPool, copies_for, import_jax, time_compiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long to sample (default 5)")
    ap.add_argument("--every-s", type=float, default=10.0, help="seconds between samples (default 10)")
    args = ap.parse_args()
    jax = import_jax()
    import jax.numpy as jnp

    pool = RandomPool(elements=16 * 2**20)
    kernels = {}
    for rows in (1, 8):
        def make(rows=rows):
            return pool.array((rows, 1024)), pool.array((1024, 1024), scale=1024 ** -0.5)

        first = make()
        compiled = jax.jit(jnp.dot).lower(*first).compile()
        sets = [first] + [make() for _ in range(copies_for((rows + 1024) * 1024 * 4, CALIBRATION_COPIES) - 1)]
        kernels[f"[{rows},1024]@[1024,1024] us"] = (compiled, sets)
    series = {name: [] for name in kernels}
    start = time.time()
    print(f"load average {os.getloadavg()[0]:.2f}; " + ", ".join(kernels), flush=True)
    while time.time() - start < 60 * args.minutes:
        t0 = time.time()
        line = [datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")]
        for name, (compiled, sets) in kernels.items():
            us = time_compiled(compiled, sets, min_time_s=0.1).median_s * 1e6
            series[name].append(us)
            line.append(f"{us:8.1f}")
        print("  ".join(line), flush=True)
        time.sleep(max(0.0, args.every_s - (time.time() - t0)))
    summary = {name: {"samples": len(v), "min": round(min(v), 1), "median": round(statistics.median(v), 1),
                      "max": round(max(v), 1), "max_over_min": round(max(v) / min(v), 2)}
               for name, v in series.items()}
    print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "minutes": args.minutes, "load_average_end": round(os.getloadavg()[0], 2), **summary}))


if __name__ == "__main__":
    main()
