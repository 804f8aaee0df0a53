"""Container names by runtime ID, from the kubelet's `/var/log/containers` links
(`<pod>_<namespace>_<container>-<id>.log`, `--path.container-logs`): what names a container's cgroup when
no API server is reachable. Pod names and namespaces cannot hold `_`; the ID is the last `-` field.
"""

from __future__ import annotations

import re

from exporter.model import LoggedContainer
from exporter.paths import HostPaths
from exporter.sources.files import list_source_dir

SOURCE = "container_logs"
LINK = re.compile(r"^([^_]+)_([^_]+)_(.+)-([0-9a-f]{64})\.log$")


def read_container_logs(paths: HostPaths) -> tuple[LoggedContainer, ...]:
    names = list_source_dir(paths.container_logs, source=SOURCE)
    found = (parse_container_log_name(name) for name in sorted(names))
    return tuple(item for item in found if item is not None)


def parse_container_log_name(name: str) -> LoggedContainer | None:
    match = LINK.match(name)
    if match is None:
        return None
    pod, namespace, container, container_id = match.groups()
    return LoggedContainer(namespace=namespace, pod=pod, container=container, container_id=container_id)
