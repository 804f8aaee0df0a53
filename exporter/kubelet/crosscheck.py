"""The kubelet's two accounts of what it handed out, side by side: its state files and its podresources API.

Pure: a KubeletState (state files, and pods from the API watch or the pod log directory where there are)
and one podresources reading in, one CrossCheck out.

* Identity. State files name pods by UID only; podresources by namespace and name. A listed pod is the
  pod of that name the API or the pod log directory knows, else the state-file pod whose containers hold
  exactly what it holds (the same container name with the same pinned CPUs, the same devices, or the same
  memory blocks: exclusive CPUs and device IDs are held by one container at a time).
* Liveness. podresources lists only the pods the kubelet still holds; a state-file entry of any other pod
  is stale. The kubelet keeps listing terminal pods (kubernetes#119423): where the API watch is synced, a
  listed pod it does not report as on this node and not terminal is left out.
* Disagreements, per container and resource: pinned CPUs, device IDs and the NUMA nodes each device sits
  under, memory blocks (type, size, NUMA nodes). A container holding something in one account and not in
  the other disagrees too; a pod the API says runs here, with allocations in the state files, that
  podresources does not list, disagrees for each of those resources.

Which account wins for each number is in docs/product.md ("Two sources"): the state files for every
number (they alone hold the shared pool, the reserved CPUs and each NUMA node's free memory, and are what
the kubelet restores on restart), podresources for identity, liveness and the plugin-reported topology of
free devices. A disagreement is shown and counted, never merged away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.cpuset import format_cpuset
from exporter.kubelet.accounting import KubeletState
from exporter.model import PodRef, PodResourcesReading, ReportedContainer, ReportedPod

ABSENT = "absent"


@dataclass(frozen=True, slots=True, kw_only=True)
class Disagreement:
    namespace: str
    pod: str
    pod_uid: str
    container: str
    resource: str  # "cpu", "memory", "hugepages-<size>", or a device resource name
    state_files: str
    podresources: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CrossCheck:
    pods: tuple[PodRef, ...]  # every pod the kubelet holds, with its UID where one is known
    live_uids: frozenset[str]
    disagreements: tuple[Disagreement, ...]
    reported_topology: Mapping[str, frozenset[int]]  # device ID -> NUMA nodes its plugin reported
    # Every pod the kubelet lists, terminal ones included, by UID: the pods whose state-file entries its next
    # admission keeps. None when a listed pod that holds something could not be identified.
    kubelet_uids: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class _Held:
    """What the state files say one container holds."""

    cpus: frozenset[int]
    devices: Mapping[str, Mapping[str, frozenset[int]]]  # resource -> device ID -> NUMA keys (-1 dropped)
    memory: Counter[tuple[str, int, frozenset[int]]]


def cross_check(state: KubeletState, reading: PodResourcesReading, *, api_synced: bool) -> CrossCheck:
    held = _held(state)
    index = _index(held)
    known = {(pod.namespace, pod.name): pod for pod in state.pods or ()}
    listed = [pod for pod in reading.pods if not (api_synced and (pod.namespace, pod.name) not in known)]
    uid_of: dict[tuple[str, str], str] = {}
    claimed: set[str] = set()
    for pod in listed:
        ref = known.get((pod.namespace, pod.name))
        uid = ref.uid if ref is not None else _match(pod, index, claimed)
        if uid:
            uid_of[(pod.namespace, pod.name)] = uid
            claimed.add(uid)
    disagreements: list[Disagreement] = []
    for pod in listed:
        uid = uid_of.get((pod.namespace, pod.name), "")
        containers = {container.name: container for container in pod.containers}
        # Only the containers podresources lists: it leaves out init containers that are not sidecars,
        # whose CPUs the state file keeps (and hands on to the app containers).
        for name in sorted(containers):
            disagreements.extend(_compare(pod, uid, name, held.get((uid, name)), containers.get(name)))
    if api_synced:
        listed_names = {(pod.namespace, pod.name) for pod in listed}
        for ref in state.pods or ():
            if ref.running and (ref.namespace, ref.name) not in listed_names:
                for (pod_uid, name), holding in sorted(held.items()):
                    if pod_uid == ref.uid:
                        missing = ReportedPod(namespace=ref.namespace, name=ref.name, containers=())
                        disagreements.extend(_compare(missing, ref.uid, name, holding, None))
    pods = tuple(
        known.get((pod.namespace, pod.name))
        or PodRef(
            uid=uid_of.get((pod.namespace, pod.name), f"{pod.namespace}/{pod.name}"),
            namespace=pod.namespace,
            name=pod.name,
        )
        for pod in listed
    )
    return CrossCheck(
        pods=pods,
        live_uids=frozenset(uid_of.values()),
        disagreements=tuple(disagreements),
        reported_topology=_reported_topology(reading),
        kubelet_uids=_kubelet_uids(reading, known, uid_of, index, claimed),
    )


def _kubelet_uids(
    reading: PodResourcesReading,
    known: Mapping[tuple[str, str], PodRef],
    uid_of: Mapping[tuple[str, str], str],
    index: _Index,
    claimed: set[str],
) -> frozenset[str] | None:
    """The UIDs of every pod podresources lists, the ones the API no longer places here included."""
    uids = set(uid_of.values())
    for pod in reading.pods:
        key = (pod.namespace, pod.name)
        if key in uid_of:
            continue
        ref = known.get(key)
        uid = ref.uid if ref is not None else _match(pod, index, claimed)
        if uid:
            uids.add(uid)
            claimed.add(uid)
        elif any(container.holds_anything for container in pod.containers):
            return None
    return frozenset(uids)


def _held(state: KubeletState) -> dict[tuple[str, str], _Held]:
    cpus: dict[tuple[str, str], frozenset[int]] = {}
    if state.cpu is not None and state.cpu_policy == "static":
        for pod, containers in state.cpu.entries.items():
            for container, cpuset in containers.items():
                if pod and cpuset:
                    cpus[(pod, container)] = frozenset(cpuset)
    devices: dict[tuple[str, str], dict[str, dict[str, frozenset[int]]]] = {}
    for allocation in state.devices.allocations if state.devices is not None else ():
        by_device = devices.setdefault((allocation.pod_uid, allocation.container), {}).setdefault(
            allocation.resource, {}
        )
        for numa, ids in allocation.devices_by_numa.items():
            for device in ids:
                filed = by_device.get(device, frozenset())
                by_device[device] = filed | ({numa} if numa >= 0 else set())
    memory: dict[tuple[str, str], Counter[tuple[str, int, frozenset[int]]]] = {}
    if state.memory is not None and state.memory.is_static:
        for pod, memory_containers in state.memory.entries.items():
            for container, blocks in memory_containers.items():
                for block in blocks:
                    if block.size_bytes > 0:
                        block_key = (block.resource, block.size_bytes, frozenset(block.numa_affinity))
                        memory.setdefault((pod, container), Counter())[block_key] += 1
    keys = set(cpus) | set(devices) | set(memory)
    return {key: _Held(cpus.get(key, frozenset()), devices.get(key, {}), memory.get(key, Counter())) for key in keys}


def _reported_memory(container: ReportedContainer) -> Counter[tuple[str, int, frozenset[int]]]:
    return Counter(
        (block.memory_type, block.size_bytes, block.numa_nodes) for block in container.memory if block.size_bytes
    )


def _reported_devices(container: ReportedContainer) -> dict[str, dict[str, frozenset[int]]]:
    devices: dict[str, dict[str, frozenset[int]]] = {}
    for entry in container.devices:
        for device in entry.ids:
            devices.setdefault(entry.resource, {})[device] = entry.numa_nodes
    return devices


@dataclass(frozen=True, slots=True)
class _Index:
    """The state files' holdings, looked up by what identifies a container: its exclusive CPUs, a device."""

    by_cpus: Mapping[tuple[str, frozenset[int]], str]  # (container, CPUs) -> pod UID
    by_device: Mapping[tuple[str, str], str]  # (container, device ID) -> pod UID
    by_name: Mapping[str, tuple[tuple[str, _Held], ...]]  # container -> (pod UID, holding)


def _index(held: Mapping[tuple[str, str], _Held]) -> _Index:
    by_cpus: dict[tuple[str, frozenset[int]], str] = {}
    by_device: dict[tuple[str, str], str] = {}
    by_name: dict[str, list[tuple[str, _Held]]] = {}
    for (uid, name), holding in sorted(held.items()):
        if holding.cpus:
            by_cpus[(name, holding.cpus)] = uid
        for devices in holding.devices.values():
            for device in devices:
                by_device[(name, device)] = uid
        by_name.setdefault(name, []).append((uid, holding))
    return _Index(by_cpus, by_device, {name: tuple(entries) for name, entries in by_name.items()})


def _match(pod: ReportedPod, index: _Index, claimed: set[str]) -> str:
    """The state-file pod UID whose containers hold what this listed pod's containers hold ("" if none)."""
    votes: Counter[str] = Counter()
    for container in pod.containers:
        if not container.holds_anything:
            continue
        uid = index.by_cpus.get((container.name, container.cpu_ids), "") if container.cpu_ids else ""
        if uid and uid not in claimed:
            votes[uid] += 2
        for ids in _reported_devices(container).values():
            for owner in {index.by_device.get((container.name, device), "") for device in ids} - {""}:
                if owner not in claimed:
                    votes[owner] += 2
        reported_memory = _reported_memory(container)
        if reported_memory and not container.cpu_ids and not container.devices:
            for owner, holding in index.by_name.get(container.name, ()):
                if owner not in claimed and holding.memory == reported_memory:
                    votes[owner] += 1
    if not votes:
        return ""
    best = max(votes.values())
    return min(uid for uid, count in votes.items() if count == best)


def _compare(
    pod: ReportedPod, uid: str, container: str, holding: _Held | None, reported: ReportedContainer | None
) -> list[Disagreement]:
    def differ(resource: str, ours: str, theirs: str) -> Disagreement:
        return Disagreement(namespace=pod.namespace, pod=pod.name, pod_uid=uid, container=container,
                            resource=resource, state_files=ours, podresources=theirs)  # fmt: skip

    if reported is None:
        reported = ReportedContainer(name=container, cpu_ids=frozenset(), devices=(), memory=(), claims=())
        absent = True
    else:
        absent = False
    held_cpus = holding.cpus if holding else frozenset()
    found: list[Disagreement] = []
    if held_cpus != reported.cpu_ids:
        found.append(differ("cpu", _cpus(held_cpus), ABSENT if absent else _cpus(reported.cpu_ids)))
    held_devices = holding.devices if holding else {}
    reported_devices = _reported_devices(reported)
    for resource in sorted(set(held_devices) | set(reported_devices)):
        ours, theirs = held_devices.get(resource, {}), reported_devices.get(resource, {})
        same_ids = set(ours) == set(theirs)
        # The checkpoint files a device under -1 when its plugin reported no topology; compare only where both say.
        numa_differs = same_ids and any(ours[d] and theirs[d] and ours[d] != theirs[d] for d in ours)
        if not same_ids or numa_differs:
            found.append(differ(resource, _devices(ours), ABSENT if absent else _devices(theirs)))
    held_memory = holding.memory if holding else Counter()
    reported_memory = _reported_memory(reported)
    for resource in sorted({key[0] for key in held_memory} | {key[0] for key in reported_memory}):
        ours_blocks = Counter({k: v for k, v in held_memory.items() if k[0] == resource})
        theirs_blocks = Counter({k: v for k, v in reported_memory.items() if k[0] == resource})
        if ours_blocks != theirs_blocks:
            found.append(differ(resource, _blocks(ours_blocks), ABSENT if absent else _blocks(theirs_blocks)))
    return found


def _reported_topology(reading: PodResourcesReading) -> dict[str, frozenset[int]]:
    topology: dict[str, frozenset[int]] = {}
    for entry in reading.allocatable_devices:
        for device in entry.ids:
            topology[device] = entry.numa_nodes
    for pod in reading.pods:
        for container in pod.containers:
            for entry in container.devices:
                for device in entry.ids:
                    topology.setdefault(device, entry.numa_nodes)
    return topology


def _cpus(cpus: frozenset[int]) -> str:
    return format_cpuset(cpus) or "none"


def _devices(devices: Mapping[str, frozenset[int]]) -> str:
    if not devices:
        return "none"
    return ",".join(f"{device}@{_numas(numas)}" for device, numas in sorted(devices.items()))


def _blocks(blocks: Counter[tuple[str, int, frozenset[int]]]) -> str:
    if not blocks:
        return "none"
    return ",".join(
        f"{size}@{_numas(numas)}" + (f"x{count}" if count > 1 else "")
        for (_, size, numas), count in sorted(blocks.items(), key=lambda item: (item[0][1], sorted(item[0][2])))
    )


def _numas(numas: frozenset[int]) -> str:
    return "numa" + "+".join(str(numa) for numa in sorted(numas)) if numas else "no-topology"
