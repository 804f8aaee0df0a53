"""The podresources source: what one reading costs and what grpcio adds to the resident memory.

The large host of bench/kubelet_state.py (8 NUMA nodes, 256 CPUs, 100 pods, 200 containers with pinned
CPUs, Static memory and devices), its allocations served by the test suite's real gRPC server on a unix
socket, built from its state files as the kubelet's server builds them. In one run: one podresources
reading (`List` + `GetAllocatableResources`, checked) against reading and verifying the three state
files that hold the same allocations, the cross-check of both, and the resident memory of a fresh
interpreter with the agent's imports, before and after its first podresources reading.

    .venv/bin/python bench/podresources.py [--repeat N]
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median_seconds, print_table
from bench.kubelet_state import PODS, large_host, write_state
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.crosscheck import cross_check
from exporter.model import PodRef
from exporter.sources import cpu_manager, device_checkpoint, kubelet_config, memory_manager
from exporter.sources.podresources import PodResourcesClient, TokenBucket
from tests.podresources_server import PodResourcesServer

RSS_PROBE = """
import sys
from pathlib import Path
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
import exporter.cli, exporter.agent.app
before = rss()
from exporter.sources.podresources import PodResourcesClient
imported = rss()
reading = PodResourcesClient(Path(sys.argv[1])).read()
print(before, imported, rss(), len(reading.pods))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    host = large_host(Path(tempfile.mkdtemp(prefix="bench-large-")))
    write_state(host)
    socket = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp")) / "kubelet.sock"
    paths = dataclasses.replace(host.paths, podresources_socket_file=socket)
    names = {f"{pod:08x}-0000-4000-8000-000000000000": ("bench", f"pod-{pod}") for pod in range(PODS)}
    server = PodResourcesServer(socket)
    try:
        server.serve_state(paths, names, cpus=256)
        client = PodResourcesClient(socket, limiter=TokenBucket(1e9, 10**9))  # unlimited: time the calls
        reading = client.read()
        containers = sum(len(pod.containers) for pod in reading.pods)

        def state_files() -> KubeletState:
            return KubeletState(
                config=kubelet_config.read_kubelet_config(paths),
                cpu=cpu_manager.read_cpu_manager_state(paths),
                memory=memory_manager.read_memory_manager_state(paths),
                devices=device_checkpoint.read_device_checkpoint(paths),
            )

        # Names known (the pod log directory or the API): the join is by name. kubelet_state.py's host
        # hands some CPUs to two pods (it is a parsing benchmark), so matching by content alone is timed
        # but not checked here; tests/integration/test_podresources.py checks it.
        state = state_files()
        named = dataclasses.replace(
            state, pods=tuple(PodRef(uid=uid, namespace=ns, name=name) for uid, (ns, name) in names.items())
        )
        check = cross_check(named, reading, api_synced=False)
        assert check.disagreements == (), check.disagreements[:3]
        assert len(check.live_uids) == PODS
        ours = median_seconds(client.read, repeat=args.repeat)
        files = median_seconds(state_files, repeat=args.repeat)
        crosscheck = median_seconds(lambda: cross_check(named, reading, api_synced=False), repeat=args.repeat)
        by_content = median_seconds(lambda: cross_check(state, reading, api_synced=False), repeat=args.repeat)
        limited = PodResourcesClient(socket)
        waited = sum(limited.limiter.take(2) for _ in range(60))  # 120 calls at the kubelet's limit
        probe = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(socket)], capture_output=True, text=True, check=True
        ).stdout.split()
        client.close()
    finally:
        server.stop()
    before, imported, after, _ = (int(value) for value in probe)
    print(f"{len(reading.pods)} pods, {containers} containers; median of {args.repeat}")
    print_table(
        ("step", "median ms"),
        [
            ("podresources: List + GetAllocatableResources, checked", f"{ours * 1e3:.2f}"),
            ("state files: read and verify all three + config", f"{files * 1e3:.2f}"),
            ("cross-check of the two, pod names known", f"{crosscheck * 1e3:.2f}"),
            ("cross-check of the two, pods matched by what they hold", f"{by_content * 1e3:.2f}"),
        ],
    )
    print(f"podresources/state files = {ours / files:.2f}")
    print(f"120 calls at the kubelet's limit (100/s, burst 10): waited {waited:.2f} s")
    print_table(
        ("resident memory", "MiB"),
        [
            ("the agent's imports (exporter.cli, exporter.agent.app)", f"{before / 1024:.1f}"),
            ("+ grpcio, protobuf and the generated client", f"{(imported - before) / 1024:.1f}"),
            ("+ the first reading (channel, threads, buffers)", f"{(after - imported) / 1024:.1f}"),
            ("total", f"{after / 1024:.1f}"),
        ],
    )


if __name__ == "__main__":
    main()
