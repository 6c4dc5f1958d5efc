"""Specifications: hardware profiles, model architectures and workloads, read from YAML
and validated once into frozen dataclasses.

Data flows one way: YAML -> the dataclasses here -> the cost and time model
(:mod:`fidoperf.costmodel`) -> what-if and serving (:mod:`fidoperf.whatif`) ->
presentation (:mod:`fidoperf.present`) -> the command line (:mod:`fidoperf.cli`).
Every problem in a file raises :class:`~fidoperf.errors.SpecError` naming the file
and the field.

Units: FLOP/s, bytes (decimal: 1 GB = 1e9 B; GiB = 2**30 B), bytes/s, seconds, W.
"""

from __future__ import annotations

from .dtypes import DTYPE_BYTES, DTYPE_PRESETS
from .hardware import (
    CURVE_AXES,
    EFFICIENCY_KEYS,
    OP_KINDS,
    Curve,
    Hardware,
    Sourced,
    hardware_from_dict,
    hardware_names,
    load_hardware,
)
from .interconnect import Interconnect, Nvls, Tier, interconnect_from_dict
from .model import (
    STACK_FIELDS,
    ModelSpec,
    StackSpec,
    load_model,
    model_from_dict,
    model_names,
    override_model,
    t5_family,
    t5_sizes,
    validate_stack,
)
from .workload import Workload
from .yamlio import read_yaml

__all__ = [
    "CURVE_AXES", "DTYPE_BYTES", "DTYPE_PRESETS", "EFFICIENCY_KEYS", "OP_KINDS", "STACK_FIELDS", "Curve",
    "Hardware", "Interconnect", "ModelSpec", "Nvls", "Sourced", "StackSpec", "Tier", "Workload",
    "hardware_from_dict", "hardware_names", "interconnect_from_dict", "load_hardware", "load_model",
    "model_from_dict", "model_names", "override_model", "read_yaml", "t5_family", "t5_sizes", "validate_stack",
]
