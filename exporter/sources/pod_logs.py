"""Pods on this node from the kubelet's pod log directories: `<pod-logs>/<namespace>_<name>_<uid>`.

What the agent uses when no API server is reachable: names for the alignment audit, and the UIDs that
tell stale kubelet entries apart. Namespaces and pod names cannot hold `_`, so the split is unambiguous.
"""

from __future__ import annotations

from exporter.model import PodRef
from exporter.paths import HostPaths
from exporter.sources.files import list_source_dir

SOURCE = "pods"


def read_pods_from_logs(paths: HostPaths) -> tuple[PodRef, ...]:
    names = list_source_dir(paths.pod_logs, source=SOURCE)
    pods = (parse_pod_log_dir(name) for name in names)
    return tuple(sorted((pod for pod in pods if pod is not None), key=lambda pod: (pod.namespace, pod.name)))


def parse_pod_log_dir(name: str) -> PodRef | None:
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    namespace, pod, uid = parts
    return PodRef(uid=uid, namespace=namespace, name=pod)
