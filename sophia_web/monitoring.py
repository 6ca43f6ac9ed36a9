"""/metrics: every process's counters (sophia_web.metrics) plus gauges read at scrape time.

The gauges ("how many now") come from PostgreSQL and Redis when Prometheus scrapes, so they are
the same whichever web process answers and never drift when a process dies.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot import state
from bot.models import Conversation, Direction, Message, MessageStatus, PeriodicJob
from clinics.models import Appointment
from integrations.models import WebhookDelivery
from sophia_web.metrics import MULTIPROC_DIR

logger = logging.getLogger(__name__)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _redis_figures() -> dict[str, float]:
    """Locks, orphaned locks, typing flags and memory from Redis (empty when it is down)."""

    def read(client) -> dict[str, float]:
        locks = orphaned = typing = 0
        for key in client.scan_iter(match="sophia:lock:*", count=1000):
            locks += 1
            # Locks are always set with a TTL of LOCK_TTL_SECONDS: one without is an orphan.
            if client.ttl(key) == -1:
                orphaned += 1
        for _key in client.scan_iter(match="sophia:typing:*", count=1000):
            typing += 1
        memory = client.info("memory")
        return {
            "locks": locks,
            "orphaned": orphaned,
            "typing": typing,
            "memory_used": memory.get("used_memory", 0),
            "memory_max": memory.get("maxmemory", 0),
        }

    return state._call(read, default=None) or {}


def _database_figures(now: dt.datetime) -> dict[str, float]:
    idle = dt.timedelta(minutes=settings.SOPHIA_SESSION_IDLE_MINUTES)
    open_conversations = Conversation.objects.filter(closed_at=None)
    outbox = Message.objects.filter(
        direction=Direction.OUT, status__in=[MessageStatus.QUEUED, MessageStatus.SENDING]
    )
    oldest = outbox.order_by("created_at").values_list("created_at", flat=True).first()
    heartbeat = PeriodicJob.objects.order_by("-last_run_at").values_list("last_run_at", flat=True)
    last_run = heartbeat.first()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    figures = {
        "booked_today": Appointment.objects.filter(created_at__gte=midnight).count(),
        "active": open_conversations.filter(last_activity_at__gte=now - idle).count(),
        "stale": open_conversations.filter(last_activity_at__lt=now - idle).count(),
        "outbox": outbox.count(),
        "outbox_age": (now - oldest).total_seconds() if oldest else 0.0,
        "heartbeat_age": (now - last_run).total_seconds() if last_run else -1.0,
        "webhooks_pending": _pending_webhook_deliveries(),
    }
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), current_setting('max_connections')::int "
                "FROM pg_stat_activity WHERE datname = current_database()"
            )
            used, most = cursor.fetchone()
        figures["db_connections"] = used
        figures["db_connections_max"] = most
    return figures


def _pending_webhook_deliveries() -> int:
    return WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING).count()


class LiveGauges(Collector):
    """The "how many now" figures, read from PostgreSQL and Redis when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = timezone.now()
        try:
            db = _database_figures(now)
        except Exception:
            logger.exception("metrics: database figures unavailable")
            db = {}
        rd = _redis_figures()
        yield _gauge("sophia_up", "1 when this process answers /metrics.", 1)
        yield _gauge(
            "sophia_database_up", "1 when the database answered this scrape.", 1 if db else 0
        )
        yield _gauge("sophia_redis_up", "1 when Redis answered this scrape.", 1 if rd else 0)
        described = {
            "sophia_conversaciones_activas": (
                db.get("active"),
                "Open conversations with activity within the idle window.",
            ),
            "sophia_conversaciones_stale": (
                db.get("stale"),
                "Open conversations idle for longer than the idle window (should be closed).",
            ),
            "sophia_citas_agendadas_hoy": (
                db.get("booked_today"),
                "Appointments booked since midnight (TIME_ZONE), any channel.",
            ),
            "sophia_outbox_backlog": (db.get("outbox"), "Outbound messages waiting to be sent."),
            "sophia_outbox_oldest_age_seconds": (
                db.get("outbox_age"),
                "Age of the oldest outbound message waiting to be sent.",
            ),
            "sophia_worker_heartbeat_age_seconds": (
                db.get("heartbeat_age"),
                "Seconds since a worker last ran a periodic job (-1: never).",
            ),
            "sophia_outgoing_webhooks_pending": (
                db.get("webhooks_pending"),
                "Outgoing webhook deliveries waiting (first try or retry).",
            ),
            "sophia_db_connections": (
                db.get("db_connections"),
                "Connections open to this database (all processes).",
            ),
            "sophia_db_connections_max": (
                db.get("db_connections_max"),
                "The server's max_connections.",
            ),
            "sophia_locks_active": (rd.get("locks"), "Per-conversation locks held in Redis."),
            "sophia_locks_orphaned": (
                rd.get("orphaned"),
                "Per-conversation locks without an expiry (never released by their owner).",
            ),
            "sophia_typing_active": (rd.get("typing"), "Conversations showing 'typing…' now."),
            "sophia_redis_memory_used_bytes": (rd.get("memory_used"), "Redis used_memory."),
            "sophia_redis_memory_max_bytes": (
                rd.get("memory_max"),
                "Redis maxmemory (0: no limit configured).",
            ),
        }
        for name, (value, documentation) in described.items():
            if value is not None:
                yield _gauge(name, documentation, value)


def registry() -> CollectorRegistry:
    """The registry a scrape reads: every process's counters plus the live gauges."""
    if MULTIPROC_DIR:
        scrape = CollectorRegistry()
        multiprocess.MultiProcessCollector(scrape)
    else:
        scrape = CollectorRegistry()
        scrape.register(_DefaultRegistryProxy())
    scrape.register(LiveGauges())
    return scrape


class _DefaultRegistryProxy(Collector):
    """This process's counters (single-process mode) inside a per-scrape registry."""

    def collect(self):
        yield from REGISTRY.collect()


# --- access ------------------------------------------------------------------------------------


def _allowed(request: HttpRequest) -> bool:
    """A bearer token (METRICS_TOKEN), or with no token set, a request from a private network.

    The private-network rule trusts REMOTE_ADDR, which nginx does not forward /metrics to
    (deploy/nginx.conf denies it): Prometheus scrapes the web containers directly.
    """
    token = settings.METRICS_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return address.is_private or address.is_loopback


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return HttpResponse(b"forbidden\n", status=403, content_type="text/plain")
    body = generate_latest(registry())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
