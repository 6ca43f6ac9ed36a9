"""Redis-held state that may be lost (DESIGN §6): locks, rate limits, typing, session cache.

PostgreSQL is the truth; everything here is a cache or a courtesy. So every function tolerates
Redis being absent (no REDIS_URL: the embedded demo) or unreachable: it returns None/False and the
caller carries on. Sockets time out fast (0.2 s) and, after a failure, Redis is skipped for a few
seconds so a dead Redis costs one timeout, not one per call. The first failure is logged once;
recovery is logged too.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone
from redis.commands.core import Script
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock as RedisLock

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT_SECONDS = 0.2
# After a failure, skip Redis this long before trying again.
RETRY_AFTER_SECONDS = 5.0

LOCK_TTL_SECONDS = 60
TYPING_TTL_SECONDS = 5
SESSION_TTL_SECONDS = 30 * 60
PAGE_TTL_SECONDS = 10 * 60
RATE_WINDOW_SECONDS = 60
TYPING_CHANNEL = "sophia:typing-channel"


def lock_key(session_id: str) -> str:
    return f"sophia:lock:{session_id}"


def rate_key(session_id: str) -> str:
    return f"sophia:ratelimit:{session_id}"


def typing_key(session_id: str) -> str:
    return f"sophia:typing:{session_id}"


def session_key(session_id: str) -> str:
    return f"sophia:session:{session_id}"


def page_key(session_id: str, page: int | str) -> str:
    return f"sophia:citas:{session_id}:page:{page}"


class _Connection:
    """One client per REDIS_URL (tests switch URLs with override_settings) plus a breaker."""

    def __init__(self) -> None:
        self._clients: dict[str, redis.Redis] = {}
        self._down_until = 0.0
        self._down_logged = False
        self._mutex = threading.Lock()

    def client(self) -> redis.Redis | None:
        url = settings.REDIS_URL
        if not url or time.monotonic() < self._down_until:
            return None
        with self._mutex:
            if url not in self._clients:
                self._clients[url] = redis.Redis.from_url(
                    url,
                    socket_timeout=SOCKET_TIMEOUT_SECONDS,
                    socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
                    decode_responses=True,
                )
            return self._clients[url]

    def failed(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
        if not self._down_logged:
            self._down_logged = True
            logger.warning("redis unreachable (%s); carrying on without it", type(exc).__name__)

    def succeeded(self) -> None:
        if self._down_logged:
            self._down_logged = False
            logger.info("redis reachable again")

    def reset(self) -> None:
        """Forget clients and the breaker (tests, and after a fork)."""
        with self._mutex:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        self._down_until = 0.0
        self._down_logged = False


_connection = _Connection()


def reset() -> None:
    _connection.reset()


def is_available() -> bool:
    """False when Redis is not configured or recently failed (no network call)."""
    return bool(settings.REDIS_URL) and time.monotonic() >= _connection._down_until


FAILED = object()  # `_call(..., default=FAILED)`: tell "Redis failed" from a falsy answer


def _call(fn, default: Any = None) -> Any:
    """Run fn(client) tolerating any Redis failure; `default` when Redis is unusable."""
    client = _connection.client()
    if client is None:
        return default
    try:
        result = fn(client)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        _connection.failed(exc)  # unreachable: skip Redis for a few seconds
        return default
    except redis.RedisError as exc:
        # Reachable but refusing (out of memory, read-only replica…): no breaker, just carry on.
        logger.warning("redis command failed: %s", type(exc).__name__)
        return default
    _connection.succeeded()
    return result


# --- per-conversation lock -------------------------------------------------------------------


class LockStatus(enum.Enum):
    ACQUIRED = "acquired"
    BUSY = "busy"  # someone else holds it
    UNAVAILABLE = "unavailable"  # Redis absent or down: serialise by PostgreSQL alone


@dataclass(frozen=True)
class Lock:
    status: LockStatus
    token: str = ""


# A turn that finds the lock held leaves a "someone waited" mark (as long-lived as the lock),
# so the owner learns on release whether a message may have been stored after its last look at
# the queue (bot.processing looks again only then, instead of after every task).


def waiting_key(session_id: str) -> str:
    return f"sophia:lock:{session_id}:waiting"


class Released(enum.Enum):
    NOT_OWNER = 0  # expired and moved on (or never ours)
    FREE = 1
    WAITED = 2  # someone found it held meanwhile


_scripts: dict[str, Script] = {}


def _script(r: redis.Redis, source: str) -> Script:
    """A Lua script run by EVALSHA (its text is sent once per server, not on every call)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = r.register_script(source)
    return script


def _redis_lock(r: redis.Redis, session_id: str, ttl: int, token: str = "") -> RedisLock:
    """redis-py's Lock (SET NX PX with a token; owner-only release and extend by script)."""
    lock = r.lock(lock_key(session_id), timeout=ttl, blocking=False, thread_local=False)
    if token:
        lock.local.token = token
    return lock


def acquire_lock(session_id: str, ttl: int = LOCK_TTL_SECONDS) -> Lock:
    def take(r: redis.Redis) -> str:
        lock = _redis_lock(r, session_id, ttl)
        if lock.acquire():
            return lock.local.token.decode()
        # Only when busy (rare). A mark set just after the owner released costs the next owner
        # a needless pending check; this task is re-queued anyway (BUSY), so nothing waits.
        r.set(waiting_key(session_id), "1", px=ttl * 1000)
        return ""

    token = _call(take, default=FAILED)
    if token is FAILED:
        return Lock(LockStatus.UNAVAILABLE)
    if token:
        return Lock(LockStatus.ACQUIRED, token)
    return Lock(LockStatus.BUSY)


def extend_lock(session_id: str, token: str, ttl: int = LOCK_TTL_SECONDS) -> bool:
    def extend(r: redis.Redis) -> bool:
        try:
            return _redis_lock(r, session_id, ttl, token).extend(ttl, replace_ttl=True)
        except LockNotOwnedError:
            return False

    return bool(token) and bool(_call(extend))


def release_lock_checked(session_id: str, token: str) -> Released | None:
    """Delete the lock only if it still holds our token, and say whether someone found it held
    meanwhile; None when Redis can't tell."""
    if not token:
        return Released.NOT_OWNER

    def release(r: redis.Redis) -> Released:
        try:
            _redis_lock(r, session_id, LOCK_TTL_SECONDS, token).release()
        except LockNotOwnedError:
            return Released.NOT_OWNER
        return Released.WAITED if r.delete(waiting_key(session_id)) else Released.FREE

    return _call(release)


def release_lock(session_id: str, token: str) -> bool:
    """Delete the lock only if it still holds our token (it may have expired and moved on)."""
    return release_lock_checked(session_id, token) in (Released.FREE, Released.WAITED)


def is_locked(session_id: str) -> bool | None:
    """True/False, or None when Redis can't tell."""
    exists = _call(lambda r: r.exists(lock_key(session_id)))
    return None if exists is None else bool(exists)


def locked_sessions(session_ids: list[str]) -> set[str]:
    """Which of these sessions' locks are held, in one round trip (the console's inbox)."""

    def check(r: redis.Redis) -> list:
        pipe = r.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.exists(lock_key(session_id))
        return pipe.execute()

    found = _call(check, default=[]) if session_ids else []
    return {s for s, held in zip(session_ids, found, strict=False) if held}


# --- rate limit ----------------------------------------------------------------------------


# Take one turn of the window if fewer than ARGV[1] were taken: 0, else the window's
# remaining milliseconds. The window starts at its first turn (PEXPIRE only on a new key).
_TAKE_TURN_SCRIPT = """
local count = tonumber(redis.call('get', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then
    local left = redis.call('pttl', KEYS[1])
    if left < 0 then
        redis.call('pexpire', KEYS[1], ARGV[2])
        left = tonumber(ARGV[2])
    end
    return left
end
redis.call('incr', KEYS[1])
if count == 0 then redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


def take_turn(session_id: str, limit: int) -> float | None:
    """Count one bot turn in the conversation's one-minute window if `limit` allows it.

    0.0 when allowed; otherwise the seconds until the window ends (the turn waits, nothing
    is counted); None when Redis is unusable (the caller counts from PostgreSQL).
    """
    window_ms = RATE_WINDOW_SECONDS * 1000
    keys = [rate_key(session_id)]
    left = _call(lambda r: _script(r, _TAKE_TURN_SCRIPT)(keys, [limit, window_ms], client=r))
    return None if left is None else int(left) / 1000


# --- typing ----------------------------------------------------------------------------------


def typing_event(session_id: str, typing: bool) -> dict:
    return {
        "session_id": session_id,
        "status": "typing" if typing else "stopped",
        "timestamp": timezone.now().isoformat(),
    }


def set_typing(session_id: str, typing: bool) -> dict:
    """Set/clear `sophia:typing:{id}` and publish the seed's JSON; returns the event."""
    event = typing_event(session_id, typing)

    def send(r: redis.Redis) -> None:
        pipe = r.pipeline(transaction=False)
        if typing:
            pipe.set(typing_key(session_id), "true", ex=TYPING_TTL_SECONDS)
        else:
            pipe.delete(typing_key(session_id))
        pipe.publish(TYPING_CHANNEL, json.dumps(event))
        pipe.execute()

    _call(send)
    return event


def _save_session_commands(pipe, session_id: str, fields: dict[str, Any]) -> None:
    mapping = {k: "" if v is None else str(v) for k, v in fields.items()}
    if mapping:
        pipe.hset(session_key(session_id), mapping=mapping)
    pipe.expire(session_key(session_id), SESSION_TTL_SECONDS)


def end_turn(
    session_id: str, session: dict[str, Any] | None = None, page: dict | None = None
) -> dict:
    """Typing stopped (`set_typing(…, False)`) and, when given, the session hash and the page it
    shows saved (`save_session`, `save_page`): one round trip at the end of a turn instead of
    three. Returns the typing event."""
    event = typing_event(session_id, False)

    def send(r: redis.Redis) -> None:
        pipe = r.pipeline(transaction=False)
        pipe.delete(typing_key(session_id))
        pipe.publish(TYPING_CHANNEL, json.dumps(event))
        if session is not None:
            _save_session_commands(pipe, session_id, session)
        if page is not None:
            pipe.set(page_key(session_id, page["page"]), json.dumps(page), ex=PAGE_TTL_SECONDS)
        pipe.execute()

    _call(send)
    return event


# --- session cache and page mappings --------------------------------------------------------


def save_session(session_id: str, fields: dict[str, Any]) -> bool:
    """HSET the session hash (None values become "") and refresh its 30-minute TTL."""

    def save(r: redis.Redis) -> bool:
        pipe = r.pipeline()
        _save_session_commands(pipe, session_id, fields)
        pipe.execute()
        return True

    return bool(_call(save, default=False))


def load_session(session_id: str) -> dict[str, str] | None:
    return _call(lambda r: r.hgetall(session_key(session_id)))


def save_page(session_id: str, page: int, data: dict) -> bool:
    return bool(
        _call(
            lambda r: r.set(page_key(session_id, page), json.dumps(data), ex=PAGE_TTL_SECONDS),
            default=False,
        )
    )


def load_page(session_id: str, page: int) -> dict | None:
    raw = _call(lambda r: r.get(page_key(session_id, page)))
    return json.loads(raw) if raw else None


def forget_session(session_id: str) -> bool:
    """Drop the session hash and page mappings (conversation closed)."""

    def forget(r: redis.Redis) -> bool:
        keys = [session_key(session_id), *r.scan_iter(match=page_key(session_id, "*"), count=100)]
        r.delete(*keys)
        return True

    return bool(_call(forget, default=False))


# --- health ----------------------------------------------------------------------------------


def ping() -> dict:
    """{"status": "up"|"down"|"not configured", "latency_ms"} for /health/ (ignores the breaker)."""
    if not settings.REDIS_URL:
        return {"status": "not configured"}
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
    )
    started = time.perf_counter()
    try:
        client.ping()
    except (redis.RedisError, OSError):
        return {"status": "down"}
    finally:
        client.close()
    return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
