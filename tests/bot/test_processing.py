"""bot.processing: turns run one at a time, in arrival order, none lost (DESIGN §6).

Messages enter through the real webhook (signed POSTs with Django's test client); queued tasks
run through the worker's own claim-and-run step; replies go out over real HTTP to the fake Graph
API. The engine is replaced by an echo engine here (its own tests cover it), except in the
Redis-down booking test, which runs the real one.
"""

import datetime as dt
import itertools
import json
import threading

import pytest
from django.db import connection
from django.db.models import F
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bot import engine, periodic, processing, state
from bot.management.commands.run_worker import SophiaWorker
from bot.messages import Reply
from bot.models import Conversation, Direction, Message, MessageStatus
from bot.webhook import signature_for
from clinics.models import Appointment, SlotHold
from tests.fakes import graph_server

fake_graph = graph_server.fake_graph  # the fixture

WA_ID = "573001234567"
APP_SECRET = "test-app-secret"
_ids = itertools.count(1)


# --- helpers ---------------------------------------------------------------------------------


def text_message(text: str, *, wa_id: str = WA_ID, wamid: str | None = None, ts: int | None = None):
    return {
        "from": wa_id,
        "id": wamid or f"wamid.IN{next(_ids):06d}",
        "timestamp": str(ts if ts is not None else int(timezone.now().timestamp())),
        "type": "text",
        "text": {"body": text},
    }


def reply_message(reply_id: str, title: str, *, kind: str = "list_reply", wa_id: str = WA_ID):
    return {
        "from": wa_id,
        "id": f"wamid.IN{next(_ids):06d}",
        "timestamp": str(int(timezone.now().timestamp())),
        "type": "interactive",
        "interactive": {"type": kind, kind: {"id": reply_id, "title": title}},
    }


def webhook_body(phone_number_id: str, messages: list[dict], name: str = "Ana") -> bytes:
    wa_ids = {m["from"] for m in messages}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": name}, "wa_id": w} for w in wa_ids],
        "messages": messages,
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "0", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(payload).encode()


def post_webhook(body: bytes) -> int:
    response = Client().post(
        "/whatsapp/webhook/",
        body,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=signature_for(body, APP_SECRET),
    )
    return response.status_code


def receive(clinic, *messages: dict) -> Conversation:
    assert post_webhook(webhook_body(clinic.phone_number_id, list(messages))) == 200
    return Conversation.objects.get(clinic=clinic, wa_id=messages[0]["from"])


def test_worker() -> SophiaWorker:
    return SophiaWorker(
        queue_names=["*"],
        interval=0,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="test-worker",
        excluded_queue_names=[],
        periodic_jobs=False,
        periodic_every=1,
    )


test_worker.__test__ = False  # a helper, not a test


def run_ready_tasks() -> int:
    """Run queued tasks the way run_worker does, until none is ready; how many ran."""
    worker = test_worker()
    ran = 0
    while worker.run_one():
        ran += 1
    return ran


def inbound(conversation) -> list[Message]:
    return list(conversation.messages.filter(direction=Direction.IN).order_by("id"))


class EchoEngine:
    """Stands in for bot.engine.step: answers "eco: <text>" and remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.snapshots: list[engine.Snapshot] = []
        self.lock = threading.Lock()

    def __call__(self, snapshot, inbound, ctx) -> engine.StepResult:
        with self.lock:
            self.seen.append(inbound.text)
            self.snapshots.append(snapshot)
        seen = [*snapshot.data.get("seen", []), inbound.text]
        return engine.StepResult(
            replies=[Reply(kind="text", text=f"eco: {inbound.text}")],
            snapshot=engine.Snapshot(
                state=engine.State.IDENTIFIED, data={"seen": seen}, patient_id=snapshot.patient_id
            ),
        )


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    state.reset()
    yield
    state.reset()


@pytest.fixture
def echo(monkeypatch) -> EchoEngine:
    fake = EchoEngine()
    monkeypatch.setattr(engine, "step", fake)
    return fake


# --- nothing lost, nothing doubled -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_replies_once_to_a_duplicate_delivery(clinic, echo, fake_graph):
    message = text_message("hola")
    receive(clinic, message)
    receive(clinic, message)  # Meta redelivers the same payload
    run_ready_tasks()
    fake_graph.wait_for_messages(1)
    assert [m.text for m in fake_graph.messages_to(WA_ID)] == ["eco: hola"]
    assert echo.seen == ["hola"]
    assert Message.objects.filter(direction=Direction.IN).count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_processes_a_burst_of_five_in_order(clinic, echo, fake_graph):
    second = int(timezone.now().timestamp())
    conversation = None
    for n in range(1, 6):  # five webhook POSTs within the same second
        conversation = receive(clinic, text_message(f"mensaje {n}", ts=second))
    assert DBTaskResult.objects.ready().count() == 5

    # Two workers race for the conversation: one runs every turn, the other backs off.
    results = []

    def work() -> None:
        try:
            results.append(processing.process_conversation(conversation.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    expected = [f"mensaje {n}" for n in range(1, 6)]
    assert sorted(results) == [0, 5]
    assert echo.seen == expected
    assert [m.status for m in inbound(conversation)] == [MessageStatus.PROCESSED] * 5
    fake_graph.wait_for_messages(5)
    assert [m.text for m in fake_graph.messages_to(WA_ID)] == [f"eco: {t}" for t in expected]
    conversation.refresh_from_db()
    assert conversation.context["seen"] == expected
    run_ready_tasks()  # the other queued tasks find nothing left to do
    assert len(fake_graph.messages_to(WA_ID)) == 5


@pytest.mark.django_db(transaction=True)
def test_it_orders_turns_by_whatsapp_timestamp(clinic, echo, fake_graph):
    second = int(timezone.now().timestamp())
    receive(clinic, text_message("después", ts=second + 1))
    conversation = receive(clinic, text_message("antes", ts=second))
    processing.process_conversation(conversation.pk)
    assert echo.seen == ["antes", "después"]


class Killed(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs, the transaction is lost."""


@pytest.mark.django_db(transaction=True)
def test_it_processes_a_message_left_by_a_turn_killed_midway(clinic, echo, fake_graph, monkeypatch):
    from bot import whatsapp

    real_queue = whatsapp.queue_replies
    calls = []

    def dies_once(conversation, replies, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise Killed
        return real_queue(conversation, replies, **kwargs)

    monkeypatch.setattr(whatsapp, "queue_replies", dies_once)
    conversation = receive(clinic, text_message("hola"))
    DBTaskResult.objects.all().delete()  # the task died with its worker
    with pytest.raises(Killed):
        processing.process_conversation(conversation.pk)

    (message,) = inbound(conversation)
    assert message.status == MessageStatus.RECEIVED  # the turn rolled back
    assert not Message.objects.filter(direction=Direction.OUT).exists()
    assert state.is_locked(WA_ID) is False  # released on the way out

    later = timezone.now() + dt.timedelta(seconds=20)
    assert periodic.pick_up_stranded_turns(now=later) == 1
    assert periodic.pick_up_stranded_turns(now=later) == 0  # already queued: not twice
    run_ready_tasks()
    fake_graph.wait_for_messages(1)
    message.refresh_from_db()
    assert message.status == MessageStatus.PROCESSED
    assert [m.text for m in fake_graph.messages_to(WA_ID)] == ["eco: hola"]


@pytest.mark.django_db(transaction=True)
def test_it_waits_for_a_lock_held_by_someone_else(clinic, echo, fake_graph):
    conversation = receive(clinic, text_message("hola"))
    DBTaskResult.objects.all().delete()
    other = state.acquire_lock(WA_ID)

    assert processing.process_conversation(conversation.pk) == 0
    assert inbound(conversation)[0].status == MessageStatus.RECEIVED
    (retry,) = DBTaskResult.objects.ready().filter(task_path="bot.processing.run_turns") or [None]
    assert retry is None  # not ready yet: it runs a moment later …
    (retry,) = DBTaskResult.objects.filter(task_path="bot.processing.run_turns")
    assert retry.run_after > timezone.now() - dt.timedelta(seconds=1)
    assert retry.args_kwargs["args"] == [conversation.pk, 1]

    state.release_lock(WA_ID, other.token)
    DBTaskResult.objects.filter(pk=retry.pk).update(run_after=timezone.now())  # … now
    assert run_ready_tasks() == 1
    fake_graph.wait_for_messages(1)
    assert inbound(conversation)[0].status == MessageStatus.PROCESSED
    assert echo.seen == ["hola"]


# --- Redis down ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_answers_in_order_with_redis_down(clinic, echo, fake_graph, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    state.reset()
    conversation = None
    for n in range(1, 4):
        conversation = receive(clinic, text_message(f"mensaje {n}"))
    run_ready_tasks()
    fake_graph.wait_for_messages(3)
    assert echo.seen == ["mensaje 1", "mensaje 2", "mensaje 3"]
    assert [m.status for m in inbound(conversation)] == [MessageStatus.PROCESSED] * 3


def drive_booking(clinic, send, replies_so_far) -> None:
    """Walk the real engine from "hola" to a confirmed appointment, whatever its wording."""
    send(text_message("hola"))
    send(text_message("1020304050"))
    send(text_message("tengo fiebre y dolor de cabeza"))
    listing = next(m for m in reversed(replies_so_far()) if m.rows)
    row = listing.rows[0]
    send(reply_message(row["id"], row["title"]))
    confirm = next(m for m in reversed(replies_so_far()) if m.buttons)
    button = confirm.buttons[0]
    send(reply_message(button["id"], button["title"], kind="button_reply"))


@pytest.mark.django_db(transaction=True)
def test_it_still_books_with_redis_down(clinic, doctor, slots, patient, fake_graph, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    state.reset()

    def send(message: dict) -> None:
        receive(clinic, message)
        run_ready_tasks()

    drive_booking(clinic, send, lambda: fake_graph.messages_to(WA_ID))
    appointment = Appointment.objects.get(patient=patient)
    assert appointment.slot_id == slots[0].pk
    conversation = Conversation.objects.get(wa_id=WA_ID)
    assert conversation.state == engine.State.BOOKED
    assert (
        Message.objects.filter(direction=Direction.IN, status=MessageStatus.RECEIVED).count() == 0
    )


# --- rate limit, human mode, poison messages --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_defers_past_the_rate_limit_and_answers_later(clinic, echo, fake_graph, r):
    conversation = None
    for n in range(1, 13):
        conversation = receive(clinic, text_message(f"m{n}"))
    DBTaskResult.objects.all().delete()
    processing.process_conversation(conversation.pk)

    assert echo.seen == [f"m{n}" for n in range(1, 11)]
    fake_graph.wait_for_messages(11)
    texts = [m.text for m in fake_graph.messages_to(WA_ID)]
    assert texts[:10] == [f"eco: m{n}" for n in range(1, 11)]
    assert texts[10] == "Por favor espera un momento…"
    # m11 and m12 wait, unread by the engine but kept; a turn is queued for the next window.
    statuses = [m.status for m in inbound(conversation)]
    assert statuses == [MessageStatus.PROCESSED] * 10 + [MessageStatus.RECEIVED] * 2
    (later,) = DBTaskResult.objects.filter(task_path="bot.processing.run_turns")
    wait = (later.run_after - timezone.now()).total_seconds()
    assert 50 < wait <= 60
    assert all(m.attempts <= 1 for m in inbound(conversation))  # waiting is no failed run

    # A second run inside the window changes nothing and sends no second notice.
    processing.process_conversation(conversation.pk)
    assert len(echo.seen) == 10 and len(fake_graph.messages_to(WA_ID)) == 11

    r.delete(f"sophia:ratelimit:{WA_ID}")  # what the window's end does
    processing.process_conversation(conversation.pk)
    assert echo.seen[10:] == ["m11", "m12"]
    fake_graph.wait_for_messages(13)
    assert [m.text for m in fake_graph.messages_to(WA_ID)][11:] == ["eco: m11", "eco: m12"]
    assert {m.status for m in inbound(conversation)} == {MessageStatus.PROCESSED}


@pytest.mark.django_db(transaction=True)
def test_it_answers_a_choice_sent_during_the_limit_once_the_window_allows(
    clinic, echo, fake_graph, r, settings
):
    settings.SOPHIA_RATE_LIMIT_PER_MINUTE = 2
    for text in ("uno", "dos", "3"):
        conversation = receive(clinic, text_message(text))
    processing.process_conversation(conversation.pk)
    assert echo.seen == ["uno", "dos"]
    r.delete(f"sophia:ratelimit:{WA_ID}")
    run_ready_tasks_due_later()
    assert echo.seen == ["uno", "dos", "3"]
    fake_graph.wait_for_messages(4)
    assert fake_graph.messages_to(WA_ID)[-1].text == "eco: 3"


def run_ready_tasks_due_later() -> None:
    """Run the queued turns as if their `run_after` had come."""
    DBTaskResult.objects.update(run_after=timezone.now())
    run_ready_tasks()


@pytest.mark.django_db(transaction=True)
def test_it_greets_once_for_a_burst_of_greetings(clinic, echo, fake_graph):
    for text in ("hola", "Hola!", "buenas", "hola buenos días", "me duele la cabeza"):
        conversation = receive(clinic, text_message(text))
    DBTaskResult.objects.all().delete()
    processing.process_conversation(conversation.pk)
    assert echo.seen == ["me duele la cabeza"]
    assert {m.status for m in inbound(conversation)} == {MessageStatus.PROCESSED}
    assert [m.error for m in inbound(conversation)][:4] == ["coalesced with the next message"] * 4
    conversation = receive(clinic, text_message("hola"))  # a lone greeting is answered
    processing.process_conversation(conversation.pk)
    assert echo.seen[-1] == "hola"


@pytest.mark.django_db(transaction=True)
def test_it_rate_limits_from_the_database_when_redis_is_down(clinic, echo, fake_graph, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    state.reset()
    conversation = None
    for n in range(1, 12):
        conversation = receive(clinic, text_message(f"m{n}"))
    DBTaskResult.objects.all().delete()
    processing.process_conversation(conversation.pk)
    assert len(echo.seen) == 10
    fake_graph.wait_for_messages(11)
    assert fake_graph.messages_to(WA_ID)[-1].text == "Por favor espera un momento…"
    assert inbound(conversation)[-1].status == MessageStatus.RECEIVED
    (later,) = DBTaskResult.objects.filter(task_path="bot.processing.run_turns")
    assert 50 < (later.run_after - timezone.now()).total_seconds() <= 60
    # A minute on, the window allows it.
    Message.objects.filter(conversation=conversation).update(
        processed_at=F("processed_at") - dt.timedelta(minutes=1)
    )
    processing.process_conversation(conversation.pk)
    assert echo.seen[-1] == "m11"


@pytest.mark.django_db(transaction=True)
def test_it_stores_but_does_not_answer_in_human_mode(clinic, echo, fake_graph):
    conversation = receive(clinic, text_message("hola"))
    Conversation.objects.filter(pk=conversation.pk).update(mode="human")
    assert processing.process_conversation(conversation.pk) == 1
    assert echo.seen == []
    assert inbound(conversation)[0].status == MessageStatus.PROCESSED
    assert not Message.objects.filter(direction=Direction.OUT).exists()
    assert fake_graph.typing == []  # staff are the ones typing


@pytest.mark.django_db(transaction=True)
def test_it_apologises_and_flags_staff_when_the_engine_fails(clinic, fake_graph, monkeypatch):
    def broken(snapshot, inbound, ctx):
        raise ValueError(f"cannot handle {inbound.text}")

    monkeypatch.setattr(engine, "step", broken)
    conversation = receive(clinic, text_message("1020304050"))
    assert processing.process_conversation(conversation.pk) == 1
    conversation.refresh_from_db()
    assert conversation.needs_staff
    assert inbound(conversation)[0].status == MessageStatus.PROCESSED  # no poison loop
    (reply,) = fake_graph.wait_for_messages(1)
    assert "equipo" in reply.text


# --- typing, session cache, idle sessions ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_shows_typing_and_mirrors_the_session(clinic, patient, echo, fake_graph, r):
    pubsub = r.pubsub()
    pubsub.subscribe("sophia:typing-channel")
    pubsub.get_message(timeout=1)
    message = text_message("hola")
    conversation = receive(clinic, message)
    Conversation.objects.filter(pk=conversation.pk).update(patient=patient)
    processing.process_conversation(conversation.pk)

    (typing,) = (
        fake_graph.wait_for(lambda reqs: any(q.is_typing for q in reqs)) and fake_graph.typing
    )
    assert typing.json["message_id"] == message["id"]
    assert typing.json["typing_indicator"] == {"type": "text"}
    # Pub/sub channels span every Redis database: keep only this conversation's events (a
    # benchmark on the same server publishes its own).
    events = []
    while len(events) < 2 and (item := pubsub.get_message(timeout=1)) is not None:
        event = json.loads(item["data"])
        if event["session_id"] == WA_ID:
            events.append(event)
    pubsub.close()
    assert [(e["session_id"], e["status"]) for e in events] == [
        (WA_ID, "typing"),
        (WA_ID, "stopped"),
    ]
    assert r.exists(f"sophia:typing:{WA_ID}") == 0

    session = r.hgetall(f"sophia:session:{WA_ID}")
    assert session["paciente_id"] == str(patient.pk)
    assert session["paciente_nombre"] == "Ana María Gómez"
    assert session["entidad_medica_id"] == str(clinic.pk)
    assert session["estado_flujo"] == "VALIDADO"
    assert session["conversacion_id"] == str(conversation.pk)
    assert "1020304050" not in json.dumps(session)  # never the document
    assert 1700 < r.ttl(f"sophia:session:{WA_ID}") <= 1800


@pytest.mark.django_db(transaction=True)
def test_it_mirrors_the_shown_page_to_redis(clinic, slots, monkeypatch, fake_graph, r):
    def shows_a_page(snapshot, inbound, ctx):
        shown = [{"slot_id": s.pk} for s in slots[:3]]
        return engine.StepResult(
            replies=[Reply(kind="text", text="elige")],
            snapshot=engine.Snapshot(
                state=engine.State.CHOOSING_SLOT,
                data={"specialty": "medicina-general", "page": 2, "shown": shown},
            ),
        )

    monkeypatch.setattr(engine, "step", shows_a_page)
    conversation = receive(clinic, text_message("más"))
    processing.process_conversation(conversation.pk)
    page = json.loads(r.get(f"sophia:citas:{WA_ID}:page:2"))
    assert page["page"] == 2
    assert page["categoria"] == "medicina-general"
    assert [(c["posicion"], c["slot_id"]) for c in page["citas_mostradas"]] == [
        (1, slots[0].pk),
        (2, slots[1].pk),
        (3, slots[2].pk),
    ]
    assert 500 < r.ttl(f"sophia:citas:{WA_ID}:page:2") <= 600


@pytest.mark.django_db(transaction=True)
def test_it_closes_an_idle_session_and_starts_fresh(clinic, slots, echo, fake_graph):
    from clinics import services

    conversation = receive(clinic, text_message("hola"))
    processing.process_conversation(conversation.pk)
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder=f"conversation:{conversation.pk}")
    Conversation.objects.filter(pk=conversation.pk).update(
        state=engine.State.CONFIRMING, context={"slot_id": slots[0].pk}
    )
    long_ago = timezone.now() - dt.timedelta(minutes=31)
    Message.objects.filter(conversation=conversation).update(created_at=long_ago)
    Conversation.objects.filter(pk=conversation.pk).update(created_at=long_ago)  # as old

    receive(clinic, text_message("buenas"))
    processing.process_conversation(conversation.pk)

    fresh = echo.snapshots[-1]
    assert fresh.state == engine.State.CLOSED  # the engine starts the new session from here
    assert fresh.data == {}
    assert not SlotHold.objects.filter(released_at=None).exists()
    conversation.refresh_from_db()
    assert conversation.closed_at is None  # reopened by the new message


# --- what a turn costs -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_runs_a_turn_in_at_most_sixteen_statements(clinic, echo, fake_graph):
    # The worker's claim (1), the first pending read (1), the attempt (1); the turn's
    # transaction: BEGIN, lock_timeout, the locking read, the claim, the engine's savepoint and
    # its release, the conversation, the reply, COMMIT (9); the reply's claim and sent mark (2);
    # the next pending read (1), the task's success (1). The echo engine reads nothing itself.
    receive(clinic, text_message("hola"))
    with CaptureQueriesContext(connection) as first:
        assert run_ready_tasks() == 1
    conversation = receive(clinic, text_message("1020304050"))
    with CaptureQueriesContext(connection) as second:
        assert run_ready_tasks() == 1
    fake_graph.wait_for_messages(2)
    assert echo.seen == ["hola", "1020304050"]
    # On SQLite the claim is django-tasks-db's own (BEGIN, SELECT, UPDATE, COMMIT); and
    # run_ready_tasks' last look for a task finds none: one statement more (three on SQLite).
    limit = 16 + 1 if connection.vendor == "postgresql" else 19 + 3
    assert len(first) <= limit, [q["sql"][:80] for q in first]
    assert len(second) <= limit, [q["sql"][:80] for q in second]
    assert [m.status for m in inbound(conversation)] == [MessageStatus.PROCESSED] * 2


@pytest.mark.django_db(transaction=True)
def test_it_runs_at_once_a_message_that_found_the_lock_held_while_it_finished(
    clinic, echo, fake_graph, monkeypatch
):
    conversation = receive(clinic, text_message("hola"))
    DBTaskResult.objects.all().delete()
    real_release = state.release_lock_checked

    def a_message_arrives_first(session_id, token):
        # After the turn's last look at the queue, before the lock is let go.
        receive(clinic, text_message("otra cosa"))
        (task,) = DBTaskResult.objects.ready()
        DBTaskResult.objects.filter(pk=task.pk).delete()
        assert processing.process_conversation(conversation.pk) == 0  # busy: retried later
        return real_release(session_id, token)

    monkeypatch.setattr(state, "release_lock_checked", a_message_arrives_first)
    assert processing.process_conversation(conversation.pk) == 1
    monkeypatch.setattr(state, "release_lock_checked", real_release)
    # Without the release's word, "otra cosa" would wait for its retry half a second later.
    (now,) = DBTaskResult.objects.ready()
    assert now.args_kwargs["args"] == [conversation.pk, 0]
    run_ready_tasks()
    assert echo.seen == ["hola", "otra cosa"]
