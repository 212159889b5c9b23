"""Browser upload links: the page (`GET /u/TOKEN`) and its tus endpoints.

The link's token is the credential: these routes never need the admin token, and a
wrong token scores in the brute-force ban like a failed SSH login (a banned address
gets 403). The upload itself runs as the link's user, with that user's permissions and
limits (upload_tus.py). Served on the admin listener under /u/ (`web.listen` unset) or
on their own listener (`web.listen`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anyio import CancelScope, to_thread
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sftp_gateway import admission as admission_module
from sftp_gateway.addresses import canonical_ip
from sftp_gateway.catalog.links import LinkStore, UploadLink
from sftp_gateway.errors import GatewayError
from sftp_gateway.filesystem import UserFilesystem
from sftp_gateway.records import ClientInfo, Principal
from sftp_gateway.transfer import FileWriter
from sftp_gateway.units import human_size
from sftp_gateway.upload.budget import Owner
from sftp_gateway.web.auth import SECURITY_HEADERS
from sftp_gateway.web.upload_tus import (
    DIGITS,
    TUS_VERSION,
    ClientDisconnect,
    FileRef,
    Position,
    TusError,
    TusUploads,
    file_name,
    header_int,
    parse_metadata,
    status_for,
    stream_patch,
    tus_response,
)

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
MAX_USER_AGENT = 255  # as the SSH version string is stored
PREFIX = "/u"
# PATCH requests streaming through one link at once (this process), and never all of
# the account's uploads.max_concurrent_per_user: a link holder cannot lock the
# account's own SFTP uploads out with stalled requests.
LINK_PATCHES = 4


def user_agent(request: Request) -> str | None:
    raw = request.headers.get("user-agent")
    if not raw:
        return None
    return "".join(ch if " " <= ch <= "~" else "?" for ch in raw)[:MAX_USER_AGENT]


def source_of(request: Request) -> str:
    return canonical_ip(request.client.host) if request.client else "unknown"


class UploadLinks:
    """Resolves a link token to a user's filesystem, refusing (and logging) the rest."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.links = LinkStore(gateway.catalog.engine)
        self._streaming: dict[str, int] = {}  # link id -> PATCH requests streaming now
        self._lock = threading.Lock()

    def patch_limit(self) -> int:
        per_user: int = self.settings.uploads.max_concurrent_per_user
        return max(1, min(LINK_PATCHES, per_user - 1))

    @contextmanager
    def streaming(self, link: UploadLink) -> Iterator[None]:
        """Hold one of the link's PATCH slots while a body streams; 429 when none is free."""
        limit = self.patch_limit()
        with self._lock:
            count = self._streaming.get(link.id, 0)
            if count >= limit:
                raise TusError(
                    429,
                    f"too many uploads through this link at once (limit {limit});"
                    " wait for one to finish",
                )
            self._streaming[link.id] = count + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._streaming[link.id] - 1
                if left:
                    self._streaming[link.id] = left
                else:
                    del self._streaming[link.id]

    def refusal_text(self, link: UploadLink) -> str:
        """Why a use of the link could not be taken (it changed since the request began)."""
        current = self.links.get(link.id)
        refusal = current.refusal() if current is not None else "this upload link was removed"
        return refusal or "this upload link can take no more uploads"

    def chunk_size(self) -> int:
        part: int = self.settings.storage.part_size
        chunk: int = self.settings.web.chunk_size
        return -(-chunk // part) * part

    def link_for(self, request: Request) -> UploadLink:
        """The usable link the URL's token names; else TusError (403/404/410), logged."""
        source = source_of(request)
        until = self.gateway.admission.banned_until(source)
        if until is not None:
            log.warning(
                "refused %s: banned until %s (upload link)",
                source,
                until.isoformat(timespec="seconds"),
            )
            raise TusError(403, "this address is banned for a while after too many failed attempts")
        link = self.links.by_token(request.path_params["token"])
        if link is None:
            self.gateway.admission.report(source, admission_module.INVALID_USER)
            log.warning(
                "refused %s: unknown upload link token (%s %s)", source, request.method, PREFIX
            )
            raise TusError(404, "this upload link is not valid: check the address you were sent")
        refusal = link.refusal()
        if refusal is not None:
            log.warning("refused %s: upload link %s: %s", source, link.id, refusal)
            raise TusError(410, refusal)
        return link

    def uploads_for(self, request: Request, link: UploadLink) -> TusUploads:
        user = self.gateway.catalog.get_user(link.user_name)
        if user is None:
            raise TusError(410, "the account of this upload link no longer exists")
        principal = Principal(
            user.name, user.home, user.permissions, user.email, compression=user.compression
        )
        client = ClientInfo(source_of(request), user_agent(request), f"web-{link.id[:8]}", link.id)
        fs = UserFilesystem(
            principal=principal,
            settings=self.settings,
            storage=self.gateway.storage,
            catalog=self.gateway.catalog,
            client=client,
            active=self.gateway.active.for_user(Owner(principal.name, client.ip)),
            services=self.gateway.uploads,
        )
        limit = self.settings.uploads.max_file_size
        max_size = min(limit, link.max_size) if link.max_size else limit
        return TusUploads(fs, link.folder, max_size)


def _render(name: str, **context: Any) -> str:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())
    return env.get_template(name).render(**context)


def _refused_page(error: TusError) -> Response:
    html = _render("upload.html", error=str(error), link=None)
    return HTMLResponse(html, status_code=error.status)


def routes(gateway: Any) -> list[BaseRoute]:
    """The page and the tus endpoints, under /u/TOKEN."""
    links = UploadLinks(gateway)

    async def page(request: Request) -> Response:
        try:
            link = await to_thread.run_sync(links.link_for, request)
            uploads = await to_thread.run_sync(links.uploads_for, request, link)
        except TusError as exc:
            return _refused_page(exc)
        html = _render(
            "upload.html",
            error=None,
            link=link,
            user=link.user_name,
            folder=link.folder or "/",
            max_size=uploads.max_size,
            max_size_text=human_size(uploads.max_size),
            chunk_size=links.chunk_size(),
            extensions=", ".join(gateway.settings.uploads.allowed_extensions),
            files_url=f"{PREFIX}/{request.path_params['token']}/files",
        )
        return HTMLResponse(html)

    async def options(request: Request) -> Response:
        return tus_response(
            204,
            {
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": "creation,termination",
                "Tus-Max-Size": str(gateway.settings.uploads.max_file_size),
            },
        )

    async def create(request: Request) -> Response:
        link = await to_thread.run_sync(links.link_for, request)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
        length = header_int(request, "Upload-Length")
        name = file_name(
            parse_metadata(request.headers.get("Upload-Metadata", "")).get("filename", "")
        )
        await to_thread.run_sync(uploads.check_new, name, length)
        token = request.path_params["token"]
        ref = FileRef.new(name, length)  # every POST is a new upload with its own URL
        location = f"{PREFIX}/{token}/files/{ref.encode(token)}"
        return tus_response(201, {"Location": location, "Upload-Offset": "0"})

    async def head(request: Request) -> Response:
        link = await to_thread.run_sync(links.link_for, request)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
        ref = FileRef.decode(request.path_params["ref"], request.path_params["token"])
        position = await to_thread.run_sync(uploads.position, ref)
        headers = {"Upload-Offset": str(position.offset), "Upload-Length": str(ref.length)}
        if position.sha256:
            headers["Upload-Sha256"] = position.sha256
        return tus_response(200, headers)

    async def patch(request: Request) -> Response:
        if request.headers.get("content-type") != "application/offset+octet-stream":
            raise TusError(415, "Content-Type must be application/offset+octet-stream")
        link = await to_thread.run_sync(links.link_for, request)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
        ref = FileRef.decode(request.path_params["ref"], request.path_params["token"])
        offset = header_int(request, "Upload-Offset")
        position = await to_thread.run_sync(uploads.position, ref)
        if offset != position.offset:
            raise TusError(
                409, f"Upload-Offset {offset} does not match the upload's offset {position.offset}"
            )
        if position.sha256:  # this upload was published (its answer was lost): done
            return tus_response(
                204, {"Upload-Offset": str(position.offset), "Upload-Sha256": position.sha256}
            )
        await to_thread.run_sync(uploads.check_new, ref.name, ref.length)
        _check_progress(request, uploads, ref, offset)
        with links.streaming(link):
            return await _patch(request, link, uploads, ref, position)

    async def _patch(
        request: Request, link: UploadLink, uploads: TusUploads, ref: FileRef, start: Position
    ) -> Response:
        writer = await to_thread.run_sync(uploads.open, ref, start)
        offset = start.offset
        log.info(
            "web upload of %s for %s from %s: PATCH at offset %d of %d (link %s)",
            ref.name,
            link.user_name,
            source_of(request),
            offset,
            ref.length,
            link.id,
        )
        try:
            position = await stream_patch(request, writer, offset, ref.length)
        except (ClientDisconnect, OSError):
            await to_thread.run_sync(writer.abandon, "the browser went away")
            return tus_response(400, {"Connection": "close"}, "the request was cut")
        except TusError as exc:
            await to_thread.run_sync(writer.abandon, str(exc))
            return tus_response(exc.status, {"Connection": "close"}, str(exc))
        except GatewayError:
            await to_thread.run_sync(writer.abandon, "refused")
            raise
        except BaseException:  # cancelled (server stopping): keep what S3 holds
            with CancelScope(shield=True):
                await to_thread.run_sync(writer.abandon, "the server stopped")
            raise
        if position < ref.length:
            await to_thread.run_sync(writer.abandon, "between two requests of the browser")
            durable = await to_thread.run_sync(uploads.position, ref)
            return tus_response(204, {"Upload-Offset": str(durable.offset)})
        return await _publish(link, writer, ref)

    async def _publish(link: UploadLink, writer: FileWriter, ref: FileRef) -> Response:
        """The last byte arrived: take one use of the link (atomically: revoked, expired
        or used up since the request began publishes nothing), then publish."""
        if not await to_thread.run_sync(links.links.reserve_use, link.id):
            text = await to_thread.run_sync(links.refusal_text, link)
            log.warning(
                "upload of %s refused at its end: upload link %s: %s", ref.name, link.id, text
            )
            await to_thread.run_sync(writer.discard, f"upload link: {text}")
            raise TusError(410, f"{text}: the file was not stored")
        try:
            record = await to_thread.run_sync(writer.commit)
        except BaseException:
            await to_thread.run_sync(links.links.release_use, link.id)
            raise
        if record is None or not record.sha256:  # never say "stored" without a record
            await to_thread.run_sync(links.links.release_use, link.id)
            await to_thread.run_sync(writer.discard, "not published")
            raise TusError(500, "the file was not stored")
        return tus_response(204, {"Upload-Offset": str(ref.length), "Upload-Sha256": record.sha256})

    async def delete(request: Request) -> Response:
        link = await to_thread.run_sync(links.link_for, request)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
        ref = FileRef.decode(request.path_params["ref"], request.path_params["token"])
        await to_thread.run_sync(uploads.terminate, ref)
        return tus_response(204)

    return [
        Route(PREFIX + "/{token}", page, methods=["GET"]),
        Route(PREFIX + "/{token}/files", options, methods=["OPTIONS"]),
        Route(PREFIX + "/{token}/files", create, methods=["POST"]),
        Route(PREFIX + "/{token}/files/{ref}", options, methods=["OPTIONS"]),
        Route(PREFIX + "/{token}/files/{ref}", head, methods=["HEAD"]),
        Route(PREFIX + "/{token}/files/{ref}", patch, methods=["PATCH"]),
        Route(PREFIX + "/{token}/files/{ref}", delete, methods=["DELETE"]),
        Mount(PREFIX + "-static", app=StaticFiles(directory=HERE / "static"), name="upload-static"),
    ]


def _check_progress(request: Request, uploads: TusUploads, ref: FileRef, offset: int) -> None:
    """A PATCH that does not end the file must carry at least one S3 part: less keeps
    nothing in S3 (only whole parts are durable between requests), so the client would
    resend the same bytes forever. Refused before any row, part or event exists."""
    declared = request.headers.get("content-length", "").strip()
    if not DIGITS.fullmatch(declared):
        return  # chunked: the writer sees the end
    end = offset + int(declared)
    if end > ref.length:
        raise TusError(413, "the request goes past Upload-Length")
    part = uploads.part_size(ref)
    if end < ref.length and int(declared) < part:
        raise TusError(
            400,
            f"a PATCH that does not end the file must send at least {part} bytes"
            f" ({human_size(part)}, one storage part); send chunks in multiples of {part} bytes",
        )


async def _tus_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, TusError):
        return tus_response(exc.status, text=str(exc))
    assert isinstance(exc, GatewayError)
    source = source_of(request)
    log.warning("upload refused from %s (upload link): %s", source, exc)
    return tus_response(status_for(exc), text=str(exc))


class SecurityHeaders:
    """The admin listener's security headers, on upload pages too (no token check)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state = getattr(app, "state", None)  # AdminServer.stop reads app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (name.lower().encode(), value.encode())
                    for name, value in SECURITY_HEADERS.items()
                    if name.lower().encode() not in present
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def build_upload_app(gateway: Any) -> ASGIApp:
    """The upload pages alone (web.listen)."""
    app = Starlette(
        routes=routes(gateway),
        exception_handlers={TusError: _tus_error, GatewayError: _tus_error},
    )
    return SecurityHeaders(app)


def shared_with_admin(gateway: Any | None, admin_app: ASGIApp) -> ASGIApp:
    """The admin app with the upload pages beside it under /u/ (no admin token there),
    unless web.listen gives them their own listener or there is no pipeline (None)."""
    if gateway is None or gateway.settings.web.listen:
        return admin_app
    return _Shared(admin_app, build_upload_app(gateway))


class _Shared:
    """/u/... and /u-static/... to the upload app, everything else to the admin app."""

    def __init__(self, admin_app: ASGIApp, upload_app: ASGIApp) -> None:
        self.admin_app = admin_app
        self.upload_app = upload_app
        self.state = getattr(admin_app, "state", None)  # AdminServer.stop reads app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        public = path.startswith((PREFIX + "/", PREFIX + "-static/"))
        if scope["type"] == "http" and public:
            await self.upload_app(scope, receive, send)
        else:
            await self.admin_app(scope, receive, send)


def upload_server(gateway: Any) -> Any:
    """Their own listener when web.listen is set (else None: see shared_with_admin)."""
    web = gateway.settings.web
    if not web.listen:
        return None
    from sftp_gateway.web.server import AdminServer

    server = AdminServer(web.host, web.port, build_upload_app(gateway))
    server.name = "web-uploads"
    return server
