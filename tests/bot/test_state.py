"""bot.state: the Redis keys of DESIGN §6, and how they behave when Redis is gone."""

import json

import pytest

from bot import state

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _fresh_state():
    state.reset()
    yield
    state.reset()


@pytest.fixture
def redis_down(settings):
    settings.REDIS_URL = CLOSED_PORT_URL
    state.reset()
    yield
    state.reset()


def test_it_gives_the_lock_to_one_owner_at_a_time(r):
    first = state.acquire_lock("573001234567")
    second = state.acquire_lock("573001234567")
    assert first.status is state.LockStatus.ACQUIRED
    assert second.status is state.LockStatus.BUSY
    assert r.get("sophia:lock:573001234567") == first.token
    assert 0 < r.ttl("sophia:lock:573001234567") <= 60


def test_it_releases_the_lock_only_for_its_owner(r):
    lock = state.acquire_lock("573001234567")
    assert state.release_lock("573001234567", "someone-else") is False
    assert state.is_locked("573001234567") is True
    assert state.release_lock("573001234567", lock.token) is True
    assert state.is_locked("573001234567") is False


def test_it_does_not_release_a_lock_that_expired_and_moved_on(r):
    mine = state.acquire_lock("573001234567")
    r.delete("sophia:lock:573001234567")  # our TTL ran out …
    theirs = state.acquire_lock("573001234567")  # … and another turn took it
    assert state.release_lock("573001234567", mine.token) is False
    assert r.get("sophia:lock:573001234567") == theirs.token


def test_it_extends_only_its_own_lock(r):
    lock = state.acquire_lock("573001234567", ttl=5)
    assert state.extend_lock("573001234567", "not-mine", ttl=60) is False
    assert state.extend_lock("573001234567", lock.token, ttl=60) is True
    assert r.ttl("sophia:lock:573001234567") > 5


def test_it_tells_the_owner_on_release_whether_someone_found_the_lock_held(r):
    lock = state.acquire_lock("573001234567")
    assert state.release_lock_checked("573001234567", lock.token) is state.Released.FREE
    lock = state.acquire_lock("573001234567")
    assert state.acquire_lock("573001234567").status is state.LockStatus.BUSY
    assert 0 < r.pttl("sophia:lock:573001234567:waiting") <= 60_000  # gone with the lock
    assert state.release_lock_checked("573001234567", lock.token) is state.Released.WAITED
    assert r.keys("sophia:lock:*") == []
    assert state.release_lock_checked("573001234567", lock.token) is state.Released.NOT_OWNER


def test_it_ends_a_turn_with_typing_stopped_and_the_session_mirrored(r):
    state.set_typing("573001234567", True)
    page = {"page": 2, "citas_mostradas": [{"posicion": 1, "slot_id": 7}]}
    event = state.end_turn("573001234567", {"estado_flujo": "CITAS_MOSTRADAS", "x": None}, page)
    assert event["status"] == "stopped"
    assert r.exists("sophia:typing:573001234567") == 0
    assert r.hgetall("sophia:session:573001234567") == {"estado_flujo": "CITAS_MOSTRADAS", "x": ""}
    assert 1700 < r.ttl("sophia:session:573001234567") <= 1800
    assert state.load_page("573001234567", 2) == page
    state.end_turn("573001234568")  # typing only
    assert r.exists("sophia:session:573001234568") == 0


def test_it_counts_turns_in_a_one_minute_window_and_says_how_long_to_wait(r):
    waits = [state.take_turn("573001234567", limit=3) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert all(0 < wait <= 60 for wait in waits[3:])
    assert r.get("sophia:ratelimit:573001234567") == "3"  # a turn that waits is not counted
    assert 0 < r.ttl("sophia:ratelimit:573001234567") <= 60


def test_it_sets_typing_and_publishes_the_seed_json(r):
    pubsub = r.pubsub()
    pubsub.subscribe("sophia:typing-channel")
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    state.set_typing("573001234567", True)
    assert r.get("sophia:typing:573001234567") == "true"
    assert 0 < r.ttl("sophia:typing:573001234567") <= 5
    state.set_typing("573001234567", False)
    assert r.exists("sophia:typing:573001234567") == 0
    events = [json.loads(pubsub.get_message(timeout=1)["data"]) for _ in range(2)]
    pubsub.close()
    assert [e["status"] for e in events] == ["typing", "stopped"]
    assert {e["session_id"] for e in events} == {"573001234567"}
    assert all(e["timestamp"] for e in events)


def test_it_keeps_the_session_hash_for_thirty_minutes(r):
    state.save_session("573001234567", {"estado_flujo": "VALIDADO", "paciente_id": None})
    assert r.hgetall("sophia:session:573001234567") == {
        "estado_flujo": "VALIDADO",
        "paciente_id": "",
    }
    assert 1700 < r.ttl("sophia:session:573001234567") <= 1800
    assert state.load_session("573001234567")["estado_flujo"] == "VALIDADO"


def test_it_keeps_page_mappings_for_ten_minutes_and_forgets_them_on_close(r):
    state.save_page("573001234567", 2, {"page": 2, "citas_mostradas": [{"posicion": 1}]})
    state.save_session("573001234567", {"estado_flujo": "CITAS_MOSTRADAS"})
    assert state.load_page("573001234567", 2)["page"] == 2
    assert 500 < r.ttl("sophia:citas:573001234567:page:2") <= 600
    state.forget_session("573001234567")
    assert r.keys("sophia:*573001234567*") == []


def test_it_carries_on_without_redis(redis_down):
    assert state.acquire_lock("573001234567").status is state.LockStatus.UNAVAILABLE
    assert state.release_lock("573001234567", "token") is False
    assert state.take_turn("573001234567", limit=10) is None
    assert state.is_locked("573001234567") is None
    assert state.save_session("573001234567", {"estado_flujo": "INICIAL"}) is False
    assert state.load_page("573001234567", 1) is None
    assert state.set_typing("573001234567", True)["status"] == "typing"
    assert state.is_available() is False


def test_it_logs_redis_going_down_once(redis_down, caplog):
    with caplog.at_level("WARNING", logger="bot.state"):
        for _ in range(3):
            state.acquire_lock("573001234567")
            state._connection._down_until = 0.0  # force a real attempt each time
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1


def test_it_works_without_redis_configured(settings):
    settings.REDIS_URL = ""
    assert state.acquire_lock("573001234567").status is state.LockStatus.UNAVAILABLE
    assert state.ping() == {"status": "not configured"}


def test_it_reports_redis_health(settings):
    up = state.ping()
    assert up["status"] == "up"
    assert up["latency_ms"] >= 0
    settings.REDIS_URL = CLOSED_PORT_URL
    assert state.ping() == {"status": "down"}


def test_it_keeps_using_redis_after_a_refused_command(r):
    r.hset("sophia:ratelimit:573001234567", "oops", "1")  # wrong type: GET is refused
    assert state.take_turn("573001234567", limit=10) is None
    assert state.is_available() is True  # reachable: no breaker for a refused command
    assert state.acquire_lock("573001234567").status is state.LockStatus.ACQUIRED
