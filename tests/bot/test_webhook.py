"""The inbound webhook: signature, raw storage, dedup, every message kind, statuses."""

import json
import logging
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django_tasks_db.models import DBTaskResult

from bot.models import Conversation, Message, MessageStatus, WebhookEvent
from bot.processing import run_turns, to_inbound
from bot.webhook import process_event, signature_for

URL = "/whatsapp/webhook/"
SECRET = "test-app-secret"
WA_ID = "573001234567"


@pytest.fixture(autouse=True)
def _whatsapp_settings(settings):
    settings.WHATSAPP_APP_SECRET = SECRET
    settings.WHATSAPP_VERIFY_TOKEN = "verify-me"


def text_message(wamid: str, body: str = "Hola", sender: str = WA_ID) -> dict:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": "1767225600",
        "type": "text",
        "text": {"body": body},
    }


def change(phone_number_id: str, messages=(), statuses=(), contacts=None) -> dict:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
    }
    if messages:
        value["contacts"] = contacts or [
            {"profile": {"name": "Ana María"}, "wa_id": m.get("from")} for m in messages
        ]
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return {"field": "messages", "value": value}


def payload(*changes: dict) -> dict:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": list(changes)}],
    }


def queued_turns() -> list[int]:
    """The conversations with a `run_turns` task queued, in the order queued."""
    rows = DBTaskResult.objects.filter(task_path=run_turns.module_path).order_by("enqueued_at")
    return [row.args_kwargs["args"][0] for row in rows]


def post(client, body, *, signature: str | None = "sign"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {}
    if signature == "sign":
        headers["X-Hub-Signature-256"] = signature_for(raw, SECRET)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return client.post(URL, data=raw, content_type="application/json", headers=headers)


# Verification handshake -------------------------------------------------------------------------


def test_it_answers_the_verification_challenge(client):
    response = client.get(
        URL,
        {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"},
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"1158201444"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.verify_token": "verify-me", "hub.challenge": "1"},
        {},
    ],
)
def test_it_refuses_a_wrong_verification(client, params):
    assert client.get(URL, params).status_code == 403


def test_it_refuses_verification_when_no_token_is_configured(client, settings):
    settings.WHATSAPP_VERIFY_TOKEN = ""
    params = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
    assert client.get(URL, params).status_code == 403


def test_it_allows_only_get_and_post(client):
    assert client.put(URL).status_code == 405


# Signature, size, JSON ---------------------------------------------------------------------------


def test_it_accepts_a_signed_payload(client, clinic):
    response = post(client, payload(change(clinic.phone_number_id, [text_message("wamid.A")])))

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    event = WebhookEvent.objects.get()
    assert event.signature_valid and event.clinic == clinic and event.processed_at
    message = Message.objects.get()
    assert (message.direction, message.kind, message.text) == ("in", "text", "Hola")
    assert message.status == MessageStatus.RECEIVED
    assert message.webhook_event == event
    assert message.wa_timestamp.timestamp() == 1767225600
    conversation = message.conversation
    assert (conversation.clinic, conversation.wa_id) == (clinic, WA_ID)
    assert conversation.contact_name == "Ana María"
    assert conversation.last_inbound_at is not None


def test_it_refuses_a_bad_signature(client, clinic, caplog):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))
    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        response = post(client, body, signature="sha256=" + "0" * 64)

    assert response.status_code == 403
    assert "bad X-Hub-Signature-256" in caplog.text
    assert not WebhookEvent.objects.exists() and not Message.objects.exists()


def test_it_refuses_a_payload_signed_with_another_secret(client, clinic):
    raw = json.dumps(payload(change(clinic.phone_number_id, [text_message("wamid.A")]))).encode()
    assert post(client, raw, signature=signature_for(raw, "other")).status_code == 403
    assert not Message.objects.exists()


def test_it_refuses_a_missing_signature(client, clinic, caplog):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))
    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        response = post(client, body, signature=None)

    assert response.status_code == 403
    assert "missing X-Hub-Signature-256" in caplog.text
    assert not Message.objects.exists()


def test_it_refuses_everything_without_an_app_secret(client, clinic, settings, caplog):
    settings.WHATSAPP_APP_SECRET = ""
    raw = json.dumps(payload(change(clinic.phone_number_id, [text_message("wamid.A")]))).encode()
    with caplog.at_level(logging.ERROR, logger="bot.webhook"):
        response = post(client, raw, signature=signature_for(raw, ""))

    assert response.status_code == 403
    assert "WHATSAPP_APP_SECRET is not configured" in caplog.text
    assert not Message.objects.exists()


def test_it_refuses_a_3_mb_body(client, clinic):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A", "x" * 3_000_000)]))
    response = post(client, body)

    assert response.status_code == 413
    assert not WebhookEvent.objects.exists() and not Message.objects.exists()


def test_it_keeps_a_malformed_json_body_and_answers_400(client, clinic):
    raw = b'{"object": "whatsapp_business_account", "entry": [ oops'
    response = post(client, raw)

    assert response.status_code == 400
    assert "malformed JSON" in response.json()["reason"]
    event = WebhookEvent.objects.get()
    assert event.body == raw.decode()
    assert "malformed JSON" in event.error
    assert not Message.objects.exists()


def test_it_answers_400_to_json_that_is_not_an_object(client, db):
    response = post(client, b"[1, 2, 3]")
    assert response.status_code == 400
    assert WebhookEvent.objects.get().error


def test_it_ignores_an_unknown_phone_number_id(client, clinic, caplog):
    body = payload(change("999999999", [text_message("wamid.A")]))
    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        response = post(client, body)

    assert response.status_code == 200
    assert "unknown phone_number_id" in caplog.text
    assert not Message.objects.exists() and not Conversation.objects.exists()
    assert WebhookEvent.objects.get().clinic is None


def test_it_keeps_the_event_and_answers_200_when_processing_breaks(client, clinic, caplog):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))
    with mock.patch("bot.webhook.parse_message", side_effect=RuntimeError("boom")):
        response = post(client, body)

    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    assert "boom" in event.error
    assert f"webhook event {event.pk} could not be processed" in caplog.text
    # One transaction: nothing half-written.
    assert not Message.objects.exists() and not Conversation.objects.exists()


def test_it_drops_nul_characters_postgres_cannot_store(client, clinic):
    raw = (
        json.dumps(payload(change(clinic.phone_number_id, [text_message("wamid.A", "ho\0la")])))
    ).encode()
    assert b"\\u0000" in raw
    assert post(client, raw).status_code == 200
    assert Message.objects.get().text == "hola"


# Messages ----------------------------------------------------------------------------------------


def test_it_stores_a_redelivered_message_once(client, clinic, django_capture_on_commit_callbacks):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, body).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, body).status_code == 200

    assert Message.objects.count() == 1
    assert WebhookEvent.objects.count() == 2
    assert queued_turns() == [Message.objects.get().conversation_id]


def test_it_processes_every_entry_change_and_message(
    client, clinic, other_clinic, django_capture_on_commit_callbacks
):
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA1",
                "changes": [
                    change(
                        clinic.phone_number_id,
                        [text_message("wamid.1", "uno"), text_message("wamid.2", "dos")],
                    ),
                    change(clinic.phone_number_id, [text_message("wamid.3", "hi", "573009998877")]),
                ],
            },
            {
                "id": "WABA2",
                "changes": [change(other_clinic.phone_number_id, [text_message("wamid.4")])],
            },
        ],
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, body).status_code == 200

    assert list(Message.objects.order_by("id").values_list("wa_message_id", flat=True)) == [
        "wamid.1",
        "wamid.2",
        "wamid.3",
        "wamid.4",
    ]
    assert Conversation.objects.filter(clinic=clinic).count() == 2
    assert Conversation.objects.filter(clinic=other_clinic, wa_id=WA_ID).exists()
    # One turn per conversation with new messages, not one per message.
    assert sorted(queued_turns()) == sorted(Conversation.objects.values_list("id", flat=True))


def message_of(kind: str, content: dict, wamid: str) -> dict:
    return {"from": WA_ID, "id": wamid, "timestamp": "1767225600", "type": kind, kind: content}


@pytest.mark.parametrize(
    ("raw", "kind", "text", "inbound_kind", "reply_id"),
    [
        (
            message_of("text", {"body": "Me duele la cabeza"}, "w1"),
            "text",
            "Me duele la cabeza",
            "text",
            "",
        ),
        (
            message_of(
                "interactive",
                {
                    "type": "list_reply",
                    "list_reply": {"id": "slot:42", "title": "Lun 8:00", "description": "Dr. G"},
                },
                "w2",
            ),
            "interactive",
            "Lun 8:00",
            "interactive",
            "slot:42",
        ),
        (
            message_of(
                "interactive",
                {"type": "button_reply", "button_reply": {"id": "confirm:yes", "title": "Sí"}},
                "w3",
            ),
            "interactive",
            "Sí",
            "interactive",
            "confirm:yes",
        ),
        (
            message_of("button", {"payload": "reminder:confirm:7", "text": "Confirmar"}, "w4"),
            "button",
            "Confirmar",
            "button",
            "reminder:confirm:7",
        ),
        (
            message_of("audio", {"id": "media1", "mime_type": "audio/ogg"}, "w5"),
            "audio",
            "",
            "unsupported",
            "",
        ),
        (
            message_of("image", {"id": "media2", "mime_type": "image/jpeg"}, "w6"),
            "image",
            "",
            "unsupported",
            "",
        ),
        (message_of("video", {"id": "media3"}, "w7"), "video", "", "unsupported", ""),
        (
            message_of("document", {"id": "media4", "filename": "orden.pdf"}, "w8"),
            "document",
            "",
            "unsupported",
            "",
        ),
        (
            message_of("location", {"latitude": 4.6, "longitude": -74.0}, "w9"),
            "location",
            "",
            "unsupported",
            "",
        ),
        (message_of("sticker", {"id": "media5"}, "w10"), "sticker", "", "unsupported", ""),
        (
            message_of("contacts", [{"name": {"formatted_name": "Luis"}}], "w11"),
            "contacts",
            "",
            "unsupported",
            "",
        ),
        (
            message_of("reaction", {"message_id": "wamid.X", "emoji": "👍"}, "w12"),
            "reaction",
            "",
            "unsupported",
            "",
        ),
        (
            {
                "from": WA_ID,
                "id": "w13",
                "timestamp": "1767225600",
                "type": "unsupported",
                "errors": [{"code": 131051, "title": "Message type unknown"}],
            },
            "unsupported",
            "",
            "unsupported",
            "",
        ),
        (
            message_of(
                "interactive", {"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}}, "w14"
            ),
            "interactive_other",
            "",
            "unsupported",
            "",
        ),
    ],
)
def test_it_stores_every_message_kind(client, clinic, raw, kind, text, inbound_kind, reply_id):
    assert post(client, payload(change(clinic.phone_number_id, [raw]))).status_code == 200

    message = Message.objects.get()
    assert (message.kind, message.text) == (kind, text)
    assert message.payload == raw
    inbound = to_inbound(message)
    assert (inbound.kind, inbound.text, inbound.reply_id) == (inbound_kind, text, reply_id)
    assert inbound.wa_id == WA_ID and inbound.contact_name == "Ana María"


def test_it_updates_the_contact_name(client, clinic):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.1")])))
    contacts = [{"profile": {"name": "Ana M. Gómez"}, "wa_id": WA_ID}]
    post(
        client,
        payload(change(clinic.phone_number_id, [text_message("wamid.2")], contacts=contacts)),
    )
    assert Conversation.objects.get().contact_name == "Ana M. Gómez"


def test_it_skips_a_message_without_a_sender(client, clinic, caplog):
    raw = {"id": "wamid.1", "type": "text", "text": {"body": "x"}}
    assert post(client, payload(change(clinic.phone_number_id, [raw]))).status_code == 200
    assert not Message.objects.exists()
    assert "without a sender" in caplog.text


# Statuses ----------------------------------------------------------------------------------------


@pytest.fixture
def outbound(clinic) -> Message:
    conversation = Conversation.objects.create(clinic=clinic, wa_id=WA_ID)
    return Message.objects.create(
        clinic=clinic,
        conversation=conversation,
        direction="out",
        wa_message_id="wamid.OUT1",
        text="Hola",
        status=MessageStatus.SENT,
    )


def status_update(status: str, **extra) -> dict:
    return {
        "id": "wamid.OUT1",
        "status": status,
        "timestamp": "1767225700",
        "recipient_id": WA_ID,
        **extra,
    }


def send_statuses(client, clinic, *statuses: str) -> None:
    for status in statuses:
        body = payload(change(clinic.phone_number_id, statuses=[status_update(status)]))
        assert post(client, body).status_code == 200


def test_it_moves_outbound_statuses_forward(client, clinic, outbound):
    send_statuses(client, clinic, "delivered")
    outbound.refresh_from_db()
    assert outbound.status == "delivered"
    send_statuses(client, clinic, "read")
    outbound.refresh_from_db()
    assert outbound.status == "read"


def test_it_never_moves_a_status_backwards(client, clinic, outbound):
    send_statuses(client, clinic, "read", "delivered", "sent")
    outbound.refresh_from_db()
    assert outbound.status == "read"


def test_it_applies_statuses_in_one_payload_in_any_order(client, clinic, outbound):
    statuses = [status_update("read"), status_update("delivered")]
    post(client, payload(change(clinic.phone_number_id, statuses=statuses)))
    outbound.refresh_from_db()
    assert outbound.status == "read"


def test_it_records_a_failed_delivery(client, clinic, outbound):
    failed = status_update(
        "failed",
        errors=[{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement"}],
    )
    post(client, payload(change(clinic.phone_number_id, statuses=[failed])))
    outbound.refresh_from_db()
    assert outbound.status == "failed"
    assert outbound.error_code == "131047"
    assert outbound.error == "Re-engagement message"


def test_it_ignores_statuses_from_another_clinic(client, clinic, other_clinic, outbound):
    send_statuses(client, other_clinic, "read")
    outbound.refresh_from_db()
    assert outbound.status == "sent"


def test_it_replays_a_kept_event(client, clinic):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))
    with mock.patch("bot.webhook.parse_message", side_effect=RuntimeError("boom")):
        post(client, body)
    event = WebhookEvent.objects.get()

    assert process_event(event, json.loads(event.body)) == [Conversation.objects.get().pk]
    assert process_event(event, json.loads(event.body)) == []

    assert Message.objects.get().webhook_event == event
    event.refresh_from_db()
    assert event.error == "" and event.processed_at and event.clinic == clinic


# Under ASGI (daphne serves production) ----------------------------------------------------------


async def asgi_post(raw: bytes, headers: list[tuple[bytes, bytes]]):
    from channels.testing import HttpCommunicator

    from sophia_web.asgi import application

    communicator = HttpCommunicator(
        application,
        "POST",
        URL,
        body=raw,
        headers=[(b"content-type", b"application/json"), (b"host", b"localhost"), *headers],
    )
    return await communicator.get_response(timeout=10)


@pytest.fixture
async def asgi_thread_connections():
    yield
    # Views and async ORM calls ran in asgiref's thread: close its connection before teardown.
    await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
async def test_it_serves_the_webhook_under_asgi(clinic, asgi_thread_connections):
    raw = json.dumps(payload(change(clinic.phone_number_id, [text_message("wamid.ASGI")]))).encode()
    signature = signature_for(raw, SECRET).encode()

    response = await asgi_post(raw, [(b"x-hub-signature-256", signature)])

    assert response["status"] == 200
    assert await Message.objects.filter(wa_message_id="wamid.ASGI").aexists()


@pytest.mark.django_db(transaction=True)
async def test_it_refuses_a_3_mb_body_under_asgi(clinic, asgi_thread_connections):
    raw = json.dumps({"x": "x" * 3_000_000}).encode()
    signature = signature_for(raw, SECRET).encode()

    response = await asgi_post(raw, [(b"x-hub-signature-256", signature)])

    assert response["status"] == 413
    assert not await WebhookEvent.objects.aexists()


# The hot path's guarantees (bench/bench_bot.py measures its speed) ------------------------------


@pytest.mark.django_db(transaction=True)  # a real transaction, rolled back for real
def test_it_stores_the_messages_again_when_the_database_refuses_a_statement(client, clinic, caplog):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))

    refuse = f'UPDATE "{Message._meta.db_table}" SET "text" = NULL'
    # Inside one statement the UPDATE would not see the new message: a row it refuses instead.
    refuse_in_one = f'INSERT INTO "{Message._meta.db_table}" ("text") VALUES (NULL)'

    def refused(cursor, task, calls, now):  # the turns' own statement, after the messages
        cursor.execute(refuse)
        return []

    with (
        mock.patch("bot.webhook.task_rows.enqueue_many", side_effect=refused),
        # Or, on PostgreSQL, the part of the store's one statement that queues them.
        mock.patch("bot.webhook.task_rows.enqueue_each_sql", return_value=(refuse_in_one, [])),
    ):
        response = post(client, body)

    assert response.status_code == 200
    assert "retrying without queueing turns" in caplog.text
    assert Message.objects.get().text == "Hola"  # the first attempt left nothing behind
    assert WebhookEvent.objects.get().error == ""
    assert queued_turns() == []  # the stranded-turn sweeper queues it


def test_it_keeps_the_messages_when_the_turn_cannot_be_queued(client, clinic, caplog):
    from bot import periodic

    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))
    down = RuntimeError("queue down")
    with (
        mock.patch("bot.webhook.task_rows.enqueue_many", side_effect=down),
        mock.patch("bot.webhook.task_rows.enqueue_each_sql", side_effect=down),
    ):
        response = post(client, body)

    assert response.status_code == 200
    message = Message.objects.get()
    assert message.status == MessageStatus.RECEIVED
    event = WebhookEvent.objects.get()
    assert event.processed_at is not None and event.error == ""
    assert "retrying without queueing turns" in caplog.text
    # Nothing queued it, so the stranded-turn sweeper does.
    later = message.created_at + periodic.STRANDED_AFTER * 2
    with mock.patch("bot.processing.schedule_turns") as schedule:
        assert periodic.pick_up_stranded_turns(now=later) == 1
    schedule.assert_called_once_with(message.conversation_id)


def test_it_queues_the_turn_in_the_same_transaction(client, clinic):
    from django_tasks_db.models import DBTaskResult

    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.A")])))
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.A")])))  # again

    task = DBTaskResult.objects.get()
    assert task.task_path == "bot.processing.run_turns"
    assert task.args_kwargs["args"][0] == Message.objects.get().conversation_id


def test_it_leaves_the_conversation_alone_on_a_redelivery(client, clinic):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.A")]))
    post(client, body)
    conversation = Conversation.objects.get()
    assert conversation.last_inbound_at is not None
    earlier = conversation.last_inbound_at.replace(year=2020)
    Conversation.objects.update(last_inbound_at=earlier, last_activity_at=earlier)

    post(client, body)

    conversation.refresh_from_db()
    assert conversation.last_inbound_at == earlier and conversation.last_activity_at == earlier


def test_it_keeps_the_contact_name_when_whatsapp_sends_none(client, clinic):
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.1")])))
    no_name = [{"profile": {}, "wa_id": WA_ID}]
    post(
        client, payload(change(clinic.phone_number_id, [text_message("wamid.2")], contacts=no_name))
    )
    assert Conversation.objects.get().contact_name == "Ana María"


def test_it_follows_a_clinic_renumbered_in_this_process(client, clinic, caplog):
    old = clinic.phone_number_id
    post(client, payload(change(old, [text_message("wamid.1")])))  # the number is now cached
    clinic.phone_number_id = "100000000000099"
    clinic.save()

    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        post(client, payload(change(old, [text_message("wamid.2")])))
    post(client, payload(change("100000000000099", [text_message("wamid.3")])))

    assert "unknown phone_number_id" in caplog.text
    assert set(Message.objects.values_list("wa_message_id", flat=True)) == {"wamid.1", "wamid.3"}


def test_it_serves_a_new_clinic_at_once(client, db):
    from tests.conftest import make_clinic

    post(client, payload(change("100000000000077", [text_message("wamid.1")])))  # unknown
    make_clinic("nueva", "100000000000077")
    post(client, payload(change("100000000000077", [text_message("wamid.2")])))

    assert list(Message.objects.values_list("wa_message_id", flat=True)) == ["wamid.2"]


def test_it_does_not_use_an_expired_clinic_cache_entry(client, clinic):
    import time

    from bot import webhook

    webhook._clinic_cache[clinic.phone_number_id] = (clinic.pk + 1000, time.monotonic() - 1)
    post(client, payload(change(clinic.phone_number_id, [text_message("wamid.1")])))

    assert Message.objects.get().clinic_id == clinic.pk
