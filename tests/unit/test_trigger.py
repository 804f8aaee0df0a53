"""The refresh trigger's debounce, and the pod events that skip it (a pod newly bound to the node)."""

from __future__ import annotations

import asyncio
import time

from exporter.agent.triggers import Trigger


def test_an_urgent_fire_cuts_the_debounce_short() -> None:
    async def run() -> tuple[float, float, set[str]]:
        trigger = Trigger()
        trigger.fire("cpu_manager_state")
        started = time.monotonic()
        await trigger.settle(0.3)  # nothing urgent: the whole debounce
        plain = time.monotonic() - started
        trigger.fire("cpu_manager_state")
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.02, lambda: trigger.fire("pods", urgent=True))
        await trigger.settle(5.0)  # ends when the urgent one comes
        cut = time.monotonic() - started
        return plain, cut, trigger.take()

    plain, cut, reasons = asyncio.run(run())
    assert plain >= 0.3
    assert cut < 1.0, "an urgent fire ends the debounce at once"
    assert reasons == {"cpu_manager_state", "pods"}


def test_taking_the_reasons_clears_the_urgency() -> None:
    async def run() -> float:
        trigger = Trigger()
        trigger.fire("pods", urgent=True)
        trigger.take()
        trigger.fire("memory_manager_state")
        started = time.monotonic()
        await trigger.settle(0.2)
        return time.monotonic() - started

    assert asyncio.run(run()) >= 0.2
