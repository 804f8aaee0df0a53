"""Real Kubernetes nodes for the tests: the real kubelet v1.36.2, started by `../shared/k8s/start-node` over a
simulated NUMA machine (a host tree of tests/hosttree.py), with the Kubernetes project's fake CRI runtime and
stub device plugins. Pods bound to such a node go through the kubelet's own CPU, Memory, Device and Topology
Managers: they reach Running or fail with TopologyAffinityError, and the kubelet writes its real state files
and serves its real podresources socket, which the agent of that node reads.

Needs root (start-node makes a private mount namespace) and the binaries (tests/oracle.py `asset`). Without
them the tests skip with the reason; under $NUMA_EXPORTER_REQUIRE_REAL=1 (.ci/run) they fail.

Also the kubelet's own account of a node, read straight from its podresources API with the generated stub
(not through exporter/sources/podresources.py), per NUMA node: what the tests hold the agent's NRT to.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from exporter.cpuset import parse_cpuset
from exporter.paths import HostPaths
from tests.controlplane import ControlPlane, free_port, wait_until
from tests.daemon import Daemon
from tests.hosttree import HostTree, fixture_machine
from tests.oracle import REQUIRE_REAL, SHARED_K8S, asset

START_NODE = SHARED_K8S / "start-node"
GPU = "nvidia.com/gpu"
# The fixture machine's four GPUs, two per NUMA node, as the stub device plugin registers them.
GPU_DEVICES = f"{GPU}=gpu-0:0,gpu-1:0,gpu-2:1,gpu-3:1"
# What start-node configures unless told otherwise (../shared/k8s/README.md), with the fixture machine's
# hyperthread siblings both reserved (full-pcpus-only is off, the kubelet takes CPU 0 and 16 as written).
DEFAULT_CONFIG: dict[str, Any] = {
    "cpuManagerPolicy": "static",
    "reservedSystemCPUs": "0,16",
    "memoryManagerPolicy": "Static",
    "kubeReserved": {"memory": "1948Mi"},
    "evictionHard": {"memory.available": "100Mi"},
    "reservedMemory": [{"numaNode": 0, "limits": {"memory": "1Gi"}}, {"numaNode": 1, "limits": {"memory": "1Gi"}}],
    "topologyManagerPolicy": "single-numa-node",
    "topologyManagerScope": "container",
}
MEMORY_BLOCK = "memory"


def require_real_nodes() -> Path:
    """The directory of the unpacked binaries, or skip (fail under $NUMA_EXPORTER_REQUIRE_REAL) with why."""
    reason = ""
    if os.geteuid() != 0:
        reason = "real nodes need root (start-node makes a private mount namespace)"
    elif not START_NODE.exists():
        reason = f"no {START_NODE}: put ../shared/k8s beside the project"
    elif subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
        reason = "unshare -m is not permitted here (real nodes need a mount namespace)"
    if reason:
        if os.environ.get(REQUIRE_REAL) == "1":
            pytest.fail(f"{REQUIRE_REAL}=1 but {reason}")
        pytest.skip(reason)
    return asset("kubelet").parent


def real_machine(root: Path) -> HostTree:
    """The fixture machine (2 NUMA nodes, 32 CPUs, 64 GiB each, 4 GPUs) as the kubelet must see it: no
    hugepages (start-node mounts only the cpu and node trees, so the kubelet's node-wide hugepage capacity is
    the host's, none), each NUMA node's CPU links, /proc/cpuinfo and /proc/meminfo."""
    tree = fixture_machine(root, hugepages=False)
    tree.kubelet_view()
    return tree


def free_port_pair() -> int:
    """A free port P with P + 1 free too: the kubelet listens on P and serves healthz on P + 1."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two adjacent free ports on 127.0.0.1")


@dataclass
class RealNode:
    """One real kubelet and what it runs (fake-cri, stub device plugins): `start`, `stop`, `restart`."""

    name: str
    directory: Path
    machine: HostTree
    kubeconfig: Path
    config: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONFIG))
    devices: str = GPU_DEVICES
    config_file: Path | None = None
    dropin_dir: Path | None = None
    flags: str = ""  # more kubelet command-line flags (start-node's KUBELET_FLAGS)
    port: int = field(default_factory=free_port_pair)

    @property
    def kubelet_dir(self) -> Path:
        return self.directory / "kubelet"

    @property
    def podresources_socket(self) -> Path:
        return self.kubelet_dir / "pod-resources" / "kubelet.sock"

    @property
    def paths(self) -> HostPaths:
        return HostPaths(
            sysfs=self.machine.sys,
            procfs=self.machine.root / "proc",
            kubelet_dir=self.kubelet_dir,
            pod_logs=self.directory / "pods",
            kubelet_config_file=self.config_file,
            kubelet_config_dir=self.dropin_dir,
            cgroup=self.machine.sys / "fs" / "cgroup",
            container_logs=self.directory / "containers",
        )

    def start(self, bin_dir: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "numa-config.json"
        config.write_text(json.dumps(dict(self.config)))
        env = {**os.environ, "BIN_DIR": str(bin_dir), "KUBELET_PORT": str(self.port), "KUBELET_CONFIG": str(config),
               "DEVICES": self.devices}  # fmt: skip
        if self.config_file is not None:
            env["CONFIG_FILE"] = str(self.config_file)
        if self.dropin_dir is not None:
            env["DROPIN_DIR"] = str(self.dropin_dir)
        if self.flags:
            env["KUBELET_FLAGS"] = self.flags
        done = subprocess.run(
            [str(START_NODE), str(self.directory), self.name, str(self.machine.root), str(self.kubeconfig)],
            env=env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"start-node {self.name}: {done.stderr.strip()}\n{self.log()[-3000:]}")
        self.link_kubelet_process()

    def link_kubelet_process(self) -> None:
        """The simulated machine's procfs holds the kubelet's process, as a host's /proc does: its entry links
        to the real one (the agent reads `comm` and `cmdline` there). Entries of kubelets gone are removed."""
        proc = self.machine.root / "proc"
        for entry in proc.iterdir():
            if entry.name.isdigit() and entry.is_symlink():
                entry.unlink()
        for pid in self.pids().get("kubelet", []):
            (proc / str(pid)).symlink_to(f"/proc/{pid}")

    def pids(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        path = self.directory / "pids"
        for line in path.read_text().splitlines() if path.exists() else ():
            name, pid = line.split()
            found.setdefault(name, []).append(int(pid))
        return found

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop every process of this node called `name` (kubelet, fake-cri, stub-device-plugin) and wait."""
        for pid in self.pids().get(name, []):
            _terminate(pid, sig)

    def stop(self) -> None:
        for name in ("stub-device-plugin", "kubelet", "fake-cri"):
            self.kill(name)
        (self.directory / "pids").write_text("")

    def start_device_plugins(self, bin_dir: Path) -> None:
        """The stub device plugins again, as start-node starts them (after `kill("stub-device-plugin")`)."""
        for spec in self.devices.split(";") if self.devices else ():
            resource, listed = spec.split("=", 1)
            log = (self.directory / f"device-plugin-{resource.replace('/', '_')}.log").open("ab")
            process = subprocess.Popen(
                [str(bin_dir / "stub-device-plugin"), "--kubelet-dir", str(self.kubelet_dir), "--resource", resource,
                 "--devices", listed.replace(":", "=")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            with (self.directory / "pids").open("a") as pids:
                pids.write(f"stub-device-plugin {process.pid}\n")

    def log(self) -> str:
        path = self.directory / "kubelet.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _terminate(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (start-node's): poll for it to be gone
            finished = 0 if _alive(pid) else pid
        if finished:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def node_ready(kube: ControlPlane, name: str, *, gpus: int) -> dict[str, Any] | None:
    """The Node once the kubelet reports Ready and its device plugins' devices."""
    response = kube.request("GET", f"/api/v1/nodes/{name}")
    if response.status != 200:
        return None
    node: dict[str, Any] = response.body
    status = node.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    if not ready or int((status.get("allocatable") or {}).get(GPU, "0")) != gpus:
        return None
    return node


def untaint(kube: ControlPlane, name: str) -> None:
    """The API server's admission puts node.kubernetes.io/not-ready on a new Node; no controller lifts it."""
    kube.ok("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}}, content_type="application/merge-patch+json")


def start_real_node(kube: ControlPlane, node: RealNode, bin_dir: Path, *, gpus: int = 4) -> None:
    node.start(bin_dir)
    wait_until(lambda: node_ready(kube, node.name, gpus=gpus), timeout=60, what=f"{node.name} Ready with {gpus} GPUs",
               interval=0.1)  # fmt: skip
    untaint(kube, node.name)


@contextlib.contextmanager
def running(kube: ControlPlane, node: RealNode) -> Iterator[RealNode]:
    """The node started, Ready and untainted; then stopped, its Node and NRT object deleted."""
    bin_dir = require_real_nodes()
    try:
        start_real_node(kube, node, bin_dir)
        yield node
    finally:
        node.stop()
        kube.request("DELETE", f"/api/v1/nodes/{node.name}")
        kube.delete_nrt(node.name)


CHART_RESYNC_SECONDS = 60  # helm/numa-topology-exporter/values.yaml exporter.resyncInterval
CHART_DEBOUNCE_SECONDS = 0.1  # exporter.debounce


def agent(
    kube: ControlPlane, node: RealNode, *, user: str, extra: Sequence[str] = (), host_paths: bool = True
) -> Daemon:
    """The agent of one real node, as the chart runs it: the kubelet's directory, the machine's sysfs/procfs
    (which holds the kubelet's process), and, with `host_paths`, the host's paths where they are (the kubelet
    runs on this machine: the paths its command line names are ours, `--host-path-map /=/`). The chart's
    resync (60 s) and debounce: nothing a faster resync would repair behind the events is hidden."""
    flags = ["--kubeconfig", str(kube.kubeconfig(user)), "--node-name", node.name,
             "--resync-interval", str(CHART_RESYNC_SECONDS), "--debounce", str(CHART_DEBOUNCE_SECONDS),
             "--no-nvml", "--no-placement", "--log-level", "debug", *extra]  # fmt: skip
    if host_paths:
        flags += ["--host-path-map", "/=/"]
    if node.config_file is not None:
        flags += ["--kubelet-config", str(node.config_file)]
    if node.dropin_dir is not None:
        flags += ["--kubelet-config-dir", str(node.dropin_dir)]
    return Daemon(node.paths, extra=flags)


# --- the kubelet's own account, from its podresources API ----------------------------------------------------


@dataclass(frozen=True)
class KubeletAccount:
    """Per NUMA node, what the kubelet's podresources API says it can hand out and has handed out."""

    allocatable: Mapping[int, Counter[str]]
    used: Mapping[int, Counter[str]]
    pods: frozenset[tuple[str, str]]

    def available(self, numa: int) -> Counter[str]:
        free = Counter(self.allocatable[numa])
        free.subtract(self.used.get(numa, Counter()))
        return free


def kubelet_account(node: RealNode) -> KubeletAccount:
    """GetAllocatableResources and List, counted per NUMA node: exclusive CPUs by the machine's cpulists,
    memory blocks by their NUMA affinity (a block over several nodes is not expected here: refused), devices
    by the topology their plugin gave."""
    import grpc

    from exporter.sources.podresources_v1 import api_pb2, api_pb2_grpc

    numa_of = {
        cpu: int(directory.name[4:])
        for directory in node.machine.node_dir.glob("node[0-9]*")
        for cpu in parse_cpuset((directory / "cpulist").read_text().strip())
    }
    with grpc.insecure_channel(f"unix://{node.podresources_socket}") as channel:
        stub: Any = api_pb2_grpc.PodResourcesListerStub(channel)
        allocatable = stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest(), timeout=10)
        listed = stub.List(api_pb2.ListPodResourcesRequest(), timeout=10)

    def count(into: dict[int, Counter[str]], cpus: Any, memory: Any, devices: Any) -> None:
        for cpu in cpus:
            into.setdefault(numa_of[cpu], Counter())["cpu"] += 1
        for block in memory:
            nodes = [n.ID for n in block.topology.nodes]
            assert len(nodes) == 1, f"a {block.memory_type} block over NUMA nodes {nodes}"
            into.setdefault(nodes[0], Counter())[block.memory_type] += block.size
        for device in devices:
            nodes = [n.ID for n in device.topology.nodes] or [-1]
            for _ in device.device_ids:
                into.setdefault(nodes[0], Counter())[device.resource_name] += 1

    total: dict[int, Counter[str]] = {numa: Counter() for numa in set(numa_of.values())}
    count(total, allocatable.cpu_ids, allocatable.memory, allocatable.devices)
    used: dict[int, Counter[str]] = {}
    for pod in listed.pod_resources:
        for container in pod.containers:
            count(used, container.cpu_ids, container.memory, container.devices)
    pods = frozenset((pod.namespace, pod.name) for pod in listed.pod_resources)
    return KubeletAccount(allocatable=total, used=used, pods=pods)


def nrt_zones(obj: Mapping[str, Any]) -> dict[int, dict[str, tuple[int, int]]]:
    """An NRT object's zones: NUMA id -> resource -> (allocatable, available), in the kubelet's units (CPUs,
    bytes, devices)."""
    from exporter.units import quantity_value

    zones: dict[int, dict[str, tuple[int, int]]] = {}
    for zone in obj.get("zones") or []:
        numa = int(str(zone["name"]).removeprefix("node-"))
        zones[numa] = {
            r["name"]: (quantity_value(r["allocatable"]), quantity_value(r["available"])) for r in zone["resources"]
        }
    return zones


def disagreements(account: KubeletAccount, obj: Mapping[str, Any]) -> list[str]:
    """Where the NRT's per-NUMA allocatable or available differs from the kubelet's podresources account."""
    zones = nrt_zones(obj)
    found = []
    for numa, allocatable in sorted(account.allocatable.items()):
        published = zones.get(numa, {})
        for resource in sorted(set(allocatable) | set(published) | {"cpu", MEMORY_BLOCK}):
            want = (allocatable[resource], account.available(numa)[resource])
            got = published.get(resource, (0, 0))
            if got != want:
                found.append(f"node-{numa} {resource}: NRT (allocatable, available) {got}, kubelet {want}")
    return found


# --- what the kubelet would admit now, asked of its own code -------------------------------------------------


def oracle_machine(node: RealNode) -> Any:
    """The simulated machine for kubelet-oracle, read from the node's tree as cadvisor reads it."""
    from tests.oracle import MachineSpec

    cpus, memory = [], {}
    for directory in sorted(node.machine.node_dir.glob("node[0-9]*")):
        numa = int(directory.name[4:])
        for cpu in parse_cpuset((directory / "cpulist").read_text().strip()):
            topology = node.machine.cpu_dir / f"cpu{cpu}" / "topology"
            socket_id = int((topology / "physical_package_id").read_text())
            cpus.append((cpu, socket_id, int((topology / "core_id").read_text()), numa))
        for line in (directory / "meminfo").read_text().splitlines():
            if "MemTotal:" in line:
                memory[numa] = int(line.split()[3]) * 1024
    devices: dict[str, list[tuple[str, tuple[int, ...], int]]] = {}
    for spec in node.devices.split(";") if node.devices else ():
        resource, listed = spec.split("=", 1)
        for item in listed.split(","):
            device, numa = item.split(":")
            devices.setdefault(resource, []).append((device, () if numa == "-1" else (int(numa),), int(numa)))
    return MachineSpec(cpus=cpus, memory=memory, devices=devices)


def live_state(node: RealNode, live: frozenset[str]) -> dict[str, Any]:
    """The node's state files as its kubelet's next admission reads them: entries of pods not in `live`
    released first (CPUs back to the shared pool, memory by the memory manager's releaseMemory, devices
    freed); checksums as kubelet-oracle accepts them (0 for CPU and memory, the device one recomputed)."""
    from exporter.cpuset import format_cpuset
    from exporter.sources import device_checkpoint
    from exporter.sources.kubelet_json import spew_checksum

    cpu = json.loads((node.kubelet_dir / "cpu_manager_state").read_text())
    memory = json.loads((node.kubelet_dir / "memory_manager_state").read_text())
    devices = json.loads((node.kubelet_dir / "device-plugins" / "kubelet_internal_checkpoint").read_text())
    freed = set(parse_cpuset(cpu.get("defaultCpuSet", "")))
    for pod, containers in list((cpu.get("entries") or {}).items()):
        if pod not in live:
            for cpuset in containers.values():
                freed |= parse_cpuset(cpuset)
            del cpu["entries"][pod]
    cpu["defaultCpuSet"], cpu["checksum"] = format_cpuset(freed), 0
    machine = memory.get("machineState") or {}
    for pod, containers in list((memory.get("entries") or {}).items()):
        if pod in live:
            continue
        for blocks in containers.values():
            for block in blocks:
                released = block["size"]
                for numa in block["numaAffinity"]:
                    state = machine[str(numa)]
                    state["numberOfAssignments"] -= 1
                    if state["numberOfAssignments"] == 0:
                        state["cells"] = [numa]
                    table = state["memoryMap"].get(block["type"])
                    if released == 0 or table is None or table["reserved"] == 0:
                        continue
                    moved = min(released, table["reserved"])
                    table["free"], table["reserved"], released = (
                        table["free"] + moved,
                        table["reserved"] - moved,
                        released - moved,
                    )
        del memory["entries"][pod]
    memory["checksum"] = 0
    data = devices["Data"]
    data["PodDeviceEntries"] = [e for e in data.get("PodDeviceEntries") or [] if e["PodUID"] in live]
    devices["Checksum"] = spew_checksum(device_checkpoint.hash_text(data, v1=False))
    return {"cpu_manager_state": cpu, "memory_manager_state": memory, "kubelet_internal_checkpoint": devices}


def kubelet_would_admit(node: RealNode, live: frozenset[str], resources: Mapping[str, str]) -> bool:
    """Whether this node's kubelet admits a one-container Guaranteed pod of `resources` now (kubelet-oracle:
    the kubelet's own managers, on the node's state files with the gone pods released)."""
    from tests.oracle import ask

    machine = oracle_machine(node)
    spec = {"containers": [{"name": "c", "resources": {"requests": dict(resources), "limits": dict(resources)}}]}
    request = {"machine": machine.oracle_machine(), "kubeletConfig": dict(node.config), "devices": machine.oracle_devices(),
               "state": live_state(node, live), "queries": [{"type": "admit_on", "pod": {"spec": spec}, "omitFinalState": True}]}  # fmt: skip
    result: dict[str, Any] = ask(request)["results"][0]
    return bool(result.get("admitted"))


@contextlib.contextmanager
def reachable_at_node_ip(kube: ControlPlane, node: RealNode) -> Iterator[str]:
    """Make the kubelet (listening on 127.0.0.1 only, as start-node runs it) reachable on the Node's InternalIP
    with a plain TCP relay, so that the API server's node proxy (/api/v1/nodes/NAME/proxy/...) reaches it: the
    API server refuses loopback addresses. Yields the address."""
    addresses = kube.ok("GET", f"/api/v1/nodes/{node.name}")["status"]["addresses"]
    address = next(a["address"] for a in addresses if a["type"] == "InternalIP")
    listener = socket.create_server((address, node.port))
    listener.settimeout(0.2)
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", node.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, name="kubelet-relay", daemon=True)
    thread.start()
    try:
        yield address
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def pending_that_fit(kube: Any, nodes: Sequence[RealNode], pending: Sequence[Mapping[str, Any]]) -> list[str]:
    """The pending pods some node's kubelet would admit right now (kubelet-oracle on that node's state files,
    the pods the API no longer has there released), by name."""
    live: dict[str, frozenset[str]] = {}
    for node in nodes:
        pods = kube.ok("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node.name}")["items"]
        live[node.name] = frozenset(p["metadata"]["uid"] for p in pods if p["status"].get("phase") != "Failed")
    verdicts: dict[tuple[tuple[str, str], ...], bool] = {}
    fit = []
    for pod in pending:
        resources = pod["spec"]["containers"][0]["resources"]["requests"]
        key = tuple(sorted(resources.items()))
        if key not in verdicts:
            verdicts[key] = any(kubelet_would_admit(node, live[node.name], resources) for node in nodes)
        if verdicts[key]:
            fit.append(str(pod["metadata"]["name"]))
    return fit
