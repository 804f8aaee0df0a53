"""Observed placement: what one sample of the cgroup tree costs, what sampling costs the running agent, and
how many series a sampled container adds.

The fixture machine (2 NUMA nodes, 32 CPUs) with a cgroup v2 tree (systemd driver, containerd) of 250 pods
of 2 containers each (500 containers; each pod also has its sandbox), every container's cpuset and
`memory.numa_stat` written as the kernel writes them, named by /var/log/containers links. In one run:

* one sample of all 500 containers (`PlacementSampler.sample`, `--placement-all-containers`) against the
  seeds' manual check scripted, the peer here (no peer exporter reads per-container NUMA memory): one `cat`
  of the same three files per container from a shell, as `for d in ...; do cat ...; done`;
* the agent's CPU over `--seconds`, sampling every 15 s (the default) against `--no-placement`;
* the placement series per sampled container.

    .venv/bin/python bench/placement.py [--seconds 60] [--repeat 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median_seconds, print_table
from bench.daemon import cpu_and_switches
from exporter.observed import PlacementSampler
from exporter.snapshot import SnapshotBuilder
from tests.cgroup_tree import Layout, add_container, container_dir_name, container_log, pod_dir
from tests.daemon import Daemon, wait_for
from tests.hosttree import HostTree, fixture_machine
from tests.kubelet_files import fixture_config, install

PODS = 250
LAYOUT = Layout(version=2, driver="systemd", runtime="containerd")
GIB = 1 << 30


def host_with_containers() -> tuple[HostTree, list[Path]]:
    host = fixture_machine(Path(tempfile.mkdtemp(prefix="bench-placement-")) / "machine")
    install(host, config=fixture_config(cpu="none", memory="None") + "cgroupDriver: systemd\n")
    directories = []
    for index in range(PODS):
        uid = f"00000000-0000-4000-8000-{index:012d}"
        add_container(host, LAYOUT, uid=uid, container_id=f"{index:063d}f", cpus=set(range(32)), mems={0, 1},
                      memory={(0, "anon"): 1 << 20}, command="/pause")  # fmt: skip
        for slot, numa in enumerate((0, 1)):
            ident = f"{index:062d}{slot}a"
            add_container(host, LAYOUT, uid=uid, container_id=ident, cpus={numa * 8 + slot, numa * 8 + slot + 16},
                          mems={numa}, memory={(numa, "anon"): GIB, (1 - numa, "file"): GIB // 4},
                          qos="burstable")  # fmt: skip
            container_log(host, namespace="bench", pod=f"pod-{index}", container=f"c{slot}", container_id=ident)
            directories.append(
                host.paths.cgroup / pod_dir(LAYOUT, uid, "burstable") / container_dir_name(LAYOUT, ident)
            )
    return host, directories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of each CPU measurement")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    host, directories = host_with_containers()
    snapshot = SnapshotBuilder(host.paths, use_nvml=False, use_udev=False, use_podresources=False).build()
    sampler = PlacementSampler(host.paths, all_containers=True)
    view = sampler.sample(snapshot)
    assert len(view.containers) == 2 * PODS, len(view.containers)
    ours = median_seconds(lambda: sampler.sample(snapshot), repeat=args.repeat)
    script = Path(tempfile.mkdtemp(prefix="bench-placement-script-")) / "check.sh"
    script.write_text("".join(f"cat {d}/cpuset.cpus.effective {d}/cpuset.mems.effective {d}/memory.numa_stat\n"
                              for d in directories))  # fmt: skip
    peer = median_seconds(lambda: subprocess.run(["sh", str(script)], check=True, capture_output=True),
                          repeat=max(3, args.repeat // 4), warmup=1)  # fmt: skip
    print(f"one sample of {len(view.containers)} containers (cgroup v2, systemd, containerd), median of {args.repeat}")
    print_table(("reader", "ms", "ratio"), [
        ("numa-topology-exporter PlacementSampler.sample", f"{ours * 1000:.1f}", "1.0"),
        ("the seeds' check scripted: sh + cat per container", f"{peer * 1000:.1f}", f"{peer / ours:.1f}"),
    ])  # fmt: skip

    from exporter.views.exposition import render_exposition  # noqa: PLC0415

    text = render_exposition(snapshot, placement=view).decode()
    names = ("container_memory_bytes", "container_remote_memory_ratio", "container_enforced_numa_nodes",
             "container_placement_drift")  # fmt: skip
    series = sum(1 for line in text.splitlines() if line.startswith(tuple(f"numa_topology_{n}{{" for n in names)))
    print(f"\nplacement series per sampled container on a 2-NUMA node: {series / len(view.containers):.1f}")

    cpu = {}
    base = ["--no-nvml", "--no-nrt", "--no-podresources", "--resync-interval", "3600"]
    for label, extra in (("sampling every 15 s (all 500 containers)", ["--placement-all-containers"]),
                         ("--no-placement", ["--no-placement"])):  # fmt: skip
        with Daemon(host.paths, extra=[*base, *extra]) as daemon:
            wait_for(lambda d=daemon: d.get("/readyz")[0] == 200, timeout=30, what="readiness")
            time.sleep(2)  # past start-up and the first sample
            before = cpu_and_switches(daemon.process.pid)[0]
            time.sleep(args.seconds)
            cpu[label] = cpu_and_switches(daemon.process.pid)[0] - before
    print(f"\nagent CPU over {args.seconds:.0f} s, no scrapes, no changes")
    print_table(("agent", "CPU s", "% of a core"),
                [(label, f"{used:.2f}", f"{100 * used / args.seconds:.2f}") for label, used in cpu.items()])  # fmt: skip


if __name__ == "__main__":
    main()
