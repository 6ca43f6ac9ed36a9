"""Agenda cells wait for the agenda's publisher; slots that change meanwhile join the same send,
and a busy clinic's cells go at most every CELLS_EVERY seconds."""

from types import SimpleNamespace

import pytest

from clinics import agenda_live


class QueuedPublisher:
    """Runs nothing until asked, like the publisher's thread when it lags behind."""

    def __init__(self, in_background: bool = True) -> None:
        self.tasks = []
        self.background = in_background

    def in_background(self) -> bool:
        return self.background

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


class Clock:
    """The agenda's time.monotonic and time.sleep: sleeping moves it on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(
        agenda_live, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep)
    )
    monkeypatch.setattr(agenda_live, "_last_sent", {})
    return clock


@pytest.fixture
def sent(monkeypatch):
    sent = []
    monkeypatch.setattr(agenda_live, "send_cells", lambda *args: sent.append(args))
    return sent


def test_it_sends_the_cells_of_a_burst_of_bookings_in_one_task_per_clinic(monkeypatch, clock, sent):
    publisher = QueuedPublisher()
    monkeypatch.setattr(agenda_live, "publisher", publisher)
    booked(1, 10)
    booked(1, 11, previous=10)
    booked(2, 20)
    assert len(publisher.tasks) == 2 and sent == []
    publisher.run()
    assert sorted(sent) == [(1, [10, 11]), (2, [20])]
    assert clock.slept == []  # nothing sent lately: at once
    clock.now += agenda_live.CELLS_EVERY
    booked(1, 12)  # after the send: a task of its own
    publisher.run()
    assert sent[-1] == (1, [12]) and clock.slept == []


def test_it_sends_a_busy_clinics_cells_at_most_every_interval(monkeypatch, clock, sent):
    publisher = QueuedPublisher()
    monkeypatch.setattr(agenda_live, "publisher", publisher)
    booked(1, 10)
    publisher.run()
    clock.now += agenda_live.CELLS_EVERY / 4
    booked(1, 11)
    booked(1, 12)  # joins the task that waits for the interval's end
    booked(2, 20)  # another clinic: its own interval
    publisher.run()
    assert sent == [(1, [10]), (1, [11, 12]), (2, [20])]
    assert clock.slept == [pytest.approx(agenda_live.CELLS_EVERY * 3 / 4)]


def test_it_never_makes_the_caller_wait_when_the_publisher_runs_inline(monkeypatch, clock, sent):
    publisher = QueuedPublisher(in_background=False)  # the in-process layer: runs in the caller
    monkeypatch.setattr(agenda_live, "publisher", publisher)
    booked(1, 10)
    publisher.run()
    booked(1, 11)
    publisher.run()
    assert sent == [(1, [10]), (1, [11])] and clock.slept == []
