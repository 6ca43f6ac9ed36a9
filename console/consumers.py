"""The console's websocket: one per page, joined to its clinic's group and, on a conversation
page, to that conversation's group.

Authorised in connect(): the user must work for the clinic in the URL, and the conversation
must belong to it; otherwise the socket is closed before it is accepted (code 4403).
Frames sent to the page are JSON `{group, event, seq?, html?, data?}` (static/js/console.js).
From the page: `{"action": "resync", "since": {group: seq}}` after every (re)connect, and
`{"action": "typing", "typing": bool}` while a staff member writes a reply.
"""

from __future__ import annotations

import datetime as dt
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.cache import cache
from django.utils import timezone

from bot import whatsapp
from bot.models import Conversation, Direction, Message, Takeover
from clinics import access
from sophia_web import live

logger = logging.getLogger(__name__)

DENIED = 4403
WINDOW = dt.timedelta(hours=24)
# WhatsApp's typing indicator lasts up to 25 s: refresh it while staff keep typing.
TYPING_REFRESH_SECONDS = 20


def _authorise(user, clinic_id: int, conversation_id: int | None) -> dict | None:
    clinic = access.clinic_for_user(user, clinic_id)
    if clinic is None:
        return None
    if (
        conversation_id is not None
        and not Conversation.objects.filter(pk=conversation_id, clinic=clinic).exists()
    ):
        return None
    return {"clinic_id": clinic.pk, "name": user.get_full_name() or user.get_username()}


def _patient_typing_indicator(conversation_id: int, user_id: int) -> None:
    """Show WhatsApp's "typing…" to the patient while the staff member holding the chat writes."""
    key = f"sophia:console:typing-indicator:{conversation_id}"
    if not cache.add(key, 1, TYPING_REFRESH_SECONDS):
        return  # shown less than 20 s ago: still on the patient's screen
    if not Takeover.objects.filter(
        conversation_id=conversation_id, ended_at=None, taken_by_id=user_id
    ).exists():
        return
    last = (
        Message.objects.filter(conversation_id=conversation_id, direction=Direction.IN)
        .exclude(wa_message_id=None)
        .select_related("clinic")
        .order_by("-created_at", "-id")
        .first()
    )
    if last is None or timezone.now() - last.created_at > WINDOW:
        return
    whatsapp.send_typing(last.clinic, last.wa_message_id)


class LiveConsumer(live.LiveConsumerMixin, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        kwargs = self.scope["url_route"]["kwargs"]
        self.conversation_id = kwargs.get("conversation_id")
        self.joined: list[str] = []
        if user is None or not user.is_authenticated:
            await self.close(code=DENIED)
            return
        allowed = await database_sync_to_async(_authorise)(
            user, kwargs["clinic_id"], self.conversation_id
        )
        if allowed is None:
            await self.close(code=DENIED)
            return
        self.user_id = user.pk
        self.user_name = allowed["name"]
        self.joined = [f"clinic-{allowed['clinic_id']}"]
        if self.conversation_id is not None:
            self.joined.append(f"conversation-{self.conversation_id}")
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.start_watching()
        if self.conversation_id is not None:
            await self._presence("viewer.join")

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        if self.conversation_id is not None and self.joined:
            await self._presence("viewer.leave")
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _presence(self, event: str) -> None:
        group = f"conversation-{self.conversation_id}"
        await self.channel_layer.group_send(
            group,
            {
                "type": live.CONSUMER_MESSAGE_TYPE,
                "group": group,
                "event": event,
                "data": {"user_id": self.user_id, "name": self.user_name},
            },
        )

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict):
            return
        action = content.get("action")
        if action == "resync":
            await self.resync(content.get("since"))
        elif action == "typing" and self.conversation_id is not None:
            typing = bool(content.get("typing"))
            group = f"conversation-{self.conversation_id}"
            await self.channel_layer.group_send(
                group,
                {
                    "type": live.CONSUMER_MESSAGE_TYPE,
                    "group": group,
                    "event": "typing",
                    "data": {
                        "who": "staff",
                        "user_id": self.user_id,
                        "name": self.user_name,
                        "typing": typing,
                    },
                },
            )
            if typing:
                try:
                    await database_sync_to_async(_patient_typing_indicator)(
                        self.conversation_id, self.user_id
                    )
                except Exception:
                    logger.warning(
                        "typing indicator for conversation %s failed", self.conversation_id
                    )
        elif action == "viewer.here" and self.conversation_id is not None:
            await self._presence("viewer.here")
