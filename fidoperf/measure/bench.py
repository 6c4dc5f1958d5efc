"""Layer benchmarks: the same layers the model costs, run through JAX, and predicted.

A :class:`Case` is one jitted function of fixed shapes: an encoder layer, the
cross-attention key/value projection, one decoding step of one decoder layer, one
decoding step through a whole decoder (embedding to argmax), or a whole sample
(encode and greedy decode). For each case this module builds random inputs, times
it (:mod:`fidoperf.measure.timing`), predicts it from a hardware profile with the cost model
(:mod:`fidoperf.costmodel.ops`, :func:`fidoperf.costmodel.prediction.op_times`), and compares the
model's FLOPs and bytes with XLA's own count of the lowered function.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..costmodel import ops as costs
from ..costmodel.prediction import Settings, dtype_bytes, flash_rows, op_times, ops_table, stack_dims
from ..specs import DTYPE_BYTES, Curve, Hardware, ModelSpec, Workload, load_model, override_model

KINDS = ("encoder_layer", "cross_kv", "decoder_layer", "decoder_step", "generate")
# Timing runs per case at most (see run_cases). On the development VM (2026-12-02) one
# case's median moved by a median 5-9% between three quick validations minutes apart,
# and a B=1 decoder layer's by up to 25% between back-to-back runs of 0.3 s
# (3.2, 3.5, 4.0 ms): one run is not enough.
TRIES = 3
JNP_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Case:
    """One benchmark configuration. The decoder's attention is MHA when kv_heads is
    None, else GQA (1 < kv_heads < heads) or MQA (kv_heads == 1)."""

    kind: str
    encoder_size: str = "base"
    decoder_size: str = "base"
    kv_heads: int | None = None
    cross_attn_every: int = 1  # K
    batch: int = 1
    passages: int = 10
    passage_len: int = 128
    step: int = 16  # self-attention cache length t at the timed decoding step
    target_len: int = 8  # decoding steps (generate only)
    cross: bool = True  # decoder_layer: with cross-attention
    dtype: str = "fp32"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown case kind {self.kind!r}")

    @cached_property
    def model(self) -> ModelSpec:
        m = override_model(load_model("fid-base"), encoder_size=self.encoder_size,
                           decoder_size=self.decoder_size, kv_heads=self.kv_heads,
                           cross_attn_every=self.cross_attn_every)
        return m.replace(name=f"enc-{self.encoder_size}/dec-{self.decoder_size}")

    @property
    def workload(self) -> Workload:
        return Workload.with_dtype(self.dtype, passages=self.passages, passage_len=self.passage_len,
                                   target_len=self.target_len if self.kind == "generate" else self.step,
                                   batch=self.batch)

    @property
    def attention(self) -> str:
        d = self.model.decoder
        return "MHA" if d.num_kv_heads == d.num_heads else "MQA" if d.num_kv_heads == 1 else "GQA"

    @property
    def name(self) -> str:
        d = self.model.decoder
        parts = [self.kind, f"enc-{self.encoder_size}" if self.kind in ("encoder_layer", "generate") else "",
                 f"dec-{self.decoder_size}" if self.kind != "encoder_layer" else "",
                 f"{self.attention}{d.num_kv_heads}" if self.kind != "encoder_layer" else "",
                 f"K{self.cross_attn_every}" if self.kind in ("decoder_step", "generate") else "",
                 "" if self.kind != "decoder_layer" else ("cross" if self.cross else "nocross"),
                 f"B{self.batch}", f"P{self.passages}", f"N{self.passage_len}",
                 f"t{self.step}" if self.kind in ("decoder_layer", "decoder_step") else "",
                 f"T{self.target_len}" if self.kind == "generate" else "", self.dtype]
        return "/".join(p for p in parts if p)

    def config(self) -> dict:
        d = self.model.decoder
        out = dataclasses.asdict(self)
        out.update(case=self.name, attention=self.attention, kv_heads=d.num_kv_heads,
                   heads=d.num_heads, cross_layers=d.num_cross_layers)
        return out


# --------------------------------------------------------------------------- the model's view


def case_ops(case: Case, impl=None, rows: int = 128) -> list[costs.Op]:
    """The ops the cost model says one call of the case runs (not for generate), cut
    as ``impl`` cuts them (default: xla, as the JAX layers here run)."""
    impl = impl or costs.XLA
    m, wl = case.model, case.workload
    w, a, c = dtype_bytes(wl)
    B, P, N, t = case.batch, case.passages, case.passage_len, case.step
    e, d = m.encoder, m.decoder
    ed, dd = stack_dims(e), stack_dims(d)
    if case.kind == "encoder_layer":
        return costs.encoder_layer(*ed, B, P, N, w, a, impl, rows)
    if case.kind == "cross_kv":
        return costs.cross_kv_layer(e.emb_dim, d.num_kv_heads, d.head_dim, B, P, N, w, a, c, impl)
    if case.kind == "decoder_layer":
        return costs.decoder_layer(*dd, B, P, N, t, case.cross, w, a, c, impl, rows)
    if case.kind == "decoder_step":
        ops = costs.decoder_embed(d.emb_dim, B, w, a, impl)
        for i in range(d.num_layers):
            ops += costs.decoder_layer(*dd, B, P, N, t, d.has_cross_attn(i), w, a, c, impl, rows)
        return ops + costs.decoder_head(d.emb_dim, m.vocab_size, B, w, a, impl)
    raise ValueError(f"case_ops does not cover {case.kind}")


def predict_case(case: Case, hw: Hardware, settings: Settings = Settings()) -> dict:
    """Predicted time of one call: the profile's per-call overhead plus the sum of
    the op times (each with its fixed cost per kernel)."""
    wl = case.workload
    settings = settings.resolve(hw)
    if case.kind == "generate":
        ops = ops_table(case.model, hw, wl, settings)
        sums = ops[["flops", "bytes", "compute_s", "memory_s", "time_s"]].sum()
        mm = ops.loc[ops["kind"].isin(["matmul", "attention"]), "flops"].sum()
        flops, nbytes, compute_s, memory_s, time_s = (float(sums[k]) for k in
                                                       ("flops", "bytes", "compute_s", "memory_s", "time_s"))
    else:
        flops = nbytes = compute_s = memory_s = time_s = mm = 0.0
        for op in case_ops(case, settings.impl(hw), flash_rows(hw)):
            cs, ms, ts = op_times(op, hw, wl.compute_dtype, wl.act_dtype, settings)
            flops += float(op.flops)
            nbytes += float(op.bytes)
            mm += float(op.flops) if op.kind in ("matmul", "attention") else 0.0
            compute_s, memory_s, time_s = compute_s + float(cs), memory_s + float(ms), time_s + float(ts)
    return {"predicted_s": time_s + hw.overhead_s_per_call, "model_flops": flops, "model_matmul_flops": mm,
            "model_bytes": nbytes, "predicted_compute_s": compute_s, "predicted_memory_s": memory_s,
            "predicted_bound": "compute" if compute_s >= memory_s else "memory"}


# --------------------------------------------------------------------------- the JAX side


def build(case: Case, pool):
    """(function, make_args) for the case; make_args() draws one fresh input set."""
    import jax
    import jax.numpy as jnp

    from . import layers as L
    m, dtype = case.model, JNP_DTYPES[case.dtype]
    de, dd = L.Dims.of(m.encoder), L.Dims.of(m.decoder)
    B, P, N, t = case.batch, case.passages, case.passage_len, case.step
    S = P * N
    rand = pool.array

    if case.kind == "encoder_layer":
        def fn(p, x):
            return L.encoder_layer(p, x, de)

        def make():
            return L.init_layer(rand, de, dtype), rand((B * P, N, de.D), dtype)
    elif case.kind == "cross_kv":
        def fn(w, enc_out):
            return L.cross_kv({"cross_kv": w}, enc_out, dd)

        def make():
            return rand((de.D, 2 * dd.G * dd.dk), dtype, de.D ** -0.5), rand((B, S, de.D), dtype)
    elif case.kind == "decoder_layer":
        def fn(p, x, sk, sv, ck, cv):
            return L.decoder_layer_step(p, x, sk, sv, ck, cv, dd)

        def make():
            cache = (B, dd.G, t - 1, dd.dk)
            cross = (rand((B, dd.G, S, dd.dk), dtype), rand((B, dd.G, S, dd.dk), dtype)) if case.cross else (
                None, None)
            return (L.init_layer(rand, dd, dtype, case.cross, de.D), rand((B, dd.D), dtype),
                    rand(cache, dtype), rand(cache, dtype), *cross)
    elif case.kind == "decoder_step":
        dec = m.decoder

        def fn(p, tokens, sks, svs, cks, cvs):
            return L.decoder_step(p, tokens, sks, svs, cks, cvs, dec)

        def make():
            cache = (B, dd.G, t - 1, dd.dk)
            n_cross = dec.num_cross_layers
            return (L.init_decoder(rand, dec, dtype, m.vocab_size, de.D),
                    jax.random.randint(jax.random.PRNGKey(t), (B,), 0, m.vocab_size, jnp.int32),
                    [rand(cache, dtype) for _ in range(dec.num_layers)],
                    [rand(cache, dtype) for _ in range(dec.num_layers)],
                    [rand((B, dd.G, S, dd.dk), dtype) for _ in range(n_cross)],
                    [rand((B, dd.G, S, dd.dk), dtype) for _ in range(n_cross)])
    else:  # generate
        T = case.target_len

        def fn(p, passages):
            return L.generate(p, passages, m, T)

        def make():
            toks = jax.random.randint(jax.random.PRNGKey(B * P), (B, P, N), 0, m.vocab_size, jnp.int32)
            return L.init_model(rand, m, dtype), toks
    return fn, make


def tree_bytes(tree) -> int:
    import jax

    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")))


_DOT = re.compile(r"stablehlo\.dot_general[^\n]*?contracting_dims = \[([\d, ]*)\] x \[[\d, ]*\]"
                  r"[^\n]*?: \(tensor<([^>]*)>, tensor<[^>]*>\) -> tensor<([^>]*)>")


def hlo_dot_flops(stablehlo_text: str) -> float:
    """2 x output elements x contracted size, summed over every dot_general of the
    lowered module: XLA's matmul FLOPs read from its own IR, independent of the model."""
    total = 0.0
    for contract, lhs, out in _DOT.findall(stablehlo_text):
        lhs_dims = [int(x) for x in lhs.split("x")[:-1]]
        out_dims = [int(x) for x in out.split("x")[:-1]]
        k = np.prod([lhs_dims[int(i)] for i in contract.split(",") if i.strip()] or [1])
        total += 2.0 * float(np.prod(out_dims or [1])) * float(k)
    return total


def compile_case(case: Case, pool):
    """Lower and compile the case; returns (compiled, lowered, make_args, args)."""
    import jax

    fn, make = build(case, pool)
    args = make()
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(), lowered, make, args


def xla_counts(case: Case, lowered, compiled) -> dict:
    """XLA's own counts of the compiled case: its cost analysis and its HLO dots."""
    from .timing import cost_analysis

    pre, post = cost_analysis(lowered), cost_analysis(compiled)
    # The scan of `generate` holds its body once; its dots are not per step.
    return {"xla_flops": pre.get("flops", float("nan")),
            "xla_bytes": post.get("bytes accessed", float("nan")),
            "xla_transcendentals": pre.get("transcendentals", float("nan")),
            "hlo_dot_flops": hlo_dot_flops(lowered.as_text()) if case.kind != "generate" else float("nan")}


def xla_check(counts: dict, model: dict) -> dict:
    """The model's FLOPs and bytes against XLA's counts (:func:`xla_counts`)."""
    dots, flops, nbytes = counts["hlo_dot_flops"], counts["xla_flops"], counts["xla_bytes"]
    return {**counts,
            "matmul_flops_ratio": model["model_matmul_flops"] / dots if dots else float("nan"),
            "flops_ratio": model["model_flops"] / flops if flops else float("nan"),
            "bytes_ratio": model["model_bytes"] / nbytes if nbytes else float("nan")}


# --------------------------------------------------------------------------- suites


def estimated_bytes(case: Case) -> float:
    """Rough input bytes of one argument set (weights, caches, activations)."""
    from ..costmodel.prediction import memory_footprint

    m, wl = case.model, case.workload
    b = DTYPE_BYTES[wl.act_dtype]
    e, d = m.encoder, m.decoder
    S = case.passages * case.passage_len
    cross = 2 * case.batch * d.num_kv_heads * S * d.head_dim * b
    if case.kind == "encoder_layer":
        return costs.stack_params(*stack_dims(e), 1) * b + case.batch * S * e.emb_dim * b * 6
    if case.kind == "cross_kv":
        return case.batch * S * e.emb_dim * b + cross
    if case.kind == "decoder_layer":
        return 9 * d.emb_dim * d.emb_dim * b + (cross if case.cross else 0)
    if case.kind == "decoder_step":
        return memory_footprint(m, _CPU_LIMITS, wl)["weight_bytes"] + cross * d.num_cross_layers
    return memory_footprint(m, _CPU_LIMITS, wl)["peak_bytes"]


# A stand-in profile for counting FLOPs and bytes when no hardware is given.
_CPU_LIMITS = Hardware(name="counts-only", description="", kind="datasheet",
                       peak_flops_per_s={k: 1.0 for k in DTYPE_BYTES}, hbm_bytes_per_s=1.0,
                       hbm_capacity_bytes=24 * 2**30, on_chip_bytes=None, interconnect_bytes_per_s=None,
                       tdp_w=None, price_per_chip_hour_usd=None,
                       efficiency={"compute": Curve(((1.0, 1.0),)), "memory": Curve(((1.0, 1.0),))})


def suite(name: str, dtype: str = "fp32") -> list[Case]:
    """The benchmark cases. ``quick``: a few small cases for tests (seconds).
    ``full``: batch 1-32, 10-100 passages, MHA/GQA/MQA, K = 1, 2, 6, decoder sizes
    base and large, plus encoder layers, projections and whole samples."""
    C = lambda kind, **kw: Case(kind, dtype=dtype, **kw)  # noqa: E731
    if name == "quick":
        return [
            C("encoder_layer", batch=1, passages=4, passage_len=64),
            C("cross_kv", batch=2, passages=10, passage_len=64),
            C("decoder_layer", batch=4, passages=10, passage_len=64, step=8),
            C("decoder_layer", batch=4, passages=40, passage_len=64, step=8),
            C("decoder_layer", batch=4, passages=10, passage_len=64, step=8, kv_heads=1),
            C("decoder_step", batch=2, passages=10, passage_len=64, step=8),
            C("decoder_step", batch=2, passages=10, passage_len=64, step=8, kv_heads=1, cross_attn_every=6),
        ]
    if name != "full":
        raise ValueError(f"unknown suite {name!r} (quick or full)")
    cases = []
    for size in ("base", "large"):
        for kv in (None, 4, 1):
            for B in (1, 8, 32):
                for P in (10, 50, 100):
                    cases.append(C("decoder_layer", decoder_size=size, kv_heads=kv, batch=B, passages=P))
        cases += [C("decoder_layer", decoder_size=size, cross=False, batch=B) for B in (1, 8, 32)]
        for K in (1, 2, 6):
            for kv in (None, 4, 1):
                for B, P in ((1, 100), (8, 20), (32, 10)):
                    cases.append(C("decoder_step", decoder_size=size, kv_heads=kv, cross_attn_every=K,
                                   batch=B, passages=P))
        cases += [C("encoder_layer", encoder_size=size, batch=B, passages=P) for B, P in ((1, 10), (2, 20))]
        cases += [C("cross_kv", encoder_size=size, decoder_size=size, kv_heads=kv, batch=8, passages=20)
                  for kv in (None, 1)]
    cases += [C("generate", kv_heads=kv, cross_attn_every=K, batch=4, passages=10, passage_len=64,
                target_len=8) for kv, K in ((None, 1), (1, 6))]
    return cases


def run_cases(cases: list[Case], hw: Hardware | None = None, *, memory_limit_bytes: float = 10 * 2**30,
              min_time_s: float = 0.3, tries: int = TRIES, progress: bool = True, settings: Settings = Settings()):
    """Time every case (and predict it when ``hw`` is given). Returns (records,
    skipped): one dict per case with its configuration, timing, spread, model and
    XLA figures; skipped cases with the reason. Each case is timed in runs of at
    least ``min_time_s`` until two successive runs agree within STABLE_WITHIN, at
    most ``tries`` runs (:func:`fidoperf.measure.timing.time_settled`)."""
    runner = CaseRunner(cases, memory_limit_bytes=memory_limit_bytes, min_time_s=min_time_s, progress=progress)
    runner.run_pass(tries)
    return runner.results(hw, settings)


class CaseRunner:
    """Times a list of cases in one or more passes: each pass compiles every case, makes
    its inputs and times it (:func:`fidoperf.measure.timing.time_settled`, at most
    ``tries`` runs), then frees it. Several passes minutes apart sample the machine's
    slow and fast phases as a calibration's passes do, and can be interleaved with them
    (:func:`fidoperf.measure.calibrate.calibrate`, ``interleave``); :meth:`results`
    keeps each case's median over the passes."""

    def __init__(self, cases: list[Case], *, memory_limit_bytes: float = 10 * 2**30, min_time_s: float = 0.3,
                 progress: bool = True):
        self.min_time_s, self.progress = min_time_s, progress
        self.cases, self.skipped = [], []
        for case in cases:
            need = estimated_bytes(case)
            if need * 1.5 > memory_limit_bytes:
                self.skipped.append({"case": case.name,
                                     "reason": f"needs about {need / 2**30:.1f} GiB of inputs, over the "
                                               f"{memory_limit_bytes / 2**30:.0f} GiB limit"})
            else:
                self.cases.append(case)
        self.timings: dict[str, list] = {c.name: [] for c in self.cases}  # one Timing a pass
        self.checks: dict[str, dict] = {}  # input bytes and XLA's counts, from the first pass

    @property
    def passes(self) -> int:
        """Passes run so far."""
        return min((len(t) for t in self.timings.values()), default=0)

    def run_pass(self, tries: int = 1):
        import jax

        from .timing import RandomPool, copies_for, time_settled

        pool = RandomPool()
        bar = _progress(len(self.cases), self.progress)
        for case in self.cases:
            bar.set_description(case.name[:60])
            compiled, lowered, make, args = compile_case(case, pool)
            working = tree_bytes(args)
            copies = copies_for(working) if case.kind != "generate" else 1
            arg_sets = [args] + [make() for _ in range(copies - 1)]
            self.timings[case.name].append(time_settled(compiled, arg_sets, tries=tries, what=case.name,
                                                        min_time_s=self.min_time_s))
            if case.name not in self.checks:
                self.checks[case.name] = {"input_bytes": working, **xla_counts(case, lowered, compiled)}
            del arg_sets, args, compiled, lowered
            jax.clear_caches()
            bar.update()
        bar.close()

    def results(self, hw: Hardware | None = None, settings: Settings = Settings()):
        """(records, skipped) as :func:`run_cases` returns them. After one pass a case's
        timing is that pass's; after several, their median (``tries``: the passes,
        ``settled``: two of them agreed within STABLE_WITHIN)."""
        from .timing import any_two_agree, combine_runs

        records = []
        for case in self.cases:
            runs = self.timings[case.name]
            timing = runs[0] if len(runs) == 1 else combine_runs(runs, any_two_agree([r.median_s for r in runs]))
            checks = dict(self.checks[case.name])
            rec = {**case.config(), "input_bytes": checks.pop("input_bytes"), **timing.as_dict()}
            model = predict_case(case, hw or _CPU_LIMITS, settings)
            rec.update(xla_check(checks, model))
            if hw is not None:
                rec.update(model)
                rec["ratio"] = rec["predicted_s"] / rec["measured_s"]
            else:
                rec.update({k: model[k] for k in ("model_flops", "model_matmul_flops", "model_bytes")})
            records.append(rec)
        return records, list(self.skipped)


class _NoProgress:
    def set_description(self, _):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    # disable=None: shown on a terminal, silent in logs and pipes
    return tqdm(total=total, disable=None, unit="case", leave=False, dynamic_ncols=True)
