"""Agenda cells go through their own coalescer (sophia_web.live.Coalescer, tested there): the
slots a booking, a reschedule or a cancellation changed, per clinic, at most every CELLS_EVERY."""

from clinics import agenda_live
from tests.test_live_coalescer import QueuedPublisher


def booked(clinic_id: int, slot_id: int, previous: int | None = None) -> None:
    payload = {"slot_id": slot_id}
    if previous is not None:
        payload["previous"] = {"slot_id": previous}
    agenda_live.update_calendars(
        "clinics", clinic_id=clinic_id, name="cita.creada", payload=payload
    )


def test_it_sends_the_cells_of_a_burst_of_bookings_in_one_send_per_clinic(monkeypatch):
    publisher, sent = QueuedPublisher(), []
    monkeypatch.setattr(agenda_live.cells, "publisher", publisher)
    monkeypatch.setattr(agenda_live.cells, "send", lambda *args: sent.append(args))
    booked(1, 10)
    booked(1, 11, previous=10)  # a reschedule: both cells
    booked(2, 20)
    assert len(publisher.tasks) == 2 and sent == []
    publisher.run()
    assert sorted(sent) == [(1, [10, 11]), (2, [20])]


def test_it_spaces_a_clinics_cells_by_cells_every_on_the_agendas_own_thread():
    assert agenda_live.cells.every == agenda_live.CELLS_EVERY
    assert agenda_live.cells.publisher.name == "sophia-live-agenda"
    assert agenda_live.cells.send is agenda_live.send_cells
