"""The HTTP surface: read-only methods, small requests, clean 404s, optional TLS; no writes to the host."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from tests.daemon import Daemon, wait_for, without_capabilities
from tests.hosttree import HostTree
from tests.kubelet_files import fixture_config, install

ARGS = ["--no-nvml", "--debounce", "0", "--resync-interval", "0.2"]


@pytest.fixture
def static_machine(machine: HostTree) -> HostTree:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    return machine


def request(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers or {}),
                                    timeout=5) as response:  # fmt: skip
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_requests_are_refused_cleanly(static_machine: HostTree) -> None:
    with Daemon(static_machine.paths, extra=ARGS) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        base = daemon.base_url
        assert request(base + "/no/such/path") == 404
        assert request(base + "/../../etc/passwd") == 404
        assert request(base + "/metrics", method="POST", data=b"x") == 405
        assert request(base + "/metrics", method="DELETE") == 405
        # A refused upload still gets its answer: the server reads the rest before closing (a close over unread
        # input is a reset that overtook the answer, ECONNRESET in CI; 60 of these reproduced it every time).
        refused = [request(base + "/metrics", method="PUT", data=b"x" * (4 << 20)) for _ in range(30)]
        assert set(refused) <= {405, 413}, refused
        assert request(base + "/metrics", headers={"X-Big": "y" * 20000}) in (400, 431)
        host, port = base.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
            assert raw.recv(64).startswith(b"HTTP/1.1 413")
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"\x16\x03\x01garbage that is no HTTP at all\r\n\r\n")
            assert raw.recv(64).startswith(b"HTTP/1.")
        assert daemon.get("/metrics")[0] == 200, "still serving"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(key, 0o644)  # the capability-less daemon must read it, as a mounted Secret would allow
    return cert, key


def test_tls(static_machine: HostTree, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    trust = ssl.create_default_context(cafile=str(cert))
    extra = [*ARGS, "--web.tls-cert-file", str(cert), "--web.tls-key-file", str(key)]
    with Daemon(static_machine.paths, extra=extra, ssl_context=trust) as daemon:
        assert daemon.base_url.startswith("https://127.0.0.1:")
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness over TLS")
        assert "numa_topology_resource_available" in daemon.metrics()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(daemon.base_url + "/metrics", timeout=5, context=ssl.create_default_context())
        plain = daemon.base_url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(plain + "/metrics", timeout=5).read()
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, urllib.error.URLError)):
            urllib.request.urlopen(daemon.base_url + "/metrics", timeout=5, context=old)


def test_tls_needs_both_files(static_machine: HostTree, certificate: tuple[Path, Path], tmp_path: Path) -> None:
    from exporter.cli import main

    cert, _key = certificate
    argv = ["serve", "--web.listen-address", "127.0.0.1:0", "--web.tls-cert-file", str(cert), "--no-nvml",
            "--path.sysfs", str(static_machine.sys)]  # fmt: skip
    assert main(argv) == 1


def tree_digest(root: Path) -> dict[str, str]:
    digest = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            digest[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            stat = path.stat()
            digest[str(path)] = f"{stat.st_mode:o}:{stat.st_mtime_ns}:" + hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[str(path)] = f"dir:{path.stat().st_mode:o}"
    return digest


@pytest.mark.skipif(not without_capabilities(), reason="needs root and setpriv to drop capabilities")
def test_no_write_to_any_host_path(static_machine: HostTree) -> None:
    """The daemon runs against a read-only tree (no write bit anywhere, no capability to override it) and
    leaves it exactly as it found it."""
    for path in [static_machine.root, *static_machine.root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)
    before = tree_digest(static_machine.root)
    try:
        with Daemon(static_machine.paths, extra=ARGS) as daemon:
            wait_for(
                lambda: (daemon.sample("numa_topology_refresh_duration_seconds_count") or 0) >= 5, what="refreshes"
            )
            assert daemon.sample('numa_topology_source_up{source="cpu_manager_state"}') == 1
            assert "PermissionError" not in "".join(daemon.output)
            daemon.stop()
        assert tree_digest(static_machine.root) == before
    finally:
        for path in [static_machine.root, *static_machine.root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
