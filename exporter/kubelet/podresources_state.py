"""The kubelet's state files as its podresources API shows them: the podresources-only mode (`--no-state-files`).

Pure: one podresources reading (`List` and `GetAllocatableResources`), the host's topology, the kubelet's
configuration and the pods the API watch knows in; the three records the accounting reads out, each as the
kubelet's own file would hold it where the API says enough (docs/product.md, "Podresources only").

* CPUs (static policy). `List` gives each container's exclusive CPUs, `GetAllocatableResources` the CPUs
  the static policy may hand out (all but the reserved ones). The kubelet's default cpuset is every CPU
  not assigned, less the reserved ones under `strict-cpu-reservation` (K cpumanager/policy_static.go
  validateState: what the file must hold). Lost: init containers that are not sidecars (podresources leaves
  them out; the kubelet hands their CPUs on to the app containers, so the free CPUs are the same) and
  pod-level CPU entries (podresources has none).
* Memory (Static policy). `List` gives each container's blocks (type, size, NUMA nodes), `GetAllocatable...`
  each NUMA node's allocatable bytes per type. The table's total is the host's (sysfs, as cadvisor reads it),
  its system reserve the rest, its reserved bytes the blocks on that node. A block over several NUMA nodes
  is split the way the kubelet fills them (lowest node first, K memorymanager/policy_static.go
  updateMachineState); such nodes form one group, which publishes no available memory either way. Lost:
  the split after a pod of a group has left (the kubelet's release empties the lowest node first, whoever
  filled it): only a group's per-node free bytes can differ, never published.
* Devices. `List` gives each container's devices with the topology their plugin reported; `GetAllocatable...`
  the devices the kubelet may hand out, which stand in for the registered ones (lost: a registered device
  whose plugin withdrew it is not listed, where the checkpoint keeps it).

Each record names the policy the API shows, as a state file names the policy that wrote it: only the static
CPU policy lists allocatable CPUs, only the Static memory policy allocatable memory. So a configuration read
that is not the one the kubelet runs with is caught here as with the files (snapshot.py config_contradiction).

Pods are named by UID where the API watch knows them, else `<namespace>/<name>` (crosscheck.py's key for a
pod it cannot identify).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from exporter.cpuset import CpuSet
from exporter.model import (
    UNKNOWN_NUMA_NODE,
    CpuManagerState,
    DeviceAllocation,
    DeviceCheckpoint,
    KubeletConfig,
    MemoryBlock,
    MemoryManagerState,
    MemoryNumaState,
    MemoryTable,
    PodRef,
    PodResourcesReading,
    ReportedMemory,
    Topology,
)
from exporter.units import hugepage_resource

VERSION = "podresources"  # the version the records built here carry: not a file's


def pod_key(namespace: str, name: str, uids: Mapping[tuple[str, str], str]) -> str:
    return uids.get((namespace, name)) or f"{namespace}/{name}"


def cpu_state(
    reading: PodResourcesReading, topology: Topology, config: KubeletConfig, *, pods: tuple[PodRef, ...]
) -> CpuManagerState:
    """The static policy's record: each container's exclusive CPUs and the default cpuset of the rest. The
    reserved CPUs are the kubelet's own answer: those it does not list as allocatable."""
    uids = {(pod.namespace, pod.name): pod.uid for pod in pods}
    entries: dict[str, dict[str, CpuSet]] = {}
    assigned: set[int] = set()
    for pod in reading.pods:
        for container in pod.containers:
            if container.cpu_ids:
                entries.setdefault(pod_key(pod.namespace, pod.name, uids), {})[container.name] = container.cpu_ids
                assigned |= container.cpu_ids
    every = frozenset(cpu.cpu for cpu in topology.cpus)
    reserved = every - reading.allocatable_cpus
    default = every - assigned - (reserved if config.strict_cpu_reservation else frozenset())
    return CpuManagerState(
        version=VERSION,
        policy_name="static" if reading.allocatable_cpus else "none",
        default_cpuset=frozenset(default),
        entries=entries,
        pod_entries={},
        checksum_verified=True,
    )


def memory_state(reading: PodResourcesReading, topology: Topology, *, pods: tuple[PodRef, ...]) -> MemoryManagerState:
    """The Static policy's record: each container's blocks, and each NUMA node's table with what they reserve."""
    uids = {(pod.namespace, pod.name): pod.uid for pod in pods}
    totals: dict[int, dict[str, int]] = {}
    for numa in topology.numa_nodes:
        hugepages = {hugepage_resource(p.size_bytes): p.size_bytes * p.total_pages for p in numa.hugepages}
        totals[numa.numa_node] = {"memory": numa.memory_total_bytes, **hugepages}
    allocatable: dict[int, dict[str, int]] = defaultdict(dict)
    for block in reading.allocatable_memory:
        for numa_node in block.numa_nodes:
            allocatable[numa_node][block.memory_type] = block.size_bytes
    entries: dict[str, dict[str, tuple[MemoryBlock, ...]]] = {}
    reserved: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    assignments: dict[int, int] = defaultdict(int)
    cells: dict[int, set[int]] = {numa_node: {numa_node} for numa_node in totals}
    for pod in reading.pods:
        for container in pod.containers:
            if not container.memory:
                continue
            blocks = tuple(_block(memory) for memory in container.memory)
            entries.setdefault(pod_key(pod.namespace, pod.name, uids), {})[container.name] = blocks
            for held in blocks:
                _fill(held, allocatable, reserved)
                for numa_node in held.numa_affinity:
                    assignments[numa_node] += 1
                    cells.setdefault(numa_node, set()).update(held.numa_affinity)
    machine: dict[int, MemoryNumaState] = {}
    for numa_node, resources in sorted(totals.items()):
        tables = {}
        for resource, total in resources.items():
            if resource not in allocatable.get(numa_node, {}):
                continue  # the kubelet reported none of it here: no row, as a file without one
            usable = allocatable[numa_node][resource]
            taken = reserved[numa_node][resource]
            tables[resource] = MemoryTable(
                total_bytes=total,
                system_reserved_bytes=max(total - usable - (_hugepages(resources) if resource == "memory" else 0), 0),
                allocatable_bytes=usable,
                reserved_bytes=taken,
                free_bytes=usable - taken,
            )
        machine[numa_node] = MemoryNumaState(
            numa_node=numa_node,
            number_of_assignments=assignments[numa_node],
            memory_map=tables,
            cells=tuple(sorted(cells[numa_node])),
        )
    policy = "Static" if reading.allocatable_memory else "None"
    return MemoryManagerState(
        version=VERSION, policy_name=policy, machine_state=machine, entries=entries, pod_entries={}
    )


def device_checkpoint(reading: PodResourcesReading, *, pods: tuple[PodRef, ...]) -> DeviceCheckpoint:
    """The device manager's record: each container's devices under the NUMA nodes their plugin reported (-1:
    none), and the devices the kubelet may hand out as the registered ones."""
    uids = {(pod.namespace, pod.name): pod.uid for pod in pods}
    allocations = []
    for pod in reading.pods:
        for container in pod.containers:
            by_resource: dict[str, dict[int, list[str]]] = {}
            for devices in container.devices:
                per_numa = by_resource.setdefault(devices.resource, {})
                for numa_node in sorted(devices.numa_nodes) or [UNKNOWN_NUMA_NODE]:
                    per_numa.setdefault(numa_node, []).extend(devices.ids)
            for resource, per_numa in sorted(by_resource.items()):
                allocations.append(
                    DeviceAllocation(
                        pod_uid=pod_key(pod.namespace, pod.name, uids),
                        container=container.name,
                        resource=resource,
                        devices_by_numa={numa: tuple(ids) for numa, ids in sorted(per_numa.items())},
                    )
                )
    registered: dict[str, list[str]] = {}
    for devices in reading.allocatable_devices:
        registered.setdefault(devices.resource, []).extend(devices.ids)
    held = {(a.resource, device) for a in allocations for device in a.device_ids}
    for resource, device in sorted(held):  # a held device stays registered (the checkpoint keeps it)
        if device not in registered.setdefault(resource, []):
            registered[resource].append(device)
    return DeviceCheckpoint(
        version=VERSION,
        allocations=tuple(allocations),
        registered={resource: tuple(sorted(set(ids))) for resource, ids in sorted(registered.items())},
    )


def _block(memory: ReportedMemory) -> MemoryBlock:
    return MemoryBlock(
        numa_affinity=tuple(sorted(memory.numa_nodes)), resource=memory.memory_type, size_bytes=memory.size_bytes
    )


def _fill(
    block: MemoryBlock, allocatable: Mapping[int, Mapping[str, int]], reserved: Mapping[int, dict[str, int]]
) -> None:
    """Reserve a block's bytes on its NUMA nodes, lowest first, each up to what it has free, as the kubelet does
    (K memorymanager/policy_static.go updateMachineState: what no node has room for is reserved nowhere)."""
    left = block.size_bytes
    for numa_node in block.numa_affinity:
        room = allocatable.get(numa_node, {}).get(block.resource, 0) - reserved[numa_node][block.resource]
        take = min(max(room, 0), left)
        reserved[numa_node][block.resource] += take
        left -= take


def _hugepages(resources: Mapping[str, int]) -> int:
    return sum(total for resource, total in resources.items() if resource != "memory")
