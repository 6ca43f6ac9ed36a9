"""The agenda pages: calendar, slot panel, appointments, patients and the admin's schedule pages.

Every view: another clinic's staff get 404; receptionists get 404 on admin pages; bad input gets
a clear Spanish error and writes nothing.
"""

import csv
import datetime as dt
import io

import pytest
from django.urls import reverse
from django.utils import timezone

from bot.models import Message
from clinics import services
from clinics.models import (
    Appointment,
    BlockedPeriod,
    Doctor,
    Patient,
    Schedule,
    Slot,
)
from clinics.services import Actor
from tests.clinics.conftest import row_counts

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _eight_week_horizon(clinic):
    clinic.booking_horizon_days = 56
    clinic.save(update_fields=["booking_horizon_days"])


@pytest.fixture
def admin_client(client, clinic_admin):
    client.force_login(clinic_admin)
    return client


@pytest.fixture
def desk_client(client, receptionist):
    client.force_login(receptionist)
    return client


@pytest.fixture
def other_client(client, other_staff):
    client.force_login(other_staff)
    return client


def next_monday(clinic) -> dt.date:
    today = timezone.localdate(timezone.now(), clinic.tz)
    return today + dt.timedelta(days=7 - today.weekday())


@pytest.fixture
def agenda(clinic, specialty, clinic_admin):
    """Dra. Rojas, Monday to Friday 08:00–12:00 in 30-minute slots, generated."""
    actor = Actor.staff(clinic_admin)
    doctor = services.doctor_create(
        clinic=clinic, full_name="Dra. Luisa Rojas", specialty_ids=[specialty.pk], actor=actor
    )
    services.schedule_replace(
        clinic=clinic,
        doctor_id=doctor.pk,
        blocks=[
            {
                "weekdays": [0, 1, 2, 3, 4],
                "start_time": dt.time(8),
                "end_time": dt.time(12),
                "slot_minutes": 30,
                "valid_from": timezone.localdate() - dt.timedelta(days=7),
            }
        ],
        actor=actor,
    )
    return doctor


def slot_at(doctor, day: dt.date, hour: int, minute: int = 0) -> Slot:
    start = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=doctor.clinic.tz)
    return Slot.objects.get(doctor=doctor, start_at=start)


def booked(clinic, patient, doctor, day, hour=8) -> Appointment:
    return services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slot_at(doctor, day, hour).pk,
        actor=Actor.patient(patient),
        source="bot",
    )


def block_data(prefix="blocks", **values) -> dict:
    data = {
        f"{prefix}-TOTAL_FORMS": "1",
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "14",
        f"{prefix}-0-weekdays": values.pop("weekdays", ["0", "1", "2", "3", "4"]),
        f"{prefix}-0-start_time": values.pop("start_time", "09:00"),
        f"{prefix}-0-end_time": values.pop("end_time", "12:00"),
        f"{prefix}-0-slot_minutes": values.pop("slot_minutes", "30"),
        f"{prefix}-0-valid_from": values.pop("valid_from", timezone.localdate().isoformat()),
        f"{prefix}-0-valid_to": values.pop("valid_to", ""),
        f"{prefix}-0-every_n_weeks": values.pop("every_n_weeks", "1"),
    }
    data.update(values)
    return data


# --- calendar ---------------------------------------------------------------------------------


def test_the_day_view_shows_doctors_side_by_side_with_patient_names(
    desk_client, clinic, agenda, specialty, patient
):
    monday = next_monday(clinic)
    other = services.doctor_create(
        clinic=clinic, full_name="Dr. Pablo Díaz", specialty_ids=[specialty.pk],
        actor=Actor.system("test"),
    )  # fmt: skip
    booked(clinic, patient, agenda, monday, 9)
    response = desk_client.get(
        reverse("clinics:agenda"), {"fecha": monday.isoformat(), "especialidad": specialty.pk}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "Dra. Luisa Rojas" in html and "Dr. Pablo Díaz" in html and other.pk
    assert "Ana María Gómez" in html
    assert 'class="cell cell-free' in html and 'class="cell cell-booked' in html
    assert "Libre" in html  # Spanish labels
    assert f'id="slot-{slot_at(agenda, monday, 9).pk}"' in html


def test_the_calendar_shows_times_in_the_clinics_zone(desk_client, clinic, agenda, settings):
    settings.TIME_ZONE = "Asia/Tokyo"  # the server's zone must not leak into the page
    monday = next_monday(clinic)
    response = desk_client.get(reverse("clinics:agenda-week", args=[agenda.pk]), {"fecha": monday})
    html = response.content.decode()
    assert '<span class="cell-time">08:00</span>' in html
    assert '<span class="cell-time">11:30</span>' in html


def test_the_week_view_of_another_clinics_doctor_is_404(other_client, agenda):
    assert other_client.get(reverse("clinics:agenda-week", args=[agenda.pk])).status_code == 404


def test_another_clinics_staff_get_404_on_every_agenda_object(
    other_client, clinic, agenda, patient
):
    monday = next_monday(clinic)
    appointment = booked(clinic, patient, agenda, monday)
    slot = slot_at(agenda, monday, 10)
    before = row_counts()
    for method, url, data in [
        ("get", reverse("clinics:slot", args=[slot.pk]), None),
        ("post", reverse("clinics:slot-book", args=[slot.pk]), {"patient": patient.pk}),
        ("post", reverse("clinics:slot-block", args=[slot.pk]), {}),
        ("post", reverse("clinics:appointment-cancel", args=[appointment.pk]), {"reason": "x"}),
        (
            "post",
            reverse("clinics:appointment-status", args=[appointment.pk]),
            {"status": "confirmed"},
        ),
        ("get", reverse("clinics:patient", args=[patient.pk]), None),
        ("get", reverse("clinics:doctor-schedule", args=[agenda.pk]), None),
    ]:
        response = getattr(other_client, method)(url, data or {})
        assert response.status_code == 404, url
    assert row_counts() == before


def test_the_other_clinics_lists_never_show_this_clinics_rows(
    other_client, clinic, agenda, patient
):
    booked(clinic, patient, agenda, next_monday(clinic))
    assert "Ana María" not in other_client.get(reverse("clinics:appointments")).content.decode()
    assert (
        "Ana María"
        not in other_client.get(reverse("clinics:patients"), {"q": "Ana"}).content.decode()
    )


# --- booking from the calendar ---------------------------------------------------------------


def test_a_receptionist_books_a_free_slot_for_a_patient(
    desk_client, clinic, agenda, patient, receptionist
):
    slot = slot_at(agenda, next_monday(clinic), 10)
    response = desk_client.post(
        reverse("clinics:slot-book", args=[slot.pk]),
        {"patient": patient.pk},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    appointment = Appointment.objects.get(slot=slot)
    assert appointment.source == "staff" and appointment.patient == patient
    html = response.content.decode()
    assert "Cita reservada para Ana María Gómez" in html
    assert 'hx-swap-oob="true"' in html  # the cell updates in place


def test_a_receptionist_registers_a_new_patient_and_books(desk_client, clinic, agenda):
    slot = slot_at(agenda, next_monday(clinic), 10)
    response = desk_client.post(
        reverse("clinics:slot-book", args=[slot.pk]),
        {"document": "5566778899", "full_name": "Pedro Páramo", "birth_date": "1990-05-01",
         "whatsapp_id": "573115556677"},
    )  # fmt: skip
    assert response.status_code == 200
    assert Appointment.objects.get(slot=slot).patient.document == "5566778899"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"document": "12", "full_name": "Pedro Páramo", "birth_date": "1990-05-01"},
         "El número de documento"),
        ({"document": "5566778899", "full_name": "Pedro Páramo", "birth_date": "2999-01-01"},
         "La fecha de nacimiento no es válida"),
    ],
)  # fmt: skip
def test_bad_patient_data_books_nothing(desk_client, clinic, agenda, data, message):
    slot = slot_at(agenda, next_monday(clinic), 10)
    before = row_counts()
    response = desk_client.post(reverse("clinics:slot-book", args=[slot.pk]), data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert row_counts() == before


def test_booking_a_taken_slot_says_so_in_spanish(desk_client, clinic, agenda, patient):
    monday = next_monday(clinic)
    booked(clinic, patient, agenda, monday, 10)
    other = Patient.objects.create(clinic=clinic, document="79111222", full_name="Luis Pérez")
    response = desk_client.post(
        reverse("clinics:slot-book", args=[slot_at(agenda, monday, 10).pk]), {"patient": other.pk}
    )
    assert response.status_code == 422
    assert "Alguien acaba de tomar este turno" in response.content.decode()


def test_another_clinics_patient_id_posted_by_hand_is_404(
    desk_client, clinic, agenda, other_clinic
):
    stranger = Patient.objects.create(clinic=other_clinic, document="99887766", full_name="X Y Z")
    slot = slot_at(agenda, next_monday(clinic), 10)
    response = desk_client.post(
        reverse("clinics:slot-book", args=[slot.pk]), {"patient": stranger.pk}
    )
    assert response.status_code == 404
    assert not Appointment.objects.exists()


def test_the_panel_confirms_cancels_with_a_reason_and_reschedules(
    desk_client, clinic, agenda, patient
):
    monday = next_monday(clinic)
    appointment = booked(clinic, patient, agenda, monday, 8)
    response = desk_client.post(
        reverse("clinics:appointment-status", args=[appointment.pk]), {"status": "confirmed"}
    )
    assert response.status_code == 200
    appointment.refresh_from_db()
    assert appointment.status == "confirmed"

    options = desk_client.get(
        reverse("clinics:appointment-reschedule-options", args=[appointment.pk]),
        {"fecha": monday.isoformat()},
    )
    assert options.status_code == 200
    target = slot_at(agenda, monday, 11)
    assert f'value="{target.pk}"' in options.content.decode()
    response = desk_client.post(
        reverse("clinics:appointment-reschedule", args=[appointment.pk]), {"slot": target.pk}
    )
    assert response.status_code == 200
    new = Appointment.objects.get(slot=target)
    assert new.rescheduled_from_id == appointment.pk

    empty = desk_client.post(reverse("clinics:appointment-cancel", args=[new.pk]), {"reason": ""})
    assert empty.status_code == 422
    assert "Escriba por qué se cancela la cita" in empty.content.decode()
    response = desk_client.post(
        reverse("clinics:appointment-cancel", args=[new.pk]), {"reason": "Viaje"}
    )
    new.refresh_from_db()
    assert new.status == "cancelled" and new.cancel_reason == "Viaje"
    trail = desk_client.get(reverse("clinics:slot", args=[target.pk])).content.decode()
    assert "Reservar para un paciente" in trail


def test_block_and_unblock_a_slot_from_the_panel(desk_client, clinic, agenda):
    slot = slot_at(agenda, next_monday(clinic), 9)
    desk_client.post(reverse("clinics:slot-block", args=[slot.pk]))
    slot.refresh_from_db()
    assert slot.status == "blocked"
    desk_client.post(reverse("clinics:slot-unblock", args=[slot.pk]))
    slot.refresh_from_db()
    assert slot.status == "free"
    assert not BlockedPeriod.objects.exists()


def test_blocking_a_range_over_a_booking_needs_a_decision(desk_client, clinic, agenda, patient):
    monday = next_monday(clinic)
    booked(clinic, patient, agenda, monday, 9)
    data = {"doctor": agenda.pk, "date": monday.isoformat(), "start_time": "08:00",
            "end_time": "10:00", "confirm": "1"}  # fmt: skip
    response = desk_client.post(reverse("clinics:block-range"), data)
    assert response.status_code == 422
    assert "Hay citas reservadas" in response.content.decode()
    assert not BlockedPeriod.objects.exists()
    response = desk_client.post(reverse("clinics:block-range"), {**data, "stranded_action": "keep"})
    assert response.status_code == 200
    assert BlockedPeriod.objects.get().kind == "block"


def test_blocking_a_range_refuses_end_before_start(desk_client, clinic, agenda):
    data = {"doctor": agenda.pk, "date": next_monday(clinic).isoformat(), "start_time": "10:00",
            "end_time": "09:00", "confirm": "1"}  # fmt: skip
    response = desk_client.post(reverse("clinics:block-range"), data)
    assert response.status_code == 422
    assert "La hora de fin debe ser posterior" in response.content.decode()
    assert not BlockedPeriod.objects.exists()


# --- lists ------------------------------------------------------------------------------------


def test_today_list_marks_attended_in_one_click(desk_client, clinic, agenda, patient):
    start = timezone.now() - dt.timedelta(minutes=30)
    slot = Slot.objects.create(
        clinic=clinic, doctor=agenda, start_at=start, end_at=start + dt.timedelta(minutes=20),
        status="booked",
    )  # fmt: skip
    appointment = Appointment.objects.create(
        clinic=clinic, patient=patient, slot=slot, doctor=agenda, start_at=slot.start_at,
        end_at=slot.end_at, source="bot",
    )  # fmt: skip
    page = desk_client.get(reverse("clinics:today"))
    assert "Ana María Gómez" in page.content.decode()
    response = desk_client.post(
        reverse("clinics:appointment-status", args=[appointment.pk]),
        {"status": "attended", "from": "today"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    appointment.refresh_from_db()
    assert appointment.status == "attended"


def test_the_appointment_list_pages_by_keyset_and_exports_csv(
    desk_client, clinic, agenda, patient, other_clinic
):
    monday = next_monday(clinic)
    patients = [
        Patient.objects.create(clinic=clinic, document=f"5000000{i:03d}", full_name=f"Paciente {i}")
        for i in range(55)
    ]
    slots = list(
        Slot.objects.filter(doctor=agenda, start_at__gte=timezone.now()).order_by("start_at")[:55]
    )
    for p, slot in zip(patients, slots, strict=False):
        services.appointment_book(
            clinic=clinic, patient=p, slot_id=slot.pk, actor=Actor.patient(p), source="bot"
        )
    first = desk_client.get(reverse("clinics:appointments"))
    html = first.content.decode()
    assert html.count("<tr>") >= 50 and "Mostrar más" in html
    cursor = html.split("cursor=")[1].split('"')[0]
    second = desk_client.get(
        reverse("clinics:appointments"), {"cursor": cursor}, HTTP_HX_REQUEST="true"
    )
    assert second.status_code == 200 and "Paciente 54" in second.content.decode()
    bad = desk_client.get(reverse("clinics:appointments"), {"cursor": "garbage"})
    assert bad.status_code == 200
    export = desk_client.get(reverse("clinics:appointments-csv"), {"status": "booked"})
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert len(rows) == 56 and rows[0][0] == "fecha"
    # Local time (the first slot still ahead: 08:00 early in the day, later after that).
    assert rows[1][1] == timezone.localtime(slots[0].start_at, clinic.tz).strftime("%H:%M")
    filtered = desk_client.get(
        reverse("clinics:appointments"),
        {"date_from": monday, "date_to": monday - dt.timedelta(days=1)},
    )
    assert "La fecha final es anterior a la inicial" in filtered.content.decode()


def test_patients_search_card_and_contact_edit(desk_client, clinic, patient):
    results = desk_client.get(reverse("clinics:patients"), {"q": "1020"}).content.decode()
    assert "Ana María Gómez" in results
    card = desk_client.get(reverse("clinics:patient", args=[patient.pk]))
    assert card.status_code == 200
    bad = desk_client.post(
        reverse("clinics:patient", args=[patient.pk]), {"full_name": "Ana", "whatsapp_id": "abc"}
    )
    assert bad.status_code == 422
    patient.refresh_from_db()
    assert patient.whatsapp_id == "573001234567"
    desk_client.post(
        reverse("clinics:patient", args=[patient.pk]),
        {"full_name": "Ana María Gómez Ruiz", "whatsapp_id": "573009990000"},
    )
    patient.refresh_from_db()
    assert (patient.full_name, patient.whatsapp_id) == ("Ana María Gómez Ruiz", "573009990000")


# --- admin pages ------------------------------------------------------------------------------


ADMIN_PAGES = [
    ("clinics:settings", []),
    ("clinics:doctors", []),
    ("clinics:specialties", []),
    ("clinics:exceptions", []),
]


@pytest.mark.parametrize(("name", "args"), ADMIN_PAGES)
def test_receptionists_get_404_on_admin_pages(desk_client, name, args):
    assert desk_client.get(reverse(name, args=args)).status_code == 404


@pytest.mark.parametrize(("name", "args"), ADMIN_PAGES)
def test_admins_see_the_admin_pages(admin_client, name, args):
    assert admin_client.get(reverse(name, args=args)).status_code == 200


def test_receptionists_cannot_edit_schedules(desk_client, agenda):
    url = reverse("clinics:doctor-schedule", args=[agenda.pk])
    assert desk_client.get(url).status_code == 404
    assert desk_client.post(url, block_data(action="save")).status_code == 404
    assert Schedule.objects.get(doctor=agenda).start_time == dt.time(8)


def test_an_admin_creates_a_doctor_then_previews_and_saves_a_schedule(
    admin_client, clinic, specialty
):
    response = admin_client.post(
        reverse("clinics:doctors"), {"full_name": "Dr. Nuevo Médico", "specialties": [specialty.pk]}
    )
    doctor = Doctor.objects.get(full_name="Dr. Nuevo Médico")
    assert response.status_code == 302
    url = reverse("clinics:doctor-schedule", args=[doctor.pk])
    preview = admin_client.post(url, block_data(action="preview"))
    assert preview.status_code == 200
    html = preview.content.decode()
    assert "Vista previa" in html and "09:00 · 09:30" in html
    assert not Schedule.objects.filter(doctor=doctor).exists()
    saved = admin_client.post(url, block_data(action="save"))
    assert saved.status_code == 302
    assert Schedule.objects.get(doctor=doctor).start_time == dt.time(9)
    assert Slot.objects.filter(doctor=doctor).exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"blocks-0-end_time": "08:00"}, "La hora de fin debe ser posterior a la hora de inicio."),
        ({"blocks-0-slot_minutes": "0"}, "La duración de cada cita debe estar entre 5 y 480"),
        ({"blocks-0-slot_minutes": "240"}, "La duración de cada cita es mayor que el bloque."),
        ({"blocks-0-valid_to": "2001-01-01"}, "La fecha final"),
        ({"blocks-0-weekdays": []}, "Elija al menos un día de la semana."),
        ({"blocks-0-start_time": "25:00"}, "Introduzca una hora válida"),
    ],
)
def test_bad_schedule_input_is_refused_in_spanish(admin_client, agenda, changes, message):
    url = reverse("clinics:doctor-schedule", args=[agenda.pk])
    data = block_data(action="save")
    data.update(changes)
    before = list(Schedule.objects.filter(doctor=agenda).values())
    slots = Slot.objects.count()
    response = admin_client.post(url, data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert list(Schedule.objects.filter(doctor=agenda).values()) == before
    assert Slot.objects.count() == slots


def test_overlapping_blocks_are_refused(admin_client, agenda):
    data = block_data(action="save")
    data.update(
        {
            "blocks-TOTAL_FORMS": "2",
            "blocks-1-weekdays": ["0"],
            "blocks-1-start_time": "11:00",
            "blocks-1-end_time": "13:00",
            "blocks-1-slot_minutes": "30",
            "blocks-1-valid_from": timezone.localdate().isoformat(),
            "blocks-1-every_n_weeks": "1",
        }
    )
    response = admin_client.post(reverse("clinics:doctor-schedule", args=[agenda.pk]), data)
    assert response.status_code == 422
    assert "Este bloque se cruza con otro bloque el mismo día." in response.content.decode()


def test_a_schedule_change_that_strands_a_booking_needs_a_decision(
    admin_client, clinic, agenda, patient
):
    booked(clinic, patient, agenda, next_monday(clinic), 8)
    url = reverse("clinics:doctor-schedule", args=[agenda.pk])
    preview = admin_client.post(url, block_data(action="preview"))
    assert "Ana María Gómez" in preview.content.decode()
    refused = admin_client.post(url, block_data(action="save"))
    assert refused.status_code == 422
    assert "Hay citas reservadas" in refused.content.decode()
    assert Schedule.objects.get(doctor=agenda).start_time == dt.time(8)
    kept = admin_client.post(url, block_data(action="save", stranded_action="keep"))
    assert kept.status_code == 302
    assert Appointment.objects.get().status == "booked"


def test_an_absence_over_a_booking_shows_the_impact_and_cancels_when_told(
    admin_client, clinic, agenda, patient, django_capture_on_commit_callbacks
):
    monday = next_monday(clinic)
    booked(clinic, patient, agenda, monday, 9)
    url = reverse("clinics:period-add", args=["absence"])
    data = {"absence-doctor": agenda.pk, "absence-date_from": monday.isoformat(),
            "absence-date_to": monday.isoformat(), "absence-reason": "Congreso"}  # fmt: skip
    preview = admin_client.post(url, {**data, "action": "preview"})
    html = preview.content.decode()
    assert preview.status_code == 200 and "Ana María Gómez" in html
    refused = admin_client.post(url, {**data, "action": "save"})
    assert refused.status_code == 422 and not BlockedPeriod.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        saved = admin_client.post(
            url, {**data, "action": "save", "absence-stranded_action": "cancel_notify"}
        )
    assert saved.status_code == 302
    assert Appointment.objects.get().status == "cancelled"
    assert BlockedPeriod.objects.get().reason == "Congreso"
    assert Message.objects.get().kind == "template"


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        (("-3", "-1"), "La fecha inicial ya pasó."),
        (("5", "2"), "La fecha final es anterior a la inicial."),
    ],
)
def test_bad_absence_dates_are_refused(admin_client, clinic, agenda, dates, message):
    today = timezone.localdate(timezone.now(), clinic.tz)
    start, end = (today + dt.timedelta(days=int(d)) for d in dates)
    response = admin_client.post(
        reverse("clinics:period-add", args=["absence"]),
        {"absence-doctor": agenda.pk, "absence-date_from": start, "absence-date_to": end,
         "action": "save"},
    )  # fmt: skip
    assert response.status_code == 422
    assert message in response.content.decode()
    assert not BlockedPeriod.objects.exists()


def test_another_clinics_doctor_posted_by_hand_is_refused(admin_client, clinic, other_clinic):
    stranger = Doctor.objects.create(clinic=other_clinic, full_name="Dra. Norte")
    monday = next_monday(clinic)
    response = admin_client.post(
        reverse("clinics:period-add", args=["absence"]),
        {"absence-doctor": stranger.pk, "absence-date_from": monday, "absence-date_to": monday,
         "action": "save", "absence-stranded_action": "keep"},
    )  # fmt: skip
    assert response.status_code == 422
    assert "Escoja una opción válida" in response.content.decode()
    response = admin_client.post(
        reverse("clinics:extra-add"),
        {"extra-doctor": stranger.pk, "extra-date": monday, "extra-start_time": "14:00",
         "extra-end_time": "15:00", "extra-slot_minutes": "20"},
    )  # fmt: skip
    assert response.status_code == 422
    assert not BlockedPeriod.objects.exists()
    assert (
        admin_client.get(reverse("clinics:doctor-schedule", args=[stranger.pk])).status_code == 404
    )


def test_extra_hours_in_the_past_are_refused(admin_client, clinic, agenda):
    yesterday = timezone.localdate(timezone.now(), clinic.tz) - dt.timedelta(days=1)
    response = admin_client.post(
        reverse("clinics:extra-add"),
        {"extra-doctor": agenda.pk, "extra-date": yesterday, "extra-start_time": "14:00",
         "extra-end_time": "15:00", "extra-slot_minutes": "20"},
    )  # fmt: skip
    assert response.status_code == 422
    assert "La fecha ya pasó." in response.content.decode()


def test_the_specialty_tester_shows_what_the_bot_would_do(admin_client, clinic, specialty):
    url = reverse("triage-try", args=[specialty.pk])
    response = admin_client.post(
        url, {"phrase": "tengo fiebre y malestar", "triage_keywords": specialty.triage_keywords}
    )
    html = response.content.decode()
    assert response.status_code == 200 and "Medicina General" in html and "Confianza" in html
    flag = admin_client.post(url, {"phrase": "me duele mucho el pecho y no puedo respirar"})
    assert "Señal de alarma" in flag.content.decode()
    empty = admin_client.post(url, {"phrase": ""})
    assert empty.status_code == 422


def test_the_specialty_tester_is_admin_only(desk_client, other_client, specialty):
    url = reverse("triage-try", args=[specialty.pk])
    assert desk_client.post(url, {"phrase": "fiebre"}).status_code == 404


def test_clinic_settings_are_saved_and_bad_values_refused(admin_client, clinic):
    url = reverse("clinics:settings")
    page = admin_client.get(url).content.decode()
    assert "America/Santiago" in page
    data = {
        "name": "Clínica Sophia Demo", "address": "Calle 1", "opening_hours": "L-V",
        "what_to_bring": "", "emergency_line": "123", "time_zone": "America/Santiago",
        "country": "CL", "whatsapp_number": "+56 9 1234 5678", "self_registration": "on",
        "hold_minutes": "7", "min_notice_minutes": "30", "booking_horizon_days": "56",
    }  # fmt: skip
    assert admin_client.post(url, data).status_code == 302
    clinic.refresh_from_db()
    assert (clinic.time_zone, clinic.country, clinic.hold_minutes) == ("America/Santiago", "CL", 7)
    bad = admin_client.post(url, {**data, "hold_minutes": "0", "time_zone": "Mars/Base"})
    assert bad.status_code == 422
    clinic.refresh_from_db()
    assert clinic.hold_minutes == 7


@pytest.mark.parametrize(
    ("url_name", "data", "message"),
    [
        (
            "clinics:doctors",
            {"full_name": "Dr. Sin Especialidad"},
            "Elija al menos una especialidad.",
        ),
        (
            "clinics:doctors",
            {"full_name": "X", "specialties": []},
            "Asegúrese de que este valor tenga al menos 2 carácter",
        ),
        (
            "clinics:specialties",
            {"name": "medicina general"},
            "Ya existe una especialidad con ese nombre.",
        ),
        (
            "clinics:generate-now",
            {"generate-date_from": "2030-01-10", "generate-date_to": "2030-01-01"},
            "La fecha final es anterior a la inicial.",
        ),
        (
            "clinics:holidays-load",
            {"year-year": "1800"},
            "Asegúrese de que este valor es mayor o igual a 2000.",
        ),
        (
            "clinics:extra-add",
            {
                "extra-date": "2030-01-10",
                "extra-start_time": "10:00",
                "extra-end_time": "10:10",
                "extra-slot_minutes": "30",
            },
            "Este campo es requerido.",
        ),
    ],
)
def test_every_admin_form_refuses_bad_input_in_spanish(
    admin_client, clinic, specialty, url_name, data, message
):
    before = row_counts()
    doctors = Doctor.objects.count()
    response = admin_client.post(reverse(url_name), data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert row_counts() == before and Doctor.objects.count() == doctors


def test_week_view_keeps_local_hours_across_santiagos_dst_change(desk_client, clinic, specialty):
    clinic.time_zone = "America/Santiago"
    clinic.country = "CL"
    clinic.save(update_fields=["time_zone", "country"])
    doctor = Doctor.objects.create(clinic=clinic, full_name="Dra. Valdés")
    Schedule.objects.create(
        doctor=doctor, weekdays=[0, 1, 2, 3, 4, 5, 6], start_time=dt.time(9),
        end_time=dt.time(10), slot_minutes=60, valid_from=dt.date(2000, 1, 1),
    )  # fmt: skip
    # Chile leaves summer time on the first Sunday of April: that week shows 09:00 every day.
    year = timezone.localdate().year + 1
    first_sunday = next(
        dt.date(year, 4, d) for d in range(1, 8) if dt.date(year, 4, d).weekday() == 6
    )
    services.slots_generate(
        clinic=clinic,
        date_from=first_sunday - dt.timedelta(days=6),
        date_to=first_sunday + dt.timedelta(days=1),
    )
    response = desk_client.get(
        reverse("clinics:agenda-week", args=[doctor.pk]), {"fecha": first_sunday.isoformat()}
    )
    html = response.content.decode()
    assert html.count('<span class="cell-time">09:00</span>') == 7
    offsets = {
        s.start_at.astimezone(clinic.tz).utcoffset() for s in Slot.objects.filter(doctor=doctor)
    }
    assert len(offsets) == 2  # both sides of the change
