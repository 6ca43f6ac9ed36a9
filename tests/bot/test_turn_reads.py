"""The turn's two hand-written reads (bot.processing, sophia_web.model_rows) load exactly what
the ORM's `select_related` reads would: every field, converted the same way, with the related
instances attached and no further query.

They run on PostgreSQL, and once more on SQLite (the embedded demo's database) by
`test_it_passes_the_turn_read_tests_on_sqlite`.
"""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bot import processing
from bot.models import Conversation, ConversationMode, Direction, Message, MessageStatus
from sophia_web import model_rows

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


def fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def make_conversation(clinic, *, patient=None, wa_id: str = "573009990001") -> Conversation:
    return Conversation.objects.create(
        clinic=clinic,
        wa_id=wa_id,
        contact_name="Ana",
        patient=patient,
        state="TRIAGED",
        context={"specialty": "medicina-general", "shown": [1, 2], "ñ": "sí"},
        mode=ConversationMode.BOT,
        last_inbound_at=timezone.now() - dt.timedelta(minutes=3),
    )


def inbound(conversation: Conversation, text: str, *, ts: dt.datetime | None, wamid: str):
    return Message.objects.create(
        clinic=conversation.clinic,
        conversation=conversation,
        direction=Direction.IN,
        wa_message_id=wamid,
        kind="text",
        text=text,
        payload={"type": "text", "text": {"body": text}},
        status=MessageStatus.RECEIVED,
        wa_timestamp=ts,
    )


def test_it_reads_the_next_pending_messages_with_their_conversation_and_clinic(clinic):
    conversation = make_conversation(clinic)
    now = timezone.now().replace(microsecond=0)
    later = inbound(conversation, "segundo", ts=now, wamid="wamid.B")
    first = inbound(conversation, "primero", ts=now - dt.timedelta(seconds=5), wamid="wamid.A")
    inbound(conversation, "tercero", ts=None, wamid="wamid.C")  # no timestamp: last
    Message.objects.filter(pk=first.pk).update(attempts=2)

    with CaptureQueriesContext(connection) as queries:
        pending = processing._next_pending(conversation.pk)
        # The related instances came with the read.
        assert pending[0].conversation.clinic.slug == clinic.slug
        assert pending[1].conversation is pending[0].conversation
    assert len(queries) == 1

    expected = list(
        processing._pending(conversation.pk).select_related("conversation__clinic")[:2]
    )
    assert [m.pk for m in pending] == [first.pk, later.pk]
    for got, want in zip(pending, expected, strict=True):
        assert fields(got) == fields(want)
        assert got._state.adding is False and got._state.db == "default"
    assert fields(pending[0].conversation) == fields(expected[0].conversation)
    assert fields(pending[0].conversation.clinic) == fields(expected[0].conversation.clinic)
    assert pending[0].payload == {"type": "text", "text": {"body": "primero"}}
    assert pending[0].conversation.context["ñ"] == "sí"
    assert pending[0].wa_timestamp.tzinfo is not None


def test_it_reads_no_pending_message_as_none(clinic):
    conversation = make_conversation(clinic)
    message = inbound(conversation, "hola", ts=timezone.now(), wamid="wamid.D")
    Message.objects.filter(pk=message.pk).update(status=MessageStatus.PROCESSED)
    assert processing._next_pending(conversation.pk) == []
    assert processing._next_pending(10**9) == []


@pytest.mark.parametrize("with_patient", [True, False])
def test_it_locks_the_conversation_with_its_patient(clinic, other_clinic, patient, with_patient):
    conversation = make_conversation(clinic, patient=patient if with_patient else None)
    expected = Conversation.objects.select_related("patient").get(pk=conversation.pk)

    with CaptureQueriesContext(connection) as queries:
        locked = processing._lock_conversation(conversation.pk, clinic)
        assert locked.clinic is clinic  # the clinic read with the message: not read again
        loaded_patient = locked.patient
    assert len(queries) == 1
    if connection.vendor == "postgresql":
        assert "FOR NO KEY UPDATE OF c" in queries[0]["sql"]

    assert fields(locked) == fields(expected)
    if with_patient:
        assert fields(loaded_patient) == fields(expected.patient)
    else:
        assert loaded_patient is None
    # A clinic that is not the conversation's is not attached (it is read when needed).
    assert processing._lock_conversation(conversation.pk, other_clinic).clinic == clinic


def test_it_refuses_a_conversation_that_does_not_exist(clinic):
    with pytest.raises(Conversation.DoesNotExist):
        processing._lock_conversation(10**9, clinic)


def test_it_saves_what_it_loaded_like_an_orm_instance(clinic):
    conversation = make_conversation(clinic)
    locked = processing._lock_conversation(conversation.pk, clinic)
    locked.context = {**locked.context, "page": 2}
    locked.save(update_fields=["context", "updated_at"])
    conversation.refresh_from_db()
    assert conversation.context["page"] == 2 and conversation.context["ñ"] == "sí"


def test_it_names_every_column_of_the_model_in_field_order(clinic):
    columns = model_rows.select_list(Message, "m", connection).split(", ")
    assert len(columns) == model_rows.width(Message) == len(Message._meta.concrete_fields)
    quote = connection.ops.quote_name
    assert columns[0] == f"{quote('m')}.{quote(Message._meta.concrete_fields[0].column)}"


def test_it_passes_the_turn_read_tests_on_sqlite(tmp_path):
    """The demo runs without DATABASE_URL or REDIS_URL: SQLite and in-process layers."""
    if connection.vendor == "sqlite":
        pytest.skip("already on SQLite")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["SQLITE_PATH"] = str(tmp_path / "sophia.sqlite3")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout and "failed" not in run.stdout
