"""Live fan-out to the console: the one helper every live change goes through.

    broadcast("clinic-7", "inbox.row", html)          # after the surrounding transaction commits
    broadcast("conversation-42", "typing", {"who": "bot", "typing": True})

Groups are `clinic-<id>` (inbox, stats) and `conversation-<id>` (one open conversation).
Each event gets a sequence number per group and is kept in a short per-group backlog, so a
page that reconnects after a blip asks for "everything after N" and gets exactly what it
missed (see `events_after`), or is told to reload its fragments when the gap is too old.

With Redis the numbers and the backlog live there (shared by every web and worker process);
without it (the embedded demo) they live in this process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

# How many events per group a reconnecting page can catch up on, and for how long.
BACKLOG_SIZE = 200
BACKLOG_SECONDS = 3600
CONSUMER_MESSAGE_TYPE = "live.event"

_NUMBER_AND_KEEP = """
local seq = redis.call('incr', KEYS[1])
redis.call('expire', KEYS[1], ARGV[3])
local event = cjson.decode(ARGV[1])
event['seq'] = seq
local encoded = cjson.encode(event)
redis.call('zadd', KEYS[2], seq, encoded)
redis.call('zremrangebyrank', KEYS[2], 0, -1 - tonumber(ARGV[2]))
redis.call('expire', KEYS[2], ARGV[3])
return encoded
"""


def _seq_key(group: str) -> str:
    return f"sophia:live:{group}:seq"


def _backlog_key(group: str) -> str:
    return f"sophia:live:{group}:backlog"


class _Store:
    """Sequence numbers and backlogs: Redis when configured, else in-process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._script = None
        self._seq: dict[str, int] = {}
        self._backlog: dict[str, deque[dict]] = {}

    def _client(self) -> redis.Redis | None:
        if not settings.REDIS_URL:
            return None
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
            )
            self._script = self._redis.register_script(_NUMBER_AND_KEEP)
        return self._redis

    def number(self, group: str, event: dict) -> dict:
        client = self._client()
        if client is not None:
            encoded = self._script(
                keys=[_seq_key(group), _backlog_key(group)],
                args=[json.dumps(event), BACKLOG_SIZE, BACKLOG_SECONDS],
            )
            return json.loads(encoded)
        with self._lock:
            seq = self._seq.get(group, 0) + 1
            self._seq[group] = seq
            numbered = {**event, "seq": seq}
            self._backlog.setdefault(group, deque(maxlen=BACKLOG_SIZE)).append(numbered)
            return numbered

    def last(self, group: str) -> int:
        client = self._client()
        if client is not None:
            return int(client.get(_seq_key(group)) or 0)
        with self._lock:
            return self._seq.get(group, 0)

    def after(self, group: str, seq: int) -> list[dict] | None:
        client = self._client()
        if client is not None:
            raw = client.zrangebyscore(_backlog_key(group), f"({seq}", "+inf")
            events = [json.loads(item) for item in raw]
        else:
            with self._lock:
                events = [e for e in self._backlog.get(group, ()) if e["seq"] > seq]
        last = self.last(group)
        if last > seq and (not events or events[0]["seq"] != seq + 1):
            return None  # the backlog no longer reaches back that far
        return events

    def reset(self) -> None:
        with self._lock:
            self._seq.clear()
            self._backlog.clear()
            self._redis = None


_store = _Store()


def broadcast(group: str, event_type: str, payload: str | dict[str, Any]) -> None:
    """Send an event to a channel group once the current transaction commits.

    `payload` is either HTML (fragments carrying `hx-swap-oob`, swapped in by htmx's ws
    extension) or a JSON-able dict for the page's own script (typing, viewers, attention).
    Outside a transaction it is sent at once. Failures are logged, never raised: a live view
    that misses an event catches up through its sequence numbers.
    """
    transaction.on_commit(lambda: send_now(group, event_type, payload))


def send_now(group: str, event_type: str, payload: str | dict[str, Any]) -> dict | None:
    """Number, keep and send one event now (callers outside a transaction, and tests)."""
    event: dict[str, Any] = {"group": group, "event": event_type}
    if isinstance(payload, str):
        event["html"] = payload
    else:
        event["data"] = payload
    try:
        numbered = _store.number(group, event)
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(group, {"type": CONSUMER_MESSAGE_TYPE, **numbered})
        return numbered
    except Exception:
        logger.warning("live event %s to %s not sent", event_type, group, exc_info=True)
        return None


def last_sequence(group: str) -> int:
    """The newest sequence number of a group (0 before its first event)."""
    return _store.last(group)


def events_after(group: str, seq: int) -> list[dict] | None:
    """The events of `group` numbered above `seq`, oldest first; None when some are gone."""
    return _store.after(group, seq)


def reset() -> None:
    """Forget in-process numbers and clients (tests switch settings between runs)."""
    _store.reset()
