"""`<kubelet>/memory_manager_state`: v1 (1.21-1.36), v2 (+ `podEntries`), v3 (1.37: `data` + `dataChecksum`).

Per-NUMA availability is `machineState[n].memoryMap[r].free`, never a sum of `entries` (init-container
blocks shrink as app containers reuse them). 1.36-era kubelets hash a `MemoryManagerCheckpointV1` struct
(text `(*state.MemoryManagerCheckpointV1){`) and their V1 verifier accepts a stored checksum of 0; both
names are tried, the V1 one first.
Policy names are `None`/`Static` (an early pre-release wrote `static`): compared case-insensitively.
"""

from __future__ import annotations

from typing import Any

from exporter.errors import SourceChecksumError, SourceFormatError
from exporter.model import MemoryBlock, MemoryManagerState, MemoryNumaState, MemoryTable
from exporter.paths import HostPaths
from exporter.sources import kubelet_json as kj
from exporter.sources.files import read_bounded

SOURCE = "memory_manager_state"
_TYPE = "*state.MemoryManagerCheckpoint"
_TYPE_V1 = "*state.MemoryManagerCheckpointV1"
_TABLE_FIELDS = (
    ("total", "TotalMemSize"),
    ("systemReserved", "SystemReserved"),
    ("allocatable", "Allocatable"),
    ("reserved", "Reserved"),
    ("free", "Free"),
)


def read_memory_manager_state(paths: HostPaths, *, limit_bytes: int = kj.DEFAULT_LIMIT_BYTES) -> MemoryManagerState:
    raw = read_bounded(paths.memory_manager_state, source=SOURCE, limit_bytes=limit_bytes)
    return parse_memory_manager_state(raw)


def parse_memory_manager_state(raw: bytes) -> MemoryManagerState:
    obj = kj.decode_object(raw, source=SOURCE)
    data = kj.field(obj, "data")
    data_checksum = kj.expect_uint(kj.field(obj, "dataChecksum"), source=SOURCE, what="dataChecksum")
    if data or data_checksum:
        text = kj.expect_str(data, source=SOURCE, what="data")
        if kj.string_checksum(text) != data_checksum:
            raise SourceChecksumError(SOURCE, f"dataChecksum {data_checksum} does not match the data it guards")
        return _state("v3", kj.decode_object(text.encode("utf-8"), source=SOURCE))
    checksum = kj.expect_uint(kj.field(obj, "checksum"), source=SOURCE, what="checksum")
    state = _state("v2" if kj.has_field(obj, "podEntries") else "v1", obj)
    text = hash_text(obj)
    if checksum != 0 and checksum not in {kj.spew_checksum(text.replace(_TYPE, _TYPE_V1, 1)), kj.spew_checksum(text)}:
        raise SourceChecksumError(SOURCE, f"checksum {checksum} does not match the file's content")
    return state


def _state(version: str, obj: dict[str, Any]) -> MemoryManagerState:
    policy = kj.expect_str(kj.field(obj, "policyName"), source=SOURCE, what="policyName")
    if policy.casefold() not in ("none", "static"):
        raise SourceFormatError(SOURCE, f"unknown memory manager policy {policy!r}")
    machine: dict[int, MemoryNumaState] = {}
    for key, node in (
        kj.expect_object(kj.field(obj, "machineState"), source=SOURCE, what="machineState") or {}
    ).items():
        numa = kj.int_key(key, source=SOURCE, what="machineState")
        body = kj.expect_object(node, source=SOURCE, what=f"machineState[{key}]") or {}
        tables = kj.expect_object(kj.field(body, "memoryMap"), source=SOURCE, what=f"machineState[{key}].memoryMap")
        machine[numa] = MemoryNumaState(
            numa_node=numa,
            number_of_assignments=kj.expect_int(
                kj.field(body, "numberOfAssignments", 0), source=SOURCE, what="numberOfAssignments"
            ),
            memory_map={resource: _table(resource, table) for resource, table in (tables or {}).items()},
            cells=tuple(_ints(kj.field(body, "cells"), "cells") or ()),
        )
    entries = {
        pod: {name: _blocks(blocks, f"entries[{pod}][{name}]") for name, blocks in _object(containers, pod).items()}
        for pod, containers in _object(kj.field(obj, "entries"), "entries").items()
    }
    pod_entries = {
        pod: _blocks(kj.field(_object(body, pod), "memoryBlocks"), f"podEntries[{pod}]")
        for pod, body in _object(kj.field(obj, "podEntries"), "podEntries").items()
    }
    return MemoryManagerState(
        version=version, policy_name=policy, machine_state=machine, entries=entries, pod_entries=pod_entries
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    return kj.expect_object(value, source=SOURCE, what=what) or {}


def _table(resource: str, value: Any) -> MemoryTable:
    body = _object(value, f"memoryMap[{resource}]")
    numbers = {name: kj.expect_uint(kj.field(body, name), source=SOURCE, what=name) for name, _ in _TABLE_FIELDS}
    return MemoryTable(
        total_bytes=numbers["total"],
        system_reserved_bytes=numbers["systemReserved"],
        allocatable_bytes=numbers["allocatable"],
        reserved_bytes=numbers["reserved"],
        free_bytes=numbers["free"],
    )


def _ints(value: Any, what: str) -> list[int] | None:
    items = kj.expect_list(value, source=SOURCE, what=what)
    return None if items is None else [kj.expect_int(item, source=SOURCE, what=what) for item in items]


def _blocks(value: Any, what: str) -> tuple[MemoryBlock, ...]:
    blocks = []
    for item in kj.expect_list(value, source=SOURCE, what=what) or []:
        body = _object(item, what)
        blocks.append(
            MemoryBlock(
                numa_affinity=tuple(_ints(kj.field(body, "numaAffinity"), f"{what}.numaAffinity") or ()),
                resource=kj.expect_str(kj.field(body, "type"), source=SOURCE, what=f"{what}.type"),
                size_bytes=kj.expect_uint(kj.field(body, "size"), source=SOURCE, what=f"{what}.size"),
            )
        )
    return tuple(blocks)


# --- the go-spew text the kubelet hashes --------------------------------------------------------------


def hash_text(obj: dict[str, Any]) -> str:
    """The go-spew text the kubelet hashes for a v1/v2 file's decoded JSON object."""
    fields = [
        ("PolicyName", kj.typed("string", kj.field(obj, "policyName") or "")),
        ("MachineState", kj.typed("state.NUMANodeMap", _machine_text(obj))),
        ("Entries", kj.typed("state.ContainerMemoryAssignments", _entries_text(obj))),
    ]
    if kj.has_field(obj, "podEntries"):
        fields.append(("PodEntries", kj.typed("state.PodMemoryAssignments", _pod_entries_text(obj))))
    fields.append(("Checksum", kj.typed("checksum.Checksum", "0")))
    return kj.typed(_TYPE, kj.struct(fields))


def _machine_text(obj: dict[str, Any]) -> str:
    return kj.field_text(obj, "machineState", absent="map[]", render=_nodes_text)


def _nodes_text(raw: dict[str, Any]) -> str:
    nodes = {}
    for key, node in raw.items():
        if node is None:
            nodes[str(int(key))] = "<*><nil>"
            continue
        tables = kj.field(node, "memoryMap")
        table_text = (
            "<nil>"
            if tables is None
            else kj.go_map({resource: "<*>" + _table_text(table) for resource, table in tables.items()})
        )
        cells = kj.field(node, "cells")
        nodes[str(int(key))] = "<*>" + kj.struct(
            [
                ("NumberOfAssignments", kj.typed("int", str(kj.field(node, "numberOfAssignments", 0) or 0))),
                ("MemoryMap", kj.typed("map[v1.ResourceName]*state.MemoryTable", table_text)),
                ("Cells", kj.typed("[]int", kj.go_slice(None if cells is None else map(str, cells)))),
            ]
        )
    return kj.go_map(nodes, int_keys=True)


def _table_text(table: Any) -> str:
    if table is None:
        return "<nil>"
    return kj.struct([(go, kj.typed("uint64", str(kj.field(table, name) or 0))) for name, go in _TABLE_FIELDS])


def _blocks_text(blocks: Any) -> str:
    if blocks is None:
        return "<nil>"
    return kj.go_slice(
        kj.struct(
            [
                ("NUMAAffinity", kj.typed("[]int", kj.go_slice(_maybe_ints(kj.field(block, "numaAffinity"))))),
                ("Type", kj.typed("v1.ResourceName", kj.field(block, "type") or "")),
                ("Size", kj.typed("uint64", str(kj.field(block, "size") or 0))),
            ]
        )
        for block in blocks
    )


def _maybe_ints(value: Any) -> list[str] | None:
    return None if value is None else [str(item) for item in value]


def _entries_text(obj: dict[str, Any]) -> str:
    return kj.field_text(
        obj,
        "entries",
        absent="map[]",
        render=lambda raw: kj.go_map(
            {
                pod: "<nil>"
                if containers is None
                else kj.go_map({name: _blocks_text(blocks) for name, blocks in containers.items()})
                for pod, containers in raw.items()
            }
        ),
    )


def _pod_entries_text(obj: dict[str, Any]) -> str:
    return kj.field_text(obj, "podEntries", absent="map[]", render=_pod_blocks_text)


def _pod_blocks_text(raw: dict[str, Any]) -> str:
    return kj.go_map(
        {
            pod: kj.struct(
                [("MemoryBlocks", kj.typed("[]state.Block", _blocks_text(kj.field(body or {}, "memoryBlocks"))))]
            )
            for pod, body in raw.items()
        }
    )
