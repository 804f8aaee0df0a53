"""The real pynvml against a fake libnvidia-ml.so.1 compiled from tests/fakenvml/fake_nvml.c."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from exporter.discovery import discover
from exporter.sources.nvml import normalize_pci_address
from tests.hosttree import HostTree, fixture_machine, fixture_nvml_config

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
    if nvml["up"]:  # a real NVIDIA host: nothing to assert about absence
        return
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
