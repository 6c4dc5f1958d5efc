"""Measurement through PyTorch eager: calibrate this machine for the ``eager``
implementation, and run FiD on Hugging Face's T5 to validate it.

``calibrate(level)`` measures, with generic operations only (never the FiD being
validated):
- the dispatch cost of one framework operation: a sequence of tiny operations of the
  kinds a T5 layer issues (views, transposes, element-wise arithmetic, reductions, a
  small linear, an eval-mode dropout), whose data is negligible;
- the peak matmul rate (square ``torch.mm``) and the matmul efficiency by rows
  (``F.linear`` of M rows against a cold weight, as decoding reads it);
- streaming bandwidth by transfer size, inputs cold (rotated through copies larger than
  the last cache level): a matrix-vector product (weights) and element-wise work;
- fused attention (``F.scaled_dot_product_attention``, what Hugging Face T5 runs): its
  rate on passage-sized self-attention, and its bandwidth streaming a key/value cache
  for one query token, by bytes.
Every kernel measurement has the dispatch cost taken off (never below a quarter of the
time); the profile's ``default_implementation`` is ``eager`` and its
``dispatch_s_per_op`` the measured cost, so every prediction made with it models
PyTorch eager (``--implementation`` overrides).

``run_fid(...)`` builds a FiD from ``transformers.T5ForConditionalGeneration`` with
random weights in the model spec's shapes (no download), encodes the passages
separately and decodes greedily with the library's key/value cache, and times the
encoder and the decoder apart.

PyTorch and transformers are an optional extra: ``pip install 'fidoperf[torch]'``.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from ..errors import SpecError
from ..specs import ModelSpec
from .timing import (
    CALIBRATION_COPIES,
    COLD_BYTES,
    SPREAD_LIMIT,
    Passes,
    Timing,
    cpu_activity,
    cpu_caches,
    cpu_model,
)

SIZES = {
    "quick": {"gemm": (512, 1024), "rows": (1, 4, 16, 64, 256, 1024), "stream_mib": (0.25, 2, 16, 64),
              "kv_mib": (0.5, 4, 32), "min_time_s": 0.1, "passes": 2},
    "full": {"gemm": (512, 1024, 2048), "rows": (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384),
             "stream_mib": (0.0625, 0.25, 1, 4, 16, 64, 256), "kv_mib": (0.25, 1, 4, 16, 64), "min_time_s": 0.3,
             "passes": 3},
}


class TorchMissing(RuntimeError):
    """PyTorch (or transformers) is not installed; the CLI prints it as one line."""


def import_torch():
    try:
        import torch
    except ImportError as err:
        raise TorchMissing(f"PyTorch is not installed ({err}); pip install 'fidoperf[torch]'") from None
    return torch


def import_transformers():
    import_torch()
    try:
        import transformers
    except ImportError as err:
        raise TorchMissing(f"transformers is not installed ({err}); pip install 'fidoperf[torch]'") from None
    return transformers


def environment() -> dict:
    """Where and when a measurement was taken (PyTorch flavour)."""
    import datetime as dt
    import platform

    torch = import_torch()
    cpu = cpu_model()
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "platform": "cpu", "device": "cpu (PyTorch)", "cpu": cpu,
        "cpu_caches": cpu_caches(),
        "cpu_threads_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": str(torch.__version__), "transformers": tf_version,
        "numpy": np.__version__, "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def time_calls(fn, arg_sets, *, min_time_s: float = 0.3, min_repeats: int = 7, max_repeats: int = 400,
               warmup: int = 2) -> Timing:
    """Median wall time of ``fn(*args)`` cycling through ``arg_sets`` (PyTorch on the
    CPU runs synchronously: the call returns when the work is done)."""
    calls = 0
    for _ in range(warmup):
        fn(*arg_sets[calls % len(arg_sets)])
        calls += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_time_s):
        args = arg_sets[calls % len(arg_sets)]
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
        calls += 1
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), min(times), max(times), q[0], q[2], len(times), len(arg_sets))


def copies_for(nbytes: float) -> int:
    """Input copies so that COLD_BYTES of other data pass between two uses of one."""
    return int(min(CALIBRATION_COPIES, max(1, np.ceil(COLD_BYTES / max(nbytes, 1.0)))))


# --------------------------------------------------------------------------- calibration


class TorchCalibrator:
    def __init__(self, level: str = "full", log=None):
        self.torch = import_torch()
        self.F = self.torch.nn.functional
        self.cfg = SIZES[level]
        self.log = log or (lambda msg: None)
        self.raw: dict[str, list] = {}
        self.passes = Passes()  # every measurement, once a pass
        self.gen = self.torch.Generator().manual_seed(0)

    def rand(self, *shape):
        return self.torch.rand(*shape, generator=self.gen) * 2 - 1

    def _time(self, fn, make, working_bytes: float, cold: bool = True, fixed: float = 0.0, what: str = "") -> float:
        """Median time of one call less ``fixed`` (never below a quarter of it): one run
        of calls a pass, the median over the passes so far (:class:`Passes`)."""
        sets = [make() for _ in range(copies_for(working_bytes) if cold else 1)]
        with self.torch.inference_mode():
            t = self.passes.measure(what, lambda: time_calls(fn, sets, min_time_s=self.cfg["min_time_s"]).median_s)
        return max(t - fixed, 0.25 * t)

    def dispatch(self) -> float:
        """Seconds per framework operation on data too small to matter: the operation
        mix of a T5 layer (views and transposes, element-wise arithmetic, a reduction,
        rsqrt, a tiny linear, an eval-mode dropout, a no-op dtype conversion)."""
        torch, F = self.torch, self.F
        x = self.rand(1, 2, 8)
        w = self.rand(8, 8)

        def mix(x, w):
            y = x.to(torch.float32)
            y = y.pow(2).mean(-1, keepdim=True)
            y = x * torch.rsqrt(y + 1e-6)
            y = F.linear(y, w).view(1, 2, 2, 4).transpose(1, 2)
            y = F.dropout(y, p=0.0, training=False)
            return torch.tanh(y.reshape(1, 2, 8) + 1.0) * 0.5

        ops = 14  # to, pow, mean, add, rsqrt, mul, linear, view, transpose, dropout, reshape, add, tanh, mul
        t = self._time(mix, lambda: (x, w), 0, cold=False, what="dispatch mix")
        per = t / ops
        self.raw["dispatch"] = [{"ops": ops, "seconds": t, "per_op_s": per}]
        self.log(f"dispatch: {per * 1e6:.2f} µs per operation")
        return per

    def gemm_peak(self) -> float:
        rows = []
        for n in self.cfg["gemm"]:
            a, b = self.rand(n, n), self.rand(n, n)
            t = self._time(self.torch.mm, lambda a=a, b=b: (a, b), 0, cold=False, what=f"torch.mm {n}^3")
            rows.append({"n": n, "time_s": t, "flops_per_s": 2 * n**3 / t})
            self.log(f"torch.mm {n}^3: {rows[-1]['flops_per_s'] / 1e9:.1f} GFLOP/s")
        self.raw["gemm_fp32"] = rows
        return max(r["flops_per_s"] for r in rows)

    def rows_curve(self, fixed: float):
        """(rows, FLOP/s) of ``F.linear`` of M rows against a cold weight (rotated
        through copies larger than the last cache level, as a decoding step reads its
        weights), the median over the weight shapes of the JAX calibration."""
        from .calibrate import ROWS_SHAPES

        pts = []
        for M in self.cfg["rows"]:
            rates = []
            for K, N in ROWS_SHAPES:
                def make(M=M, K=K, N=N):
                    return self.rand(M, K), self.rand(N, K)

                t = self._time(self.F.linear, make, (M * K + N * K) * 4, fixed=fixed,
                               what=f"F.linear [{M},{K}]x[{N},{K}]^T")
                rates.append(2 * M * K * N / t)
            pts.append((M, float(np.median(rates))))
            self.log(f"F.linear {M} rows, weights cold: {pts[-1][1] / 1e9:.1f} GFLOP/s "
                     f"(median of {', '.join(f'{r / 1e9:.1f}' for r in rates)})")
        self.raw["matmul_rows"] = [{"rows": m, "flops_per_s": r} for m, r in pts]
        return pts

    def stream(self, pattern: str, fixed: float):
        """(bytes, bytes/s) by transfer size, inputs cold."""
        out = []
        for mib in self.cfg["stream_mib"]:
            elems = max(1024, int(mib * 2**20 / 4))
            if pattern == "matvec":
                K = 1024
                Nn = max(1, elems // K)
                nbytes = (K * Nn + K + Nn) * 4

                def make(K=K, Nn=Nn):
                    return self.rand(1, K), self.rand(Nn, K)

                fn = self.F.linear
            else:  # element-wise: read two, write one (a residual add, a gate product)
                nbytes = 3 * elems * 4

                def make(elems=elems):
                    return self.rand(elems), self.rand(elems)

                fn = self.torch.mul
            t = self._time(fn, make, nbytes, fixed=fixed, what=f"{pattern} {nbytes / 2**20:.2g} MiB")
            out.append((nbytes, nbytes / t))
            self.log(f"{pattern} {nbytes / 2**20:.2g} MiB: {out[-1][1] / 1e9:.1f} GB/s")
        self.raw[f"stream_{pattern}"] = [{"bytes": b, "bytes_per_s": r} for b, r in out]
        return out

    def attention(self, peak: float, fixed: float):
        """Fused attention (SDPA): its rate on passages of 128 tokens (64 heads of d 64,
        an additive bias), and its bandwidth over a key/value cache for one query."""
        F = self.F
        B, H, N, dk = 8, 8, 128, 64
        q, k, v = self.rand(B, H, N, dk), self.rand(B, H, N, dk), self.rand(B, H, N, dk)
        bias = self.rand(1, H, N, N)
        t = self._time(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                       lambda: (q, k, v, bias), 0, cold=False, fixed=fixed, what="SDPA prefill")
        rate = min(1.0, 4 * B * H * N * N * dk / t / peak)
        self.log(f"SDPA {B}x{H}x{N}x{dk}: {rate * peak / 1e9:.1f} GFLOP/s ({100 * rate:.0f}% of the GEMM peak)")
        kv = []
        for mib in self.cfg["kv_mib"]:
            S = max(16, int(mib * 2**20 / (2 * 4 * H * dk)))
            nbytes = 2 * H * S * dk * 4

            def make(S=S):
                return self.rand(1, H, 1, dk), self.rand(1, H, S, dk), self.rand(1, H, S, dk), self.rand(1, H, 1, S)

            t = self._time(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), make, nbytes,
                           fixed=fixed, what=f"SDPA decode {nbytes / 2**20:.2g} MiB")
            kv.append((nbytes, nbytes / t))
            self.log(f"SDPA decode over {nbytes / 2**20:.2g} MiB of keys and values: {kv[-1][1] / 1e9:.1f} GB/s")
        self.raw["sdpa"] = [{"prefill_efficiency": rate}] + [{"bytes": b, "bytes_per_s": r} for b, r in kv]
        return rate, kv


def calibrate(level: str = "full", log=None) -> dict:
    """Measure this machine through PyTorch; returns the profile as a dict ready for YAML."""
    from .calibrate import (
        ROWS_RULE,
        ROWS_SHAPES,
        efficiency_curve,
        in_passes,
        loaded_warning,
        stability_summary,
        unstable_warning,
    )

    t0 = time.time()
    c = TorchCalibrator(level, log)
    env = {**environment(), "cpu_activity": cpu_activity()}
    warnings = loaded_warning(env)
    for w in warnings:
        c.log(f"warning: {w}")
    torch = c.torch

    def one_pass():
        per_op = c.dispatch()
        peak = c.gemm_peak()
        rows = c.rows_curve(per_op)
        peak = max(peak, max(r for _, r in rows))  # the best rate any matmul reached
        rows = [(m, r / peak) for m, r in rows]
        streams = {p: c.stream(p, per_op) for p in ("matvec", "elementwise")}
        flash_rate, kv = c.attention(peak, per_op)
        return per_op, peak, rows, streams, flash_rate, kv

    with torch.inference_mode():
        per_op, peak, rows, streams, flash_rate, kv = in_passes(one_pass, c.cfg["passes"], c)
    peak_bw = max(r for s in [*streams.values(), kv] for b, r in s if b >= 16 * 2**20) if any(
        b >= 16 * 2**20 for s in [*streams.values(), kv] for b, _ in s) else max(
        r for s in [*streams.values(), kv] for _, r in s)
    stability = stability_summary(c.passes.records(), c.cfg["passes"])
    for w in unstable_warning(stability):
        warnings.append(w)
        c.log(f"warning: {w}")
    mem_bytes, mem_source = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host RAM (sysconf)"
    src = (f"measured by `fidoperf calibrate --framework torch --level {level}` on {env['cpu'] or 'cpu'} "
           f"({env['torch_threads']} threads), torch {env['torch']}, {env['date']}")

    def curve(points, axis, what, rows=False):
        return efficiency_curve(points, axis, f"{src}: {what}", rows)

    def bw_curve(samples, what):
        return curve([(b, r / peak_bw) for b, r in samples], "bytes", what)

    return {
        "name": "measured-cpu-torch",
        "description": f"{env['cpu'] or 'CPU'} through PyTorch {env['torch']} eager ({env['torch_threads']} threads)",
        "vendor": "cpu",
        "kind": "measured",
        "default_implementation": "eager",
        "peak_flops_per_s": {"fp32": {"value": float(peak), "source": f"{src}: best square torch.mm "
                                                                       f"({', '.join(map(str, c.cfg['gemm']))}) or "
                                                                       "F.linear of many rows"}},
        "memory": {
            "capacity_bytes": {"value": mem_bytes, "source": mem_source},
            "bandwidth_bytes_per_s": {"value": float(peak_bw), "source": f"{src}: best cold streaming rate "
                                                                        "(matrix-vector, element-wise, SDPA decode)"},
        },
        "efficiency": {
            "compute": {"value": 1.0, "source": "large torch.mm at the measured peak"},
            "memory": bw_curve(streams["matvec"], "F.linear of one row, weights cold, by bytes"),
            "vector_memory": bw_curve(streams["elementwise"], "torch.mul of two cold vectors, by bytes"),
            "matmul_compute": curve(rows, "rows", "F.linear of M rows against a cold weight, median over "
                                                  "[K, N] = " + ", ".join(f"{k}x{n}" for k, n in ROWS_SHAPES)
                                                  + f", by rows M ({ROWS_RULE})", rows=True),
            "flash_compute": {"value": round(float(flash_rate), 4),
                              "source": f"{src}: F.scaled_dot_product_attention 8 x 8 heads x 128 tokens x d 64 "
                                        "with an additive bias"},
            "flash_memory": bw_curve(kv, "F.scaled_dot_product_attention of one query over a cold key/value "
                                         "cache (8 heads, d 64), by bytes"),
        },
        "overhead_s_per_op": {"value": 0.0, "source": "the eager cost per operation is dispatch_s_per_op"},
        "dispatch_s_per_op": {"value": float(per_op), "source": f"{src}: a mix of 14 tiny operations of the kinds a "
                                                                "T5 layer issues"},
        "measured": {
            "machine": f"{env['host']}: {env['cpu']} ({env['cpu_caches']})",
            "date": env["date"],
            "versions": {k: env[k] for k in ("torch", "transformers", "numpy", "python")},
            "threads": env["torch_threads"],
            "load_average_1min": env["load_average_1min"],
            "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "cpu_activity_before": env["cpu_activity"],
            "stability": stability,
            "warnings": warnings,
            "framework": "torch",
            "level": level,
            "seconds": round(time.time() - t0, 1),
            "raw": c.raw,
        },
        "decisions": ("Measured through PyTorch eager, not datasheet: the peak is torch.mm's best rate; every "
                      "efficiency curve is a measured fraction of these peaks by size; dispatch_s_per_op is paid "
                      "once per framework operation (synchronously on a CPU). Nothing here is fitted to the FiD "
                      "runs of `fidoperf validate --framework torch`."),
    }


# --------------------------------------------------------------------------- FiD on Hugging Face T5


def hf_config(model: ModelSpec):
    """A transformers T5Config in ``model``'s shapes; SpecError for what Hugging Face's T5
    cannot express (separate encoder and decoder widths, GQA/MQA, layer-sparse
    cross-attention)."""
    transformers = import_transformers()
    e, d = model.encoder, model.decoder
    for name in ("emb_dim", "num_heads", "head_dim", "mlp_dim"):
        if getattr(e, name) != getattr(d, name):
            raise SpecError(model.path or model.name, f"decoder.{name}",
                            "Hugging Face's T5 has one width for encoder and decoder")
    if d.num_kv_heads != d.num_heads or d.cross_attn_every != 1 or e.num_kv_heads != e.num_heads:
        raise SpecError(model.path or model.name, "decoder",
                        "Hugging Face's T5 runs multi-head attention with cross-attention in every decoder layer "
                        "(FiD, not FiDO)")
    return transformers.T5Config(
        vocab_size=model.vocab_size, d_model=e.emb_dim, d_kv=e.head_dim, d_ff=e.mlp_dim, num_layers=e.num_layers,
        num_decoder_layers=d.num_layers, num_heads=e.num_heads,
        feed_forward_proj="gated-gelu" if e.gated_mlp else "gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def hf_model(model: ModelSpec, seed: int = 0):
    torch = import_torch()
    transformers = import_transformers()
    torch.manual_seed(seed)
    return transformers.T5ForConditionalGeneration(hf_config(model)).eval()


def run_fid(hf, batch: int, passages: int, passage_len: int, target_len: int, repeats: int = 3,
            seed: int = 0) -> dict:
    """Time FiD on a Hugging Face T5: the passages of each sample encoded separately
    ([B * P, N] through the encoder), then ``target_len`` greedy decoding steps over the
    concatenated encoder outputs [B, P * N, D] with the library's key/value cache.
    Returns the median encoder, decoder and total seconds over ``repeats`` runs (after
    one warm-up run) with their spread."""
    torch = import_torch()
    from transformers.modeling_outputs import BaseModelOutput

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, hf.config.vocab_size, (batch * passages, passage_len), generator=g)
    mask = torch.ones(batch * passages, passage_len, dtype=torch.long)
    enc_s, dec_s = [], []
    with torch.inference_mode():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            enc = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            t1 = time.perf_counter()
            states = enc.reshape(batch, passages * passage_len, -1)
            out = hf.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                              attention_mask=mask.reshape(batch, passages * passage_len), max_new_tokens=target_len,
                              min_new_tokens=target_len, do_sample=False, num_beams=1)
            t2 = time.perf_counter()
            if out.shape[1] != target_len + 1:  # the start token and T generated ones
                raise RuntimeError(f"generate returned {out.shape[1] - 1} tokens, not {target_len}")
            if i:
                enc_s.append(t1 - t0)
                dec_s.append(t2 - t1)
    tot = [a + b for a, b in zip(enc_s, dec_s, strict=True)]

    def spread(xs):
        m = statistics.median(xs)
        return (max(xs) - min(xs)) / m if m > 0 else float("inf")

    return {"encoder_s": statistics.median(enc_s), "decoder_s": statistics.median(dec_s),
            "measured_s": statistics.median(tot), "min_s": min(tot), "max_s": max(tot), "repeats": repeats,
            "spread": spread(tot), "noisy": spread(tot) > SPREAD_LIMIT}


# --------------------------------------------------------------------------- validation


# (model, batch, passages, passage_len, target_len): FiD-Small and FiD-Base, batch 1 to 8,
# 4 to 40 passages; sized so the whole suite runs in a few minutes on two cores.
SUITES = {
    "quick": [("fid-small", 1, 4, 64, 8), ("fid-small", 4, 10, 64, 8), ("fid-base", 2, 10, 64, 8)],
    "full": [("fid-small", 1, 4, 64, 16), ("fid-small", 4, 20, 64, 16), ("fid-small", 8, 40, 64, 8),
             ("fid-base", 1, 10, 64, 16), ("fid-base", 4, 10, 128, 8), ("fid-base", 8, 20, 64, 8)],
}


def validate(hw, suite: str = "quick", repeats: int = 3, log=None) -> list[dict]:
    """Predict (the ``eager`` implementation on ``hw``) and time every setting of
    ``suite`` on Hugging Face's T5; one record per setting, encoder and decoder apart."""
    from ..costmodel.prediction import Settings, predict
    from ..specs import Workload, load_model

    log = log or (lambda msg: None)
    torch = import_torch()
    records = []
    for name, B, P, N, T in SUITES[suite]:
        model = load_model(name)
        hf = hf_model(model)
        m = run_fid(hf, B, P, N, T, repeats=repeats)
        wl = Workload.with_dtype("fp32", batch=B, passages=P, passage_len=N, target_len=T)
        p = predict(model, hw, wl, Settings(implementation="eager"))
        t = p.totals
        pred_enc = (t["encoder_time_s"]) * B
        pred_dec = (t["cross_kv_time_s"] + t["decoder_time_s"]) * B  # Hugging Face projects K/V in step 1
        rec = {"case": f"{name}/B{B}/P{P}/N{N}/T{T}", "model": name, "batch": B, "passages": P, "passage_len": N,
               "target_len": T, "threads": torch.get_num_threads(),
               "measured_encoder_s": m["encoder_s"], "measured_decoder_s": m["decoder_s"],
               "measured_s": m["measured_s"], "min_s": m["min_s"], "max_s": m["max_s"], "spread": m["spread"],
               "noisy": m["noisy"], "predicted_encoder_s": pred_enc, "predicted_decoder_s": pred_dec,
               "predicted_s": pred_enc + pred_dec}
        for part in ("encoder_", "decoder_", ""):
            rec[f"{part}ratio"] = rec[f"predicted_{part}s"] / rec[f"measured_{part}s"]
        records.append(rec)
        log(f"{rec['case']}: measured {m['measured_s']:.3f} s (encoder {m['encoder_s']:.3f}, decoder "
            f"{m['decoder_s']:.3f}), predicted {rec['predicted_s']:.3f} s (ratio {rec['ratio']:.2f})")
        del hf
    return records


def summary(records: list[dict]) -> dict:
    """Median and 90th-percentile absolute errors of total, encoder and decoder times."""
    out = {"cases": len(records)}
    for part in ("", "encoder_", "decoder_"):
        err = np.abs(np.array([r[f"{part}ratio"] for r in records]) - 1.0)
        out[f"{part}median_abs_rel_error"] = float(np.median(err))
        out[f"{part}p90_abs_rel_error"] = float(np.quantile(err, 0.9))
    return out
