"""Live fan-out to the console: the one helper every live change goes through.

    broadcast("clinic-7", "inbox.row", html)          # after the surrounding transaction commits
    broadcast("conversation-42", "typing", {"who": "bot", "typing": True})

Groups are `clinic-<id>` (inbox, stats) and `conversation-<id>` (one open conversation).
Each event gets a sequence number per group and is kept in a short per-group backlog, so a
page that reconnects after a blip asks for "everything after N" and gets exactly what it
missed (see `events_after`), or is told to reload its fragments when the gap is too old.

With Redis the numbers and the backlog live there (shared by every web and worker process);
without it (the embedded demo) they live in this process.

Rendering a fragment costs queries and a template, on every message of every patient. Most of
the time no page watches a given conversation (and at night no one watches the inbox), so each
socket registers the groups it watches (`watch`, refreshed while it is open) and producers ask
`watching(groups)` before rendering: a group no one watches gets no render and no send, only its
sequence number moves on, so a page rendered before its socket joined (or one whose socket
dropped meanwhile) learns on resync that it missed something and reloads its fragments.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import redis
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import close_old_connections, transaction
from django.dispatch import Signal
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

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


# A socket refreshes its watch this often; a watch not refreshed for WATCH_TTL_SECONDS is gone
# (a web process that died does not keep its pages "watching" for ever).
WATCH_REFRESH_SECONDS = 30.0
WATCH_TTL_SECONDS = 90.0
# A closed socket's watch lasts this long: a page whose connection dropped reconnects with a new
# socket and catches up from the backlog, which needs the events rendered meanwhile.
RECONNECT_GRACE_SECONDS = 60.0

# KEYS: per group its watchers key, then its sequence key. ARGV[1]: now, ARGV[2]: the sequence
# key's TTL, ARGV[3]: "1" to advance an unwatched group's sequence (a gap its pages will see).
# Returns one flag per group: 1 watched, 0 not.
_WATCHING = """
local now = tonumber(ARGV[1])
local flags = {}
for i = 1, #KEYS, 2 do
  redis.call('zremrangebyscore', KEYS[i], '-inf', now)
  if redis.call('zcard', KEYS[i]) > 0 then
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
    if ARGV[3] == '1' then
      redis.call('incr', KEYS[i + 1])
      redis.call('expire', KEYS[i + 1], ARGV[2])
    end
  end
end
return flags
"""


def _watchers_key(group: str) -> str:
    return f"sophia:live:{group}:watchers"


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
        self._watching_script = None
        self._seq: dict[str, int] = {}
        self._backlog: dict[str, deque[dict]] = {}
        self._watchers: dict[str, dict[str, float]] = {}  # group → channel → expiry

    def _client(self) -> redis.Redis | None:
        if not settings.REDIS_URL:
            return None
        if self._redis is None:
            with self._lock:  # several publisher threads may get here first at once
                if self._redis is None:
                    client = redis.Redis.from_url(
                        settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
                    )
                    self._script = client.register_script(_NUMBER_AND_KEEP)
                    self._watching_script = client.register_script(_WATCHING)
                    self._redis = client  # last: its scripts are ready when it is seen
        return self._redis

    def watch(
        self, groups: Iterable[str], channel: str, seconds: float, *, last: bool = False
    ) -> list[int]:
        """Register the watch; with `last`, then read each group's newest number (after the
        watch is in place: every later event of these groups is numbered and kept)."""
        groups = list(groups)
        expiry = time.time() + seconds
        client = self._client()
        if client is not None:
            with client.pipeline(transaction=False) as pipe:
                for group in groups:
                    pipe.zadd(_watchers_key(group), {channel: expiry})
                    pipe.expire(_watchers_key(group), int(WATCH_TTL_SECONDS) + 1)
                if last:
                    for group in groups:
                        pipe.get(_seq_key(group))
                results = pipe.execute()
            return [int(value or 0) for value in results[2 * len(groups) :]]
        with self._lock:
            for group in groups:
                self._watchers.setdefault(group, {})[channel] = expiry
            return [self._seq.get(group, 0) for group in groups] if last else []

    def watching(self, groups: list[str], *, gap: bool) -> set[str]:
        now = time.time()
        client = self._client()
        if client is not None:
            keys = [key for group in groups for key in (_watchers_key(group), _seq_key(group))]
            flags = self._watching_script(
                keys=keys, args=[now, BACKLOG_SECONDS, "1" if gap else "0"]
            )
            return {group for group, flag in zip(groups, flags, strict=True) if flag}
        found = set()
        with self._lock:
            for group in groups:
                watchers = self._watchers.get(group, {})
                for channel in [c for c, expiry in watchers.items() if expiry <= now]:
                    del watchers[channel]
                if watchers:
                    found.add(group)
                elif gap:
                    self._seq[group] = self._seq.get(group, 0) + 1
        return found

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
        if [e["seq"] for e in events] != list(range(seq + 1, seq + 1 + len(events))) or (
            last > seq + len(events)
        ):
            # The backlog no longer reaches back that far, or some were never kept (no one
            # watched when they happened): the page must reload.
            return None
        return events

    def reset(self) -> None:
        with self._lock:
            self._seq.clear()
            self._backlog.clear()
            self._watchers.clear()
            self._redis = None


_store = _Store()


class Publisher:
    """Sends for synchronous callers without making them wait, in submission order.

    One daemon thread with its own event loop: the Redis channel layer keeps one connection
    pool for it, and a webhook or a turn never waits for a render or a fan-out. With the
    in-process layer (the embedded demo) its queues belong to the server's loop, so sends
    happen right away through async_to_sync instead.
    """

    def __init__(self, name: str = "sophia-live") -> None:
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def in_background(self) -> bool:
        return not isinstance(get_channel_layer(), InMemoryChannelLayer | type(None))

    def submit(self, fn: Callable, *args: Any) -> None:
        if not self.in_background():
            fn(*args)
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put((fn, args))

    def group_send(self, group: str, message: dict) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        loop = getattr(_publisher_thread, "loop", None)
        if loop is not None:  # inside any publisher's thread: its own loop and Redis pool
            loop.run_until_complete(layer.group_send(group, message))
        else:
            async_to_sync(layer.group_send)(group, message)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        _publisher_thread.loop = self.loop
        while True:
            fn, args = self._queue.get()
            try:
                fn(*args)
            except Exception:
                logger.exception("live publisher task failed")
            try:
                close_old_connections()
            except Exception:  # the thread must outlive a database that went away
                logger.debug("live publisher: closing connections failed", exc_info=True)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything submitted so far has run (tests, benchmarks)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put((done.set, ()))
        done.wait(timeout)


_publisher_thread = threading.local()
publisher = Publisher()


class Coalescer:
    """Changes per key, sent together on a publisher thread, at most every `every` s per key.

    `add(key, items)` queues the items of a key (a clinic, say). While a send of that key waits
    for the publisher, later items join it, each once, in arrival order: a burst of changes
    costs one "who watches?" and one render of the latest state. With `every`, a busy key's
    sends are spaced: the first change after a quiet spell goes at once, the changes of a busy
    spell wait for the rest of the interval, in the publisher's thread, never in the caller's
    (with the in-process channel layer the publisher runs in the caller, so it never waits).
    """

    def __init__(
        self,
        send: Callable[[Any, list], None],
        *,
        every: float = 0.0,
        publisher: Publisher | None = None,
        name: str = "sophia-live",
    ) -> None:
        self.send = send
        self.every = every
        self.publisher = publisher or Publisher(name)
        self._lock = threading.Lock()
        self._pending: dict[Any, dict[Any, None]] = {}
        self._last_sent: dict[Any, float] = {}

    def add(self, key: Any, items: Iterable[Any] = ()) -> None:
        with self._lock:
            waiting = self._pending.get(key)
            if waiting is not None:  # a send of this key is queued: it takes these too
                waiting.update(dict.fromkeys(items))
                return
            self._pending[key] = dict.fromkeys(items)
        self.publisher.submit(self._send_pending, key)

    def _send_pending(self, key: Any) -> None:
        if self.every and self.publisher.in_background():
            wait = self._last_sent.get(key, float("-inf")) + self.every - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the publisher's thread: changes meanwhile join this send
            self._last_sent[key] = time.monotonic()
        # Taken before sending: a change made meanwhile queues the next send.
        with self._lock:
            items = list(self._pending.pop(key, {}))
        self.send(key, items)


# Sent after commit when conversations change outside the console (a webhook stored messages or
# statuses, a turn ran, the outbox sent): receivers get `conversation_ids`, `wa_message_ids` and
# `clinic_id` (the conversations' clinic when the sender knew it, else None).
conversation_activity = Signal()


def touch(
    conversation_ids: Iterable[int] = (),
    wa_message_ids: Iterable[str] = (),
    *,
    clinic_id: int | None = None,
) -> None:
    """Tell the live views that these conversations (or messages, by WhatsApp id) changed.

    `clinic_id`, when the caller knows the conversations' clinic, saves the receivers a read.
    Costs the caller nothing but an on-commit hook: rendering and fan-out run in the
    publisher's thread.
    """
    ids, wamids = list(conversation_ids), [w for w in wa_message_ids if w]
    if not ids and not wamids:
        return

    def notify() -> None:
        for receiver, result in conversation_activity.send_robust(
            sender=None, conversation_ids=ids, wa_message_ids=wamids, clinic_id=clinic_id
        ):
            if isinstance(result, Exception):
                logger.error("live receiver %r failed", receiver, exc_info=result)

    transaction.on_commit(notify, robust=True)


def send_ephemeral(groups: str | Iterable[str], event_type: str, data: dict[str, Any]) -> None:
    """A passing event (typing, who is viewing) to one group or several: not numbered, not kept
    for resync, and sent only to the groups some page watches (asked once for all of them)."""
    groups = [groups] if isinstance(groups, str) else list(groups)
    if settings.SOPHIA_LIVE_RELAY_URL:
        for group in groups:
            _relay(group, event_type, data, ephemeral=True)
        return
    publisher.submit(_send_ephemeral_now, groups, event_type, data)


def _send_ephemeral_now(groups: list[str], event_type: str, data: dict[str, Any]) -> None:
    try:
        for group in watching(groups, gap=False):
            message = {"type": CONSUMER_MESSAGE_TYPE, "group": group, "event": event_type}
            publisher.group_send(group, {**message, "data": data})
    except Exception:
        logger.debug("ephemeral %s to %s not sent", event_type, groups, exc_info=True)


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
    if settings.SOPHIA_LIVE_RELAY_URL:
        _relay(group, event_type, payload, ephemeral=False)
        return None
    event: dict[str, Any] = {"group": group, "event": event_type}
    if isinstance(payload, str):
        event["html"] = payload
    else:
        event["data"] = payload
    try:
        numbered = _store.number(group, event)
        publisher.group_send(group, {"type": CONSUMER_MESSAGE_TYPE, **numbered})
        return numbered
    except Exception:
        logger.warning("live event %s to %s not sent", event_type, group, exc_info=True)
        return None


def watching(groups: Iterable[str], *, gap: bool = True) -> set[str]:
    """The groups among `groups` that some open page watches (one Redis round trip).

    Ask before rendering: an unwatched group is not worth a render. With `gap` (numbered
    events), each unwatched group's sequence number moves on as if its event had been sent, so
    a page that rendered before its socket joined sees the gap on resync and reloads. Through
    the embedded demo's relay this process can't know who watches: every group counts. When
    the store can't be asked, every group counts too (a render too many, never one too few).
    """
    groups = list(dict.fromkeys(groups))
    if not groups or settings.SOPHIA_LIVE_RELAY_URL:
        return set(groups)
    try:
        return _store.watching(groups, gap=gap)
    except Exception:
        logger.warning("live: could not ask who watches %s", groups, exc_info=True)
        return set(groups)


def watch(groups: Iterable[str], channel: str, seconds: float = WATCH_TTL_SECONDS) -> None:
    """Register a socket (`channel`) as watching `groups` for the next `seconds` (an open socket
    refreshes it; a closed one leaves RECONNECT_GRACE_SECONDS for its page to come back)."""
    _store.watch(groups, channel, seconds)


def page_sequences(groups: Iterable[str]) -> dict[str, int]:
    """For a page about to render `groups`: their newest sequence numbers, read once the page
    itself counts as watching them (for RECONNECT_GRACE_SECONDS, one Redis round trip).

    A page renders its data after reading the numbers, and its socket joins a moment after it
    loads. An event between the two would be unwatched, hence neither rendered nor kept, and
    the socket's first resync would find a gap and reload the page (a receptionist's
    half-written reply with it). Watched from the start, such an event is kept in the backlog,
    and the resync replays it.
    """
    groups = list(dict.fromkeys(groups))
    channel = f"page.{secrets.token_hex(8)}"
    try:
        numbers = _store.watch(groups, channel, RECONNECT_GRACE_SECONDS, last=True)
    except Exception:  # Redis blinked: the page still renders, and may reload on its resync
        logger.warning("live: could not register the page of %s", groups, exc_info=True)
        return dict.fromkeys(groups, 0)
    return dict(zip(groups, numbers, strict=True))


# --- the embedded demo's relay ----------------------------------------------------------------
# Without Redis the channel layer lives inside the web process, so a separate worker process
# hands its events to the web process over HTTP (signed with SECRET_KEY), which sends them.


def _relay_signature(body: bytes) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), body, hashlib.sha256).hexdigest()


def _relay(group: str, event_type: str, payload: Any, *, ephemeral: bool) -> None:
    body = json.dumps(
        {"group": group, "event": event_type, "payload": payload, "ephemeral": ephemeral}
    ).encode()
    try:
        httpx.post(
            settings.SOPHIA_LIVE_RELAY_URL,
            content=body,
            headers={"Content-Type": "application/json", "X-Sophia-Live": _relay_signature(body)},
            timeout=2,
        )
    except httpx.HTTPError:
        logger.warning("live event %s to %s not relayed", event_type, group)


@csrf_exempt
@require_POST
def relay(request: HttpRequest) -> HttpResponse:
    """The web process's end of the embedded demo's relay (404 unless SOPHIA_LIVE_RELAY)."""
    if not settings.SOPHIA_LIVE_RELAY:
        raise Http404("no relay")
    signature = request.headers.get("X-Sophia-Live", "")
    if not hmac.compare_digest(signature, _relay_signature(request.body)):
        return HttpResponse(status=403)
    try:
        data = json.loads(request.body)
        group, event_type, payload = data["group"], data["event"], data["payload"]
    except (ValueError, KeyError, TypeError):
        return HttpResponse(status=400)
    if not isinstance(group, str) or not isinstance(event_type, str):
        return HttpResponse(status=400)
    if data.get("ephemeral"):
        send_ephemeral(group, event_type, payload)
    else:
        send_now(group, event_type, payload)
    return HttpResponse(status=204)


def last_sequence(group: str) -> int:
    """The newest sequence number of a group (0 before its first event)."""
    return _store.last(group)


def events_after(group: str, seq: int) -> list[dict] | None:
    """The events of `group` numbered above `seq`, oldest first; None when some are gone."""
    return _store.after(group, seq)


def reset() -> None:
    """Forget in-process numbers and clients (tests switch settings between runs)."""
    _store.reset()


class LiveConsumerMixin:
    """For websocket consumers of live groups (`self.joined`): forwards numbered events to the
    page as JSON frames, answers the page's resync with exactly what it missed, and tells the
    producers that someone watches (`start_watching` once joined, `stop_watching` on close)."""

    joined: list[str]
    _watch_task: asyncio.Task | None = None

    async def start_watching(self) -> None:
        """Register the joined groups as watched, and keep them so while the socket is open."""
        await asyncio.to_thread(watch, self.joined, self.channel_name)
        self._watch_task = asyncio.create_task(self._keep_watching())

    async def _keep_watching(self) -> None:
        while True:
            await asyncio.sleep(WATCH_REFRESH_SECONDS)
            try:
                await asyncio.to_thread(watch, self.joined, self.channel_name)
            except Exception:  # Redis blinked: the next refresh (well inside the TTL) will do
                logger.warning("live: refreshing the watch of %s failed", self.joined)

    async def stop_watching(self) -> None:
        """The socket closed: its watch lapses after RECONNECT_GRACE_SECONDS, so a page whose
        connection dropped finds what it missed in the backlog when it reconnects."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if getattr(self, "joined", None):
            try:
                await asyncio.to_thread(
                    watch, self.joined, self.channel_name, RECONNECT_GRACE_SECONDS
                )
            except Exception:  # it expires on its own
                logger.warning("live: shortening the watch of %s failed", self.joined)

    async def resync(self, since: object) -> None:
        since = since if isinstance(since, dict) else {}
        for group in self.joined:
            try:
                seq = max(0, int(since.get(group, 0)))
            except (TypeError, ValueError):
                seq = 0
            events = await database_sync_to_async(events_after)(group, seq)
            if events is None:
                last = await database_sync_to_async(last_sequence)(group)
                await self.send_json({"group": group, "event": "resync.reset", "seq": last})
                continue
            for event in events:
                await self.send_json(event)
        await self.send_json({"event": "resync.done"})

    async def live_event(self, message: dict) -> None:
        frame = {k: message[k] for k in ("group", "event", "seq", "html", "data") if k in message}
        await self.send_json(frame)
