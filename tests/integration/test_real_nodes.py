"""The judge: real kubelets v1.36.2 (../shared/k8s/start-node), the real NUMA-aware scheduler over the NRT
objects our agents publish, one agent per node reading the kubelet's real state files and podresources socket.

Pods arrive in bursts (dozens bound before any is admitted) and leave in churn (Running pods deleted while
the next burst arrives). The kubelets admit or reject them with their own Topology Manager; the measure of the
product is that none is rejected after binding because of what the agents published (the scheduler cache's
own race, told from the logs, is counted and printed). After every burst and every churn step, each agent's
per-NUMA allocatable and available equal what its kubelet's podresources API reports, and its fingerprint
names exactly the pods the API has on that node, as the scheduler computes it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.fingerprint import fingerprint
from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.realnodes import (
    RealNode,
    agent,
    disagreements,
    kubelet_account,
    real_machine,
    require_real_nodes,
    start_real_node,
)
from tests.workload import (
    REACTION_BOUND_SECONDS,
    WRITTEN,
    NrtChanges,
    Workload,
    allowance,
    log_size,
    pending_that_fit_after,
    pod_body,
    race_seen,
    scheduler_log_since,
    timeline,
)

NODES = int(os.environ.get("REAL_NODES", "3"))
STEPS = int(os.environ.get("REAL_STEPS", "3"))
BURST = int(os.environ.get("REAL_BURST", "30"))
SEED = int(os.environ.get("REAL_SEED", "20261204"))
COUNTS: dict[str, int] = {}

RealCluster = dict[str, tuple[RealNode, Daemon]]
AGENT_MODES: dict[str, str] = {}  # node -> the informer mode its agent was told (absent: its default, Dedicated)
AGENT_RESYNC: dict[str, int] = {}  # node -> the scheduler's cache resync period its agent was told (absent: 5 s)


def tell_agents(
    kube: ControlPlane, cluster: RealCluster, mode: str, resync: int = 5, *, nodes: Iterable[str] | None = None
) -> None:
    """Restart the agents of `nodes` (all by default) told the scheduler's informer mode and cache resync
    period, where they were told others; each writes its object again at start."""
    for name in list(cluster if nodes is None else nodes):
        if AGENT_MODES.get(name, "Dedicated") == mode and AGENT_RESYNC.get(name, 5) == resync:
            continue
        node, daemon = cluster[name]
        daemon.stop()
        flags = ["--nrt-scheduler-informer-mode", mode, "--nrt-scheduler-resync-seconds", str(resync)]
        cluster[name] = (node, agent(kube, node, user=AGENT_USER, extra=flags))
        AGENT_MODES[name], AGENT_RESYNC[name] = mode, resync


@pytest.fixture(scope="module")
def real_cluster(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    bin_dir = require_real_nodes()
    root = tmp_path_factory.mktemp("real")
    cluster: RealCluster = {}
    nodes: list[RealNode] = []
    try:
        for index in range(NODES):
            name = f"real-{index}"
            node = RealNode(name, root / name, real_machine(root / f"{name}-machine"), kube.kubeconfig("admin"))
            nodes.append(node)
            start_real_node(kube, node, bin_dir)
            cluster[name] = (node, agent(kube, node, user=AGENT_USER))
        kube.start_scheduler_after_nrts(cluster)
        yield cluster
    finally:
        for _, daemon in cluster.values():
            daemon.stop()
        for node in nodes:
            node.stop()
            kube.request("DELETE", f"/api/v1/nodes/{node.name}")
            kube.delete_nrt(node.name)


def expected_fingerprint(kube: ControlPlane, node: str) -> str:
    """The scheduler's fingerprint of a quiet node: every pod the API has there that has not terminated (all
    of them Guaranteed with exclusive CPUs, so `with-exclusive-resources` covers them all), and, where the
    node's agent was told the Dedicated informer, the finished and rejected ones too (as that informer counts
    them)."""
    dedicated = AGENT_MODES.get(node, "Dedicated") == "Dedicated"
    pods = kube.ok("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node}")["items"]
    return fingerprint(
        (p["metadata"]["namespace"], p["metadata"]["name"])
        for p in pods
        if (dedicated or p["status"].get("phase") not in ("Succeeded", "Failed"))
        and not p["metadata"].get("deletionTimestamp")
    )


def agreement(kube: ControlPlane, cluster: RealCluster) -> None:
    """Each agent's NRT equals its kubelet's podresources account and names the API's pods; waited for (the
    agent republishes within its debounce), with what still differs when it does not come."""
    for name, (node, _) in cluster.items():
        last: list[str] = []

        def agrees(node: RealNode = node, name: str = name, last: list[str] = last) -> bool:
            obj = kube.nrt(name) or {}
            attributes = {a["name"]: a["value"] for a in obj.get("attributes", [])}
            last[:] = disagreements(kubelet_account(node), obj)
            want = expected_fingerprint(kube, name)
            if attributes.get("nodeTopologyPodsFingerprint") != want:
                last.append(f"fingerprint {attributes.get('nodeTopologyPodsFingerprint')}, expected {want}")
            return not last

        try:
            wait_until(agrees, timeout=20, what=f"{name}'s NRT to agree with its kubelet", interval=0.1)
        except AssertionError as exc:
            checkpoint = node.kubelet_dir / "device-plugins" / "kubelet_internal_checkpoint"
            pods = [
                (
                    p["metadata"]["name"],
                    p["metadata"]["uid"][:8],
                    p["spec"].get("nodeName"),
                    p["status"].get("phase"),
                    p["status"].get("reason"),
                )
                for p in kube.ok("GET", "/api/v1/pods")["items"]
            ]
            raise AssertionError(
                f"{exc}: {last}; pods {pods}; checkpoint {checkpoint.read_text()[:3000]}; "
                f"cpu {(node.kubelet_dir / 'cpu_manager_state').read_text()}"
            ) from None
        COUNTS["agreement checks"] = COUNTS.get("agreement checks", 0) + 1


# scheduler-plugins' NodeResourceTopologyMatch as users run it: the informer mode of its cache (`Shared` counts
# pods in phase Running; `Dedicated`, the default, every bound pod not Pending, finished and rejected ones
# included), its resync period, with its Reserve plugin (the overreserve cache). Each runs the same seeded
# workload; the agent's numbers must equal the kubelet's after every step, and no pod may be rejected after
# binding because of what we published.
#
# The cache has a race of its own, which no agent can close: it resyncs a node from our object when the
# fingerprints agree, and drops every reservation there (its flush, after the check, drops those made in
# between too); a pod reserved before the flush that our object did not name yet (the agent had not seen the
# bind when it wrote, or it was not bound yet; the cache counts it only once it runs) is then subtracted
# nowhere, and the next pod may land on its CPUs. Caught on real kubelets in both modes (the resync came
# 50-75 ms after the bind, or 127 ms after the reservation) before the agent named the pods bound to its node
# and not yet admitted (`<name>#pending`), and 139 ms after a bind once the chart's 0.1 s debounce delayed that
# naming (a new pod now skips the debounce). A check between a reservation and its bind stays possible: see
# the verdict in `judge`.
SCHEDULERS = {
    "shared-1s": {"informer_mode": "Shared", "resync_seconds": 1},
    "shared-5s": {"informer_mode": "Shared", "resync_seconds": 5},
    "dedicated-1s": {"informer_mode": "Dedicated", "resync_seconds": 1},
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_bursts_and_churn_on_real_kubelets_reject_nothing(
    kube: ControlPlane, real_cluster: RealCluster, scheduler: str
) -> None:
    kube.stop_scheduler()
    settings = SCHEDULERS[scheduler]
    tell_agents(kube, real_cluster, str(settings["informer_mode"]), int(settings["resync_seconds"]))
    log_start = log_size(kube)  # a restarted scheduler appends to the same log
    kube.start_scheduler(**SCHEDULERS[scheduler])
    work = Workload(kube, f"real-{scheduler}", scheduler="topo-aware-scheduler", seed=SEED)
    changes = NrtChanges(kube)
    try:
        judge(kube, real_cluster, work, scheduler, log_start=log_start, changes=changes)
    finally:
        changes.stop()
        work.cleanup()
    agreement(kube, real_cluster)


def judge(
    kube: ControlPlane, real_cluster: RealCluster, work: Workload, scheduler: str, *, log_start: int, changes: NrtChanges
) -> None:
    agreement(kube, real_cluster)
    for _ in range(STEPS):
        work.burst(BURST)
        work.settle()
        agreement(kube, real_cluster)
        victims = work.churn(0.4)
        work.burst(BURST // 3)  # arriving while the deleted pods are still leaving
        wait_until(lambda v=victims: work.gone(v), timeout=60, what="the deleted pods gone", interval=0.1)
        work.settle()
        agreement(kube, real_cluster)
        no_pod_that_fits_waits(kube, real_cluster, work, int(SCHEDULERS[scheduler]["resync_seconds"]), scheduler)
        agreement(kube, real_cluster)
    outcome = work.outcome
    counts = {"pods": outcome.created, "deleted": outcome.deleted, "running at the end": outcome.running,
              "pending at the end": len(outcome.pending), "rejected after binding": len(outcome.rejected)}  # fmt: skip
    for what, count in counts.items():
        COUNTS[f"{scheduler}: {what}"] = count
    print(f"REAL E2E {scheduler}", counts,
          f"p50 {outcome.percentile(0.5):.2f} s p99 {outcome.percentile(0.99):.2f} s to Running; bind to admission "
          f"p50 {outcome.percentile(0.5, outcome.bind_to_admission):.2f} s "
          f"p99 {outcome.percentile(0.99, outcome.bind_to_admission):.2f} s")  # fmt: skip
    # The verdict is 0 rejected after binding, but for the scheduler cache's own race, and that only where the
    # scheduler's log and the test's own watch of the objects show it (tests/workload.py `race_seen`), never the
    # agent's account: its cache flushed the node between another pod Q's reservation and its bind (no object
    # can name a pod not bound), or from the object as it was at Q's bind, which then changed within 0.3 s, after
    # the check (the agent saw the bind and wrote Q's `#pending` name, but the API write alone takes ~0.1 s on
    # this machine). Why not 0 outright: the race is in the consumer (docs/product.md), no agent closes it, and
    # it met 2 of 24 scheduler runs of this test on 2026-12-07 (BENCHMARKS.md, "The scheduler cache's race on
    # real kubelets": checks 96 and 201 ms after a bind). Each is printed and counted; any other rejection fails
    # with its timeline. The median bind-to-change below only bounds the objects' lag coarsely (the kubelet's
    # admission changes them soon after a bind anyway); that a bound pod is named at once is held by
    # tests/integration/test_publisher.py (no kubelet there), and named before its admission at all by
    # tests/integration/test_nrt.py, with no timing involved.
    lines, _ = scheduler_log_since(kube, log_start)
    reaction = sorted(changes.reaction(work.namespace, lines))
    assert len(reaction) >= outcome.running, "every bind seen by the test's own watch"
    quartile, median = reaction[len(reaction) // 4], reaction[len(reaction) // 2]
    for name, value in (("first quartile", quartile), ("median", median), ("p90", reaction[len(reaction) * 9 // 10])):
        COUNTS[f"{scheduler}: {name} ms from a bind to the object changing (test's watch)"] = round(value * 1000)
    assert median <= REACTION_BOUND_SECONDS, f"the objects follow binds slowly: median {median:.3f} s"
    races, unexplained, evidence = [], [], []
    for rejection in outcome.rejected:
        pod, node = rejection.split(" ", 1)[0], rejection.split(" on ", 1)[1].split(":", 1)[0]
        why = race_seen(work.namespace, pod, node, scheduler_log=lines, changes=changes)
        if why is not None:
            races.append(f"{rejection}: {why}")
            continue
        unexplained.append(rejection)
        node_dir, daemon = real_cluster[node]
        logs = {"scheduler_log": lines, "agent_log": daemon.text,
                "kubelet_log": (node_dir.directory / "kubelet.log").read_text(errors="replace")}  # fmt: skip
        evidence += [f"--- {rejection}", f"the test's watch of {node}: {changes.changes.get(node, [])[-12:]}",
                     *timeline(work.namespace, pod, node, **logs)]  # fmt: skip
    COUNTS[f"{scheduler}: rejections from the scheduler cache's race"] = len(races)
    for line in races:
        print(f"REAL E2E {scheduler} scheduler race: {line}")
    if unexplained:
        print("\n".join(evidence))
        raise AssertionError(f"rejected after binding: {unexplained}; evidence in {keep_evidence(kube, real_cluster)}")
    assert outcome.running >= NODES * 3, counts  # the nodes took pods
    for name, (_, daemon) in real_cluster.items():  # --log-level debug is the exporter's, not its libraries'
        assert " DEBUG hpack" not in daemon.text, f"{name}'s agent logged HTTP/2 frames at debug"
        # The test kubeconfig skips TLS verification: said once, not by urllib3 on every request.
        assert daemon.text.count("certificate is not verified") == 1, f"{name}'s agent"
        assert "InsecureRequestWarning" not in daemon.text, f"{name}'s agent warned on every request"
    for name, (_, daemon) in real_cluster.items():
        # The evidence printed beside a rejection reads what each write named from the agent's log: those names
        # are the fingerprint's pods (a check of the log, not of the fingerprint: `scheduler_in_sync` below holds
        # our fingerprints to the ones the real scheduler computes from its own pods).
        writes = [m for line in daemon.text.splitlines() if (m := WRITTEN.search(line)) and m.group(2) == name]
        assert writes, f"{name}'s agent logged no write"
        named = ast.literal_eval(writes[-1].group(4))
        pods = [(pod.partition("/")[0], pod.partition("/")[2]) for pod in named]
        assert fingerprint(pods) == writes[-1].group(3), named
    assert outcome.pending, "the bursts overfill the nodes: some pods must stay Pending"
    # A pod the kubelet rejected stays bound in phase Failed until someone deletes it. The Dedicated informer's
    # fingerprint counts it (scheduler-plugins podprovider: every bound pod not Pending), Shared's does not
    # (Running only); the agents, told the mode, name the same pods: every node resyncs with them there.
    in_sync = wait_until(
        lambda: scheduler_in_sync(kube, real_cluster), timeout=30, what="the scheduler's cache in sync"
    )
    rejected = [line.split(" ", 1)[0] for line in outcome.rejected]
    for name in rejected:  # as their controller or an operator does
        kube.request("DELETE", f"{work.path}/{name}")
    wait_until(lambda: work.gone(rejected), timeout=60, what="the rejected pods deleted")
    COUNTS[f"{scheduler}: nodes resynced from our fingerprint"] = len(in_sync)
    lines, _ = scheduler_log_since(kube, log_start)
    COUNTS[f"{scheduler}: fingerprint mismatches logged while pods were admitted"] = sum(
        "fingerprint mismatch" in line for line in lines
    )


def no_pod_that_fits_waits(
    kube: ControlPlane, cluster: RealCluster, work: Workload, resync: int, scheduler: str
) -> None:
    """Nothing outside the product acts (no hand-made requeue): within the scheduler's own delays after the
    last change, no pod a kubelet would admit (kubelet-oracle, on its state files) is left Pending."""
    wait = allowance(resync)
    nodes = [node for node, _ in cluster.values()]
    waiting = pending_that_fit_after(work, nodes, [wait])[wait]
    COUNTS[f"{scheduler}: pods that fit left Pending past {wait:.1f} s"] = (
        COUNTS.get(f"{scheduler}: pods that fit left Pending past {wait:.1f} s", 0) + len(waiting)
    )
    if waiting:
        raise AssertionError(f"pods that a kubelet admits still Pending {wait:.1f} s after the last change: "
                             f"{waiting}; evidence in {keep_evidence(kube, cluster)}")  # fmt: skip


CHECK = re.compile(r'"podset fingerprint check".* node="([^"]+)" expected="([^"]+)" computed="([^"]+)"')


def scheduler_in_sync(kube: ControlPlane, cluster: RealCluster) -> dict[str, str] | None:
    """Once the nodes are quiet, the overreserve cache's last fingerprint check of every node it resynced
    found our fingerprint equal to the one it computes from its pods (a mismatch keeps a node dirty: the
    cache would then never take our zones again). None while a node's last check is a mismatch."""
    last: dict[str, tuple[str, str]] = {}
    for line in kube.log("kube-scheduler-nrt").splitlines():
        match = CHECK.search(line)
        if match and match.group(1) in cluster:
            last[match.group(1)] = (match.group(2), match.group(3))
    if not last or any(expected != computed for expected, computed in last.values()):
        return None
    return {node: expected for node, (expected, _) in last.items()}


def keep_evidence(kube: ControlPlane, cluster: RealCluster) -> Path:
    """The scheduler's log (what its cache believed, per pod and node), each kubelet's (its hints and verdict)
    and each agent's output, copied where the session's temporary directories do not rotate them away."""
    target = Path(os.environ.get("REAL_EVIDENCE") or tempfile.mkdtemp(prefix="real-nodes-evidence-"))
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(kube.root / "kube-scheduler-nrt.log", target / "kube-scheduler-nrt.log")
    for name, (node, daemon) in cluster.items():
        shutil.copy(node.directory / "kubelet.log", target / f"{name}-kubelet.log")
        (target / f"{name}-agent.log").write_text(daemon.text)
    return target


def test_a_dedicated_cache_takes_a_node_holding_a_rejected_pod_only_from_an_agent_told_so(
    kube: ControlPlane, real_cluster: RealCluster
) -> None:
    """scheduler-plugins' default informer (Dedicated) counts a pod the kubelet rejected (phase Failed) in its
    fingerprint until it is deleted. A pod bound blind and rejected by the real kubelet makes the node foreign
    to the cache, which then holds it as "invalid node topology data" until a resync finds our fingerprint
    equal to its own. An agent told Shared does not name the rejected pod: the fingerprints differ at every
    resync, and a pod for that node waits. Told Dedicated (its default), the agent names it: the cache takes
    the node's object again and the waiting pod runs there."""
    node = f"real-{NODES - 1}"
    work = Workload(kube, "informer-real", scheduler="topo-aware-scheduler", seed=SEED)
    kube.stop_scheduler()
    tell_agents(kube, real_cluster, "Shared", 1, nodes=[node])
    offset = log_size(kube)
    kube.start_scheduler(informer_mode="Dedicated", resync_seconds=1)

    def checks(since: int) -> list[tuple[str, str]]:
        lines, _ = scheduler_log_since(kube, since)
        return [(m.group(2), m.group(3)) for line in lines if (m := CHECK.search(line)) and m.group(1) == node]

    def pod(name: str) -> dict[str, Any]:
        return dict(kube.ok("GET", f"{work.path}/{name}"))

    def unschedulable_message(name: str) -> str:
        conditions = pod(name)["status"].get("conditions") or []
        return next((str(c.get("message")) for c in conditions if c.get("type") == "PodScheduled"
                     and c.get("status") == "False"), "")  # fmt: skip

    try:
        blind = pod_body("too-big", "default-scheduler", {"cpu": "17", "memory": "1Gi"})
        blind["spec"]["nodeName"] = node
        kube.ok("POST", work.path, blind)
        failed = wait_until(lambda: (p := pod("too-big"))["status"].get("phase") == "Failed" and p, timeout=60,
                            what="the kubelet to reject the 17-CPU pod")  # fmt: skip
        assert failed["status"].get("reason") == "TopologyAffinityError", failed["status"]
        mismatches = wait_until(
            lambda: [c for c in checks(offset) if c[0] != c[1]] or None, timeout=30,
            what=f"the cache's fingerprint check of {node} with the rejected pod there",
        )  # fmt: skip
        waiting = pod_body("after", "topo-aware-scheduler", {"cpu": "2", "memory": "1Gi"})
        waiting["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        kube.ok("POST", work.path, waiting)
        message = wait_until(lambda: unschedulable_message("after"), timeout=30, what="the scheduler's verdict")
        assert "invalid node topology data" in message, message
        assert all(expected != computed for expected, computed in checks(offset)), "told Shared: never equal"
        COUNTS["informer: fingerprint checks that differed while the agent was told Shared"] = len(mismatches)

        restarted = log_size(kube)
        tell_agents(kube, real_cluster, "Dedicated", 1, nodes=[node])
        wait_until(lambda: any(e == c for e, c in checks(restarted)), timeout=30,
                   what=f"the cache to take {node}'s object from the agent told Dedicated")  # fmt: skip
        # Nothing else acts: the agent's requeue update, a resync period after its write, retries the pod.
        running = wait_until(lambda: (p := pod("after"))["status"].get("phase") == "Running" and p,
                             timeout=allowance(1) + 5,
                             what="the waiting pod to run once the cache took the node again")  # fmt: skip
        assert running["spec"]["nodeName"] == node
        assert pod("too-big")["status"]["phase"] == "Failed", "the rejected pod was still there"
    finally:
        work.cleanup()
        tell_agents(kube, real_cluster, "Dedicated", 1, nodes=[node])


def test_explain_names_the_cause_of_real_kubelet_rejections(kube: ControlPlane, real_cluster: RealCluster) -> None:
    """Pods bound blind (spec.nodeName, as a default scheduler binds) to a real kubelet running
    single-numa-node: one 6-CPU and one 10-CPU pod take 6 on NUMA node 0 (14 allocatable) and 10 on node 1
    (16): 8 + 6 CPUs are left. A 12-CPU pod is then stranded and a 17-CPU one larger than any NUMA node; the
    real kubelet rejects both with TopologyAffinityError, and `explain` must say which is which. A 12-CPU pod
    for the NUMA-aware scheduler stays Pending, and `explain` says why from the scheduler's condition."""
    from exporter.cluster import explain, load

    node = "real-0"
    work = Workload(kube, "explain-real", scheduler="default-scheduler", seed=SEED)
    api = load.connect(kube.kubeconfig("admin"), None)
    kube.start_scheduler()  # running already when the module's other tests ran first

    def create(name: str, cpu: str, *, scheduler: str = "default-scheduler") -> None:
        body = pod_body(name, scheduler, {"cpu": cpu, "memory": "1Gi"})
        if scheduler == "default-scheduler":
            body["spec"]["nodeName"] = node
        else:
            body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        kube.ok("POST", work.path, body)

    def phase(name: str, want: str) -> dict[str, Any] | None:
        pod = kube.ok("GET", f"{work.path}/{name}")
        return pod if pod["status"].get("phase") == want else None

    try:
        for name, cpu in (("six", "6"), ("ten", "10")):
            create(name, cpu)
            wait_until(lambda name=name: phase(name, "Running"), timeout=60, what=f"{name} running")
        for name, cpu in (("stranded", "12"), ("too-big", "17")):
            create(name, cpu)
            failed = wait_until(lambda name=name: phase(name, "Failed"), timeout=60, what=f"{name} rejected")
            assert failed["status"]["reason"] == "TopologyAffinityError", failed["status"]
        create("early", "12", scheduler="topo-aware-scheduler")
        wait_until(
            lambda: explain.explain(api, work.namespace, "stranded").nrt.startswith("current"),  # type: ignore[union-attr]
            timeout=30, what="the agent's NRT to show the two running pods",
        )  # fmt: skip
        stranded = explain.explain(api, work.namespace, "stranded")
        assert (stranded.rejection or "").startswith("TopologyAffinityError"), stranded.rejection
        assert any(
            c.startswith(f"stranded: {node} has enough in all but not on one NUMA node (cpu 14 free in all, at most 8")
            for c in stranded.causes
        ), stranded.causes
        assert any(c.startswith("scheduler not NUMA-aware: default-scheduler") for c in stranded.causes)
        assert not any(c.startswith("larger than any NUMA node") for c in stranded.causes), stranded.causes
        too_big = explain.explain(api, work.namespace, "too-big")
        assert any(
            c.startswith("larger than any NUMA node: c0 wants cpu 17, the largest NUMA node holds 16")
            for c in too_big.causes
        ), too_big.causes
        assert too_big.fits_on == [], "17 CPUs fit on no NUMA node of any real node"
        early = wait_until(
            lambda: (e := explain.explain(api, work.namespace, "early")).scheduled and e, timeout=60,
            what="the NUMA-aware scheduler's verdict on a 12-CPU pod",
        )  # fmt: skip
        if "invalid node topology data" in (early.scheduled or ""):  # pods bound blind: foreign until a resync
            assert any("holds a node as stale" in c for c in early.causes), early.causes
            COUNTS["explain: the scheduler's cache held the node as foreign (pods bound blind) until a resync"] = 1
        for name in ("stranded", "too-big", "early"):  # as their owner would, once looked at
            kube.request("DELETE", f"{work.path}/{name}")
        wait_until(lambda: work.gone(["stranded", "too-big", "early"]), timeout=60, what="the pods deleted")
        # Deleting a pod bound blind marks the node foreign to the cache again (its informer's delete event),
        # until a resync after it finds the fingerprints equal: wait for that one, not an earlier one.
        since = log_size(kube)

        def resynced() -> bool:
            lines, _ = scheduler_log_since(kube, since)
            return any((m := CHECK.search(line)) and m.group(1) == node and m.group(2) == m.group(3) for line in lines)

        wait_until(resynced, timeout=30, interval=0.2, what="the scheduler's cache to take the node's NRT again")
        create("waiting", "12", scheduler="topo-aware-scheduler")
        waiting = wait_until(
            lambda: (e := explain.explain(api, work.namespace, "waiting")).scheduled and e, timeout=60,
            what="the NUMA-aware scheduler's verdict on the waiting pod",
        )  # fmt: skip
        assert "cannot align" in (waiting.scheduled or ""), waiting.scheduled
        assert waiting.node is None
        assert waiting.numa_aware_scheduler
        assert node not in waiting.fits_on
        assert any(c.startswith(f"stranded: {node}") for c in waiting.causes), waiting.causes
        print("EXPLAIN REAL", stranded.text(), too_big.text(), waiting.text(), sep="\n")
    finally:
        work.cleanup()
