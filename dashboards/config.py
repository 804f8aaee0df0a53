"""Every selector and threshold the dashboards and alerts use, in one place (node-mixin's config.libsonnet)."""

from __future__ import annotations

CONFIG = {
    # Selects the exporter's series; the Helm chart's ServiceMonitor/PodMonitor scrape job is named after it.
    "selector": 'job=~".*numa-topology-exporter.*"',
    # The label Prometheus adds with the Kubernetes node name (the chart's relabeling sets `node`).
    "node_label": "node",
    # Alerts.
    "stranded_gpu_for": "30m",
    "misaligned_for": "5m",
    "dra_misaligned_for": "15m",
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
