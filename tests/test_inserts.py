"""sophia_web.inserts writes rows without the ORM's save(): no model signal is sent for them."""

import pytest
from django.db import connection, transaction
from django.db.models.signals import post_save, pre_save
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from django_tasks_db.signal_handlers import set_run_after

from bot.models import Conversation, Message, WebhookEvent
from clinics.models import Appointment, AuditEvent
from sophia_web import inserts

WRITTEN_BY_HAND = [WebhookEvent, Conversation, Message, Appointment, AuditEvent]


@pytest.mark.parametrize("model", WRITTEN_BY_HAND, ids=lambda m: m.__name__)
def test_it_writes_only_models_nobody_listens_to(model):
    # A receiver added for one of these would never hear the webhook's or the booking's rows.
    assert not pre_save.has_listeners(model)
    assert not post_save.has_listeners(model)


def test_it_knows_every_listener_of_the_task_rows_it_writes():
    # sophia_web.task_rows does by hand what django-tasks-db's one pre_save receiver does (a
    # missing run_after stored as "any time"); a second receiver would be missed.
    receivers = pre_save._live_receivers(DBTaskResult)[0]
    assert receivers == [set_run_after]
    assert not post_save.has_listeners(DBTaskResult)


@pytest.mark.django_db
def test_it_writes_without_reading_back_when_asked_for_no_columns():
    now = timezone.now()
    rows = [{"body": "{}", "signature_valid": True}, {"body": "[]", "signature_valid": False}]
    with transaction.atomic(), connection.cursor() as cursor:
        assert inserts.insert(cursor, WebhookEvent, rows, now, returning=()) == []

    stored = WebhookEvent.objects.order_by("body").values_list("body", "signature_valid")
    assert list(stored) == [("[]", False), ("{}", True)]


@pytest.mark.django_db
def test_it_writes_null_for_the_columns_left_to_a_default_of_none():
    now = timezone.now()
    given = frozenset({"clinic_id", "wa_id"})
    nulls = inserts.nulls(Conversation, given)
    # Not the ones given, not those with a default of their own, not the times set on save.
    assert set(nulls) == {
        "patient_id",
        "assigned_to_id",
        "rate_limited_until",
        "last_inbound_at",
        "closed_at",
    }
    clinic_id = (
        Conversation._meta.get_field("clinic")
        .related_model.objects.create(slug="n", name="N", phone_number_id="1")
        .pk
    )
    values = {"clinic_id": clinic_id, "wa_id": "573"}
    expressions = dict.fromkeys(nulls, ())
    sql = f"{inserts.into_sql(Conversation)} VALUES {inserts.row_sql(Conversation, nulls)}"
    params = inserts.row_params(Conversation, values, now, connection, expressions)
    assert len(params) == sql.count("%s")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)

    row = Conversation.objects.get()
    assert (row.created_at, row.updated_at, row.context) == (now, now, {})
    assert row.patient_id is None and row.closed_at is None
