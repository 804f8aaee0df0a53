"""The agent's few calls to the Kubernetes API over urllib3, and the one function that maps API failures
to the exporter's exception tree (errors.py).

In a pod (the DaemonSet) the connection comes from the service account, as client-go's rest.InClusterConfig
reads it: `KUBERNETES_SERVICE_HOST`/`_PORT`, the token (read again once a minute: bound tokens rotate) and
the CA. A kubeconfig (the CLI, a standalone agent, tests) is read by the `kubernetes` package's loader, which
knows every form a kubeconfig takes (exec plugins, client certificates, merged `$KUBECONFIG` lists); it is
imported only then. The requests themselves need neither the package's generated client nor its models:
an agent in a pod loads neither, 15 MiB less resident (BENCHMARKS.md, "Beside the real peer").
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import ssl
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

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
from exporter.kubelet.podspec import (
    GUARANTEED,
    container_claims,
    container_ids,
    exclusivity,
    pinned_containers,
    qos_class,
)
from exporter.model import PodRef
from exporter.views.nrt import GROUP, PLURAL, VERSION

T = TypeVar("T")
log = logging.getLogger(__name__)
REQUEST_TIMEOUT_SECONDS = 30.0
TERMINAL_PHASES = ("Succeeded", "Failed")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_ACCOUNT_DIR_ENV = "NUMA_EXPORTER_SERVICE_ACCOUNT_DIR"  # tests and benchmarks only: a pod has the standard one
TOKEN_REREAD_SECONDS = 60.0  # client-go's cachingTokenSource re-reads the file as often


def _import_config() -> Any:
    """The `kubernetes` package's `config` (and the `client` it needs), without the package's `__init__`.

    That `__init__` imports every sub-package: `dynamic` (and through it kubernetes-validate and jsonschema,
    where installed), `stream`, `watch`, `informer`, `leaderelection`, none used here. The package is
    registered from its import spec without running it; its sub-packages then import as usual. Where the
    package was already imported whole (a process that uses it for more), that module is used as it is.
    """
    if "kubernetes" not in sys.modules:
        spec = importlib.util.find_spec("kubernetes")
        if spec is None or spec.submodule_search_locations is None:
            raise ConfigError(
                "reading a kubeconfig needs the kubernetes package: pip install 'numa-topology-exporter[kubeconfig]'"
                " (in a pod, leave --kubeconfig out: the service account is used)"
            )
        sys.modules["kubernetes"] = importlib.util.module_from_spec(spec)
    for name in ("kubernetes.client", "kubernetes.config"):
        importlib.import_module(name)
    return sys.modules["kubernetes"]


def api_error(exc: BaseException) -> ApiError:
    """Map a failure to reach the API server to the exporter's API errors."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError):
        return ApiUnavailable(f"cannot reach the API server: {exc}")
    return ApiError(f"unexpected API client failure: {exc!r}")


def status_error(status: int, body: bytes, reason: str = "") -> ApiError:
    """Map an answer other than 2xx to the exporter's API errors, with the server's own message."""
    decoded = _status_body(body)
    message = str(decoded.get("message") or reason or f"HTTP {status}")
    if status == 404:
        details = decoded.get("details") or {}
        if decoded.get("kind") == "Status" and details.get("name"):
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


def _status_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Endpoint:
    """Where the API server is and how to talk to it: its URL, TLS, and the `Authorization` header's value
    (asked for on each request: tokens rotate, exec plugins refresh)."""

    server: str
    verify: bool
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_hostname: str | None = None
    proxy: str | None = None
    authorization: Callable[[], str | None] = lambda: None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class TokenFile:
    """A bearer token file read again once a minute (the kubelet rotates projected tokens)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self._clock = path, clock
        self._value, self._read_at = "", float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            if self._clock() - self._read_at >= TOKEN_REREAD_SECONDS:
                try:
                    self._value = self.path.read_text().strip()
                    self._read_at = self._clock()
                except OSError:
                    if not self._value:
                        raise
            return f"Bearer {self._value}" if self._value else None


def in_cluster() -> Endpoint | None:
    """The service account's endpoint (client-go rest.InClusterConfig), or None outside a pod."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    directory = Path(os.environ.get(SERVICE_ACCOUNT_DIR_ENV) or SERVICE_ACCOUNT_DIR)
    token = directory / "token"
    if not host or not port or not token.is_file():
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    ca = directory / "ca.crt"
    return Endpoint(
        server=f"https://{host}:{port}",
        verify=True,
        ca_file=str(ca) if ca.is_file() else None,
        authorization=TokenFile(token),
    )


def _from_configuration(configuration: Any) -> Endpoint:
    """The kubernetes package's Configuration, as loaded from a kubeconfig, as an Endpoint."""

    def authorization() -> str | None:
        # The library's own header (exec plugins: its refresh hook renews an expired token here).
        setting = configuration.auth_settings().get("BearerToken") or {}
        value = setting.get("value")
        return str(value) if value else None

    return Endpoint(
        server=str(configuration.host),
        verify=bool(configuration.verify_ssl),
        ca_file=configuration.ssl_ca_cert or None,
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        server_hostname=getattr(configuration, "tls_server_name", None) or None,
        proxy=configuration.proxy or None,
        authorization=authorization,
    )


def client_from(kubeconfig: Path | None) -> Endpoint | None:
    """The endpoint of a kubeconfig, or of the in-cluster service account; None when neither exists."""
    return in_cluster() if kubeconfig is None else _from_kubeconfig(str(kubeconfig), context=None)


def user_client(kubeconfig: Path | None, context: str | None) -> Endpoint:
    """An endpoint the way kubectl finds one: `--kubeconfig`, else `$KUBECONFIG` (a list of files, merged),
    else ~/.kube/config, else the in-cluster service account; `--context` picks a context of the file."""
    default = os.environ.get("KUBECONFIG") or "~/.kube/config"  # the loader splits and merges a list itself
    if kubeconfig is not None:
        return _from_kubeconfig(str(kubeconfig), context=context)
    if any(Path(p).expanduser().exists() for p in default.split(":") if p):
        return _from_kubeconfig(default, context=context)
    if context is not None:
        raise ConfigError(f"--context {context}: no kubeconfig found ($KUBECONFIG, ~/.kube/config)")
    endpoint = in_cluster()
    if endpoint is None:
        raise ConfigError(f"no usable kubeconfig ({default}) and not in a cluster")
    return endpoint


def _from_kubeconfig(config_file: str, *, context: str | None) -> Endpoint:
    """A kubeconfig (or a `:`-separated list, merged), read by the kubernetes package's loader."""
    kubernetes = _import_config()
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(config_file=config_file, context=context, client_configuration=configuration)
    except kubernetes.config.ConfigException as exc:
        raise ConfigError(f"cannot use kubeconfig {config_file}: {exc}") from None
    except UNUSABLE as exc:
        raise _unusable(config_file, exc) from None
    return _from_configuration(configuration)


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

    Every request carries the agent's own user agent; writes name the field manager `numa-topology-exporter`
    and ask for server-side field validation in `Warn` mode. The server's `Warning` headers are handed to
    `on_warning`. Thread-safe: the watches run in threads of their own beside the writer.
    """

    def __init__(self, endpoint: Endpoint, *, on_warning: Callable[[str], None] | None = None) -> None:
        self.endpoint = endpoint
        self.on_warning = on_warning or (lambda text: None)
        try:
            context = endpoint.ssl_context()
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the API server's TLS settings ({endpoint.server}): {exc}") from None
        options: dict[str, Any] = {"ssl_context": context, "maxsize": 4, "retries": False}
        if not endpoint.verify:
            options.update(cert_reqs="CERT_NONE", assert_hostname=False)
            # Said once here, not by urllib3 on every request (a warning per call, each watch and write).
            log.warning("the API server's certificate is not verified (insecure-skip-tls-verify): %s", endpoint.server)
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        if endpoint.server_hostname:
            options["server_hostname"] = endpoint.server_hostname
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(endpoint.proxy, **options) if endpoint.proxy else urllib3.PoolManager(**options)
        )

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
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        payload = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(body).encode()
        url = self.endpoint.server.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
        try:
            authorization = self.endpoint.authorization()
            if authorization:
                headers["Authorization"] = authorization
            response = self._pool.request(
                method, url, body=payload, headers=headers, preload_content=not stream, redirect=False,
                timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            )  # fmt: skip
        except ApiError:
            raise
        except Exception as exc:
            raise api_error(exc) from None
        for warning in response.headers.getlist("Warning"):
            self.on_warning(warning)
        if not 200 <= response.status <= 299:
            data = response.data if not stream else response.read()
            if stream:
                response.release_conn()
            raise status_error(response.status, data, response.reason or "")
        if stream:
            return response
        try:
            return json.loads(response.data)
        except ValueError:
            raise ApiUnavailable(f"the API server answered {method} {path} with something that is not JSON") from None

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
        guaranteed=qos_class(pod) == GUARANTEED,
        containers=pinned_containers(pod),
    )
