"""sophia_web.live: events numbered per group, kept for a reconnecting page, sent on commit."""

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from sophia_web import live

pytestmark = pytest.mark.django_db(transaction=True)


def receive(layer, channel):
    return async_to_sync(layer.receive)(channel)


def test_it_numbers_events_per_group_and_replays_them():
    first = live.send_now("clinic-1", "inbox.row", "<div id='a'></div>")
    second = live.send_now("clinic-1", "typing", {"typing": True})
    other = live.send_now("clinic-2", "inbox.row", "<div></div>")
    assert (first["seq"], second["seq"], other["seq"]) == (1, 2, 1)
    assert live.last_sequence("clinic-1") == 2
    replay = live.events_after("clinic-1", 0)
    assert [(e["seq"], e["event"]) for e in replay] == [(1, "inbox.row"), (2, "typing")]
    assert replay[1]["data"] == {"typing": True}
    assert live.events_after("clinic-1", 2) == []


def test_it_says_when_the_backlog_no_longer_reaches_back(monkeypatch):
    monkeypatch.setattr(live, "BACKLOG_SIZE", 3)
    for i in range(6):
        live.send_now("clinic-9", "inbox.row", f"<p>{i}</p>")
    assert live.events_after("clinic-9", 1) is None
    assert [e["seq"] for e in live.events_after("clinic-9", 3)] == [4, 5, 6]


def test_it_sends_only_after_the_transaction_commits():
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("conversation-5", channel)
    try:
        with transaction.atomic():
            live.broadcast("conversation-5", "message", "<li>hola</li>")
            assert live.last_sequence("conversation-5") == 0
        message = receive(layer, channel)
        assert message["type"] == "live.event"
        assert message["html"] == "<li>hola</li>"
        assert message["seq"] == 1

        with pytest.raises(RuntimeError), transaction.atomic():
            live.broadcast("conversation-5", "message", "<li>nunca</li>")
            raise RuntimeError("rolled back")
        assert live.last_sequence("conversation-5") == 1
    finally:
        async_to_sync(layer.group_discard)("conversation-5", channel)


def relay_post(client, body: bytes, signature: str | None = None):
    return client.post(
        "/live/relay/",
        body,
        content_type="application/json",
        headers={
            "X-Sophia-Live": signature if signature is not None else live._relay_signature(body)
        },
    )


def test_it_relays_a_worker_event_into_the_web_process(client, settings):
    settings.SOPHIA_LIVE_RELAY = True
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("clinic-3", channel)
    body = (
        b'{"group": "clinic-3", "event": "inbox.row", "payload": "<li></li>", "ephemeral": false}'
    )
    try:
        assert relay_post(client, body).status_code == 204
        message = receive(layer, channel)
        assert (message["event"], message["seq"], message["html"]) == ("inbox.row", 1, "<li></li>")
    finally:
        async_to_sync(layer.group_discard)("clinic-3", channel)


def test_it_refuses_unsigned_relays_and_is_off_by_default(client, settings):
    body = b'{"group": "clinic-3", "event": "x", "payload": {}, "ephemeral": true}'
    assert relay_post(client, body).status_code == 404
    settings.SOPHIA_LIVE_RELAY = True
    assert relay_post(client, body, signature="forged").status_code == 403
    assert relay_post(client, b"[]", signature=live._relay_signature(b"[]")).status_code == 400
    assert live.last_sequence("clinic-3") == 0


def test_it_tells_watched_groups_from_unwatched_ones():
    live.watch(["clinic-4", "conversation-8"], "channel-a")
    assert live.watching(["clinic-4", "clinic-5", "conversation-8"]) == {
        "clinic-4",
        "conversation-8",
    }
    live.watch(["clinic-4"], "channel-a", 0)  # its time is up
    assert live.watching(["clinic-4"]) == set()
    assert live.watching(["conversation-8"]) == {"conversation-8"}


def test_it_counts_an_unwatched_event_as_missed_so_a_page_reloads():
    live.send_now("clinic-6", "inbox.row", "<p>1</p>")
    assert live.watching(["clinic-6"]) == set()  # event 2: rendered for no one
    live.watch(["clinic-6"], "channel-b")
    live.send_now("clinic-6", "inbox.row", "<p>3</p>")
    assert live.last_sequence("clinic-6") == 3
    # A page that had event 1 missed event 2, which was never kept: it must reload.
    assert live.events_after("clinic-6", 1) is None
    assert [e["seq"] for e in live.events_after("clinic-6", 2)] == [3]
    # Passing events (typing) leave no gap.
    live.watch(["clinic-6"], "channel-b", 0)
    live.watching(["clinic-6"], gap=False)
    assert live.last_sequence("clinic-6") == 3


def test_it_keeps_what_happens_between_a_pages_render_and_its_socket(time_machine):
    time_machine.move_to("2026-12-02 10:00:00+00:00", tick=False)
    live.send_now("clinic-7", "inbox.row", "<p>1</p>")
    # The page reads its numbers, and counts as watching from then on: the producers render
    # and keep an event that commits before its socket joins.
    assert live.page_sequences(["clinic-7", "conversation-3"]) == {
        "clinic-7": 1,
        "conversation-3": 0,
    }
    assert live.watching(["clinic-7", "conversation-3"]) == {"clinic-7", "conversation-3"}
    live.send_now("clinic-7", "inbox.row", "<p>2</p>")
    assert [e["seq"] for e in live.events_after("clinic-7", 1)] == [2]  # replayed, no reload
    # A page that never opens its socket stops counting after the reconnect grace.
    time_machine.shift(live.RECONNECT_GRACE_SECONDS + 1)
    assert live.watching(["clinic-7"]) == set()


def test_it_forgets_a_watch_that_is_not_refreshed(time_machine):
    time_machine.move_to("2026-12-02 10:00:00+00:00", tick=False)
    live.watch(["agenda-3"], "channel-c")
    time_machine.shift(live.WATCH_TTL_SECONDS - 1)
    assert live.watching(["agenda-3"]) == {"agenda-3"}
    live.watch(["agenda-3"], "channel-c")  # the socket's refresh
    time_machine.shift(live.WATCH_TTL_SECONDS - 1)
    assert live.watching(["agenda-3"]) == {"agenda-3"}
    time_machine.shift(2)  # the socket's process died: no refresh
    assert live.watching(["agenda-3"]) == set()


def test_it_assumes_everyone_watches_through_the_demos_relay(settings):
    settings.SOPHIA_LIVE_RELAY_URL = "http://127.0.0.1:9/live/relay/"
    assert live.watching(["clinic-1", "conversation-2"]) == {"clinic-1", "conversation-2"}
