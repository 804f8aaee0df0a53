"""A thin wrapper over the `kubernetes` client for the few calls the agent makes, and the one function
that maps API failures to the exporter's exception tree (errors.py)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import urllib3
import yaml

from exporter import __version__
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
from exporter.kubelet.podspec import container_claims, container_ids, exclusivity
from exporter.model import PodRef
from exporter.views.nrt import GROUP, PLURAL, VERSION

T = TypeVar("T")


def _import_client() -> Any:
    """The `kubernetes` package with only the sub-packages the agent uses (`client`, `config`).

    The package's own `__init__` imports every sub-package: `dynamic` (and through it kubernetes-validate
    and jsonschema, where installed), `stream`, `watch`, `informer`, `leaderelection`. None is used here, and
    together they cost 1.5 to 3.5 MiB resident (BENCHMARKS.md, "Resident memory"). The package is registered
    from its import spec without running that `__init__`; its sub-packages then import as usual. Where the
    package was already imported whole (a process that uses it for more), that module is used as it is.
    """
    if "kubernetes" not in sys.modules:
        spec = importlib.util.find_spec("kubernetes")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("the kubernetes package is not installed")
        sys.modules["kubernetes"] = importlib.util.module_from_spec(spec)
    for name in ("kubernetes.client", "kubernetes.client.exceptions", "kubernetes.config"):
        importlib.import_module(name)
    return sys.modules["kubernetes"]


kubernetes: Any = _import_client()  # the client's annotations are partial: treat it as untyped, check our side
ApiException: Any = kubernetes.client.exceptions.ApiException
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
    except UNUSABLE as exc:
        raise _unusable(kubeconfig, exc) from None
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


def user_client(kubeconfig: Path | None, context: str | None) -> Any:
    """An API client the way kubectl finds one: `--kubeconfig`, else `$KUBECONFIG` (a list of files, merged),
    else ~/.kube/config, else the in-cluster service account; `--context` picks a context of the file."""
    configuration = kubernetes.client.Configuration()
    default = os.environ.get("KUBECONFIG") or "~/.kube/config"  # the client splits and merges a list itself
    have_file = kubeconfig is not None or any(Path(p).expanduser().exists() for p in default.split(":") if p)
    try:
        if have_file:
            kubernetes.config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig is not None else default,
                context=context,
                client_configuration=configuration,
            )
        elif context is not None:
            raise ConfigError(f"--context {context}: no kubeconfig found ($KUBECONFIG, ~/.kube/config)")
        else:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException as exc:
        where = kubeconfig or default
        raise ConfigError(f"no usable kubeconfig ({where}) and not in a cluster: {exc}") from None
    except UNUSABLE as exc:
        raise _unusable(kubeconfig or default, exc) from None
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


# What the client's kubeconfig loader raises on a file it cannot use, besides its own ConfigException.
UNUSABLE = (yaml.YAMLError, OSError, ValueError, TypeError, AttributeError, KeyError)


def _unusable(where: object, exc: Exception) -> ConfigError:
    """One line: `cannot use kubeconfig F: not valid YAML: expected ..., but found '-' (line 3, column 3)`."""
    if not isinstance(exc, yaml.YAMLError):
        return ConfigError(f"cannot use kubeconfig {where}: {exc}")
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return ConfigError(f"cannot use kubeconfig {where}: not valid YAML: {problem}{at}")


FIELD_MANAGER = "numa-topology-exporter"
USER_AGENT = f"numa-topology-exporter/{__version__}"
NRT_COLLECTION = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
GONE = 410


class KubeApi:
    """The calls the agent makes, each returning plain data or raising an ApiError.

    Every request goes through the client's ApiClient (auth, TLS, proxies from the kubeconfig) with the
    agent's own user agent; writes name the field manager `numa-topology-exporter` and ask for server-side
    field validation in `Warn` mode. The server's `Warning` headers are handed to `on_warning`. CoreV1Api
    and CustomObjectsApi are not used: the generated modules cost memory for a handful of calls.
    """

    def __init__(self, client: Any, *, on_warning: Callable[[str], None] | None = None) -> None:
        self._client = client
        client.user_agent = USER_AGENT
        self.on_warning = on_warning or (lambda text: None)

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        stream: bool = False,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> Any:
        """Decoded JSON, or the open urllib3 response when `stream` (a watch). Raises ApiError."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            method, url, headers, payload, _post = self._client.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )  # fmt: skip
            response = self._client.call_api(method, url, header_params=headers, body=payload, _request_timeout=timeout)
            for warning in response.response.headers.getlist("Warning"):
                self.on_warning(warning)
            if stream:
                if not 200 <= response.status <= 299:
                    response.read()
                    self._client.response_deserialize(response, {})  # raises the ApiException for the status
                return response.response
            response.read()
            return self._client.response_deserialize(response, {"2XX": "object"}).data
        except Exception as exc:
            raise api_error(exc) from None

    def get_nrt(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._request("GET", f"{NRT_COLLECTION}/{quote(name, safe='')}"))
        except ApiNotFound:
            return None

    def create_nrt(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", NRT_COLLECTION, query=self._write_query(), body=body))

    def replace_nrt(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"{NRT_COLLECTION}/{quote(name, safe='')}"
        return dict(self._request("PUT", path, query=self._write_query(), body=body))

    @staticmethod
    def _write_query() -> list[tuple[str, Any]]:
        return [("fieldManager", FIELD_MANAGER), ("fieldValidation", "Warn")]

    def kubelet_configz(self, name: str) -> dict[str, Any]:
        """The kubelet's effective configuration (`/configz`, through the API server's node proxy: needs
        `get` on `nodes/proxy`)."""
        answer = self._request("GET", f"/api/v1/nodes/{quote(name, safe='')}/proxy/configz")
        document = answer.get("kubeletconfig") if isinstance(answer, dict) else None
        if not isinstance(document, dict):
            raise ApiInvalid("/configz answered without a kubeletconfig object")
        return document

    def node_uid(self, name: str) -> str:
        node = self._request("GET", f"/api/v1/nodes/{quote(name, safe='')}")
        return str((node.get("metadata") or {}).get("uid", ""))

    def list(self, path: str, selector: str, *, labels: str | None = None) -> tuple[list[Any], str]:
        """The items of a collection matching a field selector (and a label selector), and the list's
        resourceVersion."""
        query: list[tuple[str, Any]] = [("fieldSelector", selector)]
        if labels:
            query.append(("labelSelector", labels))
        listed = self._request("GET", path, query=query)
        return list(listed.get("items") or []), str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def watch(
        self, path: str, selector: str, resource_version: str, *, timeout_seconds: int
    ) -> Iterator[tuple[str, Any]]:
        """(event type, object) from a watch with bookmarks until the server ends it. Raises ApiError; an
        expired resourceVersion (410 Gone, as a status or as an ERROR event) is ApiUnavailable(status=410)."""
        query = [("fieldSelector", selector), ("watch", "true"), ("allowWatchBookmarks", "true"),
                 ("resourceVersion", resource_version), ("timeoutSeconds", timeout_seconds)]  # fmt: skip
        response = self._request("GET", path, query=query, stream=True, timeout=timeout_seconds + 10)
        try:
            pending = b""
            for chunk in response.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _event(line)
        except ApiError:
            raise
        except Exception as exc:
            raise api_error(exc) from None
        finally:
            response.release_conn()

    def get(self, path: str) -> dict[str, Any] | None:
        """One object, or None where it does not exist."""
        try:
            return dict(self._request("GET", path))
        except ApiNotFound:
            return None


def _event(line: bytes) -> tuple[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        raise ApiUnavailable("the API server sent a watch event that is not JSON") from None
    kind = str(event.get("type") or "")
    obj = event.get("object")
    if kind == "ERROR":
        code = int((obj or {}).get("code") or 0)
        raise ApiUnavailable(str((obj or {}).get("message") or "watch error"), status=code)
    return kind, obj


def pod_ref(pod: Any, *, finished_too: bool = False) -> PodRef | None:
    """A pod (as the API's JSON) -> PodRef; None for malformed entries and, unless `finished_too`, for pods
    that finished or were rejected (phase Succeeded or Failed; kept, with `finished`, where asked)."""
    if not isinstance(pod, dict):
        return None
    metadata = pod.get("metadata") or {}
    if not metadata.get("uid"):
        return None
    finished = (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
    if finished and not finished_too:
        return None
    exclusive_native, non_native = exclusivity(pod)
    return PodRef(
        uid=str(metadata["uid"]),
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        spec_known=True,
        exclusive_native=exclusive_native,
        non_native=non_native,
        running=(pod.get("status") or {}).get("phase") == "Running",
        finished=finished,
        claims=container_claims(pod),
        container_ids=container_ids(pod),
    )
