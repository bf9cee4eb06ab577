"""A real HTTP server on 127.0.0.1 whose replies a test scripts: any status, reason phrase,
header or body, so tests can make an upstream misbehave in ways the sim-server does not (echo a
key, answer as another model, report llama.cpp ``timings``). Standard library only; threads, so
calls really overlap and ``max_in_flight`` counts what the client had on the wire."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> as is; None -> a chat completion echoing the model
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    delay_s: float = 0.0


def chat_body(model: str, content: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}, **extra}


class ScriptedServer:
    """``reply(body, headers) -> Reply`` answers every POST; requests are recorded."""

    def __init__(self, reply: Callable[[dict[str, Any], dict[str, str]], Reply] | None = None):
        self.reply = reply or (lambda body, headers: Reply())
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
                body = json.loads(raw or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append((body, headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    r = server.reply(body, headers)
                    time.sleep(r.delay_s)
                    payload = r.body if r.body is not None else chat_body(body.get("model", "?"))
                    data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self.send_response(r.status, r.reason)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in r.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
