"""A real Kubernetes v1.36.2 control plane for the tests: etcd, kube-apiserver and, where a test needs it,
kube-scheduler with NodeResourceTopologyMatch (../shared/k8s/README.md), on free loopback ports.

Started once per test session. Identities come from a static token file written before the API server
starts: `admin` (system:masters) for the tests' own requests, the chart's ServiceAccount user for the agent
(RBAC: exactly the chart's ClusterRole and binding, rendered by the real Helm engine and applied as they
are), and `limited`, bound to whatever a test grants it. The NRT CRD is the chart's own file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chart import by_kind, render
from tests.daemon import wait_for as wait_until
from tests.oracle import asset

CHART = Path(__file__).resolve().parent.parent / "helm" / "numa-topology-exporter"
CRD = CHART / "files" / "noderesourcetopology.crd.yaml"
AGENT_NAMESPACE = "numa-system"
AGENT_SERVICE_ACCOUNT = "nte-numa-topology-exporter"
AGENT_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"
LIMITED_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:limited"
NRT_PATH = "/apis/topology.node.k8s.io/v1alpha2/noderesourcetopologies"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_NAME = "noderesourcetopologies.topology.node.k8s.io"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiResponse:
    status: int
    body: Any
    headers: Mapping[str, str]


class ControlPlane:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.pki.mkdir(parents=True, exist_ok=True)
        self.etcd_port, self.peer_port, self.port, self.scheduler_port = (free_port() for _ in range(4))
        self.url = f"https://127.0.0.1:{self.port}"
        self.tokens = {
            "admin": os.urandom(16).hex(),
            AGENT_USER: os.urandom(16).hex(),
            LIMITED_USER: os.urandom(16).hex(),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE

    # --- processes -----------------------------------------------------------------------------------

    def start(self) -> None:
        groups = {
            "admin": "system:masters",
            AGENT_USER: f"system:serviceaccounts,system:serviceaccounts:{AGENT_NAMESPACE},system:authenticated",
            LIMITED_USER: f"system:serviceaccounts,system:serviceaccounts:{AGENT_NAMESPACE},system:authenticated",
        }
        (self.pki / "tokens.csv").write_text(
            "".join(f'{token},{user},{user},"{groups[user]}"\n' for user, token in self.tokens.items())
        )
        subprocess.run(["openssl", "genrsa", "-out", str(self.pki / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(self.pki / "sa.key"), "-pubout", "-out", str(self.pki / "sa.pub")],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.pki / "client-ca.key"),
             "-out", str(self.pki / "client-ca.crt"), "-subj", "/CN=test-client-ca", "-days", "30"],
            check=True, capture_output=True,
        )  # fmt: skip
        self._spawn(
            "etcd",
            [str(asset("etcd")), "--name", "cp", "--data-dir", str(self.root / "etcd-data"),
             "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}"],
        )  # fmt: skip
        self._spawn(
            "kube-apiserver",
            [str(asset("kube-apiserver")), f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
             "--bind-address=127.0.0.1", "--advertise-address=192.0.2.10", f"--secure-port={self.port}",
             f"--cert-dir={self.pki}", f"--token-auth-file={self.pki / 'tokens.csv'}",
             f"--client-ca-file={self.pki / 'client-ca.crt'}", "--authorization-mode=RBAC",
             "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
             f"--service-account-key-file={self.pki / 'sa.pub'}",
             f"--service-account-signing-key-file={self.pki / 'sa.key'}",
             "--service-cluster-ip-range=10.96.0.0/24", "--disable-admission-plugins=ServiceAccount",
             "--runtime-config=resource.k8s.io/v1=true", "--enable-priority-and-fairness=false", "--v=1",
             # Real nodes (tests/realnodes.py) are reached through their InternalIP for /proxy (the API server
             # refuses to proxy to a loopback address, and their names do not resolve).
             "--kubelet-preferred-address-types=InternalIP"],
        )  # fmt: skip
        wait_until(self._ready, timeout=90, what="kube-apiserver /readyz", interval=0.25)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")  # a restarted scheduler appends: earlier runs stay readable
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _ready(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited {process.returncode}: {self.log(name)[-3000:]}")
        try:
            return self.request("GET", "/readyz", raw=True).status == 200
        except OSError:
            return False

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_scheduler(
        self,
        *,
        verbosity: int = 5,
        resync_seconds: int = 1,
        informer_mode: str | None = None,
        reserve: bool = True,
        max_backoff_seconds: int | None = None,
    ) -> None:
        """The scheduler with a `topo-aware-scheduler` profile. scheduler-plugins' knobs users set:
        `cacheResyncPeriodSeconds` (0 turns the reserve cache off: the plugin then reads NRT objects as they
        are), `cache.informerMode` (`Dedicated`, the default, or `Shared`), the Reserve extension point."""
        if "kube-scheduler-nrt" in self.processes:
            return
        args: dict[str, Any] = {
            "scoringStrategy": {"type": "LeastAllocated"},
            "cacheResyncPeriodSeconds": resync_seconds,
        }
        if informer_mode is not None:
            args["cache"] = {"informerMode": informer_mode}
        plugins: dict[str, Any] = {
            "filter": {"enabled": [{"name": "NodeResourceTopologyMatch"}]},
            "score": {"enabled": [{"name": "NodeResourceTopologyMatch", "weight": 10}]},
        }
        if reserve:
            plugins["reserve"] = {"enabled": [{"name": "NodeResourceTopologyMatch"}]}
        config = self.root / "scheduler-config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "leaderElection": {"leaderElect": False},
                    **({} if max_backoff_seconds is None else {"podMaxBackoffSeconds": max_backoff_seconds}),
                    "clientConnection": {"kubeconfig": str(self.kubeconfig("admin"))},
                    "profiles": [
                        {"schedulerName": "default-scheduler"},
                        {
                            "schedulerName": "topo-aware-scheduler",
                            "plugins": plugins,
                            "pluginConfig": [{"name": "NodeResourceTopologyMatch", "args": args}],
                        },
                    ],
                }
            )
        )
        kubeconfig = str(self.kubeconfig("admin"))
        self._spawn(
            "kube-scheduler-nrt",
            [str(asset("kube-scheduler-nrt")), f"--config={config}", "--bind-address=127.0.0.1",
             f"--secure-port={self.scheduler_port}", f"--authentication-kubeconfig={kubeconfig}",
             f"--authorization-kubeconfig={kubeconfig}", f"--v={verbosity}"],
        )  # fmt: skip

        def healthy() -> bool:
            if self.processes["kube-scheduler-nrt"].poll() is not None:
                raise AssertionError(f"the scheduler exited: {self.log('kube-scheduler-nrt')[-3000:]}")
            try:
                request = urllib.request.Request(f"https://127.0.0.1:{self.scheduler_port}/healthz")
                with urllib.request.urlopen(request, context=self._context, timeout=2) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        wait_until(healthy, timeout=60, what="kube-scheduler-nrt /healthz", interval=0.25)

    def start_scheduler_after_nrts(self, nodes: Iterable[str], **options: Any) -> None:
        """A fresh scheduler once these nodes' NRT objects exist: its overreserve cache (scheduler-plugins
        903da7df) loads the objects there when it starts and ignores ones created later ("modified
        non-existent NRT", issue 967), so a scheduler started before them is replaced."""
        for name in nodes:
            wait_until(lambda name=name: self.nrt(name) is not None, timeout=30, what=f"the NRT of {name}")
        self.stop_scheduler()
        self.start_scheduler(**options)

    def stop_scheduler(self) -> None:
        """The NRT plugin's cache loads the NRT objects that exist when it starts and ignores later ones: a
        test that publishes new objects starts a fresh scheduler after them (stop, then start_scheduler)."""
        process = self.processes.pop("kube-scheduler-nrt", None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def stop(self) -> None:
        """A throwaway control plane: SIGTERM, and SIGKILL for what is still up after 2 s (kube-apiserver's
        graceful shutdown took the full 10 s it used to be given, at the end of every session)."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for process in self.processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()

    # --- access --------------------------------------------------------------------------------------

    def in_cluster_env(self, user: str) -> dict[str, str]:
        """The environment of a pod whose service account is `user`: KUBERNETES_SERVICE_HOST/_PORT and a
        service account directory (token, and the API server's own certificate as the CA, so that TLS is
        verified as in a pod), named by NUMA_EXPORTER_SERVICE_ACCOUNT_DIR."""
        directory = self.root / f"serviceaccount-{user.replace(':', '_')}"
        directory.mkdir(exist_ok=True)
        (directory / "token").write_text(self.tokens[user])
        (directory / "ca.crt").write_bytes((self.pki / "apiserver.crt").read_bytes())
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port),
                "NUMA_EXPORTER_SERVICE_ACCOUNT_DIR": str(directory)}  # fmt: skip

    def kubeconfig(self, user: str, *, server: str | None = None) -> Path:
        path = self.root / f"{user.replace(':', '_')}-{(server or self.url).split(':')[-1]}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "cp", "cluster": {"server": server or self.url, "insecure-skip-tls-verify": True}}
                    ],
                    "users": [{"name": "u", "user": {"token": self.tokens[user]}}],
                    "contexts": [{"name": "c", "context": {"cluster": "cp", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        return path

    def request(
        self, method: str, path: str, body: Any = None, *, user: str = "admin", raw: bool = False,
        content_type: str = "application/json", headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:  # fmt: skip
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.tokens[user]}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=30) as response:
                payload = response.read()
                status, headers = response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            payload, status, headers = error.read(), error.code, dict(error.headers)
        if raw:
            return ApiResponse(status=status, body=payload, headers=headers)
        try:
            decoded = json.loads(payload) if payload else None
        except ValueError:
            decoded = payload.decode(errors="replace")
        return ApiResponse(status=status, body=decoded, headers=headers)

    def ok(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        response = self.request(method, path, body, **options)
        assert 200 <= response.status < 300, f"{method} {path}: {response.status} {response.body}"
        return response.body

    # --- objects -------------------------------------------------------------------------------------

    def install_crd(self) -> None:
        crd = yaml.safe_load(CRD.read_text())
        if self.request("GET", f"{CRD_PATH}/{CRD_NAME}").status == 404:
            self.ok("POST", CRD_PATH, crd)
        wait_until(lambda: self.request("GET", NRT_PATH).status == 200, timeout=30, what="the NRT API to be served")

    def delete_crd(self) -> None:
        self.request("DELETE", f"{CRD_PATH}/{CRD_NAME}")
        wait_until(lambda: self.request("GET", f"{CRD_PATH}/{CRD_NAME}").status == 404, timeout=60, what="CRD gone")
        wait_until(lambda: self.request("GET", NRT_PATH).status == 404, timeout=30, what="NRT API no longer served")

    def apply_chart_rbac(self, values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The chart's ServiceAccount, ClusterRole and ClusterRoleBinding, rendered by the Helm engine."""
        documents = render(dict(values or {}))
        self.ensure_namespace(AGENT_NAMESPACE)
        applied = []
        for kind, path in (
            ("ServiceAccount", f"/api/v1/namespaces/{AGENT_NAMESPACE}/serviceaccounts"),
            ("ClusterRole", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
            ("ClusterRoleBinding", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
        ):
            for document in by_kind(documents, kind):
                self.put(path, document)
                applied.append(document)
        return applied

    def apply_chart_admission_policy(self, values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The chart's ValidatingAdmissionPolicy and its binding (rbac.ownNodeOnly), rendered by the Helm engine."""
        documents = render(dict(values or {}))
        applied = []
        for kind, path in (
            ("ValidatingAdmissionPolicy", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"),
            ("ValidatingAdmissionPolicyBinding",
             "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"),
        ):  # fmt: skip
            for document in by_kind(documents, kind):
                self.put(path, document)
                applied.append(document)
        return applied

    def put(self, collection: str, document: Mapping[str, Any]) -> Any:
        """Create, or replace what is there (the way `kubectl apply` ends up for these objects)."""
        name = document["metadata"]["name"]
        current = self.request("GET", f"{collection}/{name}")
        if current.status == 404:
            return self.ok("POST", collection, document)
        body = {
            **document,
            "metadata": {**document["metadata"], "resourceVersion": current.body["metadata"]["resourceVersion"]},
        }
        return self.ok("PUT", f"{collection}/{name}", body)

    def ensure_namespace(self, name: str) -> None:
        if self.request("GET", f"/api/v1/namespaces/{name}").status == 404:
            self.ok("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def add_node(
        self, name: str, *, labels: Mapping[str, str] | None = None, capacity: Mapping[str, str] | None = None
    ) -> str:
        """A Node object (there is no kubelet); its admission-added not-ready taint removed, status Ready."""
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": dict(labels or {})}}
        node = self.ok("POST", "/api/v1/nodes", body)
        node["spec"].pop("taints", None)
        node = self.ok("PUT", f"/api/v1/nodes/{name}", node)
        if capacity is not None:
            status = {
                "capacity": dict(capacity),
                "allocatable": dict(capacity),
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}],
            }
            node = self.ok("PUT", f"/api/v1/nodes/{name}/status", {**node, "status": status})
        return str(node["metadata"]["uid"])

    def nrt(self, name: str) -> dict[str, Any] | None:
        response = self.request("GET", f"{NRT_PATH}/{name}")
        return response.body if response.status == 200 else None

    def delete_nrt(self, name: str) -> None:
        self.request("DELETE", f"{NRT_PATH}/{name}")


def guaranteed_pod(name: str, node: str, *, cpu: str = "1", container: str = "c") -> dict[str, Any]:
    """A Guaranteed pod already bound to `node` (spec.nodeName set: no scheduler involved)."""
    amounts = {"cpu": cpu, "memory": "64Mi"}
    resources = {"requests": amounts, "limits": amounts}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "pause", "resources": resources}]},
    }


def control_plane(root: Path) -> Iterator[ControlPlane]:
    for tool in ("openssl",):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is required for the control plane (make test installs it)")
    plane = ControlPlane(root)
    try:
        plane.start()
        plane.install_crd()
        plane.apply_chart_rbac()
        yield plane
    finally:
        plane.stop()
