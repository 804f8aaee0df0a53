"""Dashboards and alerts: generated output committed and current, valid PromQL, names the exporter serves,
importable JSON, alert unit tests, and every panel answered by a real Prometheus scraping fixture hosts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import generate
from dashboards.config import CONFIG, UIDS
from dashboards.queries import CLUSTER_QUERIES, NODE_QUERIES
from tests.daemon import Daemon, wait_for
from tests.hosttree import fixture_nvml_config
from tests.prometheus import PROMETHEUS, Prometheus
from tests.scenarios import KUBELET_SCENARIOS

PROMTOOL = shutil.which("promtool")
ROOT = Path(__file__).resolve().parent.parent
GOLDEN_METRICS = Path(__file__).parent / "golden" / "metrics"
ALL_QUERIES = [(f"node/{name}", q) for name, qs in NODE_QUERIES.items() for q in qs] + [
    (f"cluster/{name}", q) for name, qs in CLUSTER_QUERIES.items() for q in qs
]
ALERTS = yaml.safe_load((ROOT / "dashboards" / "alerts.yaml").read_text())["groups"][0]["rules"]
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus (make test)")


def concrete(expr: str, node: str = "fixture-node") -> str:
    return expr.replace("$node", node)


def test_committed_output_is_what_the_generator_produces() -> None:
    assert generate.main(["--check"]) == 0


@needs_promtool
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    records = [{"record": f"check:{index}", "expr": concrete(q.expr)} for index, (_name, q) in enumerate(ALL_QUERIES)]
    rules = tmp_path / "queries.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout


@needs_promtool
def test_alert_rules_check_and_unit_tests() -> None:
    check = subprocess.run([str(PROMTOOL), "check", "rules", str(ROOT / "dashboards" / "alerts.yaml")],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([str(PROMTOOL), "test", "rules", "alerts_test.yaml"], cwd=ROOT / "dashboards" / "tests",
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "dashboards" / "tests" / "alerts_test.yaml").read_text()))
    assert tested == {rule["alert"] for rule in ALERTS}, "every alert has a unit test"


def served_metric_names() -> set[str]:
    names: set[str] = set()
    for golden in GOLDEN_METRICS.glob("*.prom"):
        for line in golden.read_text().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                names.add(name)
                if kind == "histogram":
                    names.update(f"{name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    served_when = {"numa_topology_nrt_writes_total", "numa_topology_nrt_last_success_timestamp_seconds",  # publishing
                   "numa_topology_source_disagreement",  # a podresources socket (tests/test_podresources.py)
                   # a cgroup tree (observed placement, tests/test_placement.py)
                   "numa_topology_container_memory_bytes", "numa_topology_container_remote_memory_ratio",
                   "numa_topology_container_enforced_numa_nodes", "numa_topology_container_placement_drift",
                   "numa_topology_numa_node_remote_memory_bytes"}
    return names | served_when


def test_every_metric_name_a_query_uses_is_served() -> None:
    served = served_metric_names()
    exprs = [q.expr for _name, q in ALL_QUERIES] + [rule["expr"] for rule in ALERTS]
    used = {name for expr in exprs for name in re.findall(r"\bnuma_topology_\w+", expr)}
    assert used
    assert used <= served, used - served


@pytest.mark.parametrize("name", ["node-numa.json", "cluster-numa.json"])
def test_dashboards_are_importable(name: str) -> None:
    dashboard = json.loads((ROOT / "dashboards" / name).read_text())
    assert dashboard["uid"] in UIDS.values()
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["templating"]["list"][0] == {"name": "datasource", "type": "datasource", "query": "prometheus",
                                                  "label": "Data source", "current": {}, "hide": 0}  # fmt: skip
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))

    def datasources(value: Any) -> list[dict[str, Any]]:
        if isinstance(value, dict):
            found = [value["datasource"]] if isinstance(value.get("datasource"), dict) else []
            return found + [d for item in value.values() for d in datasources(item)]
        if isinstance(value, list):
            return [d for item in value for d in datasources(item)]
        return []

    used = datasources(dashboard)
    assert used
    assert all(ds == {"type": "prometheus", "uid": "${datasource}"} for ds in used), "no hard-coded datasource UID"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is installed by make test")
def test_every_panel_and_alert_answers_against_a_real_prometheus(tmp_path: Path, fake_nvml_library: Path) -> None:
    env = {
        "LD_LIBRARY_PATH": str(fake_nvml_library.parent),
        "FAKE_NVML_CONFIG": str(fixture_nvml_config(tmp_path / "nvml")),
    }
    hosts = {name: KUBELET_SCENARIOS[name](tmp_path / name) for name in ("machine-gpu-stranded", "machine-gpu-static")}
    daemons = [Daemon(host.paths, extra=["--debounce", "0", "--no-nrt"], env=env) for host in hosts.values()]
    try:
        for daemon in daemons:
            wait_for(lambda d=daemon: d.get("/readyz")[0] == 200, what="readiness")
        targets = {d.base_url: {CONFIG["node_label"]: name} for d, name in zip(daemons, hosts, strict=True)}
        with Prometheus(tmp_path / "prometheus", targets) as prometheus:
            prometheus.wait_for_query(f'count(up{{job="numa-topology-exporter"}} == 1) == {len(daemons)}')
            # rate() over the numastat counters needs two samples in its window.
            node = f'{CONFIG["node_label"]}="machine-gpu-stranded"'
            prometheus.wait_for_query(f"count_over_time(numa_topology_numastat_pages_total{{{node}}}[5m]) >= 3")
            empty = []
            for name, query in ALL_QUERIES:
                result = prometheus.query(concrete(query.expr, "machine-gpu-stranded"))
                if query.expect_data and not result:
                    empty.append(name)
                if not query.expect_data:
                    assert result == [] or all(float(r["value"][1]) == 0 for r in result), name
            assert empty == []
            stranded = prometheus.query(ALERTS[0]["expr"])
            assert [(r["metric"]["node"], r["metric"]["numa_node"]) for r in stranded] == [
                ("machine-gpu-stranded", "1")
            ]
            misaligned = prometheus.query(ALERTS[1]["expr"])
            assert [(r["metric"]["node"], r["metric"]["container"]) for r in misaligned] == [
                ("machine-gpu-stranded", "app")
            ]
            for rule in ALERTS[2:]:
                assert prometheus.query(rule["expr"]) == [], rule["alert"]
    finally:
        for daemon in daemons:
            daemon.stop()
