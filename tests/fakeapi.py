"""A fake Kubernetes API server for tests, at the HTTP level: the real `kubernetes` client talks to it.

It serves NodeResourceTopology objects (cluster-scoped, topology.node.k8s.io/v1alpha2), Nodes and Pods
with resourceVersion semantics: POST of an existing name is 409 AlreadyExists, PUT with a stale
resourceVersion is 409 Conflict, GET of a missing object is a 404 Status naming it. Every written NRT is
validated against the CRD's own OpenAPI v3 schema (fixtures/crds), and refused with 422 when invalid.
Scripted faults: queued error statuses, latency, and the CRD being absent (404 for the resource type).
Runs on its own event loop in a thread, so blocking tests and the daemon subprocess can both use it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from aiohttp import web

CRD = Path(__file__).parent / "fixtures" / "crds" / "noderesourcetopology.crd.yaml"
NRT_PATH = "/apis/topology.node.k8s.io/v1alpha2/noderesourcetopologies"


def nrt_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2")
    return dict(version["schema"]["openAPIV3Schema"])


def validation_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(nrt_schema())
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]


@dataclass
class Fault:
    status: int
    method: str | None = None  # None: any method
    path_prefix: str = NRT_PATH


@dataclass
class FakeState:
    resource_version: int = 0
    nrts: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    pod_events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    latency_seconds: float = 0.0
    crd_installed: bool = True
    down: bool = False  # drop every connection, as an API server that is not there
    fail_all: int | None = None  # answer every NRT request with this status while set
    requests: list[tuple[str, str]] = field(default_factory=list)


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}  # fmt: skip
    return web.json_response(body, status=code)


class FakeApiServer:
    def __init__(self) -> None:
        self.state = FakeState()
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Condition | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-apiserver", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # --- the server ---

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_get(NRT_PATH, self._list_nrt)
        app.router.add_post(NRT_PATH, self._create_nrt)
        app.router.add_get(NRT_PATH + "/{name}", self._get_nrt)
        app.router.add_put(NRT_PATH + "/{name}", self._replace_nrt)
        app.router.add_delete(NRT_PATH + "/{name}", self._delete_nrt)
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_get("/api/v1/pods", self._pods)
        app.middlewares.append(self._middleware)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready.set()
        self._loop.run_forever()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.state.down:
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable
        self.state.requests.append((request.method, request.path + ("?watch" if request.query.get("watch") else "")))
        if self.state.latency_seconds:
            await asyncio.sleep(self.state.latency_seconds)
        if request.path.startswith(NRT_PATH) and not self.state.crd_installed:
            return status(404, "NotFound", "the server could not find the requested resource")
        if self.state.fail_all is not None and request.path.startswith(NRT_PATH):
            return status(self.state.fail_all, "Failure", f"every request fails with {self.state.fail_all}")
        for fault in list(self.state.faults):
            if request.path.startswith(fault.path_prefix) and fault.method in (None, request.method):
                self.state.faults.remove(fault)
                reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
                return status(fault.status, reason.get(fault.status, "Failure"), f"scripted fault {fault.status}")
        response: web.StreamResponse = await handler(request)
        return response

    def _next_version(self) -> str:
        self.state.resource_version += 1
        return str(self.state.resource_version)

    async def _list_nrt(self, _request: web.Request) -> web.Response:
        return web.json_response({"apiVersion": "topology.node.k8s.io/v1alpha2", "kind": "NodeResourceTopologyList",
                                  "metadata": {"resourceVersion": str(self.state.resource_version)},
                                  "items": list(self.state.nrts.values())})  # fmt: skip

    async def _get_nrt(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.state.nrts:
            return self._not_found(name)
        return web.json_response(self.state.nrts[name])

    def _not_found(self, name: str) -> web.Response:
        return status(404, "NotFound", f'noderesourcetopologies.topology.node.k8s.io "{name}" not found',
                      name=name, group="topology.node.k8s.io", kind="noderesourcetopologies")  # fmt: skip

    def _invalid(self, obj: dict[str, Any]) -> web.Response | None:
        errors = validation_errors(obj)
        if obj.get("apiVersion") != "topology.node.k8s.io/v1alpha2" or obj.get("kind") != "NodeResourceTopology":
            errors.append("apiVersion/kind: must be topology.node.k8s.io/v1alpha2 NodeResourceTopology")
        if not errors:
            return None
        name = (obj.get("metadata") or {}).get("name", "")
        return status(422, "Invalid", f'NodeResourceTopology.topology.node.k8s.io "{name}" is invalid: ' + "; ".join(errors),
                      name=name, group="topology.node.k8s.io", kind="NodeResourceTopology")  # fmt: skip

    async def _create_nrt(self, request: web.Request) -> web.Response:
        obj = await request.json()
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return status(422, "Invalid", "metadata.name: Required value")
        if (invalid := self._invalid(obj)) is not None:
            return invalid
        if name in self.state.nrts:
            return status(409, "AlreadyExists", f'noderesourcetopologies.topology.node.k8s.io "{name}" already exists',
                          name=name)  # fmt: skip
        obj["metadata"].update(
            uid=str(uuid.uuid4()), resourceVersion=self._next_version(), creationTimestamp="2026-11-23T00:00:00Z"
        )
        self.state.nrts[name] = obj
        return web.json_response(obj, status=201)

    async def _replace_nrt(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        obj = await request.json()
        if name not in self.state.nrts:
            return self._not_found(name)
        if (invalid := self._invalid(obj)) is not None:
            return invalid
        current = self.state.nrts[name]
        sent = (obj.get("metadata") or {}).get("resourceVersion")
        if sent and sent != current["metadata"]["resourceVersion"]:
            return status(409, "Conflict", f'Operation cannot be fulfilled on noderesourcetopologies "{name}": the object '
                          "has been modified; please apply your changes to the latest version and try again", name=name)  # fmt: skip
        obj["metadata"].update(uid=current["metadata"]["uid"], resourceVersion=self._next_version(),
                               creationTimestamp=current["metadata"]["creationTimestamp"])  # fmt: skip
        self.state.nrts[name] = obj
        return web.json_response(obj)

    async def _delete_nrt(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if self.state.nrts.pop(name, None) is None:
            return self._not_found(name)
        return web.json_response({"kind": "Status", "status": "Success"})

    async def _get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.state.nodes:
            return status(404, "NotFound", f'nodes "{name}" not found', name=name, kind="nodes")
        return web.json_response(self.state.nodes[name])

    def _selected(self, request: web.Request) -> list[dict[str, Any]]:
        selector = request.query.get("fieldSelector", "")
        node = selector.removeprefix("spec.nodeName=") if selector.startswith("spec.nodeName=") else None
        return [pod for pod in self.state.pods.values() if node is None or pod["spec"]["nodeName"] == node]

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") not in ("true", "True", "1"):
            return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": str(self.state.resource_version)},
                                      "items": self._selected(request)})  # fmt: skip
        since = int(request.query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds") or 30)
        node = request.query.get("fieldSelector", "").removeprefix("spec.nodeName=")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        assert self._changed is not None
        try:
            while time.monotonic() < deadline:
                for version, kind, pod in [event for event in self.state.pod_events if event[0] > since]:
                    since = version
                    if not node or pod["spec"]["nodeName"] == node:
                        await response.write(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
                async with self._changed:
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout=max(0.0, deadline - time.monotonic()))
                    except TimeoutError:
                        break
            await response.write_eof()
        except ConnectionError:
            pass  # the watcher went away first (its own timeout, or it stopped): nothing to tell it
        return response

    # --- controls, callable from any thread ---

    def call(self, function: Any, *args: Any) -> Any:
        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def add_node(self, name: str) -> str:
        uid = str(uuid.uuid4())
        self.state.nodes[name] = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "uid": uid}}
        return uid

    def set_pod(self, *, namespace: str, name: str, uid: str, node: str, phase: str = "Running") -> None:
        self.call(self._set_pod, namespace, name, uid, node, phase)

    def _set_pod(self, namespace: str, name: str, uid: str, node: str, phase: str) -> None:
        version = self._next_version()
        kind = "MODIFIED" if uid in self.state.pods else "ADDED"
        pod = {"kind": "Pod", "apiVersion": "v1",
               "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": version},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}, "status": {"phase": phase}}  # fmt: skip
        self.state.pods[uid] = pod
        self.state.pod_events.append((int(version), kind, pod))
        self._notify()

    def delete_pod(self, uid: str) -> None:
        self.call(self._delete_pod, uid)

    def _delete_pod(self, uid: str) -> None:
        pod = self.state.pods.pop(uid)
        self.state.pod_events.append((int(self._next_version()), "DELETED", pod))
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()

        self._pending.add(asyncio.ensure_future(wake(), loop=self._loop))
        self._pending = {task for task in self._pending if not task.done()}

    def nrt(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.state.nrts.get(name))

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.state.requests if method in ("POST", "PUT", "PATCH", "DELETE")]

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))  # fmt: skip
        return path

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def fake_api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    try:
        yield server
    finally:
        server.stop()
