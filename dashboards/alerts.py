"""The alert rules: each names what is wrong and what to look at."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dashboards.config import CONFIG, UIDS


def rules(config: Mapping[str, Any] = CONFIG) -> dict[str, Any]:
    """A Prometheus rules file (also the PrometheusRule's spec)."""
    SEL, node = config["selector"], config["node_label"]
    # Where the node label is `instance`, saying both would repeat it.
    target = "" if node == "instance" else " ({{ $labels.instance }})"
    return {
        "groups": [
            {
                "name": "numa-topology-exporter",
                "rules": [
                    {
                        "alert": "NumaStrandedGPUs",
                        "expr": f'sum by ({node}, numa_node, resource) (numa_topology_resource_stranded{{{SEL}, resource=~"nvidia.com/.*"}}) > 0',
                        "for": config["stranded_gpu_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "GPUs stranded on a NUMA node",
                            "description": "{{ $value }} {{ $labels.resource }} free on NUMA node {{ $labels.numa_node }} of "
                            f"{{{{ $labels.{node} }}}} cannot be used: a companion resource (CPUs, memory) is exhausted there.",
                            "dashboard": f"/d/{UIDS['node']}",
                        },
                    },
                    {
                        "alert": "NumaContainerMisaligned",
                        # A container whose only misalignment is a DRA device has its own alert (below).
                        "expr": f"numa_topology_container_aligned{{{SEL}}} == 0 unless on ({node}, pod_uid, container) "
                        f"numa_topology_container_dra_misaligned{{{SEL}}} == 1",
                        "for": config["misaligned_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "A container's exclusive resources span NUMA nodes",
                            "description": "{{ $labels.namespace }}/{{ $labels.pod }} container {{ $labels.container }} on "
                            f"{{{{ $labels.{node} }}}} holds CPUs, memory or devices on more than one NUMA node.",
                            "dashboard": f"/d/{UIDS['node']}",
                        },
                    },
                    {
                        "alert": "NumaContainerDraMisaligned",
                        "expr": f"numa_topology_container_dra_misaligned{{{SEL}}} == 1",
                        "for": config["dra_misaligned_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "A container's DRA device is on another NUMA node than its CPUs",
                            "description": "{{ $labels.namespace }}/{{ $labels.pod }} container {{ $labels.container }} on "
                            f"{{{{ $labels.{node} }}}} holds a DRA device on a NUMA node none of its pinned CPUs, memory or "
                            "devices are on. The Topology Manager does not align DRA devices: constrain the claim "
                            "(a CEL selector or matchAttribute on resource.kubernetes.io/numaNode) or use a device plugin.",
                            "dashboard": f"/d/{UIDS['node']}",
                        },
                    },
                    {
                        "alert": "NumaContainerGpuNicFar",
                        "expr": f'numa_topology_container_gpu_nic_path{{{SEL}, path=~"PHB|NODE|SYS"}}',
                        "for": config["gpu_nic_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "A GPU container's NIC is across a PCIe host bridge or NUMA nodes",
                            "description": "{{ $labels.namespace }}/{{ $labels.pod }} container {{ $labels.container }} on "
                            f"{{{{ $labels.{node} }}}}: its closest GPU ({{{{ $labels.gpu_pci_address }}}}) and NIC "
                            "({{ $labels.nic_pci_address }}) are {{ $labels.path }} apart, so NCCL's default uses no "
                            "GPUDirect RDMA between them. Give it a NIC or VF under its GPU's PCIe switch (PIX or PXB).",
                            "dashboard": f"/d/{UIDS['node']}",
                        },
                    },
                    {
                        "alert": "NumaContainerRemoteMemory",
                        # Containers the audit lists hold pinned CPUs, Static memory or devices: Guaranteed pods.
                        "expr": f"numa_topology_container_remote_memory_ratio{{{SEL}}} > {config['remote_memory_ratio']} "
                        f"and on ({node}, pod_uid, container) numa_topology_container_aligned{{{SEL}}}",
                        "for": config["remote_memory_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "Most of a Guaranteed container's memory is on another NUMA node than its CPUs",
                            "description": "{{ $value | humanizePercentage }} of the memory of {{ $labels.namespace }}/{{ $labels.pod }} "
                            f"container {{{{ $labels.container }}}} on {{{{ $labels.{node} }}}} is on NUMA nodes without its CPUs. "
                            "A large NumaForeign means a cross-NUMA memory placement problem: Memory Manager isn't configured, "
                            "or the pod isn't Guaranteed QoS.",
                            "dashboard": f"/d/{UIDS['node']}",
                        },
                    },
                    {
                        "alert": "NumaContainerPlacementDrift",
                        "expr": f"numa_topology_container_placement_drift{{{SEL}}} == 1",
                        "for": config["drift_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "A container's cgroup does not enforce what the kubelet assigned",
                            "description": "{{ $labels.namespace }}/{{ $labels.pod }} container {{ $labels.container }} on "
                            f"{{{{ $labels.{node} }}}}: the kubelet assigned its {{{{ $labels.resource }}}} to NUMA nodes its cgroup's "
                            "cpuset does not match. Run numa-topology-exporter doctor on the node.",
                            "dashboard": f"/d/{UIDS['node']}",
                        },
                    },
                    {
                        "alert": "NumaExporterStale",
                        "expr": f"(time() - numa_topology_last_refresh_timestamp_seconds{{{SEL}}} > {config['stale_refresh_seconds']}) "
                        f"and numa_topology_last_refresh_timestamp_seconds{{{SEL}}} > 0",
                        "for": config["stale_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "numa-topology-exporter has not refreshed",
                            "description": f"The exporter on {{{{ $labels.{node} }}}} last refreshed {{{{ $value | humanizeDuration }}}} ago.",
                        },
                    },
                    {
                        "alert": "NumaExporterNoSnapshot",
                        "expr": f"numa_topology_last_refresh_timestamp_seconds{{{SEL}}} == 0",
                        "for": config["stale_for"],
                        "labels": {"severity": "critical"},
                        "annotations": {
                            "summary": "numa-topology-exporter has never built a snapshot",
                            "description": f"The exporter on {{{{ $labels.{node} }}}} has not been able to read the host since it "
                            "started (see numa_topology_source_up and its log): it publishes nothing.",
                        },
                    },
                    {
                        "alert": "NumaExporterDown",
                        "expr": f"up{{{SEL}}} == 0",
                        "for": config["down_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "numa-topology-exporter cannot be scraped",
                            "description": f"Prometheus cannot scrape the exporter on {{{{ $labels.{node} }}}}{target}.",
                        },
                    },
                    {
                        "alert": "NumaExporterAbsent",
                        "expr": f"absent(up{{{SEL}}})",
                        "for": config["absent_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "No numa-topology-exporter target is scraped",
                            "description": "Prometheus has no target matching the exporter's selector: the DaemonSet is "
                            "gone, or the ServiceMonitor/PodMonitor is not selected (kube-prometheus-stack selects on "
                            "the release label).",
                        },
                    },
                    {
                        "alert": "NumaSourceDown",
                        "expr": f"numa_topology_source_up{{{SEL}}} == 0",
                        "for": config["source_down_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "A source of numa-topology-exporter cannot be read",
                            "description": f"{{{{ $labels.source }}}} on {{{{ $labels.{node} }}}} fails to read or verify; its last good "
                            "numbers are still published. See numa_topology_source_errors_total for the reason.",
                        },
                    },
                    {
                        "alert": "NumaKubeletConfigUnknown",
                        "expr": f'numa_topology_kubelet_config_info{{{SEL}, topology_manager_policy="unknown"}} == 1',
                        "for": config["source_down_for"],
                        "labels": {"severity": "critical"},
                        "annotations": {
                            "summary": "The kubelet's configuration is unknown to numa-topology-exporter",
                            "description": f"The exporter on {{{{ $labels.{node} }}}} cannot read the configuration its kubelet "
                            "runs with (not found, or contradicted by the kubelet's state files): it publishes no "
                            "Topology Manager policy, so NUMA-aware schedulers do not filter this node. Set the chart's "
                            "exporter.kubeletConfig (numa-topology-exporter doctor says where it looked).",
                        },
                    },
                    {
                        "alert": "NumaNrtWritesFailing",
                        "expr": f'sum by (instance) (increase(numa_topology_nrt_writes_total{{{SEL}, operation!="requeue", result!="success"}}[15m])) > 0 '
                        f"unless on (instance) (time() - numa_topology_nrt_last_success_timestamp_seconds{{{SEL}}}) <= {config['nrt_failing_seconds']}",
                        "for": config["nrt_failing_for"],
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": "NodeResourceTopology writes are failing",
                            "description": "The exporter at {{ $labels.instance }} has not written its NodeResourceTopology for "
                            "over 15 minutes and its writes fail: NUMA-aware schedulers see stale data.",
                        },
                    },
                ],
            }
        ]
    }
