"""The waitlist (issue 10): patients waiting for a specialty, offered freed slots by WhatsApp.

- `waitlist_join()` — the bot (no slot the patient can take) or staff put a patient on a
  specialty's list, optionally for one doctor or one part of the day.
- `waitlist_offer_slot()` — a slot became bookable (slot.liberado, new slots, an absence
  removed, a hold expired): the longest-waiting matching patients are offered it, a few at a
  time (`OutreachSettings.waitlist_batch`). Only slots freed or created after the patient joined
  are offered: what was free when they joined they had already seen.
- `waitlist_accept()` — the first to accept books through clinics.services; the others' pending
  offers turn "taken" and they are told kindly. Accepts serialise on the slot's row lock, so two
  patients racing for it get exactly one appointment.
- `waitlist_sweep()` (periodic) — unanswered offers expire and the slot moves on to the next
  patients; waiting patients are matched against slots that appeared meanwhile.

Messages are queued in the outbox inside the caller's transaction and delivered after commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.tasks import task
from django.utils import timezone

from bot import whatsapp
from bot.models import Conversation, Message
from clinics import selectors, services
from clinics.models import (
    OCCUPYING_STATUSES,
    Appointment,
    AppointmentSource,
    Clinic,
    Doctor,
    Patient,
    Slot,
    Specialty,
)
from outreach import replies
from outreach.models import OutreachSettings, PartOfDay, WaitlistEntry, WaitlistOffer
from outreach.reminders import clinic_settings
from sophia_web import metrics

logger = logging.getLogger(__name__)

# Outside WhatsApp's 24-hour window only an approved template may be sent.
SESSION_WINDOW = dt.timedelta(hours=24)
SWEEP_ENTRIES = 200
MATCH_PAGES = 3


def _deliver_after_commit(message_ids: Iterable[int]) -> None:
    ids = [i for i in message_ids if i]
    if not ids:
        return

    def deliver() -> None:
        try:
            whatsapp.deliver_many(ids)
        except Exception:
            logger.exception("waitlist messages %s: delivery failed; the outbox retries", ids)

    transaction.on_commit(deliver, robust=True)


# --- joining and leaving ---------------------------------------------------------------------


def waitlist_join(
    *,
    clinic: Clinic,
    patient: Patient,
    specialty: Specialty,
    doctor: Doctor | None = None,
    part_of_day: str = PartOfDay.ANY,
    conversation: Conversation | None = None,
    source: str = "bot",
) -> tuple[WaitlistEntry, bool]:
    """Put the patient on the specialty's list (or update their wishes); (entry, created)."""
    if patient.clinic_id != clinic.pk or specialty.clinic_id != clinic.pk:
        raise services.WrongClinic("the patient or specialty belongs to another clinic")
    if doctor is not None and (
        doctor.clinic_id != clinic.pk or not doctor.specialties.filter(pk=specialty.pk).exists()
    ):
        raise services.InvalidInput("the doctor does not see that specialty here")
    if part_of_day not in PartOfDay.values:
        raise services.InvalidInput(f"part_of_day must be one of {PartOfDay.values}")
    if conversation is not None and conversation.clinic_id != clinic.pk:
        raise services.WrongClinic("the conversation belongs to another clinic")
    wishes = {
        "doctor": doctor,
        "part_of_day": part_of_day,
        "conversation": conversation,
    }
    with transaction.atomic():
        entry = (
            WaitlistEntry.objects.select_for_update()
            .filter(patient=patient, specialty=specialty, status=WaitlistEntry.Status.WAITING)
            .first()
        )
        if entry is not None:
            for field, value in wishes.items():
                if value is not None or field == "doctor":
                    setattr(entry, field, value)
            entry.save()
            return entry, False
        try:
            with transaction.atomic():
                entry = WaitlistEntry.objects.create(
                    clinic=clinic, patient=patient, specialty=specialty, source=source, **wishes
                )
        except IntegrityError:
            # A second join of the same patient at the same moment: theirs stands.
            entry = WaitlistEntry.objects.get(
                patient=patient, specialty=specialty, status=WaitlistEntry.Status.WAITING
            )
            return entry, False
    logger.info(
        "waitlist: patient %s joined specialty %s (clinic %s)", patient.pk, specialty.pk, clinic.pk
    )
    return entry, True


def waitlist_remove(*, clinic: Clinic, entry_id: int) -> WaitlistEntry:
    """Take an entry off the list (the patient left, or staff removed it); pending offers lapse."""
    with transaction.atomic():
        entry = WaitlistEntry.objects.select_for_update().filter(pk=entry_id, clinic=clinic).first()
        if entry is None:
            raise services.InvalidInput("no such waitlist entry in this clinic", code="not_found")
        if entry.status == WaitlistEntry.Status.WAITING:
            entry.status = WaitlistEntry.Status.REMOVED
            entry.save(update_fields=["status", "updated_at"])
            freed = list(
                entry.offers.filter(status=WaitlistOffer.Status.PENDING).values_list(
                    "slot_id", flat=True
                )
            )
            entry.offers.filter(status=WaitlistOffer.Status.PENDING).update(
                status=WaitlistOffer.Status.EXPIRED, responded_at=timezone.now()
            )
            for slot_id in freed:
                _move_on(slot_id)
    return entry


# --- offering --------------------------------------------------------------------------------


def _min_notice() -> dt.timedelta:
    return dt.timedelta(minutes=django_settings.SOPHIA_MIN_NOTICE_MINUTES)


def _candidates(slot: Slot, now: dt.datetime):
    """Waiting entries that may be offered `slot`, longest waiting first (part of day aside)."""
    offered_this_slot = WaitlistOffer.objects.filter(entry=OuterRef("pk"), slot=slot)
    open_offer = WaitlistOffer.objects.filter(
        entry=OuterRef("pk"), status=WaitlistOffer.Status.PENDING, expires_at__gt=now
    )
    busy = Appointment.objects.filter(
        patient=OuterRef("patient"),
        status__in=OCCUPYING_STATUSES,
        start_at__lt=slot.end_at,
        end_at__gt=slot.start_at,
    )
    return (
        WaitlistEntry.objects.filter(
            clinic_id=slot.clinic_id,
            status=WaitlistEntry.Status.WAITING,
            specialty__in=slot.doctor.specialties.all(),
            created_at__lt=slot.updated_at,
        )
        .filter(Q(doctor__isnull=True) | Q(doctor_id=slot.doctor_id))
        .exclude(Exists(offered_this_slot))
        .exclude(Exists(open_offer))
        .exclude(Exists(busy))
        .select_related("patient", "specialty", "conversation")
        .order_by("created_at", "id")
    )


def _offer_conversation(entry: WaitlistEntry) -> Conversation | None:
    if entry.conversation_id is not None:
        return entry.conversation
    if not entry.patient.whatsapp_id:
        return None
    conversation, _created = Conversation.objects.get_or_create(
        clinic_id=entry.clinic_id,
        wa_id=entry.patient.whatsapp_id,
        defaults={"patient": entry.patient, "state": "CLOSED", "closed_at": timezone.now()},
    )
    return conversation


def _queue_offer(
    offer: WaitlistOffer,
    conversation: Conversation,
    settings: OutreachSettings,
    now: dt.datetime,
) -> Message:
    clinic = settings.clinic
    specialty = offer.entry.specialty.name
    body = replies.offer_body(offer.slot, clinic, specialty, settings.waitlist_offer_minutes)
    inside_session = (
        conversation.last_inbound_at is not None
        and conversation.last_inbound_at > now - SESSION_WINDOW
    )
    if inside_session:
        (message,) = whatsapp.queue_replies(conversation, [replies.offer(offer.pk, body)])
        return message
    params = replies.offer_parameters(offer.slot, clinic, specialty)
    return whatsapp.queue_template(
        conversation,
        settings.waitlist_template_name,
        language=settings.template_language,
        components=[
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in params]},
            *(
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": str(index),
                    "parameters": [{"type": "payload", "payload": f"{prefix}{offer.pk}"}],
                }
                for index, prefix in enumerate((replies.WAITLIST_ACCEPT, replies.WAITLIST_DECLINE))
            ),
        ],
        text=body,
    )


def waitlist_offer_slot(*, slot_id: int, now: dt.datetime | None = None) -> int:
    """Offer a bookable slot to the next waiting patients (up to the clinic's batch); how many.

    Runs with the slot's row locked, so two workers offering the same slot never exceed the
    batch, and an accept in progress finishes first.
    """
    now = now or timezone.now()
    with transaction.atomic():
        slot = (
            Slot.objects.select_for_update(of=("self",))
            .select_related("doctor", "clinic")
            .filter(pk=slot_id)
            .first()
        )
        if (
            slot is None
            or not slot.is_bookable(now)
            or not slot.doctor.active
            or slot.start_at <= now + _min_notice()
        ):
            return 0
        settings = clinic_settings(slot.clinic)
        open_offers = WaitlistOffer.objects.filter(
            slot=slot, status=WaitlistOffer.Status.PENDING, expires_at__gt=now
        ).count()
        room = settings.waitlist_batch - open_offers
        if room <= 0:
            return 0
        tz = slot.clinic.tz
        made: list[int] = []
        for entry in _candidates(slot, now).iterator(chunk_size=50):
            if len(made) >= room:
                break
            if not entry.matches(slot, tz):
                continue
            conversation = _offer_conversation(entry)
            if conversation is None:
                continue
            offer = WaitlistOffer.objects.create(
                clinic_id=slot.clinic_id,
                entry=entry,
                slot=slot,
                created_at=now,
                expires_at=now + dt.timedelta(minutes=settings.waitlist_offer_minutes),
            )
            offer.slot = slot
            offer.entry = entry
            message = _queue_offer(offer, conversation, settings, now)
            offer.message = message
            offer.save(update_fields=["message"])
            if entry.conversation_id is None:
                entry.conversation = conversation
                entry.save(update_fields=["conversation", "updated_at"])
            made.append(message.pk)
        _deliver_after_commit(made)
    if made:
        logger.info("waitlist: slot %s offered to %d patient(s)", slot_id, len(made))
        metrics.WAITLIST_OFFERS.inc(len(made))
    return len(made)


@task(queue_name="outreach")
def offer_freed_slot(slot_id: int) -> int:
    """The background task behind slot.liberado and every "move on" below."""
    return waitlist_offer_slot(slot_id=slot_id)


def _move_on(slot_id: int) -> None:
    """The slot's offers shrank: a task offers it to the next patients once this commits (the
    task row is written in this transaction, so a rollback takes it back too)."""
    offer_freed_slot.enqueue(slot_id)


# --- answers ---------------------------------------------------------------------------------


class OfferOutcome(StrEnum):
    BOOKED = "booked"
    TAKEN = "taken"  # someone else was first, or the slot is no longer bookable
    DECLINED = "declined"
    GONE = "gone"  # expired, already answered, or the entry left the list
    OVERLAP = "overlap"  # the patient already has an appointment at that time
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class OfferAnswer:
    outcome: OfferOutcome
    appointment: Appointment | None = None


def _offer_for(clinic: Clinic, offer_id: int, conversation_id: int) -> WaitlistOffer | None:
    """The offer, if it was sent to this conversation (a hand-typed id from elsewhere: None)."""
    return (
        WaitlistOffer.objects.filter(
            pk=offer_id, clinic=clinic, message__conversation_id=conversation_id
        )
        .select_related("entry__patient", "entry__specialty")
        .first()
    )


def _lock(slot_id: int) -> None:
    """Accepts, declines and new offers of one slot take turns on the slot's row."""
    Slot.objects.select_for_update(of=("self",)).filter(pk=slot_id).values_list("pk").first()


def waitlist_accept(
    *, clinic: Clinic, offer_id: int, conversation_id: int, now: dt.datetime | None = None
) -> OfferAnswer:
    """Book the offered slot for the first patient who accepts; tell the others it was taken."""
    now = now or timezone.now()
    offer = _offer_for(clinic, offer_id, conversation_id)
    if offer is None:
        return OfferAnswer(OfferOutcome.NOT_FOUND)
    with transaction.atomic():
        _lock(offer.slot_id)
        offer = (
            WaitlistOffer.objects.select_for_update(of=("self",))
            .select_related("entry__patient", "entry__specialty")
            .get(pk=offer.pk)
        )
        entry = offer.entry
        if offer.status == WaitlistOffer.Status.TAKEN:
            return OfferAnswer(OfferOutcome.TAKEN)
        if (
            offer.status != WaitlistOffer.Status.PENDING
            or offer.expires_at <= now
            or entry.status != WaitlistEntry.Status.WAITING
        ):
            return OfferAnswer(OfferOutcome.GONE)
        try:
            with transaction.atomic():
                appointment = services.appointment_book(
                    clinic=clinic,
                    patient=entry.patient,
                    slot_id=offer.slot_id,
                    actor=services.Actor.patient(entry.patient),
                    source=AppointmentSource.BOT,
                    specialty=entry.specialty,
                )
        except services.PatientOverlap:
            offer.status = WaitlistOffer.Status.DECLINED
            offer.responded_at = now
            offer.save(update_fields=["status", "responded_at"])
            _move_on(offer.slot_id)
            return OfferAnswer(OfferOutcome.OVERLAP)
        except services.BookingError as exc:
            # Booked or held by someone outside the waitlist, blocked, or about to start.
            logger.info("waitlist offer %s: slot no longer bookable (%s)", offer.pk, exc.code)
            notices = _close_offers(offer.slot_id, now, except_offer=offer.pk)
            offer.status = WaitlistOffer.Status.TAKEN
            offer.responded_at = now
            offer.save(update_fields=["status", "responded_at"])
            _deliver_after_commit(notices)
            return OfferAnswer(OfferOutcome.TAKEN)
        offer.status = WaitlistOffer.Status.ACCEPTED
        offer.responded_at = now
        offer.save(update_fields=["status", "responded_at"])
        entry.status = WaitlistEntry.Status.BOOKED
        entry.appointment = appointment
        entry.save(update_fields=["status", "appointment", "updated_at"])
        # Their other open offers lapse: they have what they waited for.
        WaitlistOffer.objects.filter(entry=entry, status=WaitlistOffer.Status.PENDING).update(
            status=WaitlistOffer.Status.EXPIRED, responded_at=now
        )
        notices = _close_offers(offer.slot_id, now, except_offer=offer.pk)
        _deliver_after_commit(notices)
    logger.info("waitlist: offer %s accepted, appointment %s", offer.pk, appointment.pk)
    return OfferAnswer(OfferOutcome.BOOKED, appointment)


def _close_offers(slot_id: int, now: dt.datetime, *, except_offer: int) -> list[int]:
    """Mark the slot's other open offers taken and queue a kind word to each; message ids."""
    others = list(
        WaitlistOffer.objects.select_for_update(of=("self",))
        .filter(slot_id=slot_id, status=WaitlistOffer.Status.PENDING)
        .exclude(pk=except_offer)
        .select_related("message__conversation")
        .order_by("pk")
    )
    notices = []
    for other in others:
        other.status = WaitlistOffer.Status.TAKEN
        other.responded_at = now
        other.save(update_fields=["status", "responded_at"])
        if other.message is not None:
            (notice,) = whatsapp.queue_replies(other.message.conversation, [replies.offer_taken()])
            notices.append(notice.pk)
    return notices


def waitlist_decline(
    *, clinic: Clinic, offer_id: int, conversation_id: int, now: dt.datetime | None = None
) -> OfferAnswer:
    """The patient does not want this slot: they keep their place; the slot moves on."""
    now = now or timezone.now()
    offer = _offer_for(clinic, offer_id, conversation_id)
    if offer is None:
        return OfferAnswer(OfferOutcome.NOT_FOUND)
    with transaction.atomic():
        _lock(offer.slot_id)
        changed = WaitlistOffer.objects.filter(
            pk=offer.pk, status=WaitlistOffer.Status.PENDING
        ).update(status=WaitlistOffer.Status.DECLINED, responded_at=now)
        if not changed:
            offer.refresh_from_db(fields=["status"])
            if offer.status == WaitlistOffer.Status.TAKEN:
                return OfferAnswer(OfferOutcome.TAKEN)
            return OfferAnswer(OfferOutcome.GONE)
        _move_on(offer.slot_id)
    return OfferAnswer(OfferOutcome.DECLINED)


# --- the periodic sweep ----------------------------------------------------------------------


def waitlist_expire(now: dt.datetime | None = None) -> int:
    """Unanswered offers past their time lapse; their slots move on to the next patients."""
    now = now or timezone.now()
    expired = 0
    slot_ids = set(
        WaitlistOffer.objects.filter(
            status=WaitlistOffer.Status.PENDING, expires_at__lte=now
        ).values_list("slot_id", flat=True)[:500]
    )
    for slot_id in sorted(slot_ids):
        with transaction.atomic():
            _lock(slot_id)
            count = WaitlistOffer.objects.filter(
                slot_id=slot_id, status=WaitlistOffer.Status.PENDING, expires_at__lte=now
            ).update(status=WaitlistOffer.Status.EXPIRED)
            if count:
                expired += count
                _move_on(slot_id)
    return expired


def _first_match(entry: WaitlistEntry, now: dt.datetime) -> int | None:
    """The earliest bookable slot this entry accepts and was not offered yet."""
    offered = set(entry.offers.values_list("slot_id", flat=True))
    tz = entry.clinic.tz
    cursor = None
    for _page in range(MATCH_PAGES):
        page = selectors.available_slots(
            clinic=entry.clinic,
            specialty=entry.specialty if entry.doctor is None else None,
            doctor=entry.doctor,
            cursor=cursor,
            page_size=50,
            now=now,
        )
        for slot in page.slots:
            if (
                slot.pk not in offered
                and slot.updated_at > entry.created_at
                and entry.matches(slot, tz)
            ):
                return slot.pk
        if not page.has_more:
            return None
        cursor = page.next_cursor
    return None


def waitlist_match(now: dt.datetime | None = None, limit: int = SWEEP_ENTRIES) -> int:
    """Offer slots that appeared without an event (new agenda, absence removed, hold expired)
    to waiting patients without an open offer, longest waiting first; offers made."""
    now = now or timezone.now()
    open_offer = WaitlistOffer.objects.filter(
        entry=OuterRef("pk"), status=WaitlistOffer.Status.PENDING, expires_at__gt=now
    )
    entries = (
        WaitlistEntry.objects.filter(status=WaitlistEntry.Status.WAITING)
        .exclude(Exists(open_offer))
        .select_related("clinic", "specialty", "doctor")
        .order_by("created_at", "id")[:limit]
    )
    made = 0
    tried: set[int] = set()
    for entry in entries:
        slot_id = _first_match(entry, now)
        if slot_id is None or slot_id in tried:
            continue
        tried.add(slot_id)
        made += waitlist_offer_slot(slot_id=slot_id, now=now)
    return made


def waitlist_sweep(now: dt.datetime | None = None) -> int:
    """The periodic job: expire unanswered offers, then match waiting patients to new slots."""
    now = now or timezone.now()
    return waitlist_expire(now) + waitlist_match(now)
