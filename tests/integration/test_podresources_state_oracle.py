"""The records the podresources-only mode rebuilds (exporter/kubelet/podresources_state.py), held to kubelet-oracle:
the kubelet v1.36.2 managers admit pods, and answer what its podresources API would list (GetExclusiveCPUs,
GetMemory, GetDevices per container; GetAllocatableMemory; the allocatable CPUs); the records rebuilt from that
alone must be the state files the same managers wrote. The cases the real-node test cannot reach:
memory blocks over two NUMA nodes (a topology policy that allows them), and strict-cpu-reservation.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from exporter.cpuset import parse_cpuset
from exporter.kubelet.podresources_state import cpu_state, device_checkpoint, memory_state
from exporter.model import (
    MemoryManagerState,
    PodRef,
    PodResourcesReading,
    ReportedContainer,
    ReportedDevices,
    ReportedMemory,
    ReportedPod,
)
from exporter.sources import cpu_manager, kubelet_config, memory_manager
from exporter.sources import device_checkpoint as checkpoint_source
from tests.oracle import MachineSpec, ask
from tests.realnodes import DEFAULT_CONFIG

GIB = 1 << 30
MACHINE = MachineSpec(
    cpus=[(cpu, cpu // 8, cpu % 8, cpu // 8) for cpu in range(16)],
    memory={0: 8 * GIB, 1: 8 * GIB},
    hugepages={0: {2 << 20: 512}, 1: {2 << 20: 512}},
    devices={"example.com/gpu": [("gpu0", (0,), 0), ("gpu1", (0,), 0), ("gpu2", (1,), 1), ("gpu3", (1,), 1)]},
)
# The real nodes' configuration, with a policy that lets memory span NUMA nodes.
CONFIG: dict[str, Any] = {**DEFAULT_CONFIG, "reservedSystemCPUs": "0", "topologyManagerPolicy": "none"}
# Two pods whose memory spans both NUMA nodes (9 GiB, then 2 GiB: the second fits only beside the first in
# their group), each with a GPU and exclusive CPUs.
SPANNING = [
    {"cpu": "2", "memory": "9Gi", "hugepages-2Mi": "256Mi", "example.com/gpu": "1"},
    {"cpu": "3", "memory": "2Gi", "example.com/gpu": "1"},
]


@dataclass(frozen=True)
class Admitted:
    state: dict[str, Any]  # the state files the kubelet's managers wrote
    reading: PodResourcesReading  # what its podresources API answers
    pods: tuple[PodRef, ...]  # the pods, with the UIDs the state files name them by


def admitted(config: dict[str, Any], shapes: list[dict[str, str]]) -> Admitted:
    """Admit the shapes one after another on the oracle (each on the state the one before left)."""
    state: dict[str, Any] | None = None
    pods: list[ReportedPod] = []
    refs: list[PodRef] = []
    answer: dict[str, Any] = {}
    for index, shape in enumerate(shapes):
        request = {"machine": MACHINE.oracle_machine(), "kubeletConfig": config, "devices": MACHINE.oracle_devices(),
                   **({"state": state} if state else {}),
                   "queries": [{"type": "reserved_cpus"}, {"type": "admit_on", "pod": {"requests": shape}}]}  # fmt: skip
        answer = ask(request)
        result = answer["results"][1]
        assert result.get("admitted"), result.get("rejection") or result.get("error")
        state = result["finalState"]
        containers = tuple(
            ReportedContainer(
                name=container["name"],
                cpu_ids=frozenset(parse_cpuset(container.get("exclusiveCPUs") or "")),
                devices=tuple(
                    ReportedDevices(resource=resource, ids=(device,), numa_nodes=frozenset(_numa_of(device)))
                    for resource, ids in (container.get("devices") or {}).items()
                    for device in ids
                ),
                memory=tuple(
                    ReportedMemory(
                        memory_type=block["type"], size_bytes=block["size"], numa_nodes=frozenset(block["numaAffinity"])
                    )
                    for block in container.get("memory") or []
                ),
                claims=(),
            )
            for container in result["pods"][0]["containers"]
        )
        pods.append(ReportedPod(namespace="ns", name=f"p{index}", containers=containers))
        refs.append(PodRef(uid=result["pods"][0]["uid"], namespace="ns", name=f"p{index}"))
    assert state is not None
    return Admitted(state=state, reading=reading(answer, pods), pods=tuple(refs))


def _numa_of(device: str) -> tuple[int, ...]:
    return next(numa for name, numa, _ in MACHINE.devices["example.com/gpu"] if name == device)


def reading(answer: dict[str, Any], pods: list[ReportedPod]) -> PodResourcesReading:
    reserved = answer["results"][0]
    memory = []
    for entry in answer["results"][1].get("allocatableMemory") or []:
        memory.append(ReportedMemory(memory_type=entry["type"], size_bytes=entry["size"],
                                     numa_nodes=frozenset(entry["numaAffinity"])))  # fmt: skip
    assert memory, "the Static policy reports its allocatable memory per NUMA node"
    devices = tuple(
        ReportedDevices(resource=resource, ids=(device,), numa_nodes=frozenset(numa))
        for resource, listed in MACHINE.devices.items()
        for device, numa, _ in listed
    )
    return PodResourcesReading(pods=tuple(pods), allocatable_cpus=frozenset(parse_cpuset(reserved["allocatableCPUs"])),
                               allocatable_devices=devices, allocatable_memory=tuple(memory))  # fmt: skip


def blocks(memory: MemoryManagerState) -> dict[tuple[str, str], list[Any]]:
    """Each container's memory blocks, in no order (the kubelet writes and lists them in Go map order)."""
    return {
        (pod, container): sorted(held, key=repr)
        for pod, containers in memory.entries.items()
        for container, held in containers.items()
    }


def files(state: dict[str, Any], name: str, parse: Any) -> Any:
    return parse(json.dumps(state[name]).encode())


def test_memory_over_two_numa_nodes_is_rebuilt_as_the_kubelet_split_it() -> None:
    run = admitted(CONFIG, SPANNING)
    config = kubelet_config.parse_kubelet_config(yaml.safe_dump(CONFIG).encode())
    topology = MACHINE.topology()
    kubelet: MemoryManagerState = files(run.state, "memory_manager_state", memory_manager.parse_memory_manager_state)
    assert kubelet.machine_state[0].cells == (0, 1), "the first pod's memory spans both NUMA nodes"
    ours = memory_state(run.reading, topology, pods=run.pods)
    assert blocks(ours) == blocks(kubelet)
    assert ours.machine_state == kubelet.machine_state
    # Listed the other way round, the split is the same (every block of a group fills its nodes lowest first).
    # It can differ after a pod of the group has left (the kubelet's release empties the lowest node first,
    # whoever filled it), which no podresources answer shows: only per-node free bytes inside a group, which
    # publishes no available memory (docs/product.md, "Podresources only").
    reversed_ = dataclasses.replace(run.reading, pods=run.reading.pods[::-1])
    assert memory_state(reversed_, topology, pods=run.pods).machine_state == ours.machine_state

    cpu = files(run.state, "cpu_manager_state", cpu_manager.parse_cpu_manager_state)
    rebuilt = cpu_state(run.reading, topology, config, pods=run.pods)
    assert (rebuilt.default_cpuset, rebuilt.entries) == (cpu.default_cpuset, cpu.entries)
    assert sum(len(cpus) for containers in cpu.entries.values() for cpus in containers.values()) == 5

    devices = files(run.state, "kubelet_internal_checkpoint", checkpoint_source.parse_device_checkpoint)
    ours_devices = device_checkpoint(run.reading, pods=run.pods)
    key = defaultdict(set)
    for allocation in devices.allocations:
        key[(allocation.pod_uid, allocation.container, allocation.resource)] |= allocation.device_ids
    assert {(a.pod_uid, a.container, a.resource): a.device_ids for a in ours_devices.allocations} == key
    assert len(key) == 2
    assert {r: set(ids) for r, ids in ours_devices.registered.items()} == {
        r: set(ids) for r, ids in devices.registered.items()
    }, "in no order: the checkpoint lists them in Go map order"


@pytest.mark.parametrize("option", ["strict-cpu-reservation", "full-pcpus-only"])
def test_the_default_cpuset_follows_the_cpu_policy_options(option: str) -> None:
    config = {**CONFIG, "topologyManagerPolicy": "single-numa-node", "reservedSystemCPUs": "0-1",
              "cpuManagerPolicyOptions": {option: "true"}}  # fmt: skip
    if option == "strict-cpu-reservation":
        config["featureGates"] = {"CPUManagerPolicyAlphaOptions": True, "CPUManagerPolicyBetaOptions": True}
    run = admitted(config, [{"cpu": "4", "memory": "1Gi"}])
    cpu = files(run.state, "cpu_manager_state", cpu_manager.parse_cpu_manager_state)
    parsed = kubelet_config.parse_kubelet_config(yaml.safe_dump(config).encode())
    rebuilt = cpu_state(run.reading, MACHINE.topology(), parsed, pods=run.pods)
    assert (rebuilt.default_cpuset, rebuilt.entries) == (cpu.default_cpuset, cpu.entries)
    assert len(cpu.default_cpuset) == 16 - 4 - (2 if option == "strict-cpu-reservation" else 0)
