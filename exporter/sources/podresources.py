"""The kubelet's podresources API (v1) over its unix socket: `List` and `GetAllocatableResources`.

The supported interface for node agents (docs/reference.md section 8): pod names, namespaces and
container names; the exclusively pinned CPUs, memory blocks and devices of each container, each device
with the topology its plugin reported; the DRA devices of each container; and, through
`GetAllocatableResources`, every device the kubelet can hand out with its plugin's topology, free devices
included. `Get` is not used: one `List` answers for every pod, where `Get` would be one call per pod.

A pure read over a socket, like every source over a root: one `read()` is two calls, never faster than
the kubelet's own limit (100 queries/s, burst 10) allows. An absent socket is a missing source (older
kubelets, the socket not mounted): normal, not an error. A socket that refuses us (permission), a kubelet
that is not listening or answers UNAVAILABLE, a deadline, RESOURCE_EXHAUSTED, or an answer that does not
parse or names impossible CPUs or NUMA nodes is a SourceRpcError with that reason; the builder keeps the
last good reading.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from exporter.errors import SourceError, SourceMissing, SourceNotAFile, SourcePermissionError, SourceRpcError
from exporter.model import (
    ClaimDevice,
    PodResourcesReading,
    ReportedContainer,
    ReportedDevices,
    ReportedMemory,
    ReportedPod,
)
from exporter.sources import grpc_unix
from exporter.sources.podresources_v1 import api_pb2

SOURCE = "podresources"
LIST = "/v1.PodResourcesLister/List"
GET_ALLOCATABLE = "/v1.PodResourcesLister/GetAllocatableResources"
USER_AGENT = "numa-topology-exporter"
KUBELET_QPS = 100.0  # K pkg/kubelet/apis/podresources/constants.go: DefaultQPS
KUBELET_BURST = 10  # DefaultBurstTokens
CALLS_PER_READ = 2
TIMEOUT_SECONDS = 5.0
MAX_MESSAGE_BYTES = 16 << 20  # a List of thousands of containers fits; anything larger is refused, not read
MAX_CPU_ID = 1 << 16
MAX_NUMA_ID = 1 << 10
REASONS = {
    grpc_unix.UNAVAILABLE: "unavailable",
    grpc_unix.DEADLINE_EXCEEDED: "deadline",
    grpc_unix.RESOURCE_EXHAUSTED: "resource_exhausted",
    grpc_unix.INTERNAL: "bad_response",  # an answer that breaks the protocol or does not parse
    grpc_unix.UNIMPLEMENTED: "unavailable",  # a kubelet without GetAllocatableResources (< 1.23)
}


class TokenBucket:
    """The kubelet's rate limiter, on our side: `rate` tokens a second, at most `burst` saved."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, tokens: int) -> float:
        """Wait until `tokens` are there and take them; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            wait = max(0.0, (tokens - self._tokens) / self.rate)
            self._tokens -= tokens
        if wait:
            self._sleep(wait)
        return wait


class PodResourcesClient:
    """The kubelet's podresources API: each read is one connection to the socket and its two calls
    (sources/grpc_unix.py), so a kubelet restarted between reads costs nothing. One refresher owns it."""

    def __init__(
        self,
        path: Path,
        *,
        timeout_seconds: float = TIMEOUT_SECONDS,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.path = path
        self.timeout_seconds = timeout_seconds
        self.limiter = limiter or TokenBucket(KUBELET_QPS, KUBELET_BURST)

    def read(self) -> PodResourcesReading:
        self.limiter.take(CALLS_PER_READ)
        timeout = self.timeout_seconds
        try:
            with grpc_unix.connect(
                str(self.path), timeout=timeout, max_message_bytes=MAX_MESSAGE_BYTES, user_agent=USER_AGENT
            ) as connection:
                listed = connection.call(LIST, api_pb2.ListPodResourcesRequest().SerializeToString(), timeout=timeout)
                allocatable = connection.call(
                    GET_ALLOCATABLE, api_pb2.AllocatableResourcesRequest().SerializeToString(), timeout=timeout
                )
        except OSError as exc:
            raise self._connect_failed(exc) from None
        except grpc_unix.RpcError as exc:
            raise rpc_error(exc) from None
        try:
            listed_answer = api_pb2.ListPodResourcesResponse.FromString(listed)
            allocatable_answer = api_pb2.AllocatableResourcesResponse.FromString(allocatable)
        except DecodeError as exc:
            raise _bad(f"an answer that does not parse ({exc})") from None
        return reading_from(listed_answer, allocatable_answer)

    def close(self) -> None:
        """Nothing held between reads (kept for the refresher's shutdown)."""

    def _connect_failed(self, exc: OSError) -> SourceError:
        """What connect(2) said about the socket: missing, permission (connecting needs write access to the
        socket), not a socket, or nobody listening."""
        if isinstance(exc, FileNotFoundError):
            return SourceMissing(SOURCE, f"{self.path} does not exist (no podresources socket here)")
        if isinstance(exc, PermissionError):
            return SourcePermissionError(
                SOURCE, f"{self.path}: permission denied (connecting needs write access to the socket)"
            )
        if exc.errno == errno.ECONNREFUSED:
            try:
                if not stat.S_ISSOCK(self.path.stat().st_mode):
                    return SourceNotAFile(SOURCE, f"{self.path} is not a socket")
            except OSError:
                pass
            return SourceRpcError(SOURCE, f"{self.path}: {os.strerror(exc.errno)}", reason="unavailable")
        return SourceRpcError(SOURCE, f"{self.path}: {exc.strerror or exc}", reason="rpc")


def rpc_error(exc: grpc_unix.RpcError) -> SourceRpcError:
    details = exc.details.splitlines()[0][:200] if exc.details else "error"
    return SourceRpcError(SOURCE, f"{exc.name}: {details}", reason=REASONS.get(exc.code, "rpc"))


# --- the answer, checked -------------------------------------------------------------------------------


def reading_from(listed: Any, allocatable: Any) -> PodResourcesReading:
    pods = []
    for pod in listed.pod_resources:
        if not pod.name or not pod.namespace:
            raise _bad("a pod without a name or namespace")
        containers = tuple(
            ReportedContainer(
                name=_named(container.name, "container"),
                cpu_ids=_cpus(container.cpu_ids),
                devices=tuple(_devices(entry) for entry in container.devices),
                memory=tuple(_memory(entry) for entry in container.memory),
                claims=tuple(
                    ClaimDevice(
                        claim_namespace=claim.claim_namespace,
                        claim_name=claim.claim_name,
                        driver=resource.driver_name,
                        pool=resource.pool_name,
                        device=resource.device_name,
                    )
                    for claim in container.dynamic_resources
                    for resource in claim.claim_resources
                ),
            )
            for container in pod.containers
        )
        pods.append(ReportedPod(namespace=pod.namespace, name=pod.name, containers=containers))
    return PodResourcesReading(
        pods=tuple(pods),
        allocatable_cpus=_cpus(allocatable.cpu_ids),
        allocatable_devices=tuple(_devices(entry) for entry in allocatable.devices),
        allocatable_memory=tuple(_memory(entry) for entry in allocatable.memory),
    )


def _bad(what: str) -> SourceRpcError:
    return SourceRpcError(SOURCE, f"bad response: {what}", reason="bad_response")


def _named(name: str, what: str) -> str:
    if not name:
        raise _bad(f"a {what} without a name")
    return name


def _cpus(ids: Iterable[int]) -> frozenset[int]:
    cpus = frozenset(ids)
    if any(cpu < 0 or cpu >= MAX_CPU_ID for cpu in cpus):
        raise _bad(f"CPU ids out of range: {sorted(cpus)[:5]}")
    return cpus


def _numa(topology: Any) -> frozenset[int]:
    nodes = frozenset(node.ID for node in topology.nodes)
    if any(numa < 0 or numa >= MAX_NUMA_ID for numa in nodes):
        raise _bad(f"NUMA node ids out of range: {sorted(nodes)[:5]}")
    return nodes


def _devices(entry: Any) -> ReportedDevices:
    if not entry.resource_name:
        raise _bad("devices without a resource name")
    return ReportedDevices(
        resource=entry.resource_name,
        ids=tuple(_named(device, "device") for device in entry.device_ids),
        numa_nodes=_numa(entry.topology),
    )


def _memory(entry: Any) -> ReportedMemory:
    return ReportedMemory(
        memory_type=_named(entry.memory_type, "memory block"), size_bytes=entry.size, numa_nodes=_numa(entry.topology)
    )
