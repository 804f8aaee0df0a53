"""The kubelet's podresources API as a second source, against a real gRPC server on a unix socket: equal
accounting when both sources agree, identity and liveness from the API, every disagreement counted, every
failure kept out of the numbers."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model import PodRef
from exporter.paths import HostPaths
from exporter.snapshot import Snapshot, SnapshotBuilder
from exporter.sources import podresources
from exporter.sources.podresources import TokenBucket
from exporter.sources.podresources_v1 import api_pb2
from tests.daemon import Daemon, wait_for, without_capabilities
from tests.hosttree import HostTree
from tests.kubelet_files import POD_A, POD_B
from tests.podresources_server import Fault, PodResourcesServer, topology
from tests.scenarios import KUBELET_SCENARIOS

NAMES = {POD_A: ("team-a", "trainer-0"), POD_B: ("team-b", "db-0")}
GPU = "GPU-1b7c9a2e-0000-0000-0000-00000000000{}"


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A short path: a unix socket's path is limited to 107 bytes, and pytest's tmp_path is long."""
    directory = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    yield directory / "kubelet.sock"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path) -> HostTree:
    """The machine-gpu-static scenario: both pods pinned, Static memory, devices, and their pod log names."""
    return KUBELET_SCENARIOS["machine-gpu-static"](tmp_path / "machine")


@pytest.fixture
def server(socket_path: Path, host: HostTree) -> Iterator[PodResourcesServer]:
    server = PodResourcesServer(socket_path)
    server.serve_state(host.paths, NAMES)
    yield server
    server.stop()


def paths_with(host: HostTree, socket: Path) -> HostPaths:
    return dataclasses.replace(host.paths, podresources_socket_file=socket)


def numbers(snapshot: Snapshot) -> tuple[object, ...]:
    accounting = snapshot.accounting
    return accounting.accounts, accounting.fits, accounting.reserved, accounting.devices


def aligned(snapshot: Snapshot) -> set[tuple[str, str, str, str]]:
    return {(c.namespace, c.pod, c.pod_uid, c.container) for c in snapshot.accounting.containers}


def test_agreeing_sources_give_the_same_numbers_and_names_without_the_pod_log_directory(
    host: HostTree, server: PodResourcesServer, socket_path: Path
) -> None:
    files_only = SnapshotBuilder(host.paths, use_nvml=False, use_udev=False, use_podresources=False).build()
    shutil.rmtree(host.paths.pod_logs)  # identity now comes from podresources alone
    both = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False).build()
    assert both.source("podresources") is not None
    assert both.source("podresources").up  # type: ignore[union-attr]
    assert numbers(both) == numbers(files_only)
    assert aligned(both) == aligned(files_only)
    assert ("team-a", "trainer-0", POD_A, "app") in aligned(both)
    assert both.accounting.crosscheck is not None
    assert both.accounting.crosscheck.disagreements == ()
    assert both.disagreements_total == {}
    assert both.accounting.stale_entries == {"cpu_manager_state": 0, "memory_manager_state": 0, "device_checkpoint": 0}
    assert server.calls == {"List": 1, "GetAllocatableResources": 1}


def test_a_pod_podresources_does_not_list_is_stale_exactly(
    host: HostTree, server: PodResourcesServer, socket_path: Path
) -> None:
    server.listed = api_pb2.ListPodResourcesResponse(
        pod_resources=[pod for pod in server.listed.pod_resources if pod.name == "trainer-0"]
    )
    snapshot = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False).build()
    stale = snapshot.accounting.stale_entries
    assert stale["cpu_manager_state"] == 2, "db-0's two containers (db, init-schema)"
    assert stale["device_checkpoint"] == 2
    assert snapshot.accounting.crosscheck is not None
    assert snapshot.accounting.crosscheck.live_uids == {POD_A}
    assert snapshot.disagreements_total == {}, "without an API server, an unlisted pod is gone, not in dispute"


def test_disagreements_are_counted_per_resource_and_logged_once_per_container(
    host: HostTree, server: PodResourcesServer, socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = next(pod for pod in server.listed.pod_resources if pod.name == "trainer-0")
    app = next(container for container in trainer.containers if container.name == "app")
    app.cpu_ids.append(4)  # an extra CPU
    gpu = next(entry for entry in app.devices if entry.resource_name == "nvidia.com/gpu")
    gpu.topology.CopyFrom(topology({1}))  # the GPU on another NUMA node
    db = next(pod for pod in server.listed.pod_resources if pod.name == "db-0")
    server.listed.pod_resources.remove(db)  # a pod missing, that the API says runs here
    api_pods = (
        PodRef(uid=POD_A, namespace="team-a", name="trainer-0", spec_known=True, exclusive_native=True, running=True),
        PodRef(uid=POD_B, namespace="team-b", name="db-0", spec_known=True, exclusive_native=True, running=True),
    )
    builder = SnapshotBuilder(
        paths_with(host, socket_path), use_nvml=False, use_udev=False, pods_reader=lambda: api_pods
    )
    with caplog.at_level(logging.WARNING):
        first = builder.build()
        second = builder.build()
    assert first.accounting.crosscheck is not None
    found = {(d.pod, d.container, d.resource) for d in first.accounting.crosscheck.disagreements}
    assert ("trainer-0", "app", "cpu") in found
    assert ("trainer-0", "app", "nvidia.com/gpu") in found
    assert {
        ("db-0", "db", "cpu"),
        ("db-0", "db", "nvidia.com/gpu"),
        ("db-0", "db", "intel.com/sriov_netdevice"),
    } <= found
    assert ("trainer-0", "app", "intel.com/sriov_netdevice") not in found, "what agrees is not reported"
    assert second.disagreements_total == first.disagreements_total, "the same disagreement is counted once"
    assert first.disagreements_total["cpu"] >= 2
    assert caplog.text.count("disagree on cpu of team-a/trainer-0 container app") == 1
    cpu = next(d for d in first.accounting.crosscheck.disagreements if d.container == "app" and d.resource == "cpu")
    assert (cpu.state_files, cpu.podresources) == ("2-3,18-19", "2-4,18-19")
    assert numbers(first) == numbers(
        SnapshotBuilder(host.paths, use_nvml=False, use_udev=False, use_podresources=False).build()
    ), "the state files stay the numbers' source"


def test_terminal_pods_the_kubelet_still_lists_are_left_out(
    host: HostTree, server: PodResourcesServer, socket_path: Path
) -> None:
    server.listed.pod_resources.add(name="finished-job", namespace="team-c")
    api_pods = (PodRef(uid=POD_A, namespace="team-a", name="trainer-0", spec_known=True, running=True),
                PodRef(uid=POD_B, namespace="team-b", name="db-0", spec_known=True, running=True))  # fmt: skip
    builder = SnapshotBuilder(
        paths_with(host, socket_path), use_nvml=False, use_udev=False, pods_reader=lambda: api_pods
    )
    crosscheck = builder.build().accounting.crosscheck
    assert crosscheck is not None
    assert {pod.name for pod in crosscheck.pods} == {"trainer-0", "db-0"}


def test_a_free_devices_plugin_topology_comes_from_allocatable(
    host: HostTree, server: PodResourcesServer, socket_path: Path
) -> None:
    """GPU 1 is free; without NVML its UUID names no hardware, so the state files alone know no NUMA node
    for it (a pool of any node). Its plugin reports NUMA 0: it is accounted there."""
    free = next(entry for entry in server.allocatable.devices if list(entry.device_ids) == [GPU.format(1)])
    free.topology.CopyFrom(topology({0}))
    with_api = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False).build()
    files_only = SnapshotBuilder(host.paths, use_nvml=False, use_udev=False, use_podresources=False).build()

    def gpus(snapshot: Snapshot) -> dict[int, int]:
        return {a.numa_node: a.capacity for a in snapshot.accounting.accounts if a.resource == "nvidia.com/gpu"}

    assert gpus(with_api) != gpus(files_only)
    assert gpus(with_api)[0] == gpus(files_only).get(0, 0) + 1


def test_an_absent_socket_is_unavailable_not_an_error(host: HostTree, socket_path: Path) -> None:
    snapshot = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False).build()
    status = snapshot.source("podresources")
    assert status is not None
    assert (status.up, status.available) == (False, False)
    assert snapshot.errors_total == {}
    assert snapshot.accounting.crosscheck is None


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault(code=grpc.StatusCode.UNAVAILABLE), "unavailable"),
        (Fault(code=grpc.StatusCode.RESOURCE_EXHAUSTED), "resource_exhausted"),
        (Fault(code=grpc.StatusCode.PERMISSION_DENIED), "rpc"),
        (Fault(delay_seconds=1.0), "deadline"),
        (Fault(garbage=b"\xff\xff\xff\xff not a message"), "bad_response"),
    ],
)
def test_rpc_failures_keep_the_last_good_reading(
    host: HostTree, server: PodResourcesServer, socket_path: Path, fault: Fault, reason: str
) -> None:
    builder = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False)
    good = builder.build()
    assert builder._podresources_client is not None
    builder._podresources_client.timeout_seconds = 0.3
    server.fault = fault
    bad = builder.build()
    status = bad.source("podresources")
    assert status is not None
    assert not status.up
    assert status.reason == reason
    assert bad.errors_total == {("podresources", reason): 1}
    assert bad.accounting.crosscheck == good.accounting.crosscheck, "the last good reading is kept"
    server.fault = None
    assert builder.build().source("podresources").up  # type: ignore[union-attr]


def test_an_answer_over_the_size_limit_is_refused_not_read(
    host: HostTree, server: PodResourcesServer, socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's own limit (MAX_MESSAGE_BYTES, 16 MiB; 2 KiB here): the stream is reset as soon as the answer
    passes it, the reading is refused as resource_exhausted, and the last good one is kept."""
    builder = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False)
    good = builder.build()
    monkeypatch.setattr(podresources, "MAX_MESSAGE_BYTES", 2048)
    for index in range(200):
        server.listed.pod_resources.add(name=f"filler-{index}", namespace="a-namespace-with-a-long-name")
    assert server.listed.ByteSize() > 2048
    bad = builder.build()
    status = bad.source("podresources")
    assert status is not None
    assert (status.up, status.reason) == (False, "resource_exhausted"), status.message
    assert "larger than 2048 bytes" in status.message, status.message
    assert bad.accounting.crosscheck == good.accounting.crosscheck, "the last good reading is kept"


def test_a_socket_nobody_listens_on_is_unavailable(host: HostTree, socket_path: Path) -> None:
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.close()  # the socket file stays, nobody listens: a stopped kubelet
    snapshot = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False).build()
    assert snapshot.errors_total == {("podresources", "unavailable"): 1}


def test_a_regular_file_where_the_socket_should_be_is_said_so(host: HostTree, socket_path: Path) -> None:
    socket_path.write_text("not a socket")
    snapshot = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False).build()
    status = snapshot.source("podresources")
    assert status is not None
    assert not status.up
    assert "is not a socket" in status.message, status.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=512))
def test_garbage_answers_never_crash_or_reach_the_numbers(
    host: HostTree, server: PodResourcesServer, socket_path: Path, garbage: bytes
) -> None:
    builder = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False)
    good = builder.build()
    server.fault = Fault(garbage=garbage)
    try:
        snapshot = builder.build()
    finally:
        server.fault = None
    status = snapshot.source("podresources")
    assert status is not None
    if status.up:  # some byte strings are valid messages: then they were checked and accepted
        assert snapshot.accounting.crosscheck is not None
    else:
        assert status.reason == "bad_response"
        assert snapshot.accounting.crosscheck == good.accounting.crosscheck


def test_impossible_cpu_ids_are_a_bad_response(host: HostTree, server: PodResourcesServer, socket_path: Path) -> None:
    server.listed.pod_resources[0].containers[0].cpu_ids.append(-3)
    snapshot = SnapshotBuilder(paths_with(host, socket_path), use_nvml=False, use_udev=False).build()
    assert snapshot.errors_total == {("podresources", "bad_response"): 1}


def test_the_rate_limit_is_the_kubelets() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(100, 10, clock=lambda: now[0], sleep=sleep)
    assert [bucket.take(2) for _ in range(5)] == [0.0] * 5, "a burst of 10 calls"
    assert bucket.take(2) == pytest.approx(0.02), "then 100 a second"
    now[0] += 1.0
    assert bucket.take(2) == 0.0, "refilled, up to the burst"


@pytest.mark.skipif(not without_capabilities(), reason="needs setpriv to run without capabilities, as the chart does")
def test_a_socket_the_agent_may_not_connect_to_is_a_permission_error(
    host: HostTree, server: PodResourcesServer, socket_path: Path
) -> None:
    socket_path.chmod(0o600)
    socket_path.parent.chmod(0o755)
    extra = ["--no-nvml", "--debounce", "0", "--path.podresources-socket", str(socket_path)]
    socket_path.chmod(0o000)
    with Daemon(host.paths, extra=extra) as daemon:
        series = 'numa_topology_source_errors_total{reason="permission",source="podresources"}'
        wait_for(lambda: daemon.sample(series), what="the permission error counted")
        assert daemon.sample('numa_topology_source_up{source="podresources"}') == 0
        assert "connecting needs write access" in daemon.text


def test_snapshot_shows_disagreements_in_metrics_and_the_table(
    host: HostTree, server: PodResourcesServer, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter.cli import main

    server.listed.pod_resources[0].containers[0].cpu_ids.append(4)
    argv = ["snapshot", "--no-nvml", "--path.sysfs", str(host.paths.sysfs), "--path.kubelet",
            str(host.paths.kubelet_dir), "--path.podresources-socket", str(socket_path)]  # fmt: skip
    assert main([*argv, "--format", "metrics"]) == 0
    metrics = capsys.readouterr().out
    assert 'numa_topology_source_disagreements_total{resource="cpu"} 1.0' in metrics
    assert 'numa_topology_source_up{source="podresources"} 1.0' in metrics
    assert 'numa_topology_source_disagreement{container="app",namespace="team-a"' in metrics
    assert main([*argv, "--format", "table"]) == 0
    assert "State files and podresources disagree: 1" in capsys.readouterr().out
    assert main([*argv, "--no-podresources", "--format", "metrics"]) == 0
    assert 'source="podresources"' not in capsys.readouterr().out


def test_the_socket_is_read_through_a_read_only_mount(
    host: HostTree, server: PodResourcesServer, socket_path: Path, tmp_path: Path
) -> None:
    """What the chart relies on to keep every mount read-only: connect(2) to a socket on a read-only bind
    mount works (the kernel refuses writes to files there, not connections)."""
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux)")
    view = Path(tempfile.mkdtemp(prefix="pr-ro-", dir="/tmp"))
    probe = (
        "from pathlib import Path; from exporter.sources.podresources import PodResourcesClient; "
        f"reading = PodResourcesClient(Path('{view}/kubelet.sock')).read(); print(len(reading.pods))"
    )
    script = (
        f"mount --bind {socket_path.parent} {view} && mount -o remount,bind,ro {view} && "
        f'! touch {view}/written 2>/dev/null && {sys.executable} -c "{probe}"'
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False)
    view.rmdir()
    if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"no mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2", "both pods listed through the read-only mount"


def test_sigterm_during_a_podresources_call_stops_within_a_second(
    host: HostTree, server: PodResourcesServer, socket_path: Path
) -> None:
    """A refresh waiting on the kubelet's socket (answering after 4 s) does not hold up the exit."""
    import signal
    import time

    extra = ["--no-nvml", "--debounce", "0", "--resync-interval", "0.2", "--path.podresources-socket",
             str(socket_path)]  # fmt: skip
    with Daemon(host.paths, extra=extra) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        before = server.calls["List"]
        server.fault = Fault(delay_seconds=4.0)
        wait_for(lambda: server.calls["List"] > before, what="a refresh blocked in List")
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 1.0
