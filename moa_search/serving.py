"""Plumbing our two HTTP servers (``serve`` and ``sim-server``) share: the listening socket and
size-limited request bodies.

The socket is bound before uvicorn starts, so a busy port is one clear error rather than a SystemExit. Made
with ``proto=IPPROTO_TCP`` on purpose: asyncio sets TCP_NODELAY only on accepted sockets whose
proto says TCP, and without it uvicorn's body write (sent after the headers) waits for the
client's delayed ACK: ~40 ms on every quick answer (measured in benchmarks/serve_load.py).
"""

from __future__ import annotations

import socket

from starlette.requests import Request

from .errors import MoASearchError


class BodyTooLarge(Exception):
    """The request body exceeded the limit; each server answers it in its own error format."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"request body exceeds {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing early on a declared Content-Length and while streaming otherwise, so
    an oversized upload is never held in memory whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def listen(host: str, port: int, *, what: str = "server", backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise MoASearchError(f"{what} cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
