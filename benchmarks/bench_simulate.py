"""Speed of the serving simulation: requests simulated per second (1e5 requests, both
policies) and the time of a rate search for a p99 target.

    taskset -c 0 .venv/bin/python benchmarks/bench_simulate.py   # one core

Each case is the public call end to end (drawing the requests, building the step-time
tables, measuring the capacity, the run, the per-request records and the summary),
timed once cold and then ``--repeat`` times; the median and the spread are printed.
Targets (issue 10): 1e5 requests in at most 10 s, a rate search in at most 60 s, on one
core. The last line is one JSON record.
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
import simpy

from fidoperf.specs import Workload, load_hardware, load_model
from fidoperf.whatif.simulate import Serving, max_sustainable_rate, prepare, simulate


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.node()} {cpu}, {cores} of {os.cpu_count()} cores usable"


def timed(fn, repeat: int):
    start = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, cold, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per case after the cold one")
    ap.add_argument("--requests", type=int, default=100_000)
    args = ap.parse_args()

    print(f"fidoperf simulate benchmark, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
          f"simpy {simpy.__version__}, {platform.platform()}")
    hw, wl = load_hardware("tpu-v4"), Workload(batch=1)
    record = {"date": datetime.date.today().isoformat(), "machine": machine(), "python": platform.python_version(),
              "load_average_1min": os.getloadavg()[0]}

    n = args.requests
    print(f"\n{n:,} requests, Poisson arrivals, {wl.passages} passages x {wl.passage_len} tokens, on {hw.name}")
    print(f"{'model':>10} {'policy':>11} {'sizes':>10} {'load':>5} {'cold s':>7} {'median s':>9} {'min-max s':>13} "
          f"{'requests/s':>11} {'mean batch':>10}")
    cases = [(m, pol, dist, load) for m in ("fido-base", "fid-base") for pol in ("static", "continuous")
             for dist in ("fixed", "geometric") for load in (0.3, 0.8)]
    caps = {}
    for mname, policy, dist, load in cases:
        model = load_model(mname)
        dists = {"target_len": dist}
        key = (mname, policy, dist)
        if key not in caps:
            caps[key] = prepare(model, hw, wl, requests=2000, serving=Serving(policy=policy), dists=dists).capacity_qps
        qps = load * caps[key]
        def run(model=model, qps=qps, policy=policy, dists=dists):
            return simulate(model, hw, wl, qps=qps, requests=n, policy=policy, dists=dists)

        res, cold, times = timed(run, args.repeat)
        med = statistics.median(times)
        print(f"{mname:>10} {policy:>11} {dist:>10} {load:>5.1f} {cold:>7.2f} {med:>9.2f} "
              f"{min(times):>6.2f}-{max(times):<6.2f} {n / med:>11.3g} {res.summary['mean_decode_batch']:>10.3g}")
        record[f"{mname}|{policy}|{dist}|{load}"] = {"requests": n, "cold_s": cold, "median_s": med,
                                                     "min_s": min(times), "max_s": max(times),
                                                     "requests_per_s": n / med}

    print("\nrate search for p99 <= 100 ms and <= 1 s (bisection in log(rate), same seed at every rate)")
    print(f"{'model':>10} {'policy':>11} {'target':>7} {'requests':>9} {'rates':>6} {'cold s':>7} {'median s':>9} "
          f"{'rate q/s':>9}")
    for mname in ("fido-base", "fid-base"):
        model = load_model(mname)
        for policy in ("static", "continuous"):
            for target in (0.1, 1.0):
                for reqs in (4000, 10_000):
                    def search(model=model, target=target, policy=policy, reqs=reqs):
                        return max_sustainable_rate(model, hw, wl, target_s=target, policy=policy, requests=reqs)

                    r, cold, times = timed(search, args.repeat)
                    med = statistics.median(times)
                    print(f"{mname:>10} {policy:>11} {target:>7g} {reqs:>9,} {len(r.points):>6} {cold:>7.2f} "
                          f"{med:>9.2f} {r.rate_qps:>9.4g}")
                    record[f"search|{mname}|{policy}|{target}|{reqs}"] = {
                        "cold_s": cold, "median_s": med, "min_s": min(times), "max_s": max(times),
                        "rates_tried": len(r.points), "rate_qps": r.rate_qps}
    print("\ncold: the first call of the case in the process; median: later calls. A run's time covers the "
          "whole public call (tables, capacity run, records, summary).")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
