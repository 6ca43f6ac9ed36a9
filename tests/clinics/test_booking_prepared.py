"""The booking's statements are prepared on PostgreSQL at their first run (planned once per
connection; a refusal's ROLLBACK makes psycopg forget them, and they are prepared again at once),
and the rest of the connection keeps its own threshold (sophia_web.settings)."""

import pytest
from django.db import connection

from clinics import services
from clinics.models import Doctor
from tests.conftest import make_slots

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's"
)


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        return [row[0] for row in cursor.fetchall()]


def book(clinic, patient, slot, actor):
    return services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slot.pk, actor=actor, source="bot"
    )


def test_it_prepares_the_booking_statements_at_their_first_run(
    clinic, patient, other_patient, slots, patient_actor
):
    connection.ensure_connection()
    threshold = connection.connection.prepare_threshold
    before = prepared_statements()
    book(clinic, patient, slots[0], patient_actor)
    prepared = [s for s in prepared_statements() if s not in before]
    assert any("FOR UPDATE" in s for s in prepared)
    # The appointment and the slot marked booked: one statement (services._book_sql).
    assert any(
        s.startswith("WITH a AS (INSERT INTO")
        and "clinics_appointment" in s
        and 'UPDATE "clinics_slot"' in s
        for s in prepared
    )
    assert any(s.startswith("INSERT INTO") and "clinics_auditevent" in s for s in prepared)
    assert connection.connection.prepare_threshold == threshold  # the rest: as configured
    other = services.Actor.patient(other_patient)
    book(clinic, other_patient, slots[1], other)  # reused
    assert set(prepared) <= set(prepared_statements())
    # A refusal ends its transaction without a ROLLBACK (at which psycopg forgets every
    # prepared statement): they are all still there.
    with pytest.raises(services.SlotTaken):
        book(clinic, other_patient, slots[1], other)
    assert set(prepared) <= set(prepared_statements())


def test_it_books_again_on_the_connection_after_a_refused_insert(
    clinic, patient, slots, patient_actor
):
    """A patient overlap fails the prepared INSERT inside the transaction; the statements stay
    usable for the next booking on the same connection."""
    book(clinic, patient, slots[0], patient_actor)
    other_doctor = Doctor.objects.create(clinic=clinic, full_name="Dra. Otra")
    (same_time,) = make_slots(other_doctor, slots[0].start_at, 1)
    with pytest.raises(services.PatientOverlap):
        book(clinic, patient, same_time, patient_actor)
    assert book(clinic, patient, slots[3], patient_actor).pk
