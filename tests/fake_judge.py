"""A fake judge for tests: a real HTTP server on loopback that speaks the OpenAI chat-completions protocol.

``GET /v1/models`` lists ``models`` (HTTP 404 when ``models`` is None); ``POST /v1/chat/completions``
first answers with the scripted ``errors`` (status, headers, body), one per request, then with
``reply(body)`` as the assistant message. With ``key`` set, a request whose ``Authorization``
header is not ``Bearer <key>`` gets HTTP 401. Every request is recorded (path, headers, body).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class FakeJudge:
    def __init__(self, reply: Callable[[dict], str] = lambda body: "Rating: [[5]]", *, key: str | None = None,
                 models: tuple[str, ...] | None = ("judge",), errors: list[tuple[int, dict, Any]] | None = None) -> None:
        self.reply, self.key, self.models = reply, key, models
        self.errors = list(errors or [])
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def completions(self) -> list[dict]:
        """Bodies of the chat-completion requests that got a completion (not an error)."""
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions" and r["status"] == 200]

    def __enter__(self) -> "FakeJudge":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: Any, status: int) -> None:
                with judge.lock:
                    judge.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                           "status": status})

            def _authorized(self, body: Any) -> bool:
                if judge.key is None or self.headers.get("Authorization") == f"Bearer {judge.key}":
                    return True
                self._record(body, 401)
                self._send(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}})
                return False

            def do_GET(self) -> None:
                if not self._authorized(None):
                    return
                if self.path != "/v1/models" or judge.models is None:
                    self._record(None, 404)
                    self._send(404, {"detail": "Not Found"})
                    return
                self._record(None, 200)
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in judge.models]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self._authorized(body):
                    return
                if self.path != "/v1/chat/completions":
                    self._record(body, 404)
                    self._send(404, {"detail": "Not Found"})
                    return
                with judge.lock:
                    error = judge.errors.pop(0) if judge.errors else None
                if error is not None:
                    status, headers, payload = error
                    self._record(body, status)
                    self._send(status, payload, headers)
                    return
                content = judge.reply(body)
                self._record(body, 200)
                self._send(200, {"id": "fake", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}]})

        return Handler


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
