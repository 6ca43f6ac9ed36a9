"""Agenda changes by clinic admins: schedules, extra hours, absences, holidays, blocks.

Each change previews what it strands, refuses to strand silently, and either keeps the bookings
or cancels them with a WhatsApp message queued in the same transaction.
"""

import datetime as dt

import pytest
from django.utils import timezone

from bot import periodic, whatsapp
from bot.models import Conversation, Message
from clinics import selectors, services
from clinics.models import (
    Appointment,
    AuditEvent,
    BlockedPeriod,
    Doctor,
    ExtraHours,
    Schedule,
    Slot,
    SlotStatus,
)
from clinics.services import Actor, InvalidInput, StrandedDecisionNeeded
from tests.clinics.conftest import row_counts
from tests.conftest import make_clinic
from tests.fakes.graph_server import fake_graph  # noqa: F401

WEEKDAYS = [0, 1, 2, 3, 4]


@pytest.fixture
def admin_actor(clinic_admin) -> Actor:
    return Actor.staff(clinic_admin)


@pytest.fixture(autouse=True)
def _eight_week_horizon(clinic):
    clinic.booking_horizon_days = 56
    clinic.save(update_fields=["booking_horizon_days"])


def times(*pairs: tuple[int, int]) -> list[dt.time]:
    return [dt.time(h, m) for h, m in pairs]


def local(clinic, day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=clinic.tz)


def next_weekday(clinic, weekday: int, weeks_ahead: int = 1) -> dt.date:
    today = timezone.localdate(timezone.now(), clinic.tz)
    return today + dt.timedelta(days=(weekday - today.weekday()) % 7 + 7 * weeks_ahead)


def block(**values) -> dict:
    today = timezone.localdate()
    return {
        "weekdays": values.pop("weekdays", WEEKDAYS),
        "start_time": values.pop("start_time", dt.time(8)),
        "end_time": values.pop("end_time", dt.time(12)),
        "slot_minutes": values.pop("slot_minutes", 30),
        "valid_from": values.pop("valid_from", today - dt.timedelta(days=30)),
        "valid_to": values.pop("valid_to", None),
        "every_n_weeks": values.pop("every_n_weeks", 1),
    }


def starts_on(doctor, day: dt.date, status: str | None = None) -> list[dt.time]:
    tz = doctor.clinic.tz
    begin = dt.datetime.combine(day, dt.time.min, tzinfo=tz)
    rows = Slot.objects.filter(
        doctor=doctor, start_at__gte=begin, start_at__lt=begin + dt.timedelta(days=1)
    )
    if status:
        rows = rows.filter(status=status)
    return [s.start_at.astimezone(tz).time() for s in rows.order_by("start_at")]


@pytest.fixture
def agenda_doctor(clinic, specialty, admin_actor) -> Doctor:
    doctor = services.doctor_create(
        clinic=clinic, full_name="Dra. Luisa Rojas", specialty_ids=[specialty.pk], actor=admin_actor
    )
    services.schedule_replace(
        clinic=clinic, doctor_id=doctor.pk, blocks=[block()], actor=admin_actor
    )
    return doctor


def book(clinic, patient, doctor, day, hour, minute=0) -> Appointment:
    slot = Slot.objects.get(doctor=doctor, start_at=local(clinic, day, hour, minute))
    return services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slot.pk,
        actor=Actor.patient(patient),
        source="bot",
    )


def test_it_generates_several_blocks_a_day_and_every_other_week(clinic, admin_actor, specialty):
    doctor = services.doctor_create(
        clinic=clinic, full_name="Dr. Pablo Díaz", specialty_ids=[specialty.pk], actor=admin_actor
    )
    monday = next_weekday(clinic, 0)
    services.schedule_replace(
        clinic=clinic,
        doctor_id=doctor.pk,
        blocks=[
            block(weekdays=[0], start_time=dt.time(8), end_time=dt.time(9), valid_from=monday),
            block(weekdays=[0], start_time=dt.time(14), end_time=dt.time(15), valid_from=monday),
            block(
                weekdays=[2],
                start_time=dt.time(10),
                end_time=dt.time(11),
                slot_minutes=20,
                valid_from=monday,
                every_n_weeks=2,
            ),
        ],
        actor=admin_actor,
    )
    assert starts_on(doctor, monday) == [dt.time(8), dt.time(8, 30), dt.time(14), dt.time(14, 30)]
    wednesday = monday + dt.timedelta(days=2)
    assert starts_on(doctor, wednesday) == [dt.time(10), dt.time(10, 20), dt.time(10, 40)]
    assert starts_on(doctor, wednesday + dt.timedelta(days=7)) == []
    assert len(starts_on(doctor, wednesday + dt.timedelta(days=14))) == 3
    assert Schedule.objects.filter(doctor=doctor).count() == 3
    audit = AuditEvent.objects.get(action="schedule.replace", object_id=str(doctor.pk))
    assert audit.actor_type == "staff" and len(audit.after["blocks"]) == 3


def test_it_replaces_a_schedule_and_removes_free_slots_that_leave_it(
    clinic, agenda_doctor, admin_actor
):
    monday = next_weekday(clinic, 0)
    assert len(starts_on(agenda_doctor, monday)) == 8
    change = services.schedule_replace(
        clinic=clinic,
        doctor_id=agenda_doctor.pk,
        blocks=[block(start_time=dt.time(9), end_time=dt.time(11))],
        actor=admin_actor,
    )
    expected = times((9, 0), (9, 30), (10, 0), (10, 30))
    assert starts_on(agenda_doctor, monday) == expected
    assert change.removed > 0 and change.stranded == []


def test_it_refuses_to_strand_bookings_without_a_decision_and_writes_nothing(
    clinic, agenda_doctor, admin_actor, patient
):
    monday = next_weekday(clinic, 0)
    appointment = book(clinic, patient, agenda_doctor, monday, 8)
    before = row_counts()
    schedules_before = list(Schedule.objects.filter(doctor=agenda_doctor).values())
    with pytest.raises(StrandedDecisionNeeded) as raised:
        services.schedule_replace(
            clinic=clinic,
            doctor_id=agenda_doctor.pk,
            blocks=[block(start_time=dt.time(9), end_time=dt.time(12))],
            actor=admin_actor,
        )
    assert [a.pk for a in raised.value.appointments] == [appointment.pk]
    assert row_counts() == before
    assert list(Schedule.objects.filter(doctor=agenda_doctor).values()) == schedules_before


def test_it_keeps_stranded_bookings_when_told_to(clinic, agenda_doctor, admin_actor, patient):
    monday = next_weekday(clinic, 0)
    appointment = book(clinic, patient, agenda_doctor, monday, 8)
    change = services.schedule_replace(
        clinic=clinic,
        doctor_id=agenda_doctor.pk,
        blocks=[block(start_time=dt.time(9), end_time=dt.time(12))],
        actor=admin_actor,
        stranded_action="keep",
    )
    appointment.refresh_from_db()
    assert appointment.status == "booked" and change.cancelled == []
    assert starts_on(agenda_doctor, monday)[0] == dt.time(8)  # its slot stays
    assert Message.objects.count() == 0


def test_it_cancels_stranded_bookings_and_queues_a_template_outside_the_window(
    clinic, agenda_doctor, admin_actor, patient, clinic_admin, django_capture_on_commit_callbacks
):
    monday = next_weekday(clinic, 0)
    appointment = book(clinic, patient, agenda_doctor, monday, 8)
    with django_capture_on_commit_callbacks(execute=True):
        change = services.schedule_replace(
            clinic=clinic,
            doctor_id=agenda_doctor.pk,
            blocks=[block(slot_minutes=20)],
            actor=admin_actor,
            stranded_action="cancel_notify",
            user=clinic_admin,
        )
    appointment.refresh_from_db()
    assert appointment.status == "cancelled" and change.notified == 1
    # The new 20-minute agenda fills the morning: the cancelled booking leaves no hole.
    assert len(starts_on(agenda_doctor, monday, SlotStatus.FREE)) == 12
    (message,) = Message.objects.all()
    assert message.kind == "template" and message.status == "queued"
    assert message.payload["to"] == patient.whatsapp_id
    params = message.payload["template"]["components"][0]["parameters"]
    assert params[0]["text"] == "Ana"
    assert params[2]["text"] == "08:00"
    assert "Dra. Luisa Rojas" in message.text and "quiero una cita" in message.text
    cancel = AuditEvent.objects.get(action="appointment.cancel", object_id=str(appointment.pk))
    assert cancel.actor_label == clinic_admin.username


def test_it_sends_free_text_inside_the_24_hour_window(
    clinic, agenda_doctor, admin_actor, patient, clinic_admin, django_capture_on_commit_callbacks
):
    Conversation.objects.create(
        clinic=clinic,
        wa_id=patient.whatsapp_id,
        patient=patient,
        last_inbound_at=timezone.now() - dt.timedelta(hours=2),
    )
    monday = next_weekday(clinic, 0)
    book(clinic, patient, agenda_doctor, monday, 8)
    with django_capture_on_commit_callbacks(execute=True):
        services.blocked_period_add(
            clinic=clinic,
            kind="absence",
            doctor_id=agenda_doctor.pk,
            starts_at=local(clinic, monday, 0),
            ends_at=local(clinic, monday + dt.timedelta(days=1), 0),
            reason="Congreso",
            actor=admin_actor,
            stranded_action="cancel_notify",
            user=clinic_admin,
        )
    (message,) = Message.objects.all()
    assert message.kind == "text" and message.sent_by == clinic_admin
    assert message.payload["text"]["body"].startswith("Hola Ana.")


@pytest.mark.django_db(transaction=True)
def test_it_delivers_the_cancellation_to_the_graph_api(
    fake_graph,  # noqa: F811
    clinic,
    agenda_doctor,
    admin_actor,
    patient,
):
    monday = next_weekday(clinic, 0)
    book(clinic, patient, agenda_doctor, monday, 9)
    services.blocked_period_add(
        clinic=clinic,
        kind="absence",
        doctor_id=agenda_doctor.pk,
        starts_at=local(clinic, monday, 0),
        ends_at=local(clinic, monday + dt.timedelta(days=1), 0),
        actor=admin_actor,
        stranded_action="cancel_notify",
    )
    assert whatsapp.deliver_due() == 1
    (sent,) = fake_graph.messages_to(patient.whatsapp_id)
    assert sent.json["type"] == "template"
    assert sent.json["template"]["name"] == "cita_cancelada_reagendar"


def test_an_absence_blocks_its_slots_and_removing_it_frees_them(
    clinic, agenda_doctor, admin_actor, patient
):
    monday = next_weekday(clinic, 0)
    appointment = book(clinic, patient, agenda_doctor, monday, 8)
    starts, ends = local(clinic, monday, 0), local(clinic, monday + dt.timedelta(days=2), 0)
    impact = selectors.period_impact(
        clinic=clinic, doctor=agenda_doctor, starts_at=starts, ends_at=ends
    )
    assert [a.pk for a in impact.stranded] == [appointment.pk] and impact.free_slots == 15
    period, change = services.blocked_period_add(
        clinic=clinic,
        kind="absence",
        doctor_id=agenda_doctor.pk,
        starts_at=starts,
        ends_at=ends,
        actor=admin_actor,
        stranded_action="cancel_notify",
    )
    assert [a.pk for a in change.cancelled] == [appointment.pk]
    blocked = Slot.objects.filter(doctor=agenda_doctor, status=SlotStatus.BLOCKED)
    assert blocked.filter(start_at__gte=starts, start_at__lt=ends).count() == 16
    # The cancelled booking's slot stays blocked: the doctor is away.
    assert starts_on(agenda_doctor, monday, SlotStatus.FREE) == []
    assert len(starts_on(agenda_doctor, monday, SlotStatus.BLOCKED)) == 8

    change = services.blocked_period_remove(clinic=clinic, period_id=period.pk, actor=admin_actor)
    assert change.freed == 16
    assert len(starts_on(agenda_doctor, monday, SlotStatus.FREE)) == 8
    assert not BlockedPeriod.objects.filter(pk=period.pk).exists()


def test_removing_an_absence_generates_the_slots_it_kept_from_existing(
    clinic, specialty, admin_actor
):
    doctor = services.doctor_create(
        clinic=clinic, full_name="Dr. Nuevo", specialty_ids=[specialty.pk], actor=admin_actor
    )
    monday = next_weekday(clinic, 0)
    period, _ = services.blocked_period_add(
        clinic=clinic,
        kind="absence",
        doctor_id=doctor.pk,
        starts_at=local(clinic, monday, 0),
        ends_at=local(clinic, monday + dt.timedelta(days=1), 0),
        actor=admin_actor,
    )
    services.schedule_replace(
        clinic=clinic, doctor_id=doctor.pk, blocks=[block()], actor=admin_actor
    )
    assert starts_on(doctor, monday) == []
    services.blocked_period_remove(clinic=clinic, period_id=period.pk, actor=admin_actor)
    assert len(starts_on(doctor, monday, SlotStatus.FREE)) == 8


def test_extra_hours_add_slots_on_one_date_and_leave_when_removed(
    clinic, agenda_doctor, admin_actor
):
    saturday = next_weekday(clinic, 5)
    services.extra_hours_add(
        clinic=clinic,
        doctor_id=agenda_doctor.pk,
        date=saturday,
        start_time=dt.time(9),
        end_time=dt.time(10),
        slot_minutes=15,
        actor=admin_actor,
    )
    expected = times((9, 0), (9, 15), (9, 30), (9, 45))
    assert starts_on(agenda_doctor, saturday) == expected
    extra = ExtraHours.objects.get()
    services.extra_hours_remove(clinic=clinic, extra_id=extra.pk, actor=admin_actor)
    assert starts_on(agenda_doctor, saturday) == []


def test_extra_hours_refuse_overlaps_and_past_dates(clinic, agenda_doctor, admin_actor):
    monday = next_weekday(clinic, 0)
    with pytest.raises(InvalidInput) as raised:
        services.extra_hours_add(
            clinic=clinic,
            doctor_id=agenda_doctor.pk,
            date=monday,
            start_time=dt.time(11),
            end_time=dt.time(13),
            slot_minutes=30,
            actor=admin_actor,
        )
    assert raised.value.code == "overlaps_agenda"
    with pytest.raises(InvalidInput) as raised:
        services.extra_hours_add(
            clinic=clinic,
            doctor_id=agenda_doctor.pk,
            date=monday - dt.timedelta(days=14),
            start_time=dt.time(14),
            end_time=dt.time(15),
            slot_minutes=30,
            actor=admin_actor,
        )
    assert raised.value.code == "date_in_past"
    assert ExtraHours.objects.count() == 0


def test_a_hand_block_of_a_range_can_be_lifted_one_slot_at_a_time(
    clinic, agenda_doctor, admin_actor
):
    monday = next_weekday(clinic, 0)
    services.blocked_period_add(
        clinic=clinic,
        kind="block",
        doctor_id=agenda_doctor.pk,
        starts_at=local(clinic, monday, 8),
        ends_at=local(clinic, monday, 10),
        actor=admin_actor,
    )
    assert len(starts_on(agenda_doctor, monday, SlotStatus.BLOCKED)) == 4
    middle = Slot.objects.get(doctor=agenda_doctor, start_at=local(clinic, monday, 8, 30))
    services.slot_unblock(clinic=clinic, slot_id=middle.pk, actor=admin_actor)
    expected = times((8, 0), (9, 0), (9, 30))
    assert starts_on(agenda_doctor, monday, SlotStatus.BLOCKED) == expected
    pieces = BlockedPeriod.objects.filter(kind="block").order_by("starts_at")
    assert [(p.starts_at, p.ends_at) for p in pieces] == [
        (local(clinic, monday, 8), local(clinic, monday, 8, 30)),
        (local(clinic, monday, 9), local(clinic, monday, 10)),
    ]


def test_a_slot_inside_an_absence_is_not_unblocked_by_hand(clinic, agenda_doctor, admin_actor):
    monday = next_weekday(clinic, 0)
    services.blocked_period_add(
        clinic=clinic,
        kind="absence",
        doctor_id=agenda_doctor.pk,
        starts_at=local(clinic, monday, 0),
        ends_at=local(clinic, monday + dt.timedelta(days=1), 0),
        actor=admin_actor,
    )
    slot = Slot.objects.filter(doctor=agenda_doctor, status="blocked").first()
    with pytest.raises(InvalidInput) as raised:
        services.slot_unblock(clinic=clinic, slot_id=slot.pk, actor=admin_actor)
    assert raised.value.code == "slot_in_absence"


def test_it_loads_the_country_holidays_once_and_respects_removals(clinic, admin_actor):
    # Colombia, 8 December: la Inmaculada Concepción, whole local day in America/Bogota.
    year = timezone.localdate().year + 1
    added = services.holidays_load(clinic=clinic, year=year, actor=admin_actor)
    immaculate = next(p for p in added if p.starts_at == local(clinic, dt.date(year, 12, 8), 0))
    assert immaculate.ends_at == local(clinic, dt.date(year, 12, 9), 0)
    assert immaculate.kind == "holiday" and immaculate.doctor_id is None
    assert "Inmaculada" in immaculate.reason
    services.blocked_period_remove(clinic=clinic, period_id=immaculate.pk, actor=admin_actor)
    assert services.holidays_load(clinic=clinic, year=year, actor=admin_actor) == []
    assert not BlockedPeriod.objects.filter(starts_at=immaculate.starts_at).exists()


def test_holidays_are_whole_local_days_in_santiago_across_dst(db):
    santiago = make_clinic("stgo", "100000000000021", time_zone="America/Santiago", country="CL")
    year = timezone.localdate().year + 1
    added = services.holidays_load(clinic=santiago, year=year, actor=Actor.system("test"))
    tz = santiago.tz
    for period in added:
        start, end = period.starts_at.astimezone(tz), period.ends_at.astimezone(tz)
        assert start.time() == dt.time(0) and end.time() == dt.time(0)
        assert (end.date() - start.date()).days == 1
    # New Year is in summer time (UTC-3), Navy Day (21 May) in winter time (UTC-4).
    offsets = {
        p.starts_at.astimezone(tz).date(): p.starts_at.astimezone(tz).utcoffset() for p in added
    }
    assert offsets[dt.date(year, 5, 21)] == dt.timedelta(hours=-4)


def test_the_periodic_job_rolls_the_horizon_in_santiago_keeping_local_hours(db):
    santiago = make_clinic(
        "stgo", "100000000000021", time_zone="America/Santiago", country="CL",
        booking_horizon_days=240,
    )  # fmt: skip
    doctor = Doctor.objects.create(clinic=santiago, full_name="Dra. Soto")
    Schedule.objects.create(
        doctor=doctor,
        weekdays=[0, 1, 2, 3, 4, 5, 6],
        start_time=dt.time(8),
        end_time=dt.time(10),
        slot_minutes=60,
        valid_from=dt.date(2000, 1, 1),
    )
    first = periodic.keep_agendas_generated()
    assert first > 0
    assert periodic.keep_agendas_generated() == 0  # idempotent
    tz = santiago.tz
    offsets = set()
    for slot in Slot.objects.filter(doctor=doctor):
        start = slot.start_at.astimezone(tz)
        assert start.time() in (dt.time(8), dt.time(9))
        offsets.add(start.utcoffset())
    assert offsets == {dt.timedelta(hours=-3), dt.timedelta(hours=-4)}  # both sides of DST
    holidays = BlockedPeriod.objects.filter(clinic=santiago, kind="holiday")
    assert holidays.exists()
    for period in holidays:
        assert not Slot.objects.filter(
            doctor=doctor,
            start_at__gte=period.starts_at,
            start_at__lt=period.ends_at,
            status__in=["free", "held"],
        ).exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"end_time": dt.time(8)}, "La hora de fin debe ser posterior a la hora de inicio."),
        ({"slot_minutes": 0}, "La duración de cada cita debe estar entre 5 y 480 minutos."),
        (
            {"start_time": dt.time(8), "end_time": dt.time(8, 20)},
            "La duración de cada cita es mayor que el bloque.",
        ),
        ({"weekdays": []}, "Elija al menos un día de la semana."),
        (
            {"valid_to": dt.date(2001, 1, 1), "valid_from": dt.date(2000, 1, 1)},
            "La fecha final ya pasó.",
        ),
        ({"every_n_weeks": 9}, "Repita cada 1 a 8 semanas."),
    ],
)
def test_it_refuses_bad_blocks_and_writes_nothing(
    clinic, agenda_doctor, admin_actor, changes, message
):
    before = row_counts()
    with pytest.raises(InvalidInput) as raised:
        services.schedule_replace(
            clinic=clinic, doctor_id=agenda_doctor.pk, blocks=[block(**changes)], actor=admin_actor
        )
    assert raised.value.message == message
    assert row_counts() == before


def test_it_refuses_overlapping_blocks(clinic, agenda_doctor, admin_actor):
    with pytest.raises(InvalidInput) as raised:
        services.schedule_replace(
            clinic=clinic,
            doctor_id=agenda_doctor.pk,
            blocks=[block(), block(weekdays=[4, 5], start_time=dt.time(11), end_time=dt.time(13))],
            actor=admin_actor,
        )
    assert raised.value.message == "Este bloque se cruza con otro bloque el mismo día."


def test_another_clinics_doctor_is_unknown(clinic, other_clinic, admin_actor):
    stranger = Doctor.objects.create(clinic=other_clinic, full_name="Dra. Norte")
    for call in (
        lambda: services.schedule_replace(
            clinic=clinic, doctor_id=stranger.pk, blocks=[block()], actor=admin_actor
        ),
        lambda: services.blocked_period_add(
            clinic=clinic,
            kind="absence",
            doctor_id=stranger.pk,
            starts_at=timezone.now() + dt.timedelta(days=1),
            ends_at=timezone.now() + dt.timedelta(days=2),
            actor=admin_actor,
        ),
    ):
        with pytest.raises(InvalidInput) as raised:
            call()
        assert raised.value.code == "doctor_not_found"
    assert Schedule.objects.filter(doctor=stranger).count() == 0
    assert BlockedPeriod.objects.count() == 0


def test_periods_that_are_over_or_inverted_are_refused(clinic, agenda_doctor, admin_actor):
    now = timezone.now()
    cases = [
        (now - dt.timedelta(days=3), now - dt.timedelta(days=2), "date_in_past"),
        (now + dt.timedelta(days=3), now + dt.timedelta(days=2), "end_before_start"),
    ]
    for starts, ends, code in cases:
        with pytest.raises(InvalidInput) as raised:
            services.blocked_period_add(
                clinic=clinic,
                kind="absence",
                doctor_id=agenda_doctor.pk,
                starts_at=starts,
                ends_at=ends,
                actor=admin_actor,
            )
        assert raised.value.code == code
    assert BlockedPeriod.objects.count() == 0


def test_clinic_settings_are_validated_and_audited(clinic, admin_actor):
    services.clinic_update_settings(
        clinic=clinic,
        values={"time_zone": "America/Santiago", "country": "CL", "hold_minutes": 7},
        actor=admin_actor,
    )
    clinic.refresh_from_db()
    assert (clinic.time_zone, clinic.country, clinic.hold_minutes) == ("America/Santiago", "CL", 7)
    assert AuditEvent.objects.filter(action="clinic.settings").count() == 1
    with pytest.raises(InvalidInput):
        services.clinic_update_settings(
            clinic=clinic, values={"time_zone": "Mars/Olympus"}, actor=admin_actor
        )
    with pytest.raises(InvalidInput):
        services.clinic_update_settings(
            clinic=clinic, values={"phone_number_id": "1"}, actor=admin_actor
        )
    clinic.refresh_from_db()
    assert clinic.time_zone == "America/Santiago"


def test_a_deactivated_doctor_is_not_bookable_and_keeps_bookings(
    clinic, agenda_doctor, admin_actor, patient, specialty
):
    monday = next_weekday(clinic, 0)
    appointment = book(clinic, patient, agenda_doctor, monday, 8)
    services.doctor_update(
        clinic=clinic,
        doctor_id=agenda_doctor.pk,
        full_name="Dra. Luisa Rojas",
        specialty_ids=[specialty.pk],
        active=False,
        actor=admin_actor,
    )
    appointment.refresh_from_db()
    assert appointment.status == "booked"
    page = selectors.available_slots(clinic=clinic, doctor=agenda_doctor, page_size=5)
    assert page.slots == []
