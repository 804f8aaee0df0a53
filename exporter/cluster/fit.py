"""Where a pod shape fits: a node fits when the NUMA-aware scheduler would let it through (nrtmatch.py, the
NodeResourceTopologyMatch filter) and its allocatable, less the requests of the pods bound there, covers the
pod (NodeResourcesFit's arithmetic; taints, affinity and other filters are not judged).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from exporter.cluster.load import NodeView
from exporter.cluster.nrtmatch import (
    PodShape,
    Verdict,
    filter_node,
    format_quantity,
    node_resources,
    topology_manager,
)
from exporter.errors import ConfigError
from exporter.units import parse_quantity_exact


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
