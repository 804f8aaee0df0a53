"""`make demo`: an example host to run the agent on, with the kubelet's state and a cgroup tree, so that a
newcomer sees the accounting, fit, container and placement tables without a NUMA machine or a kubelet.

The fixture machine (2 NUMA nodes, 32 CPUs, 4 GPUs, 2 SR-IOV NICs) with two pinned pods from the kubelet's
own state files (tests/fixtures/kubelet): `app` of team-a/trainer-0 on NUMA 0 with a quarter of its memory
on NUMA 1, and `db` of team-b/db-0 on NUMA 1 whose cgroup lets its memory come from both NUMA nodes.

    .venv/bin/python -m tests.demo build/demo     # prints the flags that point the agent at it
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.cgroup_tree import Layout, add_container, container_log
from tests.kubelet_files import POD_A, POD_B
from tests.scenarios import KUBELET_SCENARIOS

GIB = 1 << 30


def build(root: Path) -> str:
    shutil.rmtree(root, ignore_errors=True)
    host = KUBELET_SCENARIOS["machine-gpu-static"](root)
    layout = Layout()
    app, db = "a" * 64, "c" * 64
    add_container(host, layout, uid=POD_A, container_id=app, cpus={2, 3, 18, 19}, mems={0},
                  memory={(0, "anon"): 3 * GIB, (1, "file"): GIB})  # fmt: skip
    add_container(host, layout, uid=POD_B, container_id=db, cpus={8, 9, 10, 24, 25, 26}, mems={0, 1},
                  memory={(1, "anon"): 2 * GIB, (0, "anon"): GIB // 2})  # fmt: skip
    container_log(host, namespace="team-a", pod="trainer-0", container="app", container_id=app)
    container_log(host, namespace="team-b", pod="db-0", container="db", container_id=db)
    paths = host.paths
    return " ".join([
        "--no-nvml", "--no-podresources", f"--path.sysfs={paths.sysfs}", f"--path.procfs={paths.procfs}",
        f"--path.kubelet={paths.kubelet_dir}", f"--path.pod-logs={paths.pod_logs}", f"--path.cgroup={paths.cgroup}",
        f"--path.container-logs={paths.container_logs}",
    ])  # fmt: skip


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "build/demo").resolve()))
