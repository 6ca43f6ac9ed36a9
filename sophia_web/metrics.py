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
never raises and never touches the network. This module imports nothing of Django's models, so
any module may import it; the scrape-time gauges and the /metrics view are in
sophia_web/monitoring.py.
"""

from __future__ import annotations

import os
import socket

from prometheus_client import Counter, Histogram, values

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
    "sophia_reminders_sent_total", "Appointment reminders queued to WhatsApp (all clinics)."
)
WAITLIST_OFFERS = Counter(
    "sophia_waitlist_offers_total", "Freed slots offered to waitlisted patients (all clinics)."
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
