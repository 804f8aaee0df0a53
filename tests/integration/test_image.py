"""The agent's image, built as `make image` builds it (image/build.sh: mmdebstrap, chroot, umoci, skopeo),
and its root filesystem run by runc as the chart runs the container: read-only root, every capability
dropped, no new privileges, the chart's user (0:0), the host's paths mounted read-only under /host.
`snapshot` on a fixture host, then `serve` scraped once. Its size goes to BENCHMARKS.md.

Without root or the tools (make system-deps installs them) it skips, and fails under
$NUMA_EXPORTER_REQUIRE_REAL (set by .ci/run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from exporter import __version__
from tests.daemon import wait_for
from tests.oracle import REQUIRE_REAL
from tests.scenarios import KUBELET_SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("mmdebstrap", "umoci", "skopeo", "runc")
pytestmark = pytest.mark.slow


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "building and running the image needs root (mmdebstrap's root mode, runc)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (make system-deps installs them)" if missing else None


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get(REQUIRE_REAL) == "1":
            pytest.fail(f"{REQUIRE_REAL}=1 but {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("image")
    build = subprocess.run(["bash", str(ROOT / "image" / "build.sh"), str(out)], capture_output=True, text=True,
                           env={**os.environ, "PYTHON": sys.executable}, check=False)  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out


@pytest.fixture
def bundle(image: Path, tmp_path: Path) -> Path:
    """The image unpacked by umoci into a runtime bundle (rootfs + the OCI runtime config)."""
    target = tmp_path / "bundle"
    unpack = subprocess.run(["umoci", "unpack", "--image", f"{image / 'oci'}:{version()}", str(target)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert unpack.returncode == 0, unpack.stderr
    return target


def version() -> str:
    return __version__


def as_the_chart_runs_it(bundle: Path, host: Path, args: list[str]) -> None:
    """The chart's securityContext in OCI runtime terms; the host network (to scrape it) and /host."""
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"][:2] == ["/opt/nte/bin/numa-topology-exporter", "serve"], "entrypoint + cmd"
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    config["root"]["readonly"] = True
    config["process"]["capabilities"] = {
        k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
    }
    config["process"]["noNewPrivileges"] = True
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/opt/nte/bin/numa-topology-exporter", *args]
    config["mounts"] = [m for m in config["mounts"] if m["destination"] not in ("/sys", "/sys/fs/cgroup")]
    config["mounts"].append({"destination": "/host", "type": "bind", "source": str(host), "options": ["rbind", "ro"]})
    config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(config))


def host_args(*extra: str) -> list[str]:
    return ["--no-nvml", "--path.sysfs=/host/sys", "--path.procfs=/host/proc", "--path.kubelet=/host/kubelet",
            "--path.pod-logs=/host/pods", "--path.cgroup=/host/sys/fs/cgroup", "--path.container-logs=/host/containers",
            *extra]  # fmt: skip


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return KUBELET_SCENARIOS["machine-gpu-static"](tmp_path / "host").root


def test_the_image_runs_snapshot_as_the_chart_runs_it(image: Path, bundle: Path, host: Path) -> None:
    archive = image / f"numa-topology-exporter-{version()}.oci.tar"
    assert archive.stat().st_size > 20 << 20
    before = tree_digest(host)
    as_the_chart_runs_it(bundle, host, ["snapshot", "--format", "metrics", *host_args()])
    name = f"nte-snapshot-{os.getpid()}"
    run = subprocess.run(["runc", "run", name], cwd=bundle, capture_output=True, text=True, timeout=120, check=False)
    subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
    assert run.returncode == 0, run.stderr
    assert 'numa_topology_container_aligned{container="app",namespace="team-a",pod="trainer-0"' in run.stdout
    assert 'numa_topology_source_up{source="cpu_manager_state"} 1.0' in run.stdout
    assert tree_digest(host) == before, "nothing written to the host's paths"


def test_the_image_serves_metrics_as_the_chart_runs_it(bundle: Path, host: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    as_the_chart_runs_it(bundle, host, ["serve", "--no-nrt", f"--web.listen-address=127.0.0.1:{port}", *host_args()])
    name = f"nte-serve-{os.getpid()}"
    process = subprocess.Popen(["runc", "run", name], cwd=bundle, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    try:

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                return None
            return body if "numa_topology_resource_capacity" in body else None

        body = wait_for(scrape, timeout=60, interval=0.2, what="the image's /metrics")
        assert 'numa_topology_container_aligned{container="db",namespace="team-b",pod="db-0"' in body
        assert "process_resident_memory_bytes" in body
    finally:
        subprocess.run(["runc", "kill", name, "TERM"], capture_output=True, check=False)
        try:
            process.wait(timeout=15)
        finally:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
    assert process.returncode == 0, process.stdout.read() if process.stdout else ""


def test_the_dockerfile_builds_the_same_thing() -> None:
    """Same base, packages, venv and entrypoint as image/build.sh (the Dockerfile needs an engine to build)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    script = (ROOT / "image" / "build.sh").read_text()
    assert "bookworm" in script
    assert "FROM debian:bookworm-slim" in dockerfile
    assert "--include=python3-venv,libudev1" in script
    assert "install -y --no-install-recommends python3-venv libudev1" in dockerfile
    assert "--config.entrypoint /opt/nte/bin/numa-topology-exporter --config.cmd serve" in script
    assert 'ENTRYPOINT ["/opt/nte/bin/numa-topology-exporter"]' in dockerfile
    assert 'CMD ["serve"]' in dockerfile
    assert "--config.user 0:0" in script
    assert "USER 0:0" in dockerfile
