"""Outgoing webhooks: a clinic's endpoints get its booking events, signed, retried for 24 h.

Flow: a domain event commits → `deliveries_create()` (on-commit receiver) stores one
`WebhookDelivery` per subscribed endpoint and enqueues a `deliver_webhook` task → a worker runs
`delivery_attempt()`, which claims the row (a conditional UPDATE: one worker per attempt), POSTs
outside any transaction and records the outcome. Failures are retried with exponential backoff
until 24 h after the event, then the delivery is marked failed (admins can send it again).

A worker killed mid-POST leaves a lease that runs out; the sweeper (`deliveries_redrive`) then
enqueues the same attempt again. So a receiver may see an event twice in rare cases — it is the
same `id` (header X-Sophia-Event-Id), which receivers use to apply it once.

Signature: `X-Sophia-Signature-256: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
`X-Sophia-Timestamp: <unix seconds>`; receivers reject timestamps older than a few minutes
(replay). `signature_verify()` is the reference check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
import uuid
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db.models import F, Q
from django.tasks import task
from django.utils import timezone

from clinics.models import Clinic
from integrations.models import (
    WEBHOOK_EVENTS,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from sophia_web import logging as sophia_logging
from sophia_web import metrics

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sophia-Signature-256"
TIMESTAMP_HEADER = "X-Sophia-Timestamp"
EVENT_ID_HEADER = "X-Sophia-Event-Id"
EVENT_HEADER = "X-Sophia-Event"
USER_AGENT = "Sophia-Webhooks/1"

RETRY_FOR = dt.timedelta(hours=24)
FIRST_RETRY_SECONDS = 30
MAX_RETRY_SECONDS = 3 * 3600
# How long a queued attempt may wait for a worker before the sweeper queues it again.
DISPATCH_GRACE = dt.timedelta(minutes=2)
REPLAY_TOLERANCE_SECONDS = 300


class WebhookError(Exception):
    code = "invalid_webhook"


# --- endpoints ---------------------------------------------------------------------------------


def new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def endpoint_create(
    *, clinic: Clinic, url: str, events: list[str], description: str = ""
) -> WebhookEndpoint:
    """A new endpoint with a fresh signing secret, subscribed to `events`."""
    _check_url(url)
    events = _check_events(events)
    return WebhookEndpoint.objects.create(
        clinic=clinic,
        url=url,
        events=events,
        description=description.strip()[:200],
        secret=new_secret(),
    )


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 500:
        raise WebhookError("the URL must start with https:// (or http://) and be ≤ 500 characters")
    if url.startswith("http://") and not settings.SOPHIA_WEBHOOKS_ALLOW_HTTP:
        raise WebhookError("the URL must use https://")
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if not host:
        raise WebhookError("the URL has no host")
    # No DNS here (callers may hold a transaction): names are checked again at each delivery.
    if not settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE and (_local_name(host) or _private_ip(host)):
        raise WebhookError("the URL must point to a public address")


# Outgoing webhooks must not become a way into the clinic's own network (SSRF): in production
# an endpoint may not be, nor resolve to, a loopback, private, link-local (cloud metadata),
# shared or reserved address. Tests and the demo allow them (SOPHIA_WEBHOOKS_ALLOW_PRIVATE).
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


def _local_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(LOCAL_SUFFIXES)


def _not_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return not address.is_global or address.is_multicast


def _private_ip(host: str) -> bool:
    try:
        return _not_public(ipaddress.ip_address(host))
    except ValueError:
        return False  # a name, not an address


def _refuse_private_destination(url: str) -> None:
    """Raise httpx.ConnectError unless every address the URL's host resolves to is public."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _local_name(host):
        raise httpx.ConnectError(f"refused: {host} is a local name")
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpx.ConnectError(f"could not resolve {host}: {exc}") from exc
    for *_, sockaddr in infos:
        if _not_public(ipaddress.ip_address(sockaddr[0].split("%", 1)[0])):
            raise httpx.ConnectError(f"refused: {host} resolves to a non-public address")


def _check_events(events: list[str]) -> list[str]:
    chosen = [e for e in WEBHOOK_EVENTS if e in set(events or [])]
    if not chosen or len(chosen) != len(set(events)):
        raise WebhookError(f"events must be a non-empty subset of {list(WEBHOOK_EVENTS)}")
    return chosen


# --- signing -----------------------------------------------------------------------------------


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def signature_verify(
    *,
    secret: str,
    body: bytes,
    header: str,
    timestamp: str,
    now: float | None = None,
    tolerance: int = REPLAY_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: the HMAC matches and the timestamp is recent (no replay)."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - sent_at) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, sent_at, body), header or "")


# --- queueing ----------------------------------------------------------------------------------


def event_body(*, clinic: Clinic, event_id: uuid.UUID, name: str, payload: dict) -> str:
    return json.dumps(
        {
            "id": str(event_id),
            "event": name,
            "created_at": timezone.now().isoformat(),
            "clinic": {"id": clinic.pk, "slug": clinic.slug},
            "data": payload,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def deliveries_create(*, clinic_id: int, name: str, payload: dict) -> list[WebhookDelivery]:
    """Queue the event for every active endpoint of the clinic subscribed to it.

    Runs after the booking committed: one SELECT when the clinic has no endpoints, so it never
    slows a booking noticeably; the sending happens on a worker.
    """
    if name not in WEBHOOK_EVENTS:
        return []
    endpoints = [
        endpoint
        for endpoint in WebhookEndpoint.objects.filter(clinic_id=clinic_id, active=True)
        .select_related("clinic")
        .only("id", "events", "clinic__id", "clinic__slug")
        if name in endpoint.events
    ]
    if not endpoints:
        return []
    event_id = uuid.uuid4()
    now = timezone.now()
    body = event_body(clinic=endpoints[0].clinic, event_id=event_id, name=name, payload=payload)
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            clinic_id=clinic_id,
            endpoint=endpoint,
            event_id=event_id,
            event=name,
            body=body,
            created_at=now,
            next_attempt_at=now + DISPATCH_GRACE,
        )
        for endpoint in endpoints
    )
    for delivery in deliveries:
        _dispatch(delivery.pk, 0)
    return deliveries


def _dispatch(delivery_id: int, attempt: int, *, manual: bool = False) -> None:
    deliver_webhook.enqueue(delivery_id, attempt, manual)


def deliveries_redrive(now: dt.datetime | None = None, limit: int = 200) -> int:
    """Queue due retries, and attempts whose task or worker was lost (periodic job)."""
    now = now or timezone.now()
    # Due and nobody on it, or leased by a worker that never finished (killed mid-request).
    due = list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING)
        .filter(Q(next_attempt_at__lte=now, leased_until=None) | Q(leased_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("pk", "attempts")[:limit]
    )
    queued = 0
    for delivery_id, attempts in due:
        # Push the due time on first, so the next sweep doesn't queue it again meanwhile.
        moved = WebhookDelivery.objects.filter(
            pk=delivery_id, attempts=attempts, status=WebhookDelivery.Status.PENDING
        ).update(next_attempt_at=now + DISPATCH_GRACE, leased_until=None)
        if moved:
            _dispatch(delivery_id, attempts)
            queued += 1
    return queued


def delivery_send_again(*, clinic: Clinic, delivery_id: int) -> WebhookDelivery:
    """Staff's "send again": one more attempt now, whatever the delivery's state."""
    delivery = WebhookDelivery.objects.get(pk=delivery_id, clinic=clinic)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.Status.PENDING,
        next_attempt_at=timezone.now() + DISPATCH_GRACE,
        leased_until=None,
    )
    _dispatch(delivery.pk, delivery.attempts, manual=True)
    logger.info("webhook delivery %s queued again by staff", delivery.pk)
    delivery.refresh_from_db()
    return delivery


# --- sending -----------------------------------------------------------------------------------


def retry_delay(attempts: int) -> dt.timedelta:
    """30 s, 1 min, 2 min, … doubling up to 3 h, with ±10 % jitter (receivers recovering)."""
    base = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1))
    return dt.timedelta(seconds=base * random.uniform(0.9, 1.1))


def lease_seconds() -> float:
    """How long one attempt may take before another worker may redo it (> the HTTP timeout)."""
    return max(settings.SOPHIA_WEBHOOK_LEASE_SECONDS, settings.SOPHIA_WEBHOOK_TIMEOUT_SECONDS + 5)


def _claim(delivery_id: int, attempt: int, now: dt.datetime) -> bool:
    return (
        WebhookDelivery.objects.filter(
            pk=delivery_id, attempts=attempt, status=WebhookDelivery.Status.PENDING
        )
        .filter(Q(leased_until=None) | Q(leased_until__lt=now))
        .update(leased_until=now + dt.timedelta(seconds=lease_seconds()))
        == 1
    )


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """The one outbound choke point for webhooks (tests point it at a local receiver).

    Without SOPHIA_WEBHOOKS_ALLOW_PRIVATE the host is resolved first and refused when any of its
    addresses is not public (a name that changed since the endpoint was saved, say). httpx
    resolves it again to connect: a name that answers differently within that instant (DNS
    rebinding) is the one case this check leaves to the network's own egress rules.
    """
    if not settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE:
        _refuse_private_destination(url)
    with httpx.Client(
        timeout=settings.SOPHIA_WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False
    ) as client:
        return client.post(url, content=body, headers=headers)


def delivery_attempt(delivery_id: int, attempt: int, *, manual: bool = False) -> bool | None:
    """Try delivery `delivery_id` once if attempt number `attempt` is still due and unclaimed.

    Returns True when delivered, False when it failed, None when there was nothing to do (another
    worker has it, or it was already delivered).
    """
    now = timezone.now()
    if not _claim(delivery_id, attempt, now):
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    body = delivery.body.encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: delivery.event,
        EVENT_ID_HEADER: str(delivery.event_id),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(delivery.endpoint.secret, timestamp, body),
    }
    started = time.perf_counter()
    status_code, error = None, ""
    try:
        response = post(delivery.endpoint.url, body, headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    duration_ms = int((time.perf_counter() - started) * 1000)
    finished = timezone.now()
    WebhookAttempt.objects.create(
        delivery=delivery,
        at=finished,
        status_code=status_code,
        error=error,
        duration_ms=duration_ms,
        manual=manual,
    )
    update = {
        "attempts": F("attempts") + 1,
        "leased_until": None,
        "last_status_code": status_code,
        "last_error": error,
    }
    if not error:
        update |= {"status": WebhookDelivery.Status.DELIVERED, "delivered_at": finished}
        metrics.OUTGOING_WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
    else:
        metrics.OUTGOING_WEBHOOK_FAILURES.inc()
        next_at = finished + retry_delay(attempt + 1)
        if next_at - delivery.created_at > RETRY_FOR:
            update["status"] = WebhookDelivery.Status.FAILED
            metrics.OUTGOING_WEBHOOK_DELIVERIES.labels(outcome="failed").inc()
        else:
            update["next_attempt_at"] = next_at
            metrics.OUTGOING_WEBHOOK_DELIVERIES.labels(outcome="retry").inc()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**update)
    logger.info(
        "webhook %s %s to endpoint %s attempt %d: %s in %d ms",
        delivery.event,
        delivery.event_id,
        delivery.endpoint_id,
        attempt + 1,
        status_code or error,
        duration_ms,
        extra={"clinic": delivery.clinic_id, "duration_ms": duration_ms},
    )
    return not error


@task(queue_name="default")
def deliver_webhook(delivery_id: int, attempt: int, manual: bool = False) -> bool | None:
    with sophia_logging.bound(action="webhook.deliver"):
        return delivery_attempt(delivery_id, attempt, manual=manual)
