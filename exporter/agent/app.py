"""`serve`: the long-running agent. Wires the trigger sources, the refresher and the HTTP server.

Long-lived tasks are named; when one of them ends (it should never), the process stops non-zero and
Kubernetes restarts it. SIGTERM and SIGINT stop it cleanly within a second.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.agent.http import Endpoints, HttpServer
from exporter.agent.refresher import Refresher
from exporter.agent.threads import in_daemon_thread
from exporter.agent.triggers import DirectoryWatcher, Trigger, WatchSpec, attach_watcher, resync, udev_monitor
from exporter.errors import (
    ApiError,
    ApiForbidden,
    ConfigError,
    SourceMissing,
    SourcePermissionError,
    SourceUnavailable,
)
from exporter.fingerprint import INFORMER_DEDICATED, METHOD_WITH_EXCLUSIVE_RESOURCES
from exporter.model import DraApiReading, KubeletConfig, PodRef
from exporter.observed import PlacementSampler
from exporter.paths import HostPaths
from exporter.snapshot import RESOURCE_SLICES, SnapshotBuilder
from exporter.sources import kubelet_config
from exporter.sources.dra_api import slice_devices
from exporter.views.exposition import CachedExposition, registry_for
from exporter.views.metrics import NrtStats, SnapshotCollector

log = logging.getLogger(__name__)
STANDALONE = (
    "no API server configured (not in a cluster, no --kubeconfig): running standalone, "
    "NodeResourceTopology not published, pod names from the pod log directory"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    host: str | None
    port: int
    resync_interval_seconds: float = 60.0
    debounce_seconds: float = 0.1
    watch_udev: bool | None = None
    publish_nrt: bool = True
    read_dra: bool = True
    placement_interval_seconds: float | None = 15.0  # None: no placement sampling
    placement_all_containers: bool = False
    kubeconfig: Path | None = None
    node_name: str = "localhost"
    fingerprint_method: str = METHOD_WITH_EXCLUSIVE_RESOURCES
    scheduler_informer_mode: str = INFORMER_DEDICATED  # the consumer's cache.informerMode
    nrt_min_interval_seconds: float = 0.0
    scheduler_resync_seconds: float = 0.0  # the consumer's cacheResyncPeriodSeconds (0: its cache is off)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    kubelet_configz: bool = False  # the kubelet's configuration from its /configz (nodes/proxy), not its files


def tls_context(cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2 or newer) from a certificate and key, or None for plain HTTP."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise ConfigError("--web.tls-cert-file and --web.tls-key-file go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert_file} / key {key_file}: {exc}") from None
    return context


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """`:9709`, `0.0.0.0:9709`, `127.0.0.1:0`, `[::1]:9709` -> (host or None for every interface, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {text!r} is not HOST:PORT")
    host = host.strip("[]")
    return (host or None), int(port)


def watch_specs(paths: HostPaths) -> list[WatchSpec]:
    kubelet_names = {paths.cpu_manager_state.name, paths.memory_manager_state.name}
    specs = []
    config = paths.kubelet_config
    if config.parent == paths.kubelet_dir:
        kubelet_names.add(config.name)
    else:
        specs.append(WatchSpec(directory=config.parent, names=frozenset({config.name}), reason="kubelet-config"))
    specs.append(WatchSpec(directory=paths.kubelet_dir, names=frozenset(kubelet_names), reason="kubelet-state"))
    specs.append(
        WatchSpec(
            # The checkpoint, and every plugin socket: a plugin registering or going away changes what the
            # kubelet can hand out (podresources) without touching the checkpoint.
            directory=paths.device_plugins_dir,
            names=None,
            reason="device-checkpoint",
        )
    )
    specs.append(WatchSpec(directory=paths.pod_logs, names=None, reason="pods"))
    return specs


async def serve(
    builder: SnapshotBuilder,
    options: ServeOptions,
    *,
    on_listening: Callable[[str], None] = print,
    nrt: NrtStats | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    trigger = Trigger()
    nrt = nrt or NrtStats()
    refresher = Refresher(builder, trigger, debounce_seconds=options.debounce_seconds,
                          stall_seconds=max(60.0, 3 * options.resync_interval_seconds))  # fmt: skip
    sampler = PlacementSampler(builder.paths, all_containers=options.placement_all_containers)
    collector = SnapshotCollector(
        refresher.current,
        refresh=refresher.stats,
        nrt=nrt,
        placement=sampler.latest,
        failure=lambda: refresher.failure,
        errors=lambda: builder.errors_total,
    )
    registry = registry_for(collector)
    # What the exposition shows changes only with a refresh (counted whether it succeeded or not), a
    # placement sample or an NRT write. Not id(snapshot): a new snapshot may reuse the address of the old one.
    cache = CachedExposition(
        registry,
        lambda: (refresher.refreshes, refresher.stats.count, nrt.version, sampler.samples, str(refresher.failure)),
        process=True,
    )
    server = HttpServer(Endpoints(exposition=cache.body, current=refresher.current, healthy=lambda: refresher.healthy,
                                  after_scrape=cache.refresh_process))  # fmt: skip
    context = tls_context(options.tls_cert_file, options.tls_key_file)
    try:
        await server.start(options.host, options.port, ssl_context=context)
    except OSError as exc:
        await server.close()
        builder.close()
        where = f"{options.host or ''}:{options.port}"
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    scheme = "https" if context is not None else "http"
    for address in server.addresses:
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in host else host
        on_listening(f"numa-topology-exporter: serving metrics on {scheme}://{shown}:{port}/metrics")

    watcher = DirectoryWatcher(watch_specs(builder.paths), trigger)
    attach_watcher(loop, watcher)
    udev = (
        udev_monitor(trigger)
        if (options.watch_udev if options.watch_udev is not None else builder.paths.is_real_sysfs)
        else None
    )
    if udev is not None:
        loop.add_reader(udev[0], udev[1])

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = {
        asyncio.create_task(refresher.run(), name="refresher"),
        asyncio.create_task(resync(trigger, interval_seconds=options.resync_interval_seconds), name="resync"),
    }
    if options.placement_interval_seconds is not None:
        tasks.add(asyncio.create_task(sample_placement(sampler, refresher, options.placement_interval_seconds),
                                      name="placement"))  # fmt: skip
    watchers = _start_publishing(options, builder=builder, refresher=refresher, trigger=trigger, nrt=nrt, tasks=tasks)
    stopper = asyncio.create_task(stop.wait(), name="signals")
    done, _pending = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in done - {stopper}:
        error = task.exception() if not task.cancelled() else None
        log.error("task %s stopped unexpectedly: %r; exiting", task.get_name(), error)
        code = 1
    for api_watcher in watchers:
        api_watcher.stop()
    for task in (*tasks, stopper):
        task.cancel()
    await asyncio.gather(*tasks, stopper, return_exceptions=True)
    loop.remove_reader(watcher.fileno())
    watcher.close()
    if udev is not None:
        loop.remove_reader(udev[0])
    await server.close()
    if refresher.building:
        # A read still runs in its thread (NVML, a slow file): exiting does not wait for it, and closing the
        # builder's handles under it could crash it; the process's exit releases them.
        log.info("stopping with a refresh still reading; not waiting for it")
    else:
        builder.close()
    log.info("stopped")
    return code


async def sample_placement(sampler: PlacementSampler, refresher: Refresher, interval_seconds: float) -> None:
    """Observed placement every `interval_seconds`, apart from the refresh (memory moves all the time while
    nothing the refresh watches changes), against the newest snapshot; off the event loop."""
    while True:
        snapshot = refresher.current()
        if snapshot is not None:
            await in_daemon_thread(functools.partial(sampler.sample, snapshot), name="placement")
        await asyncio.sleep(interval_seconds if snapshot is not None else min(interval_seconds, 0.5))


def _warning_counter(nrt: NrtStats, loop: asyncio.AbstractEventLoop) -> Any:
    """The API server's Warning headers (seen on the API threads): each counted on the event loop, each
    distinct text logged once."""
    seen: set[str] = set()

    def count(text: str) -> None:
        nrt.warning()
        if text not in seen and len(seen) < 100:
            seen.add(text)
            log.warning("the API server warns: %s", text)

    return lambda text: loop.call_soon_threadsafe(count, text)


def api_server_configured(kubeconfig: Path | None) -> bool:
    """A kubeconfig was given, or this runs in a pod (the service account's environment is there)."""
    return kubeconfig is not None or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _start_publishing(
    options: ServeOptions,
    *,
    builder: SnapshotBuilder,
    refresher: Refresher,
    trigger: Trigger,
    nrt: NrtStats,
    tasks: set[asyncio.Task[None]],
) -> list[Any]:
    """NRT writer and pod watch when an API server is reachable; standalone (said once) otherwise.

    The publisher, and with it the `kubernetes` client (about 36 MiB once imported), is imported only
    here, so a standalone agent does not carry it.
    """
    if not options.publish_nrt:
        log.info("NodeResourceTopology publishing is off (--no-nrt)")
        return []
    if not api_server_configured(options.kubeconfig):
        log.warning(STANDALONE)
        return []
    from exporter.agent.ownwatch import NrtWatcher  # noqa: PLC0415
    from exporter.agent.pods import ClaimFetcher, PodWatcher, SliceWatcher  # noqa: PLC0415
    from exporter.agent.writer import REQUEUE_MARGIN_SECONDS, NrtWriter  # noqa: PLC0415
    from exporter.kubeapi import KubeApi, client_from  # noqa: PLC0415 - see the docstring

    client = client_from(options.kubeconfig)
    if client is None:
        log.warning(STANDALONE)
        return []
    api = KubeApi(client, on_warning=_warning_counter(nrt, asyncio.get_running_loop()))

    def finished_pods() -> tuple[PodRef, ...]:
        return watcher.finished() if watcher.synced else ()

    writer = NrtWriter(
        api,
        node_name=options.node_name,
        stats=nrt,
        method=options.fingerprint_method,
        min_interval_seconds=options.nrt_min_interval_seconds,
        requeue_after_seconds=options.scheduler_resync_seconds + REQUEUE_MARGIN_SECONDS
        if options.scheduler_resync_seconds > 0
        else 0.0,
        finished_pods=finished_pods if options.scheduler_informer_mode == INFORMER_DEDICATED else None,
    )
    refresher.add_listener(writer.on_snapshot)
    tasks.add(asyncio.create_task(writer.run(), name="nrt-writer"))
    if options.scheduler_resync_seconds > 0:
        tasks.add(asyncio.create_task(writer.run_requeues(), name="nrt-requeue"))
    NrtWatcher(api, node_name=options.node_name, observer=writer.observe).start(asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    claims = ClaimFetcher(api, on_change=lambda: trigger.fire("resourceclaims")) if options.read_dra else None

    known: set[str] = set()

    def pods_changed() -> None:
        pods = watcher.pods()
        if claims is not None:
            claims.want(pods)
        # A pod newly bound here is named in the next write at once, not after the debounce: until our object
        # names it, the scheduler's cache may resync from it and drop that pod's reservation (docs/product.md).
        uids = {pod.uid for pod in pods}
        trigger.fire("pods", urgent=bool(uids - known))
        known.clear()
        known.update(uids)

    if options.kubelet_configz:
        builder.use_config_reader(configz_reader(api, node_name=options.node_name))
    watcher = PodWatcher(api, node_name=options.node_name, on_change=pods_changed)
    fallback = builder.pods_reader
    builder.use_pods_reader(lambda: watcher.pods() if watcher.synced else fallback())
    watcher.start(loop)
    stoppable: list[Any] = [watcher]
    if claims is not None:
        slices = SliceWatcher(api, node_name=options.node_name, on_change=lambda: trigger.fire("resourceslices"))
        builder.use_dra_reader(lambda: dra_reading(slices, claims, node_name=options.node_name))
        slices.start(loop)
        claims.start(loop)
        stoppable += [slices, claims]
    return stoppable


CONFIGZ_TTL_SECONDS = 60.0  # the kubelet's configuration changes only when it restarts


def configz_reader(
    api: Any, *, node_name: str, ttl: float = CONFIGZ_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
) -> Callable[[], KubeletConfig]:
    """The kubelet's effective configuration from its /configz through the API server, read at most once a
    minute (one GET; a refresh in between reuses it). Refusals and failures are the source's errors."""
    cached: list[tuple[float, KubeletConfig]] = []

    def read() -> KubeletConfig:
        if cached and clock() - cached[0][0] < ttl:
            return cached[0][1]
        try:
            document = api.kubelet_configz(node_name)
        except ApiForbidden as exc:
            raise SourcePermissionError(
                kubelet_config.SOURCE,
                f"/configz through the API server refused ({exc}): grant get on nodes/proxy "
                "(the chart: exporter.kubeletConfig.configz)",
            ) from None
        except ApiError as exc:
            raise SourceUnavailable(kubelet_config.SOURCE, f"/configz through the API server: {exc}") from None
        config = kubelet_config.from_configz(document)
        cached[:] = [(clock(), config)]
        return config

    return read


def dra_reading(slices: Any, claims: Any, *, node_name: str) -> DraApiReading:
    """This node's slices and its pods' claims; unavailable until the slices are listed once."""
    if not slices.served:
        raise SourceMissing(RESOURCE_SLICES, "the API server does not serve resource.k8s.io/v1 resourceslices")
    if slices.error is not None:
        raise SourceUnavailable(RESOURCE_SLICES, f"cannot list this node's ResourceSlices: {slices.error}")
    if not slices.synced:
        raise SourceMissing(RESOURCE_SLICES, "this node's ResourceSlices are not listed yet")
    return DraApiReading(devices=slice_devices(slices.values(), node_name=node_name), claims=claims.claims())
