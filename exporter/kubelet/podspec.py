"""What a pod's spec says about exclusive resources, as the NUMA-aware scheduler decides it.

scheduler-plugins' overreserve cache recomputes `nodeTopologyPodsFingerprint` over the pods it knows on a node
and, for the method `with-exclusive-resources`, keeps those `resourcerequests.AreExclusiveForPod` accepts
(pkg/noderesourcetopology/resourcerequests/exclusive.go): a steady-state container (an app container, or an
init container with `restartPolicy: Always`, a sidecar; regular init containers finish and do not count)
requests a non-native resource the node's NodeResourceTopology lists, or the pod is Guaranteed and a
steady-state container requests an integral CPU count, or memory or hugepages above zero. The QoS class is
`status.qosClass` when the API server set it, else computed as the kubelet's `ComputePodQOS` does.

`pinned_containers`: what the kubelet's resource managers record for each container when they admit the pod
(exporter/views/nrt.py waits for all of it before it counts the pod admitted).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any

from exporter.model import ContainerClaim, PinnedContainer
from exporter.units import parse_quantity_exact

GUARANTEED = "Guaranteed"
NATIVE_PREFIX = "kubernetes.io/"
QOS_RESOURCES = ("cpu", "memory")


def is_native(resource: str) -> bool:
    """`v1helper.IsNativeResource`: no domain, or a `kubernetes.io/` one."""
    return "/" not in resource or NATIVE_PREFIX in resource


def exclusivity(pod: Mapping[str, Any]) -> tuple[bool, frozenset[str]]:
    """(Guaranteed with an exclusive native request, the non-native resources requested), both over the
    steady-state containers only."""
    spec = pod.get("spec") or {}
    guaranteed = qos_class(pod) == GUARANTEED
    exclusive_native = False
    non_native: set[str] = set()
    for container in _steady_containers(spec):
        for resource, quantity in _requests(container).items():
            if not is_native(resource):
                non_native.add(resource)
            elif guaranteed and _exclusive_native(resource, quantity):
                exclusive_native = True
    return exclusive_native, frozenset(non_native)


def pinned_containers(pod: Mapping[str, Any]) -> tuple[PinnedContainer, ...]:
    """Every container the kubelet's managers admit, in their order (init containers, sidecars among them, then
    the app containers), with what they pin for it: the Topology Manager takes each container through every
    manager in turn, and each manager writes its state file as it goes. An init container's records stay
    while the pod is there (the CPU and memory managers reuse them for the app containers)."""
    spec = pod.get("spec") or {}
    guaranteed = qos_class(pod) == GUARANTEED
    found = []
    for container in (*(spec.get("initContainers") or []), *(spec.get("containers") or [])):
        if not isinstance(container, dict):
            continue
        requests = _requests(container)
        extended = set()
        for resource, quantity in requests.items():
            value = _quantity(quantity)
            if not is_native(resource) and value is not None and value > 0:
                extended.add(resource)
        found.append(
            PinnedContainer(
                name=str(container.get("name") or ""),
                exclusive_cpu=guaranteed and _exclusive_native("cpu", requests.get("cpu")),
                extended=frozenset(extended),
            )
        )
    return tuple(found)


def _steady_containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for container in spec.get("initContainers") or []:
        if isinstance(container, dict) and container.get("restartPolicy") == "Always":
            yield container
    for container in spec.get("containers") or []:
        if isinstance(container, dict):
            yield container


def _requests(container: Mapping[str, Any]) -> dict[str, Any]:
    requests = (container.get("resources") or {}).get("requests")
    return requests if isinstance(requests, dict) else {}


def _exclusive_native(resource: str, quantity: Any) -> bool:
    value = _quantity(quantity)
    if value is None:
        return False
    if resource == "cpu":
        return bool(value > 0 and value.denominator == 1)  # Value()*1000 == MilliValue() and Value() > 0
    return bool((resource == "memory" or resource.startswith("hugepages-")) and value > 0)


def _quantity(quantity: Any) -> Fraction | None:
    try:
        return parse_quantity_exact(quantity)
    except ValueError:
        return None


def qos_class(pod: Mapping[str, Any]) -> str:
    status = (pod.get("status") or {}).get("qosClass")
    if isinstance(status, str) and status:
        return status
    spec = pod.get("spec") or {}
    containers = [
        c for c in (*(spec.get("initContainers") or []), *(spec.get("containers") or [])) if isinstance(c, dict)
    ]
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        for table, into in ((resources.get("requests") or {}, requests), (resources.get("limits") or {}, limits)):
            for name, quantity in table.items():
                value = _quantity(quantity)
                if name in QOS_RESOURCES and value is not None and value > 0:
                    into[name] = into.get(name, Fraction(0)) + value
        found = {  # ComputePodQOS counts a limit only when it is above zero
            name
            for name, quantity in (resources.get("limits") or {}).items()
            if name in QOS_RESOURCES and (_quantity(quantity) or 0) > 0
        }
        if not {"cpu", "memory"} <= found:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if (
        guaranteed
        and all(limits.get(name) == value for name, value in requests.items())
        and len(requests) == len(limits)
    ):
        return GUARANTEED
    return "Burstable"


def container_claims(pod: Mapping[str, Any]) -> tuple[ContainerClaim, ...]:
    """Which DRA claim each container uses: `resources.claims[]` names an entry of `spec.resourceClaims`,
    which names the claim (`resourceClaimName`) or a template; a claim made from a template is named in
    `status.resourceClaimStatuses`. An entry not resolved yet (the claim is still being made) is left out."""
    spec = pod.get("spec") or {}
    generated = {
        entry.get("name"): entry.get("resourceClaimName")
        for entry in (pod.get("status") or {}).get("resourceClaimStatuses") or []
        if isinstance(entry, dict)
    }
    claim_of: dict[str, str] = {}
    for entry in spec.get("resourceClaims") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        name = entry.get("resourceClaimName") or generated.get(entry["name"])
        if isinstance(name, str) and name:
            claim_of[entry["name"]] = name
    uses = []
    for container in (*(spec.get("initContainers") or []), *(spec.get("containers") or [])):
        if not isinstance(container, dict):
            continue
        for use in (container.get("resources") or {}).get("claims") or []:
            if isinstance(use, dict) and use.get("name") in claim_of:
                request = use.get("request")
                uses.append(
                    ContainerClaim(
                        container=str(container.get("name") or ""),
                        claim=claim_of[use["name"]],
                        request=request if isinstance(request, str) and request else None,
                    )
                )
    return tuple(uses)


def container_ids(pod: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(runtime container ID, container name) for each container the pod's statuses name
    (`containerd://<id>`, `cri-o://<id>`); init and ephemeral containers too: a sidecar holds resources."""
    status = pod.get("status") or {}
    found = []
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for item in status.get(key) or []:
            if not isinstance(item, dict):
                continue
            name, ident = item.get("name"), item.get("containerID")
            if isinstance(name, str) and isinstance(ident, str) and "://" in ident:
                found.append((ident.split("://", 1)[1], name))
    return tuple(sorted(found))
