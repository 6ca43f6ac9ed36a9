"""Bodies no parser expects: every one gets a 2xx or a 4xx, and every readable message is kept
and run. NaN is tolerated (it becomes null), lone surrogates become U+FFFD."""

import json
import logging

import pytest

from bot.models import Message, MessageStatus, WebhookEvent
from bot.webhook import MAX_JSON_DEPTH, parse_payload, signature_for
from tests.bot.test_webhook import SECRET, URL, change, payload, queued_turns, text_message


@pytest.fixture(autouse=True)
def _whatsapp_settings(settings):
    settings.WHATSAPP_APP_SECRET = SECRET


def post_raw(client, raw: bytes):
    return client.post(
        URL,
        data=raw,
        content_type="application/json",
        headers={"X-Hub-Signature-256": signature_for(raw, SECRET)},
    )


def test_it_answers_400_to_2000_levels_of_nesting_and_keeps_the_body(client, clinic, caplog):
    raw = (b'{"entry":' * 2000) + b"1" + (b"}" * 2000)
    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        response = post_raw(client, raw)
    assert response.status_code == 400
    assert "nested deeper" in response.json()["reason"]
    event = WebhookEvent.objects.get()
    assert event.body == raw.decode() and "nested deeper" in event.error
    assert f"webhook event {event.pk} refused" in caplog.text


@pytest.mark.parametrize("escapes", [True, False], ids=["escapes", "no_escapes"])
@pytest.mark.parametrize("depth", [2000, 900, MAX_JSON_DEPTH + 1])
def test_it_refuses_deep_arrays_and_objects_without_a_recursion_error(depth, escapes):
    for raw in ('{"a":' + "[" * depth + "]" * depth + "}", '{"a":' * depth + "1" + "}" * depth):
        parsed, reason = parse_payload(raw, escapes=escapes)
        assert parsed is None and "nested deeper" in reason


def test_it_accepts_nesting_up_to_the_limit():
    depth = MAX_JSON_DEPTH
    parsed, reason = parse_payload('{"a":' * depth + "1" + "}" * depth)
    assert reason == "" and parsed is not None


def test_it_stores_and_runs_a_message_with_lone_surrogates(client, clinic):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.S", "hola")]))
    raw = json.dumps(body).replace('"hola"', '"ho\\ud800la \\udfff"').encode()
    assert b"\\ud800" in raw
    response = post_raw(client, raw)
    assert response.status_code == 200
    message = Message.objects.get()
    assert message.text == "ho\ufffdla \ufffd"
    assert message.status == MessageStatus.RECEIVED
    assert queued_turns() == [message.conversation_id]
    assert WebhookEvent.objects.get().error == ""


def test_it_keeps_a_valid_surrogate_pair(client, clinic):
    body = payload(change(clinic.phone_number_id, [text_message("wamid.E", "ok \U0001f600")]))
    raw = json.dumps(body).encode()  # ensure_ascii: the emoji travels as a surrogate pair
    assert b"\\ud83d\\ude00" in raw
    assert post_raw(client, raw).status_code == 200
    assert Message.objects.get().text == "ok \U0001f600"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_it_tolerates_nan_and_infinity_as_null(client, clinic, constant):
    message = text_message("wamid.N", "quiero una cita")
    body = json.dumps(payload(change(clinic.phone_number_id, [message])))
    raw = body.replace('"timestamp": "1767225600"', f'"timestamp": {constant}').encode()
    assert constant.encode() in raw
    response = post_raw(client, raw)
    assert response.status_code == 200
    stored = Message.objects.get()
    assert stored.text == "quiero una cita" and stored.payload["timestamp"] is None
    assert stored.wa_timestamp is None
    assert queued_turns() == [stored.conversation_id]


def test_it_reads_a_message_despite_invalid_utf8_bytes(client, clinic):
    raw = json.dumps(
        payload(change(clinic.phone_number_id, [text_message("wamid.U", "hola XX")]))
    ).encode()
    raw = raw.replace(b"XX", b"\xff\xfe")
    assert post_raw(client, raw).status_code == 200
    assert Message.objects.get().text == "hola \ufffd\ufffd"


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"x"', b"1" * 5000])
def test_it_answers_400_to_unreadable_bodies(client, clinic, raw):
    response = post_raw(client, raw)
    assert response.status_code == 400
    assert WebhookEvent.objects.get().error.startswith("malformed")
    assert not Message.objects.exists()
