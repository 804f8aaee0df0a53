"""Every selector and threshold the dashboards and alerts use, in one place (node-mixin's config.libsonnet)."""

from __future__ import annotations

from typing import Any

CONFIG: dict[str, Any] = {
    # Selects the exporter's targets and series. The chart's ServiceMonitor/PodMonitor name the job after the
    # pods' app.kubernetes.io/name label (`numa-topology-exporter` whatever the release or fullnameOverride);
    # a plain static scrape names its job so (README). The regex also takes a PodMonitor's `<namespace>/<name>`.
    "selector": 'job=~".*numa-topology-exporter.*"',
    # The target label that tells nodes apart. `instance` is there in every scrape: host:port in a static
    # scrape, and the node name where the chart's default relabeling sets it (as kube-prometheus-stack does
    # for node-exporter). `python -m dashboards.generate --node-label node` for setups that add `node`.
    "node_label": "instance",
    # Alerts.
    "stranded_gpu_for": "30m",
    "misaligned_for": "5m",
    "dra_misaligned_for": "15m",
    "gpu_nic_for": "15m",
    "remote_memory_ratio": 0.5,
    "remote_memory_for": "15m",
    "drift_for": "15m",
    "stale_refresh_seconds": 300,
    "stale_for": "5m",
    "down_for": "5m",
    "absent_for": "15m",
    "source_down_for": "10m",
    "nrt_failing_seconds": 900,
    "nrt_failing_for": "5m",
    # Dashboards.
    "rate_interval": "5m",
    "top_nodes": 10,
    "refresh": "30s",
    "time_from": "now-6h",
}

UIDS = {"node": "numa-topology-node", "cluster": "numa-topology-cluster"}
