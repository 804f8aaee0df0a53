"""/metrics for every fixture host against a committed golden file, each passing `promtool check metrics`.

Regenerate with `pytest tests/integration/test_metrics_golden.py --update-golden`, then read the diff.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.snapshot import SnapshotBuilder
from exporter.views.exposition import render_exposition
from exporter.views.metrics import CLIENT_VERSION, RefreshStats
from tests.conftest import HWLOC_NAMES
from tests.scenarios import KUBELET_SCENARIOS, nvml_config_for, scenario_paths

GOLDEN = Path(__file__).parents[1] / "golden" / "metrics"
SCENARIOS = [*HWLOC_NAMES, *KUBELET_SCENARIOS]
PROMTOOL = shutil.which("promtool")
FIXED_TIME = 1_700_000_000.0


def exposition(name: str, tmp_path: Path, hwloc_trees: dict[str, Path], nvml_config: Path) -> str:
    config = nvml_config_for(name, nvml_config)
    paths = scenario_paths(name, tmp_path / name, hwloc_trees)
    builder = SnapshotBuilder(paths, use_nvml=config is not None, use_udev=False, clock=lambda: FIXED_TIME)
    snapshot = dataclasses.replace(builder.build(), duration_seconds=0.0042)
    stats = RefreshStats()
    stats.observe(snapshot.duration_seconds)
    text = render_exposition(snapshot, refresh=stats).decode()
    # The runtime's versions are this machine's, not the fixture's: fixed in the golden files.
    for label, value in (("implementation", platform.python_implementation()), ("python_version",
                         platform.python_version()), ("prometheus_client", CLIENT_VERSION)):  # fmt: skip
        text = text.replace(f'{label}="{value}"', f'{label}="X"')
    return text


@pytest.mark.parametrize("name", SCENARIOS)
def test_metrics_match_golden(
    name: str, tmp_path: Path, hwloc_trees: dict[str, Path], nvml_config: Path, update_golden: bool
) -> None:
    text = exposition(name, tmp_path, hwloc_trees, nvml_config)
    golden = GOLDEN / f"{name}.prom"
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file for {name}: run pytest --update-golden and read the diff"
    assert text == golden.read_text()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus (make test installs it)")
@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.prom")), ids=lambda p: p.stem)
def test_golden_files_pass_promtool(golden: Path) -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=golden.read_bytes(), capture_output=True, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "", "promtool had remarks"
    assert result.stderr.decode().strip() == "", "promtool had remarks"


def test_every_product_metric_is_served(tmp_path: Path, hwloc_trees: dict[str, Path], nvml_config: Path) -> None:
    text = exposition("machine-gpu-static", tmp_path, hwloc_trees, nvml_config)
    served = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    product = {
        "numa_topology_resource_capacity", "numa_topology_resource_allocatable", "numa_topology_resource_available",
        "numa_topology_resource_stranded", "numa_topology_profile_fit", "numa_topology_profile_fit_node",
        "numa_topology_numa_node_info", "numa_topology_distance", "numa_topology_device_info",
        "numa_topology_hugepages_pages", "numa_topology_numastat_pages_total", "numa_topology_container_numa_nodes",
        "numa_topology_container_aligned", "numa_topology_stale_entries", "numa_topology_kubelet_config_info",
        "numa_topology_source_up", "numa_topology_source_errors_total", "numa_topology_last_refresh_timestamp_seconds",
        "numa_topology_refresh_duration_seconds", "numa_topology_exporter_build_info",
    }  # fmt: skip
    assert product <= served
    assert 'numa_topology_resource_stranded{numa_node="1",resource="nvidia.com/gpu",unit="integer"}' in text
    assert 'numa_topology_container_aligned{container="app",namespace="team-a",pod="trainer-0"' in text
