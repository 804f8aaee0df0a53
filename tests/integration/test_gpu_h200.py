"""The real NVIDIA H200 host (tests/fixtures/gpu/h200-vm, captured on 2026-12-04): its sysfs, what NVML
answered there (played back through the real pynvml and the fake library), and what `nvidia-smi topo -m` and
hwloc said. Our discovery on the capture must say what the NVIDIA tools said on the machine."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from exporter.hardware.discovery import discover
from exporter.paths import HostPaths

CAPTURE = Path(__file__).parents[1] / "fixtures" / "gpu" / "h200-vm"
GPU = "0000:00:06.0"
NIC = "0000:00:03.0"


@pytest.fixture(scope="module")
def h200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("h200")
    subprocess.run(["tar", "-xzf", str(CAPTURE / "sysfs.tar.gz"), "-C", str(root)], check=True)
    return root / "h200-vm"


def nvml_config_from_probe(path: Path) -> Path:
    """What NVML answered on the host, as the fake library's configuration: name, UUID, memory, bus ID, MIG off;
    no affinity line, so CPU and memory affinity answer NotSupported; no NVLink, no fabric (NotSupported there)."""
    (device,) = json.loads((CAPTURE / "nvml-probe.json").read_text())["devices"]
    name = device["nvmlDeviceGetName"].replace(" ", "_")
    memory = device["nvmlDeviceGetMemoryInfo"]["total"]
    bus = device["nvmlDeviceGetPciInfo"]["busId"]
    assert all(str(v).startswith("ERR NVMLError_NotSupported") for v in device["nvlink"].values())
    path.write_text(f"gpu {device['nvmlDeviceGetUUID']} {name} {memory} {bus} {device['nvmlDeviceGetMigMode'][0]}\n")
    return path


def test_the_gpu_is_where_nvidia_smi_put_it(h200: Path) -> None:
    """`nvidia-smi topo -m`: GPU0 CPU affinity 0-15, NUMA affinity 0, GPU NUMA ID N/A; sysfs numa_node is -1.
    We keep -1 for admission (the kubelet's view) and place it on NUMA 0 by its local CPUs."""
    topo = (CAPTURE / "nvidia-smi-topo-m.txt").read_text().splitlines()
    header = topo[0].split("\t")
    row = dict(zip(header, topo[1].split("\t"), strict=False))
    topology = discover(HostPaths(sysfs=h200 / "sys", procfs=h200 / "proc"), use_nvml=False, use_udev=False)
    gpu = next(d for d in topology.pci_devices if d.address == GPU)
    assert (gpu.kind, gpu.numa_node) == ("gpu", -1)
    assert sorted(gpu.local_cpus) == list(range(16))
    assert row["CPU Affinity"].strip() == "0-15"
    assert gpu.hardware_numa_node == int(row["NUMA Affinity"])
    assert [(n.numa_node, n.memory_kind) for n in topology.numa_nodes] == [(0, "dram")]


def test_the_gpu_and_the_virtio_nic_meet_at_the_host_bridge(h200: Path) -> None:
    """Both on the root bus of pci0000:00 with no bridge between (hwloc's lstopo.xml puts both directly under
    the host bridge): PHB, so no GPUDirect RDMA. nvidia-smi lists no NIC for a virtio card; hwloc does."""
    topology = discover(HostPaths(sysfs=h200 / "sys", procfs=h200 / "proc"), use_nvml=False, use_udev=False)
    devices = {d.address: d for d in topology.pci_devices}
    assert (devices[GPU].pcie_root, devices[GPU].pcie_bridges) == ("pci0000:00", ())
    assert (devices[NIC].kind, devices[NIC].net_interfaces) == ("nic", ("eth0",))
    assert {(p.a, p.b): p.path for p in topology.pcie_paths} == {(NIC, GPU): "PHB"}
    xml = ET.parse(CAPTURE / "lstopo.xml").getroot()
    parents = {child: parent for parent in xml.iter("object") for child in parent if child.tag == "object"}
    for address in (GPU, NIC):
        obj = next(o for o in xml.iter("object") if o.get("type") == "PCIDev" and o.get("pci_busid") == address)
        parent = parents[obj]
        assert (parent.get("type"), parent.get("bridge_type", "")[:2]) == ("Bridge", "0-"), address


def test_snapshot_with_nvml_as_it_answered_there(h200: Path, tmp_path: Path, fake_nvml_library: Path) -> None:
    """The snapshot command over the capture with NVML playing back the host's answers: the GPU joined by PCI
    address, no NVLink or fabric facts and no error, and the PCIe matrix naming the GPU and the NIC."""
    config = nvml_config_from_probe(tmp_path / "nvml.conf")
    env = {"LD_LIBRARY_PATH": str(fake_nvml_library.parent), "FAKE_NVML_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    argv = ["snapshot", "--path.sysfs", str(h200 / "sys"), "--path.procfs", str(h200 / "proc")]
    table = subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True, text=True, check=True,
                           env=env).stdout  # fmt: skip
    rows = [line.split() for line in table.splitlines()]
    assert ["GPU0", "X", "PHB", "-1", "(CPUs:", "0)"] in rows  # as nvidia-smi: NUMA affinity 0, GPU NUMA ID N/A
    assert ["NIC0", "PHB", "X", "-1", "(CPUs:", "0)"] in rows
    data = json.loads(subprocess.run([sys.executable, "-m", "exporter", *argv, "--format", "json"],
                                     capture_output=True, text=True, check=True, env=env).stdout)  # fmt: skip
    (gpu,) = data["topology"]["gpus"]
    assert (gpu["name"], gpu["pci_address"], gpu["numa_node"]) == ("NVIDIA H200", GPU, -1)
    assert (gpu["nvlinks_active"], gpu["fabric_clique"], gpu["nvml_numa_nodes"]) == (None, None, [])
    assert next(s for s in data["topology"]["sources"] if s["source"] == "nvml")["up"]
