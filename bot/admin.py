"""Conversations and messages in the Django admin, scoped like the clinics admin.

Staff read these here; taking over a chat and replying happen in the live inbox, so the admin
never edits a conversation's flow state for them. Messages and raw webhooks are records.
"""

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy

from bot.models import Conversation, Message, PeriodicJob, WebhookEvent
from clinics.admin import ADMIN_ONLY, ClinicScopedAdmin, ReadOnlyRecordAdmin
from clinics.identifiers import mask


@admin.register(Conversation)
class ConversationAdmin(ClinicScopedAdmin):
    superuser_may_add = False
    list_display = [
        "wa_masked",
        "contact_name",
        "patient",
        "state",
        "mode",
        "needs_staff",
        "handoff_reason",
        "urgent",
        "last_activity_at",
        "clinic",
    ]
    list_filter = [
        "mode",
        "needs_staff",
        "handoff_reason",
        "urgent",
        "state",
        ("clinic", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["clinic", "patient"]
    search_fields = ["contact_name", "patient__full_name", "=wa_id"]
    date_hierarchy = "last_activity_at"
    raw_id_fields = ["patient", "assigned_to"]
    readonly_fields = ["created_at", "updated_at", "llm_prompt_tokens", "llm_completion_tokens"]

    @admin.display(description=gettext_lazy("WhatsApp number"), ordering="wa_id")
    def wa_masked(self, obj: Conversation) -> str:
        return mask(obj.wa_id)


@admin.register(Message)
class MessageAdmin(ReadOnlyRecordAdmin):
    list_display = ["created_at", "conversation", "direction", "kind", "status", "short_text"]
    list_filter = ["direction", "status", "kind", ("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["conversation__clinic"]
    search_fields = ["=conversation__id", "=wa_message_id"]
    date_hierarchy = "created_at"

    @admin.display(description=gettext_lazy("text"))
    def short_text(self, obj: Message) -> str:
        return obj.text if len(obj.text) <= 60 else obj.text[:59] + "…"


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyRecordAdmin):
    """Raw payloads (phone numbers, message text): clinic admins and superusers only."""

    view_roles = ADMIN_ONLY
    list_display = ["received_at", "clinic", "signature_valid", "processed_at", "short_error"]
    list_filter = ["signature_valid", ("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["clinic"]
    date_hierarchy = "received_at"

    @admin.display(description=gettext_lazy("error"))
    def short_error(self, obj: WebhookEvent) -> str:
        return obj.error[:80]


@admin.register(PeriodicJob)
class PeriodicJobAdmin(ClinicScopedAdmin):
    """Belongs to no clinic: superusers only (e.g. to run a job now by moving next_run_at)."""

    clinic_lookup = None
    superuser_may_add = False
    list_display = ["name", "next_run_at", "last_run_at"]
    readonly_fields = ["name", "last_run_at"]

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
