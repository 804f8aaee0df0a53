"""Full discovery (NUMA nodes, CPUs, hugepages, distances, numastat, PCI devices) against hwloc's lstopo.

Both read the same unpacked hwloc fixture trees. Ours runs in-process, as the daemon runs it on every
refresh; lstopo runs as a process (`lstopo-no-graphics --whole-io --of xml`), which is how hwloc is used
from the command line. A second column times our one-shot command (`python -m exporter snapshot`,
interpreter start-up included) for the process-to-process view.

    .venv/bin/python bench/discovery.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.common import median_seconds, print_table, unpack_hwloc_trees
from exporter.hardware.discovery import discover
from exporter.paths import HostPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    lstopo = shutil.which("lstopo-no-graphics")
    if lstopo is None:
        sys.exit("lstopo-no-graphics not found: install Debian's hwloc (make bench does)")
    rows = []
    for name, fsroot in unpack_hwloc_trees().items():
        paths = HostPaths(sysfs=fsroot / "sys", procfs=fsroot / "proc")
        ours = median_seconds(lambda paths=paths: discover(paths, use_nvml=False, use_udev=False), repeat=args.repeat)
        env = {**os.environ, "HWLOC_COMPONENTS": "linux,stop", "HWLOC_FSROOT": str(fsroot), "LC_ALL": "C"}
        command = [lstopo, "--whole-system", "--whole-io", "--of", "xml", "-"]
        theirs = median_seconds(
            lambda command=command, env=env: subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True),
            repeat=args.repeat,
        )
        cli = [
            sys.executable,
            "-m",
            "exporter",
            "snapshot",
            "--no-nvml",
            "--format",
            "json",
            "--path.sysfs",
            str(fsroot / "sys"),
        ]
        ours_cli = median_seconds(
            lambda cli=cli: subprocess.run(cli, stdout=subprocess.DEVNULL, check=True), repeat=max(5, args.repeat // 5)
        )
        rows.append(
            (name, f"{ours * 1e3:.2f}", f"{theirs * 1e3:.2f}", f"{theirs / ours:.1f}x", f"{ours_cli * 1e3:.0f}")
        )
    print_table(
        ("fixture", "ours in-process ms", "lstopo ms", "lstopo/ours", "ours one-shot CLI ms"),
        rows,
    )


if __name__ == "__main__":
    main()
