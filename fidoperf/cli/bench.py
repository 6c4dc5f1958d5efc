"""`fidoperf calibrate`, `fidoperf bench`, `fidoperf validate`: measurements through JAX,
or (``--framework torch``) through PyTorch eager and Hugging Face's T5."""

from __future__ import annotations

from pathlib import Path

import click

from .options import InputError, check_writable, format_option, output_option, write_atomic, write_output


def _device_errors(fn):
    """JAX missing or a failed device: one line, exit 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..measure.timing import DeviceError
        from ..measure.torch_eager import TorchMissing

        try:
            return fn(*args, **kwargs)
        except (DeviceError, TorchMissing) as err:
            raise InputError(str(err)) from None

    return wrapper


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def _suffix_format(output: Path | None, fmt: str, allowed=("csv", "json")) -> str:
    if output is None or fmt != "table":
        return fmt
    suffix = output.suffix.lstrip(".").lower()
    if suffix not in allowed:
        raise InputError(f"{output}: cannot tell the format from the suffix (use {', '.join(allowed)}, "
                         "or --format)")
    return suffix


def _records_text(records, fmt: str, extra: dict | None = None) -> str:
    import pandas as pd

    from ..present.fmt import to_json

    if fmt == "json":
        return to_json({**(extra or {}), "cases": records})
    return pd.DataFrame(records).to_csv(index=False)


@click.command()
@click.option("--level", type=click.Choice(["quick", "full"]), default="full", show_default=True,
              help="quick: fewer sizes, shorter runs, every measurement in two passes (~2 min on a 2-core CPU); "
                   "full: three passes (~8 min).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["fp32", "bf16"]),
              help="Matmul dtypes to measure; the first drives the efficiency curves. "
                   "Default: fp32 on CPU, bf16 and fp32 on accelerators.")
@output_option("Write the profile YAML here (default: print it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.option("--framework", type=click.Choice(["jax", "torch"]), default="jax", show_default=True,
              help="Measure through JAX (compiled: the xla implementation) or PyTorch eager (the profile makes "
                   "the eager implementation its default; needs pip install 'fidoperf[torch]').")
@_device_errors
def calibrate(level, dtypes, output, quiet, framework):
    """Measure this device through JAX (or PyTorch) and write a hardware profile.

    Peak matmul FLOP/s per dtype, matmul and attention efficiency by rows, cold
    streaming bandwidth by size for decoding's access patterns, and fixed costs per
    call and per op (PyTorch: the dispatch cost of one framework operation). The YAML
    has the shipped schema (kind: measured, with machine, date and versions) and
    works at once as `--hardware FILE` with every command.
    """
    from ..measure.calibrate import calibrate as run
    from ..measure.calibrate import dump_profile
    from ..measure.timing import import_jax
    from ..specs import hardware_from_dict

    check_writable(output)
    if framework == "torch":
        from ..measure.torch_eager import calibrate as run_torch

        if dtypes and dtypes != ("fp32",):
            raise InputError("--dtype: calibrating through PyTorch measures fp32 only")
        profile = run_torch(level, log=None if quiet else _echo_err)
    else:
        if not dtypes:
            dtypes = ("fp32",) if import_jax().devices()[0].platform == "cpu" else ("bf16", "fp32")
        profile = run(level, dtypes, log=None if quiet else _echo_err)
    text = dump_profile(profile)
    hardware_from_dict(profile, "calibrated profile")  # the written file must load
    write_output(text, output)
    from ..measure.calibrate import profile_problems

    # Progress lines carried the warnings already; --quiet still shows them, once.
    for w in profile["measured"].get("warnings", []) if quiet else ():
        _echo_err(f"warning: {w}")
    for problem in profile_problems(profile):
        _echo_err(f"warning: implausible profile: {problem}")
    st = profile["measured"].get("stability")
    if st and not quiet:
        _echo_err(f"{st['measurements']} measurements, each taken once in each of {st['passes']} passes over the "
                  f"calibration, the median kept: spread median "
                  f"{100 * st['median_spread']:.1f}%, worst {100 * st['worst_spread']:.0f}% ({st['worst']})")
    if output:
        peaks = ", ".join(f"{k} {v['value'] / 1e9:.1f} GFLOP/s" for k, v in profile["peak_flops_per_s"].items())
        bw = profile["memory"]["bandwidth_bytes_per_s"]["value"]
        if framework == "torch":
            fixed = f"dispatch {profile['dispatch_s_per_op']['value'] * 1e6:.2f} µs per operation"
        else:
            fixed = (f"overhead {profile['overhead_s_per_call']['value'] * 1e6:.1f} µs/call, "
                     f"{profile['overhead_s_per_op']['value'] * 1e6:.2f} µs/op")
        _echo_err(f"wrote {output}: peak {peaks}, bandwidth {bw / 1e9:.1f} GB/s, {fixed}")


@click.command()
@click.option("--suite", type=click.Choice(["quick", "full"]), default="quick", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Dtype of the benchmarked layers (bf16 is slower than fp32 on XLA:CPU).")
@click.option("--memory-limit-gb", type=float, default=10.0, show_default=True,
              help="Skip (and list) cases whose inputs need more than this (GiB).")
@format_option(("table", "csv", "json"))
@output_option("Write the results here (.csv or .json; the format follows the suffix).")
@_device_errors
def bench(suite, dtype, memory_limit_gb, fmt, output):
    """Run the layer benchmarks and write tidy results.

    Every case records its configuration, the median, min, max and quartiles of its
    time, its timing runs (at most 3, until two agree within 10%) and their spread, the
    input copies rotated, the model's FLOPs and bytes, XLA's counts, and
    the device, versions and date.
    """
    import pandas as pd

    from ..measure.bench import run_cases
    from ..measure.bench import suite as make_suite
    from ..measure.timing import environment

    check_writable(output)
    fmt = _suffix_format(output, fmt)
    env = environment()
    records, skipped = run_cases(make_suite(suite, dtype), None, memory_limit_bytes=memory_limit_gb * 2**30)
    for r in records:
        r.update({f"env_{k}": v for k, v in env.items()})
    if fmt == "table":
        from ..present import fmt as F
        df = pd.DataFrame(records)
        view = pd.DataFrame({"case": df["case"], "median": df["measured_s"].map(F.seconds),
                             "min": df["min_s"].map(F.seconds), "max": df["max_s"].map(F.seconds),
                             "IQR/median": df["spread"].map(lambda v: f"{100 * v:.0f}%" + (" !" if v > 0.25 else "")),
                             "FLOPs": df["model_flops"].map(lambda v: F.si(v, "FLOP")),
                             "bytes": df["model_bytes"].map(lambda v: F.si(v, "B"))})
        text = f"{env['device']} ({env['platform']}), jax {env['jax']}, {env['date']}\n" + F.text_table(view)
    else:
        text = _records_text(records, fmt, {"environment": env, "skipped": skipped})
    write_output(text, output)
    for s in skipped:
        _echo_err(f"skipped {s['case']}: {s['reason']}")


@click.command()
@click.option("--suite", type=click.Choice(["quick", "full"]), default="quick", show_default=True)
@click.option("--hardware", "-H", default=None,
              help="Profile to predict with (name or YAML). Default: calibrate this device first.")
@click.option("--calibration", type=click.Choice(["quick", "full"]), default="full", show_default=True,
              help="Level of the calibration run when no --hardware is given.")
@click.option("--save-profile", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the profile calibrated for this run.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--memory-limit-gb", type=float, default=10.0, show_default=True)
@click.option("--passes", type=click.IntRange(1, 9), default=1, show_default=True,
              help="1: time each case in runs until two agree (at most 3). N >= 2: time every case once in "
                   "each of N passes and keep the median; without --hardware the calibration runs N passes "
                   "too, one before each pass of the cases, so that both see the same states of the machine "
                   "(JAX only; the full suite with --passes 3 and the full calibration took 17 to 62 minutes on "
                   "three 2-core development VMs).")
@click.option("--framework", type=click.Choice(["jax", "torch"]), default="jax", show_default=True,
              help="jax: the JAX layer cases; torch: FiD on Hugging Face's T5 in PyTorch eager (random weights, "
                   "no download), predicted with the eager implementation.")
@format_option(("table", "csv", "json"))
@output_option("Write the results here (.csv or .json) instead of standard output.")
@_device_errors
def validate(suite, hardware, calibration, save_profile, dtype, memory_limit_gb, passes, framework, fmt, output):
    """Predict every benchmark case, run it, and compare.

    Prints predicted and measured time per case with their ratio, then the median
    and 90th-percentile absolute relative error and the predicted and measured
    speedups of MQA over MHA, of layer-sparse over full cross-attention, and of both.
    With --framework torch: FiD-Small and FiD-Base on Hugging Face's T5, total,
    encoder and decoder times apart.
    """
    if framework == "torch":
        if passes > 1:
            raise InputError("--passes: repeated passes are for --framework jax (the torch validation times each "
                             "setting until two runs agree)")
        return _validate_torch(suite, hardware, calibration, save_profile, fmt, output)
    import pandas as pd

    from ..measure.bench import TRIES, CaseRunner
    from ..measure.bench import suite as make_suite
    from ..measure.calibrate import calibrate as run_calibration
    from ..measure.timing import environment
    from ..measure.validate import summary, summary_text
    from ..present.report import validation_table

    check_writable(output)
    check_writable(save_profile)
    fmt = _suffix_format(output, fmt)
    env = environment()
    runner = CaseRunner(make_suite(suite, dtype), memory_limit_bytes=memory_limit_gb * 2**30)

    def cases_pass(i):
        _echo_err(f"pass {i + 1}/{passes}: timing {len(runner.cases)} cases ...")
        runner.run_pass(tries=1)

    interleave = None
    if passes > 1 and hardware is None:
        interleave = (passes, f"`fidoperf validate --suite {suite} --passes {passes}`", cases_pass)
    what = f"this device ({calibration}" + (f", {passes} passes, each followed by one of the cases)"
                                            if interleave else ")")
    hw = _profile_to_validate(hardware, save_profile, what,
                              lambda: run_calibration(calibration, (dtype,), log=_echo_err, interleave=interleave))
    if passes == 1:
        runner.run_pass(TRIES)
    elif interleave is None:
        for i in range(passes):
            cases_pass(i)
    records, skipped = runner.results(hw)
    env["load_average_1min_end"] = environment()["load_average_1min"]
    df = pd.DataFrame(records)
    s = summary(df)
    if s["unsettled_cases"]:
        _echo_err(f"warning: {s['unsettled_cases']} of {s['cases']} cases never timed twice alike (column "
                  "'runs (spread)', marked !): the machine may be busy; validate again when it is quiet")
    meta = {"environment": env, "hardware": hw.name, "hardware_path": hw.path, "suite": suite,
            "passes": passes, "interleaved_with_calibration": interleave is not None, "skipped": skipped}
    from ..present import fmt as F
    load = env["load_average_1min"], env["load_average_1min_end"]
    human = (f"{env['device']} ({env['platform']}), jax {env['jax']}, {env['date']}; profile {hw.name}"
             + (f"; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after" if None not in load else "")
             + (f"\neach case timed once in each of {passes} passes, the median kept"
                + (", the calibration's passes interleaved with them" if interleave else "") if passes > 1 else "")
             + "\n"
             + F.text_table(validation_table(df)) + "\n\n" + summary_text(s))
    if skipped:
        human += "\nskipped: " + "; ".join(f"{x['case']} ({x['reason']})" for x in skipped)
    _write_validation(fmt, output, human, {**meta, "summary": s, "cases": records}, df)


def _profile_to_validate(hardware, save_profile, what: str, calibrate_now):
    """The profile named by --hardware, or (none named) one calibrated now by
    ``calibrate_now()``, also written to --save-profile when given."""
    from ..measure.calibrate import dump_profile
    from ..specs import hardware_from_dict, load_hardware

    if hardware is not None:
        return load_hardware(hardware)
    _echo_err(f"calibrating {what} ...")
    profile = calibrate_now()
    hw = hardware_from_dict(profile, "calibrated profile")
    if save_profile:
        write_atomic(save_profile, dump_profile(profile).encode())
    return hw


def _write_validation(fmt, output, human: str, data: dict, df) -> None:
    """The results as JSON (``data``), CSV (one row a case) or the table ``human``; with
    an output file the terminal still gets the table."""
    from ..present import fmt as F

    text = F.to_json(data) if fmt == "json" else df.to_csv(index=False) if fmt == "csv" else human
    write_output(text, output)
    if output:
        click.echo(human)


def _validate_torch(suite, hardware, calibration, save_profile, fmt, output):
    import pandas as pd

    from ..measure.torch_eager import calibrate as run_calibration
    from ..measure.torch_eager import environment, summary, validate
    from ..present import fmt as F

    check_writable(output)
    check_writable(save_profile)
    fmt = _suffix_format(output, fmt)
    hw = _profile_to_validate(hardware, save_profile, f"this machine through PyTorch ({calibration})",
                              lambda: run_calibration(calibration))
    env = environment()
    records = validate(hw, suite, log=_echo_err)
    df = pd.DataFrame(records)
    s = summary(records)
    view = pd.DataFrame({
        "case": df["case"], "measured": df["measured_s"].map(F.seconds), "predicted": df["predicted_s"].map(F.seconds),
        "pred/meas": df["ratio"].map(lambda v: f"{v:.2f}"),
        "encoder pred/meas": df["encoder_ratio"].map(lambda v: f"{v:.2f}"),
        "decoder pred/meas": df["decoder_ratio"].map(lambda v: f"{v:.2f}"),
        "spread": df["spread"].map(lambda v: f"{100 * v:.0f}%" + (" !" if v > 0.25 else ""))})
    human = (f"{env['cpu']} through PyTorch {env['torch']} ({env['torch_threads']} threads), transformers "
             f"{env['transformers']}, {env['date']}, load {env['load_average_1min']}; profile {hw.name}\n"
             + F.text_table(view) + "\n\n"
             + f"{s['cases']} settings: total median |error| {100 * s['median_abs_rel_error']:.1f}% "
               f"(90th percentile {100 * s['p90_abs_rel_error']:.1f}%), encoder "
               f"{100 * s['encoder_median_abs_rel_error']:.1f}%, decoder "
               f"{100 * s['decoder_median_abs_rel_error']:.1f}%")
    meta = {"environment": env, "hardware": hw.name, "hardware_path": hw.path, "suite": suite, "framework": "torch"}
    _write_validation(fmt, output, human, {**meta, "summary": s, "cases": records}, df)
