"""`whatsapp.deliver_many`: several outbox rows with one claim and one write, same rules as
`deliver` (once only, in conversation order, failures recorded per row)."""

import threading

import pytest
from django.db import connection

from bot import whatsapp
from bot.messages import Reply
from bot.models import Conversation, Message, MessageStatus
from tests.fakes import graph_server

fake_graph = graph_server.fake_graph  # the fixture


def queued(clinic, wa_id: str, text: str) -> Message:
    conversation, _ = Conversation.objects.get_or_create(clinic=clinic, wa_id=wa_id)
    (message,) = whatsapp.queue_replies(conversation, [Reply(kind="text", text=text)])
    return message


@pytest.mark.django_db
def test_it_sends_each_row_once_and_records_them(clinic, fake_graph):
    rows = [queued(clinic, f"57300000000{n}", f"hola {n}") for n in range(3)]
    assert whatsapp.deliver_many([m.pk for m in rows]) == 3
    assert whatsapp.deliver_many([m.pk for m in rows]) == 0
    assert sorted(r.text for r in fake_graph.messages) == ["hola 0", "hola 1", "hola 2"]
    for message in Message.objects.filter(pk__in=[m.pk for m in rows]):
        assert (message.status, message.attempts) == (MessageStatus.SENT, 1)
        assert message.wa_message_id


@pytest.mark.django_db
def test_it_leaves_a_row_behind_an_earlier_pending_one_of_its_conversation(clinic, fake_graph):
    first = queued(clinic, "573000000001", "primero")
    second = queued(clinic, "573000000001", "segundo")
    assert whatsapp.deliver_many([second.pk]) == 0
    assert whatsapp.deliver_many([first.pk, second.pk]) == 1
    assert [r.text for r in fake_graph.messages] == ["primero"]


@pytest.mark.django_db
def test_it_records_a_failure_on_its_row_only(clinic, fake_graph):
    rows = [queued(clinic, f"57300000000{n}", f"hola {n}") for n in range(2)]
    fake_graph.fail_next(1, status=500)
    assert whatsapp.deliver_many([m.pk for m in rows]) == 1
    statuses = sorted(
        Message.objects.filter(pk__in=[m.pk for m in rows]).values_list("status", flat=True)
    )
    assert statuses == [MessageStatus.QUEUED, MessageStatus.SENT]  # the failed one waits to retry


@pytest.mark.django_db(transaction=True)
def test_it_sends_once_when_two_senders_race(clinic, fake_graph):
    rows = [queued(clinic, f"5730000000{n:02d}", f"hola {n}") for n in range(20)]
    ids = [m.pk for m in rows]
    barrier = threading.Barrier(2)
    counts = []

    def send() -> None:
        try:
            barrier.wait()
            counts.append(whatsapp.deliver_many(ids))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 20
    assert len(fake_graph.messages) == 20
