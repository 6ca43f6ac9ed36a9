"""Console fixtures: a conversation of the demo clinic with a few messages, logged-in clients."""

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from bot.models import Conversation, Direction, Message, MessageStatus
from tests.conftest import PASSWORD
from tests.fakes import graph_server

fake_graph = graph_server.fake_graph  # the fixture

WA_ID = "573001234567"


def add_message(conversation, direction, text, *, minutes_ago=0, status=None, **extra):
    at = timezone.now() - dt.timedelta(minutes=minutes_ago)
    return Message.objects.create(
        clinic=conversation.clinic,
        conversation=conversation,
        direction=direction,
        text=text,
        status=status or (MessageStatus.PROCESSED if direction == "in" else MessageStatus.READ),
        created_at=at,
        **extra,
    )


@pytest.fixture
def conversation(clinic, patient):
    conv = Conversation.objects.create(
        clinic=clinic,
        wa_id=WA_ID,
        contact_name="Ana",
        patient=patient,
        state="IDENTIFIED",
        last_inbound_at=timezone.now() - dt.timedelta(minutes=5),
        last_activity_at=timezone.now() - dt.timedelta(minutes=5),
    )
    add_message(
        conv, Direction.IN, "Hola, necesito una cita", minutes_ago=6, wa_message_id="wamid.A1"
    )
    add_message(conv, Direction.OUT, "¡Hola Ana! ¿Qué síntomas tienes?", minutes_ago=5)
    return conv


def logged_in(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def staff_client(receptionist):
    return logged_in(receptionist)


@pytest.fixture
def other_client(other_staff):
    return logged_in(other_staff)
