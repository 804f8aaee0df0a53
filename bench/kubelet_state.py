"""Read and verify the three kubelet state files and recompute the accounting, on a large host.

The host: 8 NUMA nodes, 256 CPUs (2 threads per core), 8 GPUs, 8 SR-IOV PFs with 64 VFs, 1Gi and 2Mi
hugepages, and 200 containers (100 pods) holding pinned CPUs, Static memory blocks, VFs and GPUs, with
real checksums (so every read verifies). No peer parses these files (resource-topology-exporter asks the
kubelet's podresources API instead), so the ratio printed is against the 20 ms goal.

    .venv/bin/python bench/kubelet_state.py [--repeat N]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median_seconds, print_table
from exporter.cpuset import format_cpuset
from exporter.hardware.discovery import discover
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.profiles import Profile
from exporter.snapshot import account
from exporter.sources import cpu_manager, device_checkpoint, kubelet_config, memory_manager
from exporter.sources.kubelet_json import spew_checksum
from tests.hosttree import HostTree
from tests.kubelet_files import cpu_state, device_state, memory_state

NUMA_NODES, CPUS_PER_NUMA, PODS = 8, 32, 100
GIB = 1 << 30
GOAL_SECONDS = 0.020


def large_host(root: Path) -> HostTree:
    host = HostTree(root)
    cpus = range(NUMA_NODES * CPUS_PER_NUMA)
    half = len(cpus) // 2
    host.cpus(present=cpus, core_of={c: c % half for c in cpus}, socket_of={c: (c % half) // (half // 2) for c in cpus})
    per_numa = CPUS_PER_NUMA // 2
    for numa in range(NUMA_NODES):
        host.numa_node(
            numa,
            cpus=[
                *range(numa * per_numa, (numa + 1) * per_numa),
                *range(half + numa * per_numa, half + (numa + 1) * per_numa),
            ],
            memory_kb=256 << 20,
            hugepages={1048576: (16, 16), 2048: (1024, 1024)},
            distances=[10 if other == numa else 21 for other in range(NUMA_NODES)],
        )
        host.pci_device(f"0000:{0x10 + numa:02x}:00.0", class_code=0x030200, numa_node=numa, vendor="0x10de")
        pf = f"0000:{0x80 + numa:02x}:00.0"
        host.pci_device(pf, class_code=0x020000, numa_node=numa, net=[f"ens{numa}"], totalvfs=64)
        for vf in range(8):
            host.pci_device(f"0000:{0x80 + numa:02x}:01.{vf}", class_code=0x020000, numa_node=numa, physfn=pf)
    return host


def write_state(host: HostTree) -> None:
    per_numa = CPUS_PER_NUMA // 2
    half = NUMA_NODES * per_numa
    entries: dict[str, dict[str, str]] = {}
    memory_entries: dict[str, dict[str, list[dict[str, object]]]] = {}
    devices = []
    used: set[int] = set()
    reserved_bytes = dict.fromkeys(range(NUMA_NODES), 0)
    alloc_resp = base64.b64encode(b"\n\x42\n\x16NVIDIA_VISIBLE_DEVICES\x12\x28GPU-" + b"0" * 36).decode()
    for pod in range(PODS):
        uid = f"{pod:08x}-0000-4000-8000-000000000000"
        numa = pod % NUMA_NODES
        for index, container in enumerate(("app", "sidecar")):
            slot = (pod // NUMA_NODES) * 2 + index
            cpus = {numa * per_numa + slot % per_numa, half + numa * per_numa + slot % per_numa}
            used |= cpus
            entries.setdefault(uid, {})[container] = format_cpuset(cpus)
            memory_entries.setdefault(uid, {})[container] = [{"numaAffinity": [numa], "type": "memory", "size": GIB}]
            reserved_bytes[numa] += GIB
            devices.append(
                {
                    "PodUID": uid,
                    "ContainerName": container,
                    "ResourceName": "intel.com/sriov",
                    "DeviceIDs": {str(numa): [f"0000:{0x80 + numa:02x}:01.{slot % 8}"]},
                    "AllocResp": alloc_resp,
                }
            )
        if pod < NUMA_NODES:
            devices.append(
                {
                    "PodUID": uid,
                    "ContainerName": "app",
                    "ResourceName": "nvidia.com/gpu",
                    "DeviceIDs": {str(numa): [f"0000:{0x10 + numa:02x}:00.0"]},
                    "AllocResp": alloc_resp,
                }
            )
    all_cpus = set(range(NUMA_NODES * CPUS_PER_NUMA))
    cpu_body = {
        "policyName": "static",
        "defaultCpuSet": format_cpuset(all_cpus - used),
        "entries": entries,
        "checksum": 0,
    }
    raw = json.dumps(cpu_body, separators=(",", ":")).encode()
    cpu_body["checksum"] = spew_checksum(dict(cpu_manager.hash_texts(raw))["v2"])
    host.paths.cpu_manager_state.write_text(json.dumps(cpu_body, separators=(",", ":")))
    table = {"total": 0, "systemReserved": 0, "allocatable": 0, "reserved": 0, "free": 0}
    machine = {}
    for numa in range(NUMA_NODES):
        memory = {**table, "total": 256 * GIB, "allocatable": 230 * GIB, "reserved": reserved_bytes[numa]}
        memory["free"] = memory["allocatable"] - reserved_bytes[numa]
        huge_1g = {**table, "total": 16 * GIB, "allocatable": 16 * GIB, "free": 16 * GIB}
        huge_2m = {**table, "total": 2 * GIB, "allocatable": 2 * GIB, "free": 2 * GIB}
        machine[str(numa)] = {
            "numberOfAssignments": 25,
            "memoryMap": {"memory": memory, "hugepages-1Gi": huge_1g, "hugepages-2Mi": huge_2m},
            "cells": [numa],
        }
    host.paths.memory_manager_state.write_bytes(
        memory_state({"policyName": "Static", "machineState": machine, "entries": memory_entries})
    )
    registered = {
        "intel.com/sriov": [f"0000:{0x80 + n:02x}:01.{vf}" for n in range(NUMA_NODES) for vf in range(8)],
        "nvidia.com/gpu": [f"0000:{0x10 + n:02x}:00.0" for n in range(NUMA_NODES)],
    }
    host.paths.device_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    host.paths.device_checkpoint.write_bytes(device_state(devices, registered))
    host.paths.kubelet_config.write_text(
        'kind: KubeletConfiguration\ncpuManagerPolicy: static\nmemoryManagerPolicy: Static\nreservedSystemCPUs: "0,128"\n'
        "topologyManagerPolicy: single-numa-node\nreservedMemory: [{numaNode: 0, limits: {memory: 1Gi}}]\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    host = large_host(Path(tempfile.mkdtemp(prefix="bench-large-")))
    write_state(host)
    paths = host.paths
    topology = discover(paths, use_nvml=False, use_udev=False)

    def read_and_account() -> object:
        state = KubeletState(
            config=kubelet_config.read_kubelet_config(paths),
            cpu=cpu_manager.read_cpu_manager_state(paths),
            memory=memory_manager.read_memory_manager_state(paths),
            devices=device_checkpoint.read_device_checkpoint(paths),
        )
        return account(topology, state)

    accounting = read_and_account()
    sizes = {
        p.name: p.stat().st_size for p in (paths.cpu_manager_state, paths.memory_manager_state, paths.device_checkpoint)
    }
    parts = {
        "cpu_manager_state": lambda: cpu_manager.read_cpu_manager_state(paths),
        "memory_manager_state": lambda: memory_manager.read_memory_manager_state(paths),
        "kubelet_internal_checkpoint": lambda: device_checkpoint.read_device_checkpoint(paths),
        "kubelet config": lambda: kubelet_config.read_kubelet_config(paths),
    }
    rows = [
        (name, sizes.get(name, "-"), f"{median_seconds(action, repeat=args.repeat) * 1e3:.2f}")
        for name, action in parts.items()
    ]
    total = median_seconds(read_and_account, repeat=args.repeat)
    rows.append(("all three + config + accounting", sum(sizes.values()), f"{total * 1e3:.2f}"))
    # The slowest case: reserved CPUs chosen by takeByTopology, and full-pcpus-only fit, which picks every
    # admitted pod's CPUs as the CPU manager does.
    config = paths.kubelet_config.read_text()
    paths.kubelet_config.write_text(
        config.replace(
            'reservedSystemCPUs: "0,128"',
            'kubeReserved: {cpu: "4"}\ncpuManagerPolicyOptions: {full-pcpus-only: "true"}',
        )
    )
    whole_cores = (Profile(name="two-cpus", requests={"cpu": 2, "memory": 1 << 30}),)
    free = cpu_manager.parse_cpu_manager_state(cpu_state(default=[cpu.cpu for cpu in topology.cpus], entries={}))

    def derived_and_whole_cores() -> object:  # every CPU free: the fit admits pods until the CPUs run out
        state = KubeletState(
            config=kubelet_config.read_kubelet_config(paths),
            cpu=free,
            memory=memory_manager.read_memory_manager_state(paths),
            devices=device_checkpoint.read_device_checkpoint(paths),
        )
        return account(topology, state, profiles=whole_cores)

    worst = median_seconds(derived_and_whole_cores, repeat=args.repeat)
    rows.append(("same, derived reserved + full-pcpus-only fit", sum(sizes.values()), f"{worst * 1e3:.2f}"))
    paths.kubelet_config.write_text(config)
    print(
        f"host: {len(topology.numa_nodes)} NUMA nodes, {len(topology.cpus)} CPUs, "
        f"{sum(d.kind == 'gpu' for d in topology.pci_devices)} GPUs, {sum(d.kind == 'vf' for d in topology.pci_devices)} VFs, "
        f"{len(accounting.containers)} containers, {len(accounting.accounts)} accounts"
    )  # type: ignore[attr-defined]
    print_table(("step", "bytes", "median ms"), rows)
    print(f"goal {GOAL_SECONDS * 1e3:.0f} ms; measured/goal = {total / GOAL_SECONDS:.2f}")


if __name__ == "__main__":
    main()
