"""Time of a collective over chips: an alpha-beta model per algorithm, the fastest one chosen.

Letters: S the buffer in bytes as nccl-tests counts it (the all-reduce buffer; the
all-gather RESULT; the reduce-scatter INPUT; the all-to-all buffer on each chip),
n the chips taking part, g the chips of one node (or ICI domain), m = n / g nodes.

For every algorithm the library would consider on that fabric, and every protocol of it::

    latency_s  = call latency + base latency of (algorithm, protocol)
                 + steps x per-step latency                                     (alpha)
    transfer_s = bytes the algorithm moves per chip / attainable bandwidth of
                 that chip's links for the protocol                             (beta)
    time_s     = latency_s + transfer_s

and, as NCCL's tuner does (``ncclTopoGetAlgoTime``: ``lat + nBytes / bw``, the smallest
wins), the candidate with the smallest time is reported, its name in ``algorithm``.

Where the numbers come from (details and the comparison with measurements in
docs/interconnect.md):
- NCCL's own cost model, ``src/graph/tuning.cc``: the base latencies per algorithm and
  protocol (``baseLat``), the per-step latencies per link type (``hwLat``), the protocol
  bandwidth factors (LL: half the bus bandwidth, capped per architecture, ``llMaxBws``;
  LL128: 0.92; tree: 0.92 and half of it as algorithm bandwidth) and the step counts
  (ring all-reduce 2(n-1) steps, all-gather / reduce-scatter n-1). Values of NCCL 2.28
  (``ncclTunerConstantsDefaults``, zhanglin496/nccl-2.28.3-1 850a18f); ring and tree
  are the same in NVIDIA/nccl b6475625 (2.19) except the tree Simple step (28 us there).
  NCCL 2.29.2 prints exactly these latencies for 2 and 6 H100s (see the notes).
- The hardware profile's ``interconnect`` block: link bandwidth, the attainable fraction
  from published nccl-tests results, the per-step latency of the link type (scales
  NCCL's table for that link type), the call latency, NVLS, the network.
- TPU ICI (library ``xla``): bidirectional rings along every axis of the slice, all axes
  at once, per the scaling-book ("How to Scale Your Model", sharding.md at 04d8de5):
  T = max(T_hop x sum_i hops_i, bytes / (W x n_axes)); we add the hop latencies to the
  transfer time instead of taking the max (alpha-beta, like the GPU side).

Left out: NCCL's size-dependent tree correction factors (tree is rarely the fastest inside
one node), the chunk-pipelining plateau of multi-node rings (x1.4 latency), per-channel
LL128 caps, CollNet/SHARP in the network, PAT, concurrent traffic, and the number of
channels (the attainable bandwidth stands in for nChannels x bwIntra).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SpecError
from ..specs.interconnect import Interconnect, Tier

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
PROTOCOLS = ("LL", "LL128", "Simple")

# NCCL 2.28 tuning.cc, ncclTunerConstantsDefaults (us in the source; seconds here).
NCCL_BASE_LATENCY_S = {
    "ring": {"LL": 6.6e-6, "LL128": 14.0e-6, "Simple": 8.4e-6},
    "tree": {"LL": 6.8e-6, "LL128": 14.0e-6, "Simple": 8.4e-6},
}
# hwLatencies[NVLINK | PCI | NET][algorithm][protocol]; the NVLS row holds its whole latency.
NCCL_STEP_LATENCY_S = {
    "nvlink": {"ring": {"LL": 0.6e-6, "LL128": 1.9e-6, "Simple": 3.4e-6},
               "tree": {"LL": 0.6e-6, "LL128": 1.25e-6, "Simple": 4.0e-6}},
    "pcie": {"ring": {"LL": 1.0e-6, "LL128": 2.5e-6, "Simple": 5.7e-6},
             "tree": {"LL": 1.0e-6, "LL128": 1.9e-6, "Simple": 4.0e-6}},
    "network": {"ring": {"LL": 2.7e-6, "LL128": 4.0e-6, "Simple": 14.0e-6},
                "tree": {"LL": 5.0e-6, "LL128": 8.5e-6, "Simple": 14.0e-6}},
}
# llMaxBws (GB/s): one node, by GPU architecture; several nodes, by CPU (Intel row: 2 nodes, >2).
NCCL_LL_MAX_BUS_BYTES_PER_S = {"volta": 39.0e9, "ampere": 87.7e9, "hopper": 141.0e9, "blackwell": 282.0e9}
NCCL_LL_MAX_BUS_MULTI_NODE = (39.0e9, 20.4e9)
LL_FRACTION = 0.5  # ring LL: busBw * .5 (NCCL >= 2.23; 1/4 for all-reduce in older releases)
LL128_FRACTION = 0.92  # "0.92 /*120.0/128.0*/"
TREE_FRACTION = 0.92  # tree all-reduce busBw * .92
TREE_LL_DIVISOR = 3.8
TREE_LL128_FRACTION = {"single_node": 7.0 / 9.0, "multi_node": 120.0 / 128.0}
NCCL_NET_OVERHEAD_S = 1.0e-6  # getNetOverhead: x86 Intel 1 us per step (x3 for Simple)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise SpecError("collective", "op", f"unknown collective {op!r} (known: {', '.join(OPS)})")


def bytes_per_chip(op: str, bytes, chips, algorithm: str = "ring"):
    """Bytes each chip sends (one direction, summed over its links) for ``op`` of an
    S-byte buffer over n chips: the closed forms behind every algorithm here.

    ring (and torus, per axis-ring): all-reduce 2(n-1)/n S (reduce-scatter then
    all-gather); all-gather and reduce-scatter (n-1)/n S; all-to-all (n-1)/n S sent
    directly (switch). On a torus ring an all-to-all has to forward other chips' pieces:
    n S / 4 over each chip's links (the scaling-book's "AllGather / 4" of the whole
    n S array; 2 chips: S / 2).
    tree (NCCL double binary tree, all-reduce only): 2 S per chip (NCCL's tree
    algorithm bandwidth is half its bus bandwidth).
    nvls (NVLink SHARP all-reduce): S -- each GPU sends its buffer into the switch and
    receives the reduced buffer once.
    """
    _check_op(op)
    S = np.asarray(bytes, dtype=float)
    n = np.asarray(chips, dtype=float)
    share = np.where(n > 1, (n - 1) / np.maximum(n, 1), 0.0)
    if algorithm in ("ring", "torus"):
        if op == "all_reduce":
            return 2 * share * S
        if op == "all_to_all" and algorithm == "torus":
            return np.where(n > 1, n * S / 4, 0.0)
        return share * S
    if algorithm == "tree":
        if op != "all_reduce":
            raise SpecError("collective", "algorithm", "NCCL's tree runs all-reduce only")
        return np.where(n > 1, 2 * S, 0.0)
    if algorithm == "nvls":
        if op != "all_reduce":
            raise SpecError("collective", "algorithm", "this model has NVLS for all-reduce only")
        return np.where(n > 1, S, 0.0)
    raise SpecError("collective", "algorithm", f"unknown algorithm {algorithm!r} (known: ring, tree, nvls, torus)")


# --------------------------------------------------------------------------- NCCL (GPUs)


def _steps(op: str, n) -> float:
    """NCCL ring steps: all-reduce 2(n-1), all-gather / reduce-scatter n-1."""
    return 2 * (n - 1) if op == "all_reduce" else n - 1


def _scale(tier: Tier) -> float:
    """The profile's per-step latency over NCCL's LL ring value for that link type: every
    protocol's step latency on this tier scales with it (1.0 when the profile uses NCCL's)."""
    table = NCCL_STEP_LATENCY_S.get(tier.link_type, NCCL_STEP_LATENCY_S["network"])
    return tier.latency_s / table["ring"]["LL"]


def _step(tier: Tier, algorithm: str, proto: str) -> float:
    table = NCCL_STEP_LATENCY_S.get(tier.link_type, NCCL_STEP_LATENCY_S["network"])
    return table[algorithm][proto] * _scale(tier)


def _protocols(tier: Tier) -> tuple[str, ...]:
    # NCCL enables LL128 only where the intra-node path is NVLink (typeIntra <= PATH_NVB).
    return PROTOCOLS if tier.link_type in ("nvlink", "network") else ("LL", "Simple")


def _proto_bus(bus: float, proto: str, ll_cap: float) -> float:
    if proto == "Simple":
        return bus
    if proto == "LL128":
        return LL128_FRACTION * bus
    return min(LL_FRACTION * bus, ll_cap)


def _ll_cap(net: Interconnect, nodes: float) -> float:
    if nodes <= 1:
        return NCCL_LL_MAX_BUS_BYTES_PER_S.get(net.nccl_arch or "hopper", 141.0e9)
    return NCCL_LL_MAX_BUS_MULTI_NODE[0 if nodes <= 2 else 1]


def _nccl_one_node(op, S, n, net: Interconnect):
    """Candidates inside one node: ring (all ops), tree and NVLS (all-reduce), p2p (all-to-all)."""
    tier = net.pair if (net.pair is not None and n == 2) else net.node
    cap = _ll_cap(net, 1)
    out = []
    for proto in _protocols(tier):
        bw = _proto_bus(tier.bus_bytes_per_s, proto, cap)
        if op == "all_to_all":
            # Grouped send/recv: on a switch every peer at once (one step), through a host
            # or along a ring one peer after another.
            steps = 1 if tier.topology == "switch" else n - 1
            lat = net.call_latency_s + NCCL_BASE_LATENCY_S["ring"][proto] + steps * _step(tier, "ring", proto)
            moved = bytes_per_chip(op, S, n, "ring")
            out.append((f"p2p/{proto}", lat, moved / bw, moved))
            continue
        lat = net.call_latency_s + NCCL_BASE_LATENCY_S["ring"][proto] + _steps(op, n) * _step(tier, "ring", proto)
        moved = bytes_per_chip(op, S, n, "ring")
        out.append((f"ring/{proto}", lat, moved / bw, moved))
        if op == "all_reduce":
            tree_bus = TREE_FRACTION * tier.bus_bytes_per_s
            tree_bw = {"Simple": tree_bus, "LL128": tree_bus * TREE_LL128_FRACTION["single_node"],
                       "LL": min(tree_bus / TREE_LL_DIVISOR, cap)}[proto]
            lat = net.call_latency_s + NCCL_BASE_LATENCY_S["tree"][proto] + 2 * (n - 1) * _step(tier, "tree", proto)
            moved = bytes_per_chip(op, S, n, "tree")
            out.append((f"tree/{proto}", lat, moved / tree_bw, moved))
    if op == "all_reduce" and net.nvls is not None and tier is net.node:
        bw = net.nvls.efficiency * tier.link_bytes_per_s
        moved = bytes_per_chip(op, S, n, "nvls")
        out.append(("nvls/Simple", net.call_latency_s + net.nvls.latency_s, moved / bw, moved))
    return out


def _nccl_multi_node(op, S, n, net: Interconnect):
    """Candidates across nodes (one NIC per GPU, rails): a flat ring whose chunks pipeline
    through NVLink and the NICs (NCCL's multi-node ring), and the double binary tree."""
    node, nic = net.node, net.network
    g = node.chips
    m = n / g
    nic_share = nic.bus_bytes_per_s / nic.chips  # a NIC's `chips` GPUs share it
    cap = _ll_cap(net, m)
    protos = [p for p in PROTOCOLS if p in _protocols(node) and p in _protocols(nic)]
    out = []
    for proto in protos:
        intra_bw = _proto_bus(node.bus_bytes_per_s, proto, cap)
        nic_bw = _proto_bus(nic_share, proto, cap)
        overhead = NCCL_NET_OVERHEAD_S * (3 if proto == "Simple" else 1)
        intra_step = max(_step(node, "ring", proto), overhead)
        inter_step = _step(nic, "ring", proto)
        if op == "all_to_all":
            lat = net.call_latency_s + NCCL_BASE_LATENCY_S["ring"][proto] + intra_step + inter_step
            transfer = np.maximum((g - 1) / n * S / intra_bw, (n - g) / n * S / nic_bw)
            out.append((f"p2p/{proto}+network", lat, transfer, (n - 1) / n * S))
            continue
        steps = _steps(op, n)
        inter_steps = 2 * (m - 1) if op == "all_reduce" else m - 1
        lat = (net.call_latency_s + NCCL_BASE_LATENCY_S["ring"][proto]
               + (steps - inter_steps) * intra_step + inter_steps * inter_step)
        ring_bytes = bytes_per_chip(op, S, n, "ring")
        # Every byte a chip sends crosses NVLink; the part that leaves the node is shared by
        # the node's g NICs.
        transfer = np.maximum(ring_bytes / intra_bw, ring_bytes / g / nic_bw)
        out.append((f"ring/{proto}+network", lat, transfer, ring_bytes))
        if op == "all_reduce":
            tree_bus = TREE_FRACTION * min(node.bus_bytes_per_s, g * nic_share)
            tree_bw = {"Simple": tree_bus, "LL128": tree_bus * TREE_LL128_FRACTION["multi_node"],
                       "LL": min(tree_bus / TREE_LL_DIVISOR, cap)}[proto]
            lat = (net.call_latency_s + NCCL_BASE_LATENCY_S["tree"][proto]
                   + 2 * ((g - 1) * _step(node, "tree", proto) + math.floor(math.log2(m)) * _step(nic, "tree", proto)))
            moved = bytes_per_chip(op, S, n, "tree")
            out.append((f"tree/{proto}+network", lat, moved / tree_bw, moved))
    return out


# --------------------------------------------------------------------------- TPU ICI


def slice_dims(tier: Tier, n: int) -> tuple[int, ...]:
    """The slice shape of n chips: the profile's ``dims`` halved (largest axis first) or
    doubled (smallest axis first) until it holds n chips, as Cloud TPU slice shapes grow
    (v4: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...). A count that no such shape holds (not a
    power of two times the base) runs as one ring of n chips."""
    dims = list(tier.dims) or [tier.chips]
    while math.prod(dims) > n:
        i = max(range(len(dims)), key=lambda k: (dims[k], k))
        if dims[i] % 2:
            break
        dims[i] //= 2
    while math.prod(dims) < n:
        i = min(range(len(dims)), key=lambda k: (dims[k], k))
        dims[i] *= 2
    if math.prod(dims) != n:
        return (n,)
    return tuple(d for d in dims if d > 1) or (1,)


def _axis(tier: Tier, d: int, dims: tuple[int, ...]) -> tuple[int, int]:
    """(links a chip uses along an axis of d chips, hops to cross it): a wraparound ring
    uses both neighbours and needs d/2 hops; an open line one link and d-1 hops."""
    if d <= 1:
        return 0, 0
    long_enough = tier.wrap_min_dim > 0 and d >= tier.wrap_min_dim
    if tier.wrap_rule == "slice":
        long_enough = tier.wrap_min_dim > 0 and all(x >= tier.wrap_min_dim for x in dims)
    return (2, d // 2) if long_enough else (1, d - 1)


def _torus(op, S, n, tier: Tier, call_s: float):
    """(latency, transfer, bytes per chip) on a slice of n chips: all axes at once for the
    gathers and reductions; axis after axis for an all-to-all."""
    dims = slice_dims(tier, n)
    axes = [_axis(tier, d, dims) for d in dims]
    links = sum(a[0] for a in axes)
    hops = sum(a[1] for a in axes) * (2 if op == "all_reduce" else 1)
    lat = call_s + hops * tier.latency_s
    if op == "all_to_all":
        per_axis = [bytes_per_chip(op, S, d, "torus") for d in dims]
        transfer = sum(b / (a[0] * tier.bus_bytes_per_s) for b, a in zip(per_axis, axes))
        return lat, transfer, sum(per_axis)
    moved = bytes_per_chip(op, S, n, "torus")
    return lat, moved / (links * tier.bus_bytes_per_s), moved


def _xla(op, S, n, net: Interconnect):
    node = net.node
    if n <= node.domain_chips:
        return [("torus", *_torus(op, S, n, node, net.call_latency_s))]
    # Several slices over the data-center network: reduce-scatter in the slice, the
    # all-reduce / all-gather of each chip's shard across slices, all-gather in the slice.
    g = node.domain_chips
    m = n / g
    dcn = net.network
    dcn_bw = dcn.bus_bytes_per_s / dcn.chips
    dcn_lat = net.call_latency_s + (m - 1) * dcn.latency_s * (2 if op == "all_reduce" else 1)
    if op == "all_to_all":
        lat, transfer, moved = _torus(op, S, g, node, net.call_latency_s)
        out = (n - g) / n * S
        return [("torus+network", lat + dcn_lat, transfer + out / dcn_bw, moved + out)]
    # Each chip's shard after the in-slice reduce-scatter is S / g; it crosses the DCN
    # ring of m slices (twice for an all-reduce).
    out = (2 if op == "all_reduce" else 1) * (m - 1) / m * S / g
    lat, transfer, moved = _torus(op, S, g, node, net.call_latency_s)
    return [("torus+network", lat + dcn_lat, transfer + out / dcn_bw, moved + out)]


# --------------------------------------------------------------------------- entry point


def collective_times(op: str, bytes, chips, net: Interconnect) -> dict[str, np.ndarray]:
    """Time of one collective ``op`` of ``bytes`` over ``chips`` chips on ``net``.

    ``bytes`` and ``chips`` broadcast (numbers, numpy arrays or pandas columns). ``bytes``
    is nccl-tests' size: the whole buffer on each chip (the all-reduce buffer, the
    all-gather result, the reduce-scatter input). Returns arrays of the broadcast shape:
    ``latency_s`` (alpha), ``transfer_s`` (beta), ``time_s``, ``algorithm`` (the fastest
    candidate, e.g. ``ring/LL``, ``nvls/Simple``, ``torus``, ``ring/Simple+network``) and
    ``bytes_per_chip`` (what that algorithm moves per chip). One chip: zero time, "none".
    """
    _check_op(op)
    S, n = np.broadcast_arrays(np.asarray(bytes, dtype=float), np.asarray(chips))
    if np.any(~np.isfinite(S)) or np.any(S < 0):
        raise SpecError("collective", "bytes", "must be finite and not negative")
    n_float = n.astype(float)
    if np.any(n_float < 1) or np.any(n_float != np.round(n_float)):
        raise SpecError("collective", "chips", "must be whole numbers of at least 1")
    n = n_float.astype(np.int64)
    shape = S.shape
    latency = np.zeros(shape)
    transfer = np.zeros(shape)
    moved = np.zeros(shape)
    algorithm = np.full(shape, "none", dtype=object)
    for count in np.unique(n):
        count = int(count)
        if count == 1:
            continue
        mask = n == count
        s = S[mask]
        candidates = _candidates(op, s, count, net)
        names = np.array([c[0] for c in candidates], dtype=object)
        lat_all, tr_all, moved_all = (
            np.stack([np.broadcast_to(np.asarray(c[k], dtype=float), s.shape) for c in candidates]) for k in (1, 2, 3))
        best = np.argmin(lat_all + tr_all, axis=0)  # NCCL's tuner: the smallest lat + bytes / bw
        pick = np.arange(s.size)
        latency[mask] = lat_all[best, pick]
        transfer[mask] = tr_all[best, pick]
        moved[mask] = moved_all[best, pick]
        algorithm[mask] = names[best]
    return {
        "latency_s": latency,
        "transfer_s": transfer,
        "time_s": latency + transfer,
        "algorithm": algorithm,
        "bytes_per_chip": moved,
    }


def _candidates(op: str, S: np.ndarray, n: int, net: Interconnect):
    if net.library == "xla":
        if n > net.node.domain_chips and net.network is None:
            raise _too_many(net, n)
        return _xla(op, S, n, net)
    if n <= net.node.chips:
        return _nccl_one_node(op, S, n, net)
    if net.network is None:
        raise _too_many(net, n)
    if n % net.node.chips:
        raise SpecError(net.path or "interconnect", "chips",
                        f"{n} chips do not fill whole nodes of {net.node.chips}")
    return _nccl_multi_node(op, S, n, net)


def _too_many(net: Interconnect, n: int) -> SpecError:
    return SpecError(net.path or "interconnect", "interconnect.network",
                     f"{n} chips need more than one node of {net.chips_per_node}, and this profile has no network tier")


# --------------------------------------------------------------------------- bounds and transfers


def lower_bound_s(op: str, bytes, chips, net: Interconnect):
    """The roofline of a collective: the ring algorithm's bytes per chip at the links'
    datasheet bandwidth (every link of a torus slice at once), no latency."""
    S, n = np.broadcast_arrays(np.asarray(bytes, dtype=float), np.asarray(chips, dtype=float))
    out = np.zeros(S.shape)
    for count in np.unique(n):
        count = int(count)
        if count <= 1:
            continue
        mask = n == count
        node = net.node
        if net.library == "xla" and node.topology == "torus":
            dims = slice_dims(node, min(count, node.domain_chips))
            links = sum(_axis(node, d, dims)[0] for d in dims)
            out[mask] = bytes_per_chip(op, S[mask], count, "ring") / (max(links, 1) * node.link_bytes_per_s)
        else:
            tier = net.pair if (net.pair is not None and count == 2) else node
            out[mask] = bytes_per_chip(op, S[mask], count, "ring") / tier.link_bytes_per_s
    return out


def transfer_times(bytes, streams, net: Interconnect, roofline: bool = False) -> dict[str, np.ndarray]:
    """Point-to-point shipping of ``bytes`` from one group of chips to another over the
    fabric of one node, split evenly over ``streams`` chip pairs sending at once (a
    tensor-parallel group sends its shards in parallel): one call latency and one step,
    then bytes / streams at the link's attainable bandwidth (roofline: its datasheet
    bandwidth, no latency)."""
    S = np.asarray(bytes, dtype=float)
    k = np.maximum(np.asarray(streams, dtype=float), 1.0)
    node = net.node
    if roofline:
        return {"latency_s": 0.0 * S, "transfer_s": S / k / node.link_bytes_per_s,
                "time_s": S / k / node.link_bytes_per_s}
    latency = net.call_latency_s + node.latency_s + 0.0 * S
    transfer = S / k / (node.efficiency * node.link_bytes_per_s)
    return {"latency_s": latency, "transfer_s": transfer, "time_s": latency + transfer}
