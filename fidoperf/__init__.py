"""fidoperf: a performance model of FiD and FiDO (Fusion-in-Decoder) inference.

The public API, in one place (everything else is internal and may move)::

    import fidoperf as fp
    model, hw = fp.load_model("fido-base"), fp.load_hardware("tpu-v4")   # names or YAML paths
    p = fp.predict(model, hw, fp.Workload(batch=24))
    p.ops          # DataFrame, one row per operator and layer
    p.totals       # per-sample FLOPs, bytes, time; max batch
    p.memory       # weights, caches, activations, largest batch
    fp.predict(model, hw, settings=fp.Settings(efficiency="roofline"))   # the datasheet bound
    fp.predict(model, hw, layout=fp.Layout(chips=8, tensor_parallel=4))  # across chips

    fp.op_table("gemm", {"m": [1, 64], "n": [768], "k": [3072]}, "h100-sxm")  # one kernel each
    fp.simulate(model, hw, qps=40.0, policy="continuous")                     # serving under load
    fp.plan([model], [hw], fp.Workload(), qps=200, latency_ms=1000,          # chips for a load
            serving=fp.ServingPlan(layouts="single"))                     # (one chip per replica)
    from fidoperf.sweep import parse_vary, sweep        # vectorised what-if grids

The package is arranged by stage, and imports point one way, downwards:

    cli/        the command line (click), a thin layer over the rest
    present/    tables, plots, reports
    whatif/     sweeps, serving simulation and capacity plans
    measure/    JAX and PyTorch layers, timing, calibrate, bench, validate
    costmodel/  FLOPs and bytes per operator, times, totals, memory
    specs/      YAML -> validated frozen dataclasses (hardware, model, workload)
    errors.py   the one error type for bad input

Attributes are imported on first use so that ``fidoperf --help`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SpecError": "errors",
    "Workload": "specs",
    "ModelSpec": "specs",
    "StackSpec": "specs",
    "Hardware": "specs",
    "load_model": "specs",
    "load_hardware": "specs",
    "override_model": "specs",
    "model_names": "specs",
    "hardware_names": "specs",
    "Settings": "costmodel.prediction",
    "Prediction": "costmodel.prediction",
    "predict": "costmodel.prediction",
    "ops_table": "costmodel.prediction",
    "memory_footprint": "costmodel.prediction",
    "Layout": "specs.layout",
    "op_table": "costmodel.optable",
    "simulate": "whatif.simulate",
    "max_sustainable_rate": "whatif.simulate",
    "plan": "whatif.plan",
    "ServingPlan": "whatif.plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'fidoperf' has no attribute {name!r}")
