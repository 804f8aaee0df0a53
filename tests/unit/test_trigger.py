"""The refresh trigger's debounce, and the pod events that skip it (a pod newly bound to the node)."""

from __future__ import annotations

import asyncio
import time

from exporter.agent.triggers import Trigger


def test_an_urgent_fire_cuts_the_debounce_short() -> None:
    async def run() -> tuple[float, float, set[str], set[str]]:
        trigger = Trigger()
        trigger.fire("cpu_manager_state")
        started = time.monotonic()
        first = await trigger.next(0.3)  # nothing urgent: the whole debounce
        plain = time.monotonic() - started
        trigger.fire("cpu_manager_state")
        asyncio.get_running_loop().call_later(0.02, lambda: trigger.fire("pods", urgent=True))
        started = time.monotonic()
        second = await trigger.next(5.0)  # ends when the urgent one comes
        return plain, time.monotonic() - started, first, second

    plain, cut, first, second = asyncio.run(run())
    assert plain >= 0.3
    assert first == {"cpu_manager_state"}
    assert cut < 1.0, "an urgent fire ends the debounce at once"
    assert second == {"cpu_manager_state", "pods"}, "the burst so far is one refresh"


def test_an_urgent_fire_is_taken_with_its_refresh() -> None:
    async def run() -> float:
        trigger = Trigger()
        trigger.fire("pods", urgent=True)
        await trigger.next(0.2)
        trigger.fire("memory_manager_state")
        started = time.monotonic()
        await trigger.next(0.2)
        return time.monotonic() - started

    assert asyncio.run(run()) >= 0.2, "the next, plain, fire waits the whole debounce again"
