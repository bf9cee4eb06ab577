"""A FAKE llama.cpp server, for tests that cannot load a real model.

It takes the command line of ``python -m llama_cpp.server`` and speaks the part of its
OpenAI-compatible API that moa_search uses (``GET /v1/models``, ``POST /v1/chat/completions``
with ``usage``, ``seed``, and HTTP 400 ``context_length_exceeded``), one request at a time as
the real server does. It is not a model: an answer is a hash of (messages, seed, temperature),
ending in a number so numeric scorers can parse it. Tests point moa_search at it with
``MOA_SEARCH_LLAMA_SERVER="python tests/fake_llama_server.py"``.

Failure modes, chosen with ``FAKE_LLAMA_MODE``: ``exit`` (dies at start with an error line),
``ignore_alias`` (lists ``default-model`` whatever ``--model_alias`` says, as a server started
some other way would), ``sigill_on_request`` (dies of SIGILL at the first chat request, as a
native llama.cpp build did on a VM advertising instructions it does not run). ``FAKE_LLAMA_CHILD=1`` spawns a helper process in the server's group (a
stop must take it too) and prints its pid; ``FAKE_LLAMA_START_DELAY_S`` delays the listening and
``FAKE_LLAMA_ANSWER_DELAY_S`` every answer. Observation for tests in other processes:
``FAKE_LLAMA_PID_FILE`` gets the server's pid appended, ``FAKE_LLAMA_REQUEST_LOG`` one line per
chat request.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for flag in ("--model", "--model_alias", "--host", "--chat_format", "--verbose"):
        p.add_argument(flag)
    for flag in ("--port", "--n_ctx", "--n_threads", "--n_threads_batch"):
        p.add_argument(flag, type=int)
    return p.parse_args()


def count_tokens(text: str) -> int:
    return len(text.split())


def make_handler(alias: str, n_ctx: int):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            print(f"{self.command} {self.path}", flush=True)

        def send_json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": alias, "object": "model"}]})
            else:
                self.send_json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self.send_json(404, {"detail": "Not Found"})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if os.environ.get("FAKE_LLAMA_MODE") == "sigill_on_request":
                os.kill(os.getpid(), signal.SIGILL)
            messages = body["messages"]
            prompt_tokens = sum(count_tokens(m["content"]) + 4 for m in messages)
            max_tokens = int(body.get("max_tokens") or 16)
            if prompt_tokens + max_tokens > n_ctx:
                self.send_json(400, {"error": {
                    "message": f"This model's maximum context length is {n_ctx} tokens. However, you "
                               f"requested {prompt_tokens + max_tokens} tokens.",
                    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
                return
            if os.environ.get("FAKE_LLAMA_REQUEST_LOG"):
                with open(os.environ["FAKE_LLAMA_REQUEST_LOG"], "a") as f:
                    f.write(f"{body.get('model')} seed={body.get('seed')}\n")
            time.sleep(float(os.environ.get("FAKE_LLAMA_ANSWER_DELAY_S", "0")))
            key = json.dumps([messages, body.get("seed"), body.get("temperature")], sort_keys=True)
            digest = hashlib.sha256(key.encode()).hexdigest()
            text = f"fake llama answer {digest[:12]} seed={body.get('seed')} so the answer is {int(digest[:6], 16) % 100}"
            words = text.split()[:max_tokens]
            self.send_json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),  # echoed, as llama.cpp does, whatever it serves
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "stop" if len(words) < max_tokens else "length"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                          "total_tokens": prompt_tokens + len(words)}})

    return Handler


def main() -> None:
    args = parse_args()
    mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
    if mode == "exit":
        print("ValueError: fake llama server told to fail at start", flush=True)
        sys.exit(1)
    if not os.path.isfile(args.model):
        print(f"ValueError: Model path does not exist: {args.model}", flush=True)
        sys.exit(1)
    if os.environ.get("FAKE_LLAMA_PID_FILE"):
        with open(os.environ["FAKE_LLAMA_PID_FILE"], "a") as f:
            f.write(f"{os.getpid()}\n")
    if os.environ.get("FAKE_LLAMA_CHILD") == "1":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child pid {child.pid}", flush=True)
    time.sleep(float(os.environ.get("FAKE_LLAMA_START_DELAY_S", "0")))
    alias = "default-model" if mode == "ignore_alias" else (args.model_alias or args.model)
    try:
        server = HTTPServer((args.host, args.port), make_handler(alias, args.n_ctx or 2048))
    except OSError as exc:
        print(f"ERROR:    [Errno {exc.errno}] error while attempting to bind on address "
              f"('{args.host}', {args.port}): address already in use", flush=True)
        sys.exit(1)
    print(f"fake llama server for {alias} on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
