"""sophia_web.inserts writes rows without the ORM's save(): no model signal is sent for them."""

import pytest
from django.db.models.signals import post_save, pre_save

from bot.models import Conversation, Message, WebhookEvent
from clinics.models import Appointment, AuditEvent

WRITTEN_BY_HAND = [WebhookEvent, Conversation, Message, Appointment, AuditEvent]


@pytest.mark.parametrize("model", WRITTEN_BY_HAND, ids=lambda m: m.__name__)
def test_it_writes_only_models_nobody_listens_to(model):
    # A receiver added for one of these would never hear the webhook's or the booking's rows.
    assert not pre_save.has_listeners(model)
    assert not post_save.has_listeners(model)
