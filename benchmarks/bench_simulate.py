"""Speed of the serving simulation: requests simulated per second (1e5 requests, both
policies) and the time of a rate search for a p99 target; with ``--part layouts``, the
same under parallel layouts (tensor parallelism 2, separate encoder and decoder pools)
and one capacity plan that searches the layouts.

    taskset -c 0 .venv/bin/python benchmarks/bench_simulate.py                  # one core, both parts
    taskset -c 0 .venv/bin/python benchmarks/bench_simulate.py --part layouts   # the layouts only

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
from fidoperf.specs.layout import Layout
from fidoperf.whatif import plan as P
from fidoperf.whatif.simulate import Serving, layout_label, max_sustainable_rate, prepare, simulate


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
    ap.add_argument("--part", choices=["all", "base", "layouts"], default="all",
                    help="base: one chip per copy (the cases of issue 10); layouts: TP 2, pools and a plan")
    args = ap.parse_args()

    print(f"fidoperf simulate benchmark, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
          f"simpy {simpy.__version__}, {platform.platform()}")
    hw, wl = load_hardware("tpu-v4"), Workload(batch=1)
    record = {"date": datetime.date.today().isoformat(), "machine": machine(), "python": platform.python_version(),
              "load_average_1min": os.getloadavg()[0]}

    if args.part in ("all", "base"):
        base_part(args, hw, wl, record)
    if args.part in ("all", "layouts"):
        layouts_part(args, hw, wl, record)
    print("\ncold: the first call of the case in the process; median: later calls. A run's time covers the "
          "whole public call (tables, capacity run, records, summary).")
    record["load_average_1min_end"] = os.getloadavg()[0]
    print(f"load average at the end {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(json.dumps(record))
    return 0


def base_part(args, hw, wl, record):
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


LAYOUTS = (Layout(tensor_parallel=2), Layout(encoder_chips=1, decoder_chips=1), Layout(encoder_chips=1,
                                                                                          decoder_chips=3))


def layouts_part(args, hw, wl, record):
    n = args.requests
    print(f"\nlayouts: {n:,} requests, Poisson arrivals at 80% of the layout's capacity, geometric outputs, "
          f"{wl.passages} passages x {wl.passage_len} tokens, on {hw.name}")
    print(f"{'model':>10} {'layout':>26} {'policy':>11} {'cold s':>7} {'median s':>9} {'min-max s':>13} "
          f"{'requests/s':>11} {'capacity q/s':>12} {'p99 s':>7}")
    dists = {"target_len": "geometric"}
    for mname in ("fido-base", "fid-base"):
        model = load_model(mname)
        for layout in LAYOUTS:
            for policy in ("static", "continuous"):
                cap = prepare(model, hw, wl, requests=2000, serving=Serving(policy=policy, layout=layout),
                              dists=dists).capacity_qps

                def run(model=model, qps=0.8 * cap, policy=policy, layout=layout):
                    return simulate(model, hw, wl, qps=qps, requests=n, policy=policy, dists=dists, layout=layout)

                res, cold, times = timed(run, args.repeat)
                med = statistics.median(times)
                label = layout_label(layout)
                print(f"{mname:>10} {label:>26} {policy:>11} {cold:>7.2f} {med:>9.2f} "
                      f"{min(times):>6.2f}-{max(times):<6.2f} {n / med:>11.3g} {cap:>12.4g} "
                      f"{res.summary['latency_p99_s']:>7.3g}")
                record[f"layout|{mname}|{label}|{policy}"] = {
                    "requests": n, "cold_s": cold, "median_s": med, "min_s": min(times), "max_s": max(times),
                    "requests_per_s": n / med, "capacity_qps": cap, "latency_p99_s": res.summary["latency_p99_s"]}

    print("\nrate search under a layout, p99 <= 1 s, continuous batching, 4,000 requests per rate")
    print(f"{'model':>10} {'layout':>26} {'rates':>6} {'cold s':>7} {'median s':>9} {'rate q/s':>9}")
    for mname in ("fido-base", "fid-base"):
        model = load_model(mname)
        for layout in LAYOUTS:
            def search(model=model, layout=layout):
                return max_sustainable_rate(model, hw, wl, target_s=1.0, requests=4000, layout=layout)

            r, cold, times = timed(search, args.repeat)
            med = statistics.median(times)
            label = layout_label(layout)
            print(f"{mname:>10} {label:>26} {len(r.points):>6} {cold:>7.2f} {med:>9.2f} {r.rate_qps:>9.4g}")
            record[f"layout-search|{mname}|{label}"] = {"cold_s": cold, "median_s": med, "min_s": min(times),
                                                       "max_s": max(times), "rates_tried": len(r.points),
                                                       "rate_qps": r.rate_qps}

    models = [load_model(m) for m in ("fid-xxl", "fido-base")]
    chips = [load_hardware(h) for h in ("l4", "tpu-v4")]
    qps, latency_ms = 20.0, 2000.0
    sp = P.ServingPlan()  # every layout, continuous batching, Poisson arrivals, 4000 requests per rate, 60 s budget
    print(f"\nplan with layouts: {qps:g} queries/s, p99 <= {latency_ms:g} ms, models "
          f"{', '.join(m.name for m in models)} on {', '.join(h.name for h in chips)}; {sp.requests} requests per "
          f"rate, time budget {sp.time_budget_s:g} s (one run: the plan itself times its budget)")
    start = time.perf_counter()
    result = P.plan(models, chips, wl, qps, latency_ms, serving=sp)
    wall = time.perf_counter() - start
    lay = result.layouts
    print(f"wall {wall:.1f} s; {len(lay)} layouts considered, " + ", ".join(
        f"{int(v)} {k}" for k, v in lay["status"].value_counts().items()))
    print(f"{'model':>10} {'hardware':>8} {'layout':>26} {'units':>6} {'chips':>6} {'q/s/unit':>9} {'p99 s':>7} "
          f"{'considered':>10} {'pruned':>7} {'evaluated':>9} {'not eval.':>9} {'search s':>9}")
    for _, row in result.best.iterrows():
        mine = lay[(lay["model"] == row["model"]) & (lay["hardware"] == row["hardware"])]
        print(f"{row['model']:>10} {row['hardware']:>8} {row['layout']:>26} {int(row['units']):>6} "
              f"{int(row['chips']):>6} {row['rate_per_unit_qps']:>9.4g} {row['latency_s']:>7.3g} "
              f"{int(row['layouts_considered']):>10} {int(row['layouts_pruned']):>7} "
              f"{int(row['layouts_evaluated']):>9} {int(row['layouts_not_evaluated']):>9} "
              f"{mine['search_s'].sum():>9.1f}")
    record["plan-layouts"] = {"wall_s": wall, "layouts": len(lay),
                              **{k: int(v) for k, v in lay["status"].value_counts().items()},
                              "best": {f"{r['model']}|{r['hardware']}": {"layout": r["layout"],
                                                                          "chips": int(r["chips"])}
                                       for _, r in result.best.iterrows()}}


if __name__ == "__main__":
    sys.exit(main())
