"""Shared helpers for the benchmarks: unpack fixture trees, time things, print comparison tables."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.controlplane import ControlPlane, control_plane

ROOT = Path(__file__).resolve().parent.parent
HWLOC_FIXTURES = ROOT / "tests" / "fixtures" / "hwloc"


def unpack_hwloc_trees() -> dict[str, Path]:
    target = Path(tempfile.mkdtemp(prefix="bench-hwloc-"))
    trees = {}
    for archive in sorted(HWLOC_FIXTURES.glob("*.tar.bz2")):
        subprocess.run(["tar", "-xjf", str(archive), "-C", str(target)], check=True)
        name = archive.name.removesuffix(".tar.bz2")
        trees[name] = target / name
    return trees


def median_seconds(action: Callable[[], object], *, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def print_table(headers: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    cells = [headers, *[tuple(str(cell) for cell in row) for row in rows]]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")
        if row is headers:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


@contextmanager
def real_control_plane() -> Iterator[ControlPlane]:
    """The test suite's real control plane (etcd + kube-apiserver v1.36.2, the chart's CRD and RBAC), from
    $KUBEBUILDER_ASSETS or ../shared/k8s; the benchmark fails with the reason where neither exists."""
    yield from control_plane(Path(tempfile.mkdtemp(prefix="bench-controlplane-")))
