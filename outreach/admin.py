"""Reminders and the waitlist in the Django admin, scoped like the clinics admin.

Clinic admins edit their clinic's reminder and waitlist settings; staff see reminders and
offers (records) and take patients off the waitlist through the service (never a raw delete).
"""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy, ngettext

from clinics.admin import ADMIN_ONLY, ANY_ROLE, ClinicScopedAdmin, ReadOnlyRecordAdmin
from outreach import waitlist
from outreach.models import OutreachSettings, ReminderDispatch, WaitlistEntry, WaitlistOffer


@admin.register(OutreachSettings)
class OutreachSettingsAdmin(ClinicScopedAdmin):
    add_roles = change_roles = ADMIN_ONLY
    list_display = [
        "clinic",
        "reminders_enabled",
        "hours_before",
        "second_hours_before",
        "template_name",
        "window_start",
        "window_end",
        "waitlist_batch",
        "waitlist_offer_minutes",
    ]


@admin.register(ReminderDispatch)
class ReminderDispatchAdmin(ReadOnlyRecordAdmin):
    list_display = ["due_at", "appointment", "ordinal", "status", "skip_reason", "response"]
    list_filter = ["status", "response", ("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["appointment__patient"]
    date_hierarchy = "due_at"
    raw_id_fields = ["appointment", "conversation", "message"]


@admin.register(WaitlistEntry)
class WaitlistEntryAdmin(ClinicScopedAdmin):
    superuser_may_add = superuser_may_change = superuser_may_delete = False
    list_display = ["created_at", "patient", "specialty", "doctor", "part_of_day", "status"]
    list_filter = [
        "status",
        "specialty",
        "part_of_day",
        ("clinic", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["patient", "specialty", "doctor"]
    raw_id_fields = ["patient", "conversation", "appointment"]
    actions = ["remove"]

    def has_remove_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or self.role_allows(request, ANY_ROLE, None)

    @admin.action(description=gettext_lazy("Take off the waitlist"), permissions=["remove"])
    def remove(self, request: HttpRequest, queryset: QuerySet[WaitlistEntry]) -> None:
        removed = 0
        for entry in queryset.filter(status=WaitlistEntry.Status.WAITING):
            waitlist.waitlist_remove(clinic=entry.clinic, entry_id=entry.pk)
            removed += 1
        messages.success(
            request,
            ngettext(
                "%(count)d patient taken off the waitlist.",
                "%(count)d patients taken off the waitlist.",
                removed,
            )
            % {"count": removed},
        )


@admin.register(WaitlistOffer)
class WaitlistOfferAdmin(ReadOnlyRecordAdmin):
    list_display = ["created_at", "entry", "slot", "status", "expires_at", "responded_at"]
    list_filter = ["status", ("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["entry__patient", "entry__specialty", "slot__doctor"]
    raw_id_fields = ["entry", "slot", "message"]
