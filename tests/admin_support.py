"""Helpers for the admin HTTP listener tests: a serve with `admin.listen` on a free port,
plain HTTP requests to it, its metrics parsed, and an S3 endpoint that can stop answering."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import deep_merge, free_port
from tests.serving import ServeProcess


@dataclass
class AdminServe:
    """A `serve` process and the base URL of its admin listener."""

    served: ServeProcess
    url: str


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: str


def serve_with_admin(
    serve_factory: Callable[..., ServeProcess], extra: dict[str, Any] | None = None, **kwargs: Any
) -> AdminServe:
    port = free_port()
    config = deep_merge({"admin": {"listen": f"127.0.0.1:{port}"}}, extra or {})
    served = serve_factory(config, **kwargs)
    return AdminServe(served, f"http://127.0.0.1:{port}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 15) -> HttpAnswer:
    """GET without following redirects; any status comes back as an answer."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return HttpAnswer(response.status, _lower(response.headers), response.read().decode())
    except urllib.error.HTTPError as err:
        return HttpAnswer(err.code, _lower(err.headers), err.read().decode())


def _lower(headers: Any) -> dict[str, str]:
    """Header names in lower case (HTTP names are case-insensitive)."""
    return {name.lower(): value for name, value in headers.items()}


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    """/metrics as {(sample name, labels): value}."""
    answer = http_get(url + "/metrics", headers)
    assert answer.status == 200, answer.body
    samples: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(answer.body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset], float], name: str) -> float:
    """A sample summed over all its label values."""
    return sum(v for (n, _), v in samples.items() if n == name)


class SwitchableProxy:
    """A TCP proxy on loopback in front of S3 that can stop answering: while down, it
    accepts connections and never replies (a hung endpoint), then forwards again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._up = threading.Event()
        self._up.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        self._up.clear()

    def up(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()
        self._up.set()

    def close(self) -> None:
        self._server.close()
        self.up()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._up.is_set():
                self._held.append(client)  # never answered
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                if not self._up.is_set():
                    break  # went down: stop answering on open connections too
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
