"""`<kubelet>/cpu_manager_state`: every on-disk version, verified as the kubelet verifies it.

Versions (docs/reference.md section 1): v1 (entries keyed by container ID), v2 (pod UID -> container ->
cpuset; what every released kubelet writes), v3 (v2 + `podEntries`, 1.36 with PodLevelResourceManagers),
v4 (1.37: the authoritative copy is the JSON string `data`, checksummed by `dataChecksum`).
A stored v1/v2/v3 checksum of 0 is accepted, as the kubelet does ("compatibility with old file backend").
With `PodLevelResourceManagers` off, 1.36-era kubelets hash a `CPUManagerCheckpointV2` struct, so the text
begins `(*state.CPUManagerCheckpointV2){`; the verifier tries that name first, then the legacy one.
"""

from __future__ import annotations

from typing import Any

from exporter.cpuset import CpuSet, parse_cpuset
from exporter.errors import SourceChecksumError, SourceFormatError, SourceParseError
from exporter.model import CpuManagerState
from exporter.paths import HostPaths
from exporter.sources import kubelet_json as kj
from exporter.sources.files import read_bounded

SOURCE = "cpu_manager_state"
_TYPE = "*state.CPUManagerCheckpoint"
_TYPE_V2 = "*state.CPUManagerCheckpointV2"
_TYPE_V3_DEV = "*state.CPUManagerCheckpointV3"


def read_cpu_manager_state(paths: HostPaths, *, limit_bytes: int = kj.DEFAULT_LIMIT_BYTES) -> CpuManagerState:
    return parse_cpu_manager_state(read_bounded(paths.cpu_manager_state, source=SOURCE, limit_bytes=limit_bytes))


def parse_cpu_manager_state(raw: bytes) -> CpuManagerState:
    obj = kj.decode_object(raw, source=SOURCE)
    data = kj.field(obj, "data")
    data_checksum = kj.expect_uint(kj.field(obj, "dataChecksum"), source=SOURCE, what="dataChecksum")
    if data or data_checksum:
        return _parse_v4(kj.expect_str(data, source=SOURCE, what="data"), data_checksum)
    return _parse_legacy(obj)


def _parse_v4(data: str, data_checksum: int) -> CpuManagerState:
    if kj.string_checksum(data) != data_checksum:
        raise SourceChecksumError(SOURCE, f"dataChecksum {data_checksum} does not match the data it guards")
    inner = kj.decode_object(data.encode("utf-8"), source=SOURCE)
    policy, default, entries, pod_entries = _fields(inner)
    return _state("v4", policy, default, entries, pod_entries, verified=True)


def hash_texts(raw: bytes) -> list[tuple[str, str]]:
    """(version, go-spew text) for each layout a v1/v2/v3 file could verify as, in the order tried."""
    obj = kj.decode_object(raw, source=SOURCE)
    return _candidates(obj, *_fields(obj)[:2])


def _parse_legacy(obj: dict[str, Any]) -> CpuManagerState:
    policy, default, entries, pod_entries = _fields(obj)
    checksum = kj.expect_uint(kj.field(obj, "checksum"), source=SOURCE, what="checksum")
    candidates = _candidates(obj, policy, default)
    if checksum == 0:
        version = candidates[0][0]
        return _state(version, policy, default, entries, pod_entries, verified=False)
    for version, text in candidates:
        if kj.spew_checksum(text) == checksum:
            return _state(version, policy, default, entries, pod_entries, verified=True)
    raise SourceChecksumError(
        SOURCE, f"checksum {checksum} matches no known layout ({', '.join(sorted({v for v, _ in candidates}))})"
    )


def _candidates(obj: dict[str, Any], policy: str, default: str) -> list[tuple[str, str]]:
    raw_entries = kj.field(obj, "entries")
    has_entries = isinstance(raw_entries, dict) and bool(raw_entries)
    is_v1 = has_entries and any(isinstance(value, str) for value in raw_entries.values())
    if is_v1 and not all(isinstance(value, str) for value in raw_entries.values()):
        raise SourceParseError(SOURCE, "entries mix the v1 (container -> cpuset) and v2 (pod -> container) shapes")
    has_pod_entries = kj.has_field(obj, "podEntries")

    candidates: list[tuple[str, str]] = []
    if is_v1:
        candidates.append(("v1", _text_v1(policy, default, obj)))
    else:
        v2_entries = kj.field_text(
            obj, "entries", absent="map[]", render=lambda raw: kj.go_map({pod: kj.go_map(c) for pod, c in raw.items()})
        )
        v3 = _text_v3(policy, default, v2_entries, obj)
        if not has_pod_entries:
            v2 = _text_v2(policy, default, v2_entries)
            candidates.extend((("v2", v2.replace(_TYPE, _TYPE_V2, 1)), ("v2", v2)))
        candidates.extend((("v3", v3.replace(_TYPE_V3_DEV, _TYPE, 1)), ("v3", v3)))
        if not has_entries and not has_pod_entries:
            candidates.append(("v1", _text_v1(policy, default, obj)))
    return candidates


def _fields(obj: dict[str, Any]) -> tuple[str, str, dict[str, dict[str, str]], dict[str, str]]:
    policy = kj.expect_str(kj.field(obj, "policyName"), source=SOURCE, what="policyName")
    default = kj.expect_str(kj.field(obj, "defaultCpuSet"), source=SOURCE, what="defaultCpuSet")
    entries: dict[str, dict[str, str]] = {}
    raw_entries = kj.expect_object(kj.field(obj, "entries"), source=SOURCE, what="entries") or {}
    for pod, containers in raw_entries.items():
        if isinstance(containers, str):  # v1: container ID -> cpuset
            entries.setdefault("", {})[pod] = containers
            continue
        by_container = kj.expect_object(containers, source=SOURCE, what=f"entries[{pod}]") or {}
        entries[pod] = {
            name: kj.expect_str(cpus, source=SOURCE, what=f"entries[{pod}][{name}]", allow_null=False)
            for name, cpus in by_container.items()
        }
    pod_entries: dict[str, str] = {}
    raw_pods = kj.expect_object(kj.field(obj, "podEntries"), source=SOURCE, what="podEntries") or {}
    for pod, assignment in raw_pods.items():
        body = kj.expect_object(assignment, source=SOURCE, what=f"podEntries[{pod}]") or {}
        pod_entries[pod] = kj.expect_str(kj.field(body, "cpuSet"), source=SOURCE, what=f"podEntries[{pod}].cpuSet")
    if policy not in ("none", "static"):
        raise SourceFormatError(SOURCE, f"unknown CPU manager policy {policy!r}")
    return policy, default, entries, pod_entries


def _state(
    version: str,
    policy: str,
    default: str,
    entries: dict[str, dict[str, str]],
    pod_entries: dict[str, str],
    *,
    verified: bool,
) -> CpuManagerState:
    return CpuManagerState(
        version=version,
        policy_name=policy,
        default_cpuset=_cpuset(default, "defaultCpuSet"),
        entries={
            pod: {name: _cpuset(cpus, f"entries[{pod}][{name}]") for name, cpus in containers.items()}
            for pod, containers in entries.items()
        },
        pod_entries={pod: _cpuset(cpus, f"podEntries[{pod}]") for pod, cpus in pod_entries.items()},
        checksum_verified=verified,
    )


def _cpuset(text: str, what: str) -> CpuSet:
    try:
        return parse_cpuset(text)
    except ValueError as exc:
        raise SourceParseError(SOURCE, f"{what}: {exc}") from None


def _head(policy: str, default: str) -> list[tuple[str, str]]:
    return [("PolicyName", kj.typed("string", policy)), ("DefaultCPUSet", kj.typed("string", default))]


_CHECKSUM_FIELD = ("Checksum", kj.typed("checksum.Checksum", "0"))


def _text_v1(policy: str, default: str, obj: dict[str, Any]) -> str:
    entries = kj.field_text(obj, "entries", absent="map[]", render=kj.go_map)
    fields = [*_head(policy, default), ("Entries", kj.typed("map[string]string", entries)), _CHECKSUM_FIELD]
    return kj.typed(_TYPE, kj.struct(fields))


def _text_v2(policy: str, default: str, entries: str) -> str:
    fields = [*_head(policy, default), ("Entries", kj.typed("map[string]map[string]string", entries)), _CHECKSUM_FIELD]
    return kj.typed(_TYPE, kj.struct(fields))


def _text_v3(policy: str, default: str, entries: str, obj: dict[str, Any]) -> str:
    pods = kj.field_text(
        obj,
        "podEntries",
        absent="map[]",
        render=lambda raw: kj.go_map(
            {pod: kj.struct([("CPUSet", kj.typed("cpuset.CPUSet", _cpuset_struct(body)))]) for pod, body in raw.items()}
        ),
    )
    fields = [
        *_head(policy, default),
        ("Entries", kj.typed("map[string]map[string]string", entries)),
        ("PodEntries", kj.typed("state.PodCPUAssignments", pods)),
        _CHECKSUM_FIELD,
    ]
    return kj.typed(_TYPE_V3_DEV, kj.struct(fields))


def _cpuset_struct(body: dict[str, Any]) -> str:
    cpus = _cpuset(kj.expect_str(kj.field(body, "cpuSet"), source=SOURCE, what="podEntries cpuSet"), "podEntries")
    elems = kj.go_map({str(cpu): "{}" for cpu in cpus}, int_keys=True)
    return kj.struct([("elems", kj.typed("map[int]struct {}", elems))])
