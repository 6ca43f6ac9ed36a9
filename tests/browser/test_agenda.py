"""The agenda in a real browser (Debian chromium via Playwright) against daphne + a worker.

1. An admin creates a doctor and a weekly schedule, previews and saves it; the slots appear in
   the calendar; a patient books one over WhatsApp (signed webhooks, fake Graph API); the cell
   turns booked in the admin's open calendar, live.
2. An admin adds an absence over a booked appointment: the impact lists it; "cancel and notify"
   sends the patient's WhatsApp template (fake Graph API) and the slot is no longer booked.
3. A receptionist books from the calendar but gets 404 on schedule editing; another clinic's
   staff get 404 on this clinic's agenda pages.
Screenshots go to the test's tmp dir (and to $AGENDA_SHOTS when set, to look at them).
"""

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from bot.models import Direction, Message, MessageStatus
from clinics import selectors, services
from clinics.models import Appointment, Doctor, Slot, SlotStatus
from clinics.services import Actor
from tests.bot.test_processing import reply_message, text_message, webhook_body
from tests.browser.conftest import LiveApp, login
from tests.conftest import eventually
from tests.fakes import graph_server

fake_graph = graph_server.fake_graph  # the fixture

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ANA_WA = "573001234567"


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.getenv("AGENDA_SHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.fixture
def graph_app(transactional_db, tmp_path, fake_graph):
    """daphne + worker with the fake Graph API as WhatsApp (every outbound request recorded)."""
    running = LiveApp(tmp_path, WHATSAPP_API_URL=fake_graph.url).start()
    yield running
    running.stop()


def next_monday(clinic) -> dt.date:
    today = timezone.localdate(timezone.now(), clinic.tz)
    return today + dt.timedelta(days=7 - today.weekday())


class Phone:
    """A patient's WhatsApp number talking to the running app through signed webhooks."""

    def __init__(self, app, graph, clinic, wa_id: str) -> None:
        self.app, self.graph, self.clinic, self.wa_id = app, graph, clinic, wa_id

    def send(self, message: dict) -> list:
        before = len(self.graph.messages_to(self.wa_id))
        body = webhook_body(self.clinic.phone_number_id, [message])
        assert self.app.post_webhook(body).status_code == 200

        def answered() -> bool:
            done = Message.objects.filter(
                wa_message_id=message["id"], status=MessageStatus.PROCESSED
            ).exists()
            pending = Message.objects.filter(
                conversation__wa_id=self.wa_id,
                direction=Direction.OUT,
                status__in=[MessageStatus.QUEUED, MessageStatus.SENDING],
            ).exists()
            return done and not pending

        eventually(answered, what=f"the bot's answer to {message.get('text', message)}")
        return self.graph.messages_to(self.wa_id)[before:]

    def say(self, text: str) -> list:
        return self.send(text_message(text, wa_id=self.wa_id))

    def tap_row(self, replies: list, index: int = 0) -> list:
        row = next(r for r in reversed(replies) if r.rows).rows[index]
        return self.send(reply_message(row["id"], row["title"], wa_id=self.wa_id))

    def tap_button(self, replies: list, button_id: str) -> list:
        buttons = next(r for r in reversed(replies) if r.buttons).buttons
        button = next(b for b in buttons if b["id"] == button_id)
        return self.send(
            reply_message(button["id"], button["title"], kind="button_reply", wa_id=self.wa_id)
        )


def test_an_admin_sets_a_schedule_and_sees_a_whatsapp_booking_arrive_live(
    graph_app,
    fake_graph,
    page,
    clinic,
    specialty,
    clinic_admin,
    patient,
    tmp_path,
):
    clinic.booking_horizon_days = 28
    clinic.save(update_fields=["booking_horizon_days"])
    login(page, graph_app, clinic_admin)
    page.get_by_role("link", name="Ajustes").click()
    page.get_by_role("link", name="Médicos y horarios").click()
    page.get_by_label("Nombre completo").fill("Dra. Camila Soto")
    page.get_by_label("Medicina General").check()
    page.get_by_role("button", name="Crear y definir el horario").click()
    expect(page.get_by_role("heading", name="Horario semanal · Dra. Camila Soto")).to_be_visible()
    # A second block: Wednesday afternoons.
    page.get_by_role("button", name="Agregar un bloque").click()
    second = page.locator(".block-card").nth(1)
    second.get_by_label("Mié").check()
    second.get_by_label("Desde", exact=True).fill("14:00")
    second.get_by_label("Hasta", exact=True).fill("16:00")
    second.get_by_label("Minutos por cita").fill("30")
    second.get_by_label("Válido desde").fill(timezone.localdate().isoformat())
    second.get_by_label("Cada N semanas").fill("1")
    page.get_by_role("button", name="Vista previa").click()
    expect(page.get_by_role("heading", name="Vista previa")).to_be_visible()
    expect(page.locator(".preview-day").first).to_be_visible()
    shot(page, tmp_path, "agenda-schedule-preview")
    page.get_by_role("button", name="Guardar horario").click()
    expect(page.locator(".flash")).to_contain_text("turnos creados")
    doctor = Doctor.objects.get(full_name="Dra. Camila Soto")
    assert doctor.schedules.count() == 2

    first = selectors.available_slots(clinic=clinic, specialty=specialty, page_size=1).slots[0]
    day = timezone.localdate(first.start_at, clinic.tz)
    page.goto(f"{graph_app.url}/agenda/?fecha={day.isoformat()}&especialidad={specialty.pk}")
    cell = page.locator(f"#slot-{first.pk}")
    expect(cell).to_have_attribute("data-state", "free")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    shot(page, tmp_path, "agenda-day-before")

    ana = Phone(graph_app, fake_graph, clinic, ANA_WA)
    ana.say("hola")
    ana.say("1020304050")
    listing = ana.say("tengo fiebre y dolor de cabeza")
    assert any(r.rows for r in listing)
    confirm = ana.tap_row(listing)
    ana.tap_button(confirm, "confirm:yes")
    appointment = Appointment.objects.get(patient=patient)
    assert appointment.slot_id == first.pk

    # The admin did not reload: the cell changed over the websocket.
    expect(cell).to_have_attribute("data-state", "booked")
    expect(cell).to_contain_text("Ana María Gómez")
    shot(page, tmp_path, "agenda-day-live-booked")
    cell.click()
    expect(page.locator("#panel")).to_contain_text("Ana María Gómez")
    expect(page.locator("#panel")).to_contain_text("WhatsApp")
    shot(page, tmp_path, "agenda-panel-booked")


def test_an_absence_over_a_booking_cancels_and_tells_the_patient(
    graph_app,
    fake_graph,
    page,
    clinic,
    specialty,
    clinic_admin,
    patient,
    tmp_path,
):
    actor = Actor.staff(clinic_admin)
    doctor = services.doctor_create(
        clinic=clinic, full_name="Dr. Pablo Díaz", specialty_ids=[specialty.pk], actor=actor
    )
    services.schedule_replace(
        clinic=clinic,
        doctor_id=doctor.pk,
        blocks=[{"weekdays": [0, 1, 2, 3, 4], "start_time": dt.time(8), "end_time": dt.time(12),
                 "slot_minutes": 30, "valid_from": timezone.localdate()}],
        actor=actor,
    )  # fmt: skip
    monday = next_monday(clinic)
    start = dt.datetime.combine(monday, dt.time(9), tzinfo=clinic.tz)
    slot = Slot.objects.get(doctor=doctor, start_at=start)
    appointment = services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slot.pk, actor=Actor.patient(patient), source="bot"
    )

    login(page, graph_app, clinic_admin)
    page.goto(graph_app.url + "/ajustes/excepciones/")
    form = page.locator("#absence")
    form.get_by_label("Médico").select_option(str(doctor.pk))
    form.get_by_label("Motivo").fill("Congreso de cardiología")
    form.get_by_label("Desde", exact=True).fill(monday.isoformat())
    form.get_by_label("Hasta (inclusive)").fill(monday.isoformat())
    form.get_by_role("button", name="Vista previa").click()
    impact = page.locator("#absence .impact")
    expect(impact).to_contain_text("Ana María Gómez")
    expect(impact).to_contain_text("09:00")
    # Saving without a decision is refused, in Spanish, and writes nothing.
    page.locator("#absence").get_by_role("button", name="Guardar ausencia").click()
    expect(page.get_by_role("alert").first).to_contain_text("Hay citas reservadas")
    assert not doctor.blocked_periods.exists()
    page.locator("#absence").get_by_label(
        "Cancelarlas y avisar a cada paciente por WhatsApp"
    ).check()
    shot(page, tmp_path, "agenda-absence-impact")
    page.locator("#absence").get_by_role("button", name="Guardar ausencia").click()
    expect(page.locator(".flash")).to_contain_text("citas canceladas")
    shot(page, tmp_path, "agenda-exceptions")

    appointment.refresh_from_db()
    assert appointment.status == "cancelled"
    fake_graph.wait_for(
        lambda reqs: any(r.json.get("type") == "template" for r in fake_graph.messages_to(ANA_WA))
    )
    template = next(r for r in fake_graph.messages_to(ANA_WA) if r.json.get("type") == "template")
    params = [p["text"] for p in template.json["template"]["components"][0]["parameters"]]
    assert params[0] == "Ana" and params[2] == "09:00" and params[3] == "Dr. Pablo Díaz"
    slot.refresh_from_db()
    assert slot.status == SlotStatus.BLOCKED  # not booked any more, and not bookable: he is away

    page.goto(f"{graph_app.url}/agenda/semana/{doctor.pk}/?fecha={monday.isoformat()}")
    expect(page.locator(f"#slot-{slot.pk}")).to_have_attribute("data-state", "blocked")
    expect(page.locator(".period").first).to_contain_text("Congreso de cardiología")
    shot(page, tmp_path, "agenda-week-absence")


def test_a_receptionist_books_from_the_calendar_but_cannot_edit_schedules(
    live_app, new_page, clinic, specialty, doctor, receptionist, other_staff, patient, tmp_path
):
    services.slots_generate(
        clinic=clinic,
        date_from=timezone.localdate(),
        date_to=timezone.localdate() + dt.timedelta(days=10),
    )
    monday = next_monday(clinic)
    slot = Slot.objects.get(
        doctor=doctor, start_at=dt.datetime.combine(monday, dt.time(10), tzinfo=clinic.tz)
    )
    page = new_page(viewport={"width": 820, "height": 1180}, locale="es-CO")  # a desk tablet
    page.set_default_timeout(15_000)
    login(page, live_app, receptionist)
    page.get_by_role("link", name="Agenda").click()
    page.goto(f"{live_app.url}/agenda/?fecha={monday.isoformat()}&especialidad={specialty.pk}")
    page.locator(f"#slot-{slot.pk}").click()
    panel = page.locator("#panel")
    # Typed key by key, as a person does: a fill() landing in the instant between the panel's
    # swap and htmx wiring its input would fire no search at all.
    panel.get_by_label("Buscar por documento o nombre").press_sequentially("1020", delay=60)
    panel.get_by_role("button", name="Ana María Gómez").click()
    expect(panel).to_contain_text("Cita reservada para Ana María Gómez")
    expect(page.locator(f"#slot-{slot.pk}")).to_have_attribute("data-state", "booked")
    shot(page, tmp_path, "agenda-tablet-receptionist")
    assert Appointment.objects.get(slot=slot).source == "staff"
    assert "Ajustes" not in page.locator(".mainnav").inner_text()
    response = page.goto(f"{live_app.url}/ajustes/medicos/{doctor.pk}/horario/")
    assert response.status == 404

    outsider = new_page()
    login(outsider, live_app, other_staff)
    for path in (
        f"/agenda/semana/{doctor.pk}/",
        f"/agenda/turno/{slot.pk}/",
        f"/pacientes/{patient.pk}/",
        f"/ajustes/medicos/{doctor.pk}/horario/",
    ):
        assert outsider.goto(live_app.url + path).status == 404, path


def test_the_admin_tunes_triage_and_the_desk_works_its_lists(
    live_app, page, clinic, specialty, doctor, clinic_admin, patient, tmp_path
):
    services.slots_generate(
        clinic=clinic,
        date_from=timezone.localdate(),
        date_to=timezone.localdate() + dt.timedelta(days=7),
    )
    # Not today's first slot: by the time the suite runs it may have started.
    tomorrow = timezone.now() + dt.timedelta(days=1)
    slot = Slot.objects.filter(doctor=doctor, start_at__gte=tomorrow).order_by("start_at").first()
    services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slot.pk, actor=Actor.patient(patient), source="bot"
    )
    login(page, live_app, clinic_admin)
    page.goto(f"{live_app.url}/ajustes/especialidades/{specialty.pk}/")
    page.get_by_label("Palabras clave de triaje").fill("fiebre, gripa, tos seca")
    page.get_by_role("textbox", name="Prueba una frase").fill("tengo tos seca desde hace días")
    page.get_by_role("button", name="Probar").click()
    result = page.locator("#try-result")
    expect(result).to_contain_text("Medicina General")
    expect(result).to_contain_text("Confianza")
    shot(page, tmp_path, "agenda-specialty-tester")
    page.get_by_role("textbox", name="Prueba una frase").fill(
        "me duele el pecho y no puedo respirar"
    )
    page.get_by_role("button", name="Probar").click()
    expect(result).to_contain_text("Señal de alarma")

    page.goto(f"{live_app.url}/citas/")
    expect(page.locator("table.data")).to_contain_text("Ana María Gómez")
    shot(page, tmp_path, "agenda-appointments")
    page.goto(f"{live_app.url}/pacientes/?q=Ana")
    expect(page.locator("#patient-list")).to_contain_text("1020304050")
    page.get_by_role("link", name="Ana María Gómez").click()
    expect(page.get_by_role("heading", name="Ana María Gómez")).to_be_visible()
    shot(page, tmp_path, "agenda-patient-card")
    page.goto(f"{live_app.url}/ajustes/")
    expect(page.get_by_label("Zona horaria")).to_have_value("America/Bogota")
    shot(page, tmp_path, "agenda-settings")
