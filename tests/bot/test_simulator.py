"""The demo simulator: a fake Graph API and a page that chats through the real webhook."""

import json

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from bot import simulator, whatsapp
from bot.messages import Reply, Row
from bot.models import Conversation, Message, WebhookEvent
from bot.processing import to_inbound
from tests.conftest import PASSWORD

PHONE = "573001234567"
HTMX = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def _simulator_on(settings):
    settings.DEBUG = False
    settings.SOPHIA_SIMULATOR = True
    settings.WHATSAPP_APP_SECRET = "sim-secret"
    settings.WHATSAPP_ACCESS_TOKEN = "sim-token"


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def graph_post(client, phone_number_id, body, token="sim-token"):
    return client.post(
        f"/simulator/graph/{phone_number_id}/messages",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


def send(client, clinic, **data):
    return client.post(
        "/simulator/send/",
        {"clinic": clinic.pk, "phone": PHONE, "name": "Ana", **data},
        headers=HTMX,
    )


def test_it_is_off_without_debug_or_the_flag(client, settings, clinic, receptionist):
    settings.SOPHIA_SIMULATOR = False
    login(client, receptionist)
    assert client.get("/simulator/").status_code == 404
    body = whatsapp.build_payload(PHONE, Reply(kind="text", text="Hola"))
    assert graph_post(client, clinic.phone_number_id, body).status_code == 404


def test_it_answers_like_the_graph_api(client, clinic):
    body = whatsapp.build_payload(PHONE, Reply(kind="text", text="Hola, soy Sophia"))
    response = graph_post(client, clinic.phone_number_id, body)

    assert response.status_code == 200
    answer = response.json()
    assert answer["messaging_product"] == "whatsapp"
    assert answer["messages"][0]["id"].startswith("wamid.SIM")
    (item,) = simulator.items_after(clinic.phone_number_id, PHONE, 0)
    assert item["direction"] == "out" and item["text"] == "Hola, soy Sophia"


def test_it_refuses_a_wrong_access_token(client, clinic):
    body = whatsapp.build_payload(PHONE, Reply(kind="text", text="Hola"))
    response = graph_post(client, clinic.phone_number_id, body, token="nope")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 190
    assert simulator.items_after(clinic.phone_number_id, PHONE, 0) == []


def test_it_refuses_a_body_that_is_not_a_message(client, clinic):
    response = graph_post(client, clinic.phone_number_id, {"to": "x", "type": "video"})
    assert response.status_code == 400


def test_it_asks_for_a_login(client, clinic):
    response = client.get("/simulator/")
    assert response.status_code == 302
    assert response["Location"].startswith("/cuenta/entrar/")


def test_it_is_for_clinic_staff_only(client, outsider):
    assert login(client, outsider).get("/simulator/").status_code == 403


def test_it_shows_only_the_users_clinics(client, clinic, other_clinic, receptionist):
    login(client, receptionist)
    response = client.get("/simulator/")
    assert response.status_code == 200
    assert clinic.name in response.text and other_clinic.name not in response.text
    assert "Simulador de WhatsApp" in response.text
    assert client.get("/simulator/", {"clinic": other_clinic.pk}).status_code == 404
    assert send(client, other_clinic, text="Hola").status_code == 404
    assert not Message.objects.exists()


def test_it_sends_typed_text_through_the_signed_webhook(client, clinic, receptionist):
    login(client, receptionist)
    response = send(client, clinic, text="Hola, quiero una cita")

    assert response.status_code == 200
    message = Message.objects.get()
    assert (message.direction, message.kind, message.text) == (
        "in",
        "text",
        "Hola, quiero una cita",
    )
    assert message.conversation.clinic == clinic and message.conversation.wa_id == PHONE
    assert message.conversation.contact_name == "Ana"
    assert WebhookEvent.objects.get().signature_valid
    (bubble,) = simulator.items_after(clinic.phone_number_id, PHONE, 0)
    assert bubble["direction"] == "in" and bubble["text"] == "Hola, quiero una cita"


def test_it_sends_a_tapped_list_row_as_a_list_reply(client, clinic, receptionist):
    login(client, receptionist)
    send(client, clinic, reply_type="list_reply", reply_id="slot:42", reply_title="Lun 8:00")

    inbound = to_inbound(Message.objects.get())
    assert (inbound.kind, inbound.text, inbound.reply_id) == ("interactive", "Lun 8:00", "slot:42")


def test_it_sends_a_photo_as_an_unsupported_message(client, clinic, receptionist):
    login(client, receptionist)
    send(client, clinic, reply_type="image")
    assert Message.objects.get().kind == "image"


def test_it_refuses_an_empty_message(client, clinic, receptionist):
    login(client, receptionist)
    response = send(client, clinic, text="   ")
    assert "HX-Trigger" not in response
    assert "alert" in response.text
    assert not Message.objects.exists()


def test_it_reports_a_webhook_refusal(client, clinic, receptionist, settings):
    login(client, receptionist)
    settings.WHATSAPP_APP_SECRET = ""
    response = send(client, clinic, text="Hola")
    assert "403" in response.text
    assert not Message.objects.exists()


def test_it_pushes_new_bubbles_with_tappable_choices_to_the_phones_group(
    client, clinic, receptionist
):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    group = simulator.group_name(clinic.phone_number_id, PHONE)
    async_to_sync(layer.group_add)(group, channel)
    graph_post(client, clinic.phone_number_id, whatsapp.build_payload(PHONE, Reply("text", "Hola")))
    rows = (Row("slot:1", "Lun 8:00", "Dr. García"), Row("slot:2", "Lun 8:20"))
    reply = Reply(kind="list", text="Elige un horario", rows=rows, button="Ver horarios")
    graph_post(client, clinic.phone_number_id, whatsapp.build_payload(PHONE, reply))

    events = []
    while len(events) < 2:
        message = async_to_sync(layer.receive)(channel)
        if message.get("event") == "sim.bubble":
            events.append(message)
    async_to_sync(layer.group_discard)(group, channel)
    assert [e["seq"] for e in events] == [1, 2]
    html = events[1]["html"]
    assert "Elige un horario" in html and "Hola" not in html
    assert "Ver horarios" in html and "Dr. García" in html
    assert "slot:2" in html and "list_reply" in html
    assert 'data-upsert-into=".sim-log"' in html


def test_it_shows_several_phones_side_by_side(client, clinic, receptionist):
    login(client, receptionist)
    response = client.get("/simulator/", {"clinic": clinic.pk, "phones": f"{PHONE},573005556677"})
    html = response.text
    assert f"/ws/simulator/{clinic.pk}/{PHONE}/" in html
    assert f"/ws/simulator/{clinic.pk}/573005556677/" in html


@pytest.mark.django_db(transaction=True)
def test_it_receives_the_outbox_and_reports_it_read(
    client, live_server, settings, clinic, receptionist
):
    settings.WHATSAPP_API_URL = f"{live_server.url}/simulator/graph"
    login(client, receptionist)
    send(client, clinic, text="Hola")
    inbound = Message.objects.get()
    whatsapp.send_typing(clinic, inbound.wa_message_id)
    assert simulator.is_typing(clinic.phone_number_id, PHONE)

    conversation = Conversation.objects.get()
    (outbound,) = whatsapp.queue_replies(conversation, [Reply(kind="text", text="¡Hola, Ana!")])
    assert whatsapp.deliver(outbound.pk) is True
    assert not simulator.is_typing(clinic.phone_number_id, PHONE)

    assert "¡Hola, Ana!" in client.get("/simulator/", {"clinic": clinic.pk, "phone": PHONE}).text
    simulator.acknowledge_shown(
        clinic.pk, PHONE, [Message.objects.get(pk=outbound.pk).wa_message_id]
    )
    outbound.refresh_from_db()
    assert outbound.wa_message_id.startswith("wamid.SIM")
    assert outbound.status == "read"


def test_it_shows_the_chat_so_far_on_the_page(client, clinic, receptionist):
    login(client, receptionist)
    send(client, clinic, text="Buenos días")
    response = client.get("/simulator/", {"clinic": clinic.pk, "phone": PHONE})
    assert "Buenos días" in response.text
    group = simulator.group_name(clinic.phone_number_id, PHONE)
    assert f'data-live-seq="{{&quot;{group}&quot;: 1}}"' in response.text
