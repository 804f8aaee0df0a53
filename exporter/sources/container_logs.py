"""Container names by runtime ID, from the kubelet's `/var/log/containers` links
(`<pod>_<namespace>_<container>-<id>.log`, `--path.container-logs`): what names a container's cgroup when
no API server is reachable. Pod names and namespaces cannot hold `_`; the ID is the last `-` field.
"""

from __future__ import annotations

import os
import re

from exporter.errors import SourceMissing, SourceReadError
from exporter.model import LoggedContainer
from exporter.paths import HostPaths

SOURCE = "container_logs"
LINK = re.compile(r"^([^_]+)_([^_]+)_(.+)-([0-9a-f]{64})\.log$")


def read_container_logs(paths: HostPaths) -> tuple[LoggedContainer, ...]:
    try:
        names = os.listdir(paths.container_logs)
    except FileNotFoundError:
        raise SourceMissing(SOURCE, f"{paths.container_logs} does not exist") from None
    except OSError as exc:
        raise SourceReadError(SOURCE, f"cannot list {paths.container_logs}: {exc.strerror}") from None
    found = (parse_container_log_name(name) for name in sorted(names))
    return tuple(item for item in found if item is not None)


def parse_container_log_name(name: str) -> LoggedContainer | None:
    match = LINK.match(name)
    if match is None:
        return None
    pod, namespace, container, container_id = match.groups()
    return LoggedContainer(namespace=namespace, pod=pod, container=container, container_id=container_id)
