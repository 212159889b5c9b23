"""The admin listener's one gate: a bearer token (when admin.token_env is set) and the
security headers every response carries.

A browser cannot send an Authorization header from a typed URL, so `?token=` is
accepted once: it sets an HttpOnly, SameSite=Strict cookie (a digest of the token, not
the token) and redirects to the same page without the token in the address bar.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

from sftp_gateway.addresses import canonical_ip

log = logging.getLogger(__name__)
COOKIE = "sftp_gateway_admin"
OPEN_PATHS = frozenset({"/healthz"})
SECURITY_HEADERS = {
    # Everything the page needs is served from here: no CDN, no inline script.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"sftp-gateway admin cookie", hashlib.sha256).hexdigest()


class TokenGate(BaseHTTPMiddleware):
    """Lets a request through with `Authorization: Bearer TOKEN`, the cookie, or a valid
    `?token=`; refuses anything else with 401 and one WARNING line naming the source."""

    def __init__(self, app: ASGIApp, token: str | None, open_paths: Iterable[str] = OPEN_PATHS):
        super().__init__(app)
        self.token = token
        self.cookie = cookie_value(token) if token else None
        self.open_paths = frozenset(open_paths)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await self._gate(request, call_next)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _gate(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.token is None or request.url.path in self.open_paths:
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and _same(given, self.token):
            return await self._accept_query_token(request, call_next)
        if self._has_bearer(request) or _same(request.cookies.get(COOKIE, ""), self.cookie):
            return await call_next(request)
        source = canonical_ip(request.client.host) if request.client else "unknown"
        log.warning(
            "refused %s: admin request %s %s without a valid token",
            source,
            request.method,
            request.url.path,
        )
        return PlainTextResponse(
            "admin token required: send 'Authorization: Bearer TOKEN' or open ?token=TOKEN\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="sftp-gateway admin"'},
        )

    async def _accept_query_token(
        self, request: Request, call_next: RequestResponseEndpoint
    ) -> Response:
        """A browser page: remember the token in a cookie and drop it from the URL; a
        script (curl, a scraper): answer at once."""
        if "text/html" in request.headers.get("accept", ""):
            url = request.url.remove_query_params("token")
            response: Response = RedirectResponse(str(url), status_code=303)
        else:
            response = await call_next(request)
        response.set_cookie(
            COOKIE,
            self.cookie or "",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    def _has_bearer(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and _same(credentials.strip(), self.token)


def _same(given: str, expected: str | None) -> bool:
    """Constant-time comparison; nothing matches an unset secret."""
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())
