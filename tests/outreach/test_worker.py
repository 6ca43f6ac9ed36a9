"""Reminders on real `run_worker` processes: a worker killed mid-job is retried after restart
and its reminder lands once; two workers share a backlog without sending anything twice."""

import datetime as dt
import signal
import threading

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bot.models import Conversation, Message, PeriodicJob
from clinics.models import Appointment
from outreach.models import OutreachSettings, ReminderDispatch
from tests.bot.test_worker import workers  # noqa: F401 (the fixture)
from tests.conftest import eventually, make_slots
from tests.fakes import graph_server
from tests.outreach.conftest import book, make_patient

fake_graph = graph_server.fake_graph  # the fixture

WORKER_ENV: dict[str, str] = {}


def db_params() -> dict:
    db = connection.settings_dict
    return {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "dbname": db["NAME"],
    }


def due_appointments(clinic, doctor, count: int) -> list[Appointment]:
    """`count` appointments starting in about 23 hours, booked two days ago: reminders due now."""
    OutreachSettings.objects.create(
        clinic=clinic, window_start=dt.time(0, 0), window_end=dt.time(23, 59, 59)
    )
    start = (timezone.now() + dt.timedelta(hours=23)).replace(second=0, microsecond=0)
    slots = make_slots(doctor, start, count, minutes=1)
    booked = [book(clinic, make_patient(clinic, n), slot) for n, slot in enumerate(slots)]
    Appointment.objects.update(created_at=timezone.now() - dt.timedelta(days=2))
    return booked


def templates(fake_graph) -> list:
    return [r for r in fake_graph.requests if r.json.get("type") == "template"]


def test_it_retries_a_reminder_whose_worker_was_killed_and_sends_it_once(
    workers,  # noqa: F811
    clinic,
    doctor,
    fake_graph,
):
    (appointment,) = due_appointments(clinic, doctor, 1)
    # Another transaction is creating the patient's conversation and has not committed: the
    # worker, inside its transaction (reminder claimed, nothing committed), waits on that row.
    held, release, backend = threading.Event(), threading.Event(), []

    def create_the_conversation_slowly() -> None:
        try:
            with transaction.atomic():
                Conversation.objects.create(clinic=clinic, wa_id=appointment.patient.whatsapp_id)
                backend.append(connection.connection.info.backend_pid)
                held.set()
                release.wait(60)
                transaction.set_rollback(True)
        finally:
            connection.close()

    holder = threading.Thread(target=create_the_conversation_slowly)
    holder.start()
    try:
        assert held.wait(30)
        first = workers.start(**WORKER_ENV)

        def worker_waits_on_the_conversation() -> bool:
            with psycopg.connect(**db_params(), autocommit=True) as watcher:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
                    " AND query LIKE 'INSERT INTO \"bot_conversation\"%%'",
                    [backend[0]],
                ).fetchone()
            return row[0] > 0

        eventually(worker_waits_on_the_conversation, what="the worker blocked mid-reminder")
        first.kill()
        first.wait(timeout=10)
    finally:
        release.set()
        holder.join(timeout=30)

    dispatch = ReminderDispatch.objects.get(appointment=appointment)
    assert dispatch.status == ReminderDispatch.Status.PENDING  # its transaction rolled back
    assert not Message.objects.exists()
    assert DBTaskResult.objects.running().count() == 1  # left behind by the dead worker

    # What the next run of the periodic job does 30 s later: re-drive the pending reminder.
    PeriodicJob.objects.filter(name="plan_reminders").update(next_run_at=timezone.now())
    second = workers.start(**WORKER_ENV)
    fake_graph.wait_for(lambda requests: len(templates(fake_graph)) >= 1, timeout=30)
    eventually(
        lambda: ReminderDispatch.objects.filter(status="queued").count() == 1,
        what="the reminder queued",
    )
    # Make every job due again: nothing more may go out.
    PeriodicJob.objects.update(next_run_at=timezone.now())
    eventually(
        lambda: not PeriodicJob.objects.filter(next_run_at__lte=timezone.now()).exists(),
        what="the jobs ran again",
    )
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=15) == 0
    assert len(templates(fake_graph)) == 1
    assert Message.objects.count() == 1
    assert (
        templates(fake_graph)[0].json["template"]["components"][1]["parameters"][0]["payload"]
        == f"reminder:confirm:{appointment.pk}"
    )


@pytest.mark.slow
def test_it_shares_a_backlog_between_two_workers_and_sends_each_reminder_once(
    workers,  # noqa: F811
    clinic,
    doctor,
    fake_graph,
):
    booked = due_appointments(clinic, doctor, 60)
    procs = [workers.start(**WORKER_ENV), workers.start(**WORKER_ENV)]
    fake_graph.wait_for(lambda requests: len(templates(fake_graph)) >= 60, timeout=60)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=15) for p in procs] == [0, 0]
    recipients = [r.to for r in templates(fake_graph)]
    assert len(recipients) == len(set(recipients)) == len(booked)
    assert ReminderDispatch.objects.filter(status="queued").count() == len(booked)
