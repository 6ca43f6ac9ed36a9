"""Prometheus metrics: every counter and histogram Sophia records, and the /metrics view.

Several web (daphne) and worker processes record into the same numbers:

- Counters and histograms use prometheus-client's multiprocess mode when
  PROMETHEUS_MULTIPROC_DIR is set (compose.yml and the Makefile set it; every process of one
  deployment shares the directory). Each process writes its own file, named by host and pid so
  replicas in different containers sharing one volume never collide; /metrics sums them all.
  Without the variable (a single process, the demo) they live in the default in-process registry.
- Gauges ("how many now") are computed at scrape time from PostgreSQL and Redis, so they are the
  same whichever process answers, and never drift when a process dies.

Other modules import the metric objects from here and call `.inc()` / `.observe()`; recording
never raises and never touches the network.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import logging
import os
import socket
import time
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
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MULTIPROC_DIR = os.getenv("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    # pids repeat across containers (each one's daphne is often pid 1) sharing the directory:
    # name each process's files by host and pid. prometheus-client splits file names on "_".
    _HOST = socket.gethostname().replace("_", "-")
    values.ValueClass = values.MultiProcessValue(
        process_identifier=lambda: f"{_HOST}-{os.getpid()}"
    )

# Seconds; bot turns and LLM calls are slower than page views.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 30)

# --- HTTP and the bot ------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "sophia_http_requests_total",
    "HTTP requests answered, by method, route and status class.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "sophia_http_request_duration_seconds",
    "HTTP request latency, by method and route.",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)
BOT_TURN_LATENCY = Histogram(
    "sophia_bot_turn_duration_seconds",
    "Time to process one inbound message (one engine turn, replies queued).",
    buckets=SLOW_BUCKETS,
)
WEBHOOK_DUPLICATES = Counter(
    "sophia_whatsapp_webhook_duplicates_total",
    "Inbound WhatsApp messages received again (same message id) and ignored.",
)
RATE_LIMIT_HITS = Counter(
    "sophia_rate_limit_hits_total",
    "Requests or messages held back by a rate limit, by scope (bot, api).",
    ["scope"],
)

# --- LLM -------------------------------------------------------------------------------------

LLM_CALLS = Counter("sophia_llm_calls_total", "Calls to the LLM helper, by purpose.", ["purpose"])
LLM_ERRORS = Counter(
    "sophia_llm_errors_total", "LLM calls that failed or timed out, by purpose.", ["purpose"]
)
LLM_LATENCY = Histogram(
    "sophia_llm_latency_seconds", "LLM call latency, by purpose.", ["purpose"], buckets=SLOW_BUCKETS
)
LLM_TOKENS = Counter(
    "sophia_llm_tokens_total", "LLM tokens used, by kind (prompt, completion).", ["kind"]
)

# --- bookings, reminders, waitlist, outgoing webhooks ------------------------------------------

CITAS_AGENDADAS = Counter(
    "sophia_citas_agendadas", "Appointments booked (any channel), by clinic.", ["clinic"]
)
BOOKING_CONFLICTS = Counter(
    "sophia_booking_conflicts_total",
    "Bookings or holds refused because someone else got the slot first, by code.",
    ["code"],
)
REMINDERS_SENT = Counter(
    "sophia_reminders_sent_total",
    "Appointment reminders queued for sending, by clinic.",
    ["clinic"],
)
WAITLIST_OFFERS = Counter(
    "sophia_waitlist_offers_total",
    "Freed slots offered to waitlisted patients, by clinic.",
    ["clinic"],
)
OUTGOING_WEBHOOK_DELIVERIES = Counter(
    "sophia_outgoing_webhook_deliveries_total",
    "Outgoing webhook delivery attempts, by outcome (delivered, retry, failed).",
    ["outcome"],
)
OUTGOING_WEBHOOK_FAILURES = Counter(
    "sophia_outgoing_webhook_failures_total",
    "Outgoing webhook attempts that did not get a 2xx (each attempt counts).",
)


# --- gauges computed at scrape time ------------------------------------------------------------


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _redis_figures() -> dict[str, float]:
    """Locks, orphaned locks, typing flags and memory from Redis (empty when it is down)."""
    from bot import state

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
    from bot.models import Conversation, Direction, Message, MessageStatus, PeriodicJob

    idle = dt.timedelta(minutes=settings.SOPHIA_SESSION_IDLE_MINUTES)
    open_conversations = Conversation.objects.filter(closed_at=None)
    outbox = Message.objects.filter(
        direction=Direction.OUT, status__in=[MessageStatus.QUEUED, MessageStatus.SENDING]
    )
    oldest = outbox.order_by("created_at").values_list("created_at", flat=True).first()
    heartbeat = PeriodicJob.objects.order_by("-last_run_at").values_list("last_run_at", flat=True)
    last_run = heartbeat.first()
    figures = {
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
    from integrations.models import WebhookDelivery

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
    started = time.perf_counter()
    body = generate_latest(registry())
    logger.debug("metrics scraped in %.1f ms", (time.perf_counter() - started) * 1000)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
