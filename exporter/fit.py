"""How many pods of each profile still fit, per NUMA node and for the node, and what is stranded.

* fit(p, n)     = min over NUMA-accounted r in p of floor(available(n, r) / p[r])
* aligned(p)    = sum over n of fit(p, n): what `single-numa-node` can still admit
* unaligned(p)  = min over NUMA-accounted r in p of floor(sum over n of available(n, r) / p[r])
* stranded(n,r) = available(n, r) - max over p with p[r] > 0 of fit(p, n) * p[r], never below 0;
  0 when no profile asks for r (nothing to be stranded against), and for resources that are not
  NUMA-accounted.
Devices with no known NUMA node (-1) count toward unaligned fit only.
A profile with none of its resources NUMA-accounted, or one of them still unknown, gets no fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.accounting import ResourceAccount
from exporter.model import UNKNOWN_NUMA_NODE
from exporter.profiles import Profile


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
) -> tuple[ProfileFit, ...]:
    available = _available(accounts)
    nodes = sorted(numa_nodes)
    fits = []
    for profile in profiles:
        parts = {r: amount for r, amount in profile.requests.items() if r in numa_accounted}
        known = {r: available.get(r, {}) for r in parts}
        if not parts or any(per_numa is None for per_numa in known.values()):
            continue
        tables = {r: table for r, table in known.items() if table is not None}
        per_numa = {n: min(tables[r].get(n, 0) // amount for r, amount in parts.items()) for n in nodes}
        unaligned = min(sum(tables[r].values()) // amount for r, amount in parts.items())
        fits.append(
            ProfileFit(profile=profile.name, per_numa=per_numa, aligned=sum(per_numa.values()), unaligned=unaligned)
        )
    return tuple(fits)


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
