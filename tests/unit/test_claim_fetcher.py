"""The ResourceClaims of this node's pods, read one GET each (agent/pods.py ClaimFetcher): a claim whose pods are
gone but which is still allocated keeps its devices taken (as the scheduler's allocator sees them) and is read
again at doubling intervals until it is deallocated or deleted. The API here answers from a dict: what is
tested is when the fetcher asks and what it keeps, not the API (tests/integration/test_real_dra.py does that)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from exporter.agent.pods import ClaimFetcher
from exporter.model import ContainerClaim, PodRef

PATH = "/apis/resource.k8s.io/v1/namespaces/ns/resourceclaims/gpu"


def claim(allocated: bool) -> dict[str, Any]:
    results = [{"request": "gpu", "driver": "gpu.example.com", "pool": "node-a", "device": "gpu-0"}]
    status = {"allocation": {"devices": {"results": results}}} if allocated else {}
    return {"metadata": {"namespace": "ns", "name": "gpu", "uid": "c1"}, "status": status}


class Api:
    def __init__(self) -> None:
        self.objects: dict[str, Any] = {PATH: claim(True)}
        self.gets: list[float] = []  # when each GET came
        self.lock = threading.Lock()

    def get(self, path: str) -> Any:
        with self.lock:
            self.gets.append(time.monotonic())
            return self.objects.get(path)


POD = PodRef(uid="p1", namespace="ns", name="trainer", claims=(ContainerClaim(container="c", claim="gpu"),))


@contextlib.asynccontextmanager
async def fetching(api: Api, retry_seconds: float) -> AsyncIterator[ClaimFetcher]:
    """A started fetcher that has read the pod's claim once."""
    fetcher = ClaimFetcher(api, on_change=lambda: None, retry_seconds=retry_seconds)  # type: ignore[arg-type]
    fetcher.start(asyncio.get_running_loop())
    try:
        fetcher.want([POD])
        while not fetcher.claims():
            await asyncio.sleep(0.01)
        yield fetcher
    finally:
        fetcher.stop()


def test_a_claim_outlives_its_pod_until_it_is_deallocated() -> None:
    api = Api()

    async def scenario() -> None:
        async with fetching(api, 0.2) as fetcher:
            assert [d.ref.device for d in fetcher.claims()[0].devices] == ["gpu-0"]
            gets = len(api.gets)
            fetcher.want([])  # the pod is gone; nothing deallocated the claim
            while len(api.gets) < gets + 3:  # three reads while orphaned
                await asyncio.sleep(0.01)
            assert [c.name for c in fetcher.claims()] == ["gpu"], "still allocated: its device still taken"
            first, second, third = api.gets[gets : gets + 3]
            assert third - second > 1.3 * (second - first), "read again at doubling intervals (0.2, 0.4, 0.8 s)"
            with api.lock:
                api.objects[PATH] = claim(False)  # the claim controller deallocated it
            for _ in range(500):
                if not fetcher.claims():
                    break
                await asyncio.sleep(0.01)
            assert fetcher.claims() == ()
            assert fetcher._next_orphan() is None, "forgotten once deallocated: no read is due"

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_a_claim_deleted_with_its_pod_is_forgotten() -> None:
    api = Api()

    async def scenario() -> None:
        async with fetching(api, 0.05) as fetcher:
            with api.lock:
                del api.objects[PATH]
            fetcher.want([])
            for _ in range(500):
                if not fetcher.claims():
                    break
                await asyncio.sleep(0.01)
            assert fetcher.claims() == ()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
