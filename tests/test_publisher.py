"""The NRT writer and the pod watch, with the real `kubernetes` client, against the fake API server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from exporter.metrics import NrtStats
from exporter.publisher.api import KubeApi, client_from
from exporter.publisher.pods import PodWatcher
from exporter.publisher.writer import NrtWriter
from exporter.snapshot import SnapshotBuilder
from tests.daemon import Daemon, wait_for
from tests.fakeapi import FakeApiServer, Fault, validation_errors
from tests.hosttree import HostTree
from tests.kubelet_files import (
    CPU_STATIC_2PODS,
    CPU_STATIC_EMPTY,
    POD_A,
    fixture_config,
    install,
    pod_logs,
    replace_atomically,
)

NODE = "worker-1"


@pytest.fixture
def builder(static_machine: HostTree) -> SnapshotBuilder:
    return SnapshotBuilder(static_machine.paths, use_nvml=False, use_udev=False)


@pytest.fixture
def static_machine(machine: HostTree) -> HostTree:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    pod_logs(machine, [("team-a", "trainer-0", POD_A)])
    return machine


def make_writer(apiserver: FakeApiServer, tmp_path: Path, **options: float) -> NrtWriter:
    api = KubeApi(client_from(apiserver.kubeconfig(tmp_path / "kubeconfig")))
    timing = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05, "slow_retry_seconds": 0.05, **options}
    return NrtWriter(api, node_name=NODE, stats=NrtStats(), **timing)  # type: ignore[arg-type]


async def publish(writer: NrtWriter, builder: SnapshotBuilder, reasons: set[str] | None = None) -> None:
    await writer.on_snapshot(builder.build(), reasons or {"inotify"})
    await writer.sync()


def cpu_available(apiserver: FakeApiServer, numa: int) -> int:
    obj = apiserver.nrt(NODE)
    assert obj is not None
    zone = next(z for z in obj["zones"] if z["name"] == f"node-{numa}")
    return int(next(r["available"] for r in zone["resources"] if r["name"] == "cpu"))


def test_created_at_start_then_zero_writes_while_nothing_changes(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    uid = apiserver.add_node(NODE)
    writer = make_writer(apiserver, tmp_path)

    async def scenario() -> None:
        await publish(writer, builder, {"start"})
        for _ in range(50):
            await publish(writer, builder)
        for _ in range(3):
            await publish(writer, builder, {"resync"})

    asyncio.run(scenario())
    assert apiserver.writes() == [("POST", "/apis/topology.node.k8s.io/v1alpha2/noderesourcetopologies")]
    assert writer.stats.writes == {("create", "success"): 1}
    obj = apiserver.nrt(NODE)
    assert obj is not None
    assert validation_errors(obj) == []
    assert obj["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1", "kind": "Node", "name": NODE, "uid": uid, "blockOwnerDeletion": False,
    }  # fmt: skip
    assert writer.stats.last_success_timestamp is not None


def test_one_write_per_real_change(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path)
    states = [CPU_STATIC_EMPTY, CPU_STATIC_2PODS]

    async def scenario() -> None:
        await publish(writer, builder)
        for change in range(6):
            replace_atomically(static_machine.paths.cpu_manager_state, states[change % 2])
            await publish(writer, builder)
            await publish(writer, builder)

    asyncio.run(scenario())
    methods = [method for method, _ in apiserver.writes()]
    assert methods == ["POST"] + ["PUT"] * 6
    assert cpu_available(apiserver, 1) == 10


def test_an_object_changed_or_deleted_by_someone_else_is_reasserted_on_resync(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path)
    asyncio.run(publish(writer, builder))
    apiserver.call(apiserver.state.nrts[NODE]["zones"].pop)
    asyncio.run(publish(writer, builder))
    assert len(apiserver.nrt(NODE)["zones"]) == 1, "no resync yet: unchanged content is not re-read"  # type: ignore[index]
    asyncio.run(publish(writer, builder, {"resync"}))
    assert len(apiserver.nrt(NODE)["zones"]) == 2  # type: ignore[index]
    apiserver.call(apiserver.state.nrts.clear)
    asyncio.run(publish(writer, builder, {"resync"}))
    assert apiserver.nrt(NODE) is not None


def test_recovery_after_the_api_server_was_down(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path)
    apiserver.state.down = True

    async def scenario() -> None:
        await writer.on_snapshot(builder.build(), {"start"})
        task = asyncio.create_task(writer.sync())
        for _ in range(20):
            await asyncio.sleep(0.02)
            assert not task.done()
        apiserver.state.down = False
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    assert cpu_available(apiserver, 1) == 10


def test_429_and_5xx_back_off_and_converge(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path)
    apiserver.state.faults = [Fault(429), Fault(500), Fault(503, "POST"), Fault(500, "POST")]
    asyncio.run(asyncio.wait_for(publish(writer, builder), timeout=10))
    assert apiserver.nrt(NODE) is not None
    assert apiserver.state.faults == []
    assert writer.stats.writes[("create", "unavailable")] == 4, "failed reads count toward the write they were for"
    assert writer.stats.writes[("create", "success")] == 1


def test_a_conflict_storm_converges(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path)
    asyncio.run(publish(writer, builder))
    apiserver.state.faults = [Fault(409, "PUT") for _ in range(25)]
    replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_EMPTY)
    asyncio.run(asyncio.wait_for(publish(writer, builder), timeout=20))
    assert cpu_available(apiserver, 1) == 16
    assert writer.stats.writes[("update", "conflict")] == 25
    assert writer.stats.writes[("update", "success")] == 1


def test_a_rejected_object_is_counted_and_not_retried_until_it_changes(
    builder: SnapshotBuilder,
    static_machine: HostTree,
    apiserver: FakeApiServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = make_writer(apiserver, tmp_path)
    apiserver.state.faults = [Fault(422, "POST")]
    with caplog.at_level(logging.ERROR):
        asyncio.run(publish(writer, builder))
        for _ in range(5):
            asyncio.run(publish(writer, builder))
    assert writer.stats.writes == {("create", "invalid"): 1}
    assert "rejected NodeResourceTopology worker-1: scripted fault 422" in caplog.text
    replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_EMPTY)
    asyncio.run(publish(writer, builder))
    assert writer.stats.writes[("create", "success")] == 1


def test_a_missing_crd_is_reported_clearly_and_retried(
    builder: SnapshotBuilder,
    static_machine: HostTree,
    apiserver: FakeApiServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = make_writer(apiserver, tmp_path)
    apiserver.state.crd_installed = False

    async def scenario() -> None:
        await writer.on_snapshot(builder.build(), {"start"})
        task = asyncio.create_task(writer.sync())
        await asyncio.sleep(0.3)
        assert not task.done()
        apiserver.state.crd_installed = True
        await asyncio.wait_for(task, timeout=10)

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert caplog.text.count("install the NodeResourceTopology CRD") == 1
    assert apiserver.nrt(NODE) is not None


def test_slow_responses_do_not_block_the_event_loop(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path)
    apiserver.state.latency_seconds = 0.3

    async def scenario() -> int:
        await writer.on_snapshot(builder.build(), {"start"})
        task = asyncio.create_task(writer.sync())
        ticks = 0
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return ticks

    assert asyncio.run(scenario()) > 30
    assert apiserver.nrt(NODE) is not None


def test_pod_watch_names_pods_on_this_node(apiserver: FakeApiServer, tmp_path: Path) -> None:
    api = KubeApi(client_from(apiserver.kubeconfig(tmp_path / "kubeconfig")))
    apiserver.set_pod(namespace="team-a", name="trainer-0", uid="uid-a", node=NODE)
    apiserver.set_pod(namespace="team-b", name="elsewhere", uid="uid-b", node="worker-2")
    changes: list[int] = []

    async def scenario() -> None:
        watcher = PodWatcher(api, node_name=NODE, on_change=lambda: changes.append(1), retry_seconds=5)
        watcher.start(asyncio.get_running_loop())
        while not watcher.synced:
            await asyncio.sleep(0.01)
        assert [(p.namespace, p.name) for p in watcher.pods()] == [("team-a", "trainer-0")]
        apiserver.set_pod(namespace="team-a", name="trainer-1", uid="uid-c", node=NODE)
        while len(watcher.pods()) < 2:
            await asyncio.sleep(0.01)
        apiserver.set_pod(namespace="team-a", name="trainer-0", uid="uid-a", node=NODE, phase="Succeeded")
        apiserver.delete_pod("uid-c")
        while watcher.pods():
            await asyncio.sleep(0.01)
        watcher.stop()

    asyncio.run(asyncio.wait_for(scenario(), timeout=15))
    assert len(changes) >= 3
    lists = [path for method, path in apiserver.state.requests if path == "/api/v1/pods"]
    assert len(lists) == 1, "one list, then every change arrived through the one watch (no re-list)"


def test_serve_publishes_and_names_pods_from_the_api(
    static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.add_node(NODE)
    apiserver.set_pod(namespace="team-a", name="api-named", uid=POD_A, node=NODE)
    kubeconfig = apiserver.kubeconfig(tmp_path / "kubeconfig")
    extra = ["--kubeconfig", str(kubeconfig), "--node-name", NODE, "--debounce", "0", "--no-nvml"]
    with Daemon(static_machine.paths, extra=extra) as daemon:
        wait_for(lambda: apiserver.nrt(NODE), what="the NRT object")
        success = 'numa_topology_nrt_writes_total{operation="create",result="success"}'
        wait_for(lambda: daemon.sample(success) == 1, what="the create counted")
        aligned = (
            'numa_topology_container_aligned{container="app",namespace="team-a",pod="api-named",pod_uid="'
            + POD_A
            + '"}'
        )
        wait_for(lambda: daemon.sample(aligned) == 1, what="pod names from the API watch")
        replace_atomically(
            static_machine.paths.cpu_manager_state,
            CPU_STATIC_EMPTY,
        )
        wait_for(lambda: cpu_available(apiserver, 1) == 16, what="the change published")
        update = 'numa_topology_nrt_writes_total{operation="update",result="success"}'
        wait_for(lambda: daemon.sample(update) == 1, what="the update counted (after the server applied it)")
        assert daemon.stop() == 0


def test_serve_without_an_api_server_says_so_once(static_machine: HostTree, tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "", "KUBECONFIG": ""}
    with Daemon(static_machine.paths, extra=["--no-nvml", "--log-level", "warning"], env=env) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        daemon.stop()
    text = "".join(daemon.output)
    assert text.count("running standalone") == 1


def test_min_interval_coalesces_changes_into_one_write(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path, min_interval_seconds=1.0)
    states = [CPU_STATIC_EMPTY, CPU_STATIC_2PODS]

    async def scenario() -> None:
        task = asyncio.create_task(writer.run())
        await writer.on_snapshot(builder.build(), {"start"})
        while writer.writes < 1:
            await asyncio.sleep(0.01)
        for change in range(5):
            replace_atomically(static_machine.paths.cpu_manager_state, states[change % 2])
            await writer.on_snapshot(builder.build(), {"inotify"})
            await asyncio.sleep(0.02)
        while writer.writes < 2:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert cpu_available(apiserver, 1) == 16, "the newest content"
    assert [method for method, _ in apiserver.writes()] == ["POST", "PUT"], "five changes in the interval: one write"


def test_an_unknown_node_is_looked_up_once_per_resync(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path)
    states = [CPU_STATIC_EMPTY, CPU_STATIC_2PODS]

    async def scenario() -> None:
        for change in range(4):
            replace_atomically(static_machine.paths.cpu_manager_state, states[change % 2])
            await publish(writer, builder)
        uid = apiserver.add_node(NODE)
        await publish(writer, builder, {"resync"})
        assert apiserver.nrt(NODE)["metadata"]["ownerReferences"][0]["uid"] == uid  # type: ignore[index]

    asyncio.run(scenario())
    lookups = [path for method, path in apiserver.state.requests if path == f"/api/v1/nodes/{NODE}"]
    assert len(lookups) == 2, "once at start, once on the resync: not on every change"


def test_a_resync_cuts_a_long_backoff_short(
    builder: SnapshotBuilder, static_machine: HostTree, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    writer = make_writer(apiserver, tmp_path, backoff_base_seconds=600, backoff_max_seconds=600)
    apiserver.state.faults = [Fault(503)]

    async def scenario() -> None:
        await writer.on_snapshot(builder.build(), {"start"})
        task = asyncio.create_task(writer.sync())
        while not writer.stats.writes and not apiserver.state.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not task.done(), "backing off for minutes"
        await writer.on_snapshot(builder.build(), {"resync"})
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert apiserver.nrt(NODE) is not None
