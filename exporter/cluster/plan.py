"""What the fleet can still take: per profile, pods aligned one after another as the kubelet admits them,
what is stranded for it, and the pods whose freeing admits the most."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from exporter.cluster.load import NodeView
from exporter.cluster.nrtmatch import (
    PodShape,
    Zone,
    align,
    is_numa_affine,
    node_resources,
    numa_zones,
    pod_shape,
    topology_manager,
)
from exporter.kubelet.podspec import GUARANTEED

PLAN_LIMIT = 10_000  # pods of one profile counted per node at most



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



def _number(value: Fraction) -> int | float:
    return int(value) if value.denominator == 1 else float(value)
