"""Memory kinds from the kernel's and the driver's files (exporter/hardware/memory_kinds.py), on trees in their real
formats: the cases hwloc's captures do not hold (CXL, kernel memory tiers, HBM in cache-less flat mode
without DAX). hwloc's own captures are compared in tests/integration/test_hwloc_peer.py."""

from __future__ import annotations

import os

from exporter.hardware.discovery import discover
from exporter.hardware.memory_kinds import kinds_of
from tests.hosttree import HostTree


def test_cxl_dax_memory_tiers_and_the_gpu_owner(host: HostTree) -> None:
    host.cpus(present=range(2))
    host.numa_node(0, cpus=[0, 1], memory_kb=1 << 20)
    host.numa_node(1, cpus=[], memory_kb=1 << 20)
    host.numa_node(2, cpus=[], memory_kb=1 << 20)
    region = host.sys / "devices/platform/ACPI0017:00/root0/decoder0.0/region0/dax_region0/dax0.0"
    region.mkdir(parents=True)
    (region / "target_node").write_text("1\n")
    (host.sys / "bus/dax/devices").mkdir(parents=True)
    os.symlink(os.path.relpath(region, host.sys / "bus/dax/devices"), host.sys / "bus/dax/devices/dax0.0")
    host.write("proc/driver/nvidia/gpus/0009:01:00.0/numa_status", "Node:      2\nStatus:    online\n")
    for tier, nodes in ((4, "0"), (22, "1-2")):
        host.write(f"sys/devices/virtual/memory_tiering/memory_tier{tier}/nodelist", nodes + "\n")
    topology = discover(host.paths, use_nvml=False, use_udev=False)
    assert [(n.numa_node, n.memory_kind, n.memory_owner, n.memory_tier) for n in topology.numa_nodes] == [
        (0, "dram", "", 4), (1, "cxl", "", 22), (2, "gpu-memory", "0009:01:00.0", 22)]  # fmt: skip


def test_two_unknown_tiers_twice_apart_in_bandwidth_are_dram_and_hbm() -> None:
    """Xeon Max in flat mode without DAX: HBM nodes are plain NUMA nodes, told apart by HMAT bandwidth."""
    access = {0: (100_000, 100), 1: (100_000, 100), 2: (400_000, 120), 3: (410_000, 120)}
    assert kinds_of({0, 1, 2, 3}, gpus={}, dax={}, access=access) == {0: "dram", 1: "dram", 2: "hbm", 3: "hbm"}
    # Less than twice the bandwidth: no guess, every node DRAM (hwloc leaves them without a subtype).
    access[2], access[3] = (150_000, 100), (150_000, 100)
    assert set(kinds_of({0, 1, 2, 3}, gpus={}, dax={}, access=access).values()) == {"dram"}
    # Without bandwidths, nothing is guessed either.
    assert set(kinds_of({0, 1}, gpus={}, dax={}, access={}).values()) == {"dram"}
