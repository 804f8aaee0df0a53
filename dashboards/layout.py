"""Grafana dashboard JSON from the queries: panels, grid positions, variables. No PromQL here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dashboards.config import CONFIG, UIDS
from dashboards.queries import Query, cluster_queries, node_queries

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _targets(queries: list[Query]) -> list[dict[str, Any]]:
    targets = []
    for index, query in enumerate(queries):
        target: dict[str, Any] = {"datasource": DATASOURCE, "expr": query.expr, "refId": chr(ord("A") + index)}
        if query.legend:
            target["legendFormat"] = query.legend
        if query.instant:
            target.update(instant=True, range=False, format="table")
        targets.append(target)
    return targets


class Grid:
    """Places panels left to right, 24 units wide, wrapping rows."""

    def __init__(self) -> None:
        self.x = self.y = self.row_height = 0
        self.next_id = 1

    def place(self, width: int, height: int) -> dict[str, int]:
        if self.x + width > 24:
            self.x, self.y = 0, self.y + self.row_height
            self.row_height = 0
        position = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.x += width
        self.row_height = max(self.row_height, height)
        return position

    def panel_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def panel(grid: Grid, kind: str, title: str, queries: list[Query], *, width: int = 12, height: int = 8,
          description: str = "", unit: str | None = None, transformations: list[dict[str, Any]] | None = None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = {
        "id": grid.panel_id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": grid.place(width, height),
        "targets": _targets(queries),
        "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
        "options": options or {},
    }
    if transformations:
        result["transformations"] = transformations
    return result


def _heatmap(table: dict[str, Any]) -> dict[str, Any]:
    """A node x NUMA matrix whose cells are colored by value, from red (nothing left) to green."""
    table["fieldConfig"]["defaults"].update(
        custom={"cellOptions": {"type": "color-background", "mode": "gradient"}, "align": "center"},
        color={"mode": "continuous-RdYlGr"},
    )
    return table


def _merge() -> list[dict[str, Any]]:
    return [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}}},
    ]


def _variables(config: Mapping[str, Any], *, with_node: bool) -> dict[str, Any]:
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "type": "datasource",
            "query": "prometheus",
            "label": "Data source",
            "current": {},
            "hide": 0,
        }
    ]
    if with_node:
        variables.append({
            "name": "node", "label": "Node", "type": "query", "datasource": DATASOURCE,
            "query": {"query": f"label_values(numa_topology_exporter_build_info{{{config['selector']}}}, {config['node_label']})",
                      "refId": "node"},
            "definition": f"label_values(numa_topology_exporter_build_info, {config['node_label']})",
            "refresh": 2, "sort": 1, "current": {}, "hide": 0,
        })  # fmt: skip
    return {"list": variables}


def _dashboard(config: Mapping[str, Any], uid: str, title: str, panels: list[dict[str, Any]], *,
               with_node: bool) -> dict[str, Any]:  # fmt: skip
    return {
        "uid": uid,
        "title": title,
        "tags": ["numa", "numa-topology-exporter"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "timezone": "browser",
        "refresh": config["refresh"],
        "time": {"from": config["time_from"], "to": "now"},
        "templating": _variables(config, with_node=with_node),
        "annotations": {"list": []},
        "links": [
            {"title": "NUMA dashboards", "type": "dashboards", "tags": ["numa-topology-exporter"], "asDropdown": True}
        ],
        "panels": panels,
    }


def node_dashboard(config: Mapping[str, Any] = CONFIG) -> dict[str, Any]:
    grid = Grid()
    q = node_queries(config)
    panels = [
        panel(grid, "table", "Per-NUMA capacity, allocatable, available, stranded", q["accounting"], width=24, height=10,
              description="Bytes for memory and hugepages, cores for cpu, devices otherwise.",
              transformations=[{"id": "joinByLabels", "options": {"value": "__name__", "join": ["numa_node", "resource", "unit"]}}]),
        panel(grid, "bargauge", "Available share of allocatable", q["available_ratio"], width=12, unit="percentunit",
              options={"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}}),
        panel(grid, "timeseries", "Stranded (free but unusable)", q["stranded"], width=12,
              description="Free on a NUMA node but unusable by any profile: a companion resource is exhausted there."),
        panel(grid, "timeseries", "Hugepages per NUMA node and size", q["hugepages"], width=12),
        panel(grid, "bargauge", "Devices per NUMA node", q["devices"], width=12,
              options={"displayMode": "basic", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}}),
        panel(grid, "table", "Devices", q["device_list"], width=24, transformations=_merge()),
        panel(grid, "table", "NUMA distances (SLIT)", q["distances"], width=12,
              transformations=[{"id": "groupingToMatrix", "options": {"columnField": "to_numa_node", "rowField": "numa_node", "valueField": "Value"}}]),
        panel(grid, "timeseries", "Pods that still fit, per profile", q["fit"], width=12,
              description="Per NUMA node, and for the node: aligned (single-numa-node) and unaligned."),
        panel(grid, "table", "Container alignment", q["alignment"], width=24, height=10,
              description="NUMA nodes each exclusive resource spans; aligned = 1 when all share one NUMA node.",
              transformations=[{"id": "joinByLabels", "options": {"value": "__name__", "join": ["namespace", "pod", "pod_uid", "container"]}}]),
        panel(grid, "table", "DRA devices away from their container's CPUs", q["dra_misaligned"], width=24,
              description="Containers holding a DRA device (ResourceClaim) on a NUMA node where none of their pinned "
                          "CPUs, Static memory or device-plugin devices are. The Topology Manager does not align DRA "
                          "devices, so the kubelet admits these without error: see numa_topology_container_numa_nodes "
                          "for where each resource is.",
              transformations=_merge()),
        panel(grid, "table", "GPU-NIC PCIe path per container", q["gpu_nic"], width=12,
              description="For each container given GPUs and NICs (or VFs): its closest GPU-NIC pair and the PCIe path "
                          "class between them, as nvidia-smi topo -m names it (PIX one switch, PXB several, PHB host "
                          "bridge, NODE same NUMA node, SYS across NUMA nodes). GPUDirect RDMA = 1 where NCCL's default "
                          "(NCCL_NET_GDR_LEVEL=PXB) would use it.",
              transformations=[{"id": "joinByLabels", "options": {"value": "__name__", "join": ["namespace", "pod", "pod_uid", "container"]}}]),
        panel(grid, "table", "Nearest NIC of each GPU", q["gpu_nearest_nic"], width=12,
              description="Each GPU's nearest NIC (physical function) and the path class to it; GPUs without a NIC "
                          "under their PCIe switch get no GPUDirect RDMA under NCCL's default.",
              transformations=_merge()),
        panel(grid, "table", "DRA devices: NUMA node, pool, health, withdrawn slices", q["dra_devices"], width=24,
              description="Devices this node's ResourceSlices publish (resource dra:<driver>), their NUMA node from the "
                          "slice's attributes or the hardware (-1: unknown), the health the kubelet last heard, and "
                          "devices a claim still holds after their slice was withdrawn.",
              transformations=_merge()),
        panel(grid, "timeseries", "Remote memory share per container", q["locality"], width=12, unit="percentunit",
              description="Share of each sampled container's memory (cgroup memory.numa_stat) on NUMA nodes holding "
                          "none of its enforced CPUs: the cross-NUMA tax."),
        panel(grid, "timeseries", "Memory remote to its owners, per NUMA node", q["remote_memory"], width=12,
              unit="bytes"),
        panel(grid, "table", "Placement: drift, enforced NUMA nodes, remote share", q["placement"], width=24,
              description="Drift = 1 where the kubelet pinned CPUs or assigned Static memory that the container's "
                          "cgroup does not enforce (e.g. the Memory Manager gave NUMA 0 but cpuset.mems is 0-1).",
              transformations=_merge()),
        panel(grid, "timeseries", "numastat: misses, foreign and remote allocations", q["numastat"], width=12, unit="ops"),
        panel(grid, "stat", "Sources up", q["sources"], width=6,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}),
        panel(grid, "timeseries", "Source errors", q["source_errors"], width=6, unit="ops"),
        panel(grid, "stat", "Seconds since last refresh", q["freshness"], width=6, unit="s"),
        panel(grid, "table", "State files vs podresources: disagreements", q["disagreements"], width=24,
              description="Containers on which the kubelet's state files and its podresources API disagree (CPUs, "
                          "devices or their NUMA nodes, memory blocks), and new disagreements in the last hour. "
                          "The numbers follow the state files; a row here means one of the kubelet's two accounts "
                          "is wrong or stale.",
              transformations=_merge()),
        panel(grid, "table", "Kubelet configuration", q["kubelet"], width=18, transformations=_merge()),
    ]  # fmt: skip
    return _dashboard(config, UIDS["node"], "NUMA / Node", panels, with_node=True)


def cluster_dashboard(config: Mapping[str, Any] = CONFIG) -> dict[str, Any]:
    grid = Grid()
    q = cluster_queries(config)
    panels = [
        panel(grid, "timeseries", "Stranded devices by resource", q["stranded_devices"], width=12),
        panel(grid, "timeseries", "Stranded CPUs", q["stranded_cpus"], width=12),
        panel(grid, "bargauge", "Nodes with the most stranded GPUs", q["stranded_gpus_by_node"], width=12,
              options={"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}}),
        panel(grid, "bargauge", "Fragmentation loss (unaligned - aligned fit) per node and profile", q["fragmentation"], width=12,
              options={"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": {"calcs": ["lastNotNull"]}}),
        panel(grid, "stat", "Misaligned containers", q["misaligned"], width=6,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}),
        panel(grid, "table", "Misaligned containers", q["misaligned_list"], width=18, transformations=_merge()),
        panel(grid, "stat", "Containers with a DRA device away from their CPUs", q["dra_misaligned"], width=6,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}),
        panel(grid, "table", "Containers with a DRA device away from their CPUs", q["dra_misaligned_list"], width=18,
              transformations=_merge()),
        panel(grid, "stat", "Containers whose cgroup drifted from the kubelet's pinning", q["drifting"], width=6,
              options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}),
        panel(grid, "table", "Containers with the most memory remote to their CPUs", q["remote_containers"], width=18,
              transformations=_merge()),
        _heatmap(panel(grid, "table", "Available CPUs: node x NUMA node", q["capacity_heatmap"], width=24,
                       transformations=[{"id": "groupingToMatrix", "options": {"columnField": "numa_node", "rowField": config["node_label"], "valueField": "Value"}}])),
        panel(grid, "timeseries", "Exporters not refreshing", q["not_refreshing"], width=8, unit="s"),
        panel(grid, "timeseries", "Sources down", q["sources_down"], width=8),
        panel(grid, "timeseries", "NodeResourceTopology write errors", q["nrt_errors"], width=8, unit="ops"),
    ]  # fmt: skip
    return _dashboard(config, UIDS["cluster"], "NUMA / Cluster", panels, with_node=False)
