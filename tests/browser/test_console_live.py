"""The receptionist's console in a real browser, live: daphne + worker + the simulator as WhatsApp.

Every check that says "without reload" sets a marker on `window` first and checks it survived.
"""

import json
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from bot.models import Conversation
from tests.browser.conftest import login, shot
from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = "573001112233"


def open_simulator(page: Page, app, clinic, phone: str = PHONE, name: str = "Carla") -> None:
    page.goto(f"{app.url}/simulator/?clinic={clinic.pk}&phones={phone}&name={name}")
    expect(page.locator(f'.phone[data-phone="{phone}"] [ws-connect]')).to_have_attribute(
        "ws-connect", re.compile("/ws/simulator/")
    )
    page.wait_for_function("document.getElementById('live-status').dataset.state === 'live'")


def patient_says(page: Page, text: str, phone: str = PHONE) -> None:
    phone_box = page.locator(f'.phone[data-phone="{phone}"]')
    phone_box.locator("input[name=text]").fill(text)
    phone_box.locator("input[name=text]").press("Enter")
    expect(phone_box.locator(".sim-in").last).to_contain_text(text)


def mark(page: Page) -> None:
    page.evaluate("window.__noReload = 'still here'")


def not_reloaded(page: Page) -> bool:
    return page.evaluate("window.__noReload") == "still here"


def wait_live(page: Page) -> None:
    page.wait_for_function("document.getElementById('live-status').dataset.state === 'live'")


def conversation_of(clinic, phone: str = PHONE) -> Conversation:
    return Conversation.objects.get(clinic=clinic, wa_id=phone)


def test_it_shows_a_new_conversation_and_streams_its_messages_live(
    live_app, new_page, receptionist, clinic, doctor, slots, tmp_path
):
    console, phone = new_page(), new_page()
    login(console, live_app, receptionist)
    login(phone, live_app, receptionist)
    wait_live(console)
    mark(console)
    open_simulator(phone, live_app, clinic)

    patient_says(phone, "Hola")
    row = console.locator("#inbox-list .inbox-row", has_text="Carla")
    expect(row).to_be_visible(timeout=20_000)
    expect(phone.locator(".sim-out").first).to_be_visible(timeout=20_000)  # the bot answered
    assert not_reloaded(console)

    row.locator("a").click()
    console.wait_for_url(re.compile(r"/conversaciones/\d+/"))
    wait_live(console)
    mark(console)
    patient_says(phone, "Quiero una cita, tengo gripa")
    expect(console.locator("#stream .bubble-in", has_text="tengo gripa")).to_be_visible(
        timeout=20_000
    )
    expect(console.locator("#stream .bubble-out").last).not_to_have_text(
        re.compile("^$"), timeout=20_000
    )
    bot_replies = console.locator("#stream .bubble-out")
    count_before = bot_replies.count()
    expect(bot_replies).not_to_have_count(0)
    assert count_before >= 1
    assert not_reloaded(console)
    shot(console, tmp_path, "live-conversation")


def test_it_hands_the_chat_to_staff_and_back(
    live_app, new_page, receptionist, clinic, doctor, slots, tmp_path
):
    console, phone = new_page(), new_page()
    login(console, live_app, receptionist)
    login(phone, live_app, receptionist)
    open_simulator(phone, live_app, clinic)
    patient_says(phone, "Hola")
    expect(phone.locator(".sim-out")).not_to_have_count(0, timeout=20_000)
    conversation = conversation_of(clinic)

    console.goto(f"{live_app.url}/conversaciones/{conversation.pk}/")
    wait_live(console)
    mark(console)
    console.get_by_role("button", name="Tomar el control").click()
    expect(console.locator("#conv-header")).to_contain_text("recepcion atiende este chat")
    console.get_by_label("Mensaje para el paciente").fill("Hola Carla, soy Laura de recepción")
    console.get_by_role("button", name="Enviar", exact=True).click()
    expect(phone.locator(".sim-out", has_text="soy Laura de recepción")).to_be_visible(
        timeout=15_000
    )

    bubbles_before = phone.locator(".sim-out").count()
    patient_says(phone, "Gracias, ¿a qué hora abren?")
    expect(console.locator("#stream .bubble-in", has_text="a qué hora abren")).to_be_visible(
        timeout=15_000
    )
    phone.wait_for_timeout(2500)  # time enough for a bot turn that must not answer
    assert phone.locator(".sim-out").count() == bubbles_before

    console.locator("summary", has_text="Devolver al bot").click()
    console.get_by_role("button", name="Devolver", exact=True).click()
    expect(console.locator("#conv-header")).to_contain_text("Atiende el bot")
    assert phone.locator(".sim-out").count() == bubbles_before  # hand-back sends nothing

    patient_says(phone, "Hola de nuevo")
    expect(phone.locator(".sim-out")).to_have_count(bubbles_before + 1, timeout=20_000)
    assert not_reloaded(console)
    shot(console, tmp_path, "handed-back")


def test_it_puts_a_red_flag_conversation_on_top_as_urgent_live(
    live_app, new_page, receptionist, clinic, doctor, slots
):
    console, phone = new_page(), new_page()
    login(console, live_app, receptionist)
    login(phone, live_app, receptionist)
    open_simulator(phone, live_app, clinic, phone="573004445566", name="Beto")
    patient_says(phone, "Hola", phone="573004445566")
    open_simulator(phone, live_app, clinic, phone=PHONE, name="Carla")
    patient_says(phone, "Buenas tardes")
    console.goto(live_app.url + "/")
    expect(console.locator("#inbox-list .inbox-row")).to_have_count(2, timeout=20_000)
    expect(console.locator("#inbox-list .inbox-row").first).to_contain_text("Carla")
    wait_live(console)
    mark(console)

    open_simulator(phone, live_app, clinic, phone="573004445566", name="Beto")
    patient_says(phone, "Tengo un dolor muy fuerte en el pecho y no puedo respirar", "573004445566")
    top = console.locator("#inbox-list .inbox-row").first
    expect(top).to_contain_text("Beto", timeout=20_000)
    expect(top).to_have_class(re.compile("is-urgent"))
    expect(top.locator(".tag-urgent")).to_have_text("Urgente")
    expect(console).to_have_title(re.compile(r"^\(\d+\) "))  # the title badge
    assert not_reloaded(console)


def test_it_refuses_another_clinics_receptionist_page_and_websocket(
    live_app, page, clinic, other_clinic, other_staff, receptionist
):
    conversation = Conversation.objects.create(
        clinic=clinic, wa_id=PHONE, contact_name="Carla", last_activity_at=timezone.now()
    )
    login(page, live_app, other_staff)
    url = f"{live_app.url}/conversaciones/{conversation.pk}/"
    # The status through the page's own cookies: page.goto's response was once None here (the
    # console the login lands on can reload itself when its websocket resyncs, racing goto).
    assert page.request.get(url).status == 404
    page.goto(url)
    expect(page.get_by_role("heading", name="No encontrado")).to_be_visible()
    outcome = page.evaluate(
        """url => new Promise(resolve => {
            const ws = new WebSocket(url);
            let opened = false;
            ws.onopen = () => { opened = true; };
            ws.onclose = e => resolve({opened, code: e.code});
        })""",
        f"{live_app.ws_url}/ws/live/{clinic.pk}/conversation/{conversation.pk}/",
    )
    assert outcome["opened"] is False
    own = page.evaluate(
        """url => new Promise(resolve => {
            const ws = new WebSocket(url);
            ws.onopen = () => { ws.close(); resolve('open'); };
            ws.onclose = e => resolve('closed ' + e.code);
        })""",
        f"{live_app.ws_url}/ws/live/{other_clinic.pk}/",
    )
    assert own == "open"  # the same user's own clinic works: the refusal was about scope


def test_it_catches_up_after_the_websocket_drops(
    live_app, new_page, receptionist, clinic, doctor, slots
):
    console, phone = new_page(), new_page()
    login(console, live_app, receptionist)
    login(phone, live_app, receptionist)
    open_simulator(phone, live_app, clinic)
    patient_says(phone, "Hola")
    expect(phone.locator(".sim-out")).not_to_have_count(0, timeout=20_000)
    conversation = conversation_of(clinic)
    console.goto(f"{live_app.url}/conversaciones/{conversation.pk}/")
    wait_live(console)
    mark(console)

    # Offline for real: the current socket is cut and new ones cannot reach the server.
    offline = {"on": True}

    def network(ws):
        if offline["on"]:
            ws.close(code=1012)
        else:
            ws.connect_to_server()

    console.route_web_socket(re.compile(".*/ws/live/.*"), network)
    console.evaluate("SophiaLive.drop()")
    expect(console.locator("#live-status")).to_have_attribute("data-state", "offline")
    expect(console.locator("#live-status")).to_contain_text("Sin conexión")

    patient_says(phone, "Escribo mientras la recepción está sin conexión")
    console.wait_for_timeout(1500)
    assert console.locator("#stream", has_text="sin conexión").count() == 0

    offline["on"] = False
    expect(console.locator("#stream .bubble-in", has_text="sin conexión")).to_be_visible(
        timeout=30_000
    )
    expect(console.locator("#live-status")).to_have_attribute("data-state", "live")
    assert not_reloaded(console)
    seqs = json.loads(json.dumps(console.evaluate("SophiaLive.seqs()")))
    assert seqs[f"conversation-{conversation.pk}"] > 0


def test_it_shows_who_else_is_viewing(live_app, new_page, receptionist, clinic):
    colleague = make_user("laura", clinic)
    conversation = Conversation.objects.create(
        clinic=clinic, wa_id=PHONE, contact_name="Carla", last_activity_at=timezone.now()
    )
    first, second = new_page(), new_page()
    login(first, live_app, receptionist)
    login(second, live_app, colleague)
    first.goto(f"{live_app.url}/conversaciones/{conversation.pk}/")
    second.goto(f"{live_app.url}/conversaciones/{conversation.pk}/")
    expect(first.locator("#conv-viewers")).to_contain_text("laura", timeout=15_000)
    expect(second.locator("#conv-viewers")).to_contain_text("recepcion", timeout=15_000)
