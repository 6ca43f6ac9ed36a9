"""Liveness and readiness endpoints."""

import logging
import os
import time

from django.conf import settings
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from bot import state

logger = logging.getLogger(__name__)


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Database and Redis reachability with latencies; 503 when the database is down."""
    services = {}
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        services["database"] = {
            "status": "up",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    except Exception:
        logger.exception("health: database unreachable")
        services["database"] = {"status": "down"}
    services["redis"] = state.ping()
    healthy = services["database"]["status"] == "up"
    return JsonResponse(
        {"status": "healthy" if healthy else "unhealthy", "services": services},
        status=200 if healthy else 503,
    )


@csrf_exempt
def noop(request: HttpRequest) -> HttpResponse:
    """A do-nothing endpoint: the benchmark's baseline for the webhook on the same server.

    Served only with DEBUG or SOPHIA_BENCH=1 (404 otherwise), so production exposes nothing.
    """
    if not (settings.DEBUG or os.getenv("SOPHIA_BENCH") == "1"):
        raise Http404
    return HttpResponse(b"ok", content_type="text/plain")
