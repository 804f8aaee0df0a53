"""The NRT writer in process, with the real `kubernetes` client, against the real API server (through the
fault-injecting proxy, which also records what the writer asks): what it writes and when, how it backs off
and converges, and the daemon naming pods from the real pod watch."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from exporter.agent.writer import NrtWriter
from exporter.kubeapi import KubeApi, client_from
from exporter.snapshot import SnapshotBuilder
from exporter.views.metrics import NrtStats
from tests.controlplane import AGENT_USER, NRT_PATH, ControlPlane, guaranteed_pod
from tests.daemon import Daemon, wait_for
from tests.faultproxy import FaultProxy
from tests.hosttree import HostTree
from tests.kubelet_files import CPU_STATIC_2PODS, CPU_STATIC_EMPTY, POD_A, fixture_config, install, replace_atomically

WRITES = ("PUT", "POST", "PATCH", "DELETE")


@pytest.fixture
def builder(static_machine: HostTree) -> SnapshotBuilder:
    return SnapshotBuilder(static_machine.paths, use_nvml=False, use_udev=False)


@pytest.fixture
def static_machine(machine: HostTree) -> HostTree:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    return machine


def make_writer(kube: ControlPlane, proxy: FaultProxy, node: str, **options: float) -> NrtWriter:
    api = KubeApi(client_from(kube.kubeconfig(AGENT_USER, server=proxy.url)))
    timing = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05, "slow_retry_seconds": 0.05, **options}
    return NrtWriter(api, node_name=node, stats=NrtStats(), **timing)  # type: ignore[arg-type]


async def publish(writer: NrtWriter, builder: SnapshotBuilder, reasons: set[str] | None = None) -> None:
    await writer.on_snapshot(builder.build(), reasons or {"inotify"})
    await writer.sync()


def writes(proxy: FaultProxy, since: int = 0) -> list[tuple[str, str]]:
    return [(seen.method, seen.path) for seen in proxy.requests(since=since) if seen.method in WRITES]


def cpu_available(kube: ControlPlane, node: str, numa: int = 1) -> int:
    obj = kube.nrt(node)
    assert obj is not None
    zone = next(z for z in obj["zones"] if z["name"] == f"node-{numa}")
    return int(next(r["available"] for r in zone["resources"] if r["name"] == "cpu"))


def test_created_at_start_then_zero_writes_while_nothing_changes(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    uid = kube.request("GET", f"/api/v1/nodes/{node}").body["metadata"]["uid"]
    writer = make_writer(kube, proxy, node)

    async def scenario() -> None:
        await publish(writer, builder, {"start"})
        for _ in range(50):
            await publish(writer, builder)
        for _ in range(3):
            await publish(writer, builder, {"resync"})

    asyncio.run(scenario())
    assert writes(proxy) == [("POST", NRT_PATH)]
    assert writer.stats.writes == {("create", "success"): 1}
    obj = kube.nrt(node)
    assert obj is not None, "accepted by the real server's CRD schema"
    assert obj["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "blockOwnerDeletion": False,
    }  # fmt: skip
    assert writer.stats.last_success_timestamp is not None


def test_one_write_per_real_change(
    builder: SnapshotBuilder, static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    writer = make_writer(kube, proxy, node)
    states = [CPU_STATIC_EMPTY, CPU_STATIC_2PODS]

    async def scenario() -> None:
        await publish(writer, builder)
        for change in range(6):
            replace_atomically(static_machine.paths.cpu_manager_state, states[change % 2])
            await publish(writer, builder)
            await publish(writer, builder)

    asyncio.run(scenario())
    assert [method for method, _ in writes(proxy)] == ["POST"] + ["PUT"] * 6
    assert cpu_available(kube, node) == 10


def test_an_object_changed_or_deleted_by_someone_else_is_reasserted_on_resync(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """The writer alone (the daemon also watches its object and repairs at once: tests/integration/test_kube.py)."""
    writer = make_writer(kube, proxy, node)
    asyncio.run(publish(writer, builder))
    obj = kube.nrt(node)
    assert obj is not None
    assert len(obj["zones"]) == 2
    obj["zones"].pop()
    kube.ok("PUT", f"{NRT_PATH}/{node}", obj)
    asyncio.run(publish(writer, builder))
    assert len(kube.nrt(node)["zones"]) == 1, "no resync yet: unchanged content is not re-read"  # type: ignore[index]
    asyncio.run(publish(writer, builder, {"resync"}))
    assert len(kube.nrt(node)["zones"]) == 2  # type: ignore[index]
    kube.delete_nrt(node)
    asyncio.run(publish(writer, builder, {"resync"}))
    assert kube.nrt(node) is not None


def test_recovery_after_the_api_server_was_down(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    writer = make_writer(kube, proxy, node)
    proxy.go_down()

    async def scenario() -> None:
        await writer.on_snapshot(builder.build(), {"start"})
        task = asyncio.create_task(writer.sync())
        for _ in range(20):
            await asyncio.sleep(0.02)
            assert not task.done()
        proxy.heal()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    assert cpu_available(kube, node) == 10


def test_429_and_5xx_back_off_and_converge(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    writer = make_writer(kube, proxy, node)
    proxy.fail(429, when=lambda method, path: path.startswith(NRT_PATH), times=1)
    proxy.fail(500, when=lambda method, path: path.startswith(NRT_PATH), times=1)
    proxy.fail(503, when=lambda method, path: method == "POST", times=1)
    proxy.fail(500, when=lambda method, path: method == "POST", times=1)
    asyncio.run(asyncio.wait_for(publish(writer, builder), timeout=10))
    assert kube.nrt(node) is not None
    injected = [seen.status for seen in proxy.requests() if seen.status >= 429]
    assert sorted(injected) == [429, 500, 500, 503]
    assert writer.stats.writes[("create", "unavailable")] == 4, "failed reads count toward the write they were for"
    assert writer.stats.writes[("create", "success")] == 1


def test_a_conflict_storm_converges(
    builder: SnapshotBuilder, static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    writer = make_writer(kube, proxy, node)
    asyncio.run(publish(writer, builder))
    proxy.fail(409, when=lambda method, path: method == "PUT", times=25)
    replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_EMPTY)
    asyncio.run(asyncio.wait_for(publish(writer, builder), timeout=20))
    assert cpu_available(kube, node) == 16
    assert writer.stats.writes[("update", "conflict")] == 25
    assert writer.stats.writes[("update", "success")] == 1


def test_a_real_conflict_with_another_writer_converges(
    builder: SnapshotBuilder, static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """Someone else's write moves the resourceVersion on: the writer's PUT is refused by the real server
    (409), it reads the object back and writes again."""
    writer = make_writer(kube, proxy, node)
    asyncio.run(publish(writer, builder))
    obj = kube.nrt(node)
    assert obj is not None
    obj["metadata"].setdefault("labels", {})["someone"] = "else"
    kube.ok("PUT", f"{NRT_PATH}/{node}", obj)
    mark = proxy.mark()
    replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_EMPTY)
    asyncio.run(asyncio.wait_for(publish(writer, builder), timeout=20))
    assert cpu_available(kube, node) == 16
    assert [(seen.method, seen.status) for seen in proxy.requests(since=mark)] == [
        ("PUT", 409), ("GET", 200), ("PUT", 200)
    ]  # fmt: skip
    assert writer.stats.writes[("update", "conflict")] == 1


def test_a_rejected_object_is_counted_and_not_retried_until_it_changes(
    builder: SnapshotBuilder,
    *,
    static_machine: HostTree,
    kube: ControlPlane,
    proxy: FaultProxy,
    node: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = make_writer(kube, proxy, node)
    proxy.fail(422, when=lambda method, path: method == "POST", times=1)
    with caplog.at_level(logging.ERROR):
        asyncio.run(publish(writer, builder))
        for _ in range(5):
            asyncio.run(publish(writer, builder))
    assert writer.stats.writes == {("create", "invalid"): 1}
    assert f"rejected NodeResourceTopology {node}: injected 422" in caplog.text
    replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_EMPTY)
    asyncio.run(publish(writer, builder))
    assert writer.stats.writes[("create", "success")] == 1


def test_slow_responses_do_not_block_the_event_loop(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    writer = make_writer(kube, proxy, node)
    proxy.slow(0.3)

    async def scenario() -> int:
        await writer.on_snapshot(builder.build(), {"start"})
        task = asyncio.create_task(writer.sync())
        ticks = 0
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return ticks

    assert asyncio.run(scenario()) > 30
    assert kube.nrt(node) is not None


def test_our_own_write_reported_before_its_answer_is_not_a_repair(
    builder: SnapshotBuilder, static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """The writer's own watch may report a write before the server's answer reaches the writer (here the
    answer is held 0.5 s, and a newer change is seen meanwhile): that object is ours, not someone else's edit
    to repair."""
    import time

    from exporter.agent.ownwatch import NrtWatcher
    from exporter.views.nrt import content

    writer = make_writer(kube, proxy, node)
    api = KubeApi(client_from(kube.kubeconfig(AGENT_USER, server=proxy.url)))
    reported: list[tuple[float, dict[str, object] | None]] = []

    def observer(obj: dict[str, object] | None, synced: bool) -> None:
        reported.append((time.monotonic(), content(obj) if obj is not None else None))
        writer.observe(obj, synced)  # type: ignore[arg-type]

    async def scenario() -> dict[str, object]:
        watcher = NrtWatcher(api, node_name=node, observer=observer)
        watcher.start(asyncio.get_running_loop())
        try:
            await publish(writer, builder, {"start"})
            for _ in range(500):
                if writer._watched and reported and reported[-1][1] == writer._written:
                    break
                await asyncio.sleep(0.01)
            assert writer._watched, "the writer's own watch synced"
            proxy.slow_reply(0.5, when=lambda method, path: method == "PUT")
            replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_EMPTY)
            await writer.on_snapshot(builder.build(), {"inotify"})
            sent = writer.desired()
            task = asyncio.create_task(writer.sync())
            while writer._sending is None:  # the write is on its way: its report cannot have come yet
                await asyncio.sleep(0.001)
            replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_2PODS)
            await writer.on_snapshot(builder.build(), {"inotify"})  # newer than what is in flight
            await task
            return content(sent)
        finally:
            watcher.stop()

    sent = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    put = next(seen for seen in proxy.requests() if seen.method == "PUT")
    early = [at for at, reported_content in reported if reported_content == sent and at < put.at + 0.5]
    assert early, "the watch reported the write before its answer came (else this test proves nothing)"
    assert writer.repairs == 0, "our own write, reported before its answer came, was repaired"


def test_a_write_whose_answer_was_lost_still_gets_its_requeue(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """The server takes a write and the answer is lost (a 504 after the commit): the retry finds the object
    already as wanted. Where that content is one the scheduler's cache can resync from (here: the pod that
    was pending now admitted), the requeue update that follows such a write still comes."""
    from exporter.model import PodRef

    pods: dict[str, PodRef] = {}
    builder.use_pods_reader(lambda: tuple(pods.values()))
    writer = make_writer(kube, proxy, node, requeue_after_seconds=0.3)

    def bind(name: str, *, running: bool = False) -> None:
        pods[name] = PodRef(uid=f"uid-{name}", namespace="team", name=name, spec_known=True, exclusive_native=True,
                            running=running)  # fmt: skip

    async def scenario() -> None:
        requeues = asyncio.create_task(writer.run_requeues())
        await publish(writer, builder, {"start"})
        bind("a")
        await publish(writer, builder, {"pods"})  # a#pending: no requeue follows it
        for _ in range(200):
            if writer.requeues == 1 and not writer.requeue_pending:
                break
            await asyncio.sleep(0.01)
        proxy.lose_replies(504, when=lambda method, path: method == "PUT", times=1)
        bind("a", running=True)
        await publish(writer, builder, {"pods"})
        for _ in range(300):
            if writer.requeues == 2:
                break
            await asyncio.sleep(0.01)
        requeues.cancel()

    asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    failed = {key: count for key, count in writer.stats.writes.items() if key[0] == "update" and key[1] != "success"}
    assert sum(failed.values()) >= 1, f"the answer was lost: {writer.stats.writes}"
    assert writer.requeues == 2, "the admitted content, taken by the server unanswered, got no requeue update"


def state_for(uid: str) -> bytes:
    """The two-pod CPU state with pod A renamed to a real pod's UID (checksum 0: the kubelet accepts it)."""
    state = json.loads(CPU_STATIC_2PODS)
    state["entries"][uid] = state["entries"].pop(POD_A)
    state["checksum"] = 0
    return json.dumps(state).encode()


def test_serve_publishes_and_names_pods_from_the_api(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    kube.ensure_namespace("team-a")
    created = kube.ok(
        "POST",
        "/api/v1/namespaces/team-a/pods",
        guaranteed_pod(f"api-named-{node}"[:60], node, cpu="2", container="app"),
    )
    uid = created["metadata"]["uid"]
    replace_atomically(static_machine.paths.cpu_manager_state, state_for(uid))
    kubeconfig = kube.kubeconfig(AGENT_USER, server=proxy.url)
    extra = ["--kubeconfig", str(kubeconfig), "--node-name", node, "--debounce", "0", "--no-nvml"]
    with Daemon(static_machine.paths, extra=extra) as daemon:
        wait_for(lambda: kube.nrt(node), what="the NRT object")
        success = 'numa_topology_nrt_writes_total{operation="create",result="success"}'
        wait_for(lambda: daemon.sample(success) == 1, what="the create counted")
        name = created["metadata"]["name"]
        aligned = f'numa_topology_container_aligned{{container="app",namespace="team-a",pod="{name}",pod_uid="{uid}"}}'
        wait_for(lambda: daemon.sample(aligned) == 1, what="pod names from the API watch")
        update = 'numa_topology_nrt_writes_total{operation="update",result="success"}'
        # The pod watch's first sync may have changed the fingerprint (an update of its own, perhaps still
        # on its way): the change below is counted at least once more, once the server has applied it.
        updates = daemon.sample(update) or 0
        replace_atomically(static_machine.paths.cpu_manager_state, CPU_STATIC_EMPTY)
        wait_for(lambda: cpu_available(kube, node) == 16, what="the change published")
        wait_for(
            lambda: (daemon.sample(update) or 0) >= updates + 1, what="the update counted (after the server applied it)"
        )
        assert daemon.stop() == 0


def test_serve_without_an_api_server_says_so_once(static_machine: HostTree) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "", "KUBECONFIG": ""}
    with Daemon(static_machine.paths, extra=["--no-nvml", "--log-level", "warning"], env=env) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        daemon.stop()
    text = "".join(daemon.output)
    assert text.count("running standalone") == 1


def test_min_interval_coalesces_changes_into_one_write(
    builder: SnapshotBuilder, static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    writer = make_writer(kube, proxy, node, min_interval_seconds=1.0)
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
    assert cpu_available(kube, node) == 16, "the newest content"
    assert [method for method, _ in writes(proxy)] == ["POST", "PUT"], "five changes in the interval: one write"


def test_an_unknown_node_is_looked_up_once_per_resync(
    builder: SnapshotBuilder, static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    late = f"late-{node}"[:63]
    writer = make_writer(kube, proxy, late)
    states = [CPU_STATIC_EMPTY, CPU_STATIC_2PODS]

    async def scenario() -> None:
        for change in range(4):
            replace_atomically(static_machine.paths.cpu_manager_state, states[change % 2])
            await publish(writer, builder)
        uid = kube.add_node(late)
        await publish(writer, builder, {"resync"})
        assert kube.nrt(late)["metadata"]["ownerReferences"][0]["uid"] == uid  # type: ignore[index]

    asyncio.run(scenario())
    lookups = [seen for seen in proxy.requests() if seen.method == "GET" and seen.path == f"/api/v1/nodes/{late}"]
    assert len(lookups) == 2, "once at start, once on the resync: not on every change"


def test_a_resync_cuts_a_long_backoff_short(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    writer = make_writer(kube, proxy, node, backoff_base_seconds=600, backoff_max_seconds=600)
    proxy.fail(503, when=lambda method, path: path.startswith(NRT_PATH), times=1)

    async def scenario() -> None:
        await writer.on_snapshot(builder.build(), {"start"})
        task = asyncio.create_task(writer.sync())
        while not [seen for seen in proxy.requests() if seen.status == 503]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not task.done(), "backing off for minutes"
        await writer.on_snapshot(builder.build(), {"resync"})
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert kube.nrt(node) is not None


def test_each_burst_of_writes_is_followed_by_one_requeue_update_after_the_schedulers_resync(
    builder: SnapshotBuilder, static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """The scheduler's cache flushes a node only on its resync, and the flush requeues no pending pod: the
    writer follows its writes, `requeue_after_seconds` later, with one update of the object (an annotation),
    the NRT update event NodeResourceTopologyMatch requeues on. One covers every write made that long before
    it; two are that far apart at least; the content is untouched; idle, nothing more is written."""
    after = 0.4
    writer = make_writer(kube, proxy, node, requeue_after_seconds=after)
    states = [CPU_STATIC_EMPTY, CPU_STATIC_2PODS]

    async def scenario() -> None:
        requeues = asyncio.create_task(writer.run_requeues())
        task = asyncio.create_task(writer.run())
        await writer.on_snapshot(builder.build(), {"start"})
        for change in range(5):  # a burst: five writes within a tenth of the period
            while writer.writes < change + 1:
                await asyncio.sleep(0.005)
            replace_atomically(static_machine.paths.cpu_manager_state, states[change % 2])
            await writer.on_snapshot(builder.build(), {"inotify"})
        while writer.writes < 6:
            await asyncio.sleep(0.005)
        while writer.requeues < 2 or writer.requeue_pending:
            await asyncio.sleep(0.01)
        task.cancel()
        requeues.cancel()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    seen = [(s.method, s.at) for s in proxy.requests() if s.method in WRITES]
    assert [method for method, _ in seen] == ["POST"] + ["PUT"] * 5 + ["PUT"] * 2, seen
    content_writes, requeue_writes = [at for _, at in seen[:6]], [at for _, at in seen[6:]]
    assert requeue_writes[0] >= content_writes[0] + after, "not before the cache could resync from the first write"
    assert requeue_writes[1] >= content_writes[-1] + after, "the last write is covered, after its resync"
    assert requeue_writes[1] - requeue_writes[0] >= after - 0.01, "at most one per period"
    assert writer.stats.writes[("requeue", "success")] == 2
    obj = kube.nrt(node)
    assert obj is not None
    assert "numa-topology-exporter.io/requeue" in obj["metadata"]["annotations"]
    assert cpu_available(kube, node) == 16, "the content is the newest write's"


def test_a_pod_bound_to_the_node_is_named_at_once_whatever_the_debounce(
    static_machine: HostTree, kube: ControlPlane, node: str
) -> None:
    """Until the object names a pod bound here, the scheduler's cache may resync from it and drop that pod's
    reservation (docs/product.md): the agent names it (`<name>#pending`, no kubelet admits it here) as soon as
    its pod watch shows the bind, not after the debounce (1 s here). Timed by the test's own watch of the
    object, from the moment the pod's creation, bound, was sent; each pod is deleted (and the object seen
    without it) before the next is bound, so that every bind finds an object the cache could resync from."""
    from exporter.fingerprint import fingerprint
    from exporter.views.nrt import PENDING
    from tests.workload import NrtChanges, time_of_day

    kube.ensure_namespace("team-b")
    extra = ["--kubeconfig", str(kube.kubeconfig(AGENT_USER)), "--node-name", node, "--debounce", "1", "--no-nvml"]
    with Daemon(static_machine.paths, extra=extra):
        wait_for(lambda: kube.nrt(node), what="the NRT object")
        changes = NrtChanges(kube)
        try:
            latencies = []
            for index in range(4):
                name = f"bound-{index}-{node}"[:60]
                created = time_of_day()  # before the request: the latency below includes the API server's
                kube.ok("POST", "/api/v1/namespaces/team-b/pods", guaranteed_pod(name, node, cpu="2"))
                want = fingerprint([("team-b", name + PENDING)])
                wait_for(lambda w=want: changes.at(node, time_of_day()) == w, what=f"{name} named #pending")
                arrived = next(t for t, value in changes.changes[node] if value == want and t >= created)
                latencies.append(arrived - created)
                kube.request("DELETE", f"/api/v1/namespaces/team-b/pods/{name}?gracePeriodSeconds=0")
                empty = fingerprint([])
                wait_for(lambda e=empty: changes.at(node, time_of_day()) == e, what=f"{name} no longer named")
        finally:
            changes.stop()
    assert max(latencies) < 0.5, f"seconds from a bind to the object naming the pod: {latencies}"


def test_while_the_object_names_a_pending_pod_the_writes_the_cache_cannot_use_are_held(
    builder: SnapshotBuilder, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """Told of a scheduler with the reserve cache (`requeue_after_seconds`), the writer holds back a content
    that names a pod the kubelet has not admitted (`#pending`) while the object already names one: the cache
    resyncs from neither, and every update is an event on which the scheduler retries each pod it turned
    away, against a cache that has not changed. The first pending name goes out at once (it is what keeps
    the cache from resyncing), the content that names no pending pod any more at once too, and only that one
    is followed by a requeue update. A pod left pending holds a newer content back PENDING_HOLD_SECONDS at
    most."""
    from exporter.agent.writer import PENDING_HOLD_SECONDS
    from exporter.fingerprint import ATTRIBUTE, fingerprint
    from exporter.model import PodRef
    from exporter.views.nrt import PENDING

    after = 0.4
    pods: dict[str, PodRef] = {}
    builder.use_pods_reader(lambda: tuple(pods.values()))
    writer = make_writer(kube, proxy, node, requeue_after_seconds=after)

    def bind(name: str, *, running: bool = False) -> None:
        pods[name] = PodRef(uid=f"uid-{name}", namespace="team", name=name, spec_known=True, exclusive_native=True,
                            running=running)  # fmt: skip

    def published() -> str:
        obj = kube.nrt(node)
        assert obj is not None
        return next(a["value"] for a in obj["attributes"] if a["name"] == ATTRIBUTE)

    async def until(condition: object, what: str) -> None:
        for _ in range(400):
            if callable(condition) and condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not within 4 s: {what}")

    async def scenario() -> tuple[float, float]:
        requeues = asyncio.create_task(writer.run_requeues())
        task = asyncio.create_task(writer.run())
        await writer.on_snapshot(builder.build(), {"start"})
        await until(lambda: writer.requeues == 1 and not writer.requeue_pending, "the creation's requeue update")
        for step in (lambda: bind("a"), lambda: bind("b"), lambda: bind("a", running=True)):
            step()
            await writer.on_snapshot(builder.build(), {"pods"})
            await until(lambda: writer.writes >= 2, "the first pending name written")
            await asyncio.sleep(0.1)  # the writer's turn: a write here would be seen below
        assert writer.writes == 2, "b's bind and a's admission were written while a#pending was published"
        bind("b", running=True)
        admitted = asyncio.get_running_loop().time()
        await writer.on_snapshot(builder.build(), {"pods"})
        await until(lambda: writer.writes >= 3, "the admitted content written")
        final_after = asyncio.get_running_loop().time() - admitted
        await until(lambda: writer.requeues == 2 and not writer.requeue_pending, "its requeue update")
        bind("c")
        await writer.on_snapshot(builder.build(), {"pods"})
        await until(lambda: writer.writes >= 4, "c named")
        bind("d")
        held = asyncio.get_running_loop().time()
        await writer.on_snapshot(builder.build(), {"pods"})
        await until(lambda: writer.writes >= 5, "d named after the hold")
        hold = asyncio.get_running_loop().time() - held
        task.cancel()
        requeues.cancel()
        bind("e")  # a newer snapshot, not written yet, when the watch reports our own last write
        await writer.on_snapshot(builder.build(), {"pods"})
        writer.observe(kube.nrt(node), True)
        return final_after, hold

    mark_all = len(proxy.requests())
    final_after, hold = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    seen = [(s.method, s.at) for s in proxy.requests(since=mark_all) if s.method in WRITES]
    assert [m for m, _ in seen[:2]] == ["POST", "PUT"], seen  # the creation, its requeue update
    after_creation = seen[2:5]
    assert [m for m, _ in after_creation] == ["PUT", "PUT", "PUT"], seen
    pending_write, admitted_write, requeue_write = (at for _, at in after_creation)
    assert admitted_write - pending_write >= 0.3, "b's bind and a's admission were held, not written"
    assert final_after < 0.3, f"the content naming no pending pod waited {final_after:.2f} s"
    assert requeue_write >= admitted_write + after, "the one requeue update follows the admitted content"
    assert writer.stats.writes[("requeue", "success")] == 2, "none after the pending name alone"
    assert PENDING_HOLD_SECONDS - 0.05 <= hold <= PENDING_HOLD_SECONDS + 0.5, f"d waited {hold:.2f} s"
    assert published() == fingerprint([("team", "a"), ("team", "b"), ("team", "c" + PENDING), ("team", "d" + PENDING)])
    assert writer.repairs == 0, "our own write, reported while a newer content waits, is not someone else's edit"
