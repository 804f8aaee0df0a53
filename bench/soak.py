"""Load and soak: N concurrent scrapers for D seconds while cpu_manager_state changes 10 times a second.

Reports failed scrapes (goal: zero), scrape latency percentiles, refreshes done, and the daemon's resident
memory after a warm-up and at the end (goal: growth under 5 MB).

    .venv/bin/python bench/soak.py --seconds 300 --scrapers 50      # or: make soak
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table
from bench.daemon import percentile, rss_kib
from tests.daemon import Daemon, wait_for
from tests.hosttree import fixture_machine
from tests.kubelet_files import KUBELET_FIXTURES, fixture_config, install, replace_atomically

WARMUP_SECONDS = 10.0
CHANGES_PER_SECOND = 10


async def load(url: str, *, seconds: float, scrapers: int, state_file: Path) -> tuple[list[float], int, int, int]:
    states = [
        (KUBELET_FIXTURES / n).read_bytes()
        for n in ("cpu_manager_state.static-empty.json", "cpu_manager_state.static-2pods.json")
    ]
    latencies: list[float] = []
    failures = 0
    changes = 0
    stop = time.monotonic() + seconds

    async def scraper(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                    body = await response.read()
                    if response.status != 200 or b"numa_topology_resource_available" not in body:
                        failures += 1
                        continue
            except (aiohttp.ClientError, TimeoutError):
                failures += 1
                continue
            latencies.append(time.perf_counter() - started)

    async def changer() -> None:
        nonlocal changes
        while time.monotonic() < stop:
            replace_atomically(state_file, states[changes % 2])
            changes += 1
            await asyncio.sleep(1 / CHANGES_PER_SECOND)

    connector = aiohttp.TCPConnector(limit=scrapers)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(changer(), *(scraper(session) for _ in range(scrapers)))
    return latencies, failures, changes, len(latencies) + failures


def run(seconds: float, scrapers: int) -> dict[str, float]:
    host = fixture_machine(Path(tempfile.mkdtemp(prefix="soak-")))
    install(host, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    with Daemon(host.paths, extra=["--no-nvml", "--debounce", "0.05", "--no-nrt"]) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        url = daemon.base_url + "/metrics"
        asyncio.run(
            load(
                url,
                seconds=min(WARMUP_SECONDS, seconds / 4),
                scrapers=scrapers,
                state_file=host.paths.cpu_manager_state,
            )
        )
        rss_start = rss_kib(daemon.process.pid)
        latencies, failures, changes, total = asyncio.run(
            load(url, seconds=seconds, scrapers=scrapers, state_file=host.paths.cpu_manager_state)
        )
        rss_end = rss_kib(daemon.process.pid)
        refreshes = daemon.sample("numa_topology_refresh_duration_seconds_count") or 0
        alive = daemon.process.poll() is None
    return {
        "scrapes": total, "failed": failures, "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3, "changes": changes, "refreshes": refreshes,
        "rss_start_mib": rss_start / 1024, "rss_end_mib": rss_end / 1024, "alive": float(alive),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--scrapers", type=int, default=50)
    args = parser.parse_args()
    result = run(args.seconds, args.scrapers)
    print(f"{args.scrapers} concurrent scrapers for {args.seconds:.0f} s, state file replaced {CHANGES_PER_SECOND}/s")
    print_table(
        ("scrapes", "failed", "p50 ms", "p99 ms", "state changes", "refreshes", "RSS MiB after warm-up", "RSS MiB at end", "growth MiB"),
        [(int(result["scrapes"]), int(result["failed"]), f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}", int(result["changes"]),
          int(result["refreshes"]), f"{result['rss_start_mib']:.1f}", f"{result['rss_end_mib']:.1f}",
          f"{result['rss_end_mib'] - result['rss_start_mib']:.1f}")],
    )  # fmt: skip
    if result["failed"] or not result["alive"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
