"""The PromQL of every panel, apart from layout. `$node` and `$datasource` are Grafana variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dashboards.config import CONFIG


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    # Whether a healthy fixture host (with stranded GPUs and a misaligned container) gives data: the
    # integration test asserts it. False for queries that are empty when all is well.
    expect_data: bool = True


def node_queries(config: Mapping[str, Any] = CONFIG) -> dict[str, list[Query]]:
    """The NUMA / Node dashboard's queries; `$node` is the dashboard's node variable."""
    NODE, RATE = f'{config["selector"]}, {config["node_label"]}="$node"', config["rate_interval"]
    return {
        "accounting": [
            Query(f"numa_topology_resource_capacity{{{NODE}}}", instant=True),
            Query(f"numa_topology_resource_allocatable{{{NODE}}}", instant=True),
            Query(f"numa_topology_resource_available{{{NODE}}}", instant=True),
            Query(f"numa_topology_resource_stranded{{{NODE}}}", instant=True),
        ],
        "available_ratio": [
            Query(
                f"numa_topology_resource_available{{{NODE}}} / (numa_topology_resource_allocatable{{{NODE}}} > 0)",
                legend="NUMA {{numa_node}} {{resource}}",
                instant=True,
            )
        ],
        "hugepages": [
            Query(f"numa_topology_hugepages_pages{{{NODE}}}", legend="NUMA {{numa_node}} {{size}} {{state}}")
        ],
        "devices": [
            Query(
                f"count by (numa_node, kind) (numa_topology_device_info{{{NODE}}})",
                legend="NUMA {{numa_node}} {{kind}}",
                instant=True,
            )
        ],
        "device_list": [Query(f"numa_topology_device_info{{{NODE}}}", instant=True)],
        "distances": [Query(f"numa_topology_distance{{{NODE}}}", instant=True)],
        "fit": [
            Query(f"numa_topology_profile_fit{{{NODE}}}", legend="{{profile}} NUMA {{numa_node}}"),
            Query(f"numa_topology_profile_fit_node{{{NODE}}}", legend="{{profile}} {{placement}}"),
        ],
        "stranded": [Query(f"numa_topology_resource_stranded{{{NODE}}} > 0", legend="NUMA {{numa_node}} {{resource}}")],
        "alignment": [
            Query(f"numa_topology_container_numa_nodes{{{NODE}}}", instant=True),
            Query(f"numa_topology_container_aligned{{{NODE}}}", instant=True),
        ],
        "dra_misaligned": [
            Query(f"numa_topology_container_dra_misaligned{{{NODE}}} == 1", instant=True, expect_data=False),
        ],
        "gpu_nic": [
            Query(f"numa_topology_container_gpu_nic_path{{{NODE}}}", instant=True),
            Query(f"numa_topology_container_gpudirect_rdma{{{NODE}}}", instant=True),
        ],
        "gpu_nearest_nic": [
            Query(f"numa_topology_gpu_nearest_nic{{{NODE}}}", instant=True),
            Query(f"numa_topology_gpus_without_local_nic{{{NODE}}}", instant=True),
        ],
        "dra_devices": [
            Query(f'numa_topology_device_info{{{NODE}, resource=~"dra:.*"}}', instant=True, expect_data=False),
            Query(f"numa_topology_dra_device_health{{{NODE}}}", instant=True, expect_data=False),
            Query(f"numa_topology_dra_device_unpublished{{{NODE}}}", instant=True, expect_data=False),
        ],
        "locality": [
            Query(
                f"numa_topology_container_remote_memory_ratio{{{NODE}}}",
                legend="{{namespace}}/{{pod}} {{container}}",
                expect_data=False,
            ),
        ],
        "placement": [
            Query(f"numa_topology_container_placement_drift{{{NODE}}} == 1", instant=True, expect_data=False),
            Query(f"numa_topology_container_enforced_numa_nodes{{{NODE}}}", instant=True, expect_data=False),
            Query(f"numa_topology_container_remote_memory_ratio{{{NODE}}}", instant=True, expect_data=False),
        ],
        "remote_memory": [
            Query(
                f"numa_topology_numa_node_remote_memory_bytes{{{NODE}}}", legend="NUMA {{numa_node}}", expect_data=False
            ),
        ],
        "numastat": [
            Query(
                f'rate(numa_topology_numastat_pages_total{{{NODE}, type=~"numa_miss|numa_foreign|other_node"}}[{RATE}])',
                legend="NUMA {{numa_node}} {{type}}",
            )
        ],
        "sources": [Query(f"numa_topology_source_up{{{NODE}}}", legend="{{source}}")],
        "source_errors": [
            Query(
                f"sum by (source, reason) (rate(numa_topology_source_errors_total{{{NODE}}}[{RATE}]))",
                legend="{{source}} {{reason}}",
                expect_data=False,
            )
        ],
        "disagreements": [
            Query(f"numa_topology_source_disagreement{{{NODE}}}", instant=True, expect_data=False),
            Query(
                f"sum by (resource) (increase(numa_topology_source_disagreements_total{{{NODE}}}[1h]))",
                instant=True,
                expect_data=False,
            ),
        ],
        "freshness": [
            Query(f"time() - numa_topology_last_refresh_timestamp_seconds{{{NODE}}}", legend="seconds since refresh")
        ],
        "kubelet": [Query(f"numa_topology_kubelet_config_info{{{NODE}}}", instant=True)],
    }


def cluster_queries(config: Mapping[str, Any] = CONFIG) -> dict[str, list[Query]]:
    """The NUMA / Cluster dashboard's queries, over every node the selector matches."""
    SEL, RATE, N = config["selector"], config["rate_interval"], config["node_label"]
    return {
        "stranded_devices": [
            Query(
                f'sum by (resource) (numa_topology_resource_stranded{{{SEL}, unit="integer"}})', legend="{{resource}}"
            )
        ],
        "stranded_cpus": [
            Query(f'sum by (resource) (numa_topology_resource_stranded{{{SEL}, unit="core"}})', legend="{{resource}}")
        ],
        "stranded_gpus_by_node": [
            Query(
                f"topk({config['top_nodes']}, sum by ({N}) "
                f'(numa_topology_resource_stranded{{{SEL}, resource=~"nvidia.com/.*"}}))',
                legend=f"{{{{{N}}}}}",
                instant=True,
            )
        ],
        "fragmentation": [
            Query(
                f'topk({config["top_nodes"]}, numa_topology_profile_fit_node{{{SEL}, placement="unaligned"}} '
                f'- ignoring(placement) numa_topology_profile_fit_node{{{SEL}, placement="aligned"}})',
                legend=f"{{{{{N}}}}} {{{{profile}}}}",
                instant=True,
            )
        ],
        "misaligned": [Query(f"count(numa_topology_container_aligned{{{SEL}}} == 0) or vector(0)", instant=True)],
        "misaligned_list": [Query(f"numa_topology_container_aligned{{{SEL}}} == 0", instant=True)],
        "dra_misaligned": [
            Query(f"count(numa_topology_container_dra_misaligned{{{SEL}}} == 1) or vector(0)", instant=True)
        ],
        "dra_misaligned_list": [
            Query(f"numa_topology_container_dra_misaligned{{{SEL}}} == 1", instant=True, expect_data=False)
        ],
        "drifting": [Query(f"count(numa_topology_container_placement_drift{{{SEL}}} == 1) or vector(0)", instant=True)],
        "remote_containers": [
            Query(
                f"topk({config['top_nodes']}, numa_topology_container_remote_memory_ratio{{{SEL}}} > 0)",
                instant=True,
                expect_data=False,
            )
        ],
        "capacity_heatmap": [
            Query(f'sum by ({N}, numa_node) (numa_topology_resource_available{{{SEL}, resource="cpu"}})', instant=True)
        ],
        "not_refreshing": [
            Query(
                f"time() - numa_topology_last_refresh_timestamp_seconds{{{SEL}}} > {config['stale_refresh_seconds']}",
                legend=f"{{{{{N}}}}}",
                expect_data=False,
            )
        ],
        "nrt_errors": [
            Query(
                f'sum by ({N}, result) (rate(numa_topology_nrt_writes_total{{{SEL}, result!="success"}}[{RATE}]))',
                legend=f"{{{{{N}}}}} {{{{result}}}}",
                expect_data=False,
            )
        ],
        "sources_down": [
            Query(f"numa_topology_source_up{{{SEL}}} == 0", legend=f"{{{{{N}}}}} {{{{source}}}}", expect_data=False)
        ],
    }


NODE_QUERIES = node_queries()
CLUSTER_QUERIES = cluster_queries()
