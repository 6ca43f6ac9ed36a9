"""Per-request observability: a request id, the log context, one log line and HTTP metrics."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from sophia_web import logging as sophia_logging
from sophia_web import metrics

logger = logging.getLogger("sophia.request")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
# Probes and scrapes would drown the log.
QUIET_PATHS = ("/health/", "/metrics", "/static/")


def _request_id(request: HttpRequest) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.match(given) else secrets.token_urlsafe(12)


def _route(request: HttpRequest) -> str:
    """The URL pattern, not the path: bounded label values (no ids, no documents)."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return "/" + match.route if match.route else (match.view_name or "unknown")


class _Timer:
    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.started = time.perf_counter()
        self.request_id = _request_id(request)
        request.request_id = self.request_id
        self.token = sophia_logging.bind(request_id=self.request_id)

    def finish(self, response: HttpResponse) -> HttpResponse:
        elapsed = time.perf_counter() - self.started
        route = _route(self.request)
        method = self.request.method or "GET"
        metrics.HTTP_REQUESTS.labels(
            method=method, route=route, status=f"{response.status_code // 100}xx"
        ).inc()
        metrics.HTTP_LATENCY.labels(method=method, route=route).observe(elapsed)
        response[REQUEST_ID_HEADER] = self.request_id
        if not self.request.path.startswith(QUIET_PATHS):
            logger.info(
                "%s %s %s",
                method,
                self.request.path,
                response.status_code,
                extra={
                    "action": "http.request",
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                    "route": route,
                },
            )
        # Finished in another context than it started: nothing to undo there.
        with contextlib.suppress(ValueError):
            sophia_logging.reset(self.token)
        return response


def request_observability(get_response: Callable) -> Callable:
    """Middleware (sync and async): put it first in MIDDLEWARE so it times everything."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> Awaitable[HttpResponse]:
            timer = _Timer(request)
            return timer.finish(await get_response(request))

        return markcoroutinefunction(middleware)

    def sync_middleware(request: HttpRequest) -> HttpResponse:
        timer = _Timer(request)
        return timer.finish(get_response(request))

    return sync_middleware


request_observability.sync_capable = True
request_observability.async_capable = True
