"""Fuzzing every parser: whatever the input, nothing escapes but the exporter's own errors.

The budget is $FUZZ_EXAMPLES examples per target (`make test`: a small default; `make fuzz`: a large one).
Inputs tried are counted per target and printed at the end of the run (and in RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cpuset import parse_cpumask, parse_cpuset, parse_sysfs_cpulist
from exporter.errors import ExporterError
from exporter.hardware.discovery import discover
from exporter.kubelet.profiles import parse_profiles
from exporter.sources.cgroups import parse_numa_stat
from exporter.sources.container_logs import parse_container_log_name
from exporter.sources.cpu_manager import parse_cpu_manager_state
from exporter.sources.device_checkpoint import parse_device_checkpoint
from exporter.sources.dra_api import resource_claim, slice_devices
from exporter.sources.dra_state import API_VERSION, KIND, parse_dra_health_state, parse_dra_manager_state
from exporter.sources.kubelet_config import parse_kubelet_config
from exporter.sources.memory_manager import parse_memory_manager_state
from exporter.sources.numa import parse_distance, parse_node_meminfo, parse_numastat, parse_proc_meminfo
from exporter.sources.pod_logs import parse_pod_log_dir
from exporter.sources.process import parse_numa_maps, parse_status
from exporter.units import parse_quantity
from tests.hosttree import fixture_machine
from tests.kubelet_files import FIXTURE_CONFIG, KUBELET_FIXTURES

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
TRIED: Counter[str] = Counter()
BUDGET = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

STATE_PARSERS: dict[str, Callable[[bytes], Any]] = {
    "cpu_manager_state": parse_cpu_manager_state,
    "memory_manager_state": parse_memory_manager_state,
    "kubelet_internal_checkpoint": parse_device_checkpoint,
    "dra_manager_state": parse_dra_manager_state,
    "dra_health_state": parse_dra_health_state,
}
FIXTURES = {name: [p.read_bytes() for p in sorted(KUBELET_FIXTURES.glob(f"{name}.*.json"))] for name in STATE_PARSERS}
FIXTURES["dra_manager_state"] = [p.read_bytes() for p in sorted((KUBELET_FIXTURES / "dra").glob("*.json"))
                                 if not p.name.startswith("health")]  # fmt: skip
FIXTURES["dra_health_state"] = [(KUBELET_FIXTURES / "dra" / "health-state.json").read_bytes()]
TEXT_PARSERS: dict[str, Callable[[str], Any]] = {
    "cpuset": parse_cpuset,
    "sysfs cpulist": parse_sysfs_cpulist,
    "cpumask": parse_cpumask,
    "node meminfo": parse_node_meminfo,
    "proc meminfo": parse_proc_meminfo,
    "distance": parse_distance,
    "numastat": parse_numastat,
    "quantity": parse_quantity,
    "profiles": parse_profiles,
    "pod log directory": parse_pod_log_dir,
    "cgroup memory.numa_stat (v2)": lambda text: parse_numa_stat(text, version=2),
    "cgroup memory.numa_stat (v1)": lambda text: parse_numa_stat(text, version=1),
    "container log link": parse_container_log_name,
    "proc status": parse_status,
    "proc numa_maps": parse_numa_maps,
}
KEYS = ["policyName", "defaultCpuSet", "entries", "checksum", "machineState", "memoryMap", "Data", "PodDeviceEntries",
        "RegisteredDevices", "DeviceIDs", "Checksum", "podEntries", "data", "dataChecksum", "cells", "numaAffinity",
        "total", "free", "allocatable", "AllocResp", "PodUID", "ResourceName", "cpuSet", "memoryBlocks",
        "kind", "apiVersion", "Entries", "ClaimUID", "ClaimName", "Namespace", "PodUIDs", "DriverState", "Devices",
        "PoolName", "DeviceName", "RequestNames", "Health", "Message", "version", "entries"]  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.sampled_from(["0-3", "static", "Static", "None", "-1", "", "GPU-x", "AAAA"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
    max_leaves=30,
)  # fmt: skip


def survives(target: str, parse: Callable[[Any], Any], value: Any) -> None:
    TRIED[target] += 1
    with contextlib.suppress(ExporterError):  # the exporter's own errors are the allowed outcome
        parse(value)


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    buffer = bytearray(raw)
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete", "duplicate"]))
        position = data.draw(st.integers(min_value=0, max_value=max(len(buffer) - 1, 0)))
        if action == "flip" and buffer:
            buffer[position] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "cut":
            del buffer[position:]
        elif action == "insert":
            buffer[position:position] = data.draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b"{", b"]", b"-1", b"null"])
            )
        elif action == "duplicate":
            buffer[position:position] = buffer[position : position + data.draw(st.integers(min_value=1, max_value=40))]
        elif buffer:
            del buffer[position : position + data.draw(st.integers(min_value=1, max_value=12))]
    return bytes(buffer)


@pytest.mark.parametrize("name", STATE_PARSERS)
@BUDGET
@given(data=st.data())
def test_state_files_mutated(name: str, data: st.DataObject) -> None:
    survives(
        f"{name} (mutated fixtures)", STATE_PARSERS[name], mutate(data, data.draw(st.sampled_from(FIXTURES[name])))
    )


@pytest.mark.parametrize("name", STATE_PARSERS)
@BUDGET
@given(document=JSON)
def test_state_files_random_json(name: str, document: Any) -> None:
    survives(f"{name} (random JSON)", STATE_PARSERS[name], json.dumps(document).encode())


@pytest.mark.parametrize("name", STATE_PARSERS)
@BUDGET
@given(raw=st.binary(max_size=300))
def test_state_files_random_bytes(name: str, raw: bytes) -> None:
    survives(f"{name} (random bytes)", STATE_PARSERS[name], raw)


@BUDGET
@given(entries=JSON)
def test_dra_checkpoint_behind_a_valid_checksum(entries: Any) -> None:
    """Past the CRC-32: a Data the checksum vouches for, with anything inside."""
    data = json.dumps({"kind": KIND, "apiVersion": API_VERSION, "Entries": entries})
    raw = json.dumps({"Data": data, "Checksum": zlib.crc32(data.encode())}).encode()
    survives("dra_manager_state (checksummed random Data)", parse_dra_manager_state, raw)


@BUDGET
@given(document=JSON, devices=st.lists(JSON, max_size=4))
def test_dra_api_objects_never_raise(document: Any, devices: list[Any]) -> None:
    """ResourceSlices and claims are the API server's JSON: whatever their shape, the readers skip what they
    cannot use and raise nothing at all."""
    TRIED["ResourceSlice and ResourceClaim JSON"] += 1
    spec = {"driver": "d", "nodeName": "n", "pool": {"name": "p", "generation": 1}, "devices": devices}
    slice_devices([document, {"spec": spec}, {"spec": document}], node_name="n")
    resource_claim(document)
    resource_claim({"metadata": {"name": "c", "namespace": "ns"}, "status": document})


@BUDGET
@given(data=st.data())
def test_kubelet_config(data: st.DataObject) -> None:
    fixture = FIXTURE_CONFIG.format(cpu="static", memory="Static").encode()
    raw = data.draw(
        st.builds(lambda d: yaml.safe_dump(d).encode(), JSON) | st.binary(max_size=200) | st.just(fixture).map(lambda f: mutate(data, f))
    )  # fmt: skip
    survives("kubelet config", parse_kubelet_config, raw)


@pytest.mark.parametrize("name", TEXT_PARSERS)
@BUDGET
@given(text=st.text(max_size=80) | st.text(alphabet="0123456789,-:kBNodeMmGgiKx \n\t", max_size=80))
def test_text_parsers(name: str, text: str) -> None:
    survives(name, TEXT_PARSERS[name], text)


SYSFS_FILES = [
    "sys/devices/system/node/node0/meminfo", "sys/devices/system/node/node0/distance",
    "sys/devices/system/node/node1/cpulist", "sys/devices/system/node/node0/numastat",
    "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", "sys/devices/system/cpu/online",
    "sys/devices/system/cpu/cpu3/topology/thread_siblings_list", "sys/devices/system/cpu/cpu3/topology/core_id",
    "sys/bus/pci/devices/0000:3b:02.1/class", "sys/bus/pci/devices/0000:8a:00.0/numa_node",
    "sys/bus/pci/devices/0000:3b:00.0/sriov_totalvfs",
]  # fmt: skip
_TREE: list[Path] = []


@settings(max_examples=max(EXAMPLES // 3, 20), deadline=None, suppress_health_check=list(HealthCheck))
@given(relative=st.sampled_from(SYSFS_FILES), content=st.binary(max_size=120) | st.text(max_size=60).map(str.encode))
def test_sysfs_files(relative: str, content: bytes) -> None:
    if not _TREE:
        _TREE.append(fixture_machine(Path(tempfile.mkdtemp(prefix="fuzz-sysfs-"))).root)
    path = _TREE[0] / relative
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        survives("sysfs files (through discovery)", lambda root: discover(
            _paths(root), use_nvml=False, use_udev=False), _TREE[0])  # fmt: skip
    finally:
        path.write_bytes(original)


def _paths(root: Path):  # type: ignore[no-untyped-def]
    from exporter.paths import HostPaths

    return HostPaths(sysfs=root / "sys", procfs=root / "proc")
