"""The fabric between chips: the tiers a collective crosses, each figure with its source.

A hardware profile ends with an ``interconnect:`` block that :func:`interconnect_from_dict`
reads into an :class:`Interconnect`. The collective cost model
(:mod:`fidoperf.costmodel.collectives`) turns it into times.

Every number, counts included, is a ``{value, source, note}`` figure.

Units: bytes/s is ONE direction per chip (NVIDIA's "900 GB/s" NVLink4 counts both
directions: 450e9 here); seconds; 1 GB = 1e9 B.

YAML schema (every number is ``{value, source, note}``, as in the rest of the file)::

    interconnect:
      library: nccl            # nccl (GPUs) | xla (TPU ICI): whose collective algorithms run
      nccl_arch: hopper        # nccl only: ampere | hopper | blackwell, picks NCCL's LL bandwidth cap
      call_latency_s: {...}    # fixed cost of one collective call (host launch, kernel start)
      node:                    # the fabric inside one node (GPUs) or one ICI slice (TPUs)
        topology: switch       # switch (NVSwitch, all-to-all) | pcie (through the host) |
                               # torus (TPU ICI, per-axis rings) | ring
        link_type: nvlink      # nvlink | pcie | network | ici: which per-step latency table applies
        chips: {value: 8, ...} # chips this fabric joins (chips per node; a torus: the product of dims)
        dims: {value: [2, 2, 2], ...}  # torus only: the slice shape of `chips` chips
        wrap_min_dim: {value: 4, ...}  # torus only: axes at least this long wrap around (0: never)
        wrap_rule: slice       # torus only: axis (each long-enough axis wraps, TPU v5e) or slice
                               # (only when every axis is long enough, TPU v4 / v5p tori)
        max_chips: {value: 4096, ...}  # torus only: the largest ICI domain; beyond it, the network
        link_bytes_per_s: {...}  # per chip, one direction: switch/pcie the chip's whole port,
                                 # torus/ring ONE link
        efficiency: {...}      # attainable fraction of link_bytes_per_s for large transfers
                               # (nccl-tests busbw / link), from published benchmarks
        latency_s: {...}       # per step (hop): NCCL's low-latency (LL) step latency of this
                               # link type, or the ICI per-hop latency
      pair: {...}              # optional, same fields as node: an NVLink bridge to ONE peer
                               # (H100 PCIe); used for 2-chip collectives
      nvls:                    # optional: NVLink SHARP all-reduce inside the NVSwitch (H100, H200)
        efficiency: {...}      # attainable all-reduce algbw / node link_bytes_per_s
        latency_s: {...}
      network: {...}           # optional, same fields as node: between nodes (the NICs,
                               # InfiniBand/RoCE) or between TPU slices (DCN); here `chips` is
                               # the number of chips sharing one NIC (1: a NIC per GPU) and
                               # link_bytes_per_s that NIC's bandwidth, one direction

Unknown or missing keys, wrong types and impossible values raise
:class:`~fidoperf.errors.SpecError` naming the file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .yamlio import Fields, Sourced
from .yamlio import sourced as _sourced

LIBRARIES = ("nccl", "xla")
NCCL_ARCHS = ("volta", "ampere", "hopper", "blackwell")
TOPOLOGIES = ("switch", "pcie", "torus", "ring")
LINK_TYPES = ("nvlink", "pcie", "network", "ici")
WRAP_RULES = ("axis", "slice")


@dataclass(frozen=True)
class Tier:
    """One level of the fabric: the chips it joins, its links and their latency."""

    topology: str  # switch | pcie | torus | ring
    link_type: str  # nvlink | pcie | network | ici
    chips: int  # chips this tier joins (a torus: the product of dims; network: chips per NIC)
    link_bytes_per_s: float  # per chip, one direction (torus/ring: one link)
    efficiency: float  # attainable fraction of link_bytes_per_s for large transfers
    latency_s: float  # per step / hop
    dims: tuple[int, ...] = ()  # torus only
    wrap_min_dim: int = 0  # torus only: axes at least this long wrap around (0: never)
    wrap_rule: str = "axis"  # torus only: axis | slice (every axis must be long enough)
    max_chips: int = 0  # torus only: the largest ICI domain (0: `chips`)

    @property
    def bus_bytes_per_s(self) -> float:
        """Attainable bandwidth per chip, one direction (nccl-tests' busbw for a ring)."""
        return self.link_bytes_per_s * self.efficiency

    @property
    def domain_chips(self) -> int:
        """Chips reachable without leaving this tier."""
        return max(self.max_chips, self.chips)


@dataclass(frozen=True)
class Nvls:
    """NVLink SHARP: the NVSwitch reduces, each GPU sends and receives the buffer about once."""

    efficiency: float  # attainable all-reduce algbw / the node's link_bytes_per_s
    latency_s: float


@dataclass(frozen=True)
class Interconnect:
    """How the chips of one system talk: the node (or slice) fabric and what lies beyond."""

    library: str  # nccl | xla
    call_latency_s: float  # fixed cost of one collective call
    node: Tier
    pair: Tier | None = None  # NVLink bridge to one peer (PCIe cards)
    nvls: Nvls | None = None
    network: Tier | None = None
    nccl_arch: str | None = None
    sources: Mapping[str, Sourced] = field(default_factory=dict)  # "node.link_bytes_per_s" -> Sourced
    path: str = ""

    @property
    def chips_per_node(self) -> int:
        """Chips one node (GPU server) or one ICI domain (TPU pod) holds."""
        return self.node.domain_chips


def _figure(f: Fields, key: str, sources: dict, prefix: str, *, fraction: bool = False) -> float:
    s = _sourced(f, key)
    if fraction and s.value > 1.0:
        raise f.err(key + ".value", f"a fraction of the link bandwidth must be at most 1, got {s.value}")
    sources[prefix + key] = s
    return s.value


def _count(f: Fields, key: str, sources: dict, prefix: str, minimum: int = 1, default: Any = ...):
    """A sourced whole number ({value, source, note}), or a sourced list of them (``dims``).

    ``_sourced`` reads real numbers only; counts need whole numbers, so they are read here
    with the same Fields rules (unknown keys, non-empty source)."""
    if not f.has(key) and default is not ...:
        f.seen.add(key)
        return default
    g = Fields(f.raw(key), f.where, f.prefix + key + ".")
    value = g.raw("value")
    items = value if isinstance(value, list) else [value]
    if (not items or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in items)
            or (isinstance(value, list) and key != "dims")):
        kind = "a list of whole numbers" if key == "dims" else "a whole number"
        raise g.err("value", f"expected {kind} of at least {minimum}, got {value!r}")
    if key == "dims" and not isinstance(value, list):
        raise g.err("value", f"expected a list of whole numbers, got {value!r}")
    sources[prefix + key] = Sourced(None if key == "dims" else float(value), g.str("source"), g.str("note", ""))
    g.done()
    return tuple(value) if key == "dims" else value


def _choice(f: Fields, key: str, allowed: tuple[str, ...], default: Any = ...) -> str:
    value = f.str(key, default)
    if value not in allowed:
        raise f.err(key, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _tier(f: Fields, key: str, sources: dict, required: bool = True) -> Tier | None:
    if not f.has(key) and not required:
        f.seen.add(key)
        return None
    g = Fields(f.raw(key), f.where, f.prefix + key + ".")
    topology = _choice(g, "topology", TOPOLOGIES)
    link_type = _choice(g, "link_type", LINK_TYPES)
    prefix = key + "."
    chips = _count(g, "chips", sources, prefix)
    link = _figure(g, "link_bytes_per_s", sources, prefix)
    efficiency = _figure(g, "efficiency", sources, prefix, fraction=True)
    latency = _figure(g, "latency_s", sources, prefix)
    dims: tuple[int, ...] = ()
    wrap_min_dim = max_chips = 0
    wrap_rule = "axis"
    if topology == "torus":
        dims = _count(g, "dims", sources, prefix)
        if math.prod(dims) != chips:
            raise g.err("dims", f"the product of {list(dims)} is {math.prod(dims)}, not chips = {chips}")
        wrap_min_dim = _count(g, "wrap_min_dim", sources, prefix, minimum=0)
        wrap_rule = _choice(g, "wrap_rule", WRAP_RULES, "axis")
        max_chips = _count(g, "max_chips", sources, prefix, minimum=chips, default=chips)
    else:
        for torus_only in ("dims", "wrap_min_dim", "wrap_rule", "max_chips"):
            if g.has(torus_only):
                raise g.err(torus_only, f"only a torus has {torus_only} (topology is {topology})")
    g.done()
    return Tier(topology, link_type, chips, link, efficiency, latency, dims, wrap_min_dim, wrap_rule, max_chips)


def interconnect_from_dict(raw: Mapping[str, Any], where: str) -> Interconnect:
    """Validate one ``interconnect:`` block (see the module docstring for its schema)."""
    f = Fields(raw, str(where), "interconnect.")
    sources: dict[str, Sourced] = {}
    library = _choice(f, "library", LIBRARIES)
    nccl_arch = None
    if library == "nccl":
        nccl_arch = _choice(f, "nccl_arch", NCCL_ARCHS)
    elif f.has("nccl_arch"):
        raise f.err("nccl_arch", f"only the nccl library has an nccl_arch (library is {library})")
    call = _figure(f, "call_latency_s", sources, "")
    node = _tier(f, "node", sources)
    pair = _tier(f, "pair", sources, required=False)
    if pair is not None and pair.chips != 2:
        raise f.err("pair.chips", f"a pair joins 2 chips, got {pair.chips}")
    nvls = None
    if f.has("nvls"):
        g = Fields(f.raw("nvls"), f.where, "interconnect.nvls.")
        nvls = Nvls(_figure(g, "efficiency", sources, "nvls.", fraction=True),
                    _figure(g, "latency_s", sources, "nvls."))
        g.done()
        if node.topology != "switch":
            raise f.err("nvls", f"NVLink SHARP needs an NVSwitch (node topology is {node.topology})")
    else:
        f.seen.add("nvls")
    network = _tier(f, "network", sources, required=False)
    f.done()
    return Interconnect(library, call, node, pair, nvls, network, nccl_arch, sources, str(where))
