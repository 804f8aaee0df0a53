"""A small fault-injecting HTTP proxy in front of the real API server, for what it cannot be asked for:
429 storms, 5xx, slow responses, connections refused or cut in the middle of a watch.

Everything else is forwarded unchanged (Authorization included), so authentication, RBAC, admission,
validation and watches are the real server's. The agent talks plain HTTP to the proxy; the proxy talks TLS
to the server. Every request is recorded (method, path, query, user agent, status) for the tests that
count what the agent asks for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


RECORDED = web.RequestKey("recorded", bool)
ARRIVED = web.RequestKey("arrived", float)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    user_agent: str
    status: int
    at: float = 0.0  # time.monotonic() when the request arrived

    @property
    def watch(self) -> bool:
        return "watch=true" in self.query


@dataclass
class Rule:
    matches: Callable[[str, str], bool]  # (method, path with query)
    status: int | None = None
    delay: float = 0.0
    reply_delay: float = 0.0  # after the upstream server answered: its watches report the change first
    lost_reply: int | None = None  # forwarded, then this status instead of the server's answer
    times: int | None = None  # None: until cleared


@dataclass
class Faults:
    rules: list[Rule] = field(default_factory=list)
    down: bool = False
    warning: str | None = None  # a Warning header added to every answer passed through


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._streams: set[web.StreamResponse] = set()
        self._ready = threading.Event()
        self._unrecorded = 0  # requests received whose answer (status) is not recorded yet
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False, limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # --- controls (from the test thread) ---------------------------------------------------------------

    def fail(
        self, status: int, *, when: Callable[[str, str], bool] = lambda m, p: True, times: int | None = None
    ) -> None:
        with self._lock:
            self.faults.rules.append(Rule(matches=when, status=status, times=times))

    def slow(self, seconds: float, *, when: Callable[[str, str], bool] = lambda m, p: True) -> None:
        with self._lock:
            self.faults.rules.append(Rule(matches=when, delay=seconds))

    def slow_reply(self, seconds: float, *, when: Callable[[str, str], bool] = lambda m, p: True) -> None:
        """Answers held back after the server made the change, as a slow network back would."""
        with self._lock:
            self.faults.rules.append(Rule(matches=when, reply_delay=seconds))

    def lose_replies(
        self, status: int, *, when: Callable[[str, str], bool] = lambda m, p: True, times: int | None = None
    ) -> None:
        """The server makes the change, the client gets `status` (a gateway timing out after the commit)."""
        with self._lock:
            self.faults.rules.append(Rule(matches=when, lost_reply=status, times=times))

    def warn(self, text: str) -> None:
        """Add `Warning: 299 - "<text>"` to every answer from now on, as an API server does (RFC 7234)."""
        with self._lock:
            self.faults.warning = text

    def heal(self) -> None:
        with self._lock:
            self.faults = Faults()

    def go_down(self) -> None:
        """Refuse everything and cut every open connection (watches included), as a dead server would."""
        with self._lock:
            self.faults.down = True
        self.cut_watches()

    def cut_watches(self) -> None:
        def cut() -> None:
            for stream in list(self._streams):
                transport = stream._req.transport if stream._req is not None else None  # type: ignore[attr-defined]
                if transport is not None:
                    transport.abort()

        self._loop.call_soon_threadsafe(cut)

    def requests(self, *, since: int = 0) -> list[Seen]:
        with self._lock:
            return list(self.seen[since:])

    def open_streams(self) -> int:
        """Responses being streamed right now: the open watch connections."""
        return len(self._streams)

    def mark(self) -> int:
        """The position after every request received so far: waits (briefly) for those still on their way
        to the server to be recorded, so none of them is counted as coming after the mark."""
        deadline = time.monotonic() + 5
        while True:
            with self._lock:
                if self._unrecorded == 0 or time.monotonic() > deadline:
                    return len(self.seen)
            time.sleep(0.005)

    def close(self) -> None:
        async def shutdown() -> None:
            for stream in list(self._streams):  # open watches: cut them, do not wait for their end
                transport = stream._req.transport if stream._req is not None else None  # type: ignore[attr-defined]
                if transport is not None:
                    transport.abort()
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # --- forwarding ----------------------------------------------------------------------------------

    def _rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            if self.faults.down:
                return Rule(matches=lambda m, p: True, status=-1)
            for rule in self.faults.rules:
                if rule.matches(method, path) and rule.times != 0:
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def _record(self, request: web.Request, status: int) -> None:
        request[RECORDED] = True
        with self._lock:
            self._unrecorded -= 1
            self.seen.append(
                Seen(request.method, request.path, request.query_string, request.headers.get("User-Agent", ""), status,
                     request.get(ARRIVED, 0.0))
            )  # fmt: skip

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request[ARRIVED] = time.monotonic()
        with self._lock:
            self._unrecorded += 1
        try:
            return await self._forward(request)
        except BaseException:
            with self._lock:
                if request.get(RECORDED) is None:
                    self._unrecorded -= 1
            raise

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        rule = self._rule(request.method, request.path_qs)
        if rule is not None and rule.status == -1:
            self._record(request, 0)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.status:
            self._record(request, rule.status)
            return _injected(rule.status)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        data = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=data or None
        ) as upstream:
            if rule is not None and rule.lost_reply:
                await upstream.read()
                self._record(request, rule.lost_reply)
                return _injected(rule.lost_reply)
            self._record(request, upstream.status)
            if rule is not None and rule.reply_delay:
                await asyncio.sleep(rule.reply_delay)
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS},
            )
            if self.faults.warning is not None:
                response.headers.add("Warning", f'299 - "{self.faults.warning}"')
            await response.prepare(request)
            self._streams.add(response)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            finally:
                self._streams.discard(response)
            return response


def _injected(status: int) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": f"injected {status}",
            "reason": "InjectedFault", "code": status}  # fmt: skip
    return web.json_response(body, status=status, headers={"Retry-After": "1"} if status == 429 else {})


def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
