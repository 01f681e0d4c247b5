"""create_app(settings) -> FastAPI: the routes, and a lifespan that starts and stops the running parts.

Nothing is built at import time: tests and the CLI create as many apps as they need, each with its
own settings.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, db, frames, limits, proxies, resources, runtime
from .api import audit, http, sse, webhooks, websocket
from .auth import install_log_redaction
from .codes import CloseCode
from .config import Settings
from .messages import MAX_MESSAGE_BYTES

logger = logging.getLogger("herald.app")

FRONTEND_DIST = resources.path("dashboard")  # the built dashboard: the wheel's copy, else frontend/dist


class Server(uvicorn.Server):
    """uvicorn, draining Herald's clients first when it shuts down.

    uvicorn waits for open connections before it runs the lifespan's shutdown, and an SSE stream never
    ends by itself, so without this every open stream would hold the process for the whole graceful
    timeout. Draining first closes WebSockets with `close_code` (1001; 1012 when a reload replaces this
    worker) and ends streams at once.
    """

    close_code: CloseCode = CloseCode.GOING_AWAY

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        running: runtime.Runtime | None = getattr(getattr(app, "state", None), "runtime", None)
        if running is not None:
            await runtime.drain(running, code=self.close_code)
        await super().shutdown(sockets)


def server_config(
    app: FastAPI, settings: Settings, *, host: str, port: int, log_level: str = "info", access_log: bool = True
) -> uvicorn.Config:
    """uvicorn settings that are part of the contract, shared by the CLI, the tests and the benchmarks."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn's httptools protocol, with limits on how long and how large a request's headers are
        http=limits.http_protocol(
            header_timeout_s=settings.header_timeout_s, max_header_bytes=settings.max_header_bytes
        ),
        ws=frames.protocol(),  # uvicorn's default (websockets-sansio), plus frames encoded once per event
        ws_max_size=MAX_MESSAGE_BYTES,  # a larger message closes the socket with 1009
        ws_per_message_deflate=False,  # compressing every message once per client costs ~20x at fan-out
        timeout_graceful_shutdown=5,  # open connections must not hold the process at shutdown
        log_level=log_level,
        access_log=access_log,  # applied while the Config is built: setting it later does nothing
        log_config=None,  # uvicorn's lines go through the root logger, formatted by logs.py like ours
        proxy_headers=False,  # forwarded headers are read by proxies.Edge, from HERALD_TRUSTED_PROXIES only
        lifespan="on",
    )


WORKER_HEADER = b"x-herald-worker"


class WorkerHeader:
    """ASGI middleware: every HTTP response and every WebSocket handshake names the worker that served it."""

    def __init__(self, app: ASGIApp, *, worker: str) -> None:
        self.app = app
        self.header = (WORKER_HEADER, worker.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


def create_app(settings: Settings, *, frontend_dist: Path | None = FRONTEND_DIST, worker: str | None = None) -> FastAPI:
    """The whole service as an ASGI app. `frontend_dist`: the built dashboard to serve at `/`. `worker`:
    this process's name among `serve --workers N`'s, sent as `X-Herald-Worker` and put on its metrics."""
    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = await runtime.start(settings)
        app.state.runtime = running  # what api/dependencies.py hands out, one part per route
        running.metrics.worker = worker
        running.start_background()
        logger.info("herald ready on %s", db.redact(running.database_url))
        try:
            yield
        finally:
            await runtime.stop(running)

    app = FastAPI(
        title="Herald",
        version=__version__,  # the release: the document also describes its extensions, which change with it
        summary="Durable real-time notifications: a PostgreSQL event log with WebSocket and SSE delivery.",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_credentials=False,  # bearer tokens, never cookies
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    # Forwarded headers of trusted proxies, and a request id for the logs (echoed as X-Request-ID).
    app.add_middleware(proxies.Edge, trusted_proxies=settings.trusted_proxies)
    if worker is not None:
        app.add_middleware(WorkerHeader, worker=worker)
    # Outermost: a request past the limit costs a counter and a JSON 503, nothing else.
    app.add_middleware(limits.ConcurrencyLimit, limit=settings.limit_concurrency)
    app.include_router(websocket.router)
    app.include_router(sse.router)
    app.include_router(webhooks.router)
    app.include_router(audit.router)
    http.install(app, frontend_dist=frontend_dist)
    return app
