"""An honest JAX timing harness.

Rules (JAX's benchmarking guidance and shared/reference/cpu-jax-notes.md): random
inputs, never zeros; compile outside the timer (ahead-of-time ``lower().compile()``);
warm-up calls; ``block_until_ready`` on every output; enough repeats for a stable
median; the spread reported; the device, versions, threads and date recorded.

Small working sets are rotated through several copies of the inputs so that each
call reads them from main memory, as the model assumes, instead of from a cache
warmed by the previous call.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A timing whose interquartile range exceeds this fraction of its median is flagged.
SPREAD_LIMIT = 0.25
# Rotate inputs until this many bytes are touched between two uses of one copy:
# 4x the 32 MiB L3 of the development machines (McCalpin's rule for STREAM).
COLD_BYTES = 128 * 2**20
MAX_COPIES = 16
# Two timings of one thing agree when they are within this fraction of each other: a
# case's runs (time_settled) stop at the first two successive ones that agree, and a
# calibration reports the measurements no two of whose passes agreed (Passes). On the
# development VM one case's median moved by up to 25% between back-to-back runs of 0.3 s,
# and a calibration measurement's by a median 22% between passes minutes apart.
STABLE_WITHIN = 0.10


class DeviceError(RuntimeError):
    """JAX is missing or its device failed; the CLI prints it as one line."""


def import_jax():
    try:
        import jax
        import jax.numpy as jnp  # noqa: F401
    except ImportError as err:  # pragma: no cover - jax is a dependency
        raise DeviceError(f"JAX is not installed ({err}); pip install jax") from None
    try:
        jax.devices()
    except RuntimeError as err:
        raise DeviceError(f"JAX found no usable device: {str(err).splitlines()[0]}") from None
    return jax


def cpu_model() -> str:
    """The CPU's model name as Linux reports it; empty where /proc does not say."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        return ""


def cpu_caches() -> str:
    """The first CPU's caches as Linux reports them ("L1d 32K, L1i 32K, L2 512K, L3 32768K
    shared by 0-1"); empty where /sys does not say."""
    parts = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size, shared = (
                (index / f).read_text().strip() for f in ("level", "type", "size", "shared_cpu_list"))
        except OSError:
            continue
        label = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        parts.append(f"{label} {size}" + (f" shared by {shared}" if shared not in ("0", "") else ""))
    return ", ".join(parts)


def environment() -> dict:
    """Where and when a measurement was taken."""
    jax = import_jax()
    import jaxlib

    dev = jax.devices()[0]
    cpu = cpu_model()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu": cpu,
        "cpu_caches": cpu_caches(),
        "cpu_threads_available": affinity,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # other work on the machine moves timings by up to 1.6x (cpu-jax-notes.md)
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def cpu_times(stat_text: str) -> tuple[int, int, int] | None:
    """(busy, steal, total) clock ticks of all CPUs from the text of /proc/stat: its
    first line, ``cpu user nice system idle iowait irq softirq steal ...``; idle and
    iowait are not busy, steal (time the hypervisor gave to other guests) is counted
    apart. None when the text has no such line."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu" and len(fields) >= 9:
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[1:9])
            busy = user + nice + system + irq + softirq
            return busy, steal, busy + idle + iowait + steal
    return None


def cpu_activity(window_s: float = 1.0, read=None) -> dict | None:
    """What the CPUs do now: the fractions of all CPUs' time that were busy and stolen by
    the hypervisor over the next ``window_s`` seconds, this process sleeping meanwhile.
    Unlike the 1-minute load average, which still counts a run that ended seconds ago,
    this sees only other work running now. None where /proc/stat does not say.
    ``read`` (tests) returns the text of /proc/stat."""
    def default_read():
        with open("/proc/stat") as fh:
            return fh.read()

    read = read or default_read
    try:
        before = cpu_times(read())
        time.sleep(window_s)
        after = cpu_times(read())
    except OSError:
        return None
    if before is None or after is None or after[2] <= before[2]:
        return None
    total = after[2] - before[2]
    return {"busy": round((after[0] - before[0]) / total, 3), "steal": round((after[1] - before[1]) / total, 3),
            "window_s": window_s}


class RandomPool:
    """Random arrays made fast: one pool of uniform(-1, 1) values, generated once,
    from which arrays are cut at shifting offsets (arrays larger than the pool
    repeat its values; dense kernels do not depend on the values, only on them
    not being zeros or special). Generating fresh random data costs ~2.6 s/GB here."""

    def __init__(self, elements: int = 64 * 2**20, seed: int = 0):
        jax = import_jax()
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.pool = jax.random.uniform(jax.random.PRNGKey(seed), (elements,), jnp.float32, -1.0, 1.0)
        self.offset = 0

    def array(self, shape, dtype="float32", scale: float = 1.0):
        jnp = self.jnp
        n = int(np.prod(shape))
        size = self.pool.shape[0]
        parts, need = [], n
        while need > 0:
            start = self.offset % size
            take = min(need, size - start)
            parts.append(self.pool[start:start + take])
            self.offset += take + 7919  # a prime shift, so copies differ
            need -= take
        flat = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        out = (flat.reshape(shape) * scale).astype(dtype)
        return out.block_until_ready()


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    q1_s: float
    q3_s: float
    repeats: int
    copies: int
    tries: int = 1  # timing runs of repeats (see time_settled)
    tries_spread: float = 0.0  # (max - min) / median of the tries' medians
    settled: bool = True  # two successive tries agreed within STABLE_WITHIN (or one try asked)

    @property
    def spread(self) -> float:
        """Interquartile range over the median."""
        return (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return self.spread > SPREAD_LIMIT

    def as_dict(self) -> dict:
        return {"measured_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s,
                "q1_s": self.q1_s, "q3_s": self.q3_s, "repeats": self.repeats,
                "input_copies": self.copies, "spread": self.spread, "noisy": self.noisy, "tries": self.tries,
                "tries_spread": self.tries_spread, "settled": self.settled}


def copies_for(working_set_bytes: float, max_copies: int = MAX_COPIES) -> int:
    """How many input copies make every call read its inputs from main memory: enough
    that COLD_BYTES of other data pass between two uses of one copy, at most
    ``max_copies`` (the calibration takes as many as it needs: a small transfer that
    returns to its copy after less than the last cache level's size is measured from
    that cache, and how much of the cache a VM gets depends on its neighbours)."""
    if working_set_bytes <= 0:
        return 1
    return int(min(max_copies, max(1, np.ceil(COLD_BYTES / working_set_bytes))))


CALIBRATION_COPIES = 8192  # enough to rotate 16 KiB transfers through COLD_BYTES


def time_compiled(compiled, arg_sets, *, min_time_s: float = 0.3, min_repeats: int = 7,
                  max_repeats: int = 200, warmup: int = 2) -> Timing:
    """Median wall time of ``compiled(*args)`` cycling through ``arg_sets``.

    ``compiled`` is an AOT-compiled JAX function, so no compilation is timed."""
    jax = import_jax()
    calls = 0
    for _ in range(warmup):
        jax.block_until_ready(compiled(*arg_sets[calls % len(arg_sets)]))
        calls += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_time_s):
        args = arg_sets[calls % len(arg_sets)]
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
        calls += 1
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), min(times), max(times), q[0], q[2], len(times), len(arg_sets))


def settle(measure, tries: int, what: str, record: list[dict]) -> float:
    """``measure()`` (seconds) repeated until two successive results agree within
    STABLE_WITHIN, at most ``tries`` times; returns their median and appends what
    happened (what, tries, spread = (max - min) / median, stable) to ``record``."""
    runs: list[float] = []
    stable = False
    while len(runs) < tries and not stable:
        runs.append(float(measure()))
        stable = len(runs) >= 2 and abs(runs[-1] - runs[-2]) <= STABLE_WITHIN * min(runs[-2:])
    t = float(np.median(runs))
    record.append({"what": what, "tries": len(runs), "spread": (max(runs) - min(runs)) / t if t > 0 else 0.0,
                   "stable": stable})
    return t


class Passes:
    """Measurements taken once in each of several passes over a whole calibration, the
    median kept: a VM's slow phases last seconds to minutes (other tenants, clocks), so
    tries taken back to back can agree on a slow phase, while passes minutes apart sample
    separate ones. ``measure(what, run)`` appends one run and returns the median of the
    runs of ``what`` so far: in the last pass every figure derived from the measurements
    rests on their medians."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}

    def measure(self, what: str, run) -> float:
        runs = self.samples.setdefault(what, [])
        runs.append(float(run()))
        return float(np.median(runs))

    def records(self) -> list[dict]:
        """One entry a measurement: what, its runs ("tries"), their spread ((max - min)
        / median) and whether two of them agreed within STABLE_WITHIN ("stable")."""
        out = []
        for what, runs in self.samples.items():
            t = float(np.median(runs))
            out.append({"what": what, "tries": len(runs), "spread": (max(runs) - min(runs)) / t if t > 0 else 0.0,
                        "stable": any_two_agree(runs)})
        return out


def any_two_agree(values) -> bool:
    """Whether some two of ``values`` (times of separate runs or passes) agree within
    STABLE_WITHIN of the smaller."""
    ordered = sorted(values)
    return any(b - a <= STABLE_WITHIN * a for a, b in zip(ordered, ordered[1:]))


def combine_runs(runs: list[Timing], settled: bool) -> Timing:
    """One Timing from several timing runs of one compiled function: the median of the
    runs' medians, min and max over every call, the quartiles of the run nearest that
    median, the calls summed, ``tries`` the number of runs and ``tries_spread`` the
    spread of their medians ((max - min) / median)."""
    medians = [r.median_s for r in runs]
    median = float(np.median(medians))
    near = min(runs, key=lambda r: abs(r.median_s - median))
    spread = (max(medians) - min(medians)) / median if median > 0 else 0.0
    return Timing(median, min(r.min_s for r in runs), max(r.max_s for r in runs), near.q1_s, near.q3_s,
                  sum(r.repeats for r in runs), near.copies, len(runs), spread, settled)


def time_settled(compiled, arg_sets, *, tries: int, what: str = "", record: list[dict] | None = None,
                 min_time_s: float = 0.3) -> Timing:
    """:func:`time_compiled` repeated as :func:`settle` repeats a measurement: until two
    successive tries agree within STABLE_WITHIN, at most ``tries`` times. The median is
    the median of the tries' medians; min and max over all calls; the quartiles those of
    the try nearest that median; ``record`` (if given) gets settle's entry."""
    runs: list[Timing] = []
    record = [] if record is None else record

    def once() -> float:
        runs.append(time_compiled(compiled, arg_sets, min_time_s=min_time_s))
        return runs[-1].median_s

    settle(once, tries, what, record)
    return combine_runs(runs, record[-1]["stable"] or tries == 1)


def cost_analysis(stage) -> dict:
    """XLA's cost analysis of a lowered or compiled function as one dict: JAX returns
    a dict, older versions a list of one dict, some backends None."""
    try:
        ca = stage.cost_analysis()
    except Exception:  # noqa: BLE001 - best-effort API, documented as such by JAX
        return {}
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return dict(ca or {})
