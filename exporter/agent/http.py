"""The HTTP endpoints: /metrics, /healthz, /readyz, /snapshot.json and a small index page.

Nothing here reads the host: every answer comes from the refresher's current snapshot. The server is
asyncio's own (`asyncio.start_server`, TLS included) with `h11`, the HTTP/1.1 state machine, parsing and
framing: five read-only GET routes need no web framework, and aiohttp's 14 MiB were a fifth of the agent's
resident memory (BENCHMARKS.md, "Beside the real peer"). Only small GET and HEAD requests are served;
a connection idle past its keep-alive, or slow to send its request, is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import h11
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from exporter import __version__
from exporter.snapshot import Snapshot
from exporter.views.render import render_json

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
REQUEST_SECONDS = 10.0  # to receive a whole request once its first byte came
KEEP_ALIVE_SECONDS = 75.0  # an idle connection between requests (aiohttp's and nginx's default)
READ_BYTES = 64 * 1024
# After refusing a request whose body or rest was not read: what is still read (and dropped) before the close,
# so that the kernel does not reset the connection over unread data and take the refusal with it.
LINGER_SECONDS = 1.0
LINGER_BYTES = 4 << 20
SERVER = f"numa-topology-exporter/{__version__}"

INDEX = """<!doctype html>
<html><head><title>numa-topology-exporter</title></head>
<body>
<h1>numa-topology-exporter {version}</h1>
<p>{status}</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="snapshot.json">/snapshot.json</a>: the current snapshot</li>
<li><a href="healthz">/healthz</a>, <a href="readyz">/readyz</a>: probes</li>
</ul>
</body></html>
"""

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT
    extra: tuple[tuple[str, str], ...] = ()
    then: Callable[[], None] | None = None  # run once the answer is sent (never delays it)


class Endpoints:
    """What each path answers, from the refresher's state (no I/O)."""

    def __init__(
        self,
        *,
        exposition: Callable[[], bytes],
        current: Callable[[], Snapshot | None],
        healthy: Callable[[], bool],
        after_scrape: Callable[[], None] | None = None,
    ) -> None:
        self._exposition, self._current, self._healthy = exposition, current, healthy
        self._after_scrape = after_scrape
        self._routes: dict[str, Callable[[], Answer]] = {
            "/": self.index,
            "/metrics": self.metrics,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/snapshot.json": self.snapshot_json,
        }

    def answer(self, method: str, target: str, content_length: int) -> Answer:
        if method not in ("GET", "HEAD"):
            return Answer(405, b"method not allowed\n", extra=(("Allow", "GET, HEAD"),))
        if content_length > MAX_REQUEST_BYTES:
            return Answer(413, b"request too large\n")
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return Answer(404, b"404: Not Found")
        return route()

    def metrics(self) -> Answer:
        return Answer(200, self._exposition(), CONTENT_TYPE_LATEST, then=self._after_scrape)

    def healthz(self) -> Answer:
        return Answer(200, b"ok\n") if self._healthy() else Answer(503, b"refresher stalled\n")

    def readyz(self) -> Answer:
        return Answer(200, b"ready\n") if self._current() is not None else Answer(503, b"no snapshot yet\n")

    def snapshot_json(self) -> Answer:
        snapshot = self._current()
        if snapshot is None:
            return Answer(503, b"no snapshot yet\n")
        return Answer(200, render_json(snapshot).encode(), "application/json; charset=utf-8")

    def index(self) -> Answer:
        snapshot = self._current()
        status = "no snapshot yet" if snapshot is None else f"{len(snapshot.topology.numa_nodes)} NUMA nodes"
        page = INDEX.format(version=html.escape(__version__), status=html.escape(status))
        return Answer(200, page.encode(), "text/html; charset=utf-8")


class HttpServer:
    """The endpoints on one listening address (TLS where a context is given)."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str | None, port: int, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen; raises OSError (a port in use, an address not here)."""
        self._server = await asyncio.start_server(self._serve, host, port, ssl=ssl_context, reuse_address=True)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [(str(sock.getsockname()[0]), int(sock.getsockname()[1])) for sock in self._server.sockets]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            connection = Connection(self.endpoints, reader, writer)
            await connection.run()
            if connection.unread:
                await _linger(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass  # the client went away, or never finished: nothing to answer
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()


class Connection:
    """One client connection: requests answered in order until either side closes."""

    def __init__(self, endpoints: Endpoints, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.endpoints, self.reader, self.writer = endpoints, reader, writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self.unread = False  # the connection ends with the client's input not read to its end

    async def run(self) -> None:
        while True:
            request = await self._next_request()
            if request is None:
                return
            answer = self._answer(request)
            await self._send(answer, head=request.method == b"HEAD", close=answer.status in (405, 413))
            if answer.then is not None:
                answer.then()
            if not self._request_read() or self.h11.our_state is not h11.DONE:
                self.unread = self.h11.their_state is not h11.DONE
                return  # a request body not read (a refused upload), or a close asked for: close
            self.h11.start_next_cycle()

    async def _next_request(self) -> h11.Request | None:
        """The next request's head, or None where the client closed or sent something that is not HTTP
        (answered 400 where it can be)."""
        timeout = KEEP_ALIVE_SECONDS
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, "bad request\n")
                return None
            if isinstance(event, h11.Request):
                if (
                    len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers)
                    > MAX_REQUEST_BYTES
                ):
                    await self._refuse(431, "request header fields too large\n")
                    return None
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_BYTES), timeout)
                except TimeoutError:
                    return None
                self.h11.receive_data(data)
                timeout = REQUEST_SECONDS
            # anything else (a request body's Data, EndOfMessage of a body-less request) is skipped

    def _request_read(self) -> bool:
        """Whether the request is read to its end from what has arrived (a GET's end comes with its head)."""
        while self.h11.their_state is h11.SEND_BODY:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return False
        return self.h11.their_state is h11.DONE

    def _answer(self, request: h11.Request) -> Answer:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        length = 0
        for name, value in request.headers:
            if name == b"content-length":
                length = int(value)  # h11 checked it is a number
        try:
            return self.endpoints.answer(method, target, length)
        except Exception:
            log.exception("%s %s failed", method, target)
            return Answer(500, b"internal error\n")

    async def _send(self, answer: Answer, *, head: bool = False, close: bool = False) -> None:
        """The answer framed by h11; `close` (a request body left unread, a request refused) ends the
        connection after it."""
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            ("Server", SERVER),
            *answer.extra,
            *((("Connection", "close"),) if close else ()),
        ]
        data = self.h11.send(h11.Response(status_code=answer.status, headers=headers)) or b""
        if not head and answer.body:
            data += self.h11.send(h11.Data(data=answer.body)) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        self.writer.write(data)
        await self.writer.drain()

    async def _refuse(self, status: int, text: str) -> None:
        """A request that cannot be served (not HTTP, headers too large), answered where the state allows."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send(Answer(status, text.encode()), close=True)
            self.unread = True


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The answer is sent; end our side and read what the client still sends, up to LINGER_BYTES for up to
    LINGER_SECONDS, before the close (a close over unread input is a reset, which may reach the client before
    the answer does: seen in CI as ECONNRESET on a refused 1 MiB upload)."""
    if writer.can_write_eof():
        writer.write_eof()
    loop = asyncio.get_running_loop()
    deadline, left = loop.time() + LINGER_SECONDS, LINGER_BYTES
    with contextlib.suppress(TimeoutError, OSError):
        while left > 0:
            chunk = await asyncio.wait_for(reader.read(min(left, READ_BYTES)), max(deadline - loop.time(), 0))
            if not chunk:
                return
            left -= len(chunk)
