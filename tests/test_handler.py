"""sophia_web.handler: the middleware chain and the view run in one thread per request."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import AsyncToSync
from asgiref.testing import ApplicationCommunicator
from channels.testing import HttpCommunicator
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from sophia_web.asgi import application
from sophia_web.handler import SyncChainASGIHandler

seen: dict[str, int] = {}


def recording_middleware(get_response):
    def middleware(request: HttpRequest) -> HttpResponse:
        seen["middleware"] = threading.get_ident()
        return get_response(request)

    return middleware


class RecordingViewMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request, view, args, kwargs) -> None:
        seen["process_view"] = threading.get_ident()


@csrf_exempt
def recording_view(request: HttpRequest) -> HttpResponse:
    seen["view"] = threading.get_ident()
    return HttpResponse(b"ok")


in_view = {"now": 0, "most": 0}
lock = threading.Lock()
# Two views wait for each other inside: proof that two run at once, with no timing involved.
pair = threading.Barrier(2, timeout=5)


def slow_view(request: HttpRequest) -> HttpResponse:
    with lock:
        in_view["now"] += 1
        in_view["most"] = max(in_view["most"], in_view["now"])
    pair.wait()
    with lock:
        in_view["now"] -= 1
    return HttpResponse(b"ok")


urlpatterns = [path("here/", recording_view), path("slow/", slow_view)]


def headers_of(response: dict) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in response["headers"]}


@override_settings(
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[
        "servestatic.middleware.ServeStaticMiddleware",
        f"{__name__}.recording_middleware",
        f"{__name__}.RecordingViewMiddleware",
    ],
)
async def test_it_runs_the_sync_middleware_process_view_and_the_view_in_one_thread(monkeypatch):
    seen.clear()
    handler = SyncChainASGIHandler()
    # Django's own ASGIHandler would come back to the event loop (async_to_sync) to resolve
    # the URL and then hop into the thread again for process_view and the view.
    back_to_the_loop = []
    call = AsyncToSync.__call__

    def counting(self, *args, **kwargs):
        back_to_the_loop.append(self)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(AsyncToSync, "__call__", counting)
    response = await HttpCommunicator(handler, "GET", "/here/").get_response()
    assert response["status"] == 200
    assert back_to_the_loop == []
    assert seen["middleware"] == seen["process_view"] == seen["view"]
    assert seen["view"] != threading.get_ident()  # not on the event loop
    assert asyncio.iscoroutinefunction(handler._middleware_chain)


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[f"{__name__}.recording_middleware"])
async def test_it_adapts_a_chain_with_no_async_middleware_once():
    seen.clear()
    handler = SyncChainASGIHandler()
    response = await HttpCommunicator(handler, "GET", "/here/").get_response()
    assert response["status"] == 200
    assert seen["middleware"] == seen["view"] != threading.get_ident()


@pytest.mark.django_db
async def test_it_keeps_csrf_protection_and_security_headers_on_the_real_application():
    # CsrfViewMiddleware refuses in process_view: it still runs, synchronously, before the view.
    refused = await HttpCommunicator(
        application,
        "POST",
        "/cuenta/entrar/",
        body=b"username=a&password=b",
        headers=[(b"host", b"127.0.0.1"), (b"content-type", b"application/x-www-form-urlencoded")],
    ).get_response()
    assert refused["status"] == 403
    health = await HttpCommunicator(
        application, "GET", "/health/", headers=[(b"host", b"127.0.0.1")]
    ).get_response()
    assert headers_of(health)[b"x-content-type-options"] == b"nosniff"


async def test_it_serves_static_files_before_the_chain_with_security_headers():
    # servestatic streams the file and ends with a body-less message (allowed by ASGI), which
    # channels' HttpCommunicator does not accept: read the messages here.
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": "/static/css/sophia.css",
            "raw_path": b"/static/css/sophia.css",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
        },
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    body = b""
    while True:
        chunk = await communicator.receive_output(5)
        body += chunk.get("body", b"")
        if not chunk.get("more_body"):
            break
    assert start["status"] == 200
    headers = {name.lower(): value for name, value in start["headers"]}
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"referrer-policy"] == b"same-origin"
    assert headers[b"cross-origin-opener-policy"] == b"same-origin"
    assert b"body" in body


async def served(handler: SyncChainASGIHandler, url: str) -> dict:
    """The response, once the handler has finished with the request (not only sent it)."""
    communicator = HttpCommunicator(handler, "GET", url)
    response = await communicator.get_response(timeout=5)
    await communicator.wait(timeout=5)
    return response


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[])
async def test_it_serves_one_request_after_another_on_the_same_thread():
    handler = SyncChainASGIHandler()
    threads = set()
    for _ in range(3):
        seen.clear()
        assert (await served(handler, "/here/"))["status"] == 200
        threads.add(seen["view"])
    assert len(threads) == 1


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[], SOPHIA_WEB_THREADS=2)
async def test_it_runs_at_most_sophia_web_threads_requests_at_once_and_queues_the_rest():
    in_view.update(now=0, most=0)
    pair.reset()
    handler = SyncChainASGIHandler()
    responses = await asyncio.gather(*(served(handler, "/slow/") for _ in range(6)))
    assert [r["status"] for r in responses] == [200] * 6
    assert in_view["most"] == 2
    assert len(handler._idle_threads) == 2


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[], SOPHIA_WEB_THREADS=1)
async def test_it_lets_a_client_still_sending_its_body_hold_no_thread():
    handler = SyncChainASGIHandler()
    slow = ApplicationCommunicator(
        handler,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "path": "/here/",
            "raw_path": b"/here/",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
        },
    )
    await slow.send_input({"type": "http.request", "body": b"a" * 10, "more_body": True})
    # The only thread is free for another request while the first body is still coming.
    assert (await served(handler, "/here/"))["status"] == 200
    await slow.send_input({"type": "http.request", "body": b"b" * 10})
    assert (await slow.receive_output(5))["status"] == 200
    await slow.wait(5)
