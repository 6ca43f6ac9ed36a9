"""The webhook's store on the ORM: each message once, only new messages touch their conversation.

These tests (and tests/bot/test_webhook.py) run on PostgreSQL, and once more on SQLite, the
embedded demo's database, by `test_it_passes_the_webhook_tests_on_sqlite`.
"""

import datetime as dt
import threading
from unittest import mock

import pytest
import time_machine
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bot import webhook
from bot.models import Conversation, Message, WebhookEvent
from sophia_web import inserts, metrics
from tests.bot.test_webhook import WA_ID, change, payload, post, queued_turns, text_message
from tests.conftest import run_on_sqlite

on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL's concurrent writers"
)


@pytest.fixture(autouse=True)
def _whatsapp_settings(settings):
    settings.WHATSAPP_APP_SECRET = "test-app-secret"


def duplicates() -> float:
    return metrics.WEBHOOK_DUPLICATES._value.get()


def without_id() -> dict:
    """A text message WhatsApp sent without its id."""
    raw = text_message("unused")
    del raw["id"]
    return raw


def test_it_stores_a_message_repeated_in_one_payload_once(client, clinic):
    before = duplicates()
    body = payload(
        change(clinic.phone_number_id, [text_message("wamid.A", "uno"), text_message("wamid.B")]),
        change(clinic.phone_number_id, [text_message("wamid.A", "uno")]),
    )
    assert post(client, body).status_code == 200

    assert list(Message.objects.values_list("wa_message_id", flat=True)) == ["wamid.A", "wamid.B"]
    assert set(Message.objects.values_list("webhook_event", flat=True)) == {
        WebhookEvent.objects.get().pk
    }
    assert queued_turns() == [Conversation.objects.get().pk]
    assert duplicates() == before + 1


def test_it_stores_only_the_new_messages_of_a_redelivery(client, clinic, caplog):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.A")])))
    before = duplicates()
    conversation = Conversation.objects.get()
    earlier = conversation.last_inbound_at.replace(year=2020)
    Conversation.objects.update(last_inbound_at=earlier, last_activity_at=earlier)

    body = payload(
        change(clinic.phone_number_id, [text_message("wamid.A"), text_message("wamid.B", "dos")])
    )
    DBTaskResult.objects.all().delete()  # the first message's turn
    assert post(client, body).status_code == 200

    second = WebhookEvent.objects.latest("pk")
    stored = dict(Message.objects.values_list("wa_message_id", "webhook_event"))
    assert stored["wamid.A"] != second.pk and stored["wamid.B"] == second.pk
    assert queued_turns() == [conversation.pk]
    conversation.refresh_from_db()
    assert conversation.last_inbound_at > earlier and conversation.last_activity_at > earlier
    assert duplicates() == before + 1
    assert f"webhook event {second.pk}: 1 duplicate message(s) ignored" in caplog.text


def test_it_queues_nothing_when_every_message_is_a_redelivery(client, clinic):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A"), text_message("B")]))
    post(client, body)
    before = duplicates()

    DBTaskResult.objects.all().delete()  # the first delivery's turn
    assert post(client, body).status_code == 200

    assert queued_turns() == []
    assert Message.objects.count() == 2 and WebhookEvent.objects.count() == 2
    assert duplicates() == before + 2


def test_it_changes_the_name_only_with_a_new_message(client, clinic):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.1")])))
    renamed = [{"profile": {"name": "Ana M. Gómez"}, "wa_id": WA_ID}]

    redelivery = [text_message("wamid.1")]
    post(client, payload(change(clinic.phone_number_id, redelivery, contacts=renamed)))
    assert Conversation.objects.get().contact_name == "Ana María"

    post(client, payload(change(clinic.phone_number_id, [text_message("2")], contacts=renamed)))
    assert Conversation.objects.get().contact_name == "Ana M. Gómez"


def test_it_keeps_an_existing_conversations_data(client, clinic):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.1")])))
    Conversation.objects.update(
        state="ASK_DOCUMENT", context={"specialty": "odontologia"}, mode="human", urgent=True
    )
    kept = Conversation.objects.values("created_at", "state", "context", "mode", "urgent").get()

    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.2")])))

    fields = Conversation.objects.values("created_at", "state", "context", "mode", "urgent")
    assert fields.get() == kept
    assert Message.objects.filter(conversation=Conversation.objects.get()).count() == 2


def test_it_stores_every_message_without_an_id(client, clinic, caplog):
    body = payload(change(clinic.phone_number_id, [without_id(), without_id()]))
    assert post(client, body).status_code == 200
    assert post(client, body).status_code == 200

    # Nothing to deduplicate on: each is stored, and each payload queues a turn.
    assert Message.objects.filter(wa_message_id=None).count() == 4
    assert len(queued_turns()) == 2
    assert Conversation.objects.get().last_inbound_at is not None
    assert "message without an id, stored without dedup" in caplog.text


def test_it_stores_messages_with_and_without_ids_together(client, clinic):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.A")])))
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A"), without_id()]))
    DBTaskResult.objects.all().delete()  # the first message's turn
    post(client, body)

    assert Message.objects.count() == 2
    assert queued_turns() == [Conversation.objects.get().pk]


def test_it_upserts_many_senders_in_one_statement(client, clinic, other_clinic):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.0", sender="57301")])))
    senders = ["57305", "57301", "57302", "57305"]
    messages = [text_message(f"m{i}", sender=s) for i, s in enumerate(senders)]
    body = payload(
        change(clinic.phone_number_id, messages),
        change(other_clinic.phone_number_id, [text_message("o1", sender="57301")]),
    )

    with CaptureQueriesContext(connection) as queries:
        assert post(client, body).status_code == 200

    upsert = f'INSERT INTO "{Conversation._meta.db_table}"'
    assert sum(upsert in q["sql"] for q in queries) == 1
    assert Conversation.objects.filter(clinic=clinic).count() == 3
    assert Conversation.objects.filter(clinic=other_clinic).count() == 1
    for message in Message.objects.select_related("conversation"):
        assert message.conversation.wa_id == message.payload["from"]
        assert message.conversation.clinic_id == message.clinic_id


def test_it_stores_a_payload_too_large_for_one_statement_in_chunks(client, clinic, monkeypatch):
    """A statement takes only so many parameters: many messages are written a chunk at a time,
    and every one is stored and gets its turn."""
    monkeypatch.setattr(inserts, "MAX_PARAMS", 40)  # two rows per statement
    senders = [f"57300{i:07d}" for i in range(12)]
    messages = [text_message(f"wamid.CH{i}", sender=wa_id) for i, wa_id in enumerate(senders)]
    messages.append(text_message("wamid.CH0", sender=senders[0]))  # and a duplicate

    with CaptureQueriesContext(connection) as queries:
        assert post(client, payload(change(clinic.phone_number_id, messages))).status_code == 200

    insert = f'INSERT INTO "{Message._meta.db_table}"'
    # 12 rows (the duplicate is dropped before the insert), 2 per statement.
    assert sum(q["sql"].startswith(insert) for q in queries) == 6
    assert Message.objects.count() == 12
    assert Conversation.objects.count() == 12
    assert len(queued_turns()) == 12


def test_it_replays_an_event_idempotently(client, clinic):
    body = payload(
        change(clinic.phone_number_id, [text_message("wamid.A"), text_message("wamid.B")])
    )
    with mock.patch("bot.webhook.parse_message", side_effect=RuntimeError("boom")):
        post(client, body)
    event = WebhookEvent.objects.get()

    first = webhook.process_event(event, body)
    conversation_id = Conversation.objects.get().pk
    assert first == [conversation_id]
    assert webhook.process_event(event, body) == []

    assert queued_turns() == [conversation_id]
    assert Message.objects.filter(webhook_event=event).count() == 2


def test_it_replays_an_event_with_messages_without_ids_once(client, clinic):
    no_id = text_message("ignored")
    del no_id["id"]
    body = payload(change(clinic.phone_number_id, [no_id, text_message("wamid.C")]))
    with mock.patch("bot.webhook.parse_message", side_effect=RuntimeError("boom")):
        post(client, body)
    event = WebhookEvent.objects.get()

    assert webhook.process_event(event, body) == [Conversation.objects.get().pk]
    assert webhook.process_event(event, body) == []

    assert Message.objects.filter(webhook_event=event).count() == 2
    assert Message.objects.filter(webhook_event=event, wa_message_id=None).count() == 1


def test_it_stores_a_message_in_a_handful_of_statements(client, clinic):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.0")])))  # warm

    with CaptureQueriesContext(connection) as queries:
        post(client, payload(change(clinic.phone_number_id, [text_message("wamid.1")])))

    words = [q["sql"].split(None, 1)[0].upper() for q in queries]
    if connection.vendor == "postgresql":
        # One statement (bot.webhook._store_at_once); the test's savepoint around it.
        assert words == ["SAVEPOINT", "WITH", "RELEASE"]
    else:
        # Event, conversation upsert, message insert (RETURNING says it is new), conversation
        # touch, turn task; the clinic comes from the cache. Around them the test's savepoint
        # (production: BEGIN).
        assert words == ["SAVEPOINT", "INSERT", "INSERT", "INSERT", "UPDATE", "INSERT", "RELEASE"]
    assert Message.objects.count() == 2
    assert queued_turns() == list(Conversation.objects.values_list("pk", flat=True)) * 2


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_it_stores_a_message_in_one_statement_outside_a_transaction(client, clinic):
    """In production the request is in autocommit: the one statement is its own transaction
    (no BEGIN, no COMMIT of Django's, no savepoint)."""
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.0")])))  # warm

    with CaptureQueriesContext(connection) as queries:
        post(client, payload(change(clinic.phone_number_id, [text_message("wamid.1")])))

    assert [q["sql"].split(None, 1)[0].upper() for q in queries] == ["WITH"]
    assert Message.objects.count() == 2
    assert len(queued_turns()) == 2


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["_store_at_once", "_store_messages"])
def test_it_stores_a_message_delivered_twice_at_once_once(clinic, caplog, monkeypatch, store):
    """Two requests with the same message, both storing it at the same time: in one statement
    each (PostgreSQL's usual way), or each inside its transaction of a statement per table.

    The second's conversation upsert and message insert wait for the first's commit, then the
    insert does nothing: no error, no savepoint, no second turn.
    """
    if store == "_store_messages":
        monkeypatch.setattr(webhook, "_can_store_at_once", lambda *args: False)
    body = payload(change(clinic.phone_number_id, [text_message("wamid.RACE")]))
    before = duplicates()
    both_inside = threading.Barrier(2, timeout=10)
    real_store = getattr(webhook, store)

    def store_together(*args, **kwargs):
        both_inside.wait()  # each is about to store (in steps: holding its event row's transaction)
        return real_store(*args, **kwargs)

    statuses: list[int] = []

    def deliver() -> None:
        try:
            statuses.append(post(Client(), body).status_code)
        finally:
            connections.close_all()

    with mock.patch(f"bot.webhook.{store}", store_together):
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert statuses == [200, 200]
    assert "retrying without queueing turns" not in caplog.text
    message = Message.objects.get()
    assert WebhookEvent.objects.filter(error="").count() == 2
    assert DBTaskResult.objects.get().args_kwargs["args"][0] == message.conversation_id
    assert duplicates() == before + 1


def test_it_passes_the_webhook_tests_on_sqlite(tmp_path):
    run_on_sqlite(tmp_path, "tests/bot/test_webhook.py", "tests/bot/test_webhook_dedup.py")


def _rows_after(client, bodies: list[dict], start) -> dict:
    """Every row the webhook wrote for `bodies` (posted a minute apart from `start`), without
    the ids the database chose: a conversation by its clinic and number, an event by its order.
    """
    for minute, body in enumerate(bodies):
        with time_machine.travel(start + dt.timedelta(minutes=minute), tick=False):
            assert post(client, body).status_code == 200
    conversations = {c.pk: (c.clinic_id, c.wa_id) for c in Conversation.objects.all()}
    events = {
        pk: n
        for n, pk in enumerate(WebhookEvent.objects.order_by("pk").values_list("pk", flat=True))
    }

    def fields(row, *skip: str) -> dict:
        return {
            f.attname: getattr(row, f.attname)
            for f in row._meta.concrete_fields
            if f.attname not in ("id", *skip)
        }

    return {
        "conversations": sorted(
            (conversations[c.pk], fields(c)) for c in Conversation.objects.all()
        ),
        "messages": [
            (
                conversations[m.conversation_id],
                events[m.webhook_event_id],
                fields(m, "conversation_id", "webhook_event_id"),
            )
            for m in Message.objects.order_by("pk")
        ],
        "events": [fields(e) for e in WebhookEvent.objects.order_by("pk")],
        "turns": sorted(
            [
                (
                    conversations[t.args_kwargs["args"][0]],
                    t.args_kwargs["args"][1:],
                    t.args_kwargs["kwargs"],
                    fields(t, "args_kwargs"),
                )
                for t in DBTaskResult.objects.all()
            ],
            key=repr,
        ),
    }


@on_postgresql
def test_it_writes_the_same_rows_in_one_statement_as_in_steps(client, clinic, other_clinic):
    """PostgreSQL's one-statement store and the store in steps (SQLite's, and PostgreSQL's for
    statuses and replays) write the same rows, column by column, for payloads that take every
    rule: new and existing conversations, names sent and not, redeliveries (all or some of a
    payload), a message twice in one payload, one without an id, two clinics in one payload."""
    start = timezone.now().replace(microsecond=0)

    def existing() -> None:
        with time_machine.travel(start - dt.timedelta(days=1), tick=False):
            Conversation.objects.create(
                clinic=clinic, wa_id="57304", state="menu", contact_name="Dora"
            )

    existing()
    bodies = [
        payload(
            change(clinic.phone_number_id, [text_message("w1", sender="57301")]),
            change(clinic.phone_number_id, [text_message("w2", sender="57302")], contacts=[{}]),
        ),
        payload(
            change(
                clinic.phone_number_id,
                [text_message("w1", sender="57301"), text_message("w3", sender="57301")],
                contacts=[{"profile": {"name": "Ana"}, "wa_id": "57301"}],
            )
        ),
        payload(
            change(
                clinic.phone_number_id,
                [text_message("w2", sender="57302")],
                contacts=[{"profile": {"name": "Beto"}, "wa_id": "57302"}],
            )
        ),
        payload(
            change(
                clinic.phone_number_id,
                [
                    without_id(),
                    text_message("w4", sender="57304"),
                    text_message("w4", sender="57304"),
                ],
            ),
            change(other_clinic.phone_number_id, [text_message("o1", sender="57301")]),
        ),
    ]
    in_one = _rows_after(client, bodies, start)
    for model in (DBTaskResult, Message, WebhookEvent, Conversation):
        model.objects.all().delete()
    existing()
    with mock.patch.object(webhook, "_can_store_at_once", return_value=False):
        in_steps = _rows_after(client, bodies, start)

    assert in_one == in_steps
    assert len(in_one["messages"]) == 6 and len(in_one["turns"]) == 6
    rows = dict(in_one["conversations"])
    assert rows[clinic.pk, "57301"]["contact_name"] == "Ana"
    assert rows[clinic.pk, "57302"]["contact_name"] == ""  # "Beto" came with a redelivery
    assert rows[clinic.pk, "57302"]["last_inbound_at"] == start
    assert rows[clinic.pk, "57304"]["state"] == "menu"
    assert rows[clinic.pk, "57304"]["last_inbound_at"] == start + dt.timedelta(minutes=3)
