"""NodeResourceTopologyMatch's Filter, ported: whether the NUMA-aware scheduler lets a pod onto a node. Pure.

From scheduler-plugins 903da7df (the plugin in ../shared/k8s's kube-scheduler-nrt),
pkg/noderesourcetopology/filter.go, numaresources.go, pluginhelpers.go and nodeconfig/topologymanager.go:

* the Topology Manager configuration comes from the NRT object: the deprecated `topologyPolicies` first, then
  the attributes `topologyManagerPolicy`, `topologyManagerScope`, `topologyManagerMaxNUMANodes` (invalid
  values ignored; defaults `none`, `container`, 8). Only `single-numa-node` is filtered; every other policy
  passes every pod (the kubelet may still refuse one under `restricted`);
* a BestEffort pod that requests no non-native resource passes; every other pod is checked, whatever its QoS;
* zones of type `Node` named `node-<N>` are the NUMA nodes, each with its resources' `available`;
* a request (zero quantities skipped) needs each resource in the node's allocatable (cpu, memory, pods and
  ephemeral-storage always count as present), then a NUMA node holding every resource: a NUMA node that
  lists the resource qualifies when its `available` covers the request, or, for cpu, memory and hugepages of
  a pod that is not Guaranteed, whenever it lists it. A resource no zone lists is fine when it is host-level
  (ephemeral-storage, storage, any non-native resource), and rules out every NUMA node otherwise;
* container scope: each init container (sidecars too) alone against the zones; then each app container in
  turn, taking the lowest-numbered qualifying NUMA node, whose `available` it then reduces (cpu, memory and
  hugepages only for a Guaranteed pod). Pod scope: the pod's effective request (the larger of the app
  containers' sum and the largest init container, plus overhead) as one request.

The verdict does not depend on the order of resources; the scheduler's log names the first resource (in Go's
random map order) that left no NUMA node, this names every resource short on every NUMA node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from exporter.kubelet.podspec import GUARANTEED, is_native, qos_class
from exporter.units import parse_quantity_exact

SINGLE_NUMA_NODE = "single-numa-node"
POLICIES = ("none", "best-effort", "restricted", SINGLE_NUMA_NODE)
SCOPES = ("container", "pod")
DEFAULT_MAX_NUMA_NODES = 8
LIMIT_NUMA_NODES = 1024
MAX_NUMA_ID = 63  # the plugin's 64-entry lookup table; zones above it are skipped
ALWAYS_ALLOCATABLE = ("cpu", "memory", "pods", "ephemeral-storage")  # util.ResourceList always sets them
_LEGACY_POLICIES = {
    "SingleNUMANodePodLevel": (SINGLE_NUMA_NODE, "pod"),
    "SingleNUMANodeContainerLevel": (SINGLE_NUMA_NODE, "container"),
    "BestEffortPodLevel": ("best-effort", "pod"),
    "BestEffortContainerLevel": ("best-effort", "container"),
    "RestrictedPodLevel": ("restricted", "pod"),
    "RestrictedContainerLevel": ("restricted", "container"),
}
_ZONE_NAME = re.compile(r"^node-([0-9]+)$")
Requests = Mapping[str, Fraction]


@dataclass(frozen=True, slots=True)
class TopologyManager:
    policy: str = "none"
    scope: str = "container"
    max_numa_nodes: int = DEFAULT_MAX_NUMA_NODES

    @property
    def filters(self) -> bool:
        return self.policy == SINGLE_NUMA_NODE


def topology_manager(nrt: Mapping[str, Any]) -> TopologyManager:
    policy, scope, max_numa = "none", "container", DEFAULT_MAX_NUMA_NODES
    legacy = nrt.get("topologyPolicies") or []
    if isinstance(legacy, list) and legacy and legacy[0] in _LEGACY_POLICIES:
        policy, scope = _LEGACY_POLICIES[legacy[0]]
    for attribute in nrt.get("attributes") or []:
        if not isinstance(attribute, dict):
            continue
        name, value = attribute.get("name"), str(attribute.get("value", ""))
        if name == "topologyManagerScope" and value in SCOPES:
            scope = value
        elif name == "topologyManagerPolicy" and value in POLICIES:
            policy = value
        elif name == "topologyManagerMaxNUMANodes" and re.fullmatch(r"[+-]?[0-9]+", value) and int(value) > 1:
            max_numa = min(int(value), LIMIT_NUMA_NODES)
    return TopologyManager(policy=policy, scope=scope, max_numa_nodes=max_numa)


@dataclass(slots=True)
class Zone:
    """One NUMA node of an NRT object: what is available now, and what its resources hold in all."""

    numa_node: int
    available: dict[str, Fraction]
    allocatable: dict[str, Fraction] = field(default_factory=dict)

    def copy(self) -> Zone:
        return Zone(self.numa_node, dict(self.available), dict(self.allocatable))


def numa_zones(nrt: Mapping[str, Any]) -> list[Zone]:
    """The zones the plugin treats as NUMA nodes, in the object's order. A quantity that does not parse
    leaves its resource out (the API server validates them, so only a hand-made object has one)."""
    zones = []
    for zone in nrt.get("zones") or []:
        if not isinstance(zone, dict) or zone.get("type") != "Node":
            continue
        match = _ZONE_NAME.match(str(zone.get("name") or ""))
        if match is None or int(match.group(1)) > MAX_NUMA_ID:
            continue
        available: dict[str, Fraction] = {}
        allocatable: dict[str, Fraction] = {}
        for resource in zone.get("resources") or []:
            if not isinstance(resource, dict) or not isinstance(resource.get("name"), str):
                continue
            for key, into in (("available", available), ("allocatable", allocatable)):
                value = _exact(resource.get(key))
                if value is not None:
                    into[resource["name"]] = value
        zones.append(Zone(int(match.group(1)), available, allocatable))
    return zones


def node_resources(node: Mapping[str, Any]) -> set[str]:
    """The resource names the plugin sees in the node's allocatable: the four it always sets, and the
    scalar ones (hugepages, extended, `kubernetes.io/`-prefixed, attachable volumes) the Node lists."""
    listed = ((node.get("status") or {}).get("allocatable") or {}).keys()
    return set(ALWAYS_ALLOCATABLE) | {name for name in listed if _is_scalar(str(name))}


def _is_scalar(name: str) -> bool:
    return (
        name.startswith("hugepages-")
        or name.startswith("attachable-volumes-")
        or not is_native(name)
        or "kubernetes.io/" in name
    )


def is_numa_affine(resource: str) -> bool:
    return resource in ("cpu", "memory") or resource.startswith("hugepages-")


def is_host_level(resource: str) -> bool:
    return resource in ("ephemeral-storage", "storage") or not is_native(resource)


# --- the pod ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    name: str
    kind: str  # "init", "sidecar" or "app"
    requests: Requests


@dataclass(frozen=True, slots=True, kw_only=True)
class PodShape:
    """What the filter reads of a pod: its QoS class, containers' requests, overhead."""

    qos: str
    containers: tuple[Container, ...]
    overhead: Requests = field(default_factory=dict)
    non_native: bool = False

    @property
    def app(self) -> tuple[Container, ...]:
        return tuple(c for c in self.containers if c.kind == "app")

    @property
    def init(self) -> tuple[Container, ...]:
        return tuple(c for c in self.containers if c.kind != "app")

    def effective_request(self) -> dict[str, Fraction]:
        """`util.GetPodEffectiveRequest`: the app containers' sum or the largest init container's request,
        whichever is larger per resource, plus the pod's overhead."""
        total: dict[str, Fraction] = {}
        for container in self.app:
            for name, value in container.requests.items():
                total[name] = total.get(name, Fraction(0)) + value
        for container in self.init:
            for name, value in container.requests.items():
                total[name] = max(total.get(name, value), value)
        for name, value in self.overhead.items():
            total[name] = total.get(name, Fraction(0)) + value
        return total


def pod_shape(pod: Mapping[str, Any]) -> PodShape:
    """A pod (API JSON, or a manifest: requests are defaulted from limits as the API server does)."""
    spec = pod.get("spec") or {}
    containers = []
    non_native = False
    for key, default_kind in (("initContainers", "init"), ("containers", "app")):
        for index, container in enumerate(spec.get(key) or []):
            if not isinstance(container, dict):
                continue
            kind = "sidecar" if default_kind == "init" and container.get("restartPolicy") == "Always" else default_kind
            requests = _requests(container)
            non_native = non_native or any(not is_native(name) for name in requests)
            name = str(container.get("name") or f"{key}[{index}]")
            containers.append(Container(name=name, kind=kind, requests=requests))
    return PodShape(
        qos=qos_class(defaulted(pod)),
        containers=tuple(containers),
        overhead=_quantities(spec.get("overhead")),
        non_native=non_native,
    )


def defaulted(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The pod with each container's missing requests taken from its limits (the API server's defaulting)."""
    spec = dict(pod.get("spec") or {})
    for key in ("initContainers", "containers"):
        items = []
        for item in spec.get(key) or []:
            container = item
            if isinstance(item, dict):
                resources = dict(item.get("resources") or {})
                limits = resources.get("limits") or {}
                if isinstance(limits, dict) and limits:
                    resources["requests"] = {**limits, **(resources.get("requests") or {})}
                container = {**item, "resources": resources}
            items.append(container)
        if key in spec:
            spec[key] = items
    return {**pod, "spec": spec}


def _requests(container: Mapping[str, Any]) -> dict[str, Fraction]:
    resources = container.get("resources") or {}
    limits = _quantities(resources.get("limits"))
    return {**limits, **_quantities(resources.get("requests"))}


def _quantities(table: Any) -> dict[str, Fraction]:
    if not isinstance(table, dict):
        return {}
    found = {}
    for name, quantity in table.items():
        value = _exact(quantity)
        if value is not None:
            found[str(name)] = value
    return found


def _exact(quantity: Any) -> Fraction | None:
    try:
        return parse_quantity_exact(quantity)
    except ValueError:
        return None


# --- the filter ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Shortfall:
    """Why one NUMA node (None: the node as a whole) cannot hold a request of one resource."""

    numa_node: int | None
    resource: str
    requested: Fraction
    available: Fraction | None  # None: not listed there

    def text(self) -> str:
        where = "node" if self.numa_node is None else f"node-{self.numa_node}"
        have = "not listed" if self.available is None else f"{format_quantity(self.resource, self.available)} free"
        return f"{where}: {self.resource} {format_quantity(self.resource, self.requested)} wanted, {have}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The filter's answer for one node. `applied` is False where the plugin lets the pod through unchecked
    (a policy other than single-numa-node, a BestEffort pod without non-native requests)."""

    fits: bool
    applied: bool
    numa_nodes: tuple[int, ...] = ()  # the NUMA node(s) the kubelet would take, lowest first
    placements: tuple[tuple[str, int], ...] = ()  # (container, NUMA node); ("pod", n) in pod scope
    blocked_by: str | None = None  # the container (or "pod") that cannot be aligned
    shortfalls: tuple[Shortfall, ...] = ()
    note: str | None = None

    def reason(self) -> str | None:
        if self.fits:
            return None
        what = f"cannot align {self.blocked_by}" if self.blocked_by else "cannot align"
        detail = "; ".join(shortfall.text() for shortfall in self.shortfalls)
        return f"{what}: {detail}" if detail else what


def filter_node(
    shape: PodShape, nrt: Mapping[str, Any], allocatable: Iterable[str], *, zones: list[Zone] | None = None
) -> Verdict:
    """NodeResourceTopologyMatch's Filter for one node: `nrt` its object, `allocatable` the resource names of
    its allocatable (node_resources). `zones` overrides the object's zones (what-if planning)."""
    if shape.qos == "BestEffort" and not shape.non_native:
        return Verdict(fits=True, applied=False, note="BestEffort pod without device requests: not NUMA-filtered")
    manager = topology_manager(nrt)
    if not manager.filters:
        note = f"topologyManagerPolicy {manager.policy}: the scheduler does not filter"
        if manager.policy == "restricted":
            note += " (the kubelet's restricted policy may still refuse the pod)"
        return Verdict(fits=True, applied=False, note=note)
    working = [zone.copy() for zone in (zones if zones is not None else numa_zones(nrt))]
    return align(shape, manager, working, set(allocatable))


def align(
    shape: PodShape, manager: TopologyManager, zones: list[Zone], allocatable: set[str], *, consume: bool = False
) -> Verdict:
    """The single-numa-node handler of `manager`'s scope over `zones`, which app containers' requests are
    taken out of as the plugin does (container scope). `consume` also takes a pod-scope pod out of its NUMA
    node: the plugin does not, but counting how many pods still fit (planning) needs it."""
    guaranteed = shape.qos == GUARANTEED
    if manager.scope == "pod":
        request = shape.effective_request()
        numa, shortfalls = _any_numa(request, zones, allocatable, guaranteed)
        if numa is None:
            return Verdict(fits=False, applied=True, blocked_by="pod", shortfalls=shortfalls)
        if consume:
            subtract(zones, numa, request, guaranteed=guaranteed)
        return Verdict(fits=True, applied=True, numa_nodes=(numa,), placements=(("pod", numa),))
    for container in shape.init:
        numa, shortfalls = _any_numa(container.requests, zones, allocatable, guaranteed)
        if numa is None:
            blocked = f"{container.kind} container {container.name}"
            return Verdict(fits=False, applied=True, blocked_by=blocked, shortfalls=shortfalls)
    placements: list[tuple[str, int]] = []
    for container in shape.app:
        numa, shortfalls = _any_numa(container.requests, zones, allocatable, guaranteed)
        if numa is None:
            return Verdict(
                fits=False, applied=True, blocked_by=f"container {container.name}", shortfalls=shortfalls,
                placements=tuple(placements),
            )  # fmt: skip
        subtract(zones, numa, container.requests, guaranteed=guaranteed)
        placements.append((container.name, numa))
    used = tuple(sorted({numa for _, numa in placements if any(z.numa_node == numa for z in zones)}))
    return Verdict(fits=True, applied=True, numa_nodes=used, placements=tuple(placements))


def _any_numa(
    request: Requests, zones: list[Zone], allocatable: set[str], guaranteed: bool
) -> tuple[int | None, tuple[Shortfall, ...]]:
    """`resourcesAvailableInAnyNUMANodes`: the NUMA node the kubelet would pick (the lowest that qualifies
    for every resource), or None and every shortfall found."""
    candidates = set(range(MAX_NUMA_ID + 1))  # the plugin's filled 64-bit mask
    shortfalls: list[Shortfall] = []
    for resource in sorted(request):
        quantity = request[resource]
        if quantity == 0:
            continue
        if resource not in allocatable:
            return None, (Shortfall(numa_node=None, resource=resource, requested=quantity, available=None),)
        listed = [zone for zone in zones if resource in zone.available]
        if not listed and is_host_level(resource):
            continue
        suitable = set()
        for zone in listed:
            free = zone.available[resource]
            if (not guaranteed and is_numa_affine(resource)) or free >= quantity:
                suitable.add(zone.numa_node)
            else:
                short = Shortfall(numa_node=zone.numa_node, resource=resource, requested=quantity, available=free)
                shortfalls.append(short)
        if not listed:
            shortfalls.append(Shortfall(numa_node=None, resource=resource, requested=quantity, available=None))
        shortfalls.extend(
            Shortfall(numa_node=zone.numa_node, resource=resource, requested=quantity, available=None)
            for zone in zones
            if listed and resource not in zone.available
        )
        candidates &= suitable
    if not candidates:
        return None, tuple(shortfalls)
    return min(candidates), ()


def subtract(zones: list[Zone], numa: int, request: Requests, *, guaranteed: bool) -> None:
    """`subtractResourcesFromNUMANodeList`: the container's request out of the NUMA node it took."""
    for zone in zones:
        if zone.numa_node != numa:
            continue
        for resource, quantity in request.items():
            if (not guaranteed and is_numa_affine(resource)) or quantity == 0 or resource not in zone.available:
                continue
            zone.available[resource] = zone.available[resource] - quantity


def format_quantity(resource: str, value: Fraction) -> str:
    """A quantity as people write it: cpu in cores (or millicores), bytes in Ki/Mi/Gi, counts as counts."""
    if resource == "cpu" and value.denominator != 1:
        return f"{int(value * 1000)}m"
    if value.denominator != 1:
        return str(float(value))
    number = int(value)
    if resource in ("memory", "ephemeral-storage", "storage") or resource.startswith("hugepages-"):
        for suffix, factor in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
            if number and number % factor == 0:
                return f"{number // factor}{suffix}"
    return str(number)
