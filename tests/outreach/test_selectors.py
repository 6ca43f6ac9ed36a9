"""Attendance figures per clinic, and the waitlist as staff read it."""

import datetime as dt

import pytest

from clinics import services
from clinics.models import AppointmentStatus
from outreach import selectors, waitlist
from outreach.models import ReminderDispatch
from tests.outreach.conftest import WEDNESDAY, book, local, make_patient


def set_status(clinic, appointment, status):
    services.appointment_set_status(
        clinic=clinic,
        appointment_id=appointment.pk,
        status=status,
        actor=services.Actor.system("t"),
    )


@pytest.mark.django_db
def test_it_counts_confirmed_attended_and_no_show_rates_per_clinic(
    clock, clinic, other_clinic, wednesday_slots
):
    a, b, c, _d, e = [
        book(clinic, make_patient(clinic, n), wednesday_slots[n]) for n in range(5)
    ]  # _d: no outcome recorded yet
    set_status(clinic, a, AppointmentStatus.CONFIRMED)  # confirmed, then came
    set_status(clinic, b, AppointmentStatus.CONFIRMED)  # confirmed, then did not come
    services.appointment_cancel(
        clinic=clinic, appointment_id=e.pk, actor=services.Actor.system("t")
    )
    ReminderDispatch.objects.create(
        clinic=clinic, appointment=a, due_at=a.start_at, status="queued", response="confirmed"
    )
    clock.move_to(local(WEDNESDAY, 13, 0))
    set_status(clinic, a, AppointmentStatus.ATTENDED)
    set_status(clinic, b, AppointmentStatus.NO_SHOW)
    set_status(clinic, c, AppointmentStatus.ATTENDED)

    figures = selectors.attendance_figures(clinic=clinic, date_from=WEDNESDAY, date_to=WEDNESDAY)
    assert (figures.appointments, figures.cancelled, figures.confirmed) == (4, 1, 2)
    assert (figures.attended, figures.no_show) == (2, 1)
    assert figures.confirmed_rate == 0.5
    assert figures.attended_rate == round(2 / 3, 4)
    assert figures.no_show_rate == round(1 / 3, 4)
    assert figures.cancelled_rate == 0.2
    assert (figures.reminders_sent, figures.confirmed_by_reminder) == (1, 1)
    assert figures.as_dict()["no_show_rate"] == figures.no_show_rate

    elsewhere = selectors.attendance_figures(
        clinic=other_clinic, date_from=WEDNESDAY, date_to=WEDNESDAY
    )
    assert elsewhere.appointments == 0 and elsewhere.no_show_rate is None
    next_day = WEDNESDAY + dt.timedelta(days=1)
    assert (
        selectors.attendance_figures(
            clinic=clinic, date_from=next_day, date_to=next_day
        ).appointments
        == 0
    )


@pytest.mark.django_db
def test_it_lists_the_waitlist_per_specialty_longest_waiting_first(
    clock, clinic, other_clinic, specialty
):
    first, second = make_patient(clinic, 1), make_patient(clinic, 2)
    waitlist.waitlist_join(clinic=clinic, patient=second, specialty=specialty)
    clock.shift(dt.timedelta(minutes=-5))
    waitlist.waitlist_join(clinic=clinic, patient=first, specialty=specialty)
    entries = list(selectors.waitlist_entries(clinic=clinic, specialty=specialty))
    assert [e.patient for e in entries] == [first, second]
    assert selectors.waitlist_counts(clinic=clinic) == {specialty.pk: 2}
    assert list(selectors.waitlist_entries(clinic=other_clinic)) == []
