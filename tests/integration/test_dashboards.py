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
from dashboards.alerts import rules
from dashboards.config import CONFIG, UIDS
from dashboards.queries import CLUSTER_QUERIES, NODE_QUERIES, cluster_queries, node_queries
from tests.chart import by_kind, render
from tests.daemon import Daemon, wait_for
from tests.hosttree import fixture_nvml_config
from tests.prometheus import PROMETHEUS, Prometheus
from tests.scenarios import KUBELET_SCENARIOS

PROMTOOL = shutil.which("promtool")
ROOT = Path(__file__).resolve().parents[2]
GOLDEN_METRICS = Path(__file__).parents[1] / "golden" / "metrics"
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
    served_when = {
        "numa_topology_nrt_writes_total",
        "numa_topology_nrt_last_success_timestamp_seconds",  # publishing
        "numa_topology_source_disagreement",  # a podresources socket (tests/integration/test_podresources.py)
        # a cgroup tree (observed placement, tests/integration/test_placement.py)
        "numa_topology_container_memory_bytes",
        "numa_topology_container_remote_memory_ratio",
        "numa_topology_container_enforced_numa_nodes",
        "numa_topology_container_placement_drift",
        "numa_topology_numa_node_remote_memory_bytes",
    }
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


def _operator_relabeling(rule: dict[str, Any]) -> dict[str, Any]:
    """A ServiceMonitor relabeling as the Prometheus Operator writes it into prometheus.yml."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {keys.get(key, key): value for key, value in rule.items()}


def static_scrape(urls: list[str], _names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """A plain Prometheus: one static job, no labels; the nodes are told apart by `instance` alone."""
    addresses = [url.removeprefix("http://") for url in urls]
    return [{"job_name": "numa-topology-exporter", "static_configs": [{"targets": addresses}]}], addresses


def kube_prometheus_stack_scrape(urls: list[str], names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """What the Prometheus Operator makes of the chart's ServiceMonitor (rendered with a fullnameOverride):
    its job naming (the Service's name, then the `jobLabel` label's value) and the chart's relabelings, over
    the discovery labels Kubernetes service discovery gives each endpoint."""
    (monitor,) = by_kind(render({"fullnameOverride": "nte", "serviceMonitor": {"enabled": True}}), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    (service,) = by_kind(render({"fullnameOverride": "nte"}), "Service")
    job_label = "__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", monitor["spec"]["jobLabel"])
    static = [
        {"targets": [url.removeprefix("http://")],
         "labels": {"__meta_kubernetes_pod_node_name": name, "__meta_kubernetes_service_name": service["metadata"]["name"],
                    job_label: service["metadata"]["labels"][monitor["spec"]["jobLabel"]]}}
        for url, name in zip(urls, names, strict=True)
    ]  # fmt: skip
    relabel = [
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        {"source_labels": [job_label], "regex": "(.+)", "target_label": "job"},
        *map(_operator_relabeling, endpoint["relabelings"]),
    ]
    job = f"serviceMonitor/{monitor['metadata']['namespace']}/{monitor['metadata']['name']}/0"
    return [{"job_name": job, "static_configs": static, "relabel_configs": relabel}], names


def annotation_scrape(urls: list[str], names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The prometheus chart's `kubernetes-pods` job (pods annotated prometheus.io/scrape): job
    `kubernetes-pods`, the node as `node`; served by `dashboards.generate --selector ... --node-label node`."""
    static = [{"targets": [url.removeprefix("http://")], "labels": {"__meta_kubernetes_pod_node_name": name}}
              for url, name in zip(urls, names, strict=True)]  # fmt: skip
    relabel = [{"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"}]
    return [{"job_name": "kubernetes-pods", "static_configs": static, "relabel_configs": relabel}], names


SETUPS = {
    "static": (static_scrape, CONFIG),
    "kube-prometheus-stack": (kube_prometheus_stack_scrape, CONFIG),
    "annotations": (annotation_scrape, {**CONFIG, "selector": 'job="kubernetes-pods"', "node_label": "node"}),
}


def test_generate_out_writes_the_three_files_for_another_setup(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path), "--selector", 'job="kubernetes-pods"', "--node-label", "node"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alerts.yaml", "cluster-numa.json", "node-numa.json"]
    alerts = yaml.safe_load((tmp_path / "alerts.yaml").read_text())["groups"][0]["rules"]
    assert alerts == rules(SETUPS["annotations"][1])["groups"][0]["rules"]
    assert 'up{job="kubernetes-pods"} == 0' in [rule["expr"] for rule in alerts]
    node = json.loads((tmp_path / "node-numa.json").read_text())
    exprs = [target["expr"] for panel in node["panels"] for target in panel["targets"]]
    assert exprs
    assert all('job="kubernetes-pods", node="$node"' in expr for expr in exprs), exprs
    with pytest.raises(SystemExit):
        generate.main(["--out", str(tmp_path), "--node-label", "no-dashes"])
    with pytest.raises(SystemExit):
        generate.main(["--node-label", "node"])  # would write the committed files with another config


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is installed by make test")
@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_panel_and_alert_answers_against_a_real_prometheus(
    setup: str, tmp_path: Path, fake_nvml_library: Path
) -> None:
    """Each way of scraping (a static job; kube-prometheus-stack with the chart's ServiceMonitor; the
    annotation-based job with a generated config) fills every panel and fires the alerts on the right node."""
    scrape, config = SETUPS[setup]
    env = {
        "LD_LIBRARY_PATH": str(fake_nvml_library.parent),
        "FAKE_NVML_CONFIG": str(fixture_nvml_config(tmp_path / "nvml")),
    }
    hosts = {name: KUBELET_SCENARIOS[name](tmp_path / name) for name in ("machine-gpu-stranded", "machine-gpu-static")}
    daemons = [Daemon(host.paths, extra=["--debounce", "0", "--no-nrt"], env=env) for host in hosts.values()]
    queries = [(f"node/{name}", q) for name, qs in node_queries(config).items() for q in qs] + [
        (f"cluster/{name}", q) for name, qs in cluster_queries(config).items() for q in qs
    ]
    alerts = rules(config)["groups"][0]["rules"]
    label = config["node_label"]
    try:
        for daemon in daemons:
            wait_for(lambda d=daemon: d.get("/readyz")[0] == 200, what="readiness")
        scrape_configs, nodes = scrape([d.base_url for d in daemons], list(hosts))
        stranded_node = nodes[0]
        with Prometheus(tmp_path / "prometheus", scrape_configs=scrape_configs) as prometheus:
            up = prometheus.wait_for_query(f"up{{{config['selector']}}} == 1")
            wait_for(lambda: len(prometheus.query(f"up{{{config['selector']}}} == 1")) == len(daemons), what="both up")
            assert {r["metric"][label] for r in prometheus.query(f"up{{{config['selector']}}}")} == set(nodes), up
            # rate() over the numastat counters needs two samples in its window.
            node = f'{label}="{stranded_node}"'
            prometheus.wait_for_query(f"count_over_time(numa_topology_numastat_pages_total{{{node}}}[5m]) >= 3")
            empty = []
            for name, query in queries:
                result = prometheus.query(concrete(query.expr, stranded_node))
                if query.expect_data and not result:
                    empty.append(name)
                if not query.expect_data:
                    assert result == [] or all(float(r["value"][1]) == 0 for r in result), name
            assert empty == []
            variable = prometheus.query(f"numa_topology_exporter_build_info{{{config['selector']}}}")
            assert sorted(r["metric"][label] for r in variable) == sorted(nodes), "the dashboards' node variable"
            stranded = prometheus.query(alerts[0]["expr"])
            assert [(r["metric"][label], r["metric"]["numa_node"]) for r in stranded] == [(stranded_node, "1")]
            misaligned = prometheus.query(alerts[1]["expr"])
            assert [(r["metric"][label], r["metric"]["container"]) for r in misaligned] == [(stranded_node, "app")]
            far = next(rule for rule in alerts if rule["alert"] == "NumaContainerGpuNicFar")
            assert sorted((r["metric"][label], r["metric"]["container"], r["metric"]["path"])
                          for r in prometheus.query(far["expr"])) == sorted(
                [(stranded_node, "app", "NODE"), (nodes[1], "db", "NODE")])  # fmt: skip
            for rule in alerts[2:]:
                if rule is not far:
                    assert prometheus.query(rule["expr"]) == [], rule["alert"]
    finally:
        for daemon in daemons:
            daemon.stop()
