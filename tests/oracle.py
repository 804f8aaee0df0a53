"""The kubelet's own resource-manager code (`kubelet-oracle`, ../shared/k8s/oracle/README.md) as a test peer.

Where our accounting and the oracle disagree, we are wrong. The binary is found in $KUBEBUILDER_ASSETS, else
unpacked from ../shared/k8s by its `unpack` script. Without either, tests that need it skip with the reason;
with $NUMA_EXPORTER_REQUIRE_REAL=1 (set by .ci/run) they fail instead, so CI cannot pass by skipping them.

Also the bridge between one generated machine description and both sides: the oracle's request `machine`
and our `Topology`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from exporter.model import Cpu, HugepagePool, NumaNode, PciDevice, Topology

SHARED_K8S = Path(__file__).resolve().parents[2] / "shared" / "k8s"
REQUIRE_REAL = "NUMA_EXPORTER_REQUIRE_REAL"
GIB = 1 << 30


@cache
def _find(binary: str) -> tuple[Path | None, str]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        candidate = Path(assets) / binary
        if candidate.exists():
            return candidate, ""
        return None, f"$KUBEBUILDER_ASSETS={assets} holds no {binary}"
    unpack = SHARED_K8S / "unpack"
    if not unpack.exists():
        return None, f"no {binary}: set KUBEBUILDER_ASSETS, or put ../shared/k8s beside the project"
    done = subprocess.run([str(unpack)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None, f"{unpack} failed: {done.stderr.strip()}"
    candidate = Path(done.stdout.strip()) / binary
    if not candidate.exists():
        return None, f"{unpack} gave no {binary}"
    return candidate, ""


def asset(binary: str) -> Path:
    """The path of a control-plane binary, or skip (fail under $NUMA_EXPORTER_REQUIRE_REAL) with the reason."""
    path, reason = _find(binary)
    if path is None:
        if os.environ.get(REQUIRE_REAL) == "1":
            pytest.fail(f"{REQUIRE_REAL}=1 but {reason}")
        pytest.skip(reason)
    return path


def refusal(request: Mapping[str, Any]) -> str | None:
    """Why the kubelet would not start with the request's configuration and state (None: it starts). A
    configuration the kubelet panics on while loading (a locked feature gate turned off) is refused too."""
    done = subprocess.run([str(asset("kubelet-oracle")), "-quiet"], input=json.dumps(request), capture_output=True,
                          text=True, check=False, timeout=120)  # fmt: skip
    if done.returncode == 2 and not done.stdout.strip():
        panic = next((line for line in done.stderr.splitlines() if line.startswith("panic: ")), None)
        assert panic is not None, done.stderr[-2000:]
        return panic
    answer = json.loads(done.stdout)
    error = answer.get("error") or next((r["error"] for r in answer.get("results", []) if r.get("error")), None)
    return str(error) if error else None


def ask(request: Mapping[str, Any]) -> dict[str, Any]:
    """Run one oracle request; the answer (exit code 3, a failed query, is an answer too)."""
    done = subprocess.run(
        [str(asset("kubelet-oracle")), "-quiet"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode not in (0, 2, 3) or not done.stdout.strip():
        raise AssertionError(f"kubelet-oracle exited {done.returncode}: {done.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@dataclass(frozen=True)
class MachineSpec:
    """One machine, described once for both sides. `cpus`: (id, socket, core, numa); `memory`: NUMA id ->
    bytes (every NUMA node, CPU-less ones included); `hugepages`: NUMA id -> {page bytes: pages};
    `devices`: (id, plugin-reported NUMA nodes or () for none, hardware NUMA node)."""

    cpus: Sequence[tuple[int, int, int, int]]
    memory: Mapping[int, int]
    hugepages: Mapping[int, Mapping[int, int]] = field(default_factory=dict)
    devices: Mapping[str, Sequence[tuple[str, tuple[int, ...], int]]] = field(default_factory=dict)

    def oracle_machine(self) -> dict[str, Any]:
        return {
            "cpus": [{"id": c, "core": core, "socket": s, "numa": n} for c, s, core, n in sorted(self.cpus)],
            "numa": [
                {
                    "id": numa,
                    "memory": str(size),
                    "hugepages": {_page_name(page): count for page, count in self.hugepages.get(numa, {}).items()},
                    "distances": [10 if other == numa else 20 for other in sorted(self.memory)],
                }
                for numa, size in sorted(self.memory.items())
            ],
        }

    def oracle_devices(self) -> dict[str, list[dict[str, Any]]]:
        return {
            resource: [{"id": device, "numa": list(numa)} for device, numa, _ in devices]
            for resource, devices in self.devices.items()
        }

    def topology(self) -> Topology:
        siblings: dict[tuple[int, int, int], set[int]] = {}
        for cpu, socket, core, numa in self.cpus:
            siblings.setdefault((socket, core, numa), set()).add(cpu)
        cpus = tuple(
            Cpu(cpu=cpu, core_id=core, socket_id=socket, siblings=frozenset(siblings[(socket, core, numa)]))
            for cpu, socket, core, numa in sorted(self.cpus)
        )

        nodes = tuple(
            NumaNode(
                numa_node=numa,
                cpus=frozenset(cpu for cpu, _, _, n in self.cpus if n == numa),
                memory_total_bytes=size,
                memory_free_bytes=size // 2,
                hugepages=tuple(
                    HugepagePool(size_bytes=page, total_pages=count, free_pages=count)
                    for page, count in sorted(self.hugepages.get(numa, {}).items())
                ),
                distances={other: 10 if other == numa else 20 for other in self.memory},
                numastat={},
            )
            for numa, size in sorted(self.memory.items())
        )
        pci = tuple(
            PciDevice(
                address=device,
                vendor_id="0x10de",
                device_id="0x2330",
                class_code=0x030200,
                numa_node=hardware,
                kind="gpu",
                category="gpu",
            )
            for devices in self.devices.values()
            for device, _, hardware in devices
        )
        return Topology(numa_nodes=nodes, cpus=cpus, pci_devices=pci, gpus=())


def _page_name(size: int) -> str:
    return f"{size // GIB}Gi" if size % GIB == 0 else f"{size >> 20}Mi"
