"""The cluster view: where a pod shape fits, what the fleet can still take, and why a pod was rejected.

Everything comes from the API server: Nodes (allocatable), NodeResourceTopology objects (what our agents
publish) and pods. A node fits a pod when the NUMA-aware scheduler would let it through (nrtmatch.py, the
NodeResourceTopologyMatch filter) and its allocatable, less the requests of the pods bound there, covers the
pod (NodeResourcesFit's arithmetic; taints, affinity and other filters are not judged). Read-only: get and
list on nodes, pods, events and noderesourcetopologies (docs/product.md, "Cluster view").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from exporter.cluster.nrtmatch import (
    PodShape,
    Verdict,
    Zone,
    align,
    filter_node,
    format_quantity,
    is_numa_affine,
    node_resources,
    numa_zones,
    pod_shape,
    topology_manager,
)
from exporter.errors import ApiCrdMissing, ApiError, ApiNotFound, ConfigError
from exporter.fingerprint import ATTRIBUTE, ATTRIBUTE_METHOD, METHOD_ALL, fingerprint
from exporter.kubeapi import NRT_COLLECTION, TERMINAL_PHASES, KubeApi, user_client
from exporter.kubelet.podspec import GUARANTEED, exclusivity
from exporter.units import parse_quantity_exact

DEFAULT_NUMA_SCHEDULERS = ("topo-aware-scheduler",)
KUBELET_REJECTIONS = ("TopologyAffinityError", "UnexpectedAdmissionError", "SMTAlignmentError")
PLAN_LIMIT = 10_000  # pods of one profile counted per node at most


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    name: str
    node: Mapping[str, Any]
    nrt: Mapping[str, Any] | None
    pods: tuple[Mapping[str, Any], ...]  # bound here and not terminated
    finished: tuple[Mapping[str, Any], ...] = ()  # bound here, Succeeded or Failed: they hold nothing

    def free(self) -> dict[str, Fraction]:
        """Allocatable less the effective requests of the pods bound here, and `pods` less their count."""
        allocatable = (self.node.get("status") or {}).get("allocatable") or {}
        free = {name: _exact(value) for name, value in allocatable.items()}
        for pod in self.pods:
            for name, value in pod_shape(pod).effective_request().items():
                free[name] = free.get(name, Fraction(0)) - value
        free["pods"] = free.get("pods", Fraction(0)) - len(self.pods)
        return free


def load(api: KubeApi, *, selector: str | None = None) -> list[NodeView]:
    """Every node (matching the label selector), its NRT object where one exists, and its pods (the bound
    ones; those that finished apart: a Dedicated informer's fingerprint still counts them)."""
    nodes = _listed(api, "nodes", "/api/v1/nodes", "", labels=selector)
    nrts = _listed(api, "noderesourcetopologies", NRT_COLLECTION, "")
    pods = _listed(api, "pods", "/api/v1/pods", "spec.nodeName!=")
    nrt_of = {str((nrt.get("metadata") or {}).get("name")): nrt for nrt in nrts if isinstance(nrt, dict)}
    pods_on: dict[tuple[str, bool], list[Mapping[str, Any]]] = {}
    for pod in pods:
        if isinstance(pod, dict) and (pod.get("spec") or {}).get("nodeName"):
            finished = (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
            pods_on.setdefault((pod["spec"]["nodeName"], finished), []).append(pod)
    views = []
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name") or "")
        views.append(
            NodeView(
                name=name,
                node=node,
                nrt=nrt_of.get(name),
                pods=tuple(pods_on.get((name, False), ())),
                finished=tuple(pods_on.get((name, True), ())),
            )
        )
    return sorted(views, key=lambda view: view.name)


def _listed(api: KubeApi, what: str, path: str, selector: str, *, labels: str | None = None) -> list[Any]:
    """The items, or the API's error saying what could not be listed (the CRD's own message says it all)."""
    try:
        return api.list(path, selector, labels=labels)[0]
    except ApiCrdMissing:
        raise
    except ApiError as exc:
        raise type(exc)(f"cannot list {what}: {exc}", status=exc.status) from None


# --- fit ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFit:
    node: str
    fits: bool | None  # None: no NRT, so nobody can say whether the kubelet aligns it
    numa_nodes: tuple[int, ...]
    reason: str | None
    policy: str | None  # "single-numa-node/container"; None without an NRT
    verdict: Verdict | None  # the NRT filter's; None without an NRT
    node_shortfalls: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "fits": self.fits,
            "numa_nodes": list(self.numa_nodes),
            "reason": self.reason,
            "policy": self.policy,
            "nrt_filter": None if self.verdict is None else ("pass" if self.verdict.fits else "reject"),
            "placements": [] if self.verdict is None else [list(p) for p in self.verdict.placements],
            "notes": list(self.notes),
        }


def fit_node(view: NodeView, shape: PodShape) -> NodeFit:
    free = view.free()
    short = tuple(
        f"Insufficient {name}: {format_quantity(name, value)} wanted, "
        f"{format_quantity(name, max(free.get(name, Fraction(0)), Fraction(0)))} free"
        for name, value in sorted({**shape.effective_request(), "pods": Fraction(1)}.items())
        if value > 0 and free.get(name, Fraction(0)) < value
    )
    notes = ["cordoned (spec.unschedulable)"] if (view.node.get("spec") or {}).get("unschedulable") else []
    if view.nrt is None:
        notes.append("no NodeResourceTopology: the scheduler places pods here blind, the kubelet may reject them")
        return NodeFit(
            node=view.name, fits=False if short else None, numa_nodes=(), reason="; ".join(short) or None,
            policy=None, verdict=None, node_shortfalls=short, notes=tuple(notes),
        )  # fmt: skip
    manager = topology_manager(view.nrt)
    verdict = filter_node(shape, view.nrt, node_resources(view.node))
    if verdict.note:
        notes.append(verdict.note)
    reasons = [*([verdict.reason()] if not verdict.fits and verdict.reason() else []), *short]
    return NodeFit(
        node=view.name,
        fits=verdict.fits and not short,
        numa_nodes=verdict.numa_nodes if verdict.fits and not short else (),
        reason="; ".join(r for r in reasons if r) or None,
        policy=f"{manager.policy}/{manager.scope}",
        verdict=verdict,
        node_shortfalls=short,
        notes=tuple(notes),
    )


def fit(views: Iterable[NodeView], shape: PodShape) -> list[NodeFit]:
    return [fit_node(view, shape) for view in views]


# --- shapes -------------------------------------------------------------------------------------------


def parse_shape(texts: Sequence[str]) -> dict[str, Any]:
    """`cpu=8,memory=16Gi,nvidia.com/gpu=2`, one text per container: a Guaranteed pod (requests = limits)."""
    containers = []
    for index, text in enumerate(texts):
        resources: dict[str, str] = {}
        for part in text.split(","):
            name, sep, quantity = part.strip().partition("=")
            if not sep or not name or not quantity:
                raise ConfigError(f"shape {text!r}: expected RESOURCE=QUANTITY[,...], found {part!r}")
            try:
                value = parse_quantity_exact(quantity)
            except ValueError:
                raise ConfigError(f"shape {text!r}: {quantity!r} is not a quantity") from None
            if value < 0:
                raise ConfigError(f"shape {text!r}: {name} must not be negative")
            resources[name.strip()] = quantity.strip()
        containers.append({"name": f"c{index}", "resources": {"requests": resources, "limits": dict(resources)}})
    if not containers:
        raise ConfigError("give a shape (cpu=8,memory=16Gi,...) or --pod FILE")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shape"}, "spec": {"containers": containers}}


def pod_from_manifest(document: Any, origin: str) -> dict[str, Any]:
    """A Pod, or the pod template of a workload (Deployment, Job, StatefulSet, DaemonSet, ...)."""
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: not a Kubernetes object")
    spec = document.get("spec") or {}
    template = spec.get("template") or ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
    if document.get("kind") != "Pod" and isinstance(template, dict):
        document = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata") or {}, **template}
    if not isinstance(document.get("spec"), dict) or not document["spec"].get("containers"):
        raise ConfigError(f"{origin}: no pod spec with containers in it")
    return dict(document)


# --- plan: how many more, stranded, what to free ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FreeingGain:
    node: str
    pod: str
    at_least: int
    at_most: int
    exact: bool  # the pod's NUMA node is known from the object (one candidate)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfilePlan:
    profile: str
    aligned: int  # more pods of the profile the fleet takes, each on one NUMA node
    unaligned: int  # what it would take if NUMA did not matter
    per_node: Mapping[str, int]
    available: Mapping[str, Fraction]  # fleet-wide, per requested NUMA-listed resource
    stranded: Mapping[str, Fraction]  # left after packing the aligned pods
    freeing: tuple[FreeingGain, ...] = ()

    @property
    def fragmentation(self) -> int:
        return max(self.unaligned - self.aligned, 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "more_pods_aligned": self.aligned,
            "more_pods_if_numa_did_not_matter": self.unaligned,
            "lost_to_fragmentation": self.fragmentation,
            "per_node": dict(self.per_node),
            "available": {name: _number(value) for name, value in self.available.items()},
            "stranded": {name: _number(value) for name, value in self.stranded.items()},
            "freeing_one_pod": [
                {
                    "node": g.node,
                    "pod": g.pod,
                    "more_pods_at_least": g.at_least,
                    "more_pods_at_most": g.at_most,
                    "numa_node_known": g.exact,
                }
                for g in self.freeing
            ],
        }


def plan(views: Sequence[NodeView], profiles: Mapping[str, PodShape], *, top: int = 5) -> list[ProfilePlan]:
    """Per profile (a Guaranteed shape): pods of it the fleet still takes aligned, one after another as the
    kubelet admits them (lowest NUMA node first), on nodes whose NRT filters (single-numa-node); what is left
    of the resources it asks for (stranded for it); and the nodes where freeing one pod admits the most."""
    plans = []
    for name, shape in profiles.items():
        per_node: dict[str, int] = {}
        unaligned = 0
        available: dict[str, Fraction] = {}
        stranded: dict[str, Fraction] = {}
        gains: list[FreeingGain] = []
        requested = shape.effective_request()
        for view in views:
            if view.nrt is None or not topology_manager(view.nrt).filters:
                continue
            zones = numa_zones(view.nrt)
            free = view.free()
            count, left = _pack(view, shape, zones, free)
            per_node[view.name] = count
            unaligned += _unaligned(free, requested, zones)
            for resource in requested:
                for zone in zones:
                    if resource in zone.available:
                        available[resource] = available.get(resource, Fraction(0)) + zone.available[resource]
                        stranded[resource] = stranded.get(resource, Fraction(0)) + max(
                            left[zones.index(zone)].available[resource], Fraction(0)
                        )
            gains.extend(_freeing(view, shape, zones, free, count))
        gains.sort(key=lambda g: (-g.at_least, -g.at_most, g.node, g.pod))
        plans.append(
            ProfilePlan(
                profile=name,
                aligned=sum(per_node.values()),
                unaligned=unaligned,
                per_node=per_node,
                available=available,
                stranded=stranded,
                freeing=tuple(gains[:top]),
            )
        )
    return plans


def _pack(view: NodeView, shape: PodShape, zones: list[Zone], free: Mapping[str, Fraction]) -> tuple[int, list[Zone]]:
    """How many pods of the shape the node takes one after another (`free`: its allocatable left), and its
    zones once they are placed."""
    working = [zone.copy() for zone in zones]
    names = node_resources(view.node)
    free = dict(free)
    request = {**shape.effective_request(), "pods": Fraction(1)}
    manager = topology_manager(view.nrt or {})
    count = 0
    while count < PLAN_LIMIT:
        if any(value > 0 and free.get(r, Fraction(0)) < value for r, value in request.items()):
            break
        if not align(shape, manager, working, names, consume=True).fits:
            break
        for r, value in request.items():
            free[r] = free.get(r, Fraction(0)) - value
        count += 1
    return count, working


def _unaligned(free: Mapping[str, Fraction], request: Mapping[str, Fraction], zones: list[Zone]) -> int:
    """Pods of the request the node's NUMA nodes together hold, alignment aside (and its allocatable)."""
    bounds = [math.floor(free.get(r, Fraction(0)) / value) for r, value in request.items() if value > 0]
    bounds.append(math.floor(free.get("pods", Fraction(0))))
    for resource, value in request.items():
        listed = [zone.available[resource] for zone in zones if resource in zone.available]
        if value > 0 and listed:
            bounds.append(math.floor(sum(listed, Fraction(0)) / value))
    return max(min(bounds, default=0), 0)


def _freeing(
    view: NodeView, shape: PodShape, zones: list[Zone], free: Mapping[str, Fraction], baseline: int
) -> list[FreeingGain]:
    """For each pod on the node holding NUMA-bound resources: more pods of the shape the node takes once it
    is gone. The object does not say which NUMA node a pod holds: every NUMA node whose used amount could
    include the whole pod is a candidate, and the gain is given as a range over them."""
    gains = []
    for pod in view.pods:
        held = pod_shape(pod)
        request = {
            r: v for r, v in held.effective_request().items()
            if v > 0 and (held.qos == GUARANTEED or not is_numa_affine(r)) and any(r in z.available for z in zones)
        }  # fmt: skip
        if not request:
            continue
        candidates = [
            index
            for index, zone in enumerate(zones)
            if all(
                zone.allocatable.get(r, Fraction(0)) - zone.available.get(r, Fraction(0)) >= v
                for r, v in request.items()
            )
        ]
        if not candidates:
            continue
        released = dict(free)
        for r, v in {**held.effective_request(), "pods": Fraction(1)}.items():
            released[r] = released.get(r, Fraction(0)) + v
        counts = []
        for index in candidates:
            trial = [zone.copy() for zone in zones]
            for r, v in request.items():
                trial[index].available[r] = trial[index].available.get(r, Fraction(0)) + v
            counts.append(_pack(view, shape, trial, released)[0] - baseline)
        metadata = pod.get("metadata") or {}
        gains.append(
            FreeingGain(
                node=view.name,
                pod=f"{metadata.get('namespace')}/{metadata.get('name')}",
                at_least=min(counts),
                at_most=max(counts),
                exact=len(candidates) == 1,
            )
        )
    return [gain for gain in gains if gain.at_most > 0]


# --- explain ------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Explanation:
    pod: str
    qos: str
    scheduler: str
    numa_aware_scheduler: bool
    node: str | None
    phase: str
    scheduled: str | None  # the PodScheduled condition's message where it is False
    rejection: str | None  # "TopologyAffinityError: ..." from the kubelet
    events: list[str] = field(default_factory=list)
    nrt: str | None = None  # "missing", "stale (...)", "current"
    nrt_written: str | None = None  # the object's last write (managedFields), as the API server stamped it
    rejected_at: str | None = None  # the kubelet's rejection event, where the API still has it
    numa_state: list[str] = field(default_factory=list)  # per NUMA node of its node, from the NRT
    node_fit: NodeFit | None = None
    fits_on: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod, "qos": self.qos, "scheduler": self.scheduler,
            "numa_aware_scheduler": self.numa_aware_scheduler, "node": self.node, "phase": self.phase,
            "scheduling": self.scheduled, "kubelet_rejection": self.rejection, "events": self.events,
            "nrt": self.nrt, "nrt_written": self.nrt_written, "rejected_at": self.rejected_at,
            "numa_state": self.numa_state,
            "fit_on_its_node": None if self.node_fit is None else self.node_fit.as_json(),
            "fits_now_on": self.fits_on, "likely_causes": self.causes,
        }  # fmt: skip

    def text(self) -> str:
        lines = [
            f"pod {self.pod}: {self.phase}, QoS {self.qos}, scheduler {self.scheduler}"
            + ("" if self.numa_aware_scheduler else " (not NUMA-aware)"),
            f"  node: {self.node or 'not bound'}",
        ]
        if self.scheduled:
            lines.append(f"  scheduler says: {self.scheduled}")
        if self.rejection:
            lines.append(f"  kubelet rejected it: {self.rejection}")
        lines.extend(f"  event: {event}" for event in self.events)
        if self.node:
            lines.append(f"  NodeResourceTopology of {self.node}: {self.nrt}")
            if self.nrt_written:
                when = f"  written {self.nrt_written}"
                if self.rejected_at:
                    changed = self.nrt_written >= self.rejected_at  # RFC 3339 in UTC, to the second
                    when += f", the rejection at {self.rejected_at}: " + (
                        "written since (the state shown is now's, maybe not that moment's)"
                        if changed
                        else "unchanged since (the state shown is the one the kubelet judged against)"
                    )
                lines.append(when)
            lines.extend(f"    {state}" for state in self.numa_state)
        if self.node_fit is not None and self.node_fit.verdict is not None:
            verdict = "fits" if self.node_fit.fits else f"does not fit ({self.node_fit.reason})"
            lines.append(f"  on {self.node} now, as the NRT shows it: {verdict}")
        lines.append(f"  fits now on: {', '.join(self.fits_on) or 'no node'}")
        lines.append("  likely cause:" if self.causes else "  likely cause: none found")
        lines.extend(f"    - {cause}" for cause in self.causes)
        return "\n".join(lines) + "\n"


def explain(
    api: KubeApi, namespace: str, name: str, *, numa_schedulers: Sequence[str] = DEFAULT_NUMA_SCHEDULERS
) -> Explanation:
    pod = api.get(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}")
    if pod is None:
        raise ApiNotFound(f"pod {namespace}/{name} not found")
    loaded = load(api)
    shape = pod_shape(pod)
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    node = spec.get("nodeName") or None
    scheduler = str(spec.get("schedulerName") or "default-scheduler")
    scheduled = next(
        (
            str(c.get("message") or c.get("reason") or "")
            for c in status.get("conditions") or []
            if isinstance(c, dict) and c.get("type") == "PodScheduled" and c.get("status") == "False"
        ),
        None,
    )
    rejection = (
        f"{status.get('reason')}: {status.get('message') or ''}".strip()
        if status.get("reason") in KUBELET_REJECTIONS or (status.get("phase") == "Failed" and status.get("reason"))
        else None
    )
    uid = str((pod.get("metadata") or {}).get("uid") or "")
    events, _ = api.list(
        f"/api/v1/namespaces/{quote(namespace, safe='')}/events", f"involvedObject.name={name},involvedObject.uid={uid}"
    )
    result = Explanation(
        pod=f"{namespace}/{name}",
        qos=shape.qos,
        scheduler=scheduler,
        numa_aware_scheduler=scheduler in numa_schedulers,
        node=node,
        phase=str(status.get("phase") or "Unknown"),
        scheduled=scheduled,
        rejection=rejection,
        events=[
            f"{e.get('reason')}: {e.get('message')}"
            for e in sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
            if isinstance(e, dict) and e.get("type") == "Warning" and e.get("message") != scheduled
        ][-5:],
    )
    # Every node judged without the pod itself: what it holds where it is bound is what it asks for.
    views = [replace(v, pods=tuple(p for p in v.pods if _uid(p) != uid)) for v in loaded]
    fits = fit(views, shape)
    selector = spec.get("nodeSelector") or {}
    labels = {v.name: (v.node.get("metadata") or {}).get("labels") or {} for v in views}
    result.fits_on = [f.node for f in fits if f.fits and all(labels[f.node].get(k) == v for k, v in selector.items())]
    view = next((v for v in views if v.name == node), None)
    if view is not None:
        result.nrt = "missing" if view.nrt is None else staleness(next(v for v in loaded if v.name == node))
        if view.nrt is not None:
            result.nrt_written = _last_write(view.nrt)
            result.numa_state = numa_state(view.nrt)
        result.rejected_at = max(
            (
                str(e.get("lastTimestamp") or e.get("eventTime") or "")
                for e in events
                if isinstance(e, dict) and e.get("reason") in KUBELET_REJECTIONS
            ),
            default=None,
        )
        result.node_fit = next(f for f in fits if f.node == view.name)
    result.causes = causes(result, shape, views, fits)
    return result


def _uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def _last_write(nrt: Mapping[str, Any]) -> str | None:
    stamps = [str(m.get("time")) for m in (nrt.get("metadata") or {}).get("managedFields") or [] if m.get("time")]
    return max(stamps, default=None)


def numa_state(nrt: Mapping[str, Any]) -> list[str]:
    """`node-0: cpu 8 of 14 free, memory 62Gi of 63Gi free, nvidia.com/gpu 2 of 2 free` per NUMA node."""
    lines = []
    for zone in numa_zones(nrt):
        parts = [
            f"{r} {format_quantity(r, zone.available[r])}"
            + (f" of {format_quantity(r, zone.allocatable[r])}" if r in zone.allocatable else "")
            + " free"
            for r in sorted(zone.available)
        ]
        lines.append(f"node-{zone.numa_node}: " + ", ".join(parts))
    return lines


def staleness(view: NodeView) -> str:
    """Whether the NRT's fingerprint names the pods running on the node (the agent's method), as the
    scheduler's cache compares them, with the Shared informer (Running pods) or the Dedicated one (the
    finished and rejected pods too); pods bound but not running yet are expected to make it differ."""
    nrt = view.nrt or {}
    attributes = {a.get("name"): a.get("value") for a in nrt.get("attributes") or [] if isinstance(a, dict)}
    published = attributes.get(ATTRIBUTE)
    if not published:
        return "current as far as can be told (no pod fingerprint published)"
    method = attributes.get(ATTRIBUTE_METHOD) or METHOD_ALL
    listed = {r for zone in numa_zones(nrt) for r in zone.available}
    running = [p for p in view.pods if (p.get("status") or {}).get("phase") == "Running"]

    def named(pods: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        counted = []
        for pod in pods:
            exclusive_native, non_native = exclusivity(pod)
            if method == METHOD_ALL or exclusive_native or non_native & listed:
                metadata = pod.get("metadata") or {}
                counted.append((str(metadata.get("namespace") or ""), str(metadata.get("name") or "")))
        return counted

    counted, finished = named(running), named(view.finished)
    if fingerprint(counted) == published:
        return f"current (its fingerprint names the {len(counted)} pods running there)"
    if finished and fingerprint(counted + finished) == published:
        return (
            f"current (its fingerprint names the {len(counted)} pods running there and the {len(finished)} "
            "finished or rejected ones, as a Dedicated informer counts them)"
        )
    waiting = len(view.pods) - len(running)
    return f"stale: its fingerprint does not name the {len(counted)} pods running there" + (
        f" ({waiting} bound, not running yet)" if waiting else " (the agent is behind, or down)"
    )


def causes(result: Explanation, shape: PodShape, views: Sequence[NodeView], fits: Sequence[NodeFit]) -> list[str]:
    """The likely causes, from the troubleshooting list: each one that holds, most specific first."""
    found = []
    with_nrt = [v for v in views if v.nrt is not None]
    if shape.qos != GUARANTEED:
        found.append(
            f"not Guaranteed (QoS {shape.qos}): the kubelet pins no CPUs or memory for it, only devices are aligned"
        )
    else:
        fractional = [
            f"{c.name} cpu {format_quantity('cpu', c.requests['cpu'])}"
            for c in shape.containers
            if c.requests.get("cpu", Fraction(0)).denominator != 1
        ]
        if fractional:
            found.append(f"fractional CPU ({', '.join(fractional)}): no exclusive CPUs, so no CPU alignment")
    largest = _largest_zone(with_nrt)
    for container in shape.containers:
        for resource, value in container.requests.items():
            if value > 0 and resource in largest and value > largest[resource]:
                found.append(
                    f"larger than any NUMA node: {container.name} wants {resource} {format_quantity(resource, value)}, "
                    f"the largest NUMA node holds {format_quantity(resource, largest[resource])}"
                )
    stranded = None if any(c.startswith("larger than") for c in found) else _stranded(views, shape, fits, result.node)
    if stranded:
        found.append(f"stranded: {stranded}")
    if result.node and result.nrt == "missing":
        found.append(f"no NodeResourceTopology for {result.node}: the scheduler could not check NUMA alignment there")
    if not with_nrt:
        found.append("no NodeResourceTopology objects in the cluster: is the agent installed?")
    if not result.numa_aware_scheduler:
        found.append(
            f"scheduler not NUMA-aware: {result.scheduler} does not read NodeResourceTopology (set schedulerName to "
            "the NUMA-aware profile, e.g. topo-aware-scheduler)"
        )
    if result.scheduled and "invalid node topology data" in result.scheduled:
        found.append(
            'the NUMA-aware scheduler\'s cache holds a node as stale ("invalid node topology data"): the pods it '
            "knows there and the NRT's fingerprint disagree until the agent's object names the same pods; its "
            "Dedicated informer also counts finished and rejected pods there, which the agents name only when "
            "told (nrt.schedulerInformerMode: Dedicated, their default): tell them the scheduler's mode, or delete "
            "those pods"
        )
    if result.nrt and result.nrt.startswith("stale"):
        found.append(f"the NRT of {result.node} was stale: {result.nrt}")
    if result.rejection and result.node_fit is not None and result.node_fit.fits:
        found.append(
            f"{result.node} fits it now: its NUMA state changed between scheduling and admission (another pod "
            "admitted first, or the scheduler read an object that did not yet show a pod)"
        )
    return found


def _largest_zone(views: Sequence[NodeView]) -> dict[str, Fraction]:
    largest: dict[str, Fraction] = {}
    for view in views:
        for zone in numa_zones(view.nrt or {}):
            for resource, value in (zone.allocatable or zone.available).items():
                largest[resource] = max(largest.get(resource, Fraction(0)), value)
    return largest


def _stranded(views: Sequence[NodeView], shape: PodShape, fits: Sequence[NodeFit], first: str | None) -> str | None:
    """A node (`first` looked at first) that has enough of every resource in all, but not on one NUMA node;
    the resources named are those no single NUMA node has enough of."""
    by_name = {v.name: v for v in views}
    request = shape.effective_request()
    for node_fit in sorted(fits, key=lambda f: f.node != first):
        view = by_name.get(node_fit.node)
        if view is None or view.nrt is None or node_fit.fits or node_fit.node_shortfalls:
            continue
        zones = numa_zones(view.nrt)
        totals = {
            r: sum((z.available[r] for z in zones if r in z.available), Fraction(0))
            for r in request
            if any(r in z.available for z in zones)
        }
        if totals and all(totals[r] >= request[r] for r in totals):
            parts = ", ".join(
                f"{r} {format_quantity(r, totals[r])} free in all, at most "
                f"{format_quantity(r, max(z.available.get(r, Fraction(0)) for z in zones))} on one NUMA node"
                for r in sorted(totals)
                if request[r] > max(z.available.get(r, Fraction(0)) for z in zones)
            )
            if not parts:
                return f"{view.name} has each resource on some NUMA node, but no NUMA node has all of them"
            return f"{view.name} has enough in all but not on one NUMA node ({parts})"
    return None


def _exact(value: Any) -> Fraction:
    try:
        return parse_quantity_exact(value)
    except ValueError:
        return Fraction(0)


def _number(value: Fraction) -> int | float:
    return int(value) if value.denominator == 1 else float(value)


# --- for people ---------------------------------------------------------------------------------------


def fit_table(fits: Sequence[NodeFit]) -> str:
    rows = [("NODE", "FITS", "NUMA", "POLICY", "REASON / NOTE")]
    for f in fits:
        mark = "?" if f.fits is None else ("yes" if f.fits else "no")
        numa = ",".join(str(n) for n in f.numa_nodes) or "-"
        rows.append((f.node, mark, numa, f.policy or "(no NRT)", f.reason or "; ".join(f.notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    fitting = sum(1 for f in fits if f.fits)
    unknown = sum(1 for f in fits if f.fits is None)
    lines.append(
        f"fits on {fitting} of {len(fits)} nodes" + (f" ({unknown} without an NRT: unknown)" if unknown else "")
    )
    return "\n".join(line.rstrip() for line in lines) + "\n"


def plan_table(plans: Sequence[ProfilePlan]) -> str:
    lines = []
    for p in plans:
        lines.append(
            f"profile {p.profile}: {p.aligned} more pods aligned on {sum(1 for c in p.per_node.values() if c)} "
            f"of {len(p.per_node)} NUMA-filtered nodes ({p.unaligned} if NUMA did not matter: "
            f"{p.fragmentation} lost to fragmentation)"
        )
        for resource in sorted(p.available):
            lines.append(
                f"  {resource}: {format_quantity(resource, p.available[resource])} available, "
                f"{format_quantity(resource, p.stranded.get(resource, Fraction(0)))} stranded for this profile"
            )
        for gain in p.freeing:
            more = str(gain.at_least) if gain.at_least == gain.at_most else f"{gain.at_least} to {gain.at_most}"
            where = "" if gain.exact else " (its NUMA node is not known: a range over the candidates)"
            lines.append(f"  freeing {gain.pod} on {gain.node} admits {more} more{where}")
    return "\n".join(lines) + "\n"


def connect(kubeconfig: Path | None, context: str | None) -> KubeApi:
    """A client as kubectl's: a kubeconfig that skips TLS verification does so without a warning per request."""
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    return KubeApi(user_client(kubeconfig, context))
