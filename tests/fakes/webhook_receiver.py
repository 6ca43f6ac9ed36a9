"""A clinic's system receiving Sophia's outgoing webhooks: real HTTP on 127.0.0.1.

It checks each signature the way a receiver should (integrations.webhooks.signature_verify),
records every request, applies each event id once (as receivers are told to), and can be told
to fail the next N requests or to hang (a slow receiver).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from integrations import webhooks


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers.get(webhooks.EVENT_ID_HEADER, "")


class WebhookReceiver:
    def __init__(self, secret: str = "") -> None:
        self.secret = secret
        self.requests: list[Received] = []
        self.applied: dict[str, dict] = {}  # event id → body, each applied once
        self._fail: list[int] = []
        self._hang = 0
        self._release = threading.Event()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                ok = webhooks.signature_verify(
                    secret=receiver.secret,
                    body=body,
                    header=headers.get(webhooks.SIGNATURE_HEADER, ""),
                    timestamp=headers.get(webhooks.TIMESTAMP_HEADER, ""),
                )
                with receiver._cond:
                    receiver.requests.append(Received(headers, body, ok))
                    status = receiver._fail.pop(0) if receiver._fail else (200 if ok else 401)
                    if status == 200:
                        event_id = headers.get(webhooks.EVENT_ID_HEADER, "")
                        receiver.applied.setdefault(event_id, json.loads(body))
                    hang = receiver._hang > 0
                    receiver._hang -= 1 if hang else 0
                    receiver._cond.notify_all()
                if hang:
                    receiver._release.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/sophia"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._cond:
            self._fail.extend([status] * count)

    def hang_next(self, count: int = 1) -> None:
        """The next requests are applied but not answered until `release()` (or 30 s)."""
        with self._cond:
            self._hang += count

    def release(self) -> None:
        self._release.set()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.requests), timeout=timeout):
                raise AssertionError(f"receiver: condition not met; got {len(self.requests)}")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()
