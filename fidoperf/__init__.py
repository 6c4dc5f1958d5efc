"""fidoperf: a roofline performance model of FiD and FiDO inference.

Library use::

    import fidoperf as fp
    p = fp.predict(fp.load_model("fido-base"), fp.load_hardware("tpu-v4"), fp.Workload(batch=24))
    p.ops          # DataFrame, one row per operator and layer
    p.totals       # per-sample FLOPs, bytes, time; max batch

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
    "Settings": "prediction",
    "Prediction": "prediction",
    "predict": "prediction",
    "ops_table": "prediction",
    "memory_footprint": "prediction",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'fidoperf' has no attribute {name!r}")
