"""Running `numa-topology-exporter serve` as a real process in tests, and polling it."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from exporter.paths import HostPaths

T = TypeVar("T")
URL = re.compile(r"serving metrics on (https?://\S+)/metrics")
SETPRIV = shutil.which("setpriv")


def without_capabilities() -> list[str]:
    """A command prefix that runs the daemon as in the chart: root, but with every capability dropped
    (so a 0600 file of another owner, or a 000 file, is unreadable, and a read-only tree unwritable)."""
    if os.geteuid() != 0 or SETPRIV is None:
        return []
    return [SETPRIV, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]


def wait_for(
    check: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Daemon:
    def __init__(
        self,
        paths: HostPaths,
        *,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        command = [
            *without_capabilities(), sys.executable, "-m", "exporter", "serve", "--web.listen-address", "127.0.0.1:0",
            "--path.sysfs", str(paths.sysfs), "--path.procfs", str(paths.procfs),
            "--path.kubelet", str(paths.kubelet_dir), "--path.pod-logs", str(paths.pod_logs),
            "--path.cgroup", str(paths.cgroup), "--path.container-logs", str(paths.container_logs), *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.output: list[str] = []
        self.base_url = self._read_url()
        # Keep reading what it prints, so that a chatty daemon never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, name="daemon-output", daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def _read_url(self) -> str:
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.5):
                continue
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = URL.search(line)
            if match:
                return match.group(1)
        self.stop()
        raise AssertionError("serve did not start:\n" + "".join(self.output))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5, context=self.ssl_context) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def sample(self, series: str) -> float | None:
        """The value of one exact series line (`name{labels}`) in the current /metrics, or None."""
        for line in self.metrics().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self._drain.join(timeout=5)
        return code

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def cpu_series(numa: int, kind: str = "available") -> str:
    return f'numa_topology_resource_{kind}{{numa_node="{numa}",resource="cpu",unit="core"}}'


def paths_exist(paths: HostPaths) -> bool:
    return Path(paths.sysfs).is_dir()
