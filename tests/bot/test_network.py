"""bot.network: no outbound HTTP call (Graph API, LLM) while a database transaction is open.

The tests run with SOPHIA_NETWORK_GUARD=raise (the Makefile sets it), so a call from inside a
transaction fails loudly; the last test runs whole turns — one of them asking the LLM — through
the worker and proves every network call found no transaction open.
"""

import pytest
from django.db import transaction

from bot import llm, network, state, whatsapp
from bot.engine import State
from bot.messages import ClinicInfo, Reply, SpecialtyInfo
from bot.models import Conversation, Direction, MessageStatus
from tests.bot.test_processing import APP_SECRET, WA_ID, receive, run_ready_tasks, text_message
from tests.fakes import graph_server, openai_server

fake_graph = graph_server.fake_graph
fake_openai = openai_server.fake_openai

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    settings.SOPHIA_NETWORK_GUARD = "raise"
    state.reset()
    yield
    state.reset()


@pytest.fixture
def helper(settings, fake_openai) -> llm.LLMHelper:
    settings.OPENAI_API_KEY = "test-key"
    settings.OPENAI_BASE_URL = fake_openai.base_url
    settings.OPENAI_MODEL = "fake-model"
    return llm.get_helper()


def test_it_refuses_a_graph_call_inside_a_transaction(clinic, fake_graph):
    with pytest.raises(network.NetworkInTransactionError), transaction.atomic():
        whatsapp.post_message(clinic, {"messaging_product": "whatsapp", "to": WA_ID})
    assert fake_graph.requests == []


def test_it_refuses_an_llm_call_inside_a_transaction(helper, fake_openai):
    with pytest.raises(network.NetworkInTransactionError), transaction.atomic():
        helper.classify("me siento raro", [SpecialtyInfo(id=1, slug="general", name="General")])
    with pytest.raises(network.NetworkInTransactionError), transaction.atomic():
        helper.answer("¿tienen parqueadero?", ClinicInfo(id=1, name="Clínica"), [])
    assert fake_openai.requests == []


def test_it_only_logs_it_in_production(clinic, fake_graph, settings, caplog):
    settings.SOPHIA_NETWORK_GUARD = "log"
    with transaction.atomic():
        whatsapp.post_message(clinic, {"messaging_product": "whatsapp", "to": WA_ID})
    assert "inside a transaction" in caplog.text
    assert len(fake_graph.requests) == 1


def test_it_lets_calls_outside_a_transaction_through(clinic, fake_graph):
    whatsapp.post_message(clinic, {"messaging_product": "whatsapp", "to": WA_ID})
    assert len(fake_graph.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_no_turn_calls_the_network_inside_a_transaction(
    clinic, slots, patient, fake_graph, fake_openai, helper, monkeypatch
):
    checks: list[tuple[str, str | None]] = []
    real_open_transaction = network.open_transaction

    def spy() -> str | None:
        found = real_open_transaction()
        checks.append(found)
        return found

    monkeypatch.setattr(network, "open_transaction", spy)
    fake_openai.reply_json({"specialty": "medicina-general", "confidence": 0.9})

    receive(clinic, text_message("1020304050"))
    run_ready_tasks()
    # Rules can't place this: the LLM is asked, outside the turn's transaction.
    conversation = receive(clinic, text_message("me siento muy raro desde hace días"))
    run_ready_tasks()

    assert len(fake_openai.requests) == 1
    texts = [m.text for m in fake_graph.messages_to(WA_ID)]
    assert "Medicina General" in texts[-1]
    conversation = Conversation.objects.get(pk=conversation.pk)
    assert conversation.state == State.CHOOSING_SLOT
    assert conversation.llm_prompt_tokens > 0
    assert not conversation.messages.filter(
        direction=Direction.IN, status=MessageStatus.RECEIVED
    ).exists()
    assert len(checks) >= 4  # typing indicators, replies and the LLM question
    assert set(checks) == {None}


@pytest.mark.django_db(transaction=True)
def test_it_sends_a_turns_replies_in_order_after_commit(clinic, fake_graph):
    conversation = receive(clinic, text_message("hola"))
    rows = whatsapp.queue_replies(
        conversation, [Reply(kind="text", text="uno"), Reply(kind="text", text="dos")]
    )
    for row in rows:
        row.conversation = conversation
    assert whatsapp.send_queued(rows) == 2
    assert [m.text for m in fake_graph.messages_to(WA_ID)] == ["uno", "dos"]
