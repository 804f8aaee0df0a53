"""The agent against the real control plane (kube-apiserver v1.36.2, etcd): the real authenticator, the
chart's RBAC enforced by the real authorizer, the CRD's schema enforced by the real server, real watches.

The daemon runs as the chart runs it (every capability dropped) with a token for the chart's
ServiceAccount user. Faults a real server cannot be asked for (429s, 5xx, slow answers, connections cut
mid-watch) come from a fault-injecting proxy in front of it (tests/faultproxy.py), which also records every
request the agent makes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from exporter.agent.pods import PodWatcher
from exporter.errors import ApiForbidden
from exporter.kubeapi import FIELD_MANAGER, KubeApi, client_from
from tests.controlplane import AGENT_USER, LIMITED_USER, NRT_PATH, ControlPlane, guaranteed_pod, wait_until
from tests.daemon import Daemon
from tests.faultproxy import FaultProxy
from tests.hosttree import HostTree
from tests.kubelet_files import KUBELET_FIXTURES, fixture_config, install, replace_atomically

RESYNC = 1.0
EMPTY = (KUBELET_FIXTURES / "cpu_manager_state.static-empty.json").read_bytes()
TWO_PODS = (KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes()
RECOVERY_SECONDS: dict[str, float] = {}


def agent(machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str, *, user: str = AGENT_USER) -> Daemon:
    kubeconfig = kube.kubeconfig(user, server=proxy.url)
    extra = ["--kubeconfig", str(kubeconfig), "--node-name", node, "--resync-interval", str(RESYNC),
             "--debounce", "0", "--no-nvml", "--log-level", "info"]  # fmt: skip
    return Daemon(machine.paths, extra=extra)


def cpu_available(kube: ControlPlane, node: str, numa: int = 1) -> int | None:
    obj = kube.nrt(node)
    if obj is None:
        return None
    zone = next(z for z in obj["zones"] if z["name"] == f"node-{numa}")
    return next((int(r["available"]) for r in zone["resources"] if r["name"] == "cpu"), None)


def refreshes(daemon: Daemon) -> float:
    return daemon.sample("numa_topology_refresh_duration_seconds_count") or 0


@pytest.fixture
def static_machine(machine: HostTree) -> HostTree:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    return machine


def test_created_owned_and_attributed_to_the_agent(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    uid = kube.request("GET", f"/api/v1/nodes/{node}").body["metadata"]["uid"]
    with agent(static_machine, kube, proxy, node):
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
    obj = kube.nrt(node)
    assert obj is not None
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "blockOwnerDeletion": False}
    ]
    assert {entry["manager"] for entry in obj["metadata"]["managedFields"]} == {FIELD_MANAGER}
    agents = {seen.user_agent for seen in proxy.requests()}
    assert agents
    assert all(ua.startswith("numa-topology-exporter/") for ua in agents), agents
    assert all(seen.status != 403 for seen in proxy.requests()), "the chart's RBAC allows all the agent does"


def test_in_a_pod_the_service_account_is_used_and_tls_verified(
    static_machine: HostTree, kube: ControlPlane, node: str
) -> None:
    """No kubeconfig: the service account's token and CA, and the API server's certificate checked against
    that CA (the agent's own in-cluster client, kubeapi.in_cluster). A CA that did not sign the server's
    certificate gets no write through."""
    extra = ["--node-name", node, "--resync-interval", str(RESYNC), "--debounce", "0", "--no-nvml"]
    env = kube.in_cluster_env(AGENT_USER)
    with Daemon(static_machine.paths, extra=extra, env=env):
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
    obj = kube.nrt(node)
    assert obj is not None
    assert {entry["manager"] for entry in obj["metadata"]["managedFields"]} == {FIELD_MANAGER}

    kube.request("DELETE", f"{NRT_PATH}/{node}")
    wait_until(lambda: kube.nrt(node) is None, timeout=10, what="the NRT object deleted")
    wrong_ca = Path(env["NUMA_EXPORTER_SERVICE_ACCOUNT_DIR"]) / "ca.crt"
    wrong_ca.write_bytes((kube.pki / "client-ca.crt").read_bytes())
    with Daemon(static_machine.paths, extra=extra, env=env) as daemon:
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in daemon.text, timeout=15, what="the TLS failure logged")
        assert kube.nrt(node) is None


def test_an_idle_agent_makes_no_request_beyond_watch_renewals(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    with agent(static_machine, kube, proxy, node) as daemon:
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
        wait_until(lambda: refreshes(daemon) >= 2, timeout=10, what="the first resync")
        mark, start = proxy.mark(), refreshes(daemon)
        wait_until(lambda: refreshes(daemon) >= start + 5, timeout=20, what="five more resyncs")
        after = proxy.requests(since=mark)
    assert [seen for seen in after if not seen.watch] == [], "an idle resync reads nothing and writes nothing"


def test_one_write_per_real_change(static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str) -> None:
    with agent(static_machine, kube, proxy, node) as daemon:
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
        mark = proxy.mark()
        replace_atomically(static_machine.paths.cpu_manager_state, EMPTY)
        wait_until(lambda: cpu_available(kube, node) == 16, timeout=10, what="the change published")
        before = refreshes(daemon)
        replace_atomically(static_machine.paths.cpu_manager_state, EMPTY)  # same content: no write
        wait_until(lambda: refreshes(daemon) > before, timeout=10, what="the refresh after the rewrite")
    writes = [seen for seen in proxy.requests(since=mark) if seen.method in ("PUT", "POST", "PATCH")]
    assert [(seen.method, seen.status) for seen in writes] == [("PUT", 200)]


def test_a_deleted_object_is_repaired_within_a_second(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    with agent(static_machine, kube, proxy, node) as daemon:
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
        for _ in range(3):
            kube.delete_nrt(node)
            started = time.monotonic()
            wait_until(lambda: kube.nrt(node) is not None, timeout=5, what="the repair", interval=0.01)
            RECOVERY_SECONDS["object deleted"] = max(
                RECOVERY_SECONDS.get("object deleted", 0), time.monotonic() - started
            )
        assert RECOVERY_SECONDS["object deleted"] < 1.0
        # The server shows the object before the agent has counted the create that made it.
        creates = 'numa_topology_nrt_writes_total{operation="create",result="success"}'
        wait_until(lambda: daemon.sample(creates) == 4, timeout=5, what="four creates counted")
        assert daemon.sample(creates) == 4


def test_someone_elses_edit_is_repaired_at_once(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    with agent(static_machine, kube, proxy, node):
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
        obj = kube.nrt(node)
        assert obj is not None
        for zone in obj["zones"]:
            for resource in zone["resources"]:
                resource["available"] = 0
        kube.ok("PUT", f"{NRT_PATH}/{node}", obj)
        started = time.monotonic()
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=5, what="the repair", interval=0.01)
        RECOVERY_SECONDS["object edited by another writer"] = time.monotonic() - started
        assert RECOVERY_SECONDS["object edited by another writer"] < 1.0


@pytest.mark.parametrize("fault", ["down", "all-500", "all-429", "conflict-storm", "slow-5s", "watch-cut"])
def test_api_faults_converge_after_recovery(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str, fault: str
) -> None:
    with agent(static_machine, kube, proxy, node) as daemon:
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
        if fault == "down":
            proxy.go_down()
        elif fault == "all-500":
            proxy.fail(500, when=lambda method, path: "watch" not in path)
        elif fault == "all-429":
            proxy.fail(429)
        elif fault == "conflict-storm":
            proxy.fail(409, when=lambda method, path: method == "PUT", times=12)
        elif fault == "slow-5s":
            proxy.slow(5.0, when=lambda method, path: method == "PUT")
        elif fault == "watch-cut":
            proxy.cut_watches()
        replace_atomically(static_machine.paths.cpu_manager_state, EMPTY)
        wait_until(lambda: daemon.sample('numa_topology_resource_available{numa_node="1",resource="cpu",unit="core"}') == 16,
                   timeout=10, what="metrics follow the files whatever the API does")  # fmt: skip
        if fault in ("down", "all-500", "all-429"):
            assert cpu_available(kube, node) == 10, "nothing could be written during the fault"
            proxy.heal()
        started = time.monotonic()
        wait_until(
            lambda: cpu_available(kube, node) == 16, timeout=RESYNC * 2 + 8, what="NRT convergence", interval=0.01
        )
        RECOVERY_SECONDS[f"api {fault}"] = time.monotonic() - started
        assert daemon.process.poll() is None
        assert daemon.get("/healthz")[0] == 200
        if fault == "watch-cut":  # the cut watch is resumed, and the next deletion is still repaired at once
            kube.delete_nrt(node)
            wait_until(lambda: kube.nrt(node) is not None, timeout=3, what="the repair after a cut watch")


def test_crd_absent_at_start_installed_later_and_deleted_while_running(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    kube.delete_crd()
    try:
        with agent(static_machine, kube, proxy, node) as daemon:
            wait_until(lambda: (daemon.sample('numa_topology_nrt_writes_total{operation="create",result="crd_missing"}') or 0) >= 1,
                       timeout=15, what="the missing CRD counted")  # fmt: skip
            kube.install_crd()
            started = time.monotonic()
            wait_until(lambda: cpu_available(kube, node) == 10, timeout=40, what="the object after the CRD appeared")
            RECOVERY_SECONDS["crd installed later"] = time.monotonic() - started
            kube.delete_crd()
            kube.install_crd()
            started = time.monotonic()
            wait_until(lambda: cpu_available(kube, node) == 10, timeout=40, what="the object after the CRD came back")
            RECOVERY_SECONDS["crd deleted and recreated"] = time.monotonic() - started
            assert daemon.process.poll() is None
            assert daemon.stop() == 0
    finally:
        kube.install_crd()
    assert "install the NodeResourceTopology CRD" in daemon.text, "the error says what to do"


def test_a_role_missing_a_verb_is_a_clear_counted_error(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "limited-no-update"},
        "rules": [
            {"apiGroups": ["topology.node.k8s.io"], "resources": ["noderesourcetopologies"],
             "verbs": ["get", "list", "watch", "create"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        ],
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "limited-no-update"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "limited-no-update"},
        "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": "numa-system"}],
    }
    kube.put("/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
    kube.put("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
    with agent(static_machine, kube, proxy, node, user=LIMITED_USER) as daemon:
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the create it may do")
        replace_atomically(static_machine.paths.cpu_manager_state, EMPTY)
        series = 'numa_topology_nrt_writes_total{operation="update",result="forbidden"}'
        wait_until(lambda: (daemon.sample(series) or 0) >= 1, timeout=10, what="the forbidden update counted")
        assert cpu_available(kube, node) == 10
        assert any(seen.status == 403 and seen.method == "PUT" for seen in proxy.requests())


def test_rbac_is_exactly_what_the_agent_uses(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """Every rule of the chart's ClusterRole is exercised by a running agent, and nothing else is asked."""
    pod = guaranteed_pod(f"uses-a-claim-{node}"[:60], node)
    pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": f"claim-{node}"[:60]}]
    pod["spec"]["containers"][0]["resources"]["claims"] = [{"name": "gpu"}]
    kube.ok("POST", "/api/v1/namespaces/default/pods", pod)  # its claim is read (resourceclaims get)
    with agent(static_machine, kube, proxy, node):
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
        # One conflict: the agent reads the object back itself (`get`), as it must when its copy is stale.
        proxy.fail(409, when=lambda method, path: method == "PUT", times=1)
        replace_atomically(static_machine.paths.cpu_manager_state, EMPTY)
        wait_until(lambda: cpu_available(kube, node) == 16, timeout=10, what="an update")
    observed = set()
    verbs = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    for seen in proxy.requests():
        parts = seen.path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        resource_parts = parts[2:] if parts[0] == "api" else parts[3:]
        if resource_parts[0] == "namespaces" and len(resource_parts) > 2:
            resource_parts = resource_parts[2:]  # a namespaced object: /namespaces/<ns>/<resource>/<name>
        named = len(resource_parts) > 1
        verb = verbs[seen.method] if named or seen.method != "GET" else ("watch" if seen.watch else "list")
        observed.add((group, resource_parts[0], verb))
    from tests.chart import by_kind, render

    (role,) = by_kind(render({}), "ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}  # fmt: skip
    assert observed == granted


def test_the_admission_policy_lets_an_agent_write_only_its_own_nodes_object(kube: ControlPlane, node: str) -> None:
    """rbac.ownNodeOnly, enforced by the real API server: the agent's ServiceAccount with a token bound to a
    pod on `node` (the API server puts the node in the user's extra; played here by impersonation, which sets
    the same user info) may write `node`'s object and no other; without a node in its token, none; anyone
    else is not matched."""
    other = f"{node}-other"
    policy = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
    binding = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"

    def as_agent(on: str | None) -> dict[str, str]:
        headers = {"Impersonate-User": AGENT_USER, "Impersonate-Group": "system:serviceaccounts"}
        if on is not None:
            headers["Impersonate-Extra-authentication.kubernetes.io%2fnode-name"] = on
        return headers

    def create(name: str, on: str | None) -> tuple[int, str]:
        body = {"apiVersion": "topology.node.k8s.io/v1alpha2", "kind": "NodeResourceTopology",
                "metadata": {"name": name}, "zones": [], "topologyPolicies": ["None"]}  # fmt: skip
        answer = kube.request("POST", NRT_PATH, body, headers=as_agent(on))
        if answer.status == 201:
            kube.request("DELETE", f"{NRT_PATH}/{name}")
        return answer.status, str((answer.body or {}).get("message", "")) if isinstance(answer.body, dict) else ""

    applied = kube.apply_chart_admission_policy()
    assert [doc["kind"] for doc in applied] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    try:
        # The API server enforces a policy once its informer has it: wait for the first denial.
        status, message = wait_until(lambda: (a := create(other, node))[0] == 403 and a, timeout=30,
                                     what="the policy enforced")  # fmt: skip
        assert "only the NodeResourceTopology of the node its pod runs on" in message, message
        assert other in message, message
        assert create(node, node)[0] == 201, "its own node's object"
        status, message = create(node, None)
        assert status == 403, f"a token that names no node writes nothing: {status} {message}"
        assert "its token names no node" in message, message
        assert kube.request("POST", NRT_PATH, {"apiVersion": "topology.node.k8s.io/v1alpha2",
                            "kind": "NodeResourceTopology", "metadata": {"name": other}, "zones": [],
                            "topologyPolicies": ["None"]}).status == 201, "another writer is not matched"  # fmt: skip
        kube.request("DELETE", f"{NRT_PATH}/{other}")
    finally:
        for document, collection in zip(reversed(applied), (binding, policy), strict=True):
            kube.request("DELETE", f"{collection}/{document['metadata']['name']}")
        # The other tests' agents run with tokens that name no node: wait until the policy is gone for them.
        wait_until(lambda: create(other, None)[0] == 201, timeout=30, what="the policy gone")


def test_the_servers_warnings_are_logged_and_counted(kube: ControlPlane, node: str) -> None:
    warnings: list[str] = []
    api = KubeApi(client_from(kube.kubeconfig(AGENT_USER)), on_warning=warnings.append)
    body = {"apiVersion": "topology.node.k8s.io/v1alpha2", "kind": "NodeResourceTopology",
            "metadata": {"name": node}, "zones": [], "surprise": "an unknown field"}  # fmt: skip
    api.create_nrt(body)
    assert any("surprise" in warning for warning in warnings), warnings


def test_the_agent_counts_the_servers_warnings_and_logs_each_once(
    static_machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> None:
    """The running agent, its API server sending a Warning on every answer: counted on /metrics, each distinct
    text logged once."""
    proxy.warn("injected deprecation notice")
    with agent(static_machine, kube, proxy, node) as daemon:
        wait_until(lambda: cpu_available(kube, node) == 10, timeout=15, what="the NRT object")
        wait_until(lambda: (daemon.sample("numa_topology_api_warnings_total") or 0) >= 3, timeout=15,
                   what="the warnings counted")  # fmt: skip
        assert daemon.text.count("injected deprecation notice") == 1, daemon.text


def test_pod_watch_lists_once_then_resumes_with_bookmarks(kube: ControlPlane, node: str) -> None:
    kube.ensure_namespace("team-a")
    api = KubeApi(client_from(kube.kubeconfig(AGENT_USER)))
    changes: list[int] = []
    watcher = PodWatcher(
        api, node_name=node, on_change=lambda: changes.append(1), retry_seconds=0.2, watch_timeout_seconds=1
    )

    async def run() -> None:
        watcher.start(asyncio.get_running_loop())
        for index in range(3):
            kube.ok("POST", "/api/v1/namespaces/team-a/pods", guaranteed_pod(f"p{index}-{node}"[:60], node))
        deadline = time.monotonic() + 20
        while (len(watcher.pods()) < 3 or watcher.watches < 4) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        watcher.stop()

    asyncio.run(run())
    assert sorted(p.name for p in watcher.pods()) == sorted(f"p{i}-{node}"[:60] for i in range(3))
    assert all(p.spec_known and p.exclusive_native for p in watcher.pods()), "Guaranteed pods, specs from the API"
    assert watcher.watches >= 4, "the 1 s watches were renewed"
    assert watcher.lists == 1, "a watch that ends is resumed from its resourceVersion, not re-listed"


def test_pod_watch_relists_after_410_gone(kube: ControlPlane, proxy: FaultProxy, node: str) -> None:
    api = KubeApi(client_from(kube.kubeconfig(AGENT_USER, server=proxy.url)))
    watcher = PodWatcher(api, node_name=node, on_change=lambda: None, retry_seconds=0.2, watch_timeout_seconds=30)

    async def run() -> None:
        watcher.start(asyncio.get_running_loop())
        deadline = time.monotonic() + 10
        # The watch open at the proxy, not only started by the watcher: cut before it arrives, and the cut
        # misses it (the next watch, and so the 410, would come only at its 30 s timeout).
        while (watcher.watches < 1 or proxy.open_streams() < 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        proxy.fail(410, when=lambda method, path: "watch=true" in path, times=1)
        proxy.cut_watches()
        while watcher.lists < 2 and time.monotonic() < deadline + 10:
            await asyncio.sleep(0.02)
        watcher.stop()

    asyncio.run(run())
    assert watcher.lists >= 2, "the expired resourceVersion led to a new list"
    assert watcher.synced


def test_forbidden_reads_map_to_a_clear_error(kube: ControlPlane, node: str) -> None:
    """The limited user has no binding for nodes in the default state: the error says so."""
    api = KubeApi(client_from(kube.kubeconfig(LIMITED_USER)))
    kube.request("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/limited-no-update")
    with pytest.raises(ApiForbidden, match="forbidden"):
        api.node_uid(node)


def test_pod_watch_keeps_finished_pods_apart(kube: ControlPlane, node: str) -> None:
    """A pod that failed (as the kubelet marks a rejected one) leaves `pods()` (it holds nothing) and stays
    in `finished()` (a Dedicated informer still counts it) until it is deleted."""
    kube.ensure_namespace("team-f")
    api = KubeApi(client_from(kube.kubeconfig(AGENT_USER)))
    watcher = PodWatcher(api, node_name=node, on_change=lambda: None, retry_seconds=0.2, watch_timeout_seconds=30)
    name = f"failed-{node}"[:60]
    path = f"/api/v1/namespaces/team-f/pods/{name}"
    seen: list[tuple[set[str], set[str]]] = []

    def state() -> tuple[set[str], set[str]]:
        return {p.name for p in watcher.pods()}, {p.name for p in watcher.finished()}

    async def until(want: tuple[set[str], set[str]]) -> None:
        deadline = time.monotonic() + 20
        while state() != want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen.append(state())

    async def run() -> None:
        watcher.start(asyncio.get_running_loop())
        kube.ok("POST", "/api/v1/namespaces/team-f/pods", guaranteed_pod(name, node))
        await until(({name}, set()))
        status = {"status": {"phase": "Failed", "reason": "TopologyAffinityError"}}
        kube.ok("PATCH", f"{path}/status", status, content_type="application/merge-patch+json")
        await until((set(), {name}))
        kube.ok("DELETE", path)
        await until((set(), set()))
        watcher.stop()

    asyncio.run(run())
    assert seen == [({name}, set()), (set(), {name}), (set(), set())]
    assert not any(p.finished for p in watcher.pods())
