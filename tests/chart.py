"""The Helm chart rendered by the real Helm v4 engine (helm-python-sdk), for the chart tests and for the
control plane, which applies the chart's own RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent.parent / "helm" / "numa-topology-exporter"
SCENARIOS = {"default": {}} | {
    path.stem: yaml.safe_load(path.read_text()) for path in sorted((CHART / "ci").glob("*.yaml"))
}
KUBE_VERSIONS = ("1.30.0", "1.36.0")
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values, name="nte", namespace="numa-system", is_install=True)
    documents = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents


def notes(values: dict[str, Any]) -> str:
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values, name="nte", namespace="numa-system", is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]
