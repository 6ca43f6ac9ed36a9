"""Django admin, scoped so clinic staff see and edit only the clinics they belong to.

Superusers see everything. Other staff act through their StaffMembership role:
- clinic admins edit their clinic's configuration: doctors, specialties, schedules, blocked periods,
  slot blocking and slot generation;
- receptionists (and admins) view that configuration and manage patients and appointments.
Appointments never change through a raw form save: their fields are read-only and the actions call
clinics.services, which locks, validates and audits. Audit events and holds are records: read-only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from clinics import services
from clinics.identifiers import mask
from clinics.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    BlockedPeriod,
    Clinic,
    Doctor,
    FaqEntry,
    IdentityFailure,
    IdentityLockout,
    Patient,
    PatientPhone,
    Schedule,
    Slot,
    SlotHold,
    SlotStatus,
    Specialty,
    StaffMembership,
)

logger = logging.getLogger(__name__)

RECEPTIONIST = StaffMembership.Role.RECEPTIONIST
ADMIN = StaffMembership.Role.ADMIN
ANY_ROLE = frozenset({RECEPTIONIST, ADMIN})
ADMIN_ONLY = frozenset({ADMIN})
NOBODY: frozenset[str] = frozenset()


def memberships(request: HttpRequest) -> dict[int, str]:
    """Clinic id → role of the request's user; one query per request."""
    cached = getattr(request, "_sophia_memberships", None)
    if cached is None:
        cached = dict(
            StaffMembership.objects.filter(user_id=request.user.pk).values_list("clinic_id", "role")
        )
        request._sophia_memberships = cached
    return cached


def clinic_ids(request: HttpRequest, roles: Iterable[str] = ANY_ROLE) -> list[int]:
    roles = set(roles)
    return [clinic_id for clinic_id, role in memberships(request).items() if role in roles]


def scoped_choices(model: type[models.Model], ids: list[int]) -> QuerySet | None:
    """`model`'s rows that belong to the clinics `ids`, or None when it has no clinic."""
    if model is Clinic:
        return Clinic.objects.filter(pk__in=ids)
    if model is get_user_model():
        return model.objects.filter(memberships__clinic_id__in=ids).distinct()
    if any(f.name == "clinic" for f in model._meta.get_fields()):
        return model._default_manager.filter(clinic_id__in=ids)
    if model is Schedule:
        return Schedule.objects.filter(doctor__clinic_id__in=ids)
    return None


def local_date(clinic: Clinic) -> dt.date:
    return timezone.now().astimezone(clinic.tz).date()


class ClinicConsistentForm(forms.ModelForm):
    """Refuses linking rows of different clinics (a doctor's specialty, a period's doctor…)."""

    def clean(self) -> dict:
        data = super().clean()
        if "clinic" in data and data["clinic"] is not None:
            clinic_id = data["clinic"].pk
        else:
            clinic_id = getattr(self.instance, "clinic_id", None)
        if clinic_id is None:
            return data
        for name, value in list(data.items()):
            if name == "clinic":
                continue
            items = value if isinstance(value, QuerySet | list | tuple) else [value]
            for item in items:
                if isinstance(item, models.Model) and getattr(item, "clinic_id", clinic_id) != (
                    clinic_id
                ):
                    self.add_error(
                        name, _("“%(item)s” belongs to another clinic.") % {"item": item}
                    )
                    break
        return data


class ClinicScopedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose rows, permissions and form choices follow the user's memberships.

    `clinic_lookup` is the path from the model to its clinic ("clinic", "doctor__clinic",
    "pk" for Clinic itself, None for rows that belong to no clinic: superusers only).
    """

    form = ClinicConsistentForm
    clinic_lookup: str | None = "clinic"
    view_roles: frozenset[str] = ANY_ROLE
    add_roles: frozenset[str] = NOBODY
    change_roles: frozenset[str] = NOBODY
    delete_roles: frozenset[str] = NOBODY
    # Records (audit, raw webhooks) stay as they were written, even for superusers.
    superuser_may_add = True
    superuser_may_change = True
    superuser_may_delete = True
    # Large tables: no COUNT(*) of the whole table on every changelist.
    show_full_result_count = False

    def clinic_id_of(self, obj: models.Model) -> int | None:
        if self.clinic_lookup is None:
            return None
        if self.clinic_lookup == "pk":
            return obj.pk
        *path, last = self.clinic_lookup.split("__")
        value = obj
        for part in path:
            value = getattr(value, part, None)
            if value is None:
                return None
        return getattr(value, f"{last}_id", None)

    def role_allows(
        self, request: HttpRequest, roles: frozenset[str], obj: models.Model | None
    ) -> bool:
        if not roles or self.clinic_lookup is None:
            return False
        mine = memberships(request)
        if obj is None:
            return any(role in roles for role in mine.values())
        return mine.get(self.clinic_id_of(obj)) in roles

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        if request.user.is_superuser:
            return True
        return self.role_allows(request, self.view_roles, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        if request.user.is_superuser:
            return self.superuser_may_add
        return self.role_allows(request, self.add_roles, None)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        if request.user.is_superuser:
            return self.superuser_may_change
        return self.role_allows(request, self.change_roles, obj)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        if request.user.is_superuser:
            return self.superuser_may_delete
        return self.role_allows(request, self.delete_roles, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        if self.clinic_lookup is None:
            return queryset.none()
        ids = clinic_ids(request, self.view_roles)
        return queryset.filter(**{f"{self.clinic_lookup}__in": ids})

    def editable_clinic_ids(self, request: HttpRequest) -> list[int]:
        return clinic_ids(request, self.add_roles | self.change_roles)

    def formfield_for_foreignkey(self, db_field, request: HttpRequest, **kwargs):
        if not request.user.is_superuser:
            choices = scoped_choices(db_field.related_model, self.editable_clinic_ids(request))
            kwargs["queryset"] = (
                choices if choices is not None else db_field.related_model.objects.none()
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request: HttpRequest, **kwargs):
        if not request.user.is_superuser:
            choices = scoped_choices(db_field.related_model, self.editable_clinic_ids(request))
            kwargs["queryset"] = (
                choices if choices is not None else db_field.related_model.objects.none()
            )
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        # Staff never move an existing row to another clinic (nor to another clinic's doctor).
        if (
            obj is not None
            and not request.user.is_superuser
            and self.clinic_lookup
            not in (
                None,
                "pk",
            )
        ):
            owner = self.clinic_lookup.split("__")[0]
            if owner not in fields:
                fields += (owner,)
        return fields

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        initial = super().get_changeform_initial_data(request)
        ids = self.editable_clinic_ids(request)
        if self.clinic_lookup == "clinic" and len(ids) == 1:
            initial.setdefault("clinic", ids[0])
        return initial


class ReadOnlyRecordAdmin(ClinicScopedAdmin):
    """Rows written by the system only: everybody who may see them reads them, nobody edits."""

    superuser_may_add = False
    superuser_may_change = False
    superuser_may_delete = False


GENERATE_DESCRIPTION = format_lazy(
    gettext_lazy("Generate slots for the next {days} days"), days=settings.SOPHIA_SLOT_DAYS_AHEAD
)


def generate_slots(
    request: HttpRequest, targets: Iterable[tuple[Clinic, Doctor | None]], may: Callable
) -> None:
    """Run slots_generate for each (clinic, doctor or None) the user may administer."""
    created, refused = 0, 0
    for clinic, doctor in targets:
        if not may(clinic.pk):
            refused += 1
            continue
        today = local_date(clinic)
        created += services.slots_generate(
            clinic=clinic,
            date_from=today,
            date_to=today + dt.timedelta(days=settings.SOPHIA_SLOT_DAYS_AHEAD),
            doctor=doctor,
            actor=services.Actor.staff(request.user),
        )
    messages.success(
        request,
        ngettext("%(count)d new slot created.", "%(count)d new slots created.", created)
        % {"count": created},
    )
    if refused:
        messages.warning(request, _("Only a clinic admin can generate slots; some were skipped."))


class GeneratesSlots:
    """`generate` permission for the slot-generation action: clinic admins and superusers."""

    def has_generate_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or ADMIN in memberships(request).values()

    def may_generate(self, request: HttpRequest) -> Callable[[int], bool]:
        return lambda clinic_id: (
            request.user.is_superuser or memberships(request).get(clinic_id) == ADMIN
        )


@admin.register(Clinic)
class ClinicAdmin(GeneratesSlots, ClinicScopedAdmin):
    clinic_lookup = "pk"
    change_roles = ADMIN_ONLY
    list_display = ["name", "slug", "phone_number_id", "time_zone", "emergency_line"]
    list_display_links = ["name"]
    search_fields = ["name", "slug", "phone_number_id"]
    actions = ["generate_slots_action"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser

    def get_exclude(self, request: HttpRequest, obj=None):
        # The per-clinic WhatsApp token is a secret: only superusers set it.
        return None if request.user.is_superuser else ["whatsapp_access_token"]

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> tuple[str, ...]:
        if request.user.is_superuser:
            return ()
        # Slug and WhatsApp number route messages to the clinic; changing them is an operator's job.
        return ("slug", "phone_number_id", "created_at")

    @admin.action(description=GENERATE_DESCRIPTION, permissions=["generate"])
    def generate_slots_action(self, request: HttpRequest, queryset: QuerySet) -> None:
        generate_slots(request, ((c, None) for c in queryset), self.may_generate(request))


@admin.register(Specialty)
class SpecialtyAdmin(ClinicScopedAdmin):
    add_roles = change_roles = ADMIN_ONLY
    list_display = ["name", "slug", "clinic", "doctor_count"]
    list_filter = [("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["clinic"]
    search_fields = ["name", "slug", "triage_keywords"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(num_doctors=models.Count("doctors"))

    @admin.display(description=gettext_lazy("doctors"), ordering="num_doctors")
    def doctor_count(self, obj: Specialty) -> int:
        return obj.num_doctors


WEEKDAYS = [
    (0, gettext_lazy("Monday")),
    (1, gettext_lazy("Tuesday")),
    (2, gettext_lazy("Wednesday")),
    (3, gettext_lazy("Thursday")),
    (4, gettext_lazy("Friday")),
    (5, gettext_lazy("Saturday")),
    (6, gettext_lazy("Sunday")),
]


class ScheduleForm(ClinicConsistentForm):
    weekdays = forms.TypedMultipleChoiceField(
        label=gettext_lazy("weekdays"),
        choices=WEEKDAYS,
        coerce=int,
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = Schedule
        fields = [
            "doctor",
            "weekdays",
            "start_time",
            "end_time",
            "slot_minutes",
            "valid_from",
            "valid_to",
        ]


def weekday_names(days: list[int]) -> str:
    names = dict(WEEKDAYS)
    return ", ".join(str(names[d])[:3] for d in sorted(days) if d in names)


class ScheduleInline(admin.TabularInline):
    """A doctor's weekly hours, edited on the doctor's page by the clinic's admins."""

    model = Schedule
    form = ScheduleForm
    extra = 0

    def _clinic_admin(self, request: HttpRequest, obj) -> bool:
        if request.user.is_superuser:
            return True
        if obj is None:
            return ADMIN in memberships(request).values()
        return memberships(request).get(obj.clinic_id) == ADMIN

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser or obj is None or obj.clinic_id in memberships(request)

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._clinic_admin(request, obj)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._clinic_admin(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._clinic_admin(request, obj)


@admin.register(Doctor)
class DoctorAdmin(GeneratesSlots, ClinicScopedAdmin):
    add_roles = change_roles = ADMIN_ONLY
    list_display = ["full_name", "clinic", "specialty_names", "active"]
    list_filter = [
        "active",
        ("clinic", admin.RelatedOnlyFieldListFilter),
        ("specialties", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["clinic"]
    search_fields = ["full_name"]
    filter_horizontal = ["specialties"]
    inlines = [ScheduleInline]
    actions = ["generate_slots_action"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("specialties")

    @admin.display(description=gettext_lazy("specialties"))
    def specialty_names(self, obj: Doctor) -> str:
        return ", ".join(s.name for s in obj.specialties.all())

    @admin.action(description=GENERATE_DESCRIPTION, permissions=["generate"])
    def generate_slots_action(self, request: HttpRequest, queryset: QuerySet) -> None:
        doctors = queryset.select_related("clinic")
        generate_slots(request, ((d.clinic, d) for d in doctors), self.may_generate(request))


@admin.register(Schedule)
class ScheduleAdmin(ClinicScopedAdmin):
    form = ScheduleForm
    clinic_lookup = "doctor__clinic"
    add_roles = change_roles = delete_roles = ADMIN_ONLY
    list_display = [
        "doctor",
        "days",
        "start_time",
        "end_time",
        "slot_minutes",
        "valid_from",
        "valid_to",
    ]
    list_filter = [
        ("doctor__clinic", admin.RelatedOnlyFieldListFilter),
        ("doctor", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["doctor"]
    search_fields = ["doctor__full_name"]

    @admin.display(description=gettext_lazy("weekdays"))
    def days(self, obj: Schedule) -> str:
        return weekday_names(obj.weekdays)


@admin.register(BlockedPeriod)
class BlockedPeriodAdmin(ClinicScopedAdmin):
    add_roles = change_roles = delete_roles = ADMIN_ONLY
    list_display = ["starts_at", "ends_at", "clinic", "doctor", "kind", "reason"]
    list_filter = [
        ("clinic", admin.RelatedOnlyFieldListFilter),
        ("doctor", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["clinic", "doctor"]
    search_fields = ["reason", "doctor__full_name"]
    date_hierarchy = "starts_at"
    # The kind follows from the doctor (none: a clinic-wide holiday); hand blocks come from the
    # console's calendar.
    exclude = ["kind"]

    def save_model(self, request: HttpRequest, obj: BlockedPeriod, form, change: bool) -> None:
        if obj.kind != BlockedPeriod.Kind.BLOCK:
            obj.kind = (
                BlockedPeriod.Kind.HOLIDAY if obj.doctor_id is None else BlockedPeriod.Kind.ABSENCE
            )
        super().save_model(request, obj, form, change)
        # Slots generated before the period was entered must stop being offered: slots_generate
        # blocks free slots inside blocked periods. Booked ones stay: cancelling a patient's
        # appointment is staff's decision, through the appointment actions.
        clinic = obj.clinic
        today = local_date(clinic)
        date_from = max(obj.starts_at.astimezone(clinic.tz).date(), today)
        date_to = min(
            obj.ends_at.astimezone(clinic.tz).date(),
            today + dt.timedelta(days=settings.SOPHIA_SLOT_DAYS_AHEAD),
        )
        if date_from <= date_to:
            services.slots_generate(
                clinic=clinic,
                date_from=date_from,
                date_to=date_to,
                doctor=obj.doctor,
                actor=services.Actor.staff(request.user),
            )
        booked = Appointment.objects.filter(
            clinic_id=obj.clinic_id,
            start_at__lt=obj.ends_at,
            end_at__gt=obj.starts_at,
            status__in=[AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED],
        )
        if obj.doctor_id:
            booked = booked.filter(doctor_id=obj.doctor_id)
        count = booked.count()
        if count:
            messages.warning(
                request,
                ngettext(
                    "%(count)d appointment falls inside this period; cancel or move it.",
                    "%(count)d appointments fall inside this period; cancel or move them.",
                    count,
                )
                % {"count": count},
            )


@admin.register(FaqEntry)
class FaqEntryAdmin(ClinicScopedAdmin):
    """What the bot answers about the clinic (price, insurance, parking…): the clinic's admins
    keep it true; receptionists read it to know what patients were told."""

    add_roles = change_roles = delete_roles = ADMIN_ONLY
    list_display = ["question", "clinic", "active", "position"]
    list_editable = ["active", "position"]
    list_filter = [("clinic", admin.RelatedOnlyFieldListFilter), "active"]
    list_select_related = ["clinic"]
    search_fields = ["question", "keywords", "answer"]


@admin.register(Slot)
class SlotAdmin(ClinicScopedAdmin):
    """Slots come from schedules; admins only block or unblock free ones."""

    change_roles = ADMIN_ONLY
    superuser_may_add = False
    superuser_may_delete = False
    list_display = ["start_at", "end_at", "doctor", "status", "held_until"]
    list_filter = [
        "status",
        ("clinic", admin.RelatedOnlyFieldListFilter),
        ("doctor", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["doctor"]
    search_fields = ["doctor__full_name"]
    date_hierarchy = "start_at"
    readonly_fields = ["clinic", "doctor", "start_at", "end_at", "status", "held_until"]
    actions = ["block_slots", "unblock_slots"]

    def _set_status(self, request: HttpRequest, queryset: QuerySet, old: str, new: str) -> int:
        ids = clinic_ids(request, ADMIN_ONLY)
        if not request.user.is_superuser:
            queryset = queryset.filter(clinic_id__in=ids)
        # A conditional UPDATE: a slot booked or held meanwhile keeps its status.
        return Slot.objects.filter(pk__in=queryset.values("pk"), status=old).update(status=new)

    @admin.action(description=gettext_lazy("Block selected free slots"), permissions=["change"])
    def block_slots(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_status(request, queryset, SlotStatus.FREE, SlotStatus.BLOCKED)
        messages.success(
            request,
            ngettext("%(count)d slot blocked.", "%(count)d slots blocked.", count)
            % {"count": count},
        )

    @admin.action(
        description=gettext_lazy("Unblock selected blocked slots"), permissions=["change"]
    )
    def unblock_slots(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = self._set_status(request, queryset, SlotStatus.BLOCKED, SlotStatus.FREE)
        messages.success(
            request,
            ngettext("%(count)d slot unblocked.", "%(count)d slots unblocked.", count)
            % {"count": count},
        )


@admin.register(SlotHold)
class SlotHoldAdmin(ReadOnlyRecordAdmin):
    clinic_lookup = "slot__clinic"
    list_display = ["slot", "holder", "expires_at", "released_at", "created_at"]
    list_select_related = ["slot__doctor"]
    list_filter = [("slot__clinic", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["holder"]


class AppointmentInline(admin.TabularInline):
    """A patient's appointments on the patient page; changes go through the appointment actions."""

    model = Appointment
    fk_name = "patient"
    fields = ["start_at", "doctor", "specialty", "status", "source"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    ordering = ["-start_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("doctor", "specialty")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser or obj is None or obj.clinic_id in memberships(request)


class PatientPhoneInline(admin.TabularInline):
    """The numbers verified for the patient besides the one on file; removed from their list."""

    model = PatientPhone
    fk_name = "patient"
    fields = ["number", "how", "verified_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    @admin.display(description=gettext_lazy("WhatsApp number"))
    def number(self, obj: PatientPhone) -> str:
        return obj.wa_id

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser or obj is None or obj.clinic_id in memberships(request)


@admin.register(Patient)
class PatientAdmin(ClinicScopedAdmin):
    add_roles = change_roles = ANY_ROLE
    superuser_may_delete = True
    list_display = [
        "full_name",
        "document_masked",
        "birth_date",
        "whatsapp_masked",
        "wants_reminders",
        "clinic",
    ]
    list_filter = [("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["clinic"]
    # Exact matches only on identifiers: a partial document search would enumerate patients.
    search_fields = ["full_name", "=document", "=whatsapp_id"]
    # Reminders stop and resume through clinics.services (audited), never a raw form save.
    readonly_fields = ["created_at", "reminders_opted_out_at"]
    inlines = [PatientPhoneInline, AppointmentInline]
    actions = ["resume_reminders"]

    @admin.action(description=gettext_lazy("Resume appointment reminders"))
    def resume_reminders(self, request: HttpRequest, queryset: QuerySet[Patient]) -> None:
        resumed = 0
        for patient in queryset.exclude(reminders_opted_out_at=None).select_related("clinic"):
            services.patient_set_reminders(
                clinic=patient.clinic,
                patient=patient,
                enabled=True,
                actor=services.Actor.staff(request.user),
            )
            resumed += 1
        messages.success(
            request,
            ngettext(
                "Reminders resumed for %(count)d patient.",
                "Reminders resumed for %(count)d patients.",
                resumed,
            )
            % {"count": resumed},
        )

    @admin.display(description=gettext_lazy("reminders"), boolean=True)
    def wants_reminders(self, obj: Patient) -> bool:
        return obj.reminders_opted_out_at is None

    @admin.display(description=gettext_lazy("document number"))
    def document_masked(self, obj: Patient) -> str:
        return obj.masked_document

    @admin.display(description=gettext_lazy("WhatsApp number"))
    def whatsapp_masked(self, obj: Patient) -> str:
        return mask(obj.whatsapp_id)


@admin.register(Appointment)
class AppointmentAdmin(ClinicScopedAdmin):
    """Read-only fields; every change is an action that goes through clinics.services."""

    change_roles = ANY_ROLE
    superuser_may_add = False
    superuser_may_delete = False
    list_display = ["start_at", "patient", "doctor", "specialty", "status", "source"]
    list_filter = [
        "status",
        "source",
        ("clinic", admin.RelatedOnlyFieldListFilter),
        ("doctor", admin.RelatedOnlyFieldListFilter),
        ("specialty", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["patient", "doctor", "specialty"]
    search_fields = ["patient__full_name", "=patient__document", "doctor__full_name"]
    date_hierarchy = "start_at"
    fields = [
        "clinic",
        "patient",
        "doctor",
        "specialty",
        "start_at",
        "end_at",
        "status",
        "source",
        "patient_notes",
        "cancel_reason",
        "rescheduled_from",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields
    actions = ["confirm", "mark_attended", "mark_no_show", "cancel"]

    def _run(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        name: str,
        call: Callable[[Appointment, services.Actor], object],
    ) -> None:
        actor = services.Actor.staff(request.user)
        done, refused = 0, 0
        for appointment in queryset.select_related("clinic"):
            if not self.has_change_permission(request, appointment):
                refused += 1
                continue
            try:
                call(appointment, actor)
            except services.BookingError as exc:
                refused += 1
                logger.info(
                    "admin %s refused for appointment %s: %s", name, appointment.pk, exc.code
                )
            else:
                done += 1
        if done:
            messages.success(
                request,
                ngettext("%(count)d appointment updated.", "%(count)d appointments updated.", done)
                % {"count": done},
            )
        if refused:
            messages.warning(
                request,
                ngettext(
                    "%(count)d appointment could not be changed (its status does not allow it).",
                    "%(count)d appointments could not be changed (their status does not allow it).",
                    refused,
                )
                % {"count": refused},
            )

    def _set_status(self, request: HttpRequest, queryset: QuerySet, status: str) -> None:
        self._run(
            request,
            queryset,
            status,
            lambda a, actor: services.appointment_set_status(
                clinic=a.clinic, appointment_id=a.pk, status=status, actor=actor
            ),
        )

    @admin.action(description=gettext_lazy("Confirm selected appointments"), permissions=["change"])
    def confirm(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_status(request, queryset, AppointmentStatus.CONFIRMED)

    @admin.action(description=gettext_lazy("Mark as attended"), permissions=["change"])
    def mark_attended(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_status(request, queryset, AppointmentStatus.ATTENDED)

    @admin.action(description=gettext_lazy("Mark as no-show"), permissions=["change"])
    def mark_no_show(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_status(request, queryset, AppointmentStatus.NO_SHOW)

    @admin.action(description=gettext_lazy("Cancel selected appointments"), permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        reason = _("Cancelled by clinic staff")
        self._run(
            request,
            queryset,
            "cancel",
            lambda a, actor: services.appointment_cancel(
                clinic=a.clinic, appointment_id=a.pk, actor=actor, reason=reason
            ),
        )


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyRecordAdmin):
    list_display = [
        "at",
        "clinic",
        "actor_type",
        "actor_label",
        "action",
        "object_type",
        "object_id",
    ]
    list_filter = [
        "actor_type",
        "action",
        "object_type",
        ("clinic", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["clinic"]
    search_fields = ["=object_id", "actor_label", "action"]
    date_hierarchy = "at"


@admin.register(StaffMembership)
class StaffMembershipAdmin(ClinicScopedAdmin):
    """Clinic admins see who works in their clinic; superusers grant access."""

    view_roles = ADMIN_ONLY
    list_display = ["user", "clinic", "role"]
    list_filter = ["role", ("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["user", "clinic"]
    search_fields = ["user__username", "user__first_name", "user__last_name"]


class StaffActionAdmin(ReadOnlyRecordAdmin):
    """Read-only rows with one staff action each (any role of the row's clinic)."""

    def has_staff_action_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or bool(memberships(request))

    def _each(
        self, request: HttpRequest, queryset: QuerySet, call: Callable[[models.Model], object]
    ) -> int:
        """Run `call` for each row the user may see; how many it changed."""
        done, refused = 0, 0
        for obj in queryset.select_related("clinic"):
            if not self.has_view_permission(request, obj):
                refused += 1
                continue
            try:
                done += bool(call(obj))
            except services.BookingError as exc:
                refused += 1
                logger.info("admin action refused for %s %s: %s", obj._meta, obj.pk, exc.code)
        if refused:
            messages.warning(
                request,
                ngettext(
                    "%(count)d row could not be changed.",
                    "%(count)d rows could not be changed.",
                    refused,
                )
                % {"count": refused},
            )
        return done


@admin.register(PatientPhone)
class PatientPhoneAdmin(StaffActionAdmin):
    list_display = ["patient", "number_masked", "how", "verified_at", "clinic"]
    list_filter = ["how", ("clinic", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["patient", "clinic"]
    search_fields = ["patient__full_name", "=patient__document", "=wa_id"]
    actions = ["remove_numbers"]

    @admin.display(description=gettext_lazy("WhatsApp number"))
    def number_masked(self, obj: PatientPhone) -> str:
        return mask(obj.wa_id)

    @admin.action(
        description=gettext_lazy("Remove selected numbers from their patients"),
        permissions=["staff_action"],
    )
    def remove_numbers(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = services.Actor.staff(request.user)
        done = self._each(
            request,
            queryset.select_related("patient"),
            lambda phone: services.patient_phone_remove(
                clinic=phone.clinic, patient=phone.patient, wa_id=phone.wa_id, actor=actor
            ),
        )
        messages.success(
            request,
            ngettext("%(count)d number removed.", "%(count)d numbers removed.", done)
            % {"count": done},
        )


@admin.register(IdentityLockout)
class IdentityLockoutAdmin(StaffActionAdmin):
    list_display = ["locked_at", "patient", "number_masked", "is_active", "lifted_at", "lifted_by"]
    list_filter = [
        ("lifted_at", admin.EmptyFieldListFilter),
        ("clinic", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["patient", "clinic", "lifted_by"]
    search_fields = ["patient__full_name", "=patient__document", "=wa_id"]
    actions = ["lift"]

    @admin.display(description=gettext_lazy("WhatsApp number"))
    def number_masked(self, obj: IdentityLockout) -> str:
        return mask(obj.wa_id)

    @admin.display(description=gettext_lazy("active"), boolean=True)
    def is_active(self, obj: IdentityLockout) -> bool:
        return obj.active

    @admin.action(description=gettext_lazy("Lift selected lock-outs"), permissions=["staff_action"])
    def lift(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = services.Actor.staff(request.user)
        done = self._each(
            request,
            queryset.filter(lifted_at=None),
            lambda lockout: services.identity_lockout_lift(
                clinic=lockout.clinic, lockout_id=lockout.pk, actor=actor
            ),
        )
        messages.success(
            request,
            ngettext("%(count)d lock-out lifted.", "%(count)d lock-outs lifted.", done)
            % {"count": done},
        )


@admin.register(IdentityFailure)
class IdentityFailureAdmin(ReadOnlyRecordAdmin):
    list_display = ["at", "patient", "number_masked", "cleared_at", "clinic"]
    list_filter = [
        ("cleared_at", admin.EmptyFieldListFilter),
        ("clinic", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["patient", "clinic"]
    search_fields = ["patient__full_name", "=patient__document", "=wa_id"]

    @admin.display(description=gettext_lazy("WhatsApp number"))
    def number_masked(self, obj: IdentityFailure) -> str:
        return mask(obj.wa_id)
