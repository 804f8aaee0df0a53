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
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.cpuset import parse_cpuset
from exporter.hardware.discovery import discover
from exporter.hardware.pcie import bridge_path_class, interesting, pairs
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
    pci_cpus: dict[str, frozenset[int]]  # PCI address -> cpuset of the object hwloc attaches it under


def parse_bitmap(text: str) -> frozenset[int]:
    """hwloc's bitmap: comma-separated 32-bit hex words, most significant first, empty word = 0."""
    value = 0
    for word in text.split(","):
        value = (value << 32) | (int(word, 16) if word else 0)
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)


def lstopo_xml(fsroot: Path, name: str) -> ET.Element:
    """hwloc's XML of a capture: the whole system and every I/O device, with the capture's environment."""
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
    return ET.fromstring(result.stdout)


def run_lstopo(fsroot: Path, name: str) -> HwlocView:
    root = lstopo_xml(fsroot, name)
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
    parents = {child: parent for parent in root.iter("object") for child in parent if child.tag == "object"}
    pci_cpus = {}
    for obj in root.iter("object"):
        if obj.get("type") == "PCIDev":
            above = parents.get(obj)
            while above is not None and above.get("cpuset") is None:  # bridges carry no cpuset
                above = parents.get(above)
            pci_cpus[obj.get("pci_busid", "")] = (
                parse_bitmap(above.get("cpuset", "0x0")) if above is not None else frozenset()
            )
    return HwlocView(
        numa_nodes=nodes,
        distances=distances,
        machine_cpus=parse_bitmap(machine.get("complete_cpuset", "0x0")),
        network_names=names,
        pci_cpus=pci_cpus,
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


@pytest.mark.parametrize("name", HWLOC_NAMES)
def test_device_locality_matches_hwloc(hwloc_trees: dict[str, Path], name: str) -> None:
    """A device whose firmware gives no numa_node: we place it, as the hardware's view, where hwloc attaches
    it (by its local CPUs; the POWER9 GPUs of nvidiagpunumanodes have no numa_node file at all), and one hwloc
    attaches above every NUMA node (the Machine) stays -1. (Where numa_node is known we keep it, as the
    kubelet does; hwloc goes by local_cpus even then: 40intel64's InfiniBand card is numa_node 2 with all
    CPUs local, and hwloc attaches it to the Machine.)"""
    peer = run_lstopo(hwloc_trees[name], name)
    topology = ours(hwloc_trees[name])
    compared = 0
    for device in topology.pci_devices:
        cpus = peer.pci_cpus.get(device.address)
        if device.numa_node != -1 or not cpus:
            continue
        # The sysfs NUMA nodes with CPUs: hwloc gives CPU-less (GPU memory) nodes their initiators' CPUs.
        holding = [numa.numa_node for numa in topology.numa_nodes if numa.cpus and cpus <= numa.cpus]
        assert device.hardware_numa_node == (holding[0] if len(holding) == 1 else -1), device.address
        compared += 1
    assert compared or not [d for d in topology.pci_devices if d.address in peer.pci_cpus and d.numa_node == -1]
    if name == "nvidiagpunumanodes":
        gpus = {d.address: (d.numa_node, d.local_numa_node) for d in topology.pci_devices if d.category == "gpu"}
        assert gpus == {"0004:05:00.0": (-1, 0), "0004:06:00.0": (-1, 0), "0006:00:00.0": (-1, 0),
                        "0007:00:00.0": (-1, 8), "0035:04:00.0": (-1, 8), "0035:05:00.0": (-1, 8)}  # fmt: skip


PCI_TREES = ["40intel64-2g2n4c+pci", "32em64t-2n8c+1mic", "32intel64-2p8co2t+8ve"]


def hwloc_path_classes(fsroot: Path, name: str, addresses: set[str]) -> dict[tuple[str, str], str]:
    """The path class of every two of these devices as hwloc's PCI tree gives it: the host bridge and PCI
    bridges above each PCIDev, and the NUMA node of the object hwloc attaches the host bridge to. The same
    rule as exporter/hardware/pcie.py, on hwloc's tree instead of ours."""
    root = lstopo_xml(fsroot, name)
    parents = {child: parent for parent in root.iter("object") for child in parent if child.tag == "object"}
    numa_cpus = {
        int(o.get("os_index", "-1")): parse_bitmap(o.get("cpuset", "0x0"))
        for o in root.iter("object")
        if o.get("type") == "NUMANode"
    }
    place: dict[str, tuple[object, tuple[str, ...], int]] = {}
    for obj in root.iter("object"):
        if obj.get("type") != "PCIDev" or obj.get("pci_busid") not in addresses:
            continue
        bridges: list[str] = []
        host: object = None
        above = parents.get(obj)
        while above is not None and above.get("type") == "Bridge":
            if above.get("bridge_type", "").startswith("0-"):
                host = above
            else:
                bridges.insert(0, above.get("pci_busid", ""))
            above = parents.get(above)
        cpus = parse_bitmap(above.get("cpuset", "0x0")) if above is not None else frozenset()
        holding = [numa for numa, numa_set in numa_cpus.items() if numa_set and cpus and cpus <= numa_set]
        place[obj.get("pci_busid", "")] = (host, tuple(bridges), holding[0] if len(holding) == 1 else -1)
    classes = {}
    ordered = sorted(place)
    for index, a in enumerate(ordered):
        for b in ordered[index + 1 :]:
            (host_a, bridges_a, numa_a), (host_b, bridges_b, numa_b) = place[a], place[b]
            if host_a is not None and host_a is host_b:
                classes[(a, b)] = bridge_path_class(bridges_a, bridges_b)
            else:
                classes[(a, b)] = "NODE" if numa_a == numa_b != -1 else "SYS"
    return classes


@pytest.mark.parametrize("name", PCI_TREES)
def test_pcie_path_classes_match_hwloc(hwloc_trees: dict[str, Path], name: str) -> None:
    """Every two GPUs, NICs, VFs and accelerators: our path class (sysfs, exporter/hardware/pcie.py) equals the one
    hwloc's own PCI tree gives, on real machines with root ports, switches and several root complexes."""
    topology = ours(hwloc_trees[name])
    devices = interesting(topology)
    mine = {(p.a, p.b): p.path for p in pairs(devices)}
    theirs = hwloc_path_classes(hwloc_trees[name], name, {d.address for d in devices})
    assert len(theirs) >= 3, "hwloc placed too few of our devices for the comparison to mean anything"
    assert {pair: mine[pair] for pair in theirs} == theirs
    seen = {"40intel64-2g2n4c+pci": {"PIX", "PHB", "SYS"}, "32em64t-2n8c+1mic": {"PIX", "PHB", "SYS"},
            "32intel64-2p8co2t+8ve": {"PIX", "NODE"}}  # fmt: skip
    assert set(theirs.values()) == seen[name]  # PXB (switches under switches) is in none: tests/unit/test_pcie.py has it


HWLOC_SUBTYPES = {None: "dram", "DRAM": "dram", "HBM": "hbm", "GPUMemory": "gpu-memory", "NVM": "nvm", "SPM": "spm"}


@pytest.mark.parametrize("name", HWLOC_NAMES)
def test_memory_kinds_match_hwloc(hwloc_trees: dict[str, Path], name: str) -> None:
    """Each NUMA node's memory kind (and a GPU memory node's GPU) is what hwloc's subtype says: GPU memory on
    POWER9 + V100, HBM exposed as SPM and told by bandwidth, NVM from NVDIMM DAX devices; a node hwloc gives
    no subtype is DRAM."""
    theirs = {}
    for obj in lstopo_xml(hwloc_trees[name], name).iter("object"):
        if obj.get("type") == "NUMANode":
            infos = {i.get("name"): i.get("value") for i in obj.findall("info")}
            kind = obj.get("subtype")
            theirs[int(obj.get("os_index", "-1"))] = (HWLOC_SUBTYPES.get(kind, "cxl" if kind and kind.startswith("CXL") else "?"),
                                                      infos.get("PCIBusID", ""))  # fmt: skip
    mine = {numa.numa_node: (numa.memory_kind, numa.memory_owner) for numa in ours(hwloc_trees[name]).numa_nodes}
    assert theirs
    assert {numa: mine[numa] for numa in theirs} == theirs
    expected = {"nvidiagpunumanodes": {"dram", "gpu-memory"}, "fakeheteromemtiers": {"dram", "hbm", "nvm"},
                "fakememinitiators-1np2c+1npp+gi": {"dram", "nvm"}}  # fmt: skip
    assert {kind for kind, _ in theirs.values()} == expected.get(name, {"dram"})


GOLDEN_METRICS = Path(__file__).parents[1] / "golden" / "metrics"
SERIES = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")


def golden_series(name: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """A committed golden exposition (tests/golden/metrics): metric name -> labels -> value."""
    series: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for line in (GOLDEN_METRICS / f"{name}.prom").read_text().splitlines():
        if (m := SERIES.match(line)) is not None:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            series.setdefault(m.group(1), {})[labels] = float(m.group(3))
    return series


@pytest.mark.parametrize("name", HWLOC_NAMES)
def test_the_committed_golden_metrics_say_what_hwloc_says(hwloc_trees: dict[str, Path], name: str) -> None:
    """The golden files of test_metrics_golden are the product's own output, regenerated with
    --update-golden: here each is held to hwloc's view of the same tree (CPUs, memory, hugepages and distances
    per NUMA node), so a golden regenerated from a wrong output fails."""
    peer = run_lstopo(hwloc_trees[name], name)
    series = golden_series(name)
    numa_ids = sorted(peer.numa_nodes) if name not in BUGGY_NUMA else [0]
    checked = 0
    for numa in numa_ids:
        theirs = peer.numa_nodes[numa]

        def capacity(resource: str, numa: int = numa) -> float | None:
            return series["numa_topology_resource_capacity"].get(
                frozenset({("numa_node", str(numa)), ("resource", resource), ("unit", "core" if resource == "cpu" else "byte")})
            )

        assert capacity("memory") == theirs.memory_bytes, f"memory of NUMA node {numa}"
        info = [dict(labels) for labels in series["numa_topology_numa_node_info"] if ("numa_node", str(numa)) in labels]
        assert len(info) == 1, info
        ours_cpus = parse_cpuset(info[0]["cpulist"])
        if ours_cpus:  # a CPU-less memory node: hwloc gives it its initiators' CPUs (DIVERGENCES)
            assert ours_cpus == theirs.cpus, f"CPUs of NUMA node {numa}"
            if name not in BUGGY_NUMA:  # there every node lists every CPU: each is counted once, on one node
                assert capacity("cpu") == len(theirs.cpus)
        for size, pages in theirs.hugepages.items():
            label = f"{size >> 30}Gi" if size >= 1 << 30 else f"{size >> 20}Mi"
            total = series["numa_topology_hugepages_pages"][
                frozenset({("numa_node", str(numa)), ("size", label), ("state", "total")})
            ]
            assert total == pages, f"{label} pages of NUMA node {numa}"
        checked += 1
    if name not in BUGGY_NUMA:
        distances = {
            (int(dict(labels)["numa_node"]), int(dict(labels)["to_numa_node"])): value
            for labels, value in series["numa_topology_distance"].items()
        }
        assert peer.distances, "hwloc reported no distance matrix"
        assert {pair: distances[pair] for pair in peer.distances} == peer.distances
    cpu_capacity = [value for labels, value in series["numa_topology_resource_capacity"].items()
                    if ("resource", "cpu") in labels]  # fmt: skip
    assert sum(cpu_capacity) == len(peer.machine_cpus), "every CPU counted once"
    assert checked == len(numa_ids) >= 1


GOLDEN_NRT = Path(__file__).parents[1] / "golden" / "nrt"


@pytest.mark.parametrize("name", HWLOC_NAMES)
def test_the_committed_golden_nrt_objects_say_what_hwloc_says(hwloc_trees: dict[str, Path], name: str) -> None:
    """The NRT golden files of test_nrt.py are the product's own output too: each zone held to hwloc's view of
    the same tree (one zone per NUMA node, its CPUs, memory, hugepages and its row of the distance matrix as
    costs). No kubelet runs on these trees: allocatable and available are capacity (memory's less hugepages)."""
    import yaml

    peer = run_lstopo(hwloc_trees[name], name)
    obj = yaml.safe_load((GOLDEN_NRT / f"{name}.yaml").read_text())
    zones = {int(zone["name"].removeprefix("node-")): zone for zone in obj["zones"]}
    if name in BUGGY_NUMA:  # every node lists every CPU there: counted once, on the first
        assert sum(r["capacity"] for z in zones.values() for r in z["resources"] if r["name"] == "cpu") == len(
            peer.machine_cpus
        )
        return
    assert sorted(zones) == sorted(peer.numa_nodes)
    for numa, zone in zones.items():
        theirs = peer.numa_nodes[numa]
        resources = {r["name"]: r for r in zone["resources"]}
        assert resources["memory"]["capacity"] == theirs.memory_bytes, f"memory of zone {numa}"
        # A CPU-less memory node: hwloc gives it its initiators' CPUs (DIVERGENCES.md); counted once below.
        assert resources["cpu"]["capacity"] in (0, len(theirs.cpus)), f"CPUs of zone {numa}"
        for size, pages in theirs.hugepages.items():
            label = f"{size >> 30}Gi" if size >= 1 << 30 else f"{size >> 20}Mi"
            assert resources[f"hugepages-{label}"]["capacity"] == size * pages, f"{label} of zone {numa}"
        hugepages = sum(size * pages for size, pages in theirs.hugepages.items())
        for resource in resources.values():
            # memory less the hugepages carved out of it (the kubelet's node allocatable rule, per NUMA node)
            allocatable = resource["capacity"] - (hugepages if resource["name"] == "memory" else 0)
            assert allocatable == resource["allocatable"] == resource["available"], resource
        costs = {int(cost["name"].removeprefix("node-")): cost["value"] for cost in zone["costs"]}
        assert {(numa, other): value for other, value in costs.items()} == {
            pair: value for pair, value in peer.distances.items() if pair[0] == numa
        }, f"costs of zone {numa}"
    cpus = sum(r["capacity"] for z in zones.values() for r in z["resources"] if r["name"] == "cpu")
    assert cpus == len(peer.machine_cpus), "every CPU in one zone"
