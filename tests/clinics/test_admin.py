"""The Django admin is scoped: staff see and change only their clinics' rows.

Every view test runs as this clinic's staff AND another clinic's staff, and checks both directions.
"""

import datetime as dt

import pytest
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from bot.models import Conversation, Message, PeriodicJob, WebhookEvent
from clinics import services
from clinics.models import (
    Appointment,
    AuditEvent,
    BlockedPeriod,
    Clinic,
    Doctor,
    FaqEntry,
    Patient,
    Schedule,
    Slot,
    SlotHold,
    Specialty,
    StaffMembership,
)
from tests.conftest import PASSWORD, make_slots, make_user

ALL_MODELS = [
    "clinics.clinic",
    "clinics.specialty",
    "clinics.doctor",
    "clinics.schedule",
    "clinics.blockedperiod",
    "clinics.slot",
    "clinics.slothold",
    "clinics.patient",
    "clinics.appointment",
    "clinics.auditevent",
    "clinics.staffmembership",
    "clinics.faqentry",
    "bot.conversation",
    "bot.message",
    "bot.webhookevent",
]
ADMIN_ONLY_MODELS = {"clinics.staffmembership", "bot.webhookevent"}
RECEPTIONIST_MODELS = [m for m in ALL_MODELS if m not in ADMIN_ONLY_MODELS]

# (user fixture, which clinic's rows are theirs)
STAFF = [("receptionist", "mine"), ("clinic_admin", "mine"), ("other_staff", "theirs")]


def url(model: str, view: str, *args) -> str:
    app, name = model.split(".")
    return reverse(f"admin:{app}_{name}_{view}", args=args)


def populate(clinic: Clinic, tag: str, document: str, wa_id: str) -> dict:
    """One row of every model for `clinic`."""
    specialty = Specialty.objects.create(clinic=clinic, slug=f"esp-{tag}", name=f"Esp {tag}")
    doctor = Doctor.objects.create(clinic=clinic, full_name=f"Dr. {tag}")
    doctor.specialties.add(specialty)
    schedule = Schedule.objects.create(
        doctor=doctor,
        weekdays=[0, 1],
        start_time=dt.time(8),
        end_time=dt.time(9),
        valid_from=timezone.localdate(),
    )
    start = (timezone.now() + dt.timedelta(days=2)).replace(
        hour=13, minute=0, second=0, microsecond=0
    )
    booked, held, free = make_slots(doctor, start, 3)
    blocked = BlockedPeriod.objects.create(
        clinic=clinic,
        starts_at=start + dt.timedelta(days=5),
        ends_at=start + dt.timedelta(days=6),
        reason=f"Festivo {tag}",
    )
    patient = Patient.objects.create(
        clinic=clinic,
        document=document,
        full_name=f"Paciente {tag}",
        birth_date=dt.date(1990, 1, 2),
        whatsapp_id=wa_id,
    )
    Slot.objects.filter(pk=booked.pk).update(status="booked")
    appointment = Appointment.objects.create(
        clinic=clinic,
        patient=patient,
        slot=booked,
        doctor=doctor,
        specialty=specialty,
        start_at=booked.start_at,
        end_at=booked.end_at,
        source="staff",
    )
    hold = SlotHold.objects.create(
        slot=held, holder=f"conversation:{tag}", expires_at=timezone.now() + dt.timedelta(minutes=5)
    )
    audit = AuditEvent.objects.create(
        clinic=clinic,
        actor_type="system",
        action="appointment.book",
        object_type="appointment",
        object_id=str(appointment.pk),
    )
    conversation = Conversation.objects.create(clinic=clinic, wa_id=wa_id, patient=patient)
    message = Message.objects.create(
        clinic=clinic, conversation=conversation, direction="in", text="hola", status="received"
    )
    webhook = WebhookEvent.objects.create(body="{}", clinic=clinic, signature_valid=True)
    faq = FaqEntry.objects.create(
        clinic=clinic, question=f"¿Parqueadero {tag}?", keywords="parqueadero", answer="Sí."
    )
    return {
        "clinics.clinic": clinic,
        "clinics.specialty": specialty,
        "clinics.doctor": doctor,
        "clinics.schedule": schedule,
        "clinics.blockedperiod": blocked,
        "clinics.slot": free,
        "clinics.slothold": hold,
        "clinics.patient": patient,
        "clinics.appointment": appointment,
        "clinics.auditevent": audit,
        "clinics.staffmembership": StaffMembership.objects.filter(clinic=clinic).first(),
        "bot.conversation": conversation,
        "bot.message": message,
        "bot.webhookevent": webhook,
        "clinics.faqentry": faq,
    }


@pytest.fixture
def staff(receptionist, clinic_admin, other_staff, outsider):
    """All fixture users may enter the admin site; memberships decide the rest."""
    get_user_model().objects.filter(
        pk__in=[u.pk for u in (receptionist, clinic_admin, other_staff, outsider)]
    ).update(is_staff=True)


@pytest.fixture
def world(staff, clinic, other_clinic) -> dict[str, dict]:
    return {
        "mine": populate(clinic, "demo", "1020304050", "573001234567"),
        "theirs": populate(other_clinic, "norte", "5566778899", "573009876543"),
    }


def login(client, username: str):
    assert client.login(username=username, password=PASSWORD)
    return client


def other(side: str) -> str:
    return "theirs" if side == "mine" else "mine"


def visible_models(user_fixture: str) -> list[str]:
    return ALL_MODELS if user_fixture == "clinic_admin" else RECEPTIONIST_MODELS


@pytest.mark.parametrize(("user_fixture", "side"), STAFF)
def test_it_lists_only_the_users_clinic_rows(client, world, request, user_fixture, side):
    user = request.getfixturevalue(user_fixture)
    login(client, user.username)
    for model in visible_models(user_fixture):
        response = client.get(url(model, "changelist"))
        assert response.status_code == 200, model
        shown = {obj.pk for obj in response.context["cl"].result_list}
        assert world[side][model].pk in shown, model
        foreign = type(world[side][model]).objects.filter(pk=world[other(side)][model].pk)
        assert foreign.exists()
        assert world[other(side)][model].pk not in shown, model


@pytest.mark.parametrize(("user_fixture", "side"), STAFF)
def test_it_hides_another_clinics_objects_on_every_object_view(
    client, world, request, user_fixture, side
):
    user = request.getfixturevalue(user_fixture)
    login(client, user.username)
    for model in visible_models(user_fixture):
        own, foreign = world[side][model], world[other(side)][model]
        assert client.get(url(model, "change", own.pk)).status_code == 200, model
        for view in ("change", "history", "delete"):
            response = client.get(url(model, view, foreign.pk))
            assert response.status_code in (302, 403, 404), (model, view)
            if response.status_code == 302:
                assert response.url == reverse("admin:index"), (model, view)


@pytest.mark.parametrize(("user_fixture", "side"), [STAFF[0], STAFF[2]])
def test_it_keeps_admin_only_models_from_receptionists(client, world, request, user_fixture, side):
    user = request.getfixturevalue(user_fixture)
    login(client, user.username)
    for model in [*sorted(ADMIN_ONLY_MODELS), "bot.periodicjob"]:
        assert client.get(url(model, "changelist")).status_code == 403, model
    membership = world[side]["clinics.staffmembership"]
    assert client.get(url("clinics.staffmembership", "change", membership.pk)).status_code in (
        302,
        403,
    )


def test_it_refuses_the_outsider_everything(client, world, outsider):
    login(client, outsider.username)
    index = client.get(reverse("admin:index"))
    assert index.status_code == 200
    assert index.context["app_list"] == []
    assert client.get(url("bot.periodicjob", "changelist")).status_code == 403
    for model in ALL_MODELS:
        assert client.get(url(model, "changelist")).status_code == 403, model
        assert client.get(url(model, "change", world["mine"][model].pk)).status_code in (302, 403)


def test_it_sends_a_non_staff_user_to_the_login_page(client, world, other_staff):
    get_user_model().objects.filter(pk=other_staff.pk).update(is_staff=False)
    login(client, other_staff.username)
    response = client.get(url("clinics.patient", "changelist"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_it_shows_a_superuser_every_clinic(client, world, other_staff):
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    login(client, "root")
    for model in ALL_MODELS:
        response = client.get(url(model, "changelist"))
        shown = {obj.pk for obj in response.context["cl"].result_list}
        assert {world["mine"][model].pk, world["theirs"][model].pk} <= shown, model
    assert client.get(url("bot.periodicjob", "changelist")).status_code == 200


def test_it_limits_form_choices_to_the_users_clinics(client, world, clinic, other_staff):
    login(client, "admin")
    mine = world["mine"]
    form = client.get(url("clinics.doctor", "add")).context["adminform"].form
    assert list(form.fields["clinic"].queryset) == [clinic]
    assert list(form.fields["specialties"].queryset) == [mine["clinics.specialty"]]
    form = client.get(url("clinics.blockedperiod", "add")).context["adminform"].form
    assert list(form.fields["doctor"].queryset) == [mine["clinics.doctor"]]
    form = client.get(url("clinics.schedule", "add")).context["adminform"].form
    assert list(form.fields["doctor"].queryset) == [mine["clinics.doctor"]]
    # The other clinic's receptionist gets only theirs.
    client.logout()
    login(client, other_staff.username)
    form = client.get(url("clinics.patient", "add")).context["adminform"].form
    assert list(form.fields["clinic"].queryset) == [world["theirs"]["clinics.clinic"]]


def test_it_refuses_moving_rows_to_another_clinic(client, world, clinic, other_clinic):
    # Admin here, receptionist there: may edit only here, and never move a row across.
    user = make_user("doble", clinic, "admin")
    StaffMembership.objects.create(user=user, clinic=other_clinic, role="receptionist")
    get_user_model().objects.filter(pk=user.pk).update(is_staff=True)
    login(client, "doble")
    doctor = world["mine"]["clinics.doctor"]
    response = client.post(
        url("clinics.doctor", "change", doctor.pk),
        {
            "clinic": other_clinic.pk,
            "full_name": "Dr. Movido",
            "specialties": [world["mine"]["clinics.specialty"].pk],
            "active": "on",
            "schedules-TOTAL_FORMS": "0",
            "schedules-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    doctor.refresh_from_db()
    assert doctor.full_name == "Dr. Movido"
    assert doctor.clinic_id == clinic.pk
    response = client.post(
        url("clinics.blockedperiod", "add"),
        {
            "clinic": other_clinic.pk,
            "starts_at_0": "2030-01-01",
            "starts_at_1": "08:00",
            "ends_at_0": "2030-01-02",
            "ends_at_1": "08:00",
            "reason": "Festivo",
        },
    )
    assert response.status_code == 200
    assert "clinic" in response.context["adminform"].form.errors
    assert not BlockedPeriod.objects.filter(reason="Festivo").exists()


def test_it_refuses_linking_another_clinics_rows_even_for_a_superuser(client, world, clinic):
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    login(client, "root")
    response = client.post(
        url("clinics.doctor", "add"),
        {
            "clinic": clinic.pk,
            "full_name": "Dr. Cruzado",
            "specialties": [world["theirs"]["clinics.specialty"].pk],
            "active": "on",
            "schedules-TOTAL_FORMS": "0",
            "schedules-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "specialties" in response.context["adminform"].form.errors
    assert not Doctor.objects.filter(full_name="Dr. Cruzado").exists()


@pytest.mark.parametrize("user_fixture", ["receptionist", "other_staff"])
def test_it_lets_receptionists_read_but_not_edit_clinic_configuration(
    client, world, request, user_fixture
):
    user = request.getfixturevalue(user_fixture)
    side = "theirs" if user_fixture == "other_staff" else "mine"
    login(client, user.username)
    doctor = world[side]["clinics.doctor"]
    response = client.get(url("clinics.doctor", "change", doctor.pk))
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    response = client.post(url("clinics.doctor", "change", doctor.pk), {"full_name": "X"})
    assert response.status_code == 403
    assert client.get(url("clinics.doctor", "add")).status_code == 403
    assert client.get(url("clinics.schedule", "add")).status_code == 403
    # …but they register patients of their own clinic.
    assert client.get(url("clinics.patient", "add")).status_code == 200


def test_it_lets_a_clinic_admin_edit_a_doctor_with_weekly_hours(client, world, clinic):
    login(client, "admin")
    doctor = world["mine"]["clinics.doctor"]
    schedule = world["mine"]["clinics.schedule"]
    response = client.post(
        url("clinics.doctor", "change", doctor.pk),
        {
            "full_name": doctor.full_name,
            "specialties": [world["mine"]["clinics.specialty"].pk],
            "active": "on",
            "schedules-TOTAL_FORMS": "1",
            "schedules-INITIAL_FORMS": "1",
            "schedules-0-id": schedule.pk,
            "schedules-0-doctor": doctor.pk,
            "schedules-0-weekdays": ["0", "2", "4"],
            "schedules-0-start_time": "07:00",
            "schedules-0-end_time": "11:00",
            "schedules-0-slot_minutes": "30",
            "schedules-0-valid_from": "2026-01-01",
        },
    )
    assert response.status_code == 302, response.context and response.context["errors"]
    schedule.refresh_from_db()
    assert schedule.weekdays == [0, 2, 4]
    assert schedule.slot_minutes == 30


@pytest.mark.parametrize(("user_fixture", "side"), [STAFF[1], STAFF[2]])
def test_it_keeps_appointment_booking_fields_read_only(client, world, request, user_fixture, side):
    user = request.getfixturevalue(user_fixture)
    login(client, user.username)
    appointment = world[side]["clinics.appointment"]
    other_slot = world[side]["clinics.slot"]
    client.post(
        url("clinics.appointment", "change", appointment.pk),
        {"slot": other_slot.pk, "status": "cancelled", "patient_notes": "cambiado"},
    )
    appointment.refresh_from_db()
    assert appointment.slot_id != other_slot.pk
    assert appointment.status == "booked"
    assert appointment.patient_notes == ""
    assert client.get(url("clinics.appointment", "add")).status_code == 403
    response = client.post(url("clinics.appointment", "delete", appointment.pk), {"post": "yes"})
    assert response.status_code == 403
    assert Appointment.objects.filter(pk=appointment.pk).exists()


@pytest.mark.parametrize(("user_fixture", "side"), [STAFF[0], STAFF[2]])
def test_it_changes_appointments_only_through_services(
    client, world, request, monkeypatch, user_fixture, side
):
    calls = []

    def set_status(*, clinic, appointment_id, status, actor):
        calls.append(("status", clinic.pk, appointment_id, status, actor.type, actor.label))

    def cancel(*, clinic, appointment_id, actor, reason="", patient=None):
        calls.append(("cancel", clinic.pk, appointment_id, reason != "", actor.type, actor.label))
        raise services.NotCancellable("already attended")

    monkeypatch.setattr(services, "appointment_set_status", set_status)
    monkeypatch.setattr(services, "appointment_cancel", cancel)
    user = request.getfixturevalue(user_fixture)
    login(client, user.username)
    own, foreign = world[side]["clinics.appointment"], world[other(side)]["clinics.appointment"]
    clinic_id = world[side]["clinics.clinic"].pk
    for action in ("confirm", "mark_attended", "mark_no_show", "cancel"):
        response = client.post(
            url("clinics.appointment", "changelist"),
            {"action": action, helpers.ACTION_CHECKBOX_NAME: [own.pk, foreign.pk]},
        )
        assert response.status_code == 302
    assert calls == [
        ("status", clinic_id, own.pk, "confirmed", "staff", user.username),
        ("status", clinic_id, own.pk, "attended", "staff", user.username),
        ("status", clinic_id, own.pk, "no_show", "staff", user.username),
        ("cancel", clinic_id, own.pk, True, "staff", user.username),
    ]


def test_it_masks_patient_documents_and_phones_in_lists(client, world, other_staff):
    for username, side in (("recepcion", "mine"), (other_staff.username, "theirs")):
        client.logout()
        login(client, username)
        patient = world[side]["clinics.patient"]
        html = client.get(url("clinics.patient", "changelist")).content.decode()
        assert patient.full_name in html
        assert patient.document not in html
        assert patient.masked_document in html
        assert patient.whatsapp_id not in html
        html = client.get(url("bot.conversation", "changelist")).content.decode()
        assert patient.whatsapp_id not in html


def test_it_finds_a_patient_by_exact_document_only(client, world):
    login(client, "recepcion")
    changelist = url("clinics.patient", "changelist")
    found = client.get(changelist, {"q": "1020304050"}).context["cl"].result_list
    assert [p.pk for p in found] == [world["mine"]["clinics.patient"].pk]
    assert list(client.get(changelist, {"q": "10203"}).context["cl"].result_list) == []
    assert list(client.get(changelist, {"q": "5566778899"}).context["cl"].result_list) == []


@pytest.mark.parametrize("model", ["clinics.clinic", "clinics.doctor"])
def test_it_generates_slots_from_the_admin_action(
    client, world, monkeypatch, settings, clinic, other_clinic, model
):
    settings.SOPHIA_SLOT_DAYS_AHEAD = 21
    calls = []

    def generate(*, clinic, date_from, date_to, doctor=None, actor=None):
        assert actor.label == "admin"
        calls.append((clinic.pk, doctor.pk if doctor else None, (date_to - date_from).days))
        return 7

    monkeypatch.setattr(services, "slots_generate", generate)
    own, foreign = world["mine"][model], world["theirs"][model]
    data = {"action": "generate_slots_action", helpers.ACTION_CHECKBOX_NAME: [own.pk, foreign.pk]}
    # Receptionists don't get the action at all.
    login(client, "recepcion")
    client.post(url(model, "changelist"), data)
    assert calls == []
    client.logout()
    login(client, "admin")
    response = client.post(url(model, "changelist"), data, follow=True)
    doctor_id = own.pk if model == "clinics.doctor" else None
    assert calls == [(clinic.pk, doctor_id, 21)]
    assert "7" in str(next(iter(response.context["messages"])))


def test_it_blocks_free_slots_inside_a_new_blocked_period(client, world, clinic):
    login(client, "admin")
    free = world["mine"]["clinics.slot"]
    theirs = world["theirs"]["clinics.slot"]
    local = timezone.localtime(free.start_at)
    response = client.post(
        url("clinics.blockedperiod", "add"),
        {
            "clinic": clinic.pk,
            "starts_at_0": local.strftime("%Y-%m-%d"),
            "starts_at_1": "00:00",
            "ends_at_0": (local + dt.timedelta(days=1)).strftime("%Y-%m-%d"),
            "ends_at_1": "00:00",
            "reason": "Jornada de vacunación",
        },
    )
    assert response.status_code == 302
    free.refresh_from_db()
    theirs.refresh_from_db()
    assert free.status == "blocked"
    assert theirs.status == "free"
    # The booked slot keeps its appointment.
    assert Slot.objects.get(pk=world["mine"]["clinics.appointment"].slot_id).status == "booked"


def test_it_blocks_and_unblocks_only_own_free_slots(client, world, other_staff):
    login(client, "admin")
    mine, theirs = world["mine"]["clinics.slot"], world["theirs"]["clinics.slot"]
    booked = world["mine"]["clinics.appointment"].slot
    changelist = url("clinics.slot", "changelist")
    selected = [mine.pk, theirs.pk, booked.pk]
    client.post(changelist, {"action": "block_slots", helpers.ACTION_CHECKBOX_NAME: selected})
    statuses = dict(Slot.objects.filter(pk__in=selected).values_list("pk", "status"))
    assert statuses == {mine.pk: "blocked", theirs.pk: "free", booked.pk: "booked"}
    client.post(changelist, {"action": "unblock_slots", helpers.ACTION_CHECKBOX_NAME: selected})
    assert Slot.objects.get(pk=mine.pk).status == "free"
    # A receptionist has no such action.
    client.logout()
    login(client, other_staff.username)
    client.post(changelist, {"action": "block_slots", helpers.ACTION_CHECKBOX_NAME: [theirs.pk]})
    assert Slot.objects.get(pk=theirs.pk).status == "free"


def test_it_keeps_audit_events_and_periodic_jobs_out_of_reach(client, world):
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    job = PeriodicJob.objects.create(name="close-idle")
    login(client, "root")
    audit = world["mine"]["clinics.auditevent"]
    response = client.get(url("clinics.auditevent", "change", audit.pk))
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert client.get(url("clinics.auditevent", "add")).status_code == 403
    assert (
        client.post(url("clinics.auditevent", "delete", audit.pk), {"post": "yes"}).status_code
        == 403
    )
    assert client.get(url("bot.periodicjob", "change", job.pk)).status_code == 200
    client.logout()
    login(client, "admin")
    assert client.get(url("bot.periodicjob", "change", job.pk)).status_code == 403


@pytest.mark.parametrize(("user_fixture", "side"), [STAFF[0], STAFF[2]])
def test_it_confirms_and_cancels_with_the_real_services(client, world, request, user_fixture, side):
    user = request.getfixturevalue(user_fixture)
    login(client, user.username)
    own, foreign = world[side]["clinics.appointment"], world[other(side)]["clinics.appointment"]
    changelist = url("clinics.appointment", "changelist")
    selected = {helpers.ACTION_CHECKBOX_NAME: [own.pk, foreign.pk]}
    client.post(changelist, {"action": "confirm", **selected})
    own.refresh_from_db()
    foreign.refresh_from_db()
    assert (own.status, foreign.status) == ("confirmed", "booked")
    client.post(changelist, {"action": "cancel", **selected})
    own.refresh_from_db()
    foreign.refresh_from_db()
    assert (own.status, foreign.status) == ("cancelled", "booked")
    assert own.cancel_reason
    assert Slot.objects.get(pk=own.slot_id).status == "free"
    assert Slot.objects.get(pk=foreign.slot_id).status == "booked"
    audit = AuditEvent.objects.filter(object_type="appointment", object_id=str(own.pk))
    assert set(audit.values_list("actor_type", "actor_label")) >= {("staff", user.username)}
    # Cancelling twice is refused politely, not a 500.
    response = client.post(changelist, {"action": "cancel", **selected}, follow=True)
    assert response.status_code == 200
    assert [m.level_tag for m in response.context["messages"]][-1] == "warning"


def test_it_lets_only_the_clinic_admin_edit_the_faq_answers(client, world, clinic):
    """Receptionists read what patients are told; the clinic's admin keeps it true."""
    entry = world["mine"]["clinics.faqentry"]
    login(client, "recepcion")
    assert client.get(url("clinics.faqentry", "change", entry.pk)).status_code == 200
    response = client.post(
        url("clinics.faqentry", "change", entry.pk),
        {"clinic": clinic.pk, "question": "x", "keywords": "", "answer": "No", "position": 0},
    )
    assert response.status_code == 403
    login(client, "admin")
    response = client.post(
        url("clinics.faqentry", "add"),
        {
            "clinic": clinic.pk,
            "question": "¿Atienden por telemedicina?",
            "keywords": "virtual, telemedicina, videollamada",
            "answer": "Sí, medicina general por videollamada.",
            "active": "on",
            "position": 3,
        },
    )
    assert response.status_code == 302
    added = FaqEntry.objects.get(question="¿Atienden por telemedicina?")
    assert added.clinic == clinic and added.keyword_list() == [
        "virtual",
        "telemedicina",
        "videollamada",
    ]
    other = world["theirs"]["clinics.faqentry"]
    assert client.get(url("clinics.faqentry", "change", other.pk)).status_code in (302, 404)
