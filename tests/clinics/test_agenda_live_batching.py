"""Agenda cells wait for the live publisher; slots that change meanwhile join the same send."""

from clinics import agenda_live
from sophia_web import live


class QueuedPublisher:
    """Runs nothing until asked, like the publisher's thread when it lags behind."""

    def __init__(self) -> None:
        self.tasks = []

    def submit(self, fn, *args) -> None:
        self.tasks.append((fn, args))

    def run(self) -> None:
        tasks, self.tasks = self.tasks, []
        for fn, args in tasks:
            fn(*args)


def booked(clinic_id: int, slot_id: int, previous: int | None = None) -> None:
    payload = {"slot_id": slot_id}
    if previous is not None:
        payload["previous"] = {"slot_id": previous}
    agenda_live.update_calendars(
        "clinics", clinic_id=clinic_id, name="cita.creada", payload=payload
    )


def test_it_sends_the_cells_of_a_burst_of_bookings_in_one_task_per_clinic(monkeypatch):
    publisher = QueuedPublisher()
    sent = []
    monkeypatch.setattr(live, "publisher", publisher)
    monkeypatch.setattr(agenda_live, "send_cells", lambda *args: sent.append(args))
    booked(1, 10)
    booked(1, 11, previous=10)
    booked(2, 20)
    assert len(publisher.tasks) == 2 and sent == []
    publisher.run()
    assert sorted(sent) == [(1, [10, 11]), (2, [20])]
    booked(1, 12)  # after the send: a task of its own
    publisher.run()
    assert sent[-1] == (1, [12])
