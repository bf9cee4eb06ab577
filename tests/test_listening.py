import socket

import pytest

from moa_search.errors import MoASearchError
from moa_search.listening import listen


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
