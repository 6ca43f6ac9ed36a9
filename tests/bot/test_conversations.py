"""The Spanish conversation set (tests/bot/conversations.py) reaches the right outcome.

Each conversation is one test on real PostgreSQL; the share that reached the right outcome and
the messages each returning patient's booking took are written to
bench/results/conversations.json (and printed with -s). Goal: 100 %, and a returning patient
booked in ≤ 4 messages when the first holds the document and the symptoms, ≤ 5 otherwise.
"""

import pytest

from tests.bot.conversation_runner import collect_results, run_conversation, shared_world
from tests.bot.conversations import CONVERSATIONS


@pytest.fixture(scope="module")
def demo_world(django_db_setup, django_db_blocker):
    """Made once for the module; each conversation's own writes roll back with its test."""
    yield from shared_world(django_db_blocker)


@pytest.fixture
def world(demo_world, db):
    return demo_world


@pytest.fixture(scope="module")
def results():
    yield from collect_results("conversations", expected=len(CONVERSATIONS))


def test_it_has_a_big_varied_set():
    names = [c.name for c in CONVERSATIONS]
    assert len(CONVERSATIONS) >= 60 and len(set(names)) == len(names)
    topics = {c.topic for c in CONVERSATIONS}
    assert {"dates", "doctors", "changes", "faq", "birth dates", "red flags", "names"} <= topics
    assert sum(len(c.messages) > 1 for c in CONVERSATIONS) >= 55  # multi-turn


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=lambda c: c.name)
def test_it_reaches_the_right_outcome(conversation, world, results):
    run = run_conversation(conversation, world, results)
    outcome = results[conversation.name]
    if conversation.booking == "doc+symptoms":
        assert outcome["messages_to_book"] <= 4, run.transcript()
    elif conversation.booking == "returning":
        assert outcome["messages_to_book"] <= 5, run.transcript()
