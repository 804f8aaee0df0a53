"""A real Prometheus (Debian's package) on loopback, scraping targets the test names."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.daemon import wait_for

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        targets: list[str] | dict[str, dict[str, str]] | None = None,
        *,
        scrape_configs: list[dict[str, Any]] | None = None,
        rule_files: list[Path] | None = None,
    ) -> None:
        """`targets`: base URLs (all labelled node=fixture-node), or URL -> extra target labels, scraped as the
        job `numa-topology-exporter`; or `scrape_configs` as prometheus.yml takes them."""
        assert PROMETHEUS is not None, "prometheus is installed by make test"
        assert (targets is None) != (scrape_configs is None), "targets or scrape_configs"
        workdir.mkdir(parents=True, exist_ok=True)
        if scrape_configs is None:
            labelled = (
                targets if isinstance(targets, dict) else {url: {"node": "fixture-node"} for url in targets or []}
            )
            static = [{"targets": [url.removeprefix("http://")], "labels": labels} for url, labels in labelled.items()]
            scrape_configs = [{"job_name": "numa-topology-exporter", "static_configs": static}]
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        }
        if rule_files:
            config["rule_files"] = [str(path) for path in rule_files]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        config_file = workdir / "prometheus.yml"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self._ready, timeout=30, what="Prometheus to start")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for_query(self, promql: str, *, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll until the query returns at least one series (the first scrape takes a few seconds)."""
        return wait_for(lambda: self.query(promql), timeout=timeout, interval=0.25, what=f"data for {promql}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
