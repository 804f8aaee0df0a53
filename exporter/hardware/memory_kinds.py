"""NUMA node memory kinds, decided as hwloc decides them (its memory tiers, hwloc/memattrs.c).

Each node starts from what the sources say it is (sources/memory_attrs.py): GPU memory, a DAX device's
NVM, CXL or SPM, else unknown. Nodes sorted by kind and local bandwidth form tiers: a new tier where the
kind changes or bandwidth or latency differs by more than 10 %. Then hwloc's guess: two unknown tiers (and
no SPM), or one unknown and one SPM tier, whose bandwidths differ more than twice are DRAM and HBM (HBM in
flat mode is exposed as SPM). Unknown is DRAM here, where hwloc leaves the node without a subtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.model import NumaNode
from exporter.paths import HostPaths
from exporter.sources import memory_attrs as source

_UNKNOWN = ""
_ORDER = {_UNKNOWN: 0, "hbm": 1, "gpu-memory": 2, "spm": 3, "nvm": 4, "cxl": 5}  # hwloc's kind bits' order
THRESHOLD = 0.1  # HWLOC_MEMTIERS_BANDWIDTH_THRESHOLD and _LATENCY_THRESHOLD defaults


@dataclass(frozen=True, slots=True)
class _Tier:
    kind: str
    nodes: tuple[int, ...]
    bandwidth_min: int
    bandwidth_max: int


def classify(paths: HostPaths, numa_nodes: tuple[NumaNode, ...]) -> tuple[NumaNode, ...]:
    """The nodes with memory_kind, memory_owner and memory_tier filled in."""
    gpus = source.read_gpu_memory_nodes(paths)
    dax = source.read_dax_nodes(paths)
    access = {numa.numa_node: source.read_local_access(paths, numa.numa_node) for numa in numa_nodes}
    tiers = source.read_memory_tiers(paths)
    kinds = kinds_of({numa.numa_node for numa in numa_nodes}, gpus=gpus, dax=dax, access=access)
    return tuple(
        dataclasses.replace(
            numa,
            memory_kind=kinds[numa.numa_node],
            memory_owner=gpus.get(numa.numa_node, ""),
            memory_tier=tiers.get(numa.numa_node),
        )
        for numa in numa_nodes
    )


def kinds_of(
    nodes: set[int], *, gpus: Mapping[int, str], dax: Mapping[int, str], access: Mapping[int, tuple[int, int]]
) -> dict[int, str]:
    """NUMA node -> memory kind, from the GPU-memory and DAX nodes and each node's (bandwidth, latency)."""
    known = {node: "gpu-memory" if node in gpus else dax.get(node, _UNKNOWN) for node in nodes}
    ordered = sorted(nodes, key=lambda n: (_ORDER[known[n]], access.get(n, (0, 0))[0], n))
    tiers: list[list[int]] = []
    for node in ordered:
        if tiers and not _new_tier(tiers[-1][-1], node, known, access):
            tiers[-1].append(node)
        else:
            tiers.append([node])
    grouped = [_tier(members, known, access) for members in tiers]
    guessed = _guess(grouped)
    return {node: (guessed.get(id(tier)) or tier.kind or "dram") for tier in grouped for node in tier.nodes}


def _new_tier(previous: int, node: int, known: Mapping[int, str], access: Mapping[int, tuple[int, int]]) -> bool:
    if known[previous] != known[node]:
        return True
    for index in (0, 1):  # bandwidth, then latency
        before, now = access.get(previous, (0, 0))[index], access.get(node, (0, 0))[index]
        if before and now and max(before, now) / min(before, now) > 1 + THRESHOLD:
            return True
    return False


def _tier(members: list[int], known: Mapping[int, str], access: Mapping[int, tuple[int, int]]) -> _Tier:
    bandwidths = [access.get(n, (0, 0))[0] for n in members]
    return _Tier(kind=known[members[0]], nodes=tuple(members), bandwidth_min=min(bandwidths),
                 bandwidth_max=max(bandwidths))  # fmt: skip


def _guess(tiers: list[_Tier]) -> dict[int, str]:
    """hwloc's DRAM/HBM guess (hwloc__guess_memory_tiers_kinds without HWLOC_MEMTIERS_GUESS): tier id -> kind."""
    if len(tiers) == 1:
        return {}
    unknown = [t for t in tiers if t.kind == _UNKNOWN]
    spm = [t for t in tiers if t.kind == "spm"]
    if len(unknown) == 2 and not spm:
        slow, fast = unknown
    elif len(unknown) == 1 and len(spm) == 1:
        slow, fast = unknown[0], spm[0]
    else:
        return {}
    if not slow.bandwidth_min or not fast.bandwidth_min:
        return {}
    if slow.bandwidth_min > fast.bandwidth_min:
        slow, fast = fast, slow
    if fast.bandwidth_min <= slow.bandwidth_max * 2:
        return {}
    return {id(slow): "dram", id(fast): "hbm"}
