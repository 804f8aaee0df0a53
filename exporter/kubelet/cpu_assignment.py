"""The kubelet CPU manager's topology-aware CPU picker (`takeByTopology`), ported from Kubernetes v1.36.

K `pkg/kubelet/cm/cpumanager/cpu_assignment.go` (`takeByTopologyNUMAPacked`, `takeByTopologyNUMADistributed`)
and `topology/topology.go` (`Discover`, `CPUDetails`). The kubelet uses it to choose the reserved CPUs when
`reservedSystemCPUs` is unset, and to pick a container's exclusive CPUs. Every ordering rule is the kubelet's:

* a CPU's core id is the lowest thread id of its cadvisor core (threads sharing socket and `core_id` on one
  NUMA node); a CPU listed by several NUMA nodes belongs to the last of them (cadvisor lists nodes in id order
  and `Discover` overwrites);
* "free" socket/core means all of `NumCPUs / NumSockets` (resp. `/ NumCores`) CPUs available, as upstream;
* candidates are sorted by how many available CPUs they hold (fewest first), then by id; NUMA nodes come
  before sockets when there are at least as many sockets as NUMA nodes, sockets first otherwise.

The differential tests (tests/integration/test_oracle_differential.py) hold this module to the kubelet's own code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

from exporter.cpuset import CpuSet
from exporter.model import Topology, option_enabled


@dataclass(frozen=True, slots=True)
class CpuInfo:
    core: int
    socket: int
    numa_node: int
    uncore: int


class CpuTopology:
    """The kubelet's `CPUTopology` of a host: every online CPU with its core, socket, NUMA node, L3 id."""

    def __init__(self, details: Mapping[int, CpuInfo], *, num_sockets: int) -> None:
        self.details = dict(details)
        self.num_cpus = len(self.details)
        self.num_sockets = max(num_sockets, 1)
        self.num_cores = len({info.core for info in self.details.values()})
        self.num_numa_nodes = len({info.numa_node for info in self.details.values()})

    @classmethod
    def from_topology(cls, topology: Topology) -> CpuTopology:
        numa_of = kubelet_numa_node_of_cpu(topology)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for cpu in topology.cpus:
            if cpu.cpu in numa_of:
                groups.setdefault((numa_of[cpu.cpu], cpu.socket_id, cpu.core_id), []).append(cpu.cpu)
        uncore = topology.uncore_of_cpu()
        details = {}
        for (numa, socket, _), threads in groups.items():
            core = min(threads)
            for thread in threads:
                details[thread] = CpuInfo(core=core, socket=socket, numa_node=numa, uncore=uncore.get(thread, 0))
        return cls(details, num_sockets=len({cpu.socket_id for cpu in topology.cpus if cpu.cpu in details}))

    @cached_property
    def cpus_per_core(self) -> int:
        return self.num_cpus // self.num_cores if self.num_cores else 0

    @cached_property
    def cpus_per_socket(self) -> int:
        return self.num_cpus // self.num_sockets

    @cached_property
    def all_details(self) -> _Details:
        """Every CPU's groupings (read-only: accumulators take from their own copy)."""
        return _Details(self, self.details)

    def numa_node_cpus(self) -> dict[int, CpuSet]:
        nodes: dict[int, set[int]] = {}
        for cpu, info in self.details.items():
            nodes.setdefault(info.numa_node, set()).add(cpu)
        return {numa: frozenset(cpus) for numa, cpus in nodes.items()}

    def core_cpus(self, cpus: Iterable[int]) -> CpuSet:
        """All threads of the cores the given CPUs sit on (the kubelet's reserved *physical* CPUs)."""
        cores = {self.details[cpu].core for cpu in cpus if cpu in self.details}
        return frozenset(cpu for cpu, info in self.details.items() if info.core in cores)


def kubelet_numa_node_of_cpu(topology: Topology) -> dict[int, int]:
    """CPU id -> the NUMA node the kubelet files it under: the highest-numbered node listing it."""
    owner: dict[int, int] = {}
    for numa in sorted(topology.numa_nodes, key=lambda node: node.numa_node):
        for cpu in numa.cpus:
            owner[cpu] = numa.numa_node
    return owner


class _Details:
    """`CPUDetails` restricted to a set of CPUs, with the groupings the accumulator asks for."""

    __slots__ = ("_by_core", "_by_numa", "_by_socket", "_by_uncore", "cpus")

    def __init__(self, topo: CpuTopology, cpus: Iterable[int]) -> None:
        self.cpus = set(cpus)
        self._by_numa: dict[int, set[int]] = {}
        self._by_socket: dict[int, set[int]] = {}
        self._by_core: dict[int, set[int]] = {}
        self._by_uncore: dict[int, set[int]] = {}
        for cpu in self.cpus:
            info = topo.details[cpu]
            self._by_numa.setdefault(info.numa_node, set()).add(cpu)
            self._by_socket.setdefault(info.socket, set()).add(cpu)
            self._by_core.setdefault(info.core, set()).add(cpu)
            self._by_uncore.setdefault(info.uncore, set()).add(cpu)

    def remove(self, topo: CpuTopology, cpus: Iterable[int]) -> None:
        for cpu in cpus:
            if cpu not in self.cpus:
                continue
            self.cpus.discard(cpu)
            info = topo.details[cpu]
            for table, key in (
                (self._by_numa, info.numa_node),
                (self._by_socket, info.socket),
                (self._by_core, info.core),
                (self._by_uncore, info.uncore),
            ):
                members = table[key]
                members.discard(cpu)
                if not members:
                    del table[key]

    def numa_nodes(self) -> list[int]:
        return list(self._by_numa)

    def sockets(self) -> list[int]:
        return list(self._by_socket)

    def in_numa(self, numa: int) -> set[int]:
        return self._by_numa.get(numa, set())

    def in_socket(self, socket: int) -> set[int]:
        return self._by_socket.get(socket, set())

    def in_core(self, core: int) -> set[int]:
        return self._by_core.get(core, set())

    def in_uncore(self, uncore: int) -> set[int]:
        return self._by_uncore.get(uncore, set())


class _Accumulator:
    def __init__(self, topo: CpuTopology, available: Iterable[int], count: int, *, spread: bool) -> None:
        self.topo = topo
        self.details = _Details(topo, (cpu for cpu in available if cpu in topo.details))
        self.needed = count
        self.result: set[int] = set()
        self.spread = spread
        self.numa_first = topo.num_sockets >= topo.num_numa_nodes
        self._all = topo.all_details

    # --- orderings ---------------------------------------------------------------------------------

    def _sorted(self, ids: Iterable[int], members: Callable[[int], set[int]]) -> list[int]:
        return sorted(ids, key=lambda key: (len(members(key)), key))

    def _numa_of_sockets(self, socket: int) -> set[int]:
        return {self.topo.details[cpu].numa_node for cpu in self.details.in_socket(socket)}

    def _sockets_of_numa(self, numa: int) -> set[int]:
        return {self.topo.details[cpu].socket for cpu in self.details.in_numa(numa)}

    def sort_numa_nodes(self) -> list[int]:
        if self.numa_first:
            return self._sorted(self.details.numa_nodes(), self.details.in_numa)
        result = []
        for socket in self.sort_sockets():
            result.extend(self._sorted(self._numa_of_sockets(socket), self.details.in_numa))
        return result

    def sort_sockets(self) -> list[int]:
        if not self.numa_first:
            return self._sorted(self.details.sockets(), self.details.in_socket)
        result = []
        for numa in self.sort_numa_nodes():
            result.extend(self._sorted(self._sockets_of_numa(numa), self.details.in_socket))
        return result

    def sort_cores(self) -> list[int]:
        result = []
        groups = (
            (self.details.in_socket(socket) for socket in self.sort_sockets())
            if self.numa_first
            else (self.details.in_numa(numa) for numa in self.sort_numa_nodes())
        )
        for cpus in groups:
            cores = {self.topo.details[cpu].core for cpu in cpus}
            result.extend(self._sorted(cores, self.details.in_core))
        return result

    def sort_uncore_caches(self) -> list[int]:
        result = []
        for numa in self.sort_numa_nodes():
            uncores = {self.topo.details[cpu].uncore for cpu in self.details.in_numa(numa)}
            result.extend(self._sorted(uncores, self.details.in_uncore))
        return result

    def sort_cpus(self) -> list[int]:
        result: list[int] = []
        if self.spread:
            for socket in self.sort_sockets():
                result.extend(sorted(self.details.in_socket(socket)))
            return result
        for core in self.sort_cores():
            result.extend(sorted(self.details.in_core(core)))
        return result

    # --- taking ------------------------------------------------------------------------------------

    def needs(self, count: int) -> bool:
        return self.needed >= count

    def satisfied(self) -> bool:
        return self.needed < 1

    def failed(self) -> bool:
        return self.needed > len(self.details.cpus)

    def take(self, cpus: Iterable[int]) -> None:
        taken = set(cpus) - self.result
        self.result |= taken
        self.details.remove(self.topo, taken)
        self.needed -= len(taken)

    def take_full_numa_nodes(self) -> None:
        for numa in self.sort_numa_nodes():
            if len(self.details.in_numa(numa)) != len(self._all.in_numa(numa)):
                continue
            cpus = self._all.in_numa(numa)
            if self.needs(len(cpus)):
                self.take(cpus)

    def take_full_sockets(self) -> None:
        for socket in self.sort_sockets():
            if len(self.details.in_socket(socket)) != self.topo.cpus_per_socket:
                continue
            cpus = self._all.in_socket(socket)
            if self.needs(len(cpus)):
                self.take(cpus)

    def take_full_cores(self) -> None:
        for core in self.sort_cores():
            if len(self.details.in_core(core)) != self.topo.cpus_per_core:
                continue
            cpus = self._all.in_core(core)
            if self.needs(len(cpus)):
                self.take(cpus)

    def take_uncore_caches(self) -> None:
        per_uncore = self.topo.num_cpus // max(len({i.uncore for i in self.topo.details.values()}), 1)
        for uncore in self.sort_uncore_caches():
            if self.needs(per_uncore):
                for candidate in self.sort_uncore_caches():
                    cpus = self._all.in_uncore(candidate)
                    if len(self.details.in_uncore(candidate)) == len(cpus) and self.needs(len(cpus)):
                        self.take(cpus)
            if self.satisfied():
                return
            self._take_partial_uncore(uncore)
            if self.satisfied():
                return

    def _take_partial_uncore(self, uncore: int) -> None:
        per_core = max(self.topo.cpus_per_core, 1)
        cores_needed = (self.needed + per_core - 1) // per_core
        free_cores = sorted(
            {self.topo.details[cpu].core for cpu in self.details.in_uncore(uncore)},
            key=lambda core: (-len(self.details.in_core(core)), core),
        )
        chosen = [core for core in free_cores if len(self.details.in_core(core)) == per_core][:cores_needed]
        cpus = sorted(cpu for core in chosen for cpu in self.details.in_core(core))
        if self.needed % 2 and per_core > 1 and len(cpus) > self.needed:
            cpus = cpus[:-1]
        if len(cpus) == self.needed:
            self.take(cpus)

    def take_remaining_cpus(self) -> None:
        for cpu in self.sort_cpus():
            self.take((cpu,))
            if self.satisfied():
                return


class NotEnoughCpus(Exception):
    """The request cannot be met from the available CPUs (the kubelet's allocation error)."""


def take_by_topology(
    topo: CpuTopology,
    available: Iterable[int],
    count: int,
    *,
    options: Mapping[str, str] | None = None,
) -> CpuSet:
    """`staticPolicy.takeByTopology`: packed, or distributed under `distribute-cpus-across-numa`; spread
    over cores under `distribute-cpus-across-cores`; uncore-aligned under `prefer-align-cpus-by-uncorecache`."""
    opts = {key: option_enabled(options or {}, key) for key in options or {}}
    spread = opts.get("distribute-cpus-across-cores", False)
    if opts.get("distribute-cpus-across-numa", False):
        group = topo.cpus_per_core if opts.get("full-pcpus-only", False) else 1
        return _numa_distributed(topo, available, count, max(group, 1), spread=spread)
    uncore = opts.get("prefer-align-cpus-by-uncorecache", False)
    return _numa_packed(topo, available, count, spread=spread, uncore=uncore)


def _numa_packed(topo: CpuTopology, available: Iterable[int], count: int, *, spread: bool, uncore: bool) -> CpuSet:
    acc = _Accumulator(topo, available, count, spread=spread)
    if acc.satisfied():
        return frozenset()
    if acc.failed():
        raise NotEnoughCpus(f"not enough cpus available to satisfy request: requested={count}")
    steps: list[Callable[[], None]] = (
        [acc.take_full_numa_nodes, acc.take_full_sockets]
        if acc.numa_first
        else [acc.take_full_sockets, acc.take_full_numa_nodes]
    )
    if uncore:
        steps.append(acc.take_uncore_caches)
    if not spread:
        steps.append(acc.take_full_cores)
    steps.append(acc.take_remaining_cpus)
    for step in steps:
        step()
        if acc.satisfied():
            return frozenset(acc.result)
    raise NotEnoughCpus("failed to allocate cpus")


def _round3(value: float) -> float:
    return round(value * 1000) / 1000


def _stdev(values: list[int]) -> float:
    mean = _round3(sum(values) / len(values))
    return _round3(math.sqrt(sum((value - mean) ** 2 for value in values) / len(values)))


def _combinations(items: list[int], k: int) -> Iterator[list[int]]:
    """Go's `iterateCombinations` order (lexicographic by position)."""
    if k < 1:
        return

    def helper(start: int, k: int, accum: list[int]) -> Iterator[list[int]]:
        if k == 0:
            yield accum
            return
        for i in range(start, len(items) - k + 1):
            yield from helper(i + 1, k - 1, [*accum, items[i]])

    yield from helper(0, k, [])


def _numa_distributed(topo: CpuTopology, available: Iterable[int], count: int, group: int, *, spread: bool) -> CpuSet:
    available = list(available)
    if count % group:
        return _numa_packed(topo, available, count, spread=spread, uncore=False)
    acc = _Accumulator(topo, available, count, spread=spread)
    if acc.satisfied():
        return frozenset()
    if acc.failed():
        raise NotEnoughCpus(f"not enough cpus available to satisfy request: requested={count}")
    numas = acc.sort_numa_nodes()
    total_numa = topo.num_numa_nodes
    groups_total = (topo.num_cpus - 1) // group + 1
    groups_per_numa = (groups_total - 1) // total_numa + 1
    groups_needed = (acc.needed - 1) // group + 1
    min_numas = (groups_needed - 1) // groups_per_numa + 1
    max_numas = min(groups_needed, len(acc.details.numa_nodes()))

    def free(numa: int) -> int:
        return len(acc.details.in_numa(numa))

    for k in range(min_numas, max_numas + 1):
        best_balance = math.inf
        best_combo: list[int] | None = None
        best_remainder: list[int] | None = None
        for combo in _combinations(numas, k):
            if best_balance == 0:
                break
            if sum(free(numa) for numa in combo) < count:
                continue
            if sum(free(numa) // group for numa in combo) * group < count:
                continue
            distribution = (count // len(combo) // group) * group
            if any(free(numa) < distribution for numa in combo):
                continue
            after = {numa: free(numa) for numa in numas}
            for numa in combo:
                after[numa] -= distribution
            remainder = count - distribution * len(combo)
            remainder_combo = [numa for numa in combo if after[numa] >= group]
            local_balance = math.inf
            local_remainder: list[int] | None = None
            if remainder == 0:
                local_balance = _stdev(list(after.values()))
            for size in range(len(remainder_combo), 0, -1):
                if remainder <= 0:
                    break
                for subset in _combinations(remainder_combo, size):
                    left = remainder
                    trial = dict(after)
                    if sum(trial[numa] for numa in subset) < left:
                        continue
                    while left > 0:
                        for numa in subset:
                            if left == 0:
                                break
                            if trial[numa] < group:
                                continue
                            trial[numa] -= group
                            left -= group
                    balance = _stdev(list(trial.values()))
                    if balance < local_balance:
                        local_balance = balance
                        local_remainder = subset
            if local_balance < best_balance:
                best_balance = local_balance
                best_remainder = local_remainder
                best_combo = combo
        if best_combo is None:
            continue
        distribution = (count // len(best_combo) // group) * group
        for numa in best_combo:
            acc.take(_numa_packed(topo, set(acc.details.in_numa(numa)), distribution, spread=spread, uncore=False))
        remainder = count - distribution * len(best_combo)
        while remainder > 0:
            for numa in best_remainder or []:
                if remainder == 0:
                    break
                if free(numa) < group:
                    continue
                acc.take(_numa_packed(topo, set(acc.details.in_numa(numa)), group, spread=spread, uncore=False))
                remainder -= group
        return frozenset(acc.result)
    return _numa_packed(topo, available, count, spread=spread, uncore=False)
