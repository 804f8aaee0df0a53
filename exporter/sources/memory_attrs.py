"""What a NUMA node's memory is, from the places the kernel and the NVIDIA driver say it.

* `<procfs>/driver/nvidia/gpus/<pci>/numa_status` (`Node: N`): NUMA node N is that GPU's memory (POWER9 +
  V100, Grace Hopper, GB200), as hwloc reads it.
* `<sysfs>/bus/dax/devices/<dax>/target_node` and where the DAX device sits: under an NVDIMM bus (`ndbus`)
  it is persistent memory, under a CXL root (`ACPI0017`, `cxl`) CXL memory, otherwise specific-purpose
  memory (EFI_MEMORY_SP, the `hmem` platform devices: HBM in flat mode is one), as hwloc's DAXType.
* `<sysfs>/devices/system/node/node<N>/access1` (else `access0`) `/initiators/{read,write}_{bandwidth,latency}`:
  the firmware's (HMAT) local bandwidth in MB/s and latency in ns.
* `<sysfs>/devices/virtual/memory_tiering/memory_tier<T>/nodelist`: the kernel's memory tier of each node.
Pure reads; what they add up to is decided in hardware/memory_kinds.py.
"""

from __future__ import annotations

import os
import re

from exporter.cpuset import parse_sysfs_cpulist
from exporter.errors import InvalidText
from exporter.paths import HostPaths
from exporter.sources.files import list_dir, list_prefixed_ids, read_sysfs_int, read_sysfs_text

_NODE_LINE = re.compile(r"^Node:\s*(-?\d+)\s*$", re.MULTILINE)


def read_gpu_memory_nodes(paths: HostPaths) -> dict[int, str]:
    """NUMA node -> the PCI address of the NVIDIA GPU whose memory it is."""
    base = os.fspath(paths.procfs / "driver" / "nvidia" / "gpus")
    nodes = {}
    for address in sorted(list_dir(base)):
        match = _NODE_LINE.search(read_sysfs_text(f"{base}/{address}/numa_status") or "")
        if match and int(match.group(1)) >= 0:
            nodes[int(match.group(1))] = address.lower()
    return nodes


def read_dax_nodes(paths: HostPaths) -> dict[int, str]:
    """NUMA node -> "nvm", "cxl" or "spm", for every DAX device onlined as system memory (its target node)."""
    base = os.fspath(paths.sysfs / "bus" / "dax" / "devices")
    nodes: dict[int, str] = {}
    for name in sorted(list_dir(base)):
        target = read_sysfs_int(f"{base}/{name}/target_node")
        if target is None or target < 0:
            continue
        try:
            where = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # not a link: what memory this is cannot be told (hwloc ignores it too)
        nodes.setdefault(target, dax_kind(where))
    return nodes


def dax_kind(link: str) -> str:
    """hwloc's rule on the DAX device's sysfs link: NVDIMM bus -> NVM; a CXL region -> CXL; else SPM."""
    if "ACPI0017" in link or "/cxl" in link:
        return "cxl"
    return "nvm" if "ndbus" in link else "spm"


def read_local_access(paths: HostPaths, numa_node: int) -> tuple[int, int]:
    """(bandwidth MB/s, latency ns) from the node's nearest CPU initiators (HMAT); 0 where not given. Each is
    the average of read and write where both are given, hwloc's main value."""
    node = paths.numa_nodes_dir / f"node{numa_node}"
    access = node / "access1" / "initiators"
    if not access.is_dir():
        access = node / "access0" / "initiators"
    values = []
    for kind in ("bandwidth", "latency"):
        read, write = (read_sysfs_int(access / f"{way}_{kind}") or 0 for way in ("read", "write"))
        values.append((read + write) // 2 if read > 0 and write > 0 else 0)
    return values[0], values[1]


def read_memory_tiers(paths: HostPaths) -> dict[int, int]:
    """NUMA node -> the kernel's memory tier id (`memory_tier4` holds DRAM by default; higher is slower)."""
    base = paths.sysfs / "devices" / "virtual" / "memory_tiering"
    tiers: dict[int, int] = {}
    for tier in list_prefixed_ids(base, "memory_tier"):
        text = read_sysfs_text(base / f"memory_tier{tier}" / "nodelist")
        try:
            members = parse_sysfs_cpulist(text) if text is not None else frozenset()
        except InvalidText:
            continue
        for numa in members:
            tiers.setdefault(numa, tier)
    return tiers
