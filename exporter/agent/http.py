"""The HTTP endpoints: /metrics, /healthz, /readyz, /snapshot.json and a small index page.

Nothing here reads the host: every answer comes from the refresher's current snapshot.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from exporter import __version__
from exporter.snapshot import Snapshot
from exporter.views.render import render_json

MAX_REQUEST_BYTES = 16 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only small GET/HEAD requests: everything here is read-only, and nothing needs a body."""
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="method not allowed\n", headers={"Allow": "GET, HEAD"})
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        return web.Response(status=413, text="request too large\n")
    return await handler(request)


def build_app(
    *,
    exposition: Callable[[], bytes],
    current: Callable[[], Snapshot | None],
    healthy: Callable[[], bool],
) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[_guard])

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        if healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="refresher stalled\n")

    async def readyz(_request: web.Request) -> web.Response:
        if current() is not None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="no snapshot yet\n")

    async def snapshot_json(_request: web.Request) -> web.Response:
        snapshot = current()
        if snapshot is None:
            return web.Response(status=503, text="no snapshot yet\n")
        return web.Response(text=render_json(snapshot), content_type="application/json")

    async def index(_request: web.Request) -> web.Response:
        snapshot = current()
        status = "no snapshot yet" if snapshot is None else f"{len(snapshot.topology.numa_nodes)} NUMA nodes"
        return web.Response(text=INDEX.format(version=html.escape(__version__), status=html.escape(status)),
                            content_type="text/html")  # fmt: skip

    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/snapshot.json", snapshot_json)
    return app
