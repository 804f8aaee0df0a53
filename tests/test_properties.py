"""Property-based: no input makes a reader raise anything but a SourceError, and the accounting
invariants hold for any kubelet state: capacity >= allocatable >= available >= 0, stranded <= available."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.accounting import KubeletState
from exporter.discovery import discover
from exporter.errors import SourceError
from exporter.model import (
    CpuManagerState,
    DeviceAllocation,
    DeviceCheckpoint,
    KubeletConfig,
    MemoryManagerState,
    MemoryNumaState,
    MemoryTable,
    Topology,
)
from exporter.profiles import Profile
from exporter.snapshot import account
from exporter.sources.cpu_manager import parse_cpu_manager_state
from exporter.sources.device_checkpoint import parse_device_checkpoint
from exporter.sources.kubelet_config import parse_kubelet_config
from exporter.sources.memory_manager import parse_memory_manager_state
from tests.hosttree import fixture_machine
from tests.kubelet_files import KUBELET_FIXTURES

PARSERS: list[tuple[str, Callable[[bytes], Any]]] = [
    ("cpu_manager_state", parse_cpu_manager_state),
    ("memory_manager_state", parse_memory_manager_state),
    ("kubelet_internal_checkpoint", parse_device_checkpoint),
]
FIXTURES = {
    prefix: [p.read_bytes() for p in sorted(KUBELET_FIXTURES.glob(f"{prefix}.*.json"))] for prefix, _ in PARSERS
}
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KEYS = ["policyName", "defaultCpuSet", "entries", "checksum", "machineState", "memoryMap", "Data", "PodDeviceEntries",
        "RegisteredDevices", "DeviceIDs", "Checksum", "podEntries", "data", "dataChecksum", "cells", "numaAffinity"]  # fmt: skip


def accepts_or_refuses(parse: Callable[[bytes], Any], raw: bytes) -> None:
    try:
        parse(raw)
    except SourceError as exc:
        assert exc.reason in {"parse", "format", "checksum"}, exc


@pytest.mark.parametrize(("prefix", "parse"), PARSERS, ids=[p for p, _ in PARSERS])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_fixtures(prefix: str, parse: Callable[[bytes], Any], data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(FIXTURES[prefix])))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        position = data.draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[position] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "cut":
            del raw[position:]
        elif action == "insert":
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=6))
        elif raw:
            del raw[position : position + data.draw(st.integers(min_value=1, max_value=8))]
    accepts_or_refuses(parse, bytes(raw))


@pytest.mark.parametrize(("prefix", "parse"), PARSERS, ids=[p for p, _ in PARSERS])
@settings(max_examples=150, deadline=None)
@given(value=JSON, keys=st.lists(st.sampled_from(KEYS), max_size=4), inner=st.lists(JSON, max_size=4))
def test_random_json(prefix: str, parse: Callable[[bytes], Any], value: Any, keys: list[str], inner: list[Any]) -> None:
    document = dict(zip(keys, inner, strict=False)) if keys else value
    accepts_or_refuses(parse, json.dumps(document).encode())


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_random_kubelet_config(text: str) -> None:
    try:
        parse_kubelet_config(text.encode())
    except SourceError as exc:
        assert exc.reason in {"parse", "format"}


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
        assert fit.aligned == sum(fit.per_numa.values())
        assert 0 <= fit.aligned <= fit.unaligned
