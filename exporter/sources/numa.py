"""NUMA nodes from sysfs: CPUs, memory, hugepages per size, distances and numastat counters.

Reads `<sysfs>/devices/system/node/node<N>/{cpulist|cpumap, meminfo, hugepages/, distance, numastat}`.
Node ids may be sparse (0, 8, 250...), node 0 may be missing, and a node may have memory but no CPU.
A kernel without NUMA support has no node directories: then the whole machine is NUMA node 0,
as the kubelet's cadvisor assumes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from exporter.cpuset import CpuSet, parse_cpumask, parse_sysfs_cpulist
from exporter.errors import InvalidText
from exporter.model import HugepagePool, NumaNode
from exporter.paths import HostPaths
from exporter.sources.files import list_prefixed_ids, read_sysfs_int, read_sysfs_text

_HUGEPAGES_DIR = re.compile(r"^hugepages-(\d+)kB$")
_PROC_MEMINFO_LINE = re.compile(r"^([\w()]+):\s+(\d+)(?:\s+kB)?\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class NumaReading:
    numa_nodes: tuple[NumaNode, ...]
    warnings: tuple[str, ...]


def parse_node_meminfo(text: str) -> dict[str, int]:
    """`Node 0 MemTotal: 134204252 kB` lines -> {"MemTotal": bytes}; counts without `kB` stay counts."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != "Node" or not fields[2].endswith(":") or not _is_number(fields[3]):
            continue
        values[fields[2][:-1]] = int(fields[3]) * (1024 if fields[-1] == "kB" else 1)
    return values


def parse_proc_meminfo(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = _PROC_MEMINFO_LINE.match(line)
        if match:
            values[match.group(1)] = int(match.group(2)) * (1024 if line.rstrip().endswith("kB") else 1)
    return values


def parse_distance(text: str) -> tuple[int, ...]:
    """A node's SLIT row: space-separated integers, one per online NUMA node in ascending id order."""
    fields = text.split()
    if not all(field.isascii() and field.isdigit() for field in fields):
        raise InvalidText(f"invalid distance row {text[:80]!r}")
    return tuple(int(field) for field in fields)


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts superscripts, which int() refuses."""
    return text.isascii() and text.isdigit()


def parse_numastat(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, number = line.partition(" ")
        if name and _is_number(number.strip()):
            values[name] = int(number.strip())
    return values


def read_numa_nodes(paths: HostPaths, *, online_cpus: CpuSet) -> NumaReading:
    base = os.fspath(paths.numa_nodes_dir)
    ids = list_prefixed_ids(base, "node")
    if not ids:
        return _single_node_machine(paths, online_cpus=online_cpus)
    warnings: list[str] = []
    rows = {numa: _read_distance_row(f"{base}/node{numa}") for numa in ids}
    nodes: list[NumaNode] = []
    for numa in ids:
        node_dir = f"{base}/node{numa}"
        cpus = _read_node_cpus(node_dir) & online_cpus
        meminfo = parse_node_meminfo(read_sysfs_text(f"{node_dir}/meminfo") or "")
        row = rows[numa]
        distances: dict[int, int] = {}
        if row and len(row) == len(ids):
            distances = dict(zip(ids, row, strict=True))
        elif row:
            warnings.append(
                f"NUMA node {numa}: distance row has {len(row)} entries for {len(ids)} nodes; distances ignored"
            )
        nodes.append(
            NumaNode(
                numa_node=numa,
                cpus=cpus,
                memory_total_bytes=meminfo.get("MemTotal", 0),
                memory_free_bytes=meminfo.get("MemFree", 0),
                hugepages=_read_hugepages(node_dir),
                distances=distances,
                numastat=parse_numastat(read_sysfs_text(f"{node_dir}/numastat") or ""),
            )
        )
    warnings.extend(_overlap_warnings(nodes))
    return NumaReading(numa_nodes=tuple(nodes), warnings=tuple(warnings))


def _read_distance_row(node_dir: str) -> tuple[int, ...]:
    text = read_sysfs_text(f"{node_dir}/distance")
    try:
        return parse_distance(text) if text else ()
    except ValueError:
        return ()


def _read_node_cpus(node_dir: str) -> CpuSet:
    cpulist = read_sysfs_text(f"{node_dir}/cpulist")
    try:
        if cpulist is not None:
            return parse_sysfs_cpulist(cpulist)
        cpumap = read_sysfs_text(f"{node_dir}/cpumap")
        if cpumap is not None:
            return parse_cpumask(cpumap)
    except ValueError:
        pass
    try:
        names = os.listdir(node_dir)
    except OSError:
        return frozenset()
    return frozenset(int(name[3:]) for name in names if name.startswith("cpu") and _is_number(name[3:]))


def _read_hugepages(node_dir: str) -> tuple[HugepagePool, ...]:
    base = f"{node_dir}/hugepages"
    try:
        names = os.listdir(base)
    except OSError:
        return ()
    pools = []
    for name in names:
        match = _HUGEPAGES_DIR.match(name)
        if not match:
            continue
        total = read_sysfs_int(f"{base}/{name}/nr_hugepages")
        free = read_sysfs_int(f"{base}/{name}/free_hugepages")
        pools.append(HugepagePool(size_bytes=int(match.group(1)) * 1024, total_pages=total or 0, free_pages=free or 0))
    return tuple(sorted(pools, key=lambda pool: pool.size_bytes))


def _overlap_warnings(nodes: list[NumaNode]) -> list[str]:
    seen: dict[int, int] = {}
    shared: set[int] = set()
    for numa in nodes:
        for cpu in numa.cpus:
            if cpu in seen:
                shared.update((seen[cpu], numa.numa_node))
            else:
                seen[cpu] = numa.numa_node
    if not shared:
        return []
    listed = ",".join(str(numa) for numa in sorted(shared))
    return [
        f"NUMA nodes {listed} list the same CPUs: the firmware's NUMA description is inconsistent; "
        "each CPU is counted on the lowest NUMA node that lists it"
    ]


def _single_node_machine(paths: HostPaths, *, online_cpus: CpuSet) -> NumaReading:
    meminfo = parse_proc_meminfo(read_sysfs_text(paths.procfs / "meminfo") or "")
    node = NumaNode(
        numa_node=0,
        cpus=online_cpus,
        memory_total_bytes=meminfo.get("MemTotal", 0),
        memory_free_bytes=meminfo.get("MemFree", 0),
        hugepages=(),
        distances={0: 10},
        numastat={},
    )
    return NumaReading(
        numa_nodes=(node,),
        warnings=("no NUMA nodes in sysfs (kernel without NUMA): the machine is reported as NUMA node 0",),
    )
