"""SIGTERM during a slow read: how long the real daemon takes to exit while a refresh is inside nvmlInit.

The fake libnvidia-ml (tests/fakenvml) is compiled and told to take --delay-ms in nvmlInitWithFlags (a GPU
without persistence mode takes seconds); once a refresh is inside it (the library's marker file exists),
SIGTERM is sent and the time to exit measured. Before refreshes ran in daemon threads, exit took the whole
call (5.14 s for 5,000 ms); tests/integration/test_serve.py asserts under a second.

    .venv/bin/python bench/shutdown.py [--runs 5] [--delay-ms 5000]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon import Daemon, wait_for
from tests.hosttree import fixture_machine, fixture_nvml_config
from tests.kubelet_files import fixture_config, install

FAKE_NVML = Path(__file__).resolve().parent.parent / "tests" / "fakenvml" / "fake_nvml.c"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay-ms", type=int, default=5000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shutdown-"))
    host = fixture_machine(work / "machine")
    install(host, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    library = work / "lib" / "libnvidia-ml.so.1"
    library.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(FAKE_NVML)], check=True)
    gpus = fixture_nvml_config(work / "gpus").read_text()
    config = work / "nvml"
    env = {"LD_LIBRARY_PATH": str(library.parent), "FAKE_NVML_CONFIG": str(config)}
    exits = []
    for run in range(args.runs):
        config.write_text(gpus)
        with Daemon(host.paths, extra=["--resync-interval", "0.2", "--debounce", "0"], env=env) as daemon:
            wait_for(lambda d=daemon: d.get("/readyz")[0] == 200, what="readiness")
            marker = work / f"in-init-{run}"
            config.write_text(gpus + f"delay_ms {args.delay_ms} {marker}\n")
            wait_for(marker.exists, what="a refresh inside nvmlInit")
            started = time.monotonic()
            daemon.stop(signal.SIGTERM)
            exits.append(time.monotonic() - started)
    print(f"nvmlInit taking {args.delay_ms} ms; SIGTERM to exit over {args.runs} runs: "
          + ", ".join(f"{seconds:.3f} s" for seconds in exits)
          + f" (max {max(exits):.3f} s, {max(exits) / (args.delay_ms / 1000):.1%} of the call)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
