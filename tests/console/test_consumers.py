"""The console's websocket on the real ASGI app (sophia_web.asgi) and the real Redis layer."""

import asyncio
import datetime as dt

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from console import live as console_live
from console import services
from sophia_web import live
from sophia_web.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def communicator(path: str, cookie: str | None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def next_event(ws: WebsocketCommunicator, event: str, timeout: float = 5.0) -> dict:
    """The next frame of that event type (other frames are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        frame = await ws.receive_json_from(timeout=max(0.05, left))
        if frame.get("event") == event:
            return frame


@pytest.fixture
def cookies(receptionist, other_staff):
    return {"staff": session_cookie(receptionist), "other": session_cookie(other_staff)}


def test_it_runs_on_the_redis_channel_layer():
    assert type(get_channel_layer()).__name__ == "RedisChannelLayer"


async def test_it_streams_a_takeover_to_the_inbox_and_the_conversation(
    cookies, receptionist, clinic, conversation
):
    inbox = communicator(f"/ws/live/{clinic.pk}/", cookies["staff"])
    open_conversation = communicator(
        f"/ws/live/{clinic.pk}/conversation/{conversation.pk}/", cookies["staff"]
    )
    try:
        assert (await inbox.connect())[0]
        assert (await open_conversation.connect())[0]
        await database_sync_to_async(services.conversation_take_over)(
            clinic=clinic, conversation_id=conversation.pk, user=receptionist
        )
        row = await next_event(inbox, "inbox.row")
        assert row["group"] == f"clinic-{clinic.pk}"
        assert isinstance(row["seq"], int)
        assert f'id="conv-row-{conversation.pk}"' in row["html"]
        assert "Con recepcion" in row["html"]
        pane = await next_event(open_conversation, "conversation")
        assert pane["group"] == f"conversation-{conversation.pk}"
        assert "recepcion atiende este chat" in pane["html"]
        assert "Hola, necesito una cita" in pane["html"]
    finally:
        await inbox.disconnect()
        await open_conversation.disconnect()


async def test_it_refuses_another_clinics_staff_and_anonymous_users(
    cookies, clinic, other_clinic, conversation
):
    for path, cookie in (
        (f"/ws/live/{clinic.pk}/", cookies["other"]),
        (f"/ws/live/{clinic.pk}/conversation/{conversation.pk}/", cookies["other"]),
        (f"/ws/live/{other_clinic.pk}/conversation/{conversation.pk}/", cookies["other"]),
        (f"/ws/live/{clinic.pk}/", None),
    ):
        ws = communicator(path, cookie)
        connected, code = await ws.connect()
        assert (connected, code) == (False, 4403), path
        await ws.disconnect()


async def test_it_replays_what_a_reconnecting_page_missed(cookies, clinic):
    group = f"clinic-{clinic.pk}"
    for n in range(3):
        await database_sync_to_async(live.send_now)(group, "inbox.row", f"<li id='r{n}'></li>")
    ws = communicator(f"/ws/live/{clinic.pk}/", cookies["staff"])
    try:
        assert (await ws.connect())[0]
        await ws.send_json_to({"action": "resync", "since": {group: 1}})
        frames = [await ws.receive_json_from(timeout=5) for _ in range(3)]
        assert [f.get("seq") for f in frames] == [2, 3, None]
        assert frames[0]["html"] == "<li id='r1'></li>"
        assert frames[2]["event"] == "resync.done"
    finally:
        await ws.disconnect()


async def test_it_asks_for_a_reload_when_the_backlog_is_gone(cookies, clinic, monkeypatch):
    monkeypatch.setattr(live, "BACKLOG_SIZE", 2)
    group = f"clinic-{clinic.pk}"
    for n in range(5):
        await database_sync_to_async(live.send_now)(group, "inbox.row", f"<li>{n}</li>")
    ws = communicator(f"/ws/live/{clinic.pk}/", cookies["staff"])
    try:
        assert (await ws.connect())[0]
        await ws.send_json_to({"action": "resync", "since": {group: 1}})
        frame = await ws.receive_json_from(timeout=5)
        assert frame == {"group": group, "event": "resync.reset", "seq": 5}
    finally:
        await ws.disconnect()


async def test_it_shows_other_staff_who_is_typing_and_viewing(
    cookies, clinic, clinic_admin, conversation
):
    path = f"/ws/live/{clinic.pk}/conversation/{conversation.pk}/"
    first = communicator(path, cookies["staff"])
    second = communicator(path, await database_sync_to_async(session_cookie)(clinic_admin))
    try:
        assert (await first.connect())[0]
        assert (await second.connect())[0]
        joined = await next_event(first, "viewer.join")
        if joined["data"]["name"] == "recepcion":  # its own arrival first
            joined = await next_event(first, "viewer.join")
        assert joined["data"]["name"] == "admin"
        await first.send_json_to({"action": "typing", "typing": True})
        typing = await next_event(second, "typing")
        assert typing["data"]["who"] == "staff"
        assert typing["data"]["name"] == "recepcion"
        assert typing["data"]["typing"] is True
        assert "seq" not in typing  # passing events are not numbered nor replayed
    finally:
        await first.disconnect()
        await second.disconnect()


async def test_it_renders_only_for_the_pages_someone_has_open(
    cookies, clinic, conversation, monkeypatch, time_machine
):
    rendered = []
    for name in ("render_row", "render_conversation_update"):
        original = getattr(console_live, name)
        monkeypatch.setattr(
            console_live,
            name,
            lambda row, name=name, original=original: rendered.append(name) or original(row),
        )

    def publish() -> None:
        console_live.publish([conversation.pk])
        live.publisher.drain()

    inbox_group = f"clinic-{clinic.pk}"
    await database_sync_to_async(publish)()  # nobody watches: nothing rendered, a gap counted
    assert rendered == []
    assert await database_sync_to_async(live.last_sequence)(inbox_group) == 1

    inbox = communicator(f"/ws/live/{clinic.pk}/", cookies["staff"])
    try:
        assert (await inbox.connect())[0]
        await inbox.send_json_to({"action": "resync", "since": {inbox_group: 0}})
        assert (await inbox.receive_json_from(timeout=5))["event"] == "resync.reset"
        await database_sync_to_async(publish)()
        row = await next_event(inbox, "inbox.row")
        assert f'id="conv-row-{conversation.pk}"' in row["html"]
        assert rendered == ["render_row"]  # the conversation itself is open nowhere
    finally:
        await inbox.disconnect()
    # Closed: a page whose connection dropped has a grace period to come back and catch up...
    await database_sync_to_async(publish)()
    assert rendered == ["render_row", "render_row"]
    # ...after which nobody watches any more.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=live.RECONNECT_GRACE_SECONDS + 1)
    time_machine.move_to(later)
    await database_sync_to_async(publish)()
    assert rendered == ["render_row", "render_row"]
