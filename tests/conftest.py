from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane import ControlPlane, control_plane
from tests.faultproxy import FaultProxy, fault_proxy
from tests.hosttree import HostTree, fixture_machine
from tests.oracle import REQUIRE_REAL

FIXTURES = Path(__file__).parent / "fixtures"
HWLOC_FIXTURES = FIXTURES / "hwloc"
KUBELET_FIXTURES = FIXTURES / "kubelet"
HWLOC_NAMES = sorted(path.name.removesuffix(".tar.bz2") for path in HWLOC_FIXTURES.glob("*.tar.bz2"))


@pytest.fixture(scope="session")
def hwloc_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every hwloc fixture unpacked once per session: name -> fsroot (holds sys/ and proc/)."""
    root = tmp_path_factory.mktemp("hwloc")
    trees = {}
    for name in HWLOC_NAMES:
        # GNU tar: ten times faster than tarfile on these trees of thousands of small files.
        subprocess.run(["tar", "-xjf", str(HWLOC_FIXTURES / f"{name}.tar.bz2"), "-C", str(root)], check=True)
        trees[name] = root / name
    return trees


@pytest.fixture
def host(tmp_path: Path) -> HostTree:
    return HostTree(tmp_path / "host")


@pytest.fixture
def machine(tmp_path: Path) -> HostTree:
    """The 2-NUMA, 32-CPU, 4-GPU, 8-VF machine the kubelet fixtures assume."""
    return fixture_machine(tmp_path / "machine")


@pytest.fixture(scope="session")
def fake_nvml_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fakenvml/fake_nvml.c compiled with gcc as libnvidia-ml.so.1 and loaded into this process.

    Loading it first by full path makes pynvml's own `CDLL("libnvidia-ml.so.1")` find it by soname, so the
    real pynvml code runs against it. Its behaviour comes from $FAKE_NVML_CONFIG at nvmlInit time.
    """
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required to build the fake NVML library (make test installs it)")
    directory = tmp_path_factory.mktemp("fakenvml")
    library = directory / "libnvidia-ml.so.1"
    source = Path(__file__).parent / "fakenvml" / "fake_nvml.c"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-Wl,-soname,libnvidia-ml.so.1",
            "-o",
            str(library),
            str(source),
        ],
        check=True,
    )
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    return library


@pytest.fixture
def nvml_config(fake_nvml_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A path to write the fake NVML configuration to; $FAKE_NVML_CONFIG points at it for this test."""
    config = tmp_path / "nvml.conf"
    config.write_text("")
    monkeypatch.setenv("FAKE_NVML_CONFIG", str(config))
    # NVML counts its inits: a session an earlier test's builder kept open would keep this process's NVML
    # initialised. Each test starts from none, as a fresh agent does.
    library = ctypes.CDLL(str(fake_nvml_library))
    while library.nvmlShutdown() == 0:
        pass
    return config


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current code (read the diff before committing it)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The real control plane (etcd + kube-apiserver v1.36.2), started once per session; the scheduler is
    started by the tests that need it (`kube.start_scheduler()`)."""
    yield from control_plane(tmp_path_factory.mktemp("controlplane"))


@pytest.fixture
def proxy(kube: ControlPlane) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's real API server, recording every request."""
    yield from fault_proxy(kube.url)


@pytest.fixture
def node(request: pytest.FixtureRequest, kube: ControlPlane) -> str:
    """A Node of this test's own (the server is shared by the session)."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:50] + f"-{time.monotonic_ns() % 10**6}"
    kube.add_node(name)
    return name


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many inputs the fuzz targets tried (tests/unit/test_fuzz.py), how fast NRT recovered from each fault
    (tests/integration/test_faults.py), and how many generated cases the kubelet-oracle suites compared: the figures
    RELIABILITY.md and BENCHMARKS.md report."""
    recovery: dict[str, float] = {}
    for module in ("tests.integration.test_faults", "tests.integration.test_kube", "tests.integration.test_real_faults"):
        recovery.update(getattr(sys.modules.get(module), "RECOVERY_SECONDS", {}))
    if recovery:
        terminalreporter.write_sep("-", "faults: seconds from recovery to NRT showing the right content")
        for fault, seconds in sorted(recovery.items()):
            terminalreporter.write_line(f"{seconds:8.2f}  {fault}")
    for module, title in (
        ("tests.integration.test_oracle_differential", "generated node states compared"),
        ("tests.integration.test_doctor_oracle", "kubelet configurations judged"),
        ("tests.integration.test_scheduler_e2e", "real scheduler, kubelet played by the oracle"),
        ("tests.integration.test_real_nodes", "real scheduler, real kubelets"),
        ("tests.integration.test_cluster_view", "fit against the real scheduler's NodeResourceTopologyMatch filter"),
    ):
        counts = getattr(sys.modules.get(module), "COUNTS", None)
        if counts:
            terminalreporter.write_sep("-", title if "fit" in title else f"kubelet-oracle: {title}")
            for what, count in sorted(counts.items()):
                terminalreporter.write_line(f"{count:8d}  {what}")
    fuzz = sys.modules.get("tests.unit.test_fuzz")
    tried = getattr(fuzz, "TRIED", None)
    if not tried:
        return
    terminalreporter.write_sep("-", f"fuzz: {sum(tried.values())} inputs tried")
    for target, count in sorted(tried.items()):
        terminalreporter.write_line(f"{count:8d}  {target}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """The one place every skip goes through: under NUMA_EXPORTER_REQUIRE_REAL=1 (.ci/run) a skipped test,
    whatever skipped it (a skipif mark, pytest.skip, a missing tool or binary), fails with its reason: a
    broken install must not make CI green."""
    outcome: Any = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_REAL) == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_REAL}=1: this test would have been skipped ({reason})"
