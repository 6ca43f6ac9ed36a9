"""The agenda's websocket: scoped to the user's clinics, cells pushed after commit, resync."""

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone

from clinics import services
from clinics.services import Actor
from sophia_web import live
from sophia_web.asgi import application
from tests.conftest import make_slots

pytestmark = pytest.mark.django_db(transaction=True)


def cookie_for(user) -> bytes:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return f"{settings.SESSION_COOKIE_NAME}={session}".encode()


async def communicator(user, clinic_id) -> WebsocketCommunicator:
    cookie = await sync_to_async(cookie_for)(user)
    return WebsocketCommunicator(
        application,
        f"/ws/agenda/?clinic={clinic_id}",
        headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)],
    )


@pytest.fixture(autouse=True)
def _fresh_live_numbers():
    live.reset()
    yield
    live.reset()


async def test_it_refuses_another_clinics_staff_and_anonymous_users(clinic, other_staff, outsider):
    for user in (other_staff, outsider):
        ws = await communicator(user, clinic.pk)
        connected, code = await ws.connect()
        assert not connected and code == 4404
        await ws.disconnect()


async def test_it_pushes_the_cell_of_a_booking_after_commit(receptionist, clinic, doctor, patient):
    start = (timezone.now() + dt.timedelta(days=2)).replace(second=0, microsecond=0)
    (slot,) = await sync_to_async(make_slots)(doctor, start, 1)
    ws = await communicator(receptionist, clinic.pk)
    connected, _ = await ws.connect()
    assert connected
    try:
        await ws.send_json_to({"action": "resync", "since": {f"agenda-{clinic.pk}": 0}})
        assert (await ws.receive_json_from())["event"] == "resync.done"
        await sync_to_async(services.appointment_book)(
            clinic=clinic, patient=patient, slot_id=slot.pk, actor=Actor.patient(patient),
            source="bot",
        )  # fmt: skip
        frame = await ws.receive_json_from(timeout=5)
        assert frame["event"] == "agenda-cell" and frame["seq"] == 1
        assert f'id="slot-{slot.pk}"' in frame["html"]
        assert 'data-state="booked"' in frame["html"] and "Ana María Gómez" in frame["html"]
        assert 'hx-swap-oob="true"' in frame["html"]
        # A page that reconnects asks for what it missed and gets exactly that.
        await ws.send_json_to({"action": "resync", "since": {f"agenda-{clinic.pk}": 0}})
        replay = await ws.receive_json_from()
        assert replay["seq"] == 1 and replay["html"] == frame["html"]
        assert (await ws.receive_json_from())["event"] == "resync.done"
    finally:
        await ws.disconnect()


async def test_a_bulk_change_asks_open_calendars_to_reload(clinic_admin, clinic, doctor):
    ws = await communicator(clinic_admin, clinic.pk)
    connected, _ = await ws.connect()
    assert connected
    try:
        await sync_to_async(services.blocked_period_add)(
            clinic=clinic, kind="absence", doctor_id=doctor.pk,
            starts_at=timezone.now() + dt.timedelta(days=3),
            ends_at=timezone.now() + dt.timedelta(days=4), actor=Actor.staff(clinic_admin),
        )  # fmt: skip
        frame = await ws.receive_json_from(timeout=5)
        assert frame["event"] == "agenda-refresh"
        assert frame["data"]["doctor_ids"] == [doctor.pk]
    finally:
        await ws.disconnect()
