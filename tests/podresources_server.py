"""A real gRPC server (grpcio) on a unix socket playing the kubelet's podresources API (v1).

It answers `List` and `GetAllocatableResources` with what a test sets, built by default from a fixture
host's own state files (read with `json`, not the exporter's parsers) the way the kubelet's server builds them (K pkg/kubelet/apis/podresources/
server_v1.go): each container's pinned CPUs, its devices grouped by resource with the NUMA nodes their
plugin reported, its Static memory blocks; allocatable = every CPU but the reserved ones, every registered
device, every memory block. Faults: abort with a status code, answer slowly, or answer with bytes that are
not the message (the handlers serialize whatever they are given).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from exporter.paths import HostPaths
from exporter.sources.podresources_v1 import api_pb2

SERVICE = "v1.PodResourcesLister"


@dataclass
class Fault:
    code: grpc.StatusCode | None = None
    delay_seconds: float = 0.0
    garbage: bytes | None = None
    times: int | None = None  # None: until cleared


class PodResourcesServer:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.listed = api_pb2.ListPodResourcesResponse()
        self.allocatable = api_pb2.AllocatableResourcesResponse()
        self.fault: Fault | None = None
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "List": self._unary("List", lambda: self.listed, api_pb2.ListPodResourcesRequest),
            "GetAllocatableResources": self._unary(
                "GetAllocatableResources", lambda: self.allocatable, api_pb2.AllocatableResourcesRequest
            ),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self._server.add_insecure_port(f"unix://{socket}")
        self._server.start()

    def _unary(self, name: str, answer: Any, request_type: Any) -> grpc.RpcMethodHandler:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.calls[name] += 1
                fault = self.fault
                if fault is not None and fault.times is not None:
                    fault.times -= 1
                    if fault.times < 0:
                        fault = self.fault = None
            if fault is not None:
                if fault.delay_seconds:
                    time.sleep(fault.delay_seconds)
                if fault.code is not None:
                    context.abort(fault.code, f"injected {fault.code.name}")
                if fault.garbage is not None:
                    return fault.garbage
            return answer()

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_type.FromString,
            response_serializer=lambda message: message if isinstance(message, bytes) else message.SerializeToString(),
        )

    def serve_state(self, paths: HostPaths, names: Mapping[str, tuple[str, str]], *, cpus: int = 32) -> None:
        """Answer consistently with the host's state files; `names`: pod UID -> (namespace, name)."""
        self.listed, self.allocatable = answers_from_state(paths, names, cpus=cpus)

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)


def serving(socket: Path) -> Iterator[PodResourcesServer]:
    server = PodResourcesServer(socket)
    try:
        yield server
    finally:
        server.stop()


def topology(nodes: set[int] | frozenset[int]) -> api_pb2.TopologyInfo:
    return api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=node) for node in sorted(nodes)])


def _cpus(text: str) -> list[int]:
    """A kubelet cpuset string ("0-3,8"), read here without the exporter's parser."""
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return sorted(cpus)


def _json(path: Path) -> dict[str, Any] | None:
    return dict(json.loads(path.read_text())) if path.exists() else None


def answers_from_state(
    paths: HostPaths, names: Mapping[str, tuple[str, str]], *, cpus: int
) -> tuple[api_pb2.ListPodResourcesResponse, api_pb2.AllocatableResourcesResponse]:
    """The answers the kubelet's server would give for the state files under `paths`, read with `json` here
    (docs/reference.md's formats), not with the exporter's sources: a test comparing the agent's two
    accounts then compares the exporter with an independent reading, not with itself."""
    cpu = _json(paths.cpu_manager_state)
    memory = _json(paths.memory_manager_state)
    checkpoint = (_json(paths.device_checkpoint) or {}).get("Data") or {}
    containers: dict[tuple[str, str], api_pb2.ContainerResources] = {}

    def container(pod: str, name: str) -> api_pb2.ContainerResources:
        return containers.setdefault((pod, name), api_pb2.ContainerResources(name=name))

    for pod, entries in ((cpu or {}).get("entries") or {}).items():
        for name, cpuset in entries.items():
            container(pod, name).cpu_ids.extend(_cpus(cpuset))
    if memory is not None and memory.get("policyName") == "Static":
        for pod, memory_entries in (memory.get("entries") or {}).items():
            for name, blocks in memory_entries.items():
                for block in blocks:
                    container(pod, name).memory.append(
                        api_pb2.ContainerMemory(
                            memory_type=block["type"], size=block["size"], topology=topology(set(block["numaAffinity"]))
                        )
                    )
    filed: dict[str, int] = {}
    for entry in checkpoint.get("PodDeviceEntries") or []:
        for numa, ids in sorted((entry.get("DeviceIDs") or {}).items()):
            filed.update((device, int(numa)) for device in ids)
            container(entry["PodUID"], entry["ContainerName"]).devices.append(
                api_pb2.ContainerDevices(
                    resource_name=entry["ResourceName"],
                    device_ids=list(ids),
                    topology=topology({int(numa)} if int(numa) >= 0 else set()),
                )
            )
    listed = api_pb2.ListPodResourcesResponse()
    for uid, (namespace, name) in sorted(names.items(), key=lambda item: item[1]):
        pod = listed.pod_resources.add(name=name, namespace=namespace)
        for (pod_uid, _), resources in sorted(containers.items()):
            if pod_uid == uid:
                pod.containers.append(resources)
    allocatable = api_pb2.AllocatableResourcesResponse(cpu_ids=list(range(cpus)))
    for resource, ids in sorted((checkpoint.get("RegisteredDevices") or {}).items()):
        for device in ids:
            numa = filed.get(device, hardware_numa(paths, device))
            allocatable.devices.append(
                api_pb2.ContainerDevices(
                    resource_name=resource, device_ids=[device], topology=topology({numa} if numa >= 0 else set())
                )
            )
    return listed, allocatable


def hardware_numa(paths: HostPaths, device: str) -> int:
    """What the NVIDIA and SR-IOV plugins report for a free device: its PCI function's NUMA node."""
    node = paths.pci_devices_dir / device / "numa_node"
    return int(node.read_text()) if node.exists() else -1
