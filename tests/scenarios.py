"""Fixture hosts used by golden files and end-to-end tests: every hwloc tree, plus the kubelet fixture
machine in a few kubelet configurations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from exporter.paths import HostPaths
from tests.hosttree import HostTree, fixture_machine, fixture_nvml_config
from tests.kubelet_files import POD_A, POD_B, cpu_state, device_entry, device_state, fixture_config, install, pod_logs


def _gpu_static(root: Path) -> HostTree:
    host = fixture_machine(root)
    install(
        host,
        cpu="cpu_manager_state.static-2pods.json",
        memory="memory_manager_state.static-hugepages.json",
        devices="kubelet_internal_checkpoint.gpu-sriov.json",
        config=fixture_config(),
    )
    pod_logs(host, [("team-a", "trainer-0", POD_A), ("team-b", "db-0", POD_B)])
    return host


def _none_policies(root: Path) -> HostTree:
    host = fixture_machine(root)
    install(
        host,
        cpu="cpu_manager_state.none.json",
        memory="memory_manager_state.none.json",
        devices="kubelet_internal_checkpoint.empty.json",
        config=fixture_config(cpu="none", memory="None"),
    )
    return host


def _v1_legacy(root: Path) -> HostTree:
    host = fixture_machine(root)
    install(
        host,
        cpu="cpu_manager_state.static-empty.json",
        devices="kubelet_internal_checkpoint.v1-legacy.json",
        config=fixture_config(memory="None"),
    )
    return host


def _gpu_stranded(root: Path) -> HostTree:
    """Every CPU of NUMA 1 pinned (pod db), so the free GPU there is stranded; and trainer's container holds
    CPUs on NUMA 0 with a GPU and a VF on NUMA 1: misaligned, and its GPU and NIC are NODE apart (the NIC on
    its own root complex): no GPUDirect RDMA."""
    host = fixture_machine(root)
    numa0_free = [0, 1, *range(4, 8), 16, 17, *range(20, 24)]
    gpus = [f"GPU-1b7c9a2e-0000-0000-0000-00000000000{i}" for i in range(4)]
    install(
        host,
        cpu=cpu_state(
            default=numa0_free, entries={POD_A: {"app": [2, 3, 18, 19]}, POD_B: {"db": [*range(8, 16), *range(24, 32)]}}
        ),
        devices=device_state(
            [
                device_entry(POD_A, "app", "nvidia.com/gpu", {1: [gpus[2]]}),
                device_entry(POD_A, "app", "intel.com/sriov_netdevice", {1: ["0000:af:02.0"]}),
            ],
            {"nvidia.com/gpu": gpus, "intel.com/sriov_netdevice": ["0000:af:02.0", "0000:af:02.1"]},
        ),
        config=fixture_config(memory="None"),
    )
    pod_logs(host, [("team-a", "trainer-0", POD_A), ("team-b", "db-0", POD_B)])
    return host


KUBELET_SCENARIOS: dict[str, Callable[[Path], HostTree]] = {
    "machine-gpu-stranded": _gpu_stranded,
    "machine-gpu-static": _gpu_static,
    "machine-none": _none_policies,
    "machine-v1-legacy": _v1_legacy,
}


def scenario_paths(name: str, root: Path, hwloc_trees: dict[str, Path]) -> HostPaths:
    if name in KUBELET_SCENARIOS:
        return KUBELET_SCENARIOS[name](root).paths
    tree = hwloc_trees[name]
    return HostPaths(
        sysfs=tree / "sys", procfs=tree / "proc", kubelet_dir=root / "no-kubelet", pod_logs=root / "no-pods"
    )


def nvml_config_for(name: str, path: Path) -> Path | None:
    return fixture_nvml_config(path) if name in ("machine-gpu-static", "machine-gpu-stranded") else None
