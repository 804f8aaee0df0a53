"""Observed placement: what the kernel enforces for each container (its cgroup's cpuset) and where its
memory is (its cgroup's `memory.numa_stat`), set beside what the kubelet meant (its state files). Pure.

* Which containers: by default those the alignment audit lists (they hold pinned CPUs, Static memory or
  devices: the ones whose locality was promised); every container the kubelet runs with `all_containers`.
  The pod's sandbox (pause) container is never a workload.
* Names: the pod's container statuses (the API), else the kubelet's `/var/log/containers` links, else the
  runtime ID's first 12 characters.
* Remote memory: bytes on NUMA nodes that hold none of the container's enforced CPUs; the ratio is those
  over all its anon and file bytes (0 for a container with no memory yet).
* Drift: the kubelet pinned CPUs the cgroup does not enforce (a different cpuset), or assigned Static memory
  on NUMA nodes the cgroup's `cpuset.mems` does not match (the seeds' "Memory Manager gave NUMA 0 but
  cpuset.mems is 0-1").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.cpuset import CpuSet
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.alignment import ContainerAlignment
from exporter.model import UNKNOWN_NUMA_NODE, CgroupReading, LoggedContainer, SourceStatus, Topology

SHORT_ID = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerPlacement:
    pod_uid: str
    namespace: str
    pod: str
    container: str
    container_id: str
    qos: str
    cpus: CpuSet  # enforced: cpuset.cpus.effective
    mems: frozenset[int]  # enforced: cpuset.mems.effective
    cpu_numa_nodes: frozenset[int]  # the NUMA nodes of the enforced CPUs
    memory: Mapping[tuple[int, str], int]  # (NUMA node, "anon"/"file") -> bytes
    intended_cpus: CpuSet | None = None  # what the CPU manager pinned (static policy), None: nothing pinned
    intended_mems: frozenset[int] | None = None  # the Memory Manager's NUMA nodes (Static), None: none assigned
    exclusive: bool = False  # the alignment audit lists it

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory.values())

    @property
    def remote_bytes(self) -> int:
        return sum(size for (numa, _), size in self.memory.items() if numa not in self.cpu_numa_nodes)

    @property
    def remote_ratio(self) -> float:
        total = self.memory_bytes
        return self.remote_bytes / total if total else 0.0

    @property
    def cpu_drift(self) -> bool:
        return self.intended_cpus is not None and self.cpus != self.intended_cpus

    @property
    def memory_drift(self) -> bool:
        return self.intended_mems is not None and self.mems != self.intended_mems


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementView:
    status: SourceStatus
    containers: tuple[ContainerPlacement, ...] = ()
    all_containers: bool = False
    vanished: int = 0  # containers gone while the sample was read
    taken_at: float = 0.0
    duration_seconds: float = 0.0
    remote_bytes_by_numa: Mapping[int, int] = field(default_factory=dict)
    errors_total: Mapping[tuple[str, str], int] = field(default_factory=dict)


def observe(
    topology: Topology,
    state: KubeletState,
    audited: tuple[ContainerAlignment, ...],
    cgroups: CgroupReading,
    logs: tuple[LoggedContainer, ...],
    *,
    all_containers: bool = False,
) -> tuple[ContainerPlacement, ...]:
    numa_of_cpu = topology.numa_node_of_cpu()
    pods = {pod.uid: pod for pod in state.pods or ()}
    logged = {item.container_id: item for item in logs}
    logged_pods = {(item.namespace, item.pod) for item in logs}
    exclusive = {(c.pod_uid, c.container) for c in audited}
    found = []
    for cgroup in cgroups.containers:
        if cgroup.sandbox:
            continue
        pod = pods.get(cgroup.pod_uid)
        names = dict(pod.container_ids) if pod else {}
        log = logged.get(cgroup.container_id)
        if cgroup.container_id in names:
            container = names[cgroup.container_id]
        elif log is not None:
            container = log.container
        elif names or (pod is not None and (pod.namespace, pod.name) in logged_pods):
            continue  # the pod's named containers are known and this is none of them: its sandbox
        else:
            container = cgroup.container_id[:SHORT_ID]
        namespace = pod.namespace if pod else (log.namespace if log else "")
        name = pod.name if pod else (log.pod if log else "")
        if not all_containers and (cgroup.pod_uid, container) not in exclusive:
            continue
        found.append(
            ContainerPlacement(
                pod_uid=cgroup.pod_uid,
                namespace=namespace,
                pod=name,
                container=container,
                container_id=cgroup.container_id,
                qos=cgroup.qos,
                cpus=cgroup.cpus,
                mems=cgroup.mems,
                cpu_numa_nodes=frozenset(numa_of_cpu.get(cpu, UNKNOWN_NUMA_NODE) for cpu in cgroup.cpus),
                memory=dict(cgroup.memory),
                intended_cpus=_pinned(state, cgroup.pod_uid, container),
                intended_mems=_static_memory(state, cgroup.pod_uid, container),
                exclusive=(cgroup.pod_uid, container) in exclusive,
            )
        )
    return tuple(sorted(found, key=lambda c: (c.namespace, c.pod, c.container, c.container_id)))


def _pinned(state: KubeletState, pod_uid: str, container: str) -> CpuSet | None:
    if state.cpu is None or state.cpu_policy != "static":
        return None
    return state.cpu.entries.get(pod_uid, {}).get(container)


def _static_memory(state: KubeletState, pod_uid: str, container: str) -> frozenset[int] | None:
    if state.memory is None or not state.memory.is_static:
        return None
    blocks = state.memory.entries.get(pod_uid, {}).get(container)
    numas = {numa for block in blocks or () if block.size_bytes > 0 for numa in block.numa_affinity}
    return frozenset(numas) if numas else None


def remote_bytes_by_numa(containers: tuple[ContainerPlacement, ...]) -> dict[int, int]:
    """NUMA node -> bytes on it that belong to sampled containers none of whose enforced CPUs are there."""
    found: dict[int, int] = {}
    for container in containers:
        for (numa, _), size in container.memory.items():
            if numa not in container.cpu_numa_nodes:
                found[numa] = found.get(numa, 0) + size
    return dict(sorted(found.items()))
