"""The daemon side by side with its peers, each in one run. Subcommands:

latency  state-file rename -> change visible on /metrics, p50/p99 over N changes (--debounce 0),
         against the reference exporter's policy of a scan every 60 s (expected wait: uniform 0-60 s)
scrape   scrape latency and scrapes/s on the largest hwloc fixture host, against
         prometheus-node-exporter --collector.meminfo_numa reading the same sysfs tree
memory   resident memory after D seconds of scrapes and state changes, ours and node_exporter's
idle     CPU time and context switches while idle for D seconds, ours and node_exporter's
imports  where the resident memory goes: RSS after each group of imports the daemon makes, in a fresh
         interpreter, standalone and publishing
peer     ours and the real resource-topology-exporter v0.19 (../shared/k8s/start-rte) on the same real kubelet
         (start-node), each with its defaults (ours: the chart's; RTE: upstream's DaemonSet flags), at the same
         time: RSS, CPU seconds and threads idle for D seconds, then under pod churn, and NRT writes

  .venv/bin/python bench/daemon.py latency --changes 200
  .venv/bin/python bench/daemon.py scrape --seconds 10
  .venv/bin/python bench/daemon.py memory --seconds 600
  .venv/bin/python bench/daemon.py idle --seconds 60
  .venv/bin/python bench/daemon.py imports
  .venv/bin/python bench/daemon.py peer --seconds 300
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, real_control_plane, unpack_hwloc_trees
from exporter.paths import HostPaths
from tests.controlplane import AGENT_USER, ControlPlane
from tests.daemon import Daemon, cpu_series, wait_for
from tests.hosttree import fixture_machine
from tests.kubelet_files import KUBELET_FIXTURES, fixture_config, install, replace_atomically
from tests.oracle import SHARED_K8S
from tests.prometheus import free_port
from tests.realnodes import RealNode, kubelet_account, real_machine, require_real_nodes, start_real_node

LARGEST_FIXTURE = "64amd64-4s2n4ca2co"
REFERENCE_SCAN_SECONDS = 60.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine_with_state() -> HostPaths:
    host = fixture_machine(Path(tempfile.mkdtemp(prefix="bench-daemon-")))
    install(host, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    return host.paths


def latency(changes: int) -> None:
    paths = machine_with_state()
    states = [(KUBELET_FIXTURES / "cpu_manager_state.static-empty.json").read_bytes(),
              (KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes()]  # fmt: skip
    expected = [16.0, 10.0]
    samples = []
    with Daemon(paths, extra=["--debounce", "0", "--resync-interval", "3600", "--no-nvml"]) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        for index in range(changes):
            started = time.perf_counter()
            replace_atomically(paths.cpu_manager_state, states[index % 2])
            wait_for(lambda i=index: daemon.sample(cpu_series(1)) == expected[i % 2], interval=0.0005, what="change")
            samples.append(time.perf_counter() - started)
    reference_p50, reference_p99 = REFERENCE_SCAN_SECONDS * 0.5, REFERENCE_SCAN_SECONDS * 0.99
    print_table(
        ("exporter", "p50 ms", "p99 ms", "changes"),
        [("numa-topology-exporter (inotify, --debounce 0)", f"{percentile(samples, 0.5) * 1e3:.1f}",
          f"{percentile(samples, 0.99) * 1e3:.1f}", changes),
         ("reference policy (scan every 60 s)", f"{reference_p50 * 1e3:.0f}", f"{reference_p99 * 1e3:.0f}", "model")],
    )  # fmt: skip
    print(f"p99 ratio reference/ours: {reference_p99 / percentile(samples, 0.99):.0f}x")


def start_node_exporter(fsroot: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", f"--path.sysfs={fsroot / 'sys'}",
         f"--path.procfs={fsroot / 'proc'}", "--collector.disable-defaults", "--collector.meminfo_numa"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ok(url + "/metrics"), what="node_exporter")
    return process, url


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
            return response.status == 200
    except OSError:
        return False


def scrape_stats(url: str, seconds: float, clients: int) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    for _ in range(200):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as response:
            size = len(response.read())
        latencies.append(time.perf_counter() - started)
    count = [0] * clients
    stop = time.monotonic() + seconds

    def worker(slot: int) -> None:
        while time.monotonic() < stop:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            count[slot] += 1

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statistics.median(latencies), percentile(latencies, 0.99), sum(count) / seconds, size


def scrape(seconds: float, clients: int) -> None:
    fsroot = unpack_hwloc_trees()[LARGEST_FIXTURE]
    paths = HostPaths(
        sysfs=fsroot / "sys", procfs=fsroot / "proc", kubelet_dir=fsroot / "none", pod_logs=fsroot / "none"
    )
    node_exporter, node_url = start_node_exporter(fsroot)
    rows = []
    try:
        with Daemon(paths, extra=["--no-nvml", "--resync-interval", "3600"]) as daemon:
            wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
            ours = scrape_stats(daemon.base_url + "/metrics", seconds, clients)
            theirs = scrape_stats(node_url + "/metrics", seconds, clients)
    finally:
        node_exporter.terminate()
        node_exporter.wait()
    for name, (p50, p99, rate, size) in (("numa-topology-exporter", ours), ("node_exporter meminfo_numa", theirs)):
        rows.append((name, f"{p50 * 1e3:.2f}", f"{p99 * 1e3:.2f}", f"{rate:.0f}", size))
    print(f"fixture {LARGEST_FIXTURE}; {clients} concurrent clients for {seconds:.0f} s")
    print_table(("exporter", "p50 ms", "p99 ms", "scrapes/s", "bytes"), rows)
    print(f"p50 ratio node_exporter/ours: {theirs[0] / ours[0]:.2f}; throughput ratio ours/node_exporter: "
          f"{ours[2] / theirs[2]:.2f}")  # fmt: skip


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_and_switches(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                switches += int(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), switches


def nrt_writes(daemon: Daemon) -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1])) for line in daemon.metrics().splitlines()
        if line.startswith("numa_topology_nrt_writes_total{") and 'result="success"' in line
    )  # fmt: skip


def memory(seconds: float, *, with_nrt: bool) -> None:
    paths = machine_with_state()
    fsroot = Path(paths.sysfs).parent
    node_exporter, node_url = start_node_exporter(fsroot)
    extra = ["--no-nvml", "--debounce", "0"]
    states = [(KUBELET_FIXTURES / name).read_bytes() for name in
              ("cpu_manager_state.static-empty.json", "cpu_manager_state.static-2pods.json")]  # fmt: skip
    with contextlib.ExitStack() as stack:
        stack.callback(node_exporter.wait)
        stack.callback(node_exporter.terminate)
        if with_nrt:
            kube: ControlPlane = stack.enter_context(real_control_plane())
            kube.add_node("bench-node")
            extra += ["--node-name", "bench-node"]
        # Publishing reaches the API server as in a pod: the service account's token and CA, no kubeconfig.
        env = kube.in_cluster_env(AGENT_USER) if with_nrt else None
        daemon = stack.enter_context(Daemon(paths, extra=extra, env=env))
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        start_rss = rss_kib(daemon.process.pid)
        stop = time.monotonic() + seconds
        scrapes = changes = 0
        while time.monotonic() < stop:
            daemon.metrics()
            _ok(node_url + "/metrics")
            scrapes += 1
            if scrapes % 10 == 0:
                replace_atomically(paths.cpu_manager_state, states[changes % 2])
                changes += 1
            time.sleep(0.02)
        ours_rss, theirs_rss = rss_kib(daemon.process.pid), rss_kib(node_exporter.pid)
        writes = nrt_writes(daemon)
    mode = f"publishing NRT to the real kube-apiserver ({writes} writes)" if with_nrt else "standalone"
    print(f"{seconds:.0f} s, {mode}, {scrapes} scrapes of each, {changes} state-file changes")
    print_table(("exporter", "RSS MiB at start", "RSS MiB at end"),
                [("numa-topology-exporter", f"{start_rss / 1024:.1f}", f"{ours_rss / 1024:.1f}"),
                 ("node_exporter meminfo_numa", "-", f"{theirs_rss / 1024:.1f}")])  # fmt: skip


IDLE_CONFIGS = (
    # (what, flags): the chart's defaults first (resync 60 s, placement sampling every 15 s), then the quietest.
    ("chart defaults (resync 60 s, placement every 15 s)", ["--resync-interval", "60"]),
    ("resync 3600 s, --no-placement", ["--resync-interval", "3600", "--no-placement"]),
)


def idle(seconds: float) -> None:
    """CPU and wakeups (context switches of all threads) while nothing changes and nobody scrapes, ours in
    each configuration against node_exporter over the same seconds."""
    paths = machine_with_state()
    node_exporter, _url = start_node_exporter(Path(paths.sysfs).parent)
    rows = []
    try:
        for what, flags in IDLE_CONFIGS:
            with Daemon(paths, extra=["--no-nvml", *flags]) as daemon:
                wait_for(lambda daemon=daemon: daemon.get("/readyz")[0] == 200, what="readiness")
                time.sleep(1)
                ours_before, theirs_before = cpu_and_switches(daemon.process.pid), cpu_and_switches(node_exporter.pid)
                time.sleep(seconds)
                ours_after, theirs_after = cpu_and_switches(daemon.process.pid), cpu_and_switches(node_exporter.pid)
            rows.append((f"ours, {what}", f"{(ours_after[0] - ours_before[0]) * 3600 / seconds:.2f}",
                         f"{(ours_after[1] - ours_before[1]) * 3600 / seconds:.0f}"))  # fmt: skip
            rows.append((f"node_exporter meminfo_numa (same {seconds:.0f} s)",
                         f"{(theirs_after[0] - theirs_before[0]) * 3600 / seconds:.2f}",
                         f"{(theirs_after[1] - theirs_before[1]) * 3600 / seconds:.0f}"))  # fmt: skip
    finally:
        node_exporter.terminate()
        node_exporter.wait()
    print(f"idle for {seconds:.0f} s per configuration, no scrapes, no changes")
    print_table(("exporter", "CPU s per hour", "context switches per hour"), rows)


# What the daemon imports, in the order it imports it: each step's RSS increase is what that group adds
# beyond everything before it (shared dependencies are charged to the first group that loads them).
IMPORT_STEPS = (
    ("the interpreter", ""),
    ("ssl (libssl, libcrypto)", "import ssl"),
    ("asyncio", "import asyncio"),
    ("h11 (the HTTP server's parser)", "import h11"),
    ("prometheus_client", "import prometheus_client"),
    ("PyYAML", "import yaml"),
    ("the exporter (sources, accounting, CLI)", "import exporter.cli"),
    ("the exporter's server (app, metrics, refresher, HTTP)", "import exporter.agent.app, exporter.agent.http"),
    ("protobuf, h2 and the podresources client", "import exporter.sources.podresources"),
    ("urllib3, the API calls and the publisher (in a pod)", "import exporter.agent.writer, exporter.agent.pods, "
     "exporter.agent.ownwatch"),
    ("with a kubeconfig: the kubernetes package's loader and client", "import exporter.kubeapi as k; k._import_config()"),
)  # fmt: skip

RSS_PROBE = """
import sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
for statement in sys.argv[1:]:
    exec(statement)
    print(rss(), len(sys.modules), flush=True)
"""


def imports() -> None:
    statements = [statement or "pass" for _, statement in IMPORT_STEPS]
    output = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, *statements], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    rows, previous, previous_modules = [], 0, 0
    for (what, _), line in zip(IMPORT_STEPS, output, strict=False):
        kib, modules = (int(field) for field in line.split())
        rows.append((what, f"{(kib - previous) / 1024:.1f}", modules - previous_modules, f"{kib / 1024:.1f}"))
        previous, previous_modules = kib, modules
    print(f"resident memory by import group, {sys.executable}")
    print_table(("group", "+MiB", "+modules", "total MiB"), rows)


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def peer(seconds: float, churn: int) -> None:
    bin_dir = require_real_nodes()
    root = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    with real_control_plane() as kube:
        node = RealNode("peer-0", root / "node", real_machine(root / "machine"), kube.kubeconfig("admin"))
        for numa in node.machine.node_dir.glob("node[0-9]*"):
            (numa / "hugepages").mkdir(exist_ok=True)  # RTE refuses to start without one (empty: no hugepages)
        start_real_node(kube, node, bin_dir)
        try:
            # The chart's defaults (resync 60 s, debounce 0.1 s, placement sampling, podresources, DRA, NVML),
            # and the API server reached as in a pod: its service account's token and CA, no kubeconfig.
            flags = ["--node-name", node.name, "--host-path-map", "/=/", "--log-level", "warning"]
            ours = Daemon(node.paths, extra=flags, env=kube.in_cluster_env(AGENT_USER))
            env = {**os.environ, "BIN_DIR": str(bin_dir), "NRT_NAME": f"{node.name}-rte"}
            subprocess.run([str(SHARED_K8S / "start-rte"), str(node.directory), node.name,
                            str(kube.kubeconfig("admin"))], env=env, check=True, timeout=120)  # fmt: skip
            rte = node.pids()["resource-topology-exporter"][-1]
            pids = {"ours": ours.process.pid, "rte": rte}
            time.sleep(60)  # both settled: started, first writes done
            rows = []
            start = {name: cpu_and_switches(pid) for name, pid in pids.items()}
            nrt_before = {name: kube.nrt(node.name if name == "ours" else f"{node.name}-rte") for name in pids}
            time.sleep(seconds)
            idle_cpu = {name: cpu_and_switches(pid)[0] - start[name][0] for name, pid in pids.items()}
            idle_rss = {name: rss_kib(pid) for name, pid in pids.items()}
            rv = {name: (kube.nrt(node.name if name == "ours" else f"{node.name}-rte") or {}).get("metadata", {})
                  .get("resourceVersion") for name in pids}  # fmt: skip
            changed = {name: rv[name] != (nrt_before[name] or {}).get("metadata", {}).get("resourceVersion")
                       for name in pids}  # fmt: skip
            kube.ensure_namespace("peer")
            start = {name: cpu_and_switches(pid) for name, pid in pids.items()}
            began = time.monotonic()
            peak = dict(idle_rss)
            for index in range(churn):
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{index}"},
                        "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0, "containers": [
                            {"name": "c", "image": "pause", "resources": {"requests": {"cpu": "2", "memory": "1Gi"},
                                                                           "limits": {"cpu": "2", "memory": "1Gi"}}}]}}  # fmt: skip
                kube.ok("POST", "/api/v1/namespaces/peer/pods", body)
                key = ("peer", f"p{index}")
                wait_for(lambda key=key: key in kubelet_account(node).pods, timeout=60, what="admitted")
                kube.request("DELETE", f"/api/v1/namespaces/peer/pods/p{index}")
                wait_for(lambda key=key: key not in kubelet_account(node).pods, timeout=60, what="gone")
                peak = {name: max(peak[name], rss_kib(pid)) for name, pid in pids.items()}
            churn_seconds = time.monotonic() - began
            churn_cpu = {name: cpu_and_switches(pid)[0] - start[name][0] for name, pid in pids.items()}
            for name, pid in pids.items():
                rows.append((
                    name, f"{idle_rss[name] / 1024:.1f}", f"{peak[name] / 1024:.1f}",
                    f"{idle_cpu[name] * 3600 / seconds:.2f}", threads(pid),
                    "yes" if changed[name] else "no", f"{churn_cpu[name]:.2f} over {churn_seconds:.0f} s",
                ))  # fmt: skip
            print(f"one real kubelet, both agents at once; idle {seconds:.0f} s, then {churn} pods started and stopped")
            print_table(("agent", "RSS MiB idle", "peak RSS MiB", "CPU s per idle hour", "threads",
                         "object written while idle", "CPU s under churn"), rows)  # fmt: skip
            ratio = idle_rss["ours"] / max(idle_rss["rte"], 1)
            print(f"RSS ours / RTE: {ratio:.2f}; idle CPU ours / RTE: {idle_cpu['ours'] / max(idle_cpu['rte'], 1e-9):.2f}")
            ours.stop()
        finally:
            node.kill("resource-topology-exporter")
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("latency").add_argument("--changes", type=int, default=200)
    scrape_parser = commands.add_parser("scrape")
    scrape_parser.add_argument("--seconds", type=float, default=10)
    scrape_parser.add_argument("--clients", type=int, default=4)
    memory_parser = commands.add_parser("memory")
    memory_parser.add_argument("--seconds", type=float, default=600)
    memory_parser.add_argument("--with-nrt", action="store_true", help="also publish NRT to the real kube-apiserver")
    commands.add_parser("idle").add_argument("--seconds", type=float, default=60)
    commands.add_parser("imports")
    peer_parser = commands.add_parser("peer")
    peer_parser.add_argument("--seconds", type=float, default=300)
    peer_parser.add_argument("--churn", type=int, default=20)
    args = parser.parse_args()
    if args.command == "latency":
        latency(args.changes)
    elif args.command == "scrape":
        scrape(args.seconds, args.clients)
    elif args.command == "memory":
        memory(args.seconds, with_nrt=args.with_nrt)
    elif args.command == "imports":
        imports()
    elif args.command == "peer":
        peer(args.seconds, args.churn)
    else:
        idle(args.seconds)


if __name__ == "__main__":
    main()
