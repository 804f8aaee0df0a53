"""A real Prometheus scrapes the daemon on loopback and answers PromQL over our metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon import Daemon, wait_for
from tests.hosttree import HostTree, fixture_nvml_config
from tests.prometheus import PROMETHEUS, Prometheus
from tests.scenarios import KUBELET_SCENARIOS

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is installed by make test")


def test_prometheus_scrapes_and_answers_promql(tmp_path: Path, fake_nvml_library: Path) -> None:
    host: HostTree = KUBELET_SCENARIOS["machine-gpu-static"](tmp_path / "host")
    config = fixture_nvml_config(tmp_path / "nvml.conf")
    env = {"LD_LIBRARY_PATH": str(fake_nvml_library.parent), "FAKE_NVML_CONFIG": str(config)}
    with Daemon(host.paths, extra=["--debounce", "0"], env=env) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        with Prometheus(tmp_path / "prometheus", [daemon.base_url]) as prometheus:
            up = prometheus.wait_for_query('up{job="numa-topology-exporter"} == 1')
            assert up[0]["metric"]["node"] == "fixture-node"
            result = prometheus.wait_for_query(
                'sum by (numa_node) (numa_topology_resource_available{resource="nvidia.com/gpu"})'
            )
            assert {r["metric"]["numa_node"]: float(r["value"][1]) for r in result} == {"0": 1.0, "1": 0.0}
            fit = prometheus.query(
                'numa_topology_profile_fit_node{placement="unaligned"} - ignoring(placement) '
                'numa_topology_profile_fit_node{placement="aligned"}'
            )
            assert fit, "fragmentation loss is computable for every profile"
            assert all(float(r["value"][1]) >= 0 for r in fit)
