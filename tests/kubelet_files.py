"""Writing kubelet state files into a fixture host: the kubelet's own fixtures, or new ones built here.

New files get their checksums from the exporter's go-spew formatter, which tests/unit/test_kubelet_state.py
checks byte for byte against the text the kubelet's own code hashed (fixtures/kubelet/hash-input).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter.cpuset import format_cpuset
from exporter.sources import device_checkpoint, memory_manager
from exporter.sources.kubelet_json import spew_checksum
from tests.hosttree import HostTree

KUBELET_FIXTURES = Path(__file__).parent / "fixtures" / "kubelet"
POD_A = "5f2b1c9e-3d4a-4b8e-9f10-2a6c7d8e9f01"
POD_B = "a1b2c3d4-e5f6-4789-8abc-def012345678"
POD_C = "0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f"

CPU_STATIC_EMPTY = (KUBELET_FIXTURES / "cpu_manager_state.static-empty.json").read_bytes()
CPU_STATIC_2PODS = (KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes()

FIXTURE_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cpuManagerPolicy: {cpu}
memoryManagerPolicy: {memory}
topologyManagerPolicy: single-numa-node
topologyManagerScope: container
reservedSystemCPUs: "0,16"
kubeReserved: {{memory: 1948Mi}}
reservedMemory:
- numaNode: 0
  limits: {{memory: 1Gi}}
- numaNode: 1
  limits: {{memory: 1Gi}}
"""


def replace_atomically(path: Path, data: bytes) -> None:
    """What the kubelet does: write a dot-file in the same directory, then rename it over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp"
    temporary.write_bytes(data)
    os.rename(temporary, path)


def install(
    host: HostTree,
    *,
    cpu: str | bytes | None = None,
    memory: str | bytes | None = None,
    devices: str | bytes | None = None,
    dra: bytes | None = None,
    config: str | None = None,
) -> None:
    """Each argument is a fixture name under fixtures/kubelet (e.g. "cpu_manager_state.static-2pods.json")
    or the file's bytes."""
    for target, value in (
        (host.paths.cpu_manager_state, cpu),
        (host.paths.memory_manager_state, memory),
        (host.paths.device_checkpoint, devices),
        (host.paths.dra_manager_state, dra),
    ):
        if value is None:
            continue
        if isinstance(value, str):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(KUBELET_FIXTURES / value, target)
        else:
            replace_atomically(target, value)
    if config is not None:
        (host.kubelet / "config.yaml").write_text(config)


def fixture_config(*, cpu: str = "static", memory: str = "Static") -> str:
    return FIXTURE_CONFIG.format(cpu=cpu, memory=memory)


def cpu_state(
    *, default: Sequence[int], entries: Mapping[str, Mapping[str, Sequence[int]]], policy: str = "static"
) -> bytes:
    """A v2 cpu_manager_state with checksum 0, which the kubelet accepts unverified."""
    body: dict[str, Any] = {"policyName": policy, "defaultCpuSet": format_cpuset(default)}
    if entries:
        body["entries"] = {pod: {c: format_cpuset(cpus) for c, cpus in ctrs.items()} for pod, ctrs in entries.items()}
    body["checksum"] = 0
    return json.dumps(body, separators=(",", ":")).encode()


def memory_state(obj: dict[str, Any]) -> bytes:
    obj = {key: value for key, value in obj.items() if key != "checksum"}
    obj["checksum"] = spew_checksum(memory_manager.hash_text(obj))
    return json.dumps(obj, separators=(",", ":")).encode()


def device_state(entries: Sequence[Mapping[str, Any]] | None, registered: Mapping[str, Sequence[str]]) -> bytes:
    data = {"PodDeviceEntries": list(entries) if entries is not None else None, "RegisteredDevices": dict(registered)}
    v1 = any(isinstance(entry.get("DeviceIDs"), list) for entry in entries or [])
    body = {"Data": data, "Checksum": spew_checksum(device_checkpoint.hash_text(data, v1=v1))}
    return json.dumps(body, separators=(",", ":")).encode()


def device_entry(pod: str, container: str, resource: str, by_numa: Mapping[int, Sequence[str]]) -> dict[str, Any]:
    return {
        "PodUID": pod,
        "ContainerName": container,
        "ResourceName": resource,
        "DeviceIDs": {str(numa): list(ids) for numa, ids in by_numa.items()},
        "AllocResp": "",
    }


def pod_logs(host: HostTree, pods: Sequence[tuple[str, str, str]]) -> None:
    """(namespace, name, uid) -> a `<namespace>_<name>_<uid>` directory under the pod log root."""
    for namespace, name, uid in pods:
        (host.paths.pod_logs / f"{namespace}_{name}_{uid}").mkdir(parents=True, exist_ok=True)


def dra_entry(
    *,
    claim_uid: str,
    claim: str,
    namespace: str,
    pods: Sequence[str],
    devices: Mapping[str, Sequence[tuple[str, str, Sequence[str]]]],
) -> dict[str, Any]:
    """One `dra_manager_state` entry: driver -> [(pool, device, request names)], as the DRA manager stores a
    prepared claim (K pkg/kubelet/cm/dra/state/state.go, field order of its structs)."""
    return {
        "ClaimUID": claim_uid,
        "ClaimName": claim,
        "Namespace": namespace,
        "PodUIDs": {pod: {} for pod in pods},
        "DriverState": {
            driver: {
                "Devices": [
                    {
                        "PoolName": pool,
                        "DeviceName": device,
                        "RequestNames": list(requests),
                        "CDIDeviceIDs": [f"{driver}/device={device}"],
                    }
                    for pool, device, requests in entries
                ]
            }
            for driver, entries in devices.items()
        },
    }


def dra_state(entries: Sequence[Mapping[str, Any]]) -> bytes:
    """A `dra_manager_state` as a >= 1.31 kubelet writes it: `Data` the checkpoint's JSON text (Go escapes
    <, > and & in it), `Checksum` the CRC-32 of those bytes."""
    data = json.dumps(
        {"kind": "DRACheckpoint", "apiVersion": "checkpoint.dra.kubelet.k8s.io/v1", "Entries": list(entries)},
        separators=(",", ":"),
    )
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return json.dumps({"Data": data, "Checksum": zlib.crc32(data.encode())}, separators=(",", ":")).encode()
