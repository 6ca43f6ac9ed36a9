"""Conversations and every WhatsApp message in and out (DESIGN §3, §6, §7)."""

from collections.abc import Iterable

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from clinics.identifiers import mask
from clinics.models import Clinic, Patient


class WebhookEvent(models.Model):
    """A raw webhook POST exactly as received, kept before the webhook answers."""

    received_at = models.DateTimeField(default=timezone.now, verbose_name=_("received at"))
    body = models.TextField(verbose_name=_("body"))
    signature_valid = models.BooleanField(default=False, verbose_name=_("valid signature"))
    clinic = models.ForeignKey(
        Clinic,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="webhook_events",
        verbose_name=_("clinic"),
    )
    processed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("processed at"))
    error = models.TextField(blank=True, verbose_name=_("error"))

    class Meta:
        verbose_name = _("webhook event")
        verbose_name_plural = _("webhook events")
        indexes = [models.Index(fields=["received_at"], name="webhook_received")]

    def __str__(self) -> str:
        return f"webhook {self.pk} {self.received_at:%Y-%m-%d %H:%M:%S}"


class ConversationMode(models.TextChoices):
    BOT = "bot", _("bot")
    HUMAN = "human", _("staff")


class HandoffReason(models.TextChoices):
    """Why a conversation waits for staff (the console's handoff card); bot.engine records it."""

    ASKED_FOR_PERSON = "asked_for_person", _("asked for a person")
    RED_FLAG = "red_flag", _("red flag")
    IDENTITY_LOCKOUT = "identity_lockout", _("identity check failed")
    RATE_LIMIT = "rate_limit", _("too many messages")
    UNSURE = "unsure", _("the bot was unsure")


class Conversation(models.Model):
    """One per patient phone per clinic. `state` and `context` are the engine's memory."""

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="conversations", verbose_name=_("clinic")
    )
    wa_id = models.CharField(_("WhatsApp number"), max_length=20)
    contact_name = models.CharField(_("WhatsApp profile name"), max_length=200, blank=True)
    patient = models.ForeignKey(
        Patient,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="conversations",
        verbose_name=_("patient"),
    )
    state = models.CharField(max_length=32, default="START", verbose_name=_("state"))
    context = models.JSONField(default=dict, blank=True, verbose_name=_("context"))
    mode = models.CharField(
        max_length=8, choices=ConversationMode.choices, default="bot", verbose_name=_("mode")
    )
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="assigned_conversations",
        verbose_name=_("assigned to"),
    )
    needs_staff = models.BooleanField(_("asked for a person"), default=False)
    handoff_reason = models.CharField(
        _("handoff reason"),
        max_length=20,
        choices=HandoffReason.choices,
        blank=True,
        default="",
        # Rows inserted outside the ORM (tests, a shell, a restore) get the same empty reason.
        db_default="",
    )
    urgent = models.BooleanField(_("urgent"), default=False)
    rate_limited_until = models.DateTimeField(
        null=True, blank=True, verbose_name=_("rate limited until")
    )
    last_inbound_at = models.DateTimeField(
        null=True, blank=True, verbose_name=_("last inbound message")
    )
    last_activity_at = models.DateTimeField(default=timezone.now, verbose_name=_("last activity"))
    closed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("closed at"))
    llm_prompt_tokens = models.PositiveIntegerField(default=0, verbose_name=_("LLM prompt tokens"))
    llm_completion_tokens = models.PositiveIntegerField(
        default=0, verbose_name=_("LLM completion tokens")
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")
        ordering = ["-last_activity_at"]
        constraints = [
            models.UniqueConstraint(fields=["clinic", "wa_id"], name="conversation_unique_phone")
        ]
        indexes = [
            models.Index(fields=["clinic", "-last_activity_at"], name="conv_clinic_activity"),
            models.Index(
                fields=["last_activity_at"], name="conv_open_activity", condition=Q(closed_at=None)
            ),
            models.Index(fields=["patient"], name="conv_patient"),
        ]

    def __str__(self) -> str:
        return f"conversation {self.pk} ({self.clinic.slug})"

    def save(self, *args, **kwargs) -> None:
        fields = kwargs.get("update_fields")
        mirrored = self.mirror_handoff_reason(fields if fields is not None else ())
        if fields is not None:
            kwargs["update_fields"] = mirrored
        super().save(*args, **kwargs)

    def mirror_handoff_reason(self, update_fields: Iterable[str]) -> tuple[str, ...]:
        """Before a save: the handoff column mirrors the context; the fields to save with it.

        The engine writes why it handed the chat over into its context (bot.engine
        StepResult.handoff_reason, Snapshot.data["handoff_reason"]); the column mirrors it so
        staff can list and filter by it, and clears when staff hand the chat back. The turn
        saves with sophia_web.model_rows, so this is called by `save` and by the turn.
        """
        fields = tuple(update_fields)
        context = self.context if isinstance(self.context, dict) else {}
        reason = context.get("handoff_reason", "")
        known = reason in HandoffReason.values or reason == ""
        if known and reason != self.handoff_reason and (reason or not self.needs_staff):
            self.handoff_reason = reason
            if "context" in fields and "handoff_reason" not in fields:
                fields += ("handoff_reason",)
        return fields

    @property
    def session_id(self) -> str:
        """The seed's session id: the patient's WhatsApp number (`sophia:*:{session_id}`).

        Redis values keyed by it carry the clinic id, so one phone talking to two clinics never
        reads the other clinic's cached state.
        """
        return self.wa_id

    @property
    def masked_wa_id(self) -> str:
        return mask(self.wa_id)


class Direction(models.TextChoices):
    IN = "in", _("inbound")
    OUT = "out", _("outbound")


class MessageStatus(models.TextChoices):
    # inbound
    RECEIVED = "received", _("received")
    PROCESSED = "processed", _("processed")
    # outbound, in delivery order; `rank` keeps statuses from moving backwards
    QUEUED = "queued", _("queued")
    SENDING = "sending", _("sending")
    SENT = "sent", _("sent")
    DELIVERED = "delivered", _("delivered")
    READ = "read", _("read")
    FAILED = "failed", _("failed")
    # A bot reply never released because staff took the conversation over (human mode).
    SUPPRESSED = "suppressed", _("not sent (staff took over)")


OUTBOUND_STATUS_RANK = {
    MessageStatus.QUEUED: 0,
    MessageStatus.SENDING: 1,
    MessageStatus.SENT: 2,
    MessageStatus.DELIVERED: 3,
    MessageStatus.READ: 4,
}


class Message(models.Model):
    """Every message in and out. Outbound rows are the outbox the worker sends and retries."""

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="messages", verbose_name=_("clinic")
    )
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.CASCADE,
        related_name="messages",
        verbose_name=_("conversation"),
    )
    direction = models.CharField(
        max_length=3, choices=Direction.choices, verbose_name=_("direction")
    )
    # WhatsApp's id: unique, so a redelivered inbound message is stored once.
    wa_message_id = models.CharField(
        max_length=128, unique=True, null=True, blank=True, verbose_name=_("WhatsApp message id")
    )
    kind = models.CharField(max_length=24, default="text", verbose_name=_("kind"))
    text = models.TextField(blank=True, verbose_name=_("text"))
    # Inbound: the message object as received. Outbound: the Graph API request body.
    payload = models.JSONField(default=dict, blank=True, verbose_name=_("payload"))
    status = models.CharField(
        max_length=10, choices=MessageStatus.choices, verbose_name=_("status")
    )
    wa_timestamp = models.DateTimeField(null=True, blank=True, verbose_name=_("WhatsApp timestamp"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    processed_at = models.DateTimeField(null=True, blank=True, verbose_name=_("processed at"))
    # Outbox bookkeeping.
    attempts = models.PositiveSmallIntegerField(default=0, verbose_name=_("attempts"))
    next_attempt_at = models.DateTimeField(null=True, blank=True, verbose_name=_("next attempt"))
    error_code = models.CharField(max_length=16, blank=True, verbose_name=_("error code"))
    error = models.TextField(blank=True, verbose_name=_("error"))
    sent_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sent_messages",
        verbose_name=_("sent by"),
    )
    webhook_event = models.ForeignKey(
        WebhookEvent,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="messages",
        verbose_name=_("webhook event"),
    )

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at", "id"], name="msg_conversation"),
            # Turns waiting to run: inbound messages not yet processed.
            models.Index(
                fields=["conversation", "id"],
                name="msg_inbound_pending",
                condition=Q(direction="in", status="received"),
            ),
            # The outbox: outbound messages still to send, by due time.
            models.Index(
                fields=["next_attempt_at"],
                name="msg_outbox_due",
                condition=Q(direction="out", status__in=["queued", "sending"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.kind} {self.status}"


class Takeover(models.Model):
    """A staff member holding a conversation: no bot reply is released while one is open.

    Its own table rather than only Conversation.mode: a bot turn keeps the conversation row
    locked (FOR NO KEY UPDATE) while it runs, and a takeover must commit *during* that turn so
    the outbox (bot.whatsapp) refuses that turn's replies. Conversation.mode/assigned_to mirror
    the open takeover for the inbox once the turn lets go of the row.
    """

    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.CASCADE,
        related_name="takeovers",
        verbose_name=_("conversation"),
    )
    taken_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        related_name="+",
        verbose_name=_("taken by"),
    )
    taken_at = models.DateTimeField(default=timezone.now, verbose_name=_("taken at"))
    ended_at = models.DateTimeField(null=True, blank=True, verbose_name=_("handed back at"))
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("handed back by"),
    )

    class Meta:
        verbose_name = _("takeover")
        verbose_name_plural = _("takeovers")
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"], condition=Q(ended_at=None), name="takeover_one_open"
            )
        ]

    def __str__(self) -> str:
        return f"takeover of conversation {self.conversation_id}"


class PeriodicJob(models.Model):
    """When each periodic job next runs; claimed by a conditional UPDATE so one worker runs it."""

    name = models.CharField(max_length=64, unique=True, verbose_name=_("name"))
    next_run_at = models.DateTimeField(default=timezone.now, verbose_name=_("next run"))
    last_run_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last run"))

    class Meta:
        verbose_name = _("periodic job")
        verbose_name_plural = _("periodic jobs")

    def __str__(self) -> str:
        return self.name
