"""NodeResourceTopology writes per hour: ours against the reference exporter's policy, and at 5,000 nodes.

An hour is replayed time-compressed (1 simulated second = --scale real seconds) through the real
pipeline: state files changed on disk, SnapshotBuilder, NrtWriter, the `kubernetes` client, and the real
kube-apiserver v1.36.2 of the test suite, behind its recording proxy, which counts the writes. Scenarios:
  idle              nothing changes; resync every 60 s
  churn-ordinary    one pod starts or stops every 10 s; they hold no exclusive resources
  churn-exclusive   one pod with 2 pinned CPUs starts or stops every 10 s
The agent as the chart runs it follows each burst of writes with one requeue update a resync period later
(`--nrt-scheduler-resync-seconds 5`); the column without it is the write cost alone. The reference
(resource-topology-exporter's default) writes once per 60 s poll whatever happened: 60/hour; its row is that
policy (its real runs, in bench/admission.py, write once per poll).

    .venv/bin/python bench/nrt_writes.py [--scale 0.002]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, real_control_plane
from exporter.agent.writer import NrtWriter
from exporter.cpuset import format_cpuset
from exporter.kubeapi import KubeApi, client_from
from exporter.snapshot import SnapshotBuilder
from exporter.views.metrics import NrtStats
from tests.controlplane import AGENT_USER, ControlPlane
from tests.faultproxy import FaultProxy
from tests.hosttree import fixture_machine
from tests.kubelet_files import fixture_config, install, replace_atomically

HOUR = 3600
CHURN_EVERY = 10
RESYNC_EVERY = 60
REFERENCE_PER_HOUR = HOUR // 60
NODES = 5000
REQUEUE = 5.5  # the chart's nrt.schedulerResyncSeconds (5) and the agent's margin


def cpu_state(pinned: bool) -> bytes:
    default = set(range(32)) - ({4, 20} if pinned else set())
    body: dict[str, object] = {"policyName": "static", "defaultCpuSet": format_cpuset(default)}
    if pinned:
        body["entries"] = {"churn-pod-uid": {"app": "4,20"}}
    body["checksum"] = 0
    return json.dumps(body).encode()


async def replay(kube: ControlPlane, scenario: str, *, scale: float, min_interval: float, requeue: float = 0) -> int:
    node = f"bench-{scenario}-{min_interval:.0f}-{requeue:.0f}"
    kube.add_node(node)
    proxy = FaultProxy(kube.url)
    try:
        host = fixture_machine(Path(tempfile.mkdtemp(prefix="bench-nrt-")))
        install(host, cpu=cpu_state(False), config=fixture_config(memory="None"))
        api = KubeApi(client_from(kube.kubeconfig(AGENT_USER, server=proxy.url)))
        writer = NrtWriter(api, node_name=node, stats=NrtStats(), min_interval_seconds=min_interval * scale,
                           requeue_after_seconds=requeue * scale)  # fmt: skip
        builder = SnapshotBuilder(host.paths, use_nvml=False, use_udev=False)
        task = asyncio.create_task(writer.run())
        requeues = asyncio.create_task(writer.run_requeues())
        await writer.on_snapshot(builder.build(), {"start"})
        logs = host.paths.pod_logs
        for second in range(1, HOUR + 1):
            reasons: set[str] = set()
            if second % CHURN_EVERY == 0 and scenario != "idle":
                running = (second // CHURN_EVERY) % 2 == 1
                if scenario == "churn-exclusive":
                    replace_atomically(host.paths.cpu_manager_state, cpu_state(running))
                pod_dir = logs / "default_churn_churn-pod-uid"
                if running:
                    pod_dir.mkdir(parents=True, exist_ok=True)
                elif pod_dir.exists():
                    pod_dir.rmdir()
                reasons.add("inotify")
            if second % RESYNC_EVERY == 0:
                reasons.add("resync")
            if reasons:
                await writer.on_snapshot(builder.build(), reasons)
            await asyncio.sleep(scale)
        await asyncio.sleep(max(min_interval * scale, requeue * scale, 0.05) + 0.2)
        task.cancel()
        requeues.cancel()
        return len([seen for seen in proxy.requests() if seen.method in ("POST", "PUT", "PATCH")])
    finally:
        proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.002, help="real seconds per simulated second")
    args = parser.parse_args()
    rows = []
    with real_control_plane() as kube:
        for scenario in ("idle", "churn-ordinary", "churn-exclusive"):
            ours = asyncio.run(replay(kube, scenario, scale=args.scale, min_interval=0, requeue=REQUEUE))
            plain = asyncio.run(replay(kube, scenario, scale=args.scale, min_interval=0))
            coalesced = asyncio.run(replay(kube, scenario, scale=args.scale, min_interval=30, requeue=REQUEUE))
            rows.append((
                scenario, ours, plain, coalesced, REFERENCE_PER_HOUR,
                f"{ours * NODES / HOUR:.1f}", f"{coalesced * NODES / HOUR:.1f}",
                f"{REFERENCE_PER_HOUR * NODES / HOUR:.1f}",
            ))  # fmt: skip
    print(f"writes per node per hour (replayed at {args.scale} s per simulated second), and writes/s at {NODES} nodes")
    print_table(
        ("scenario", "ours (default: requeue update 5.5 s after)", "ours --nrt-scheduler-resync-seconds 0",
         "ours --nrt-min-interval 30", "reference (60 s scan)", "ours /s @5k", "ours min-interval /s @5k",
         "reference /s @5k"),
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
