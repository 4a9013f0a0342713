"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests, with injectable faults."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """Serves ``POST /v1/chat/completions``.

    ``reply(messages) -> str`` (or ``reply(body)`` with ``with_body=True``) writes the assistant
    text, or returns a dict ``{"content"?, "tool_calls"?}`` sent as the message (function calling);
    ``faults`` is a list consumed one per request: ``None`` (answer), an HTTP status such
    as ``429`` or ``500``, a dict ``{"status", "message"?, "headers"?}`` (an error with that body
    message and those response headers), ``"slow"`` (sleep ``slow_s`` first) or ``"garbage"``
    (a 200 whose body is not JSON). ``retry_after_ms`` adds a ``retry-after-ms`` header to every
    injected error, so that the client's retries wait that long (tests stay fast).
    """

    def __init__(self, reply: Callable[..., str | dict], faults: list | None = None, slow_s: float = 2.0,
                 delay_s: float = 0.0, with_body: bool = False, retry_after_ms: int | None = None):
        self.reply, self.faults, self.slow_s = reply, list(faults or []), slow_s
        self.retry_after_ms = retry_after_ms
        self.delay_s, self.with_body = delay_s, with_body
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    outer.auth_headers.append(self.headers.get("Authorization", ""))
                    fault = outer.faults.pop(0) if outer.faults else None
                if isinstance(fault, int):
                    fault = {"status": fault}
                if isinstance(fault, dict):
                    headers = dict(fault.get("headers") or {})
                    if outer.retry_after_ms is not None:
                        headers.setdefault("retry-after-ms", str(outer.retry_after_ms))
                    self._send(fault["status"], {"error": {"message": fault.get("message", "injected"),
                                                           "type": "server_error"}}, headers)
                    return
                if fault == "slow":
                    time.sleep(outer.slow_s)
                if fault == "garbage":
                    self._raw(200, b"<html>not json")
                    return
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                answer = outer.reply(body) if outer.with_body else outer.reply(body["messages"])
                if isinstance(answer, dict):  # a structured reply: {"content"?, "tool_calls"?}
                    message = {"role": "assistant", "content": answer.get("content"), **answer}
                    finish = "tool_calls" if answer.get("tool_calls") else "stop"
                else:
                    for stop in body.get("stop") or []:
                        answer = answer.split(stop, 1)[0]
                    message, finish = {"role": "assistant", "content": answer}, "stop"
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

            def _send(self, code, obj, headers=None):
                self._raw(code, json.dumps(obj).encode(), "application/json", headers)

            def _raw(self, code, data, ctype="text/html", headers=None):
                try:
                    self.send_response(code)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
