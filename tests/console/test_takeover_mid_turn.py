"""Takeover while a bot turn is running: the patient receives none of that turn's replies.

The turn holds the conversation row for its whole transaction; the takeover must still commit
during it, and the outbox must refuse the turn's replies where it releases them.
"""

import threading

import pytest
from django.db import connection
from django.utils import timezone

from bot import engine, processing
from bot.models import Direction, Message, MessageStatus, Takeover
from console import services
from tests.conftest import eventually

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_sends_nothing_of_a_turn_that_was_running_when_staff_took_over(
    monkeypatch, fake_graph, clinic, receptionist, conversation
):
    started = timezone.now()
    Message.objects.create(
        clinic=clinic,
        conversation=conversation,
        direction=Direction.IN,
        wa_message_id="wamid.MIDTURN",
        text="Quiero una cita de medicina general",
        status=MessageStatus.RECEIVED,
        created_at=timezone.now(),
    )
    in_engine, release = threading.Event(), threading.Event()
    real_step = engine.step

    def slow_step(*args, **kwargs):
        in_engine.set()
        assert release.wait(20), "the test never let the turn finish"
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "step", slow_step)
    results = {}

    def run(name, fn):
        try:
            results[name] = fn()
        except Exception as exc:  # surfaced by the asserts below
            results[name] = exc
        finally:
            connection.close()

    turn = threading.Thread(
        target=run, args=("turn", lambda: processing.process_conversation(conversation.pk))
    )
    turn.start()
    assert in_engine.wait(20), "the turn never reached the engine"

    # The mirror onto the conversation row (mode, assignee) waits for the turn to finish and
    # deliver: only the check where the outbox releases messages stands between the turn's
    # replies and the patient.
    real_mirror = services._mirror_takeover

    def late_mirror(*args):
        turn.join(30)
        real_mirror(*args)

    monkeypatch.setattr(services, "_mirror_takeover", late_mirror)
    take = threading.Thread(
        target=run,
        args=(
            "takeover",
            lambda: services.conversation_take_over(
                clinic=clinic, conversation_id=conversation.pk, user=receptionist
            ),
        ),
    )
    take.start()
    # The takeover commits while the turn still holds the conversation row.
    eventually(
        lambda: Takeover.objects.filter(conversation=conversation, ended_at=None).exists(),
        timeout=10,
        what="takeover committed mid-turn",
    )
    assert turn.is_alive()

    release.set()
    turn.join(30)
    take.join(30)
    assert results["turn"] == 1, results
    assert isinstance(results["takeover"], Takeover), results

    replies = Message.objects.filter(
        conversation=conversation, direction=Direction.OUT, sent_by=None, created_at__gt=started
    )
    assert replies.exists()  # the engine did answer…
    assert set(replies.values_list("status", flat=True)) == {MessageStatus.SUPPRESSED}
    assert fake_graph.messages_to(conversation.wa_id) == []  # …and the patient got none of it
    conversation.refresh_from_db()
    assert conversation.mode == "human"
    assert conversation.assigned_to == receptionist
