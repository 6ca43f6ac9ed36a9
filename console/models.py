"""What the receptionist's console adds to a conversation: private notes and the clinic's
approved WhatsApp templates (who holds a conversation is bot.models.Takeover)."""

import re

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from bot.models import Conversation
from clinics.models import Clinic

TEMPLATE_VARIABLE = re.compile(r"\{\{\s*(\d+)\s*\}\}")


class Note(models.Model):
    """A private note on a conversation: staff only, never sent."""

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="+", verbose_name=_("clinic")
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="notes", verbose_name=_("conversation")
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        related_name="+",
        verbose_name=_("author"),
    )
    text = models.TextField(_("text"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("private note")
        verbose_name_plural = _("private notes")
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["conversation", "created_at"], name="note_conversation")]

    def __str__(self) -> str:
        return f"note {self.pk} on conversation {self.conversation_id}"


class ReplyTemplate(models.Model):
    """A WhatsApp message template the clinic has had approved by Meta.

    Outside the 24-hour window WhatsApp delivers only these. `body` is the approved text with
    its variables as {{1}}, {{2}}…; staff fill them in the console.
    """

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="reply_templates", verbose_name=_("clinic")
    )
    name = models.CharField(_("template name (as approved)"), max_length=512)
    language = models.CharField(_("language code"), max_length=16, default="es")
    label = models.CharField(_("label shown to staff"), max_length=120)
    body = models.TextField(_("approved text"), help_text=_("Variables as {{1}}, {{2}}…"))
    active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("approved template")
        verbose_name_plural = _("approved templates")
        ordering = ["label"]
        constraints = [
            models.UniqueConstraint(
                fields=["clinic", "name", "language"], name="reply_template_unique"
            )
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def variable_count(self) -> int:
        numbers = [int(n) for n in TEMPLATE_VARIABLE.findall(self.body)]
        return max(numbers, default=0)

    @property
    def variable_range(self) -> range:
        return range(1, self.variable_count + 1)

    def render(self, values: list[str]) -> str:
        return TEMPLATE_VARIABLE.sub(
            lambda m: values[int(m.group(1)) - 1] if int(m.group(1)) <= len(values) else m.group(0),
            self.body,
        )
