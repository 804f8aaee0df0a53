"""The NodeResourceTopology object (topology.node.k8s.io/v1alpha2) for this node. Pure.

Zones `node-<N>` of type `Node`, sorted by name as resource-topology-exporter sorts them; `costs` from
the SLIT distances; per resource capacity/allocatable/available as integer quantities. Devices with no
known NUMA node (-1) and resources whose availability is unknown are left out: a scheduler must never
be told a number we do not know. DRA devices (`dra:<driver>`) are left out too: the scheduler allocates
them from the ResourceSlices itself, and a zone resource it cannot request would only mislead. CPUs a
CPU DRA driver took are already out of `cpu` available. Top-level attributes carry the kubelet's policies and the pod
fingerprint; the object is owned by the Node so it is garbage-collected with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from exporter.fingerprint import (
    ANNOTATION,
    ATTRIBUTE,
    ATTRIBUTE_METHOD,
    METHOD_ALL,
    METHOD_NONE,
    fingerprint,
)
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.dra import is_dra_resource
from exporter.model import UNKNOWN_NUMA_NODE, KubeletConfig, PodRef
from exporter.snapshot import Snapshot

GROUP = "topology.node.k8s.io"
VERSION = "v1alpha2"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NodeResourceTopology"
PLURAL = "noderesourcetopologies"


def zone_name(numa_node: int) -> str:
    return f"node-{numa_node}"


PENDING = "#pending"  # a bound pod the kubelet has not admitted yet (never a pod's name: "#" is not allowed)


def fingerprint_pods(snapshot: Snapshot, *, method: str, finished: Sequence[PodRef] = ()) -> list[PodRef]:
    """The pods the fingerprint covers: the set the consumer enumerates for `method`.

    `all`: every pod on the node. `with-exclusive-resources`: the pods scheduler-plugins' overreserve cache
    keeps (podspec.py): Guaranteed with an integral CPU, memory or hugepages request, or requesting a
    non-native resource this object's zones list, in a steady-state container.

    A pod counts once the kubelet admitted it (every record its managers make for it is in their state
    files, `_admitted`, or it runs). A pod the
    API shows bound here that the kubelet has not admitted yet counts as `<name>#pending`, a name no pod
    has: the consumer's cache compares our fingerprint with the Running pods it sees, so while any bound
    pod waits for the kubelet the two cannot agree, and the scheduler keeps its own reservation for that
    pod (the node stays dirty) instead of trusting zones that do not subtract it yet. Once the kubelet
    admitted it, the same snapshot both subtracts it and names it. A pod known only from the pod log
    directory or podresources (no spec) counts when the kubelet pinned CPUs, Static memory or NUMA-placed
    devices for it, as resource-topology-exporter decides.

    `finished`: pods bound here that finished or were rejected, which a consumer with the Dedicated informer
    counts until they are deleted (empty for Shared, which counts Running pods). They hold nothing, so the
    zones subtract nothing for them; a pod the snapshot still has as live counts once."""
    pinned = _pinned_pods(snapshot)
    records = _manager_records(snapshot.kubelet)
    pods = [
        pod
        if not pod.spec_known or pod.running or _admitted(pod, snapshot.kubelet, records)
        else replace(pod, name=pod.name + PENDING)
        for pod in snapshot.kubelet.pods or ()
    ]
    live = {pod.uid for pod in pods}
    pods += [pod for pod in finished if pod.uid not in live]
    if method == METHOD_ALL:
        return pods
    listed = {name for zone in zone_resources(snapshot).values() for name in (entry["name"] for entry in zone)}
    return [
        pod
        for pod in pods
        if (pod.exclusive_native or bool(pod.non_native & listed) if pod.spec_known else pod.uid in pinned)
    ]


def _manager_records(state: KubeletState) -> frozenset[tuple[str, str, str]]:
    """(pod UID, container, what) for every record the kubelet's managers hold: "cpu" for a container's exclusive
    CPUs, "memory" for its memory blocks (container "" for a pod-level allocation), a device plugin resource's
    name for the devices allocated to it."""
    records: set[tuple[str, str, str]] = set()
    if state.cpu is not None:
        records.update(
            (pod, name, "cpu") for pod, each in state.cpu.entries.items() for name, cpus in each.items() if cpus
        )
        records.update((pod, "", "cpu") for pod, cpus in state.cpu.pod_entries.items() if cpus)
    if state.memory is not None:
        records.update(
            (pod, name, "memory")
            for pod, each in state.memory.entries.items()
            for name, blocks in each.items()
            if blocks
        )
        records.update((pod, "", "memory") for pod, blocks in state.memory.pod_entries.items() if blocks)
    if state.devices is not None:
        records.update((a.pod_uid, a.container, a.resource) for a in state.devices.allocations if a.device_ids)
    return frozenset(records)


def _admitted(pod: PodRef, state: KubeletState, records: frozenset[tuple[str, str, str]]) -> bool:
    """Whether the kubelet's managers have recorded all they pin for a pod that does not run yet: for each
    container (init containers too), its exclusive CPUs (static CPU manager), its memory (Static memory manager,
    Guaranteed pods) and the devices of every registered device plugin resource it requests. The managers
    write their files one after another (tens of ms apart on a real kubelet), so a pod one of them has
    recorded may be missing from the next one's file: named then, the object would be one the scheduler's
    cache resyncs from while its zones do not subtract that pod there yet. Each manager updates what the zones
    subtract (the free CPUs, the NUMA nodes' free memory) before it records the container, but a pod-level
    memory allocation (PodLevelResourceManagers) records the pod and its containers first: it counts once the
    pod runs, as does a pod no manager pins for. A file never read says nothing: no device plugin resource is
    registered then, and no device zone is published. DRA claims are prepared after admission and not waited
    for."""
    cpu_static = state.cpu_policy == "static"
    memory_static = pod.guaranteed and state.memory_policy.casefold() == "static"
    if memory_static and (pod.uid, "", "memory") in records:
        return False
    registered = state.devices.registered.keys() if state.devices is not None else frozenset()
    checks: list[bool] = []
    for container in pod.containers:
        if container.exclusive_cpu and cpu_static:
            checks.append((pod.uid, "", "cpu") in records or (pod.uid, container.name, "cpu") in records)
        if memory_static:
            checks.append((pod.uid, container.name, "memory") in records)
        checks.extend((pod.uid, container.name, resource) in records for resource in container.extended & registered)
    return bool(checks) and all(checks)


def _pinned_pods(snapshot: Snapshot) -> set[str]:
    state = snapshot.kubelet
    exclusive: set[str] = set()
    if state.cpu is not None and state.cpu_policy == "static":
        exclusive.update(pod for pod, containers in state.cpu.entries.items() if any(containers.values()))
        exclusive.update(pod for pod, cpus in state.cpu.pod_entries.items() if cpus)
    if state.memory is not None and state.memory.is_static:
        for pod, containers in state.memory.entries.items():
            if any(any(n >= 0 for n in block.numa_affinity) for blocks in containers.values() for block in blocks):
                exclusive.add(pod)
    if state.devices is not None:
        for allocation in state.devices.allocations:
            if any(numa >= 0 and ids for numa, ids in allocation.devices_by_numa.items()):
                exclusive.add(allocation.pod_uid)
    return exclusive


def zone_resources(snapshot: Snapshot) -> dict[int, list[dict[str, Any]]]:
    """NUMA node -> the `resources` of its zone: every account with a known NUMA node and availability,
    DRA devices excepted (see the module's docstring)."""
    resources: dict[int, list[dict[str, Any]]] = {numa.numa_node: [] for numa in snapshot.topology.numa_nodes}
    for account in sorted(snapshot.accounting.accounts, key=lambda a: a.resource):
        if account.numa_node == UNKNOWN_NUMA_NODE or account.available is None or account.numa_node not in resources:
            continue
        if is_dra_resource(account.resource):
            continue
        resources[account.numa_node].append(
            {
                "name": account.resource,
                "capacity": account.capacity,
                "allocatable": account.allocatable,
                "available": account.available,
            }
        )
    return resources


def build_nrt(
    snapshot: Snapshot, *, node_name: str, node_uid: str | None, method: str, finished: Sequence[PodRef] = ()
) -> dict[str, Any]:
    config = snapshot.kubelet.config
    named = fingerprint_pods(snapshot, method=method, finished=finished)
    pods_fingerprint = fingerprint((pod.namespace, pod.name) for pod in named)
    resources = zone_resources(snapshot)
    zones = []
    for numa in snapshot.topology.numa_nodes:
        zone: dict[str, Any] = {"name": zone_name(numa.numa_node), "type": "Node"}
        costs = sorted(
            ({"name": zone_name(other), "value": value} for other, value in numa.distances.items()),
            key=lambda cost: str(cost["name"]),
        )
        if costs:
            zone["costs"] = costs
        zone["resources"] = resources[numa.numa_node]
        zones.append(zone)
    zones.sort(key=lambda zone: str(zone["name"]))
    fingerprinted = method != METHOD_NONE
    metadata: dict[str, Any] = {"name": node_name}
    if fingerprinted:
        metadata["annotations"] = {ANNOTATION: pods_fingerprint}
    if node_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "blockOwnerDeletion": False}
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "attributes": [
            *policy_attributes(config),
            *(
                [{"name": ATTRIBUTE, "value": pods_fingerprint}, {"name": ATTRIBUTE_METHOD, "value": method}]
                if fingerprinted
                else []
            ),
        ],
        "zones": zones,
    }


def policy_attributes(config: KubeletConfig) -> list[dict[str, str]]:
    """The Topology Manager's policy, scope and NUMA limit, only where the configuration is the kubelet's own
    (read from where it runs with, not contradicted by its state files). Otherwise none: never a policy the
    kubelet may not run; the kubelet_config source is down and says what to mount or set."""
    if not config.known:
        return []
    return [
        {"name": "topologyManagerPolicy", "value": config.topology_manager_policy},
        {"name": "topologyManagerScope", "value": config.topology_manager_scope},
        {"name": "topologyManagerMaxNUMANodes", "value": str(config.max_allowable_numa_nodes)},
    ]


def content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What we own in an NRT object: compared to decide whether a write is needed. Server-set metadata
    (resourceVersion, uid, managedFields, other annotations) is not ours and is ignored."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "annotation": annotations.get(ANNOTATION),
        "ownerReferences": metadata.get("ownerReferences") or [],
        "attributes": obj.get("attributes") or [],
        "zones": obj.get("zones") or [],
        "topologyPolicies": obj.get("topologyPolicies"),
    }
