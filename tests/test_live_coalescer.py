"""sophia_web.live.Coalescer: changes that wait for the publisher join one send per key, and a
busy key's sends are spaced by its interval, in the publisher's thread only."""

from types import SimpleNamespace

import pytest

from sophia_web import live


class QueuedPublisher:
    """Runs nothing until asked, like a publisher's thread when it lags behind."""

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


class Clock:
    """sophia_web.live's time.monotonic and time.sleep: sleeping moves it on."""

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
    monkeypatch.setattr(live, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    return clock


def coalescer(every: float, in_background: bool = True):
    sent: list[tuple] = []
    publisher = QueuedPublisher(in_background)
    return live.Coalescer(lambda *args: sent.append(args), every=every, publisher=publisher), sent


def test_it_sends_what_waited_together_in_one_send_per_key(clock):
    cells, sent = coalescer(every=0.1)
    cells.add(1, [10])
    cells.add(1, [11, 10])  # 10 again: once
    cells.add(2, [20])
    assert len(cells.publisher.tasks) == 2 and sent == []
    cells.publisher.run()
    assert sorted(sent) == [(1, [10, 11]), (2, [20])]
    assert clock.slept == []  # nothing sent lately: at once
    clock.now += 0.1
    cells.add(1, [12])  # after the send: a send of its own
    cells.publisher.run()
    assert sent[-1] == (1, [12]) and clock.slept == []


def test_it_spaces_a_busy_keys_sends_by_its_interval(clock):
    cells, sent = coalescer(every=0.1)
    cells.add(1, [10])
    cells.publisher.run()
    clock.now += 0.025
    cells.add(1, [11])
    cells.add(1, [12])  # joins the send that waits for the interval's end
    cells.add(2, [20])  # another key: its own interval
    cells.publisher.run()
    assert sent == [(1, [10]), (1, [11, 12]), (2, [20])]
    assert clock.slept == [pytest.approx(0.075)]


def test_it_never_makes_the_caller_wait_when_the_publisher_runs_inline(clock):
    cells, sent = coalescer(every=0.1, in_background=False)  # the in-process layer
    for slot in (10, 11):
        cells.add(1, [slot])
        cells.publisher.run()
    assert sent == [(1, [10]), (1, [11])] and clock.slept == []


def test_it_sends_a_key_without_items_once_per_interval(clock):
    stats, sent = coalescer(every=1.0)
    stats.add(7)
    stats.add(7)
    stats.publisher.run()
    assert sent == [(7, [])]


def test_it_runs_on_its_own_thread_unless_given_a_publisher():
    own = live.Coalescer(lambda *args: None, name="sophia-test")
    shared = live.Coalescer(lambda *args: None, publisher=live.publisher)
    assert own.publisher is not live.publisher and own.publisher.name == "sophia-test"
    assert shared.publisher is live.publisher
