"""The cluster as the API server holds it: every Node, its NodeResourceTopology object, the pods bound there.

Read-only: get and list on nodes, pods, events and noderesourcetopologies (docs/product.md, "Cluster view").
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import urllib3

from exporter.cluster.nrtmatch import PodShape, numa_zones, pod_shape
from exporter.errors import ApiCrdMissing, ApiError
from exporter.kubeapi import NRT_COLLECTION, TERMINAL_PHASES, KubeApi, user_client
from exporter.units import parse_quantity_exact

DEFAULT_NUMA_SCHEDULERS = ("topo-aware-scheduler",)



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



def connect(kubeconfig: Path | None, context: str | None) -> KubeApi:
    """A client as kubectl's: a kubeconfig that skips TLS verification does so without a warning per request."""
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    return KubeApi(user_client(kubeconfig, context))



def _exact(value: Any) -> Fraction:
    try:
        return parse_quantity_exact(value)
    except ValueError:
        return Fraction(0)


def unknown_resources(views: Sequence[NodeView], shapes: Mapping[str, PodShape]) -> list[str]:
    """What each shape asks for that no node has (neither in its allocatable nor in its NRT's zones): a typo
    such as `cpus` or `nvidia.com/gpus` fits nowhere, and says so instead of a silent 0."""
    known: set[str] = {"pods"}
    for view in views:
        known.update(((view.node.get("status") or {}).get("allocatable") or {}).keys())
        known.update(r for zone in numa_zones(view.nrt or {}) for r in zone.available)
    found = []
    for name, shape in shapes.items():
        for resource in sorted(set(shape.effective_request()) - known):
            close = difflib.get_close_matches(resource, sorted(known), n=1)
            found.append(f"{name}: no node has {resource}" + (f" (did you mean {close[0]}?)" if close else ""))
    return found
