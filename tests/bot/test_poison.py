"""One bad message can't stall anyone: huge text, turns past their time budget, turns that
kill or hang their worker. Messages enter through the signed webhook; turns run through the
worker's own claim-and-run step; replies go over HTTP to the fake Graph API."""

import datetime as dt
import re
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from django.db import OperationalError, connection, connections
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bot import engine, periodic, processing
from bot.messages import Reply
from bot.models import Conversation, Message, MessageStatus
from bot.text import MAX_TEXT
from tests.bot.test_e2e import App, Phone
from tests.bot.test_processing import (
    WA_ID,
    EchoEngine,
    inbound,
    receive,
    run_ready_tasks,
    text_message,
    webhook_body,
)
from tests.bot.test_worker import ROOT, Workers
from tests.conftest import eventually
from tests.fakes import graph_server, openai_server

fake_graph = graph_server.fake_graph  # the fixtures
fake_openai = openai_server.fake_openai


@pytest.fixture
def app(transactional_db, fake_graph, fake_openai, tmp_path):
    running = App(tmp_path, fake_graph.url, fake_openai.base_url).start()
    yield running
    running.stop()


OTHER_WA = "573119998877"
# Text that made the old red-flag pattern take quadratic time ("rigidez … fiebre").
HUGE = ("rigidez " * 112_500)[:900_000]


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.WHATSAPP_APP_SECRET = "test-app-secret"


def _db_params() -> dict:
    db = connection.settings_dict
    return {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "dbname": db["NAME"],
    }


@pytest.mark.django_db(transaction=True)
def test_it_stores_900000_characters_whole_and_answers_from_the_first_4096(
    clinic, specialty, fake_graph
):
    # The real engine, red-flag patterns and all.
    huge = receive(clinic, text_message(HUGE))
    other = receive(clinic, text_message("hola", wa_id=OTHER_WA))
    assert run_ready_tasks() >= 2

    (stored,) = inbound(huge)
    assert len(stored.text) == 900_000 and stored.text == HUGE  # kept whole for staff
    assert stored.status == MessageStatus.PROCESSED
    assert inbound(other)[0].status == MessageStatus.PROCESSED
    fake_graph.wait_for_messages(2)
    assert fake_graph.messages_to(WA_ID) and fake_graph.messages_to(OTHER_WA)


@pytest.mark.django_db(transaction=True)
def test_it_reads_only_the_first_4096_characters(clinic, fake_graph, monkeypatch):
    echo = EchoEngine()
    monkeypatch.setattr(engine, "step", echo)
    receive(clinic, text_message("x" * 5000))
    run_ready_tasks()
    assert [len(text) for text in echo.seen] == [MAX_TEXT]


class SlowForPoison(EchoEngine):
    """Echoes, but "veneno" sends it into a catastrophic regular expression."""

    def __call__(self, snapshot, inbound, ctx):
        if inbound.text == "veneno":
            re.match(r"(a+)+$", "a" * 64 + "b")  # 2**64 steps: never ends by itself
        return super().__call__(snapshot, inbound, ctx)


@pytest.mark.django_db(transaction=True)
def test_it_stops_a_turn_past_its_budget_and_serves_everyone_else(
    clinic, fake_graph, monkeypatch, settings
):
    settings.SOPHIA_TURN_BUDGET_SECONDS = 0.5
    engine_ = SlowForPoison()
    monkeypatch.setattr(engine, "step", engine_)
    poisoned = receive(clinic, text_message("veneno"))
    receive(clinic, text_message("sigo aquí"))
    other = receive(clinic, text_message("hola", wa_id=OTHER_WA))
    run_ready_tasks()

    first, second = inbound(poisoned)
    assert first.status == MessageStatus.PROCESSED and "ran past 0.5 s" in first.error
    assert second.status == MessageStatus.PROCESSED
    assert inbound(other)[0].status == MessageStatus.PROCESSED
    poisoned.refresh_from_db()
    assert poisoned.needs_staff
    fake_graph.wait_for_messages(3)
    texts = [m.text for m in fake_graph.messages_to(WA_ID)]
    assert "equipo" in texts[0] and texts[1] == "eco: sigo aquí"
    assert [m.text for m in fake_graph.messages_to(OTHER_WA)] == ["eco: hola"]
    assert engine_.seen == ["sigo aquí", "hola"]  # the poisoned turn left nothing behind


@pytest.mark.django_db(transaction=True)
def test_it_sets_aside_a_message_whose_runs_never_finished(clinic, fake_graph, monkeypatch):
    echo = EchoEngine()
    monkeypatch.setattr(engine, "step", echo)
    conversation = receive(clinic, text_message("mata al worker"))
    receive(clinic, text_message("después"))
    first = inbound(conversation)[0]
    # Three runs started (each counted first) and none finished: killed, out of memory…
    Message.objects.filter(pk=first.pk).update(attempts=processing.MAX_TURN_ATTEMPTS)
    run_ready_tasks()
    assert echo.seen == ["después"]
    first.refresh_from_db()
    assert first.status == MessageStatus.PROCESSED and "set aside" in first.error
    conversation.refresh_from_db()
    assert conversation.needs_staff


@pytest.mark.django_db(transaction=True)
def test_it_counts_each_run_before_it_starts(clinic, fake_graph, monkeypatch):
    def dies(snapshot, inbound, ctx):
        raise OperationalError("the worker's database connection went away")

    monkeypatch.setattr(engine, "step", dies)
    conversation = receive(clinic, text_message("uno"))
    with pytest.raises(OperationalError):
        processing.process_conversation(conversation.pk)
    message = inbound(conversation)[0]
    assert message.status == MessageStatus.RECEIVED and message.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_hung_worker_blocks_neither_other_patients_nor_the_set_aside(
    clinic, fake_graph, monkeypatch
):
    """A worker hung inside a turn holds its conversation's row lock. Other workers must not
    hang behind it: they give up waiting after LOCK_WAIT_LIMIT, serve other patients, and the
    sweeper sets the message aside once its runs are used up and the hung worker is gone."""
    monkeypatch.setattr(processing, "LOCK_WAIT_LIMIT", "300ms")
    echo = EchoEngine()
    monkeypatch.setattr(engine, "step", echo)
    poisoned = receive(clinic, text_message("veneno"))
    other = receive(clinic, text_message("hola", wa_id=OTHER_WA))
    DBTaskResult.objects.all().delete()

    hung = psycopg.connect(**_db_params())  # stands in for the hung worker's transaction
    try:
        hung.execute("SELECT id FROM bot_conversation WHERE id = %s FOR UPDATE", [poisoned.pk])
        with pytest.raises(OperationalError):
            processing.process_conversation(poisoned.pk)
        assert processing.process_conversation(other.pk) == 1  # not stuck behind it
        assert echo.seen == ["hola"]
        Message.objects.filter(conversation=poisoned).update(attempts=processing.MAX_TURN_ATTEMPTS)
        later = timezone.now() + dt.timedelta(minutes=1)
        # The sweeper can't take the row either: it says so and goes on with the others.
        assert periodic.pick_up_stranded_turns(now=later) == 0
    finally:
        hung.rollback()
        hung.close()

    assert periodic.pick_up_stranded_turns(now=timezone.now() + dt.timedelta(minutes=1)) == 1
    (message,) = inbound(poisoned)
    assert message.status == MessageStatus.PROCESSED and "set aside" in message.error
    assert Conversation.objects.get(pk=poisoned.pk).needs_staff
    assert echo.seen == ["hola"]


# --- the same, with real processes: daphne and run_worker ---------------------------------------


def poison_step(snapshot, inbound, ctx) -> engine.StepResult:
    """The subprocess worker's engine: echoes, but "veneno" never ends by itself."""
    if inbound.text == "veneno":
        re.match(r"(a+)+$", "a" * 64 + "b")
    return engine.StepResult(
        replies=[Reply(kind="text", text=f"eco: {inbound.text}")],
        snapshot=engine.Snapshot(state=engine.State.IDENTIFIED, data={}),
    )


POISON_WORKER = (
    "import sys, django; django.setup()\n"
    "from bot import engine\n"
    "from tests.bot.test_poison import poison_step\n"
    "engine.step = poison_step\n"
    "from django.core.management import call_command\n"
    "call_command('run_worker', *sys.argv[1:])\n"
)


class PoisonWorkers(Workers):
    def start(self, *args: str, **env: str) -> subprocess.Popen:
        log = self.tmp_path / f"worker-{len(self.procs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", POISON_WORKER, "--interval", "0.05", "--processes", "1", *args],
            cwd=ROOT,
            env={**self.env(), **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append((proc, log))
        return proc


@pytest.fixture
def poison_workers(transactional_db, fake_graph, tmp_path, settings):
    settings.WHATSAPP_APP_SECRET = "test-app-secret"
    pool = PoisonWorkers(tmp_path, fake_graph.url)
    yield pool
    pool.stop_all()


def test_the_only_worker_stops_a_poisoned_turn_and_answers_the_next_patient(
    poison_workers, clinic, fake_graph
):
    # One task thread: the main one, where SIGALRM stops even a regular expression. (On other
    # threads a C call that never returns is beyond any in-process budget: see time_budget.)
    poison_workers.start("--concurrency", "1", SOPHIA_TURN_BUDGET_SECONDS="1")
    poisoned = receive(clinic, text_message("veneno"))
    receive(clinic, text_message("hola", wa_id=OTHER_WA))
    fake_graph.wait_for(lambda reqs: any(q.to == OTHER_WA for q in reqs), timeout=30)
    assert [m.text for m in fake_graph.messages_to(OTHER_WA)] == ["eco: hola"]
    fake_graph.wait_for(lambda reqs: any(q.to == WA_ID for q in reqs), timeout=30)
    assert "equipo" in fake_graph.messages_to(WA_ID)[0].text
    (message,) = inbound(poisoned)
    assert message.status == MessageStatus.PROCESSED and "ran past 1.0 s" in message.error
    assert "ran past its 1.0 s budget" in poison_workers.all_logs()


def test_900000_characters_over_http_to_daphne_and_the_worker(app, fake_graph, clinic, specialty):
    huge = webhook_body(clinic.phone_number_id, [text_message(HUGE)])
    assert len(huge) < 1024 * 1024  # within the webhook's body limit
    assert app.post(huge).status_code == 200
    other = Phone(app, fake_graph, clinic, OTHER_WA)
    assert other.say("hola")  # answered, not stuck behind the huge one
    stored = Message.objects.get(direction="in", conversation__wa_id=WA_ID)
    assert len(stored.text) == 900_000
    eventually(
        lambda: Message.objects.get(pk=stored.pk).status == MessageStatus.PROCESSED,
        what="the huge message processed",
    )
    # Its reply goes out after the turn commits.
    fake_graph.wait_for(
        lambda reqs: any(q.to == WA_ID and not q.is_typing for q in reqs), timeout=30
    )


@pytest.mark.django_db(transaction=True)
def test_it_stops_a_python_loop_past_its_budget_on_a_worker_thread(
    clinic, fake_graph, monkeypatch, settings
):
    """run_worker's other task threads get no SIGALRM: a timer raises in the thread instead."""
    settings.SOPHIA_TURN_BUDGET_SECONDS = 0.5

    def spins(snapshot, inbound, ctx):
        while True:
            pass

    monkeypatch.setattr(engine, "step", spins)
    conversation = receive(clinic, text_message("veneno"))

    def run() -> None:
        try:
            processing.process_conversation(conversation.pk)
        finally:
            connections.close_all()  # this thread's connection

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    (message,) = inbound(conversation)
    assert message.status == MessageStatus.PROCESSED and "ran past 0.5 s" in message.error


def _in_thread(target) -> list:
    """Run `target` on a new (non-main) thread; what it returned or raised."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    return outcome


def test_it_stops_only_the_turn_past_its_budget_with_one_watchdog_thread():
    def spins() -> str:
        with processing.time_budget(0.2):
            while True:
                pass

    def quick_turns() -> str:
        for _ in range(50):
            with processing.time_budget(0.05):
                pass
        # Long after those budgets would have run out: none of them fires any more.
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
        return "done"

    results: dict[str, list] = {}
    spinner = threading.Thread(target=lambda: results.update(spin=_in_thread(spins)))
    spinner.start()
    results["quick"] = _in_thread(quick_turns)
    spinner.join(timeout=30)
    assert results["quick"] == ["done"]
    assert isinstance(results["spin"][0], processing.TurnTimeout)
    watchdogs = [t for t in threading.enumerate() if t.name == "sophia-turn-watchdog"]
    assert len(watchdogs) == 1  # one thread for every turn, not a timer thread per turn
