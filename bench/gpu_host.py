"""GPU discovery: without NVML, with NVML opened and closed on every refresh (the agent before 0.x, the
peer arm), and with one NVML session kept for the process (now); our PCIe matrix beside `nvidia-smi topo -m`.

On a real GPU host (an NVIDIA driver and libnvidia-ml.so.1 present) it measures the real library:

    .venv/bin/python bench/gpu_host.py [--repeat N]

Elsewhere it compiles tests/fakenvml/fake_nvml.c and plays the fixture machine's four GPUs, with nvmlInit
taking `--fake-init-ms` (11 ms: the H200's init/shutdown cycle with persistence mode; seconds without it):

    .venv/bin/python bench/gpu_host.py --fake-init-ms 11
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median_seconds, print_table
from exporter.hardware.discovery import discover
from exporter.paths import HostPaths
from exporter.sources import nvml
from exporter.views.render import render_topology
from tests.hosttree import fixture_machine, fixture_nvml_config

ROOT = Path(__file__).resolve().parent.parent


def fake_nvml(init_ms: int) -> HostPaths:
    """The fake library loaded in this process, the fixture machine's GPUs configured, nvmlInit taking init_ms."""
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    library = work / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o", str(library),
                    str(ROOT / "tests" / "fakenvml" / "fake_nvml.c")], check=True)  # fmt: skip
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    config = fixture_nvml_config(work / "nvml.conf")
    config.write_text(config.read_text() + f"delay_ms {init_ms}\n")
    os.environ["FAKE_NVML_CONFIG"] = str(config)
    return fixture_machine(work / "machine").paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--fake-init-ms", type=int, default=None, help="play NVML with the fake library")
    args = parser.parse_args()
    paths = fake_nvml(args.fake_init_ms) if args.fake_init_ms is not None else HostPaths()
    session = nvml.NvmlSession()
    arms = {  # in this order: NVML counts its inits, so the per-refresh arm runs before the session opens
        "without NVML": lambda: discover(paths, use_nvml=False, use_udev=False),
        "NVML per refresh (init + shutdown)": lambda: discover(paths, use_nvml=True, use_udev=False),
        "NVML session kept": lambda: discover(paths, use_nvml=True, nvml_session=session, use_udev=False),
    }
    topology = arms["NVML per refresh (init + shutdown)"]()
    gpus = len(topology.gpus)
    status = next(s for s in topology.sources if s.source == "nvml")
    if not status.up:
        sys.exit(f"NVML is not up here ({status.message}): run on a GPU host, or with --fake-init-ms")
    times = {name: median_seconds(arm, repeat=args.repeat) for name, arm in arms.items()}
    session.close()
    base = times["NVML session kept"]
    where = f"fake NVML, nvmlInit {args.fake_init_ms} ms" if args.fake_init_ms is not None else "real NVML"
    print(f"{gpus} GPUs, {where}, median of {args.repeat} refreshes, session inits {session.inits}")
    print_table(("discovery", "ms per refresh", "vs session"),
                [(name, f"{seconds * 1e3:.2f}", f"{seconds / base:.1f}x") for name, seconds in times.items()])  # fmt: skip
    print()
    matrix = render_topology(topology)
    print(matrix[matrix.find("PCIe paths") :].split("\nGPUs (NVML)")[0] if "PCIe paths" in matrix else "(no matrix)")
    if shutil.which("nvidia-smi") and args.fake_init_ms is None:
        print("nvidia-smi topo -m:")
        print(subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, check=False).stdout)


if __name__ == "__main__":
    main()
