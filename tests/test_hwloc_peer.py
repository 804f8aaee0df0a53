"""Our discovery against Debian's hwloc (`lstopo-no-graphics --of xml`) on hwloc's own real-machine trees.

hwloc and the exporter read the same sysfs, but hwloc reshapes what it reads in a few documented ways,
each spelled out in DIVERGENCES below and asserted, never skipped:
* firmware NUMA information that lists the same CPUs on every node is discarded by hwloc (one node is
  kept); we keep the sysfs nodes and report a warning;
* CPU-less memory nodes (NVDIMM/CXL, GPU memory) get the CPUs of their initiators in hwloc; sysfs, and so
  the kubelet, gives them none. (`--whole-system` keeps hwloc from dropping nodes outside its cgroup.)
* GPU memory nodes are hidden by hwloc unless HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES=1 (we always show them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.discovery import discover
from exporter.model import Topology
from exporter.paths import HostPaths
from tests.conftest import HWLOC_NAMES

LSTOPO = shutil.which("lstopo-no-graphics")
pytestmark = pytest.mark.skipif(LSTOPO is None, reason="hwloc is installed by `make test`")

BUGGY_NUMA = {"8em64t-2s2ca2c-buggynuma"}
HWLOC_ENV = {"nvidiagpunumanodes": {"HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES": "1"}}


@dataclass(frozen=True)
class HwlocNuma:
    numa_node: int
    cpus: frozenset[int]
    memory_bytes: int
    hugepages: dict[int, int]


@dataclass(frozen=True)
class HwlocView:
    numa_nodes: dict[int, HwlocNuma]
    distances: dict[tuple[int, int], int]
    machine_cpus: frozenset[int]
    network_names: frozenset[str]


def parse_bitmap(text: str) -> frozenset[int]:
    """hwloc's bitmap: comma-separated 32-bit hex words, most significant first, empty word = 0."""
    value = 0
    for word in text.split(","):
        value = (value << 32) | (int(word, 16) if word else 0)
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)


def run_lstopo(fsroot: Path, name: str) -> HwlocView:
    assert LSTOPO is not None
    env = {
        **os.environ,
        "HWLOC_COMPONENTS": "linux,stop",
        "HWLOC_FSROOT": str(fsroot),
        "HWLOC_DONT_ADD_VERSION_INFO": "1",
        "LC_ALL": "C",
        **HWLOC_ENV.get(name, {}),
    }
    result = subprocess.run(
        [LSTOPO, "--whole-system", "--whole-io", "--of", "xml", "-"], env=env, capture_output=True, check=True
    )
    root = ET.fromstring(result.stdout)
    nodes = {}
    for obj in root.iter("object"):
        if obj.get("type") != "NUMANode":
            continue
        pages = {int(p.get("size", "0")): int(p.get("count", "0")) for p in obj.iter("page_type")}
        base = min(pages) if pages else 0
        numa = int(obj.get("os_index", "-1"))
        nodes[numa] = HwlocNuma(
            numa_node=numa,
            cpus=parse_bitmap(obj.get("cpuset", "0x0")),
            memory_bytes=int(obj.get("local_memory", "0")),
            hugepages={size: count for size, count in pages.items() if size != base},
        )
    distances: dict[tuple[int, int], int] = {}
    for matrix in root.iter("distances2"):
        if matrix.get("type") != "NUMANode":
            continue
        indexes = [int(i) for element in matrix.iter("indexes") for i in (element.text or "").split()]
        values = [int(v) for element in matrix.iter("u64values") for v in (element.text or "").split()]
        for position, value in enumerate(values):
            distances[(indexes[position // len(indexes)], indexes[position % len(indexes)])] = value
    machine = next(obj for obj in root.iter("object") if obj.get("type") == "Machine")
    names = frozenset(
        obj.get("name", "")
        for obj in root.iter("object")
        if obj.get("type") == "OSDev" and obj.get("osdev_type") in ("2", "3")
    )
    return HwlocView(
        numa_nodes=nodes,
        distances=distances,
        machine_cpus=parse_bitmap(machine.get("complete_cpuset", "0x0")),
        network_names=names,
    )


def ours(fsroot: Path) -> Topology:
    return discover(HostPaths(sysfs=fsroot / "sys", procfs=fsroot / "proc"), use_nvml=False, use_udev=False)


@pytest.mark.parametrize("name", HWLOC_NAMES)
def test_numa_nodes_match_hwloc(hwloc_trees: dict[str, Path], name: str) -> None:
    peer = run_lstopo(hwloc_trees[name], name)
    topology = ours(hwloc_trees[name])
    by_id = {numa.numa_node: numa for numa in topology.numa_nodes}
    assert peer.numa_nodes, "hwloc reported no NUMA node: the comparison would be empty"

    if name in BUGGY_NUMA:
        assert list(peer.numa_nodes) == [0]
        assert any("list the same CPUs" in warning for warning in topology.warnings)
        compared = [0]
    else:
        assert sorted(by_id) == sorted(peer.numa_nodes)
        compared = sorted(peer.numa_nodes)

    for numa in compared:
        mine, theirs = by_id[numa], peer.numa_nodes[numa]
        assert mine.memory_total_bytes == theirs.memory_bytes, f"memory of NUMA node {numa}"
        assert {pool.size_bytes: pool.total_pages for pool in mine.hugepages} == theirs.hugepages, (
            f"hugepages of NUMA node {numa}"
        )
        if mine.cpus:
            assert mine.cpus == theirs.cpus, f"CPUs of NUMA node {numa}"
        else:
            # A CPU-less memory node: hwloc attaches it to its initiators' CPUs; sysfs gives it none.
            assert theirs.cpus <= peer.machine_cpus

    all_our_cpus = frozenset().union(*(numa.cpus for numa in topology.numa_nodes))
    assert all_our_cpus == peer.machine_cpus
    assert {cpu.cpu for cpu in topology.cpus} == peer.machine_cpus

    if name not in BUGGY_NUMA:
        expected = {pair: value for pair, value in peer.distances.items() if pair[0] in compared}
        actual = {
            (numa, other): by_id[numa].distances[other]
            for numa in compared
            for other in compared
            if (numa, other) in expected
        }
        assert expected, "hwloc reported no distance matrix"
        assert actual == expected


@pytest.mark.parametrize("name", ["40intel64-2g2n4c+pci", "32em64t-2n8c+1mic"])
def test_network_devices_match_hwloc(hwloc_trees: dict[str, Path], name: str) -> None:
    peer = run_lstopo(hwloc_trees[name], name)
    topology = ours(hwloc_trees[name])
    names = {n for device in topology.pci_devices for n in (*device.net_interfaces, *device.rdma_devices)}
    assert peer.network_names
    assert names == peer.network_names
