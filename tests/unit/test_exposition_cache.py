"""The served exposition: a scrape renders from memory only; `process_*` are read after scrapes, at most once
every PROCESS_SECONDS."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from exporter.views import exposition
from exporter.views.exposition import CachedExposition
from exporter.views.metrics import PROCESS_SECONDS


def test_a_scrape_reads_nothing_and_process_metrics_are_read_at_most_every_period(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    renders: list[CollectorRegistry] = []
    real = exposition.generate_latest

    def counting(registry: CollectorRegistry) -> bytes:
        renders.append(registry)
        return real(registry)

    monkeypatch.setattr(exposition, "generate_latest", counting)
    now = [100.0]
    cache = CachedExposition(CollectorRegistry(), lambda: 1, process=True, clock=lambda: now[0])
    assert len(renders) == 1, "process_* read once at start"
    first = cache.body()
    assert b"process_cpu_seconds_total" in first
    for _ in range(5):
        assert cache.body() == first
    assert len(renders) == 2, "the main registry rendered once for its version; scrapes read nothing else"
    cache.refresh_process()
    assert len(renders) == 2, "not again within the period"
    now[0] += PROCESS_SECONDS
    cache.refresh_process()
    assert len(renders) == 3, "once the period has passed"
