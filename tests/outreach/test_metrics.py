"""Reminders sent and waitlist offers move their /metrics counters (sophia_web.metrics)."""

import pytest

from outreach import waitlist
from outreach.models import OutreachSettings
from sophia_web import metrics
from tests.outreach.conftest import book, local, slot_at
from tests.outreach.test_reminders import TUESDAY, run_job
from tests.outreach.test_waitlist import (  # noqa: F401 (fixtures)
    cancel,
    commit,
    fake_graph,
    full_wednesday,
    waiting,
)

pytestmark = pytest.mark.django_db


def test_a_sent_reminder_counts_once(clock, clinic, patient, wednesday_slots, fake_graph):  # noqa: F811
    book(clinic, patient, slot_at(wednesday_slots, 9))
    before = metrics.REMINDERS_SENT._value.get()
    clock.move_to(local(TUESDAY, 9, 0))
    assert run_job() == 1
    assert run_job() == 0
    assert metrics.REMINDERS_SENT._value.get() == before + 1


def test_each_waitlist_offer_counts(clock, clinic, waiting, full_wednesday, fake_graph, commit):  # noqa: F811
    OutreachSettings.objects.create(clinic=clinic, waitlist_batch=2, waitlist_offer_minutes=30)
    before = metrics.WAITLIST_OFFERS._value.get()
    cancel(clinic, full_wednesday[6])
    assert commit(waitlist.waitlist_offer_slot, slot_id=full_wednesday[6].slot_id) == 2
    assert metrics.WAITLIST_OFFERS._value.get() == before + 2
