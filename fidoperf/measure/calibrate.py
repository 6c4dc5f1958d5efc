"""Measure the device JAX runs on and write a hardware profile of the shipped schema.

What is measured, each with generic kernels (never the validation's layers):
- peak matmul FLOP/s per dtype: the best of square GEMMs of several sizes;
- matmul compute efficiency by rows (M of [M, K] @ [K, N], the weight read cold
  from main memory, as decoding reads it): decoding multiplies few rows by each
  weight, far below peak on most devices;
- attention compute efficiency by rows (query rows sharing one key/value head,
  head width 64, the key/value cache cold): multi-query attention has H rows per
  head, multi-head one;
- streaming bandwidth, cold (inputs rotated through copies larger than the last
  cache level), by transfer size, with the access patterns of decoding: a
  matrix-vector product (weights), per-head attention over a key cache, a
  softmax, and an elementwise RMS norm (norms, residuals, activations);
- fixed costs: per compiled-function call, and per op inside a function.

The two rows curves record the size of the operand their kernels streamed
(``transfer_bytes``), so that the model can carry them to ops that stream more
(:func:`fidoperf.costmodel.kernels.rows_rate_at_size`).

The peak bandwidth of the profile is the best streaming rate measured; every
efficiency curve is a measured fraction of these peaks.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from .timing import (
    CALIBRATION_COPIES,
    STABLE_WITHIN,
    Passes,
    RandomPool,
    copies_for,
    cpu_activity,
    environment,
    import_jax,
    time_compiled,
)

SIZES = {
    "quick": {"gemm": (512, 1024), "rows": (1, 4, 16, 64, 256, 1024), "att_rows": (1, 3, 4, 12, 16, 64),
              "stream_mib": (1, 8, 64, 256), "min_time_s": 0.1, "passes": 2},
    "full": {"gemm": (512, 1024, 2048), "rows": (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384),
             "att_rows": (1, 2, 3, 4, 8, 12, 16, 32, 64, 128),
             "stream_mib": (0.25, 1, 4, 16, 64, 256, 1024), "min_time_s": 0.3, "passes": 3},
}
JNP = {"fp32": "float32", "bf16": "bfloat16"}
# Weight shapes [K, N] of the rows curve: square, and the 1:4 and 4:1 shapes of a
# transformer's projections and MLP; the curve takes the median rate over them
# (one shape alone can sit 20-30% off: strides that alias in the caches).
ROWS_SHAPES = ((1024, 1024), (768, 3072), (3072, 768))
# (batch, key/value heads, keys) of the attention rows curve: 8 heads of 8192 keys, 64
# of 1024, 256 of 256 (16 MiB of keys and values each); the median rate over them.
ATTENTION_SHAPES = ((1, 8, 8192), (8, 8, 1024), (32, 8, 256))
# Warn when the 1-minute load average, before calibrating, exceeds this many runnable
# tasks per thread JAX may use (other work moves timings by up to 1.6x).
LOADED_PER_THREAD = 0.5
# The same judged from what the CPUs do in the second before calibrating
# (timing.cpu_activity), where Linux says: busy more than a quarter of all CPUs' time (half a
# thread of two), or more than 5% of it taken by the hypervisor for other guests. The load
# average decays over a minute, so it fires after a run that has just ended (it did before
# each quick calibration run back to back, 2026-12-02).
BUSY_LIMIT = 0.25
STEAL_LIMIT = 0.05
# A cold transfer's rate must not rise as it gets smaller: the smallest size may stream at
# most this much faster than the next one (timing noise), never more. Only the two
# smallest are compared: above glibc's mmap threshold (32 MiB) every call's fresh output
# pages fault in, so large element-wise transfers are legitimately slower per byte.
# 1.5: quick PyTorch calibrations on a quiet machine measured 1.3x from noise alone
# (0.52 against 0.40 of peak, 2026-12-02); a smallest transfer at twice the next one's rate
# (what tests/ break a profile with) is still caught.
SMALL_TRANSFER_SLACK = 1.5
# A rows curve (matmul or attention efficiency by rows) rises to its best point, where
# neighbouring points differ by less than their noise, so that part is a running maximum;
# beyond it the points are kept as measured: on XLA:CPU products of many rows run slower
# once their operands outgrow the last-level cache (2026-12-02, the median over ROWS_SHAPES
# fell from 104 GFLOP/s at 1024 rows to 96 at 4096; in a separate run, from 109 at 1280
# rows to 100 at 5120). It may fall beyond its best to no less than ROWS_FALL_LIMIT of it:
# a product of more rows can always run as several smaller ones.
ROWS_RULE = "running maximum up to the best point, as measured beyond it"
ROWS_FALL_LIMIT = 0.5


class Calibrator:
    def __init__(self, level: str = "full", progress=None):
        self.jax = import_jax()
        import jax.numpy as jnp

        self.jnp = jnp
        self.cfg = SIZES[level]
        self.pool = RandomPool(elements=16 * 2**20)
        self.log = progress or (lambda msg: None)
        self.raw: dict[str, list] = {}
        self.passes = Passes()  # every measurement, once a pass

    def _time(self, fn, make, working_bytes, cold=True, fixed=0.0, what=""):
        """Median time of one call, less the fixed costs ``fixed`` (per call and per
        op, which the model adds separately), but never below a quarter of it: a
        measurement dominated by fixed costs says little about rates.

        One run of calls a pass; the median over the passes so far (:class:`Passes`)."""
        args = make()
        compiled = self.jax.jit(fn).lower(*args).compile()
        copies = copies_for(working_bytes, CALIBRATION_COPIES) if cold else 1
        sets = [args] + [make() for _ in range(copies - 1)]
        t = self.passes.measure(what, lambda: time_compiled(compiled, sets, min_time_s=self.cfg["min_time_s"]).median_s)
        return max(t - fixed, 0.25 * t)

    # ------------------------------------------------------------------ fixed costs
    def overheads(self):
        jnp = self.jnp
        x = self.pool.array((8, 64))
        w = self.pool.array((64, 64), scale=0.125)
        call = self._time(lambda x: x + 1.0, lambda: (x,), 0, cold=False, what="trivial call")
        n = 64

        def chain(x, w):
            for _ in range(n):
                x = jnp.dot(x, w)
            return x

        per_op = max(0.0, (self._time(chain, lambda: (x, w), 0, cold=False, what="chain of 64 dots") - call) / n)
        self.per_op = per_op
        self.raw["overhead"] = [{"per_call_s": call, "per_op_s": per_op}]
        return call, per_op

    # ------------------------------------------------------------------ compute
    def gemm_peak(self, dtype):
        jnp, rows = self.jnp, []
        for n in self.cfg["gemm"]:
            a, b = self.pool.array((n, n), JNP[dtype]), self.pool.array((n, n), JNP[dtype])
            t = self._time(jnp.dot, lambda a=a, b=b: (a, b), 0, cold=False, what=f"GEMM {dtype} {n}^3")
            rows.append({"n": n, "time_s": t, "flops_per_s": 2 * n**3 / t})
            self.log(f"GEMM {dtype} {n}^3: {rows[-1]['flops_per_s'] / 1e9:.1f} GFLOP/s")
        self.raw[f"gemm_{dtype}"] = rows
        return max(r["flops_per_s"] for r in rows)

    def rows_curve(self, overhead, dtype="fp32"):
        """Matmul [M, K] @ [K, N] as decoding runs it: the weight read cold (rotated
        through copies larger than the last cache level), the few activation rows
        fresh; the median rate over the weight shapes ROWS_SHAPES. Few rows against
        a weight from main memory run far below both the cache-resident rate and the
        streaming rate of one row on XLA's CPU kernels (the weight is packed for the
        product), so this curve, not the streaming one, sets the time of decoding's
        matmuls."""
        jnp, pts = self.jnp, []
        item = _item_bytes(dtype)
        for M in self.cfg["rows"]:
            rates = []
            for K, N in ROWS_SHAPES:
                def make(M=M, K=K, N=N):
                    return (self.pool.array((M, K), JNP[dtype]), self.pool.array((K, N), JNP[dtype], K ** -0.5))

                t = self._time(jnp.dot, make, (M * K + K * N) * item, fixed=overhead,
                               what=f"matmul [{M},{K}]@[{K},{N}] {dtype}")
                rates.append(2 * M * K * N / t)
            rate = float(np.median(rates))
            pts.append((M, rate))
            self.log(f"matmul {M} rows {dtype}, weights cold: {rate / 1e9:.1f} GFLOP/s "
                     f"(median of {', '.join(f'{r / 1e9:.1f}' for r in rates)})")
        self.raw["matmul_rows"] = [{"rows": m, "flops_per_s": r} for m, r in pts]
        return pts

    def attention_rows_curve(self, peak, overhead, dtype="fp32", dk=64):
        """Attention of R query rows per key/value head: logits and the
        probability-weighted sum of values, with the kernels of fidoperf.measure.layers,
        the key/value cache read cold as a decoding step reads it; the median rate over
        ATTENTION_SHAPES (few long heads, as at batch 1, to many short ones, as at large
        batch: XLA:CPU's rate per key differs by up to 1.5x between them). The model
        charges each of the two products half of this pair's time per FLOP."""
        from .layers import attention_logits

        jnp, pts = self.jnp, []
        item = _item_bytes(dtype)

        def f(q, p, k, v):
            return attention_logits(q, k), jnp.einsum("bgrs,bgsk->bgrk", p, v)

        for R in self.cfg["att_rows"]:
            rates = []
            for B, G, S in ATTENTION_SHAPES:
                def make(R=R, B=B, G=G, S=S):
                    a = self.pool.array
                    return (a((B, G, R, dk), JNP[dtype]), a((B, G, R, S), JNP[dtype]),
                            a((B, G, S, dk), JNP[dtype]), a((B, G, S, dk), JNP[dtype]))

                t = self._time(f, make, (2 * B * G * S * dk + B * G * R * (S + dk)) * item,
                               fixed=overhead + self.per_op, what=f"attention R={R} {B}x{G} heads x {S} keys {dtype}")
                rates.append(2 * 2 * B * G * R * S * dk / t)
            rate = float(np.median(rates))
            pts.append((R, min(1.0, rate / peak)))
            self.log(f"attention R={R} {dtype}, keys and values cold: {rate / 1e9:.1f} GFLOP/s "
                     f"(median of {', '.join(f'{r / 1e9:.1f}' for r in rates)})")
        self.raw["attention_rows"] = [{"rows": r, "efficiency": e} for r, e in pts]
        return pts

    # ------------------------------------------------------------------ bandwidth
    def stream(self, pattern, overhead, dtype="fp32"):
        """Bytes/s by transfer size for one access pattern, inputs cold."""
        out = []
        item = _item_bytes(dtype)
        for mib in self.cfg["stream_mib"]:
            fn, shapes, nbytes = _stream_kernel(self.jax, pattern, int(mib * 2**20 / item), item)

            def make(shapes=shapes):
                return tuple(self.pool.array(shape, JNP[dtype]) for shape in shapes)

            t = self._time(fn, make, nbytes, fixed=overhead, what=f"{pattern} {mib} MiB {dtype}")
            out.append((nbytes, nbytes / t))
            self.log(f"{pattern} {mib} MiB: {out[-1][1] / 1e9:.1f} GB/s")
        self.raw[f"stream_{pattern}"] = [{"bytes": b, "bytes_per_s": r} for b, r in out]
        return out


def _stream_kernel(jax, pattern: str, elems: int, item: int):
    """(function, input shapes, bytes moved) of a streaming kernel over ``elems``
    elements of its main operand."""
    jnp = jax.numpy
    if pattern == "matvec":  # weights read by one row of activations
        K = 1024
        N = max(1, elems // K)
        return jnp.dot, [(1, K), (K, N)], (K * N + K + N) * item
    if pattern == "attention":  # one query per head against a key cache
        from .layers import attention_logits

        dk, H = 64, 12
        S = max(1, elems // (H * dk))
        return attention_logits, [(1, H, 1, dk), (1, H, S, dk)], (H * S * dk + H * S) * item
    rows, cols = max(1, elems // 1024), 1024
    if pattern == "elementwise":  # an RMS norm: read and write every element

        def rms(x, w):
            return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w

        return rms, [(rows, cols), (cols,)], 2 * rows * cols * item
    return (lambda x: jax.nn.softmax(x, axis=-1)), [(rows, cols)], 2 * rows * cols * item


def device_memory_bytes(jax) -> tuple[float, str]:
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend has memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), "jax Device.memory_stats()['bytes_limit']"
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host RAM (sysconf)"
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return float("nan"), "unknown"


def calibrate(level: str = "full", dtypes=("fp32",), log=None, interleave=None) -> dict:
    """Measure this device; returns the profile as a dict ready for YAML.

    ``interleave``: None, or (passes, what, run) to alternate the calibration with other
    measurements so that both see the same states of the machine: ``passes`` passes
    (instead of the level's), ``run(i)`` called after pass i; ``what`` names it in the
    profile. The profile's seconds count the calibration's passes only."""
    t0 = time.time()
    c = Calibrator(level, log)
    passes, between = c.cfg["passes"], None
    if interleave is not None:
        passes, what, run = interleave
        spent = [0.0]

        def between(i):
            t = time.time()
            run(i)
            spent[0] += time.time() - t
    env = {**environment(), "cpu_activity": cpu_activity()}
    warnings = loaded_warning(env)
    for w in warnings:
        c.log(f"warning: {w}")
    main = dtypes[0]

    def one_pass():
        call, per_op = c.overheads()
        peaks = {d: c.gemm_peak(d) for d in dtypes}
        fixed = call + per_op
        rows = c.rows_curve(fixed, main)
        # the peak is the best rate any matmul reached (a square GEMM or a product of many
        # rows against a cold weight): one measurement alone can fall 30% short on a VM
        peaks[main] = max(peaks[main], max(r for _, r in rows))
        rows = [(m, r / peaks[main]) for m, r in rows]
        att_rows = c.attention_rows_curve(peaks[main], fixed, main)
        streams = {p: c.stream(p, fixed, main) for p in ("matvec", "attention", "softmax", "elementwise")}
        return call, per_op, peaks, rows, att_rows, streams

    call, per_op, peaks, rows, att_rows, streams = in_passes(one_pass, passes, c, between)
    # the peak: the best rate over transfers of 16 MiB or more, where fixed costs are
    # negligible (smaller ones are on the curves, as fractions of it, capped at 1)
    peak_bw = max(r for s in streams.values() for b, r in s if b >= 16 * 2**20)
    mem_bytes, mem_source = device_memory_bytes(c.jax)
    when = env["date"]
    src = f"measured by `fidoperf calibrate --level {level}` on {env['device']} ({env['platform']}), {when}"

    def curve(points, axis, what, rows=False, transfer_bytes=None):
        return efficiency_curve(points, axis, f"{src}: {what}", rows, transfer_bytes)

    def bw_curve(samples, what):
        return curve([(b, r / peak_bw) for b, r in samples], "bytes", what)

    stability = stability_summary(c.passes.records(), passes)
    for w in unstable_warning(stability):
        warnings.append(w)
        c.log(f"warning: {w}")
    name = f"measured-{env['platform']}"
    profile = {
        "name": name,
        "description": f"{env['device']} ({env['platform']}, {env['cpu_threads_available']} threads "
                       f"available to JAX), measured with JAX {env['jax']}; {env['cpu'] or ''}".strip(),
        "vendor": env["platform"],
        "kind": "measured",
        "peak_flops_per_s": {d: {"value": float(p), "source": f"{src}: best square GEMM "
                                 f"({', '.join(str(n) for n in c.cfg['gemm'])})"
                                 + (" or product of many rows against a cold weight" if d == main else "")}
                              for d, p in peaks.items()},
        "memory": {
            "capacity_bytes": {"value": mem_bytes, "source": mem_source},
            "bandwidth_bytes_per_s": {"value": float(peak_bw),
                                      "source": f"{src}: best cold streaming rate (matrix-vector, "
                                                "attention over a key cache, softmax)"},
        },
        "efficiency": {
            "compute": {"value": 1.0, "source": "large GEMM at the measured peak"},
            "memory": bw_curve(streams["matvec"], "matrix-vector product, weights cold, by bytes"),
            "matmul_compute": curve(rows, "rows", "[M,K]@[K,N], the weight cold, median over [K,N] = "
                                                  + ", ".join(f"[{k},{n}]" for k, n in ROWS_SHAPES)
                                                  + f", by rows M ({ROWS_RULE})", rows=True,
                                    transfer_bytes=rows_transfer_bytes(main)),
            "attention_compute": curve(att_rows, "rows", "query rows per key/value head (d_kv 64), "
                                                         "keys and values cold, median over heads x keys = "
                                                         + ", ".join(f"{b * g} x {k}" for b, g, k in ATTENTION_SHAPES)
                                                         + f" ({ROWS_RULE})", rows=True,
                                       transfer_bytes=attention_transfer_bytes(main)),
            "attention_memory": bw_curve(streams["attention"], "per-head attention logits over a cold "
                                                               "key cache, by bytes"),
            "softmax_memory": bw_curve(streams["softmax"], "softmax over rows of 1024, cold, by bytes"),
            "vector_memory": bw_curve(streams["elementwise"], "RMS norm over rows of 1024, cold, by bytes"),
        },
        "overhead_s_per_op": {"value": float(per_op), "source": f"{src}: chain of 64 dependent small dots"},
        "overhead_s_per_call": {"value": float(call), "source": f"{src}: a trivial jitted call"},
        "measured": {
            "machine": f"{env['host']}: {env['cpu'] or env['device']}"
                       + (f" ({env['cpu_caches']})" if env.get("cpu_caches") else ""),
            "date": when,
            "versions": {k: env[k] for k in ("jax", "jaxlib", "numpy", "python")},
            "threads": env["cpu_threads_available"],
            "xla_flags": env["xla_flags"],
            "level": level,
            "seconds": round(time.time() - t0 - (spent[0] if interleave else 0.0), 1),
            **({"interleaved_with": f"{what}: each of the {passes} passes followed by one of its passes"}
               if interleave else {}),
            "load_average_1min": env["load_average_1min"],
            "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "cpu_activity_before": env["cpu_activity"],
            "stability": stability,
            "warnings": warnings,
            "raw": c.raw,
        },
        "decisions": (
            "Measured, not datasheet: peaks are the best rates JAX reached with its own kernels on this "
            "device; efficiency curves are fractions of those peaks by operation size, interpolated in "
            "log(size). Nothing here is fitted to the validation cases."),
    }
    return profile


def in_passes(one_pass, passes: int, calibrator, between=None):
    """Run ``one_pass()`` (every measurement of a calibration, once) ``passes`` times;
    returns the last pass's results, which rest on the medians over all passes (each
    measurement goes through ``calibrator.passes``). Logs which pass is running. With
    ``between``, ``between(i)`` runs after pass i (0-based): other measurements
    interleaved with the calibration's."""
    log = calibrator.log
    try:
        for i in range(passes):
            calibrator.log = lambda msg, i=i: log(f"pass {i + 1}/{passes}: {msg}" if i + 1 < passes else msg)
            if i + 1 == passes and passes > 1:
                log(f"pass {passes}/{passes}, the medians over all passes:")
            out = one_pass()
            if between is not None:
                calibrator.log = log
                between(i)
    finally:
        calibrator.log = log
    return out


def loaded_warning(env: dict) -> list[str]:
    """A warning when the machine was busy before calibrating (empty list if not): by
    ``cpu_activity`` (other work running in the second before, or the hypervisor taking
    the CPUs) where it was read, else by the 1-minute load average."""
    activity = env.get("cpu_activity")
    if activity:
        out = []
        if activity["busy"] > BUSY_LIMIT:
            out.append(f"other work kept {100 * activity['busy']:.0f}% of the CPUs busy in the "
                       f"{activity['window_s']:g} s before calibrating: it moves timings by up to 1.6x; calibrate "
                       "on a quiet machine")
        if activity["steal"] > STEAL_LIMIT:
            out.append(f"the hypervisor took {100 * activity['steal']:.0f}% of the CPUs' time in the "
                       f"{activity['window_s']:g} s before calibrating (steal): other guests share this host")
        return out
    load, threads = env.get("load_average_1min"), env.get("cpu_threads_available") or 1
    if load is not None and load > LOADED_PER_THREAD * threads:
        return [f"the 1-minute load average was {load:.2f} on {threads} threads before calibrating: other work "
                "moves timings by up to 1.6x; calibrate on a quiet machine"]
    return []


def stability_summary(records: list[dict], passes: int) -> dict:
    """How well the repeated measurements agreed: their count, the median and worst
    spread of their runs, one a pass ((max - min) / median), and those no two of whose
    runs agreed within STABLE_WITHIN."""
    spreads = [r["spread"] for r in records]
    worst = max(records, key=lambda r: r["spread"]) if records else {"what": "", "spread": 0.0}
    return {
        "measurements": len(records),
        "passes": passes,
        "agree_within": STABLE_WITHIN,
        "median_spread": round(float(np.median(spreads)), 4) if records else 0.0,
        "worst_spread": round(float(worst["spread"]), 4),
        "worst": worst["what"],
        "unstable": [r["what"] for r in records if not r["stable"] and passes > 1],
    }


def unstable_warning(stability: dict) -> list[str]:
    """A warning when some measurements never agreed with themselves (empty list if all did)."""
    if not stability["unstable"]:
        return []
    return [f"{len(stability['unstable'])} of {stability['measurements']} measurements: no two of their "
            f"{stability['passes']} passes agreed within {100 * STABLE_WITHIN:g}% (worst: {stability['worst']}, "
            f"spread {100 * stability['worst_spread']:.0f}%); the machine may be busy: calibrate again when it is "
            "quiet"]


def efficiency_curve(points, axis: str, source: str, rows: bool = False, transfer_bytes=None) -> dict:
    """A profile's efficiency curve from measured (size, fraction of peak) points: sizes
    made strictly increasing, fractions clipped to (0, 1]; a rows curve as ROWS_RULE says,
    with the bytes its kernels streamed (``transfer_bytes``) where given."""
    pts = _monotone_sizes([(float(x), round(float(min(1.0, max(e, 1e-4))), 4)) for x, e in points])
    if rows:
        best = max(range(len(pts)), key=lambda i: pts[i][1])
        pts = [(x, max(e for _, e in pts[: i + 1]) if i <= best else e) for i, (x, e) in enumerate(pts)]
    out = {"by": axis, "points": [list(p) for p in pts], "source": source}
    if transfer_bytes:
        out["transfer_bytes"] = float(transfer_bytes)
    return out


def _item_bytes(dtype: str) -> int:
    return 2 if dtype == "bf16" else np.dtype(JNP[dtype]).itemsize


def rows_transfer_bytes(dtype: str = "fp32") -> float:
    """Bytes of the cold weight one kernel of the matmul rows curve streams: the median
    over ROWS_SHAPES (its rate is the median over them)."""
    return float(np.median([k * n for k, n in ROWS_SHAPES])) * _item_bytes(dtype)


def attention_transfer_bytes(dtype: str = "fp32", dk: int = 64) -> float:
    """Bytes of keys (or values) one kernel of the attention rows curve streams: the
    median over ATTENTION_SHAPES."""
    return float(np.median([b * g * s * dk for b, g, s in ATTENTION_SHAPES])) * _item_bytes(dtype)


def _monotone_sizes(points):
    """Sorted by size, one point per size (curves need strictly increasing sizes)."""
    out = {}
    for x, e in sorted(points):
        out[x] = e
    return sorted(out.items())


def dump_profile(profile: dict) -> str:
    import yaml

    header = ("# Hardware profile measured by `fidoperf calibrate`. Units: FLOP/s, bytes, bytes/s, s.\n"
              "# Usable as --hardware FILE with every command.\n")
    return header + yaml.safe_dump(_plain(profile), sort_keys=False, width=110)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def profile_problems(profile: dict) -> list[str]:
    """What makes a calibrated profile implausible, whatever the machine: no timing, only
    the shape of what was measured. A streaming rate that does not fall for small
    transfers (fixed costs always cost small transfers more per byte), a fixed cost per
    operation or call of zero for a framework that has one, a matmul efficiency that
    falls with more rows before its best point or to under half of it beyond (ROWS_RULE), fractions of peak outside
    (0, 1], a non-positive peak. Returns one line per problem (empty: none)."""
    problems = []
    for dtype, fig in profile.get("peak_flops_per_s", {}).items():
        if not fig.get("value") or fig["value"] <= 0:
            problems.append(f"peak_flops_per_s.{dtype}: not positive")
    bw = profile.get("memory", {}).get("bandwidth_bytes_per_s", {}).get("value")
    if not bw or bw <= 0:
        problems.append("memory.bandwidth_bytes_per_s: not positive")
    for key, c in profile.get("efficiency", {}).items():
        pts = c.get("points")
        if pts is None:
            v = c.get("value", 1.0)
            if not 0 < v <= 1.0:
                problems.append(f"efficiency.{key}: {v} is not a fraction of peak in (0, 1]")
            continue
        fracs = [p[1] for p in pts]
        if any(not 0 < f <= 1.0 for f in fracs):
            problems.append(f"efficiency.{key}: a point outside (0, 1]")
        if c.get("by") == "bytes" and len(pts) > 1 and fracs[0] > SMALL_TRANSFER_SLACK * fracs[1]:
            problems.append(f"efficiency.{key}: the smallest transfer streams faster than the next larger one "
                            f"({fracs[0]:.2f} against {fracs[1]:.2f} of peak): small transfers were measured "
                            "from a cache, or fixed costs were not taken off")
        if c.get("by") == "rows" and fracs:
            best = fracs.index(max(fracs))
            if any(b < a for a, b in zip(fracs[:best], fracs[1:best + 1])):
                problems.append(f"efficiency.{key}: falls with more rows before its best point (expected a "
                                "running maximum there)")
            if min(fracs[best:]) < ROWS_FALL_LIMIT * fracs[best]:
                problems.append(f"efficiency.{key}: falls with more rows to {min(fracs[best:]):.3g} of peak, under "
                                f"{ROWS_FALL_LIMIT:g} of its best ({fracs[best]:.3g}): more rows can always run as "
                                "several smaller products")
    framework = profile.get("measured", {}).get("framework", "jax")
    if framework == "torch":
        if not profile.get("dispatch_s_per_op", {}).get("value"):
            problems.append("dispatch_s_per_op: zero; every PyTorch operation costs its dispatch")
    elif profile.get("kind") == "measured" and not profile.get("overhead_s_per_call", {}).get("value"):
        problems.append("overhead_s_per_call: zero; every call of a compiled function has a fixed cost")
    return problems
