"""The command line: `snapshot`, `doctor` and `serve` over one set of common flags."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from exporter import DEFAULT_PORT, __version__
from exporter.errors import ConfigError, ExporterError
from exporter.fingerprint import INFORMER_DEDICATED, INFORMER_MODES, METHOD_WITH_EXCLUSIVE_RESOURCES, METHODS
from exporter.kubelet.profiles import load_profiles
from exporter.observed import PlacementSampler
from exporter.paths import (
    DEFAULT_CGROUP,
    DEFAULT_CONTAINER_LOGS,
    DEFAULT_KUBELET_DIR,
    DEFAULT_POD_LOGS,
    DEFAULT_PROCFS,
    DEFAULT_SYSFS,
    HostPaths,
)
from exporter.snapshot import SnapshotBuilder
from exporter.views.doctor import diagnose
from exporter.views.render import render_json, render_snapshot

log = logging.getLogger("exporter")
QUIET_LIBRARIES = ("hpack", "h2", "h11", "urllib3", "kubernetes")

SNAPSHOT_FORMATS = ("table", "json", "nrt", "metrics")
# scheduler-plugins' example configuration and the NUMA Resources Operator set cacheResyncPeriodSeconds to 5.
DEFAULT_SCHEDULER_RESYNC_SECONDS = 5.0
CANNOT_TELL = 3  # exit status of fit and explain when they cannot answer (the API server, the kubeconfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numa-topology-exporter",
        description="Makes a node's NUMA topology visible (Prometheus) and schedulable (NodeResourceTopology).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    snapshot = commands.add_parser("snapshot", help="discover and account once, and print the result")
    snapshot.add_argument("--format", choices=SNAPSHOT_FORMATS, default="table", help="output format")
    snapshot.add_argument(
        "--nrt-fingerprint-method",
        choices=METHODS,
        default=METHOD_WITH_EXCLUSIVE_RESOURCES,
        help="which pods the nodeTopologyPodsFingerprint covers (--format nrt)",
    )
    _add_common(snapshot)
    doctor = commands.add_parser("doctor", help="check the kubelet configuration against what NUMA alignment needs")
    _add_common(doctor)
    verify = commands.add_parser(
        "verify",
        help="inside a container: check its own CPUs, memory, GPUs and NICs sit on one NUMA node",
        description="Exit status: 0 aligned, 1 not aligned, 2 could not verify (or a usage error).",
    )
    verify.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    verify.add_argument("--pid", default="self", help="the process to check (default: this one)")
    verify.add_argument("--path.sysfs", dest="sysfs", type=Path, default=DEFAULT_SYSFS, help="sysfs mount point")
    verify.add_argument("--path.procfs", dest="procfs", type=Path, default=DEFAULT_PROCFS, help="procfs mount point")
    verify.add_argument("--no-nvml", dest="nvml", action="store_false", help="do not query NVIDIA GPUs through NVML")
    verify.add_argument("--log-level", default="error", choices=("debug", "info", "warning", "error"))
    fit = commands.add_parser(
        "fit",
        help="cluster: which nodes take a pod of this shape, on which NUMA node, and why not",
        description="Decided from the NodeResourceTopology objects and Nodes as the NUMA-aware scheduler's "
        "NodeResourceTopologyMatch filter decides. Exit status: 0 it fits somewhere, 1 nowhere, 2 usage error.",
    )
    fit.add_argument("shape", nargs="*", help="one per container: cpu=8,memory=16Gi,nvidia.com/gpu=2 (Guaranteed)")
    fit.add_argument("--pod", type=Path, default=None, help="a Pod (or workload) manifest instead of a shape")
    fit.add_argument(
        "--summary",
        action="store_true",
        help="fleet plan: how many more pods of each shape or profile fit aligned, stranded capacity, what to free",
    )
    fit.add_argument(
        "--profiles", type=Path, default=None, help="YAML profiles file: the fleet plan for each (implies --summary)"
    )
    fit.add_argument("-l", "--selector", default=None, help="only nodes matching this label selector")
    fit.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    _add_cluster(fit)
    explain = commands.add_parser(
        "explain",
        help="cluster: why a pod is Pending or was rejected (TopologyAffinityError), and where it fits now",
    )
    explain.add_argument("pod", metavar="NAMESPACE/POD", help="the pod (NAMESPACE/POD, or POD with -n)")
    explain.add_argument("-n", "--namespace", default="default", help="namespace when POD has none")
    explain.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    _add_cluster(explain)
    serve = commands.add_parser("serve", help="run the agent: metrics on HTTP, refreshed on every change")
    serve.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        help=f"HOST:PORT to serve on (default :{DEFAULT_PORT}, every interface; port 0 picks a free one)",
    )
    serve.add_argument(
        "--web.tls-cert-file",
        dest="tls_cert_file",
        type=Path,
        default=None,
        help="serve HTTPS with this PEM certificate (with --web.tls-key-file)",
    )
    serve.add_argument(
        "--web.tls-key-file", dest="tls_key_file", type=Path, default=None, help="the certificate's PEM private key"
    )
    serve.add_argument(
        "--resync-interval",
        type=_seconds(0.05, 86400),
        default=60.0,
        help="seconds between full refreshes (0.05 to 86400; below 1 s only for tests)",
    )
    serve.add_argument(
        "--placement-interval",
        type=_seconds(0.1, 3600),
        default=15.0,
        help="seconds between observed-placement samples (default 15; memory moves all the time)",
    )
    serve.add_argument(
        "--debounce", type=_seconds(0, 60), default=0.1, help="seconds to merge a burst of changes (0 to 60)"
    )
    nrt = serve.add_argument_group("NodeResourceTopology publishing")
    nrt.add_argument("--no-nrt", dest="nrt", action="store_false", help="do not publish NodeResourceTopology")
    nrt.add_argument(
        "--no-dra",
        dest="dra",
        action="store_false",
        help="do not watch this node's ResourceSlices nor read its pods' ResourceClaims (DRA)",
    )
    nrt.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None,
        help="kubeconfig to reach the API server (default: $KUBECONFIG, else the in-cluster service account)",
    )
    nrt.add_argument(
        "--nrt-fingerprint-method",
        choices=METHODS,
        default=METHOD_WITH_EXCLUSIVE_RESOURCES,
        help="which pods the nodeTopologyPodsFingerprint covers",
    )
    nrt.add_argument(
        "--nrt-scheduler-informer-mode",
        choices=INFORMER_MODES,
        default=INFORMER_DEDICATED,
        help="the NUMA-aware scheduler's cache.informerMode (scheduler-plugins' default: Dedicated, which also "
        "counts finished and rejected pods in its fingerprint; Shared counts Running pods)",
    )
    nrt.add_argument(
        "--kubelet-configz",
        action="store_true",
        help="read the kubelet's effective configuration from its /configz through the API server instead of "
        "its files (needs get on nodes/proxy, which reaches every kubelet API: off by default)",
    )
    nrt.add_argument(
        "--nrt-scheduler-resync-seconds",
        type=_seconds(0, 3600),
        default=DEFAULT_SCHEDULER_RESYNC_SECONDS,
        help="the NUMA-aware scheduler's cacheResyncPeriodSeconds: after each write, once its cache has resynced "
        "from it, the agent updates its object once more so that the scheduler retries the pods it turned away "
        f"(0: the scheduler's cache is off, every write is that event; default {DEFAULT_SCHEDULER_RESYNC_SECONDS:g})",
    )
    nrt.add_argument(
        "--nrt-min-interval",
        type=_seconds(0, 3600),
        default=0.0,
        help="seconds between NRT writes at least; closer changes are coalesced (default 0: write every change)",
    )
    _add_common(serve)
    return parser


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster access (as kubectl)")
    group.add_argument(
        "--kubeconfig", type=Path, default=None, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    group.add_argument("--context", default=None, help="the kubeconfig context to use")
    group.add_argument(
        "--numa-scheduler",
        dest="numa_schedulers",
        action="append",
        default=None,
        help="a schedulerName whose profile runs NodeResourceTopologyMatch (repeatable; default topo-aware-scheduler)",
    )
    group.add_argument("--log-level", default="error", choices=("debug", "info", "warning", "error"))


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds from `low` to `high`, else a one-line usage error (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range ({low:g} to {high:g} seconds)")
        return value

    return parse


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("host paths and identity")
    group.add_argument("--path.sysfs", dest="sysfs", type=Path, default=DEFAULT_SYSFS, help="sysfs mount point")
    group.add_argument("--path.procfs", dest="procfs", type=Path, default=DEFAULT_PROCFS, help="procfs mount point")
    group.add_argument(
        "--path.kubelet", dest="kubelet_dir", type=Path, default=DEFAULT_KUBELET_DIR, help="kubelet root directory"
    )
    group.add_argument(
        "--path.pod-logs", dest="pod_logs", type=Path, default=DEFAULT_POD_LOGS, help="kubelet pod log directory"
    )
    group.add_argument(
        "--kubelet-config",
        dest="kubelet_config",
        type=Path,
        default=None,
        help="kubelet configuration file, the kubelet's --config (default: <path.kubelet>/config.yaml)",
    )
    group.add_argument(
        "--kubelet-config-dir",
        dest="kubelet_config_dir",
        type=Path,
        default=None,
        help="the kubelet's --config-dir: its *.conf drop-ins are merged over the file as the kubelet merges them",
    )
    group.add_argument(
        "--host-path-map",
        dest="host_path_map",
        type=_host_path_map,
        action="append",
        default=[],
        metavar="HOST=LOCAL",
        help="where a host directory is mounted here (repeatable; the chart sets one per mount): the kubelet's "
        "--config and --config-dir, read from its command line, are host paths (default: none; on the host itself, "
        "with --path.procfs /proc, host paths are ours)",
    )
    group.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="Kubernetes node name (default: $NODE_NAME, then the hostname)",
    )
    group.add_argument(
        "--path.podresources-socket",
        dest="podresources_socket",
        type=Path,
        default=None,
        help="the kubelet's podresources gRPC socket (default: <path.kubelet>/pod-resources/kubelet.sock)",
    )
    group.add_argument(
        "--no-podresources",
        dest="podresources",
        action="store_false",
        help="do not read the kubelet's podresources API (state files only)",
    )
    group.add_argument(
        "--no-state-files",
        dest="state_files",
        action="store_false",
        help="do not read the kubelet's state files: account from its podresources API alone, so that only "
        '<path.kubelet>/pod-resources needs mounting (what this loses: docs/product.md, "Podresources only")',
    )
    group.add_argument(
        "--path.cgroup", dest="cgroup", type=Path, default=DEFAULT_CGROUP, help="cgroup mount (observed placement)"
    )
    group.add_argument(
        "--path.container-logs",
        dest="container_logs",
        type=Path,
        default=DEFAULT_CONTAINER_LOGS,
        help="the kubelet's container log links (container names without an API server)",
    )
    group.add_argument(
        "--no-placement",
        dest="placement",
        action="store_false",
        help="do not sample where containers run and where their memory is (the cgroup tree)",
    )
    group.add_argument(
        "--placement-all-containers",
        action="store_true",
        help="sample every container, not only those holding exclusive resources (more series)",
    )
    group.add_argument("--profiles", type=Path, default=None, help="YAML file of pod profiles for fit and stranded")
    group.add_argument("--no-nvml", dest="nvml", action="store_false", help="do not query NVIDIA GPUs through NVML")
    group.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))


def host_paths(args: argparse.Namespace) -> HostPaths:
    return HostPaths(
        sysfs=args.sysfs,
        procfs=args.procfs,
        kubelet_dir=args.kubelet_dir,
        pod_logs=args.pod_logs,
        kubelet_config_file=args.kubelet_config,
        kubelet_config_dir=args.kubelet_config_dir,
        podresources_socket_file=args.podresources_socket,
        cgroup=args.cgroup,
        container_logs=args.container_logs,
        host_path_map=tuple(args.host_path_map),
    )


def _host_path_map(text: str) -> tuple[str, Path]:
    host, sep, local = text.partition("=")
    if not sep or not host.startswith("/") or not local:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST=LOCAL with an absolute host path")
    return host, Path(local)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "podresources", True) and not getattr(args, "state_files", True):
        parser.error("--no-podresources and --no-state-files leave nothing that says what the kubelet holds")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # --log-level is the exporter's own: the libraries under it (HTTP/2 and HPACK framing of every podresources
    # call, urllib3's connection pool) would log each frame and header at debug, slowing every refresh.
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        if args.command == "snapshot":
            return _snapshot(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "fit":
            return _fit(args)
        if args.command == "explain":
            return _explain(args)
    except ExporterError as exc:
        print(f"numa-topology-exporter: {exc}", file=sys.stderr)
        # fit and explain answer yes (0) or no (1), verify aligned (0) or not (1): what keeps them from answering
        # is apart (fit and explain 3, after the usage errors' 2; verify 2, "could not verify").
        if args.command == "verify":
            return 2
        return CANNOT_TELL if args.command in ("fit", "explain") else 1
    return 2


def builder(args: argparse.Namespace) -> SnapshotBuilder:
    profiles = load_profiles(args.profiles) if args.profiles is not None else None
    return SnapshotBuilder(
        host_paths(args),
        profiles=profiles,
        use_nvml=args.nvml,
        use_podresources=args.podresources,
        use_state_files=args.state_files,
    )


def _snapshot(args: argparse.Namespace) -> int:
    snapshot = builder(args).build()
    sampler = PlacementSampler(host_paths(args), all_containers=args.placement_all_containers)
    placement = sampler.sample(snapshot) if args.placement else None
    # The daemon's modules (its HTTP server, prometheus_client) are imported only by the commands that use them:
    # a one-shot `snapshot` or `doctor` (often run through `kubectl exec`) starts in a fraction of the time.
    if args.format == "nrt":
        from exporter.views.nrt import build_nrt  # noqa: PLC0415

        obj = build_nrt(snapshot, node_name=args.node_name, node_uid=None, method=args.nrt_fingerprint_method)
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False))
    elif args.format == "metrics":
        from exporter.views.exposition import render_exposition  # noqa: PLC0415
        from exporter.views.metrics import RefreshStats  # noqa: PLC0415

        stats = RefreshStats()
        stats.observe(snapshot.duration_seconds)
        sys.stdout.write(render_exposition(snapshot, refresh=stats, placement=placement).decode())
    elif args.format == "json":
        sys.stdout.write(render_json(snapshot))
    else:
        sys.stdout.write(render_snapshot(snapshot, placement=placement))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - see _snapshot

    from exporter.agent.app import ServeOptions, parse_listen_address, serve  # noqa: PLC0415 - see _snapshot

    try:
        host, port = parse_listen_address(args.listen_address)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    options = ServeOptions(
        host=host,
        port=port,
        resync_interval_seconds=args.resync_interval,
        debounce_seconds=args.debounce,
        publish_nrt=args.nrt,
        read_dra=args.dra,
        placement_interval_seconds=args.placement_interval if args.placement else None,
        placement_all_containers=args.placement_all_containers,
        kubeconfig=args.kubeconfig,
        node_name=args.node_name,
        fingerprint_method=args.nrt_fingerprint_method,
        scheduler_informer_mode=args.nrt_scheduler_informer_mode,
        nrt_min_interval_seconds=args.nrt_min_interval,
        scheduler_resync_seconds=args.nrt_scheduler_resync_seconds,
        kubelet_configz=args.kubelet_configz,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
    )
    return asyncio.run(serve(builder(args), options, on_listening=lambda line: print(line, flush=True)))


def _verify(args: argparse.Namespace) -> int:
    from exporter.views.verify import verify  # noqa: PLC0415 - see _snapshot

    try:
        verdict = verify(HostPaths(sysfs=args.sysfs, procfs=args.procfs), use_nvml=args.nvml, pid=args.pid)
    except ExporterError as exc:
        print(f"numa-topology-exporter verify: cannot verify: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_json(verdict) if args.format == "json" else verdict.text())
    return 0 if verdict.aligned else 1


def _fit(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from exporter.cluster import fit, load, plan, tables  # noqa: PLC0415 - see _snapshot
    from exporter.cluster.nrtmatch import pod_shape  # noqa: PLC0415

    if args.pod is not None and args.shape:
        print("numa-topology-exporter fit: give a shape or --pod, not both", file=sys.stderr)
        return 2
    shapes: dict[str, Any] = {}
    try:
        if args.pod is not None:
            shapes[args.pod.name] = fit.pod_from_manifest(_yaml_file(args.pod), str(args.pod))
        elif args.shape:
            shapes[" ".join(args.shape)] = fit.parse_shape(args.shape)
        if args.profiles is not None:
            args.summary = True  # several shapes: the fleet plan is the answer for each
            for profile in load_profiles(args.profiles):
                resources = ",".join(f"{name}={amount}" for name, amount in profile.requests.items())
                shapes[profile.name] = fit.parse_shape([resources])
    except ConfigError as exc:
        print(f"numa-topology-exporter fit: {exc}", file=sys.stderr)
        return 2
    if not shapes:
        print(
            "numa-topology-exporter fit: give a shape (cpu=8,memory=16Gi,...), --pod FILE or --profiles",
            file=sys.stderr,
        )
        return 2
    api = load.connect(args.kubeconfig, args.context)
    views = load.load(api, selector=args.selector)
    pods = {name: pod_shape(pod) for name, pod in shapes.items()}
    for line in load.unknown_resources(views, pods):
        print(f"numa-topology-exporter fit: {line}", file=sys.stderr)
    if args.summary:
        plans = plan.plan(views, pods)
        out = (
            json.dumps([p.as_json() for p in plans], indent=2) + "\n"
            if args.format == "json"
            else tables.plan_table(plans)
        )
        sys.stdout.write(out)
        return 0
    fits = fit.fit(views, next(iter(pods.values())))
    if args.format == "json":
        sys.stdout.write(json.dumps([f.as_json() for f in fits], indent=2) + "\n")
    else:
        sys.stdout.write(tables.fit_table(fits))
    return 0 if any(f.fits for f in fits) else 1


def _explain(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from exporter.cluster import explain, load  # noqa: PLC0415 - see _snapshot

    namespace, _, name = args.pod.rpartition("/")
    api = load.connect(args.kubeconfig, args.context)
    result = explain.explain(
        api, namespace or args.namespace, name, numa_schedulers=args.numa_schedulers or load.DEFAULT_NUMA_SCHEDULERS
    )
    sys.stdout.write(json.dumps(result.as_json(), indent=2) + "\n" if args.format == "json" else result.text())
    return 0


def _yaml_file(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _doctor(args: argparse.Namespace) -> int:
    if args.kubelet_config is not None and not args.kubelet_config.is_file():
        print(f"numa-topology-exporter doctor: --kubelet-config {args.kubelet_config} is not a file", file=sys.stderr)
        return 2
    snapshot = builder(args).build()
    placement = PlacementSampler(host_paths(args)).sample(snapshot) if args.placement else None
    findings = diagnose(snapshot, placement)
    for finding in findings:
        print(finding.line())
    return 1 if any(finding.severity == "error" for finding in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
