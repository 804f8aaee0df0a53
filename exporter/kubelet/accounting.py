"""Per-NUMA accounting: capacity >= allocatable >= available >= 0 for every resource (docs/product.md).

Pure functions of discovery (Topology) and the kubelet's records (KubeletState). A resource whose kubelet
source has never been read has `available=None`: unknown, never guessed. Fit, stranded and the alignment
audit build on the accounts (fit.py, alignment.py); `account()` runs them all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.cpuset import CpuSet
from exporter.kubelet.cpu_assignment import CpuTopology, NotEnoughCpus, take_by_topology
from exporter.kubelet.devices import UNKNOWN
from exporter.kubelet.dra import EMPTY, DraView, dra_counts
from exporter.model import (
    CpuManagerState,
    DeviceCheckpoint,
    DraApiReading,
    DraCheckpoint,
    DraDeviceHealth,
    KubeletConfig,
    MemoryManagerState,
    MemoryTable,
    PodRef,
    PodResourcesReading,
    Topology,
)
from exporter.units import hugepage_resource, parse_quantity_exact

HUGEPAGES_PREFIX = "hugepages-"


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeletState:
    """The last good reading of each kubelet source; None where a source has never been read."""

    config: KubeletConfig = field(default_factory=KubeletConfig)
    cpu: CpuManagerState | None = None
    memory: MemoryManagerState | None = None
    devices: DeviceCheckpoint | None = None
    pods: tuple[PodRef, ...] | None = None
    podresources: PodResourcesReading | None = None
    # The podresources reading was taken in this refresh, after the state files (not a last good one kept
    # through an error): only then does a pod it leaves out say that pod's entries are gone.
    podresources_current: bool = True
    # Pods an earlier current podresources reading showed gone: their entries stay released while the API is
    # down (a pod UID never comes back), where entries of any other pod count as held.
    gone_pods: frozenset[str] = frozenset()
    dra: DraCheckpoint | None = None
    dra_health: tuple[DraDeviceHealth, ...] | None = None
    dra_api: DraApiReading | None = None
    # Sources that are there but could not be read, with no last good reading: unreadable is not absent, and
    # nothing that depends on one is published as a number.
    unreadable: frozenset[str] = frozenset()

    def unknown(self, source: str) -> bool:
        """The source's reading is unknown: unreadable, or the configuration that says what it holds is."""
        return source in self.unreadable or "kubelet_config" in self.unreadable

    @property
    def cpu_policy(self) -> str:
        return self.cpu.policy_name if self.cpu is not None else self.config.cpu_manager_policy

    @property
    def memory_policy(self) -> str:
        return self.memory.policy_name if self.memory is not None else self.config.memory_manager_policy


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceAccount:
    numa_node: int
    resource: str
    capacity: int
    allocatable: int | None  # None where it depends on a kubelet configuration not known (what it reserves)
    available: int | None
    stranded: int = 0

    @property
    def unit(self) -> str:
        return resource_unit(self.resource)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservedCpus:
    cpus: CpuSet
    source: str  # "reservedSystemCPUs", "derived" (from kube/system-reserved cpu) or "none"


def resource_unit(resource: str) -> str:
    if resource == "cpu":
        return "core"
    if resource == "memory" or resource.startswith(HUGEPAGES_PREFIX):
        return "byte"
    return "integer"


def numa_accounted_resources(state: KubeletState, accounts: Iterable[ResourceAccount]) -> frozenset[str]:
    """cpu under the static CPU manager; memory and hugepages under the Static memory manager; devices always."""
    accounted = set()
    cpu_static = state.cpu_policy == "static"
    memory_static = state.memory_policy.casefold() == "static"
    for account in accounts:
        name = account.resource
        if (
            (name == "cpu" and cpu_static)
            or ((name == "memory" or name.startswith(HUGEPAGES_PREFIX)) and memory_static)
            or resource_unit(name) == "integer"
        ):
            accounted.add(name)
    return frozenset(accounted)


def reserved_cpus(topology: Topology, config: KubeletConfig, cpus: CpuTopology | None = None) -> ReservedCpus:
    """The static policy's reserved set: `reservedSystemCPUs`, else ceil(kube+system reserved cpu) CPUs chosen
    by the kubelet's own `takeByTopology` (packed, or as the CPU manager policy options say). Only the static
    policy chooses CPUs: under `none` only CPUs named in `reservedSystemCPUs` are reserved by id."""
    if config.reserved_system_cpus:
        return ReservedCpus(cpus=config.reserved_system_cpus, source="reservedSystemCPUs")
    if config.cpu_manager_policy != "static":
        return ReservedCpus(cpus=frozenset(), source="none")
    try:
        quantity = sum(
            parse_quantity_exact(reserved.get("cpu", "0"))
            for reserved in (config.kube_reserved, config.system_reserved)
        )
    except ValueError:
        quantity = 0
    count = math.ceil(quantity)
    if count <= 0:
        return ReservedCpus(cpus=frozenset(), source="none")
    cpus = cpus or CpuTopology.from_topology(topology)
    try:
        chosen = take_by_topology(cpus, cpus.details, count, options=config.cpu_manager_policy_options)
    except NotEnoughCpus:
        chosen = frozenset()  # the kubelet refuses to start ("unable to reserve the required amount of CPUs")
    return ReservedCpus(cpus=chosen, source="derived")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExclusiveCpus:
    """What the static policy hands exclusive CPUs from, for fit: the shared pool minus reserved CPUs, and
    under `full-pcpus-only` the whole-core rule (K policy_static.go `enforceSMTAlignment`)."""

    topology: CpuTopology
    available: CpuSet
    reserved_physical: CpuSet
    full_pcpus_only: bool
    options: Mapping[str, str]


def exclusive_cpus(
    state: KubeletState, cpus: CpuTopology, reserved: CpuSet, *, dra_cpus: CpuSet = frozenset()
) -> ExclusiveCpus | None:
    """`dra_cpus`: CPUs a CPU DRA driver handed out; they are in the kubelet's shared pool but not free."""
    if state.cpu_policy != "static" or state.cpu is None:
        return None
    options = state.config.cpu_manager_policy_options
    return ExclusiveCpus(
        topology=cpus,
        available=frozenset(state.cpu.default_cpuset - reserved - dra_cpus),
        reserved_physical=cpus.core_cpus(reserved),
        full_pcpus_only=state.config.cpu_option("full-pcpus-only"),
        options=options,
    )


def resource_accounts(
    topology: Topology,
    state: KubeletState,
    *,
    reserved: CpuSet,
    placement: Mapping[str, frozenset[int]],
    cpus: CpuTopology | None = None,
    dra: DraView = EMPTY,
    allocatable_devices: Mapping[str, frozenset[str]] | None = None,
) -> tuple[ResourceAccount, ...]:
    """The admission view: CPUs counted on the NUMA node the kubelet files them under (once each), memory of
    a node in a memory-manager group not available (it can no longer give a single-NUMA hint), devices on
    the NUMA nodes their plugin reported (`admission_numa_nodes`; none reported: NUMA -1). CPUs a CPU DRA
    driver handed out are not available; DRA devices are counted per NUMA node as `dra:<driver>` (dra.py)."""
    accounts: list[ResourceAccount] = []
    cpu_static = state.cpu_policy == "static"
    memory_static = state.memory_policy.casefold() == "static"
    reserved_memory = state.config.reserved_memory
    numa_cpus = (cpus or CpuTopology.from_topology(topology)).numa_node_cpus()
    # The kubelet's configuration is unknown: what it reserves, so every CPU and memory number but those its
    # memory manager's own table gives.
    config_unknown = "kubelet_config" in state.unreadable
    for numa in topology.numa_nodes:
        n = numa.numa_node
        node_cpus = numa_cpus.get(n, frozenset())
        capacity = len(node_cpus)
        allocatable = len(node_cpus - reserved)
        if config_unknown or (state.cpu is None and state.unknown("cpu_manager_state")):
            available: int | None = None
        elif not cpu_static:
            available = len(node_cpus - reserved - dra.exclusive_cpus)
        elif state.cpu is None:
            available = None
        else:
            available = len((state.cpu.default_cpuset & node_cpus) - reserved - dra.exclusive_cpus)
        accounts.append(_bounded(n, "cpu", capacity, None if config_unknown else allocatable, available))

        tables: Mapping[str, MemoryTable] = {}
        grouped = False
        if memory_static and state.memory is not None and n in state.memory.machine_state:
            tables = state.memory.machine_state[n].memory_map
            grouped = len(set(state.memory.machine_state[n].cells)) > 1
        hugepage_bytes = sum(pool.total_pages * pool.size_bytes for pool in numa.hugepages)
        reserved_here = reserved_memory.get(n, {})
        accounts.append(
            _memory_account(
                n,
                "memory",
                numa.memory_total_bytes,
                numa.memory_total_bytes - hugepage_bytes - reserved_here.get("memory", 0),
                tables.get("memory"),
                static=memory_static or (state.memory is None and state.unknown("memory_manager_state")),
                state_read=state.memory is not None,
                grouped=grouped,
                config_unknown=config_unknown,
            )
        )
        for pool in numa.hugepages:
            resource = hugepage_resource(pool.size_bytes)
            capacity = pool.total_pages * pool.size_bytes
            accounts.append(
                _memory_account(
                    n,
                    resource,
                    capacity,
                    capacity - reserved_here.get(resource, 0),
                    tables.get(resource),
                    static=memory_static or (state.memory is None and state.unknown("memory_manager_state")),
                    state_read=state.memory is not None,
                    grouped=grouped,
                    config_unknown=config_unknown,
                )
            )
    accounts.extend(device_accounts(state.devices, placement=placement, allocatable=allocatable_devices))
    for resource, per_numa in dra_counts(dra).items():
        for dra_numa, (published, allocated) in per_numa.items():
            accounts.append(_bounded(dra_numa, resource, published, published, published - allocated))
    return tuple(accounts)


def _memory_account(
    numa: int,
    resource: str,
    capacity: int,
    unpinned_allocatable: int,
    table: MemoryTable | None,
    *,
    static: bool,
    state_read: bool,
    grouped: bool,
    config_unknown: bool = False,
) -> ResourceAccount:
    """`config_unknown`: reservedMemory is not known, so neither is anything but the memory manager's own table."""
    if table is not None and static:
        return _bounded(numa, resource, capacity, table.allocatable_bytes, 0 if grouped else table.free_bytes)
    if config_unknown:
        return _bounded(numa, resource, capacity, None, None)
    if not static:
        return _bounded(numa, resource, capacity, unpinned_allocatable, unpinned_allocatable)
    # Static, but the state file has never been read or has no row for this NUMA node / size.
    return _bounded(numa, resource, capacity, unpinned_allocatable, 0 if state_read else None)


def _bounded(
    numa: int, resource: str, capacity: int, allocatable: int | None, available: int | None
) -> ResourceAccount:
    """Clamp so that capacity >= allocatable >= available >= 0 holds whatever a file claims. An unknown
    allocatable makes available unknown too."""
    capacity = max(capacity, 0)
    bounded_allocatable = None if allocatable is None else min(max(allocatable, 0), capacity)
    bounded = None if available is None or bounded_allocatable is None else min(max(available, 0), bounded_allocatable)
    return ResourceAccount(
        numa_node=numa, resource=resource, capacity=capacity, allocatable=bounded_allocatable, available=bounded
    )


def device_accounts(
    checkpoint: DeviceCheckpoint | None,
    *,
    placement: Mapping[str, frozenset[int]],
    allocatable: Mapping[str, frozenset[str]] | None = None,
) -> list[ResourceAccount]:
    """Per resource and NUMA node: capacity = the devices registered in the checkpoint; allocatable = those the
    kubelet can hand out now. `allocatable`: the devices its podresources API lists (GetAllocatableResources:
    healthy devices of live plugins only; a plugin gone or a device unhealthy is left out, and the device
    manager then admits nothing on it, though the checkpoint still registers it); None: every registered one."""
    if checkpoint is None:
        return []
    accounts = []
    for resource in sorted(checkpoint.registered):
        registered = set(checkpoint.registered[resource])
        usable = registered if allocatable is None else registered & allocatable.get(resource, frozenset())
        allocated = {
            device
            for allocation in checkpoint.allocations
            if allocation.resource == resource
            for device in allocation.device_ids
            if device in registered
        }
        numas = sorted({numa for device in registered for numa in placement[device] or UNKNOWN})
        for numa in numas:
            here = {device for device in registered if numa in (placement[device] or UNKNOWN)}
            free = (here & usable) - allocated
            accounts.append(_bounded(numa, resource, len(here), len(here & usable), len(free)))
    return accounts


def entry_pods(state: KubeletState) -> frozenset[str]:
    """Every pod UID the CPU, memory and device state files hold entries for."""
    pods = set(state.cpu.entries) - {""} if state.cpu is not None else set()
    if state.memory is not None:
        pods |= set(state.memory.entries) | set(state.memory.pod_entries)
    if state.devices is not None:
        pods |= {entry.pod_uid for entry in state.devices.allocations}
    return frozenset(pods)


def without_gone_pods(state: KubeletState, live: frozenset[str]) -> KubeletState:
    """The state files as the kubelet's next admission reads them: the entries of pods it no longer holds
    released first, as its managers do before they allocate (K cpumanager `removeStaleState` and the static
    policy's `RemoveContainer`; memorymanager `removeStaleState` and `RemoveContainer`, which frees each block
    NUMA node by NUMA node, up to what that node has reserved, and undoes a node's group once its last
    assignment goes; devicemanager `UpdateAllocatedDevices`). The files themselves keep such entries until
    then (`stale_entries` counts them)."""
    cpu, memory, devices = state.cpu, state.memory, state.devices
    if cpu is not None and any(pod and pod not in live for pod in cpu.entries):
        gone = [cpuset for pod, held in cpu.entries.items() if pod and pod not in live for cpuset in held.values()]
        freed = frozenset().union(*gone)
        cpu = dataclasses.replace(
            cpu,
            default_cpuset=cpu.default_cpuset | freed,
            entries={pod: held for pod, held in cpu.entries.items() if not pod or pod in live},
        )
    if memory is not None and (set(memory.entries) | set(memory.pod_entries)) - live:
        memory = _release_memory(memory, live)
    if devices is not None and any(entry.pod_uid not in live for entry in devices.allocations):
        devices = dataclasses.replace(
            devices, allocations=tuple(entry for entry in devices.allocations if entry.pod_uid in live)
        )
    return dataclasses.replace(state, cpu=cpu, memory=memory, devices=devices)


def _release_memory(memory: MemoryManagerState, live: frozenset[str]) -> MemoryManagerState:
    tables = {n: dict(numa.memory_map) for n, numa in memory.machine_state.items()}
    assignments = {n: numa.number_of_assignments for n, numa in memory.machine_state.items()}
    cells = {n: numa.cells for n, numa in memory.machine_state.items()}
    gone = [blocks for pod, held in memory.entries.items() if pod not in live for blocks in held.values()]
    gone += [blocks for pod, blocks in memory.pod_entries.items() if pod not in live]
    for blocks in gone:
        for block in blocks:
            released = block.size_bytes
            for n in block.numa_affinity:
                if n not in tables:
                    continue
                assignments[n] -= 1
                if assignments[n] == 0:
                    cells[n] = (n,)
                table = tables[n].get(block.resource)
                if released == 0 or table is None or table.reserved_bytes == 0:
                    continue
                moved = min(released, table.reserved_bytes)
                released -= moved
                tables[n][block.resource] = dataclasses.replace(
                    table, free_bytes=table.free_bytes + moved, reserved_bytes=table.reserved_bytes - moved
                )
    machine_state = {
        n: dataclasses.replace(numa, memory_map=tables[n], number_of_assignments=assignments[n], cells=cells[n])
        for n, numa in memory.machine_state.items()
    }
    return dataclasses.replace(
        memory,
        machine_state=machine_state,
        entries={pod: held for pod, held in memory.entries.items() if pod in live},
        pod_entries={pod: blocks for pod, blocks in memory.pod_entries.items() if pod in live},
    )


def stale_entries(state: KubeletState, *, live_uids: frozenset[str] | None = None) -> dict[str, int]:
    """Entries for pods no longer on the node, per source; {} when the pods on the node are unknown.
    `live_uids`: the pods the kubelet itself still holds (its podresources API), exact where given."""
    if live_uids is None and state.pods is None:
        return {}
    live = live_uids if live_uids is not None else {pod.uid for pod in state.pods or ()}
    stale = {}
    if state.cpu is not None:
        stale["cpu_manager_state"] = sum(
            len(containers) for pod, containers in state.cpu.entries.items() if pod and pod not in live
        )
    if state.memory is not None:
        stale["memory_manager_state"] = sum(
            len(containers) for pod, containers in state.memory.entries.items() if pod not in live
        )
    if state.devices is not None:
        stale["device_checkpoint"] = sum(1 for entry in state.devices.allocations if entry.pod_uid not in live)
    if state.dra is not None:
        stale["dra_manager_state"] = sum(
            1 for entry in state.dra.entries if entry.pod_uids and not entry.pod_uids & live
        )
    return stale
