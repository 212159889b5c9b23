"""Browser upload links: the page (`GET /u/TOKEN`) and its tus endpoints.

The link's token is the credential: these routes never need the admin token, and a
wrong token scores in the brute-force ban like a failed SSH login (a banned address
gets 403). The upload itself runs as the link's user, with that user's permissions and
limits (upload_tus.py). Served on the admin listener under /u/ (`web.listen` unset) or
on their own listener (`web.listen`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from anyio import to_thread
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
from sftp_gateway.units import human_size
from sftp_gateway.upload.budget import Owner
from sftp_gateway.web.auth import SECURITY_HEADERS
from sftp_gateway.web.upload_tus import (
    TUS_VERSION,
    ClientDisconnect,
    FileRef,
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
        except TusError as exc:
            return _refused_page(exc)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
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
        ref = FileRef(name, length)
        location = f"{PREFIX}/{request.path_params['token']}/files/{ref.encode()}"
        return tus_response(201, {"Location": location, "Upload-Offset": "0"})

    async def head(request: Request) -> Response:
        link = await to_thread.run_sync(links.link_for, request)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
        ref = FileRef.decode(request.path_params["ref"])
        offset = await to_thread.run_sync(uploads.offset, ref)
        return tus_response(200, {"Upload-Offset": str(offset), "Upload-Length": str(ref.length)})

    async def patch(request: Request) -> Response:
        if request.headers.get("content-type") != "application/offset+octet-stream":
            raise TusError(415, "Content-Type must be application/offset+octet-stream")
        link = await to_thread.run_sync(links.link_for, request)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
        ref = FileRef.decode(request.path_params["ref"])
        offset = header_int(request, "Upload-Offset")
        durable = await to_thread.run_sync(uploads.offset, ref)
        if offset != durable:
            raise TusError(
                409, f"Upload-Offset {offset} does not match the upload's offset {durable}"
            )
        if durable >= ref.length and ref.length > 0:
            return tus_response(204, {"Upload-Offset": str(durable)})
        await to_thread.run_sync(uploads.check_new, ref.name, ref.length)
        return await _patch(request, link, uploads, ref, offset)

    async def _patch(
        request: Request, link: UploadLink, uploads: TusUploads, ref: FileRef, offset: int
    ) -> Response:
        writer = await to_thread.run_sync(uploads.open, ref, offset)
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
            await to_thread.run_sync(writer.abandon, "the browser went away mid-request")
            return tus_response(400, text="the request was cut")
        except GatewayError:
            await to_thread.run_sync(writer.abandon, "refused")
            raise
        except TusError:
            await to_thread.run_sync(writer.abandon, "refused")
            raise
        if position < ref.length:
            await to_thread.run_sync(writer.abandon, "between two requests of a browser upload")
            durable = await to_thread.run_sync(uploads.offset, ref)
            return tus_response(204, {"Upload-Offset": str(durable)})
        record = await to_thread.run_sync(writer.commit)
        await to_thread.run_sync(links.links.count_upload, link.id)
        sha256 = record.sha256 if record is not None else ""
        return tus_response(204, {"Upload-Offset": str(position), "Upload-Sha256": sha256 or ""})

    async def delete(request: Request) -> Response:
        link = await to_thread.run_sync(links.link_for, request)
        uploads = await to_thread.run_sync(links.uploads_for, request, link)
        ref = FileRef.decode(request.path_params["ref"])
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
