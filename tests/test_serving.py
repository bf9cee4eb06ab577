import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from moa_search.errors import MoASearchError
from moa_search.serving import BodyTooLarge, listen, read_body
from tests.test_server import ServerThread


def test_listening_socket_says_tcp_so_accepted_sockets_get_nodelay():
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio enables TCP_NODELAY only for these
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        assert accepted.proto == socket.IPPROTO_TCP
        accepted.close()
        client.close()
    finally:
        sock.close()


def test_busy_port_is_one_clear_error():
    first = socket.socket()
    first.bind(("127.0.0.1", 0))
    first.listen()
    try:
        with pytest.raises(MoASearchError, match=r"sim-server cannot listen on 127\.0\.0\.1:\d+"):
            listen("127.0.0.1", first.getsockname()[1], what="sim-server")
    finally:
        first.close()


def test_read_body_refuses_oversized_streams_without_content_length():
    """Over real HTTP on 127.0.0.1: a chunked upload (no Content-Length) is cut off at the limit,
    and one whose Content-Length declares too much is refused too."""
    async def echo(request):
        try:
            return PlainTextResponse(str(len(await read_body(request, 10))))
        except BodyTooLarge as exc:
            return PlainTextResponse(str(exc), status_code=413)

    def chunks(n):
        for _ in range(n):
            yield b"12345"

    with ServerThread(Starlette(routes=[Route("/", echo, methods=["POST"])])) as server:
        url = f"http://127.0.0.1:{server.port}/"
        with httpx.Client(timeout=10) as client:
            small = client.post(url, content=chunks(2))
            big = client.post(url, content=chunks(3))
            declared = client.post(url, content=b"x" * 11)
    assert "content-length" not in {k.lower() for k in big.request.headers}  # really streamed
    assert big.request.headers["transfer-encoding"] == "chunked"
    assert small.status_code == 200 and small.text == "10"
    assert big.status_code == 413 and declared.status_code == 413 and "10 bytes" in big.text
