"""Property-based: the accounting invariants hold for any kubelet state:
capacity >= allocatable >= available >= 0 and stranded <= available. (Parsers are fuzzed in test_fuzz.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.hardware.discovery import discover
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.dra import DraView
from exporter.kubelet.profiles import Profile
from exporter.model import (
    CpuManagerState,
    DeviceAllocation,
    DeviceCheckpoint,
    DraDeviceRef,
    KubeletConfig,
    MemoryManagerState,
    MemoryNumaState,
    MemoryTable,
    Topology,
)
from exporter.snapshot import account
from exporter.views.render import render_json
from tests.hosttree import fixture_machine

_TOPOLOGY: list[Topology] = []


def topology() -> Topology:
    if not _TOPOLOGY:
        import tempfile

        _TOPOLOGY.append(discover(fixture_machine(Path(tempfile.mkdtemp())).paths, use_nvml=False, use_udev=False))
    return _TOPOLOGY[0]


CPUS = st.frozensets(st.integers(min_value=0, max_value=40), max_size=40)
BYTES = st.integers(min_value=0, max_value=2**40)
TABLES = st.builds(MemoryTable, total_bytes=BYTES, system_reserved_bytes=BYTES, allocatable_bytes=BYTES,
                   reserved_bytes=BYTES, free_bytes=BYTES)  # fmt: skip
IDS = st.sampled_from(["GPU-a", "GPU-b", "0000:3b:02.0", "0000:af:02.1", "x", "0000:99:00.0"])


@st.composite
def kubelet_states(draw: st.DrawFn) -> KubeletState:
    cpu = CpuManagerState(
        version="v2",
        policy_name=draw(st.sampled_from(["none", "static"])),
        default_cpuset=draw(CPUS),
        entries=draw(
            st.dictionaries(st.text(max_size=3), st.dictionaries(st.text(max_size=3), CPUS, max_size=3), max_size=3)
        ),
        pod_entries={},
        checksum_verified=True,
    )
    machine = {
        numa: MemoryNumaState(
            numa_node=numa,
            number_of_assignments=0,
            memory_map=draw(st.dictionaries(st.sampled_from(["memory", "hugepages-2Mi", "hugepages-1Gi"]), TABLES)),
            cells=(numa,),
        )
        for numa in draw(st.sets(st.integers(min_value=-1, max_value=3), max_size=3))
    }
    memory = MemoryManagerState(version="v1", policy_name=draw(st.sampled_from(["None", "Static"])), machine_state=machine,
                                entries={}, pod_entries={})  # fmt: skip
    allocations = tuple(
        DeviceAllocation(pod_uid=draw(st.text(max_size=2)), container="c", resource=draw(st.sampled_from(["r/a", "r/b"])),
                         devices_by_numa=draw(st.dictionaries(st.integers(min_value=-1, max_value=3), st.tuples(IDS, IDS))))
        for _ in range(draw(st.integers(min_value=0, max_value=4)))
    )  # fmt: skip
    devices = DeviceCheckpoint(
        version="v2",
        allocations=allocations,
        registered=draw(st.dictionaries(st.sampled_from(["r/a", "r/b"]), st.tuples(IDS, IDS))),
    )
    config = KubeletConfig(reserved_system_cpus=draw(CPUS), reserved_memory=draw(
        st.dictionaries(st.integers(min_value=0, max_value=2), st.dictionaries(st.sampled_from(["memory", "hugepages-2Mi"]), BYTES))))  # fmt: skip
    return KubeletState(
        config=config,
        cpu=draw(st.none() | st.just(cpu)),
        memory=draw(st.none() | st.just(memory)),
        devices=draw(st.none() | st.just(devices)),
    )


PROFILES = st.lists(
    st.builds(
        Profile,
        name=st.text(min_size=1, max_size=4),
        requests=st.dictionaries(st.sampled_from(["cpu", "memory", "hugepages-2Mi", "r/a", "r/b"]),
                                 st.integers(min_value=1, max_value=2**33), min_size=1, max_size=3),
    ),
    max_size=3,
    unique_by=lambda profile: profile.name,
).map(tuple)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(state=kubelet_states(), profiles=st.none() | PROFILES)
def test_accounting_invariants_hold_for_any_state(state: KubeletState, profiles: tuple[Profile, ...] | None) -> None:
    accounting = account(topology(), state, profiles=profiles)
    assert accounting.accounts
    for entry in accounting.accounts:
        assert entry.capacity >= entry.allocatable >= 0
        if entry.available is not None:
            assert entry.allocatable >= entry.available >= 0
            assert 0 <= entry.stranded <= entry.available
        else:
            assert entry.stranded == 0
    for fit in accounting.fits:
        # NUMA nodes share the pool of devices whose plugin reports no topology, so the nodes' own fits can
        # add up to more than the node admits; without such devices they add up exactly.
        assert fit.aligned <= sum(fit.per_numa.values())
        assert 0 <= fit.aligned <= fit.unaligned
        if not any(a.numa_node == -1 and a.resource in accounting.numa_accounted for a in accounting.accounts):
            assert fit.aligned == sum(fit.per_numa.values())


_refs = st.builds(
    DraDeviceRef,
    driver=st.sampled_from(["gpu.example.com", "nic.example.com"]),
    pool=st.sampled_from(["node-a", "node-b"]),
    device=st.text("abcdefgh-0123456789", min_size=1, max_size=8),
)


@given(
    allocated=st.frozensets(_refs, max_size=40),
    cpus=st.frozensets(st.integers(0, 255), max_size=40),
    order=st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_json_renders_any_set_in_one_order(allocated: frozenset[DraDeviceRef], cpus: frozenset[int], order: Any) -> None:
    """A snapshot's sets render deterministically whatever they hold (DRA device refs are dataclasses, which do
    not order): the same set built in another order renders the same, sorted, and the JSON reads back."""
    view = DraView(devices=(), allocated=allocated, held={("uid", "c"): tuple(allocated)}, exclusive_cpus=cpus)
    shuffled = list(allocated)
    order.shuffle(shuffled)
    again = DraView(devices=(), allocated=frozenset(shuffled), held={("uid", "c"): tuple(allocated)},
                    exclusive_cpus=frozenset(sorted(cpus, reverse=True)))  # fmt: skip
    text = render_json(view)
    assert text == render_json(again)
    back = json.loads(text)
    assert back["exclusive_cpus"] == sorted(cpus)
    assert len(back["allocated"]) == len(allocated)
    keys = [(r["driver"], r["pool"], r["device"]) for r in back["allocated"]]
    assert keys == sorted(keys), "by their fields in order: driver, pool, device"
