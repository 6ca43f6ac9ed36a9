"""console.selectors: stats (and their chart) and the handoff card."""

import datetime as dt

import pytest
from django.utils import timezone

from bot.models import Conversation, HandoffReason
from clinics import services
from clinics.models import AppointmentSource
from console import selectors

pytestmark = pytest.mark.django_db


def test_it_counts_todays_bookings_by_source_and_draws_them_per_hour(
    clinic, patient, slots, receptionist
):
    for slot, source in ((slots[0], AppointmentSource.BOT), (slots[2], AppointmentSource.STAFF)):
        services.appointment_book(
            clinic=clinic,
            patient=patient,
            slot_id=slot.pk,
            actor=services.Actor.staff(receptionist),
            source=source,
        )
    stats = selectors.clinic_stats(clinic)
    assert (stats.booked_today_bot, stats.booked_today_staff, stats.booked_today) == (1, 1, 2)
    assert stats.bot_share == 0.5
    assert stats.pending_confirmation == 2
    hour = timezone.now().astimezone(clinic.tz).hour
    assert stats.per_hour[stats.hour_labels.index(hour)] == 2
    bar = next(b for b in stats.chart["bars"] if b["hour"] == hour)
    assert bar["count"] == 2 and bar["h"] > 0 and bar["now"]
    assert all(isinstance(b["x"], int) and isinstance(b["cx"], int) for b in stats.chart["bars"])


def test_it_reports_people_waiting_and_the_longest_wait(clinic):
    now = timezone.now()
    Conversation.objects.create(
        clinic=clinic, wa_id="573000000001", needs_staff=True,
        last_inbound_at=now - dt.timedelta(minutes=12),
    )  # fmt: skip
    Conversation.objects.create(
        clinic=clinic, wa_id="573000000002", urgent=True, last_inbound_at=now
    )
    stats = selectors.clinic_stats(clinic, now=now)
    assert (stats.waiting, stats.urgent) == (1, 1)
    assert 12 * 60 - 5 <= stats.longest_wait_seconds <= 12 * 60 + 5


def test_it_explains_the_handoff_with_what_the_bot_gathered(clinic):
    conversation = Conversation.objects.create(
        clinic=clinic,
        wa_id="573000000003",
        needs_staff=True,
        handoff_reason=HandoffReason.IDENTITY_LOCKOUT,
        context={"specialty": "Pediatría", "symptoms": "fiebre alta"},
    )
    card = selectors.handoff(conversation)
    assert card.reasons == ["Identity check failed three times"]
    assert (card.specialty, card.symptoms) == ("Pediatría", "fiebre alta")
    calm = Conversation.objects.create(clinic=clinic, wa_id="573000000004")
    assert selectors.handoff(calm) is None
