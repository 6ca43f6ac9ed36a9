"""A local WhatsApp Graph API for tests: real HTTP on 127.0.0.1, every request recorded.

    from tests.fakes.graph_server import fake_graph   # the pytest fixture

    def test_it_replies(fake_graph):
        ...
        sent = fake_graph.wait_for(lambda reqs: len(fake_graph.messages_to("573001234567")) >= 2)
        fake_graph.fail_next(2, status=500)   # the next two POSTs answer HTTP 500

`wait_for` blocks on a threading.Condition until the predicate holds (no sleep loops).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_PATH = re.compile(r"^/(?P<phone_number_id>[^/]+)/messages/?$")


@dataclass(frozen=True)
class GraphRequest:
    phone_number_id: str
    path: str
    headers: dict[str, str]
    json: dict
    # The id the fake answered with ("" when it answered an error or a read/typing call).
    wamid: str = ""

    @property
    def to(self) -> str:
        return str(self.json.get("to", ""))

    @property
    def is_typing(self) -> bool:
        return self.json.get("status") == "read"

    @property
    def text(self) -> str:
        """The text a patient would read: the text body or the interactive body."""
        kind = self.json.get("type")
        if kind == "text":
            return self.json["text"]["body"]
        if kind == "interactive":
            return self.json["interactive"]["body"]["text"]
        return ""

    @property
    def rows(self) -> list[dict]:
        action = self.json.get("interactive", {}).get("action", {})
        return [row for section in action.get("sections", []) for row in section.get("rows", [])]

    @property
    def buttons(self) -> list[dict]:
        action = self.json.get("interactive", {}).get("action", {})
        return [b["reply"] for b in action.get("buttons", [])]


@dataclass
class _Failure:
    status: int
    code: int | None
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeGraphServer:
    """Start with `start()`, stop with `stop()`; `url` is the WHATSAPP_API_URL to use."""

    def __init__(self, access_token: str | None = None) -> None:
        self.access_token = access_token  # when set, other bearer tokens get HTTP 401
        self.requests: list[GraphRequest] = []
        self._failures: list[_Failure] = []
        self._condition = threading.Condition()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeGraphServer:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-graph", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # Test controls ------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        code: int | None = None,
        message: str = "fake failure",
        retry_after: float | None = None,
    ) -> None:
        """The next `count` message POSTs answer `status` with a Graph error body (code)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._condition:
            self._failures.extend(_Failure(status, code, message, headers) for _ in range(count))

    def wait_for(
        self, predicate: Callable[[list[GraphRequest]], bool], timeout: float = 10.0
    ) -> list[GraphRequest]:
        """Block until `predicate(requests)` holds; the requests so far. Raises on timeout."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(list(self.requests)), timeout):
                raise AssertionError(
                    f"fake Graph API: condition not met within {timeout} s; "
                    f"got {len(self.requests)} request(s): {[r.json for r in self.requests]}"
                )
            return list(self.requests)

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[GraphRequest]:
        """Block until `count` outbound messages (not typing calls) arrived; those messages."""
        self.wait_for(lambda reqs: len([r for r in reqs if not r.is_typing]) >= count, timeout)
        return self.messages

    @property
    def messages(self) -> list[GraphRequest]:
        with self._condition:
            return [r for r in self.requests if not r.is_typing]

    def messages_to(self, wa_id: str) -> list[GraphRequest]:
        return [r for r in self.messages if r.to == wa_id]

    @property
    def typing(self) -> list[GraphRequest]:
        with self._condition:
            return [r for r in self.requests if r.is_typing]

    def clear(self) -> None:
        with self._condition:
            self.requests.clear()
            self._failures.clear()

    # Called by the handler thread ----------------------------------------------------------

    def _handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict, dict[str, str]]:
        match = _PATH.match(path)
        if match is None:
            return 404, _error(404, 100, f"unknown path {path}"), {}
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, _error(400, 100, "request body is not JSON"), {}
        with self._condition:
            status, answer, extra, wamid = self._answer(headers, body)
            self.requests.append(GraphRequest(match["phone_number_id"], path, headers, body, wamid))
            self._condition.notify_all()
        return status, answer, extra

    def _answer(self, headers: dict[str, str], body: dict) -> tuple[int, dict, dict, str]:
        expected = f"Bearer {self.access_token}"
        if self.access_token is not None and headers.get("authorization") != expected:
            return 401, _error(401, 190, "invalid access token"), {}, ""
        if self._failures:
            failure = self._failures.pop(0)
            return (
                failure.status,
                _error(failure.status, failure.code, failure.message),
                failure.headers,
                "",
            )
        if body.get("status") == "read":
            return 200, {"success": True}, {}, ""
        # Unique across servers too: a real wamid never repeats.
        wamid = f"wamid.FAKE{next(self._ids):06d}{secrets.token_hex(6)}"
        to = str(body.get("to", ""))
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": wamid}],
        }
        return 200, answer, {}, wamid


def _error(status: int, code: int | None, message: str) -> dict:
    error = {"message": message, "type": "OAuthException", "fbtrace_id": "FAKEtrace"}
    if code is not None:
        error["code"] = code
        error["error_data"] = {"messaging_product": "whatsapp", "details": message}
    return {"error": error}


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeGraphServer
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    timeout = 30
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle and the client's
    # delayed ACK add ~40 ms to every keep-alive request, which the real Graph API doesn't.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer, extra = self.server_fake._handle(self.path, headers, raw)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        """Quiet: tests read the recorded requests instead of access logs."""


@pytest.fixture
def fake_graph(settings) -> Iterator[FakeGraphServer]:
    """A running fake Graph API; WHATSAPP_API_URL and WHATSAPP_ACCESS_TOKEN point at it."""
    settings.WHATSAPP_ACCESS_TOKEN = "test-access-token"
    server = FakeGraphServer(access_token=None).start()
    settings.WHATSAPP_API_URL = server.url
    try:
        yield server
    finally:
        server.stop()
