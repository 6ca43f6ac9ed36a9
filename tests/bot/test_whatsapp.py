"""bot.whatsapp: payloads within WhatsApp's limits; the outbox against a real local Graph API."""

import datetime as dt
import socket
import threading

import pytest
from django.db import connection
from django.utils import timezone

from bot import whatsapp
from bot.messages import Button, Reply, Row
from bot.models import Conversation, Message, MessageStatus
from tests.fakes import graph_server

fake_graph = graph_server.fake_graph
WA_ID = "573001234567"


@pytest.fixture
def conversation(clinic) -> Conversation:
    return Conversation.objects.create(clinic=clinic, wa_id=WA_ID, contact_name="Ana")


def queue_text(conversation, text="Hola") -> Message:
    (message,) = whatsapp.queue_replies(conversation, [Reply(kind="text", text=text)])
    return message


def seconds_until(moment: dt.datetime) -> float:
    return (moment - timezone.now()).total_seconds()


# Payloads ---------------------------------------------------------------------------------------


def test_it_builds_a_plain_text_body():
    body = whatsapp.build_payload(WA_ID, Reply(kind="text", text="Hola 👋"))
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": WA_ID,
        "type": "text",
        "text": {"preview_url": False, "body": "Hola 👋"},
    }


def test_it_clips_a_long_text_to_4096_characters_with_an_ellipsis():
    body = whatsapp.build_payload(WA_ID, Reply(kind="text", text="a" * 5000))
    text = body["text"]["body"]
    assert len(text) == 4096
    assert text.endswith("…")


def test_it_keeps_a_list_within_whatsapp_limits():
    rows = tuple(
        Row(id=f"slot:{i}", title=f"Lunes 12 de mayo {i}:00 a. m.", description="d" * 100)
        for i in range(12)
    )
    reply = Reply(kind="list", text="b" * 2000, rows=rows, button="Ver los horarios disponibles")
    body = whatsapp.build_payload(WA_ID, reply)

    interactive = body["interactive"]
    assert body["type"] == "interactive" and interactive["type"] == "list"
    wa_rows = interactive["action"]["sections"][0]["rows"]
    assert len(wa_rows) == 10
    assert [r["id"] for r in wa_rows] == [f"slot:{i}" for i in range(10)]
    assert all(len(r["title"]) <= 24 and len(r["description"]) <= 72 for r in wa_rows)
    assert wa_rows[0]["title"].endswith("…") and wa_rows[0]["description"].endswith("…")
    assert len(interactive["action"]["button"]) <= 20
    assert len(interactive["body"]["text"]) <= 1024


def test_it_keeps_short_list_texts_untouched():
    reply = Reply(
        kind="list", text="Elige", rows=(Row("a", "Lun 8:00", "Dr. García"),), button="Ver"
    )
    body = whatsapp.build_payload(WA_ID, reply)
    assert body["interactive"]["action"] == {
        "button": "Ver",
        "sections": [{"rows": [{"id": "a", "title": "Lun 8:00", "description": "Dr. García"}]}],
    }


def test_it_keeps_at_most_three_short_buttons():
    buttons = tuple(Button(id=f"b{i}", title=f"Opción número {i} larguísima") for i in range(4))
    body = whatsapp.build_payload(WA_ID, Reply(kind="buttons", text="¿Confirmas?", buttons=buttons))
    sent = body["interactive"]["action"]["buttons"]
    assert body["interactive"]["type"] == "button"
    assert [b["reply"]["id"] for b in sent] == ["b0", "b1", "b2"]
    assert all(b["type"] == "reply" and len(b["reply"]["title"]) <= 20 for b in sent)


def test_it_sends_a_list_without_rows_as_text():
    body = whatsapp.build_payload(WA_ID, Reply(kind="list", text="No hay horarios"))
    assert body["type"] == "text"


def test_it_builds_a_template_body():
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]
    body = whatsapp.template_payload(WA_ID, "recordatorio_cita", components=components)
    assert body["type"] == "template"
    assert body["template"] == {
        "name": "recordatorio_cita",
        "language": {"code": "es"},
        "components": components,
    }


def test_it_queues_replies_as_outbox_rows(conversation, receptionist):
    replies = [
        Reply(kind="text", text="Hola"),
        Reply(kind="list", text="Elige", rows=(Row("s1", "Lun 8:00"),), button="Ver"),
    ]
    messages = whatsapp.queue_replies(conversation, replies, sent_by=receptionist)

    rows = list(Message.objects.filter(conversation=conversation).order_by("id"))
    assert [m.pk for m in messages] == [m.pk for m in rows]
    assert [m.kind for m in rows] == ["text", "list"]
    assert all(m.direction == "out" and m.status == "queued" for m in rows)
    assert all(m.next_attempt_at is not None and m.sent_by == receptionist for m in rows)
    assert rows[0].payload == whatsapp.build_payload(WA_ID, replies[0])
    assert rows[1].text == "Elige\n• Lun 8:00"


# Delivery ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_delivers_a_queued_message(fake_graph, conversation):
    message = queue_text(conversation, "Hola, soy Sophia")

    assert whatsapp.deliver(message.pk) is True

    (request,) = fake_graph.messages
    assert request.phone_number_id == conversation.clinic.phone_number_id
    assert request.headers["authorization"] == "Bearer test-access-token"
    assert request.json == message.payload
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.wa_message_id == request.wamid
    assert message.attempts == 1 and message.next_attempt_at is None


@pytest.mark.django_db(transaction=True)
def test_it_uses_the_clinic_token_when_it_has_one(fake_graph, conversation):
    conversation.clinic.whatsapp_access_token = "clinic-token"
    conversation.clinic.save()
    whatsapp.deliver(queue_text(conversation).pk)
    assert fake_graph.messages[0].headers["authorization"] == "Bearer clinic-token"


@pytest.mark.django_db(transaction=True)
def test_it_sends_a_message_only_once(fake_graph, conversation):
    message = queue_text(conversation)
    assert whatsapp.deliver(message.pk) is True
    assert whatsapp.deliver(message.pk) is False
    assert whatsapp.deliver_due() == 0
    assert len(fake_graph.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_it_retries_a_server_error_with_backoff(fake_graph, conversation):
    message = queue_text(conversation)
    fake_graph.fail_next(1, status=503)

    assert whatsapp.deliver(message.pk) is False

    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert message.attempts == 1
    assert message.error_code == "503"
    assert 3.5 < seconds_until(message.next_attempt_at) <= 6
    # Not due yet: nothing is sent early.
    assert whatsapp.deliver_due() == 0
    assert len(fake_graph.requests) == 1

    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    assert whatsapp.deliver_due() == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT and message.attempts == 2
    assert message.error_code == "" and message.error == ""


@pytest.mark.django_db(transaction=True)
def test_it_backs_off_exponentially(fake_graph, conversation):
    message = queue_text(conversation)
    Message.objects.filter(pk=message.pk).update(attempts=3)
    fake_graph.fail_next(1, status=500, code=131000)

    whatsapp.deliver(message.pk)

    message.refresh_from_db()
    assert message.attempts == 4
    assert message.error_code == "131000"
    # Fourth attempt: 5 s × 2³ = 40 s, ±20 % jitter.
    assert 31 < seconds_until(message.next_attempt_at) <= 48


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("code", [130429, 131056])
def test_it_backs_off_longer_when_throttled(fake_graph, conversation, code):
    message = queue_text(conversation)
    fake_graph.fail_next(1, status=400, code=code)

    whatsapp.deliver(message.pk)

    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert message.error_code == str(code)
    assert seconds_until(message.next_attempt_at) > 45


@pytest.mark.django_db(transaction=True)
def test_it_honours_retry_after(fake_graph, conversation):
    message = queue_text(conversation)
    fake_graph.fail_next(1, status=429, retry_after=600)
    whatsapp.deliver(message.pk)
    message.refresh_from_db()
    assert seconds_until(message.next_attempt_at) > 590


@pytest.mark.django_db(transaction=True)
def test_it_marks_a_message_outside_the_24_hour_window_as_needing_a_template(
    fake_graph, conversation
):
    message = queue_text(conversation)
    fake_graph.fail_next(1, status=400, code=131047, message="Re-engagement message")

    assert whatsapp.deliver(message.pk) is False

    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.error_code == "131047"
    assert "template" in message.error
    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    assert whatsapp.deliver_due() == 0
    assert len(fake_graph.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_it_does_not_retry_an_undeliverable_message(fake_graph, conversation):
    message = queue_text(conversation)
    fake_graph.fail_next(1, status=400, code=131026, message="Message undeliverable")

    whatsapp.deliver(message.pk)

    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.error_code == "131026"
    assert message.next_attempt_at is None


@pytest.mark.django_db(transaction=True)
def test_it_gives_up_after_the_last_attempt(fake_graph, conversation):
    message = queue_text(conversation)
    Message.objects.filter(pk=message.pk).update(attempts=whatsapp.MAX_ATTEMPTS - 1)
    fake_graph.fail_next(1, status=502)

    whatsapp.deliver(message.pk)

    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.attempts == whatsapp.MAX_ATTEMPTS


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_it_retries_when_the_api_is_unreachable(settings, conversation):
    settings.WHATSAPP_ACCESS_TOKEN = "token"
    settings.WHATSAPP_API_URL = f"http://127.0.0.1:{closed_port()}"
    message = queue_text(conversation)

    assert whatsapp.deliver(message.pk) is False

    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert message.attempts == 1
    assert "network error" in message.error


@pytest.mark.django_db(transaction=True)
def test_it_retries_when_the_api_times_out(settings, conversation):
    # A socket that accepts connections but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.WHATSAPP_API_URL = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings.WHATSAPP_TIMEOUT_SECONDS = 0.2
        settings.WHATSAPP_ACCESS_TOKEN = "token"
        message = queue_text(conversation)

        assert whatsapp.deliver(message.pk) is False

    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert "timeout" in message.error


@pytest.mark.django_db(transaction=True)
def test_it_recovers_a_message_whose_sender_crashed(fake_graph, conversation):
    crashed = queue_text(conversation, "crashed")
    Message.objects.filter(pk=crashed.pk).update(
        status=MessageStatus.SENDING, next_attempt_at=timezone.now() - dt.timedelta(seconds=1)
    )
    other = Conversation.objects.create(clinic=conversation.clinic, wa_id="573009999999")
    in_flight = queue_text(other, "in flight")
    Message.objects.filter(pk=in_flight.pk).update(
        status=MessageStatus.SENDING, next_attempt_at=timezone.now() + dt.timedelta(seconds=30)
    )

    assert whatsapp.deliver_due() == 1

    assert [r.text for r in fake_graph.messages] == ["crashed"]
    crashed.refresh_from_db()
    in_flight.refresh_from_db()
    assert crashed.status == MessageStatus.SENT
    assert in_flight.status == MessageStatus.SENDING


@pytest.mark.django_db(transaction=True)
def test_it_keeps_a_conversations_messages_in_order(fake_graph, conversation):
    first, second, _third = whatsapp.queue_replies(
        conversation, [Reply(kind="text", text=t) for t in ("uno", "dos", "tres")]
    )
    Message.objects.filter(pk=first.pk).update(
        next_attempt_at=timezone.now() + dt.timedelta(minutes=1)
    )

    # The second waits while the first is still pending…
    assert whatsapp.deliver(second.pk) is False
    assert fake_graph.requests == []

    # …and follows it as soon as the first goes out.
    Message.objects.filter(pk=first.pk).update(next_attempt_at=timezone.now())
    assert whatsapp.deliver(first.pk) is True
    assert [r.text for r in fake_graph.messages] == ["uno", "dos", "tres"]
    assert set(Message.objects.values_list("status", flat=True)) == {"sent"}


@pytest.mark.django_db(transaction=True)
def test_it_lets_concurrent_senders_send_each_message_once(fake_graph, clinic):
    for i in range(10):
        conv = Conversation.objects.create(clinic=clinic, wa_id=f"5730000000{i:02d}")
        whatsapp.queue_replies(conv, [Reply(kind="text", text=f"{i}-{n}") for n in range(3)])
    results: list[int] = []

    def sender():
        try:
            results.append(whatsapp.deliver_due())
        finally:
            connection.close()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    whatsapp.deliver_due()  # rows a thread skipped while another held an earlier one

    texts = [r.text for r in fake_graph.messages]
    assert sorted(texts) == sorted(f"{i}-{n}" for i in range(10) for n in range(3))
    for i in range(10):
        assert [t for t in texts if t.startswith(f"{i}-")] == [f"{i}-{n}" for n in range(3)]
    assert Message.objects.exclude(status="sent").count() == 0


@pytest.mark.django_db(transaction=True)
def test_it_sends_the_typing_indicator(fake_graph, clinic):
    whatsapp.send_typing(clinic, "wamid.IN1")
    (request,) = fake_graph.requests
    assert request.json == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.IN1",
        "typing_indicator": {"type": "text"},
    }


@pytest.mark.django_db(transaction=True)
def test_it_never_raises_when_the_typing_indicator_fails(settings, fake_graph, clinic, caplog):
    fake_graph.fail_next(1, status=500)
    whatsapp.send_typing(clinic, "wamid.IN1")
    settings.WHATSAPP_API_URL = f"http://127.0.0.1:{closed_port()}"
    whatsapp.send_typing(clinic, "wamid.IN2")
    assert caplog.text.count("typing indicator") == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (400, 100, MessageStatus.FAILED),  # invalid parameter: the same body fails again
        (400, 131051, MessageStatus.FAILED),  # unsupported message type
        (400, None, MessageStatus.FAILED),  # a refusal without a code
        (400, 2, MessageStatus.QUEUED),  # temporary trouble at Meta
        (401, 190, MessageStatus.QUEUED),  # expired token: an operator can fix it
        (500, 131000, MessageStatus.QUEUED),
    ],
)
def test_it_maps_graph_errors_to_retry_or_give_up(fake_graph, conversation, status, code, outcome):
    message = queue_text(conversation)
    fake_graph.fail_next(1, status=status, code=code)
    whatsapp.deliver(message.pk)
    message.refresh_from_db()
    assert message.status == outcome
    assert message.error_code == str(code or status)


@pytest.mark.django_db(transaction=True)
def test_it_queues_and_sends_a_template(fake_graph, conversation):
    message = whatsapp.queue_template(
        conversation, "recordatorio_cita", text="Recordatorio: mañana 8:00 a. m."
    )
    assert (message.kind, message.status) == ("template", "queued")
    assert message.text == "Recordatorio: mañana 8:00 a. m."

    assert whatsapp.deliver(message.pk) is True
    assert fake_graph.messages[0].json["template"]["name"] == "recordatorio_cita"
