"""Observed placement: where containers really run and where their memory is (the cgroup tree), sampled
apart from the refresh, beside what the snapshot says the kubelet meant."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable

from exporter.errors import SourceError, SourceMissing
from exporter.kubelet.placement import PlacementView, observe, remote_bytes_by_numa
from exporter.model import SourceStatus
from exporter.paths import HostPaths
from exporter.snapshot import Snapshot
from exporter.sources import cgroups, container_logs

log = logging.getLogger(__name__)


class PlacementSampler:
    """Samples observed placement (the cgroup tree) apart from the refresh, with state of its own (the
    refresh runs in another thread): its last good sample and its errors."""

    def __init__(self, paths: HostPaths, *, all_containers: bool = False, clock: Callable[[], float] = time.time):
        self.paths = paths
        self.all_containers = all_containers
        self._clock = clock
        self._last: PlacementView | None = None
        self._status: SourceStatus | None = None
        self.errors_total: Counter[tuple[str, str]] = Counter()
        self.samples = 0

    def latest(self) -> PlacementView | None:
        return self._last

    def sample(self, snapshot: Snapshot) -> PlacementView:
        """One sample of where containers run and where their memory is, beside what the snapshot says the
        kubelet meant. A tree that cannot be read keeps the last good sample's containers, marked down."""
        started = time.perf_counter()
        self.samples += 1
        config = snapshot.kubelet.config
        previous = self._last
        try:
            logs = container_logs.read_container_logs(self.paths)
        except SourceError:
            logs = ()  # names then come from the API, or are the IDs
        named = {item.container_id for item in logs}
        named.update(ident for pod in snapshot.kubelet.pods or () for ident, _ in pod.container_ids)
        try:
            reading = cgroups.read_cgroups(self.paths.cgroup, procfs=self.paths.procfs, driver=config.cgroup_driver,
                                           cgroup_root=config.cgroup_root, named=frozenset(named))  # fmt: skip
        except SourceMissing as exc:
            status = SourceStatus(source=cgroups.SOURCE, up=False, available=False, reason=exc.reason,
                                  message=exc.message)  # fmt: skip
            self._log(status)
            self._last = PlacementView(status=status, all_containers=self.all_containers, taken_at=self._clock(),
                                       errors_total=dict(self.errors_total))  # fmt: skip
            return self._last
        except SourceError as exc:
            self.errors_total[(exc.source, exc.reason)] += 1
            status = SourceStatus(source=cgroups.SOURCE, up=False, reason=exc.reason, message=exc.message)
            self._log(status)
            self._last = dataclasses.replace(
                previous or PlacementView(status=status, all_containers=self.all_containers),
                status=status,
                errors_total=dict(self.errors_total),
            )
            return self._last
        containers = observe(snapshot.topology, snapshot.kubelet, snapshot.accounting.containers, reading, logs,
                             all_containers=self.all_containers)  # fmt: skip
        status = SourceStatus(source=cgroups.SOURCE, up=True)
        self._log(status)
        self._last = PlacementView(
            status=status,
            containers=containers,
            all_containers=self.all_containers,
            vanished=reading.vanished,
            taken_at=self._clock(),
            duration_seconds=time.perf_counter() - started,
            remote_bytes_by_numa=remote_bytes_by_numa(containers),
            errors_total=dict(self.errors_total),
        )
        return self._last

    def _log(self, status: SourceStatus) -> None:
        if status == self._status:
            return
        self._status = status
        if status.up:
            log.info("%s: read", status.source)
        elif status.available:
            log.warning("%s: %s (%s); keeping the last good sample", status.source, status.message, status.reason)
        else:
            log.info("%s: not present (%s); no observed placement", status.source, status.message)
