"""The admin Starlette app: health, metrics, the uploads page, and any extra mounts.

Handlers are plain functions: Starlette runs them on its thread pool, so a catalog
query or an S3 check never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from sftp_gateway import metrics
from sftp_gateway.web import uploads
from sftp_gateway.web.auth import TokenGate
from sftp_gateway.web.health import Readiness

STATIC = Path(__file__).parent / "static"


def build_app(
    gateway: Any, *, token: str | None = None, mounts: Sequence[BaseRoute] = ()
) -> Starlette:
    """The admin app for `gateway`; `mounts` (Route, Mount, Router...) are served
    beside the built-in pages, behind the same token."""
    readiness = Readiness(gateway)
    collector = metrics.GatewayCollector(gateway)

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def readyz(request: Request) -> Response:
        ready, results = readiness.check()
        return JSONResponse(results, status_code=200 if ready else 503)

    def metrics_page(request: Request) -> Response:
        return Response(metrics.exposition(collector), media_type=metrics.CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
        *uploads.routes(gateway),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        *mounts,
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)])
    app.state.readiness = readiness
    return app
