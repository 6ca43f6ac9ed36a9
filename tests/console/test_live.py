"""console.live: conversations waiting for the publisher are published together."""

import threading

import pytest

from bot.models import Conversation, Direction
from console import live as console_live
from sophia_web import live
from tests.console.conftest import add_message

pytestmark = pytest.mark.django_db(transaction=True)  # the publisher thread reads committed rows


def test_it_asks_once_who_watches_the_conversations_that_wait_together(
    clinic, conversation, monkeypatch
):
    others = [
        Conversation.objects.create(
            clinic=clinic, wa_id=f"57300999000{n}", last_activity_at=conversation.last_activity_at
        )
        for n in range(2)
    ]
    for other in others:
        add_message(other, Direction.IN, "hola")
    ids = [conversation.pk, *(c.pk for c in others)]
    live.watch([f"conversation-{others[0].pk}"], "test-channel", 60)
    asked: list[list[str]] = []
    real_watching = live.watching

    def watching(groups, **kwargs):
        asked.append(list(groups))
        return real_watching(asked[-1], **kwargs)

    monkeypatch.setattr(live, "watching", watching)
    rendered: list[int] = []
    real_render = console_live.render_conversation_update
    monkeypatch.setattr(
        console_live,
        "render_conversation_update",
        lambda row: rendered.append(row.pk) or real_render(row),
    )

    busy = threading.Event()
    live.publisher.submit(busy.wait, 5)  # the publisher is busy while the three change
    console_live.publish(ids, clinic_id=clinic.pk)
    console_live.publish([conversation.pk], clinic_id=clinic.pk)  # again: still one render
    busy.set()
    live.publisher.drain()

    groups = {f"clinic-{clinic.pk}", *(f"conversation-{pk}" for pk in ids)}
    assert len(asked) == 1 and set(asked[0]) == groups
    assert rendered == [others[0].pk]  # only the open conversation is rendered
    # Nobody watched the inbox: its number moved on once, a gap its pages will see.
    assert live.last_sequence(f"clinic-{clinic.pk}") == 1


def test_it_asks_once_who_watches_for_a_burst_after_its_first_change(
    clinic, conversation, monkeypatch
):
    others = [
        Conversation.objects.create(clinic=clinic, wa_id=f"57300888000{n}") for n in range(20)
    ]
    asked: list[list[str]] = []
    real_watching = live.watching
    monkeypatch.setattr(
        live,
        "watching",
        lambda groups, **kw: asked.append(list(groups)) or real_watching(asked[-1], **kw),
    )
    # A long interval, so that the burst below surely falls inside it on a busy machine.
    monkeypatch.setattr(console_live._conversations, "every", 1.0)

    console_live.publish([conversation.pk], clinic_id=clinic.pk)  # after a quiet spell: at once
    live.publisher.drain()
    for other in others:  # a burst: they wait for the rest of the interval, together
        console_live.publish([other.pk], clinic_id=clinic.pk)
    live.publisher.drain()

    assert [len(set(groups)) for groups in asked] == [2, 21]  # the inbox and each one
    assert console_live.CONVERSATIONS_EVERY > 0


def test_it_publishes_the_others_when_one_conversation_fails(clinic, conversation, monkeypatch):
    other = Conversation.objects.create(clinic=clinic, wa_id="573009990009", contact_name="Luis")
    live.watch([f"conversation-{conversation.pk}", f"conversation-{other.pk}"], "test-channel", 60)
    rendered: list[int] = []

    def render(row):
        if row.pk == conversation.pk:
            raise RuntimeError("template broke")
        rendered.append(row.pk)
        return "<div></div>"

    monkeypatch.setattr(console_live, "render_conversation_update", render)
    console_live._publish_conversations([conversation.pk, other.pk])

    assert rendered == [other.pk]
