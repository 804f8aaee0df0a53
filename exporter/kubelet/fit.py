"""How many pods of each profile the kubelet still admits, per NUMA node and for the node, and what is stranded.

Every number follows the kubelet's admission (docs/product.md, "Fit"):
* a NUMA-bound resource r (pinned CPUs, Static memory and hugepages, devices whose plugin reports
  topology) must come from the pod's one NUMA node; devices whose plugin reports none (NUMA -1, the
  device manager's "don't care") come from a pool shared by all NUMA nodes;
* fit(p, n)     = how many pods of p NUMA node n alone admits: min over NUMA-bound r of floor(available(n, r)
  / p[r]), and over host-level r of floor(pool(r) / p[r]);
* aligned(p)    = how many pods of p the kubelet admits one after another under `single-numa-node`: each goes
  to the lowest-numbered NUMA node that fits it (the topology manager's narrowest preferred hint), so nodes
  fill in id order while the shared pools last;
* unaligned(p)  = min over r of floor(total available(r) / p[r]): what the node could admit if NUMA did not
  matter (`none`, `best-effort`);
* under `full-pcpus-only` a CPU request that is not a multiple of the threads per core is refused
  (SMTAlignmentError), and the node-wide count of free whole-core CPUs bounds every admission, so aligned fit
  is found by picking CPUs exactly as the CPU manager does;
* stranded(n,r) = available(n, r) - max over p with p[r] > 0 of fit(p, n) * p[r], never below 0;
  0 when no profile asks for r, for resources that are not NUMA-accounted, and for host-level ones.
A profile with none of its resources NUMA-accounted, or one of them still unknown, gets no fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.kubelet.accounting import ExclusiveCpus, ResourceAccount
from exporter.kubelet.cpu_assignment import NotEnoughCpus, take_by_topology
from exporter.kubelet.profiles import Profile
from exporter.model import UNKNOWN_NUMA_NODE


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileFit:
    profile: str
    per_numa: Mapping[int, int]
    aligned: int
    unaligned: int


def profile_fits(
    accounts: Iterable[ResourceAccount],
    *,
    profiles: Iterable[Profile],
    numa_accounted: frozenset[str],
    numa_nodes: Iterable[int],
    cpus: ExclusiveCpus | None = None,
) -> tuple[ProfileFit, ...]:
    available = _available(accounts)
    nodes = sorted(numa_nodes)
    fits = []
    for profile in profiles:
        parts = {r: amount for r, amount in profile.requests.items() if r in numa_accounted}
        known = {r: available.get(r, {}) for r in parts}
        if not parts or any(per_numa is None for per_numa in known.values()):
            continue
        shape = _Shape({r: table for r, table in known.items() if table is not None}, parts)
        whole_cores = cpus is not None and cpus.full_pcpus_only
        if whole_cores and cpus is not None and shape.bound.get("cpu", 0) % max(cpus.topology.cpus_per_core, 1):
            fits.append(ProfileFit(profile=profile.name, per_numa=dict.fromkeys(nodes, 0), aligned=0, unaligned=0))
            continue  # SMTAlignmentError: not a multiple of the threads per core
        if whole_cores and cpus is not None and "cpu" in shape.bound:
            aligned = shape.aligned_whole_cores(nodes, cpus)
        else:
            aligned = shape.aligned(nodes)
        fits.append(
            ProfileFit(
                profile=profile.name,
                per_numa={n: shape.alone(n, shape.pools) for n in nodes},
                aligned=aligned,
                unaligned=min(sum(shape.tables[r].values()) // amount for r, amount in parts.items()),
            )
        )
    return tuple(fits)


class _Shape:
    """One profile against the node: `bound` parts come from the pod's NUMA node, `pooled` ones (host-level
    devices) from the pool every NUMA node shares."""

    def __init__(self, tables: dict[str, dict[int, int]], parts: Mapping[str, int]) -> None:
        self.tables = tables
        self.bound = {r: amount for r, amount in parts.items() if set(tables[r]) - {UNKNOWN_NUMA_NODE}}
        self.pooled = {r: amount for r, amount in parts.items() if r not in self.bound}
        self.pools = {r: tables[r].get(UNKNOWN_NUMA_NODE, 0) for r in self.pooled}

    def alone(self, numa: int, pools: Mapping[str, int]) -> int:
        limits = [self.tables[r].get(numa, 0) // amount for r, amount in self.bound.items()]
        limits.extend(pools[r] // amount for r, amount in self.pooled.items())
        return max(min(limits), 0)

    def aligned(self, nodes: list[int]) -> int:
        """Fill NUMA nodes in id order; each takes what it alone admits, while the shared pools last."""
        left = dict(self.pools)
        total = 0
        for numa in nodes:
            count = self.alone(numa, left)
            for r, amount in self.pooled.items():
                left[r] -= count * amount
            total += count
        return total

    def aligned_whole_cores(self, nodes: list[int], cpus: ExclusiveCpus) -> int:
        """`full-pcpus-only`: admit pods one by one, picking each one's CPUs as the static policy does, since
        which CPUs it takes decides the node-wide count of free whole-core CPUs the next one is checked
        against (K policy_static.go `enforceSMTAlignment`, `allocateCPUs`)."""
        topo = cpus.topology
        request = self.bound["cpu"]
        free = set(cpus.available)
        others = {r: amount for r, amount in self.bound.items() if r != "cpu"}
        left = {r: dict(self.tables[r]) for r in others}
        pools = dict(self.pools)
        total = 0
        for numa in nodes:
            while all(left[r].get(numa, 0) >= amount for r, amount in others.items()):
                if any(pools[r] < amount for r, amount in self.pooled.items()):
                    return total
                aligned = {cpu for cpu in free if topo.details[cpu].numa_node == numa}
                if len(aligned) < request or len(free - cpus.reserved_physical) < request:
                    break
                try:
                    free -= take_by_topology(topo, aligned, request, options=cpus.options)
                except NotEnoughCpus:
                    break
                for r, amount in others.items():
                    left[r][numa] -= amount
                for r, amount in self.pooled.items():
                    pools[r] -= amount
                total += 1
        return total


def with_stranded(
    accounts: tuple[ResourceAccount, ...],
    *,
    profiles: Iterable[Profile],
    fits: Iterable[ProfileFit],
    numa_accounted: frozenset[str],
) -> tuple[ResourceAccount, ...]:
    by_name = {profile.name: profile for profile in profiles}
    usable: dict[tuple[int, str], int] = {}
    for fit in fits:
        for resource, amount in by_name[fit.profile].requests.items():
            for numa, count in fit.per_numa.items():
                key = (numa, resource)
                usable[key] = max(usable.get(key, 0), count * amount)
    result = []
    for account in accounts:
        key = (account.numa_node, account.resource)
        if (
            account.resource not in numa_accounted
            or account.available is None
            or account.numa_node == UNKNOWN_NUMA_NODE
            or key not in usable
        ):
            result.append(account)
            continue
        result.append(dataclasses.replace(account, stranded=max(account.available - usable[key], 0)))
    return tuple(result)


def _available(accounts: Iterable[ResourceAccount]) -> dict[str, dict[int, int] | None]:
    """resource -> {NUMA node (or -1) -> available}; None for a resource whose availability is unknown."""
    table: dict[str, dict[int, int] | None] = {}
    for account in accounts:
        if account.available is None:
            table[account.resource] = None
            continue
        per_numa = table.setdefault(account.resource, {})
        if per_numa is not None:
            per_numa[account.numa_node] = per_numa.get(account.numa_node, 0) + account.available
    return table
