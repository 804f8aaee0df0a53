"""Why a pod is Pending or was rejected: its scheduler, the kubelet's rejection, its node's NRT (current or
stale, as the scheduler's cache compares fingerprints), where it fits now, and the likely causes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any
from urllib.parse import quote

from exporter.cluster.fit import NodeFit, fit
from exporter.cluster.load import DEFAULT_NUMA_SCHEDULERS, NodeView, load
from exporter.cluster.nrtmatch import (
    PodShape,
    format_quantity,
    numa_zones,
    pod_shape,
)
from exporter.errors import ApiNotFound
from exporter.fingerprint import ATTRIBUTE, ATTRIBUTE_METHOD, METHOD_ALL, fingerprint
from exporter.kubeapi import KubeApi
from exporter.kubelet.podspec import GUARANTEED, exclusivity

KUBELET_REJECTIONS = ("TopologyAffinityError", "UnexpectedAdmissionError", "SMTAlignmentError")



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
