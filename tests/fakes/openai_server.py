"""A local OpenAI-compatible chat completions server for tests: real HTTP on 127.0.0.1.

    from tests.fakes.openai_server import fake_openai, openai_down  # the pytest fixtures

    def test_it_uses_the_llm(fake_openai, settings):
        settings.OPENAI_API_KEY = "test-key"
        settings.OPENAI_BASE_URL = fake_openai.base_url
        fake_openai.reply_json({"specialty": "odontologia", "confidence": 0.9})
        ...
        fake_openai.fail_next(status=500)      # the next request answers HTTP 500
        fake_openai.delay = 5.0                # answers after 5 s (or when the test ends)
        fake_openai.requests                   # every request body, in order

Replies are queued (`reply_json`, `reply_text`); with none queued it answers `default_content`.
A slow answer waits on an Event that the fixture sets at teardown, so no test waits it out.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class _Reply:
    status: int = 200
    content: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.delay = 0.0
        self.default_content = '{"specialty": "ninguna", "confidence": 0.0}'
        self._replies: list[_Reply] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeOpenAIServer:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()  # slow answers stop waiting
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # Test controls ------------------------------------------------------------------------

    def reply_text(self, content: str, *, prompt_tokens: int = 42, completion_tokens: int = 7):
        with self._lock:
            self._replies.append(_Reply(200, content, prompt_tokens, completion_tokens))

    def reply_json(self, data: dict, **usage: int) -> None:
        self.reply_text(json.dumps(data), **usage)

    def fail_next(self, count: int = 1, *, status: int = 500) -> None:
        with self._lock:
            self._replies.extend(_Reply(status) for _ in range(count))

    # Called by the handler thread ----------------------------------------------------------

    def _handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict]:
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, _error(f"unknown path {path}", "invalid_request_error")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, _error("body is not JSON", "invalid_request_error")
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            reply = self._replies.pop(0) if self._replies else _Reply(200, self.default_content)
        if self.delay:
            self._released.wait(self.delay)
        if reply.status != 200:
            return reply.status, _error("fake failure", "server_error")
        return 200, {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = self.server_fake._handle(self.path, headers, raw)
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer

    def log_message(self, format: str, *args) -> None:
        pass


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def closed_port_url() -> str:
    """A base URL where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def openai_down() -> str:
    """OPENAI_BASE_URL of a server that is down."""
    return closed_port_url()
