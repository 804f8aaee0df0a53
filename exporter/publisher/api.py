"""A thin wrapper over the `kubernetes` client for the few calls the agent makes, and the one function
that maps API failures to the exporter's exception tree (errors.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import kubernetes as _kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from exporter.errors import (
    ApiConflict,
    ApiCrdMissing,
    ApiError,
    ApiForbidden,
    ApiInvalid,
    ApiNotFound,
    ApiUnavailable,
    ConfigError,
)
from exporter.model import PodRef
from exporter.nrt import GROUP, PLURAL, VERSION
from exporter.podspec import exclusivity

T = TypeVar("T")
kubernetes: Any = _kubernetes  # the client's own annotations are partial: treat it as untyped, check our side
REQUEST_TIMEOUT_SECONDS = 30.0
TERMINAL_PHASES = ("Succeeded", "Failed")


def api_error(exc: BaseException) -> ApiError:
    """Map whatever the client raised to the exporter's API errors."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        body = _status_body(exc.body)
        message = str(body.get("message") or exc.reason or f"HTTP {status}")
        if status == 404:
            details = body.get("details") or {}
            if body.get("kind") == "Status" and details.get("name"):
                return ApiNotFound(message, status=status)
            return ApiCrdMissing(
                f"the API server has no {PLURAL}.{GROUP}/{VERSION}: install the NodeResourceTopology CRD ({message})",
                status=status,
            )
        if status == 409:
            return ApiConflict(message, status=status)
        if status == 422:
            return ApiInvalid(message, status=status)
        if status in (401, 403):
            return ApiForbidden(message, status=status)
        return ApiUnavailable(message, status=status)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError):
        return ApiUnavailable(f"cannot reach the API server: {exc}")
    return ApiError(f"unexpected API client failure: {exc!r}")


def _status_body(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def in_daemon_thread(call: Callable[[], T]) -> T:
    """Run a blocking call in a daemon thread: unlike the default executor, a hung call cannot delay exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def resolve(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(resolve, None, exc)
        else:
            loop.call_soon_threadsafe(resolve, result, None)

    threading.Thread(target=target, name="kube-api", daemon=True).start()
    return await future


def client_from(kubeconfig: Path | None) -> Any:
    """An API client from a kubeconfig, or the in-cluster service account; None when neither exists."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is not None:
            kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException as exc:
        if kubeconfig is not None:
            raise ConfigError(f"cannot use kubeconfig {kubeconfig}: {exc}") from None
        return None
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


class KubeApi:
    """The calls the agent makes, each returning plain data or raising an ApiError."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._custom = kubernetes.client.CustomObjectsApi(client)

    def _core_get(
        self,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        stream: bool = False,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> Any:
        """A GET on the core API through the client's ApiClient (auth, TLS, proxies from the kubeconfig).

        CoreV1Api is not used: its generated module alone costs ~21 MiB of memory for three calls.
        Returns the decoded JSON, or the open response when `stream` (a watch).
        """
        method, url, headers, _body, _post = self._client.param_serialize(
            "GET", path, query_params=query or [], header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )  # fmt: skip
        response = self._client.call_api(method, url, header_params=headers, _request_timeout=timeout)
        if stream:
            if not 200 <= response.status <= 299:
                response.read()
                self._client.response_deserialize(response, {})  # raises the ApiException for the status
            return response.response  # the raw urllib3 response kubernetes.watch reads line by line
        response.read()
        return self._client.response_deserialize(response, {"2XX": "object"}).data

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:
            raise api_error(exc) from None

    def get_nrt(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                self._call(
                    lambda: self._custom.get_cluster_custom_object(
                        GROUP, VERSION, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_SECONDS
                    )
                )
            )
        except ApiNotFound:
            return None

    def create_nrt(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self._call(
                lambda: self._custom.create_cluster_custom_object(
                    GROUP, VERSION, PLURAL, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            )
        )

    def replace_nrt(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self._call(
                lambda: self._custom.replace_cluster_custom_object(
                    GROUP, VERSION, PLURAL, name, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            )
        )

    def node_uid(self, name: str) -> str:
        node = self._call(lambda: self._core_get(f"/api/v1/nodes/{quote(name, safe='')}"))
        return str((node.get("metadata") or {}).get("uid", ""))

    def list_pods(self, node_name: str) -> tuple[dict[str, PodRef], str]:
        selector = [("fieldSelector", f"spec.nodeName={node_name}")]
        pods = self._call(lambda: self._core_get("/api/v1/pods", query=selector))
        refs = {ref.uid: ref for ref in (pod_ref(pod) for pod in pods.get("items") or []) if ref is not None}
        return refs, str((pods.get("metadata") or {}).get("resourceVersion") or "")

    def watch_pods(self, node_name: str, resource_version: str, *, timeout_seconds: int) -> Iterator[tuple[str, Any]]:
        """(event type, pod as a dict) until the server ends the watch; raises ApiError (410 Gone: re-list)."""
        watcher = kubernetes.watch.Watch(return_type="object")

        def list_pods(**kwargs: Any) -> Any:
            query = [("fieldSelector", f"spec.nodeName={node_name}"), ("watch", "true"),
                     ("resourceVersion", resource_version), ("timeoutSeconds", timeout_seconds)]  # fmt: skip
            return self._core_get("/api/v1/pods", query=query, stream=True, timeout=timeout_seconds + 10)

        try:
            for event in watcher.stream(list_pods, timeout_seconds=timeout_seconds):
                yield str(event["type"]), event["raw_object"]
        except Exception as exc:
            raise api_error(exc) from None
        finally:
            watcher.stop()


def pod_ref(pod: Any) -> PodRef | None:
    """A running pod (as the API's JSON) -> PodRef; None for terminated pods and malformed entries."""
    if not isinstance(pod, dict):
        return None
    metadata = pod.get("metadata") or {}
    if not metadata.get("uid"):
        return None
    if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    exclusive_native, non_native = exclusivity(pod)
    return PodRef(
        uid=str(metadata["uid"]),
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        spec_known=True,
        exclusive_native=exclusive_native,
        non_native=non_native,
    )
