"""What makes the console's live views move: conversation activity anywhere (webhook, turns,
outbox) and domain events (bookings change the stats)."""

from django.dispatch import receiver

from clinics.events import domain_event
from console import live
from sophia_web.live import conversation_activity


@receiver(conversation_activity, dispatch_uid="console.publish_conversations")
def publish_conversations(
    sender, conversation_ids, wa_message_ids, clinic_id=None, **kwargs
) -> None:
    live.publish(conversation_ids, wa_message_ids, clinic_id=clinic_id)


@receiver(domain_event, dispatch_uid="console.stats_on_domain_event")
def refresh_stats(sender, clinic_id: int, name: str, payload: dict, **kwargs) -> None:
    live.stats_changed(clinic_id)
