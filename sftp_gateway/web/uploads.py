"""The live uploads page and its JSON API.

Uploads in progress come from this process (`ActiveUploads.snapshot()`): user, file,
bytes so far, average rate, and a percentage when the size is known in advance (SCP's
C line). Recent uploads come from the catalog (`Catalog.list_uploads`), newest first,
with their SHA-256 or the reason they failed. The page is rendered on the server and
kept current by static/uploads.js, which polls the API every second.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from sftp_gateway.catalog.repository import STATUSES

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_TEXT = 200


class BadQuery(ValueError):
    """A query parameter the API cannot use; its text names the parameter."""


def active_uploads(gateway: Any, now: datetime | None = None) -> list[dict[str, Any]]:
    """Files being written now, each with its rate and (when known) percent done."""
    now = now or datetime.now(UTC)
    out = []
    for item in gateway.active.snapshot():
        started: datetime = item["started_at"]
        elapsed = max((now - started).total_seconds(), 0.001)
        sent = item["size"] - (item["resumed_from"] or 0)
        expected = item["expected_size"]
        percent = min(100.0, 100.0 * item["size"] / expected) if expected else None
        out.append(
            {
                **item,
                "started_at": started.isoformat(),
                "elapsed": round(elapsed, 3),
                "rate": round(max(sent, 0) / elapsed),
                "percent": round(percent, 1) if percent is not None else None,
            }
        )
    return sorted(out, key=lambda u: u["started_at"])


def recent_uploads(gateway: Any, params: dict[str, str]) -> list[dict[str, Any]]:
    """Uploads from the catalog, filtered as the query asks (BadQuery names a bad one)."""
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadQuery(f"status: must be one of {', '.join(STATUSES)}")
    limit_text = params.get("limit") or str(DEFAULT_LIMIT)
    # ASCII digits only: str.isdigit() takes "²", which int() refuses (a 500)
    plain = limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= len(str(MAX_LIMIT))
    if not plain or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise BadQuery(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
    text = (params.get("q") or "").strip()
    user = (params.get("user") or "").strip()
    if len(text) > MAX_TEXT or len(user) > MAX_TEXT:
        raise BadQuery(f"q and user: at most {MAX_TEXT} characters")
    records = gateway.catalog.list_uploads(
        user=user or None, status=status, limit=int(limit_text), text=text or None
    )
    return [_public(record.as_dict()) for record in records]


def _public(row: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "id",
        "user_name",
        "path",
        "object_key",
        "status",
        "size",
        "sha256",
        "started_at",
        "completed_at",
        "client_ip",
        "error",
    )
    return {name: _plain(row.get(name)) for name in keep}


def _plain(value: Any) -> Any:
    return str(value) if value is not None and not isinstance(value, int | float | str) else value


def routes(gateway: Any) -> list[Route]:
    """/uploads (the page), /api/uploads/active and /api/uploads."""

    def api_active(request: Request) -> Response:
        now = datetime.now(UTC)
        return JSONResponse({"now": now.isoformat(), "uploads": active_uploads(gateway, now)})

    def api_recent(request: Request) -> Response:
        try:
            uploads = recent_uploads(gateway, dict(request.query_params))
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"uploads": uploads})

    def page(request: Request) -> Response:
        params = dict(request.query_params)
        try:
            recent, error = recent_uploads(gateway, params), None
        except BadQuery as exc:
            recent, error = [], str(exc)
        context = {
            "active": active_uploads(gateway),
            "recent": recent,
            "error": error,
            "params": params,
            "statuses": STATUSES,
            "human": human_size,
        }
        return TEMPLATES.TemplateResponse(
            request, "uploads.html", context, status_code=400 if error else 200
        )

    def home(request: Request) -> Response:
        return RedirectResponse("/uploads", status_code=303)

    return [
        Route("/", home),
        Route("/uploads", page),
        Route("/api/uploads/active", api_active),
        Route("/api/uploads", api_recent),
    ]


def human_size(n: int | None) -> str:
    """1.5 MiB, 320 KiB, 12 B: sizes as the page shows them."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
