"""A real gRPC server (grpcio) on a unix socket playing the kubelet's podresources API (v1).

It answers `List` and `GetAllocatableResources` with what a test sets, built by default from a fixture
host's own state files the way the kubelet's server builds them (K pkg/kubelet/apis/podresources/
server_v1.go): each container's pinned CPUs, its devices grouped by resource with the NUMA nodes their
plugin reported, its Static memory blocks; allocatable = every CPU but the reserved ones, every registered
device, every memory block. Faults: abort with a status code, answer slowly, or answer with bytes that are
not the message (the handlers serialize whatever they are given).
"""

from __future__ import annotations

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
from exporter.sources import cpu_manager, device_checkpoint, memory_manager
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


def answers_from_state(
    paths: HostPaths, names: Mapping[str, tuple[str, str]], *, cpus: int
) -> tuple[api_pb2.ListPodResourcesResponse, api_pb2.AllocatableResourcesResponse]:
    cpu = cpu_manager.read_cpu_manager_state(paths) if paths.cpu_manager_state.exists() else None
    memory = memory_manager.read_memory_manager_state(paths) if paths.memory_manager_state.exists() else None
    devices = device_checkpoint.read_device_checkpoint(paths) if paths.device_checkpoint.exists() else None
    containers: dict[tuple[str, str], api_pb2.ContainerResources] = {}

    def container(pod: str, name: str) -> api_pb2.ContainerResources:
        return containers.setdefault((pod, name), api_pb2.ContainerResources(name=name))

    for pod, entries in cpu.entries.items() if cpu is not None else ():
        for name, cpuset in entries.items():
            container(pod, name).cpu_ids.extend(sorted(cpuset))
    if memory is not None and memory.is_static:
        for pod, memory_entries in memory.entries.items():
            for name, blocks in memory_entries.items():
                for block in blocks:
                    container(pod, name).memory.append(
                        api_pb2.ContainerMemory(
                            memory_type=block.resource,
                            size=block.size_bytes,
                            topology=topology(set(block.numa_affinity)),
                        )
                    )
    for allocation in devices.allocations if devices is not None else ():
        for numa, ids in sorted(allocation.devices_by_numa.items()):
            container(allocation.pod_uid, allocation.container).devices.append(
                api_pb2.ContainerDevices(
                    resource_name=allocation.resource,
                    device_ids=list(ids),
                    topology=topology({numa} if numa >= 0 else set()),
                )
            )
    listed = api_pb2.ListPodResourcesResponse()
    for uid, (namespace, name) in sorted(names.items(), key=lambda item: item[1]):
        pod = listed.pod_resources.add(name=name, namespace=namespace)
        for (pod_uid, _), resources in sorted(containers.items()):
            if pod_uid == uid:
                pod.containers.append(resources)
    allocatable = api_pb2.AllocatableResourcesResponse(cpu_ids=list(range(cpus)))
    filed = {
        device: numa
        for allocation in (devices.allocations if devices is not None else ())
        for numa, ids in allocation.devices_by_numa.items()
        for device in ids
    }
    for resource, ids in sorted((devices.registered if devices is not None else {}).items()):
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
