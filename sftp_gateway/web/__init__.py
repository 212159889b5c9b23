"""The admin HTTP listener: /metrics, /healthz, /readyz and the live /uploads page.

`serve` starts it when `admin.listen` is set (AdminServer: uvicorn with its own event
loop on a background thread, stopped by Gateway.stop). It is a Starlette app built by
`build_app(gateway, token=..., mounts=[...])`.

Adding pages (for example the browser upload links) is one line: give `build_app` more
routes or mounts, and they get the same token check and security headers::

    from starlette.routing import Mount
    build_app(gateway, token=token, mounts=[Mount("/links", app=links_app)])

`admin_server()` is where the Gateway builds it; add the new routes to `EXTRA_MOUNTS`
there (or pass them to build_app in a test). Only /healthz is reachable without the
token when `admin.token_env` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sftp_gateway.web.server import AdminServer

# Routes/mounts every admin app serves beside the built-in pages (one line per feature).
EXTRA_MOUNTS: list[Any] = []


def admin_server(gateway: Any, *, uploads_via: Any = "gateway") -> AdminServer | None:
    """The admin listener for this gateway, or None when `admin.listen` is not set.
    `uploads_via`: what serves the browser upload links under /u/ (the gateway itself
    by default; the supervisor's own pipeline with workers; None: no upload pages)."""
    admin = gateway.settings.admin
    if not admin.listen:
        return None
    from sftp_gateway.web.app import build_app
    from sftp_gateway.web.server import AdminServer
    from sftp_gateway.web.upload_page import shared_with_admin

    pipeline = gateway if uploads_via == "gateway" else uploads_via
    admin_app = build_app(gateway, token=admin.token(), mounts=EXTRA_MOUNTS)
    app = shared_with_admin(pipeline, admin_app)  # browser upload links under /u/ (own token)
    return AdminServer(admin.host, admin.port, app)
