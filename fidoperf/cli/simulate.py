"""`fidoperf simulate`: request-level serving simulation (queueing, batching policies,
latency percentiles), and the highest rate that meets a latency target."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (
    InputError,
    build_layout,
    build_model,
    build_settings,
    check_writable,
    hardware_option,
    layout_options,
    model_options,
    settings_options,
    write_atomic,
    write_output,
)

RECORD_SUFFIXES = (".csv", ".json")
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")

TRACE_HELP = (
    "CSV of requests instead of --arrivals/--qps/sizes: a header with the columns arrival_s (seconds, not "
    "decreasing), passages, passage_len, target_len (whole numbers >= 1), one request a row."
)


def _dists(items):
    out = {}
    for item in items:
        field, sep, kind = item.partition("=")
        if not sep or not field.strip() or not kind.strip():
            raise InputError(f"--dist: expected FIELD=KIND (e.g. target_len=geometric), got {item!r}")
        out[field.strip().replace("-", "_")] = kind.strip()
    return out


MODEL_OPTIONS = ("kv_heads", "cross_attn_every", "encoder_size", "decoder_size", "decoder_layers", "encoder_layers")
LAYOUT_OPTIONS = ("chips", "tensor_parallel", "shard_kv", "encoder_chips", "decoder_chips")


def _echo(kw, hardware, replicas=None, ship="auto") -> dict:
    """The model, hardware and layout as given on the command line (names or files,
    overrides)."""
    return {"model_arg": kw.get("model"), "hardware_arg": hardware,
            "model_options": {k: kw[k] for k in MODEL_OPTIONS if kw.get(k) is not None},
            "layout_options": {k: kw.get(k) for k in LAYOUT_OPTIONS} | {"replicas": replicas, "ship": ship}}


def _summary_text(res) -> str:
    from ..present.fmt import seconds

    s, st = res.summary, res.settings
    where = f"{st['model']} on {st['hardware']}, {st['layout_label']}" + (
        f" (ships {st['shipped'].replace('_', ' ')})" if st["shipped"] else "")
    load = (f"trace {st['trace']} ({s['offered_qps']:.4g} queries/s on average)" if st["trace"]
            else f"{st['arrivals']} arrivals at {st['qps']:g} queries/s"
            + (f" (cv {st['cv']:g})" if st["cv"] is not None else ""))
    lines = [
        f"{where}, {st['policy']} batching (at most {st['batch_cap']} requests per replica"
        + (f", wait up to {st['max_wait_s'] * 1e3:g} ms" if st["policy"] == "static" else "") + f"); {load}",
        f"{s['requests']} requests (statistics over the last {s['measured_requests']}), seed {st['seed']}; "
        f"capacity {s['capacity_qps']:.4g} queries/s, offered {s['offered_qps']:.4g} ({100 * s['load']:.0f}%)",
    ]
    if not s["sustainable"]:
        lines.append(
            f"NOT SUSTAINABLE: the offered load exceeds the {s['capacity_qps']:.4g} queries/s the chips can serve; "
            f"the queue grows without bound (up to {s['max_waiting']} waiting in this run), so no latency is "
            "reported.")
    else:
        if not s["steady_state"]:
            lines.append(
                f"note: at {100 * s['load']:.1f}% of capacity a run of {s['requests']} requests does not reach a "
                "steady state (a queue this close to saturation relaxes over about (1 - load)^-2 requests); "
                "the figures describe this run, and more requests would give higher percentiles.")
        lines += [
            f"latency   mean {seconds(s['latency_mean_s'])}, p50 {seconds(s['latency_p50_s'])}, "
            f"p90 {seconds(s['latency_p90_s'])}, p99 {seconds(s['latency_p99_s'])}, max {seconds(s['latency_max_s'])}",
            f"first token p50 {seconds(s['ttft_p50_s'])}, p99 {seconds(s['ttft_p99_s'])}; per output token "
            f"{seconds(s['tpot_mean_s'])} on average; queueing p99 {seconds(s['queue_p99_s'])}",
        ]
    pools = "".join(f", {name} {100 * s[f'{name}_utilisation']:.1f}%" for name in ("encoder", "decoder", "link")
                    if f"{name}_utilisation" in s)
    lines.append(
        f"throughput {s['throughput_qps']:.4g} queries/s, utilisation {100 * s['utilisation']:.1f}%{pools}, "
        f"mean decoding batch {s['mean_decode_batch']:.3g}, at most {s['max_waiting']} waiting")
    if s.get("latency_target_s") is not None:
        pct = s["percentile"]
        got = s["latency_percentile_s"]
        lines.append(
            f"target p{pct:g} <= {s['latency_target_s'] * 1e3:g} ms: "
            + ("met" if s["meets_target"] else "NOT met")
            + (f" (p{pct:g} {seconds(got)})" if got is not None else "")
            + f"; goodput {s['goodput_qps']:.4g} queries/s ({100 * s['fraction_within_target']:.1f}% within)")
    return "\n".join(lines)


def _search_text(r) -> str:
    st = r.settings
    head = (f"{st['model']} on {st['hardware']}, {st['layout_label']}, {st['policy']} batching, {st['arrivals']} "
            f"arrivals, p{r.percentile:g} <= {r.target_s * 1e3:g} ms (seed {st['seed']}, {st['requests']} requests "
            f"per rate)")
    if r.rate_qps <= 0:
        return f"{head}\nno rate meets the target: {r.reason}"
    return (f"{head}\nhighest rate: {r.rate_qps:.4g} queries/s (p{r.percentile:g} {r.latency_s * 1e3:.4g} ms; "
            f"capacity {r.capacity_qps:.4g} queries/s; a lone request {r.floor_latency_s * 1e3:.4g} ms)"
            + (f"\n{r.reason}" if r.reason else ""))


@click.command()
@model_options
@hardware_option()
@click.option("--passages", "-p", type=int, default=40, show_default=True,
              help="Passages per request (the mean, with --dist passages=...).")
@click.option("--passage-len", type=int, default=256, show_default=True,
              help="Tokens per passage, question included (the mean, with --dist).")
@click.option("--target-len", type=int, default=32, show_default=True,
              help="Generated tokens per request (the mean, with --dist).")
@click.option("--dist", "dist", multiple=True, metavar="FIELD=KIND",
              help="Draw a request size around its option as the mean: FIELD passages, passage_len or "
                   "target_len; KIND fixed, uniform (1 .. 2m-1) or geometric (1, 2, ..., p = 1/m). Repeatable.")
@click.option("--dtype", default="bf16", show_default=True,
              type=click.Choice(["bf16", "fp16", "fp32", "tf32", "int8", "fp8"]),
              help="Weights/activations/KV cache and matmul rate (as in `fidoperf predict`).")
@settings_options
@click.option("--arrivals", type=click.Choice(["poisson", "gamma", "deterministic"]), default="poisson",
              show_default=True,
              help="poisson: exponential gaps; gamma: gamma gaps with --cv (> 1: bursts); deterministic: even gaps.")
@click.option("--qps", type=float, help="Arrival rate, queries per second (not with --trace).")
@click.option("--cv", type=float, default=2.0, show_default=True,
              help="Coefficient of variation of the gaps between arrivals (--arrivals gamma).")
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help=TRACE_HELP)
@click.option("--policy", type=click.Choice(["static", "continuous"]), default="continuous", show_default=True,
              help="static: batches dispatched full or after --max-wait-ms, decoded to their longest output; "
                   "continuous: requests join and leave the decoding batch between steps.")
@click.option("--max-batch", type=int, default=128, show_default=True,
              help="Most requests in a batch per chip; memory may allow fewer.")
@click.option("--max-wait-ms", type=float, default=10.0, show_default=True,
              help="static: dispatch a batch that is not full once its oldest request waited this long.")
@click.option("--requests", "-n", type=int, help="Requests to simulate [default: 10000; with --trace, all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of arrivals, sizes and spread.")
@click.option("--service-cv", type=float, default=0.0, show_default=True,
              help="Spread of each encode and decoding step around its predicted time (coefficient of variation).")
@layout_options
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="Data-parallel copies of one tensor-parallel group, sharing one queue: the same as --chips "
                   "REPLICAS x --tensor-parallel (not with --chips or the pools).")
@click.option("--ship", type=click.Choice(["auto", "encoder_outputs", "cross_kv"]), default="auto",
              show_default=True,
              help="With --encoder-chips/--decoder-chips: what the encoder pool ships; auto: what `fidoperf "
                   "predict` finds cheaper for one request of the median size.")
@click.option("--warmup", type=float, default=0.1, show_default=True,
              help="Fraction of the first requests left out of the statistics.")
@click.option("--latency-ms", type=float, help="Latency target: goodput, and whether the percentile meets it.")
@click.option("--percentile", type=float, default=99.0, show_default=True, help="Percentile the target applies to.")
@click.option("--find-rate", is_flag=True,
              help="Instead of one run: search the highest rate that meets --latency-ms at --percentile.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="Summary format; JSON and CSV keep SI units (s, queries/s).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Write the per-request records here (.csv or .json).")
@click.option("--plot", type=click.Path(path_type=Path),
              help="Write figures here (.png, .svg, .pdf): latency against offered load (extra runs at 5% to "
                   "95% of capacity) and the queue over time.")
def simulate(hardware, passages, passage_len, target_len, dist, dtype, arrivals, qps, cv, trace, policy,
             max_batch, max_wait_ms, requests, seed, service_cv, replicas, ship, warmup, latency_ms, percentile,
             find_rate, fmt, output, plot, **kw):
    """Simulate serving requests: queueing, batching, latency percentiles.

    Requests arrive (--arrivals at --qps, or --trace FILE), each with its own passages
    and output length, and are served first come, first served under the --policy by
    the replicas of the layout (--chips, --tensor-parallel, or separate encoder and
    decoder pools with --encoder-chips/--decoder-chips, as in `fidoperf predict`); every
    encode, shipment and decoding step takes fidoperf's predicted time for one chip of a
    replica with the batch as composed at that moment (collectives included), and a batch
    never holds more requests than fit in a chip's memory. With pools, the decoder pool
    pulls encoded requests when it has room and keeps decoding while the encoder pool
    encodes. Prints latency (p50, p90, p99), time to first token,
    throughput and utilisation; when the offered load exceeds what the chips can serve
    it says so and reports no latency. With --find-rate, the highest rate whose
    --percentile latency stays within --latency-ms.

    Trace CSV columns: arrival_s, passages, passage_len, target_len.
    """
    for path, suffixes, what in ((output, RECORD_SUFFIXES, "records"), (plot, FIGURE_SUFFIXES, "figure")):
        if path is not None and path.suffix.lower() not in suffixes:
            raise InputError(f"{path}: unknown {what} format {path.suffix or '(none)'!r} (use {', '.join(suffixes)})")
        check_writable(path)
    if trace is not None and qps is not None:
        raise InputError("--qps: not with --trace (the trace has its own arrival times)")
    if find_rate and latency_ms is None:
        raise InputError("--find-rate: needs --latency-ms")
    if find_rate and trace is not None:
        raise InputError("--find-rate: not with --trace (the search draws its own arrivals)")
    if replicas is not None:
        if kw.get("chips") is not None or kw.get("encoder_chips") is not None or kw.get("decoder_chips") is not None:
            raise InputError("--replicas: not with --chips or --encoder-chips/--decoder-chips (it sets --chips)")
        kw["chips"] = replicas * kw["tensor_parallel"]
    layout = build_layout(**kw)
    if ship != "auto" and not layout.pooled:
        raise InputError("--ship: only with separate pools (--encoder-chips and --decoder-chips)")
    from ..specs import Workload, load_hardware
    from ..whatif import simulate as S

    model = build_model(**kw)
    hw = load_hardware(hardware)
    wl = Workload.with_dtype(dtype, passages=passages, passage_len=passage_len, target_len=target_len, batch=1)
    settings = build_settings(**kw)
    dists = _dists(dist)
    common = dict(policy=policy, max_batch=max_batch, max_wait_ms=max_wait_ms, layout=layout,
                  ship=None if ship == "auto" else ship, service_cv=service_cv, dists=dists, warmup=warmup,
                  percentile=percentile, settings=settings, seed=seed, cv=cv, arrivals=arrivals)
    if find_rate:
        search = S.max_sustainable_rate(model, hw, wl, target_s=latency_ms / 1e3,
                                        requests=4000 if requests is None else requests, **common)
        search.settings.update(_echo(kw, hardware, replicas, ship))
        _print_search(search, fmt)
        return
    res = S.simulate(model, hw, wl, qps=qps, trace=trace, requests=requests, latency_target_s=(
        None if latency_ms is None else latency_ms / 1e3), **common)
    res.settings.update(_echo(kw, hardware, replicas, ship))
    if fmt == "json":
        from ..present.fmt import to_json

        text = to_json(res.to_dict())
    elif fmt == "csv":
        import pandas as pd

        text = pd.DataFrame([res.summary]).to_csv(index=False)
    else:
        text = _summary_text(res)
    write_output(text, None)
    if output is not None:
        if output.suffix.lower() == ".json":
            from ..present.fmt import to_json

            data = to_json(res.records.astype(object).where(res.records.notna(), None).to_dict(orient="records"))
        else:
            data = res.records.to_csv(index=False)
        write_atomic(output, data.encode())
        click.echo(f"wrote {output}", err=True)
    if plot is not None:
        _plot(res, model, hw, wl, trace, requests, common, plot, latency_ms)


def _print_search(search, fmt):
    if fmt == "table":
        click.echo(_search_text(search))
        return
    from ..present.fmt import to_json

    summary = {"rate_qps": search.rate_qps, "latency_s": search.latency_s, "capacity_qps": search.capacity_qps,
               "floor_latency_s": search.floor_latency_s, "percentile": search.percentile,
               "target_s": search.target_s, "reason": search.reason}
    if fmt == "json":
        click.echo(to_json({"search": summary, "points": search.points.to_dict(orient="records"),
                            "settings": search.settings}))
    else:
        click.echo(search.points.to_csv(index=False), nl=False)


def _plot(res, model, hw, wl, trace, requests, common, plot, latency_ms):
    from ..present import serving_plots as SP
    from ..whatif import simulate as S
    from .plots import figure_bytes

    n = min(res.summary["requests"], 4000)
    prep = S.prepare(model, hw, wl, arrivals=common["arrivals"], cv=common["cv"], trace=trace, requests=n,
                     seed=common["seed"], serving=S.Serving(common["policy"], common["max_batch"],
                                                             common["max_wait_ms"] / 1e3, 1, common["service_cv"],
                                                             common["layout"], common["ship"]),
                     dists=common["dists"], settings=common["settings"])
    curve = S.load_curve(prep, warmup=common["warmup"])
    st = res.settings
    label = f"{st['model']}, {st['policy']}"
    ax1, ax2 = SP.new_figure_axes(2)
    SP.latency_vs_load(ax1, {label: curve}, target_s=None if latency_ms is None else latency_ms / 1e3,
                       capacity_qps={label: prep.capacity_qps},
                       title=f"Latency against offered load: {st['model']} on {st['hardware']} ({st['layout_label']}), "
                             f"{st['arrivals']} arrivals ({n} requests per point)")
    SP.queue_over_time(ax2, res.queue, title=f"Queue over time in this run ({st['arrivals']}"
                       + (f" at {st['qps']:g} queries/s" if st["qps"] else "") + ")")
    write_atomic(plot, figure_bytes(ax1, plot.suffix.lower().lstrip(".")))
    click.echo(f"wrote {plot}", err=True)
