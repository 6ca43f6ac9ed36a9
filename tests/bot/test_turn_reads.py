"""The turn's hand-written reads and save (bot.processing, sophia_web.model_rows) do exactly
what the ORM's `select_related` reads and `save(update_fields=…)` would: every field, converted
the same way, with the related instances attached and no further query.

They run on PostgreSQL, and once more on SQLite (the embedded demo's database) by
`test_it_passes_the_turn_read_tests_on_sqlite`.
"""

import datetime as dt
import importlib

import pytest
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models.signals import post_save, pre_save
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bot import processing
from bot.models import (
    Conversation,
    ConversationMode,
    Direction,
    HandoffReason,
    Message,
    MessageStatus,
)
from clinics import selectors
from clinics.models import Clinic, FaqEntry, Patient, PatientPhone
from sophia_web import model_rows
from tests.conftest import run_on_sqlite

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

    expected = list(processing._pending(conversation.pk).select_related("conversation__clinic")[:2])
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


def test_it_saves_the_named_fields_as_model_save_does(clinic, patient):
    conversation = make_conversation(clinic)
    before = Conversation.objects.get(pk=conversation.pk)
    conversation.context = {"step": "ñandú", "shown": [3]}
    conversation.patient = patient
    conversation.llm_prompt_tokens = 12
    conversation.contact_name = "not saved"  # not among the fields

    with CaptureQueriesContext(connection) as queries:
        model_rows.save_fields(
            conversation, ["context", "patient", "llm_prompt_tokens", "updated_at"]
        )
    assert len(queries) == 1 and queries[0]["sql"].startswith("UPDATE")

    saved = Conversation.objects.get(pk=conversation.pk)
    assert saved.context == {"step": "ñandú", "shown": [3]}
    assert saved.patient_id == patient.pk and saved.llm_prompt_tokens == 12
    assert saved.contact_name == "Ana"
    assert saved.updated_at > before.updated_at  # auto_now, as Model.save sets it
    assert conversation.updated_at == saved.updated_at


def test_it_refuses_to_save_a_row_that_is_gone(clinic):
    conversation = make_conversation(clinic)
    Conversation.objects.filter(pk=conversation.pk).delete()
    with pytest.raises(DatabaseError):
        model_rows.save_fields(conversation, ["state"])


def test_it_mirrors_the_handoff_reason_on_both_ways_to_save(clinic):
    conversation = make_conversation(clinic)
    conversation.context = {"handoff_reason": HandoffReason.values[0]}
    fields = conversation.mirror_handoff_reason(("context", "updated_at"))
    assert fields == ("context", "updated_at", "handoff_reason")
    model_rows.save_fields(conversation, fields)
    assert Conversation.objects.get(pk=conversation.pk).handoff_reason == HandoffReason.values[0]

    conversation.context = {}
    conversation.save(update_fields=["context"])  # staff handed it back: the column clears
    assert Conversation.objects.get(pk=conversation.pk).handoff_reason == ""


def test_it_saves_only_a_model_no_signal_listens_to():
    # Loads send the same signals as the ORM's (Model.__init__); the save sends none, so a
    # receiver added for conversations would never hear the turn's saves. Every app's module
    # with receivers is loaded first (the URLconf imports them all).
    importlib.import_module(settings.ROOT_URLCONF)
    assert not pre_save.has_listeners(Conversation)
    assert not post_save.has_listeners(Conversation)
    assert post_save.has_listeners(Clinic)  # the check can see a receiver (bot.webhook's)


def make_patient(clinic, document: str, name: str, wa_id: str) -> Patient:
    return Patient.objects.create(
        clinic=clinic,
        document=document,
        full_name=name,
        birth_date=dt.date(1990, 5, 17),
        whatsapp_id=wa_id,
    )


def test_it_finds_a_patient_by_document_or_number_in_one_clinic(clinic, other_clinic):
    mother = make_patient(clinic, "52000111", "Marta Ruiz", "573001110000")
    child = make_patient(clinic, "1100222333", "Ana Ruiz", "573001110000")  # same phone
    make_patient(other_clinic, "52000111", "Otra Persona", "573009990000")

    with CaptureQueriesContext(connection) as queries:
        by_document = selectors.patient_by_document(clinic=clinic, document=" 52000111 ")
    assert len(queries) == 1
    assert fields(by_document) == fields(Patient.objects.get(pk=mother.pk))
    # Several patients on one number: the first by name, as the ORM's .first() gave.
    by_number = selectors.patient_by_whatsapp(clinic=clinic, wa_id="573001110000")
    assert by_number.pk == child.pk
    assert by_number.birth_date == dt.date(1990, 5, 17)
    assert selectors.patient_by_whatsapp(clinic=other_clinic, wa_id="573001110000") is None
    assert selectors.patient_by_document(clinic=clinic, document="99999999") is None


def test_it_tells_whether_a_number_still_speaks_for_a_patient(clinic, other_clinic):
    patient = make_patient(clinic, "52000111", "Marta Ruiz", "573001110000")
    PatientPhone.objects.create(
        clinic=clinic, patient=patient, wa_id="573002220000", how=PatientPhone.How.STAFF
    )
    stranger = make_patient(other_clinic, "52000112", "Otra Persona", "573003330000")

    def verified(wa_id, who=patient, where=clinic) -> bool:
        return selectors.patient_verified_on(clinic=where, patient_id=who.pk, wa_id=wa_id)

    assert verified("573001110000")  # the number on file
    assert verified("573002220000")  # a verified one
    assert not verified("573003330000")
    assert not verified("573001110000", where=other_clinic)
    assert not verified("573003330000", who=stranger)  # another clinic's patient
    PatientPhone.objects.filter(patient=patient).delete()  # staff removed it
    assert not verified("573002220000")


def test_it_lists_the_active_faq_entries_in_the_admins_order(clinic, other_clinic):
    def entry(where, question: str, position: int, active: bool = True) -> FaqEntry:
        return FaqEntry.objects.create(
            clinic=where,
            question=question,
            keywords="parqueadero, parqueo\ndónde parqueo",
            answer="Sí, gratis.",
            position=position,
            active=active,
        )

    second = entry(clinic, "¿Horario?", 2)
    first = entry(clinic, "¿Parqueadero?", 1)
    entry(clinic, "¿Retirada?", 0, active=False)
    entry(other_clinic, "¿Otra clínica?", 0)

    found = selectors.active_faq_entries(clinic=clinic)
    assert [e.pk for e in found] == [first.pk, second.pk]
    assert fields(found[0]) == fields(FaqEntry.objects.get(pk=first.pk))
    assert found[0].keyword_list() == ["parqueadero", "parqueo", "dónde parqueo"]


def test_it_names_every_column_of_the_model_in_field_order(clinic):
    columns = model_rows.select_list(Message, "m", connection).split(", ")
    assert len(columns) == model_rows.width(Message) == len(Message._meta.concrete_fields)
    quote = connection.ops.quote_name
    assert columns[0] == f"{quote('m')}.{quote(Message._meta.concrete_fields[0].column)}"


def test_it_passes_the_turn_read_tests_on_sqlite(tmp_path):
    run_on_sqlite(tmp_path, __file__)
