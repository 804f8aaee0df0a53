"""The three kubelet state files: every version, the kubelet's own checksums, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.errors import (
    SourceChecksumError,
    SourceError,
    SourceFormatError,
    SourceMissing,
    SourceNotAFile,
    SourceParseError,
    SourceTooLarge,
)
from exporter.sources import cpu_manager, device_checkpoint, memory_manager
from exporter.sources.cpu_manager import parse_cpu_manager_state
from exporter.sources.device_checkpoint import parse_device_checkpoint
from exporter.sources.kubelet_json import fnv1a_32, fnv1a_32_python
from exporter.sources.memory_manager import parse_memory_manager_state
from tests.hosttree import HostTree
from tests.kubelet_files import KUBELET_FIXTURES, POD_A, POD_B

HASH_INPUT = KUBELET_FIXTURES / "hash-input"
CPU_FIXTURES = sorted(KUBELET_FIXTURES.glob("cpu_manager_state.*.json"))
MEMORY_FIXTURES = sorted(KUBELET_FIXTURES.glob("memory_manager_state.*.json"))
DEVICE_FIXTURES = sorted(KUBELET_FIXTURES.glob("kubelet_internal_checkpoint.*.json"))
ALL_FIXTURES = CPU_FIXTURES + MEMORY_FIXTURES + DEVICE_FIXTURES
PARSERS = {"cpu_manager_state": parse_cpu_manager_state, "memory_manager_state": parse_memory_manager_state,
           "kubelet_internal_checkpoint": parse_device_checkpoint}  # fmt: skip


def parser_for(path: Path):  # type: ignore[no-untyped-def]
    return PARSERS[path.name.split(".")[0]]


def go_fnv(text: str) -> int:
    """An independent FNV-1a 32 (Go's hash/fnv), to build test vectors without the exporter's code."""
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) % 2**32
    return value


# --- the go-spew text, byte for byte -----------------------------------------------------------------


@pytest.mark.parametrize("fnv", [fnv1a_32, fnv1a_32_python])
def test_fnv1a_32_matches_go(fnv) -> None:  # type: ignore[no-untyped-def]
    assert fnv(b"") == 0x811C9DC5
    assert fnv(b"a") == 0xE40C292C
    assert fnv(b"foobar") == 0xBF9CF968
    blob = bytes(range(256)) * 40
    assert fnv(blob) == fnv1a_32_python(blob)


@pytest.mark.parametrize("fixture", CPU_FIXTURES, ids=lambda p: p.name)
def test_cpu_text_is_what_the_kubelet_hashed(fixture: Path) -> None:
    expected = (HASH_INPUT / f"{fixture.name}.txt").read_text()
    texts = dict(cpu_manager.hash_texts(fixture.read_bytes()))
    assert texts["v2"] == expected


@pytest.mark.parametrize("fixture", MEMORY_FIXTURES, ids=lambda p: p.name)
def test_memory_text_is_what_the_kubelet_hashed(fixture: Path) -> None:
    expected = (HASH_INPUT / f"{fixture.name}.txt").read_text()
    assert memory_manager.hash_text(json.loads(fixture.read_bytes())) == expected


@pytest.mark.parametrize("fixture", DEVICE_FIXTURES, ids=lambda p: p.name)
def test_device_text_is_what_the_kubelet_hashed(fixture: Path) -> None:
    expected = (HASH_INPUT / f"{fixture.name}.txt").read_text()
    data = json.loads(fixture.read_bytes())["Data"]
    assert device_checkpoint.hash_text(data, v1="v1-legacy" in fixture.name) == expected


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_every_fixture_verifies_with_its_recorded_checksum(fixture: Path) -> None:
    raw = fixture.read_bytes()
    stored = json.loads(raw).get("checksum", json.loads(raw).get("Checksum"))
    assert stored == go_fnv((HASH_INPUT / f"{fixture.name}.txt").read_text())
    state = parser_for(fixture)(raw)
    assert state.version in ("v1", "v2")


# --- versions ----------------------------------------------------------------------------------------


def test_cpu_v2_content() -> None:
    state = parse_cpu_manager_state((KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes())
    assert (state.version, state.policy_name, state.checksum_verified) == ("v2", "static", True)
    assert state.entries[POD_B]["init-schema"] == {8, 9, 24, 25}
    assert len(state.default_cpuset) == 22


def test_go_case_insensitive_keys_are_accepted() -> None:
    raw = (KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes()
    state = parse_cpu_manager_state(raw.replace(b'"defaultCpuSet"', b'"defaultCPUSet"'))
    assert state.checksum_verified
    assert 0 in state.default_cpuset


def test_cpu_checksum_zero_is_accepted_unverified_as_the_kubelet_does() -> None:
    raw = (KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes()
    state = parse_cpu_manager_state(raw.replace(b'"checksum":2672244920', b'"checksum":0'))
    assert not state.checksum_verified
    assert state.entries[POD_A]["app"] == {2, 3, 18, 19}


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_a_wrong_checksum_is_refused(fixture: Path) -> None:
    obj = json.loads(fixture.read_bytes())
    key = "checksum" if "checksum" in obj else "Checksum"
    obj[key] += 1
    with pytest.raises(SourceChecksumError):
        parser_for(fixture)(json.dumps(obj).encode())


def test_cpu_v1_container_id_entries() -> None:
    text = (
        "(*state.CPUManagerCheckpoint){PolicyName:(string)static DefaultCPUSet:(string)0-3,6-31 "
        "Entries:(map[string]string)map[containerd://abc:4-5] Checksum:(checksum.Checksum)0}"
    )
    raw = json.dumps({"policyName": "static", "defaultCpuSet": "0-3,6-31", "entries": {"containerd://abc": "4-5"},
                      "checksum": go_fnv(text)})  # fmt: skip
    state = parse_cpu_manager_state(raw.encode())
    assert (state.version, state.checksum_verified) == ("v1", True)
    assert state.entries[""] == {"containerd://abc": {4, 5}}


def test_cpu_v3_pod_entries() -> None:
    text = (
        "(*state.CPUManagerCheckpoint){PolicyName:(string)static DefaultCPUSet:(string)0-6,10-31 "
        "Entries:(map[string]map[string]string)map[] PodEntries:(state.PodCPUAssignments)"
        "map[pod-1:{CPUSet:(cpuset.CPUSet){elems:(map[int]struct {})map[7:{} 8:{} 9:{}]}}] Checksum:(checksum.Checksum)0}"
    )
    raw = json.dumps({"policyName": "static", "defaultCpuSet": "0-6,10-31", "podEntries": {"pod-1": {"cpuSet": "7-9"}},
                      "checksum": go_fnv(text)})  # fmt: skip
    state = parse_cpu_manager_state(raw.encode())
    assert (state.version, state.checksum_verified) == ("v3", True)
    assert state.pod_entries == {"pod-1": {7, 8, 9}}


def test_cpu_v4_data_and_data_checksum() -> None:
    data = json.dumps({"policyName": "static", "defaultCpuSet": "0-3", "entries": {"p": {"c": "4-7"}}})
    raw = json.dumps({"policyName": "static", "defaultCpuSet": "0-7", "checksum": 0, "data": data,
                      "dataChecksum": go_fnv("(string)" + data)})  # fmt: skip
    state = parse_cpu_manager_state(raw.encode())
    assert state.version == "v4"
    assert state.default_cpuset == {0, 1, 2, 3}, "data is authoritative over the legacy inline fields"
    assert state.entries["p"]["c"] == {4, 5, 6, 7}
    with pytest.raises(SourceChecksumError, match="dataChecksum"):
        parse_cpu_manager_state(raw.replace("0-3", "0-2").encode())


def test_memory_v3_data() -> None:
    inner = json.loads((KUBELET_FIXTURES / "memory_manager_state.static-hugepages.json").read_bytes())
    del inner["checksum"]
    data = json.dumps(inner)
    raw = json.dumps({"policyName": "Static", "machineState": {}, "checksum": 0, "data": data,
                      "dataChecksum": go_fnv("(string)" + data)})  # fmt: skip
    state = parse_memory_manager_state(raw.encode())
    assert state.version == "v3"
    assert state.machine_state[1].memory_map["hugepages-2Mi"].free_bytes == 805306368


def test_memory_policy_is_compared_case_insensitively_and_zero_checksum_accepted() -> None:
    obj = json.loads((KUBELET_FIXTURES / "memory_manager_state.static-empty.json").read_bytes())
    obj["checksum"] = 0  # the 1.36 V1 verifier accepts 0, like the CPU manager's
    assert parse_memory_manager_state(json.dumps(obj).encode()).is_static
    obj["checksum"] = 1
    with pytest.raises(SourceChecksumError):
        parse_memory_manager_state(json.dumps(obj).encode())
    text = (
        (HASH_INPUT / "memory_manager_state.static-empty.json.txt")
        .read_text()
        .replace("(string)Static", "(string)static")
    )
    obj["policyName"], obj["checksum"] = "static", go_fnv(text)
    assert parse_memory_manager_state(json.dumps(obj).encode()).is_static


def test_device_v2_content_and_v1_fallback() -> None:
    state = parse_device_checkpoint((KUBELET_FIXTURES / "kubelet_internal_checkpoint.gpu-sriov.json").read_bytes())
    assert state.version == "v2"
    db_gpus = next(a for a in state.allocations if a.pod_uid == POD_B and a.resource == "nvidia.com/gpu")
    assert dict(db_gpus.devices_by_numa) == {
        1: ("GPU-1b7c9a2e-0000-0000-0000-000000000002", "GPU-1b7c9a2e-0000-0000-0000-000000000003")
    }
    legacy = parse_device_checkpoint((KUBELET_FIXTURES / "kubelet_internal_checkpoint.v1-legacy.json").read_bytes())
    assert legacy.version == "v1"
    assert dict(legacy.allocations[0].devices_by_numa) == {-1: ("GPU-1b7c9a2e-0000-0000-0000-000000000000",)}


def test_device_null_entries_no_topology_and_several_numa_keys() -> None:
    empty = parse_device_checkpoint((KUBELET_FIXTURES / "kubelet_internal_checkpoint.empty.json").read_bytes())
    assert empty.allocations == ()
    data = {
        "PodDeviceEntries": [
            {"PodUID": "p", "ContainerName": "c", "ResourceName": "x.io/fpga", "DeviceIDs": {"-1": ["f0"], "0": ["f1"], "1": ["f1"]},
             "AllocResp": None},
        ],
        "RegisteredDevices": {"x.io/fpga": ["f0", "f1"]},
    }  # fmt: skip
    text = (
        "(checkpoint.checkpointData){PodDeviceEntries:([]checkpoint.PodDevicesEntry)[{PodUID:(string)p "
        "ContainerName:(string)c ResourceName:(string)x.io/fpga DeviceIDs:(checkpoint.DevicesPerNUMA)map[-1:[f0] 0:[f1] "
        "1:[f1]] AllocResp:([]uint8)<nil>}] RegisteredDevices:(map[string][]string)map[x.io/fpga:[f0 f1]]}"
    )
    state = parse_device_checkpoint(json.dumps({"Data": data, "Checksum": go_fnv(text)}).encode())
    assert dict(state.allocations[0].devices_by_numa) == {-1: ("f0",), 0: ("f1",), 1: ("f1",)}


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_truncated_files_are_parse_errors(fixture: Path) -> None:
    raw = fixture.read_bytes()
    for cut in (1, len(raw) // 3, len(raw) // 2, len(raw) - 1):
        with pytest.raises(SourceParseError, match="not valid JSON"):
            parser_for(fixture)(raw[:cut])


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", SourceParseError),
        (b"[]", SourceParseError),
        (b"\xff\xfe", SourceParseError),
        (b'{"policyName": 3, "checksum": 0}', SourceParseError),
        (b'{"policyName": "static", "defaultCpuSet": "0-", "checksum": 0}', SourceParseError),
        (b'{"policyName": "static", "defaultCpuSet": "", "checksum": -4}', SourceParseError),
        (b'{"policyName": "fancy", "defaultCpuSet": "", "checksum": 0}', SourceFormatError),
        (b'{"policyName": "static", "entries": {"a": "1", "b": {"c": "2"}}, "checksum": 0}', SourceParseError),
        (b"[" * 100000, SourceParseError),
    ],
)
def test_malformed_cpu_state(raw: bytes, error: type[SourceError]) -> None:
    with pytest.raises(error):
        parse_cpu_manager_state(raw)


def test_file_level_failures_have_reasons(host: HostTree) -> None:
    with pytest.raises(SourceMissing) as missing:
        cpu_manager.read_cpu_manager_state(host.paths)
    assert missing.value.reason == "missing"
    host.paths.cpu_manager_state.mkdir()
    with pytest.raises(SourceNotAFile) as directory:
        cpu_manager.read_cpu_manager_state(host.paths)
    assert directory.value.reason == "not_a_file"
    host.paths.cpu_manager_state.rmdir()
    host.paths.cpu_manager_state.write_bytes((KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes())
    with pytest.raises(SourceTooLarge) as large:
        cpu_manager.read_cpu_manager_state(host.paths, limit_bytes=100)
    assert large.value.reason == "too_large"
    assert "over the 100-byte bound" in str(large.value)
