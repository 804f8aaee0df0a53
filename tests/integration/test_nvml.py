"""The real pynvml against a fake libnvidia-ml.so.1 compiled from tests/fakenvml/fake_nvml.c."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.hardware.discovery import discover
from exporter.snapshot import SnapshotBuilder
from exporter.sources.nvml import normalize_pci_address
from tests.hosttree import HostTree, fixture_machine, fixture_nvml_config
from tests.kubelet_files import cpu_state, device_entry, device_state, fixture_config, install, pod_logs

MIG_UUIDS = ("MIG-aaaaaaaa-0000-5000-8000-000000000001", "MIG-aaaaaaaa-0000-5000-8000-000000000002")


def two_gpu_host(root: Path) -> HostTree:
    host = HostTree(root)
    host.cpus(present=range(4))
    host.numa_node(0, cpus=[0, 1], memory_kb=1 << 20, distances=[10, 21])
    host.numa_node(1, cpus=[2, 3], memory_kb=1 << 20, distances=[21, 10])
    host.pci_device("0000:1a:00.0", class_code=0x030200, numa_node=0, vendor="0x10de", device="0x2330")
    host.pci_device("0000:9c:00.0", class_code=0x030200, numa_node=1, vendor="0x10de", device="0x2330")
    return host


def test_two_gpus_on_two_numa_nodes_one_in_mig_mode(tmp_path: Path, nvml_config: Path) -> None:
    host = two_gpu_host(tmp_path / "host")
    nvml_config.write_text(
        "gpu GPU-11111111-2222-3333-4444-555555555555 NVIDIA_H100_80GB_HBM3 85899345920 00000000:1A:00.0 0\n"
        f"gpu GPU-66666666-7777-8888-9999-000000000000 NVIDIA_A100-SXM4-40GB 42949672960 00000000:9C:00.0 1 "
        f"{' '.join(MIG_UUIDS)}\n"
    )
    topology = discover(host.paths, use_udev=False)
    status = {s.source: s for s in topology.sources}
    assert status["nvml"].up
    first, second = topology.gpus
    assert (first.index, first.uuid, first.name) == (
        0,
        "GPU-11111111-2222-3333-4444-555555555555",
        "NVIDIA H100 80GB HBM3",
    )
    assert (first.pci_address, first.numa_node, first.memory_total_bytes) == ("0000:1a:00.0", 0, 85899345920)
    assert not first.mig_enabled
    assert first.mig_devices == ()
    assert (second.pci_address, second.numa_node, second.mig_enabled) == ("0000:9c:00.0", 1, True)
    assert tuple(mig.uuid for mig in second.mig_devices) == MIG_UUIDS


def test_a_gpu_missing_from_sysfs_has_unknown_numa(tmp_path: Path, nvml_config: Path) -> None:
    host = two_gpu_host(tmp_path / "host")
    nvml_config.write_text("gpu GPU-abc NVIDIA_L4 24000000000 00000000:C1:00.0 0\n")
    (gpu,) = discover(host.paths, use_udev=False).gpus
    assert (gpu.pci_address, gpu.numa_node) == ("0000:c1:00.0", -1)


def test_driver_not_loaded_is_unavailable_not_failed(tmp_path: Path, nvml_config: Path) -> None:
    host = two_gpu_host(tmp_path / "host")
    nvml_config.write_text("init_error 9\n")
    topology = discover(host.paths, use_udev=False)
    status = {s.source: s for s in topology.sources}["nvml"]
    assert (status.up, status.available, status.reason) == (False, False, "unavailable")
    assert "Driver Not Loaded" in (status.message or "")
    assert topology.gpus == ()


def test_other_init_failures_are_errors(tmp_path: Path, nvml_config: Path) -> None:
    host = two_gpu_host(tmp_path / "host")
    nvml_config.write_text("init_error 999\n")
    status = {s.source: s for s in discover(host.paths, use_udev=False).sources}["nvml"]
    assert (status.up, status.available, status.reason) == (False, True, "io")


def test_no_library_at_all_in_a_fresh_process(tmp_path: Path) -> None:
    """Without any libnvidia-ml.so.1 (this machine has none unless a test loads the fake): unavailable."""
    host = two_gpu_host(tmp_path / "host")
    env = {key: value for key, value in os.environ.items() if key not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "snapshot", "--format", "json", "--path.sysfs", str(host.sys)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    nvml = next(s for s in json.loads(result.stdout)["sources"] if s["source"] == "nvml")
    if nvml["up"]:
        pytest.skip("a real NVIDIA host: NVML is there, its absence cannot be shown")
    assert (nvml["available"], nvml["reason"]) == (False, "unavailable")


def test_snapshot_command_with_the_fake_library_on_the_library_path(tmp_path: Path, fake_nvml_library: Path) -> None:
    host = fixture_machine(tmp_path / "machine")
    config = fixture_nvml_config(tmp_path / "nvml.conf")
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_nvml_library.parent), "FAKE_NVML_CONFIG": str(config)}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "snapshot", "--path.sysfs", str(host.sys)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert "GPUs (NVML)" in result.stdout
    assert "GPU-1b7c9a2e-0000-0000-0000-000000000003  0000:8b:00.0  1" in result.stdout


def test_bus_id_normalisation() -> None:
    assert normalize_pci_address("00000000:3B:00.0") == "0000:3b:00.0"
    assert normalize_pci_address("0001:af:00.1") == "0001:af:00.1"


def test_one_nvml_session_for_the_builders_life_reopened_after_an_error(tmp_path: Path, nvml_config: Path) -> None:
    """serve's builder initialises NVML once, not per refresh; a call failing (GPU lost) closes the session
    (that refresh reports nvml down, keeping the rest), and the next refresh initialises it again."""
    host = two_gpu_host(tmp_path / "host")
    inits, lost = tmp_path / "inits", tmp_path / "lost"
    nvml_config.write_text(
        f"init_log {inits}\nlost_once {lost}\n"
        "gpu GPU-11111111-2222-3333-4444-555555555555 NVIDIA_H100_80GB_HBM3 85899345920 00000000:1A:00.0 0\n"
    )
    builder = SnapshotBuilder(host.paths, use_nvml=True, use_udev=False, use_podresources=False)
    try:
        for _ in range(4):
            assert builder.build().source("nvml").up
        assert inits.read_text().count("init") == 1
        lost.write_text("")
        failed = builder.build()
        assert not failed.source("nvml").up
        assert "GPU is lost" in (failed.source("nvml").message or "")
        assert failed.topology.numa_nodes, "the rest of the snapshot is kept"
        again = builder.build()
        assert again.source("nvml").up
        assert len(again.topology.gpus) == 1
        assert inits.read_text().count("init") == 2
    finally:
        builder.close()


def test_nvml_affinity_places_a_gpu_sysfs_cannot_and_is_checked_against_local_cpus(
    tmp_path: Path, nvml_config: Path
) -> None:
    """numa_node -1 on both GPUs (a VM's firmware): one without local CPUs is placed by NVML's memory affinity
    (node mask 0x2: NUMA 1); one whose local CPUs say NUMA 0 while NVML says NUMA 1 keeps 0, with a warning."""
    host = HostTree(tmp_path / "host")
    host.cpus(present=range(4))
    host.numa_node(0, cpus=[0, 1], memory_kb=1 << 20, distances=[10, 21])
    host.numa_node(1, cpus=[2, 3], memory_kb=1 << 20, distances=[21, 10])
    host.pci_device("0000:1a:00.0", class_code=0x030200, numa_node=-1, vendor="0x10de")
    host.pci_device("0000:9c:00.0", class_code=0x030200, numa_node=-1, vendor="0x10de", local_cpulist="0-1")
    nvml_config.write_text(
        "gpu GPU-a NVIDIA_H200 150754820096 00000000:1A:00.0 0\ngpu GPU-b NVIDIA_H200 150754820096 00000000:9C:00.0 0\n"
        "affinity 00000000:1A:00.0 c 2\naffinity 00000000:9C:00.0 c 2\n"
    )
    topology = discover(host.paths, use_udev=False)
    first, _ = topology.gpus
    assert (first.nvml_cpus, first.nvml_numa_nodes) == (frozenset({2, 3}), frozenset({1}))
    devices = {d.address: d for d in topology.pci_devices}
    assert (devices["0000:1a:00.0"].numa_node, devices["0000:1a:00.0"].hardware_numa_node) == (-1, 1)
    assert devices["0000:9c:00.0"].hardware_numa_node == 0
    assert any("0000:9c:00.0" in w and "NVML's memory affinity on 1" in w for w in topology.warnings)


def test_nvlink_and_fabric_facts_where_supported_absent_without_error_elsewhere(
    tmp_path: Path, nvml_config: Path
) -> None:
    """The H200 VM answers NotSupported for every NVLink and no fabric (../shared/fixtures/gpu/h200-vm):
    those stay None and NVML is up; an NVSwitch system's GPU reports its active links, cluster and clique."""
    host = two_gpu_host(tmp_path / "host")
    nvml_config.write_text(
        "gpu GPU-a NVIDIA_H200 150754820096 00000000:1A:00.0 0\ngpu GPU-b NVIDIA_GB200 199000000000 00000000:9C:00.0 0\n"
        "nvlink 00000000:9C:00.0 18 16\nfabric 00000000:9C:00.0 7 0123456789abcdef0123456789abcdef\n"
    )
    topology = discover(host.paths, use_udev=False)
    assert {s.source: s.up for s in topology.sources}["nvml"]
    plain, fabric = topology.gpus
    assert (plain.nvlinks_active, plain.fabric_cluster_uuid, plain.fabric_clique) == (None, None, None)
    assert (fabric.nvlinks_active, fabric.fabric_clique) == (16, 7)
    assert fabric.fabric_cluster_uuid == "01234567-89ab-cdef-0123-456789abcdef"


@pytest.mark.parametrize(("resource", "strategy"), [("nvidia.com/gpu", "single"), ("nvidia.com/mig-1g.10gb", "mixed")])
def test_mig_devices_in_the_kubelets_records_are_their_parent_gpus(
    tmp_path: Path, nvml_config: Path, resource: str, strategy: str
) -> None:
    """The NVIDIA device plugin hands out MIG UUIDs, under nvidia.com/gpu (single strategy) or
    nvidia.com/mig-<profile> (mixed): each is placed on its parent GPU's NUMA node and PCIe place, so the audit
    and the GPU-NIC path see the parent."""
    host = fixture_machine(tmp_path / "machine")
    mig = ("MIG-aaaaaaaa-0000-5000-8000-000000000001", "MIG-aaaaaaaa-0000-5000-8000-000000000002")
    nvml_config.write_text(
        f"gpu GPU-parent-0 NVIDIA_A100 42949672960 00000000:1A:00.0 1 {mig[0]}\n"
        f"gpu GPU-parent-1 NVIDIA_A100 42949672960 00000000:8A:00.0 1 {mig[1]}\n"
    )
    uid = "0f1e2d3c-4b5a-4697-8877-665544332211"
    entries = [device_entry(uid, "train", resource, {0: [mig[0]]}), device_entry(uid, "train", "intel.com/sriov",
               {0: ["0000:3b:02.0"]})]  # fmt: skip
    install(host, devices=device_state(entries, {resource: list(mig), "intel.com/sriov": ["0000:3b:02.0"]}),
            cpu=cpu_state(default=[0, *range(2, 32)], entries={uid: {"train": [1, 17]}}), config=fixture_config())  # fmt: skip
    pod_logs(host, [("ml", "trainer", uid)])
    snapshot = SnapshotBuilder(host.paths, use_nvml=True, use_udev=False, use_podresources=False).build()
    (container,) = snapshot.accounting.containers
    assert container.numa_nodes[resource] == frozenset({0}), strategy
    assert container.aligned
    assert container.gpu_nic is not None
    assert (container.gpu_nic.a, container.gpu_nic.b, container.gpu_nic.path) == ("0000:1a:00.0", "0000:3b:02.0", "PIX")
    records = {r.device: r for r in snapshot.accounting.devices}
    assert (records[mig[1]].resource, records[mig[1]].pci_address, records[mig[1]].numa_node) == (
        resource, "0000:8a:00.0", 1)  # fmt: skip
