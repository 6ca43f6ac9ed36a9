"""An in-memory `bot.gateway.Gateway`: the engine's tests run against it without a database.

It keeps the booking rules the engine relies on (DESIGN §4) in their plainest form — a held or
booked slot is not offered and cannot be taken, a hold belongs to one conversation, a patient
cannot hold two appointments at the same time, a patient reaches only their own appointments —
and raises the same clinics.errors exceptions, with the same codes, as clinics.services. Every
write is recorded in `calls`, so a test can say what the engine did, not only what it said.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

from bot.gateway import hold_owner
from bot.messages import (
    AppointmentInfo,
    ClinicInfo,
    DoctorInfo,
    FaqInfo,
    OutreachResult,
    PatientInfo,
    SlotFilter,
    SlotInfo,
    SlotPage,
    SpecialtyInfo,
)
from clinics.errors import (
    AppointmentNotFound,
    InvalidInput,
    NotCancellable,
    NotHolder,
    PatientExists,
    PatientNotFound,
    PatientOverlap,
    RegistrationClosed,
    SlotTaken,
    SlotUnavailable,
)
from clinics.services import clean_document

HOLD_MINUTES = 10
ACTIVE = ("booked", "confirmed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class StoredPatient:
    info: PatientInfo
    document: str


@dataclass
class StoredSlot:
    id: int
    start_at: dt.datetime
    doctor_name: str
    specialty_ids: frozenset[int]
    blocked: bool = False

    def info(self) -> SlotInfo:
        return SlotInfo(id=self.id, start_at=self.start_at, doctor_name=self.doctor_name)

    def info_with(self, doctor_ids: dict[str, int]) -> SlotInfo:
        return SlotInfo(
            id=self.id,
            start_at=self.start_at,
            doctor_name=self.doctor_name,
            doctor_id=doctor_ids.get(self.doctor_name),
        )


@dataclass
class StoredAppointment:
    id: int
    patient_id: int
    slot_id: int
    specialty_id: int | None
    notes: str = ""
    status: str = "booked"


@dataclass
class MemoryGateway:
    clinic: ClinicInfo = field(
        default_factory=lambda: ClinicInfo(
            id=1,
            name="Clínica Demo",
            address="Calle 100 # 15-20, Bogotá",
            opening_hours="Lunes a sábado, 7:00 a. m. a 6:00 p. m.",
            emergency_line="123",
        )
    )
    conversation_id: int = 4242
    clock: object = utcnow  # () -> aware datetime; the holds' and bookings' "now"
    patients: dict[int, StoredPatient] = field(default_factory=dict)
    specialty_list: list[SpecialtyInfo] = field(default_factory=list)
    slots: dict[int, StoredSlot] = field(default_factory=dict)
    holds: dict[int, tuple[str, dt.datetime]] = field(default_factory=dict)  # slot → holder, until
    appointments: dict[int, StoredAppointment] = field(default_factory=dict)
    # Numbers verified for a patient besides the one on file; identity failures and lock-outs.
    phones: dict[int, set[str]] = field(default_factory=dict)
    failures: list[tuple[str, int | None]] = field(default_factory=list)
    locked_patients: set[int] = field(default_factory=set)
    locked_numbers: set[str] = field(default_factory=set)
    max_failures: int = 3
    calls: list[tuple[str, dict]] = field(default_factory=list)
    # Outreach: appointments this conversation got reminders for (latest last), numbers that
    # stopped reminders, waitlist entries (patient, specialty, doctor, part of day) and offers
    # (offer → slot, patient).
    reminded: list[int] = field(default_factory=list)
    reminders_stopped: set[str] = field(default_factory=set)
    waitlist: list[tuple[int, int, int | None, str]] = field(default_factory=list)
    offers: dict[int, tuple[int, int]] = field(default_factory=dict)
    faq: list[FaqInfo] = field(default_factory=list)
    doctor_ids: dict[str, int] = field(default_factory=dict)  # by name, given as slots are added
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def holder(self) -> str:
        return hold_owner(self.conversation_id)

    # --- arranging a test --------------------------------------------------------------------

    def add_specialty(self, slug: str, name: str, keywords: str = "") -> SpecialtyInfo:
        specialty = SpecialtyInfo(
            id=next(self._ids),
            slug=slug,
            name=name,
            keywords=tuple(k.strip() for k in keywords.split(",") if k.strip()),
        )
        self.specialty_list.append(specialty)
        self.specialty_list.sort(key=lambda s: s.name)
        return specialty

    def add_slots(
        self,
        specialty: SpecialtyInfo,
        doctor_name: str,
        first: dt.datetime,
        count: int,
        minutes: int = 20,
    ) -> list[int]:
        ids = []
        self.doctor_ids.setdefault(doctor_name, next(self._ids))
        for i in range(count):
            slot = StoredSlot(
                id=next(self._ids),
                start_at=first + dt.timedelta(minutes=minutes * i),
                doctor_name=doctor_name,
                specialty_ids=frozenset({specialty.id}),
            )
            self.slots[slot.id] = slot
            ids.append(slot.id)
        return ids

    def add_patient(
        self, document: str, full_name: str, birth_date: dt.date | None, whatsapp_id: str = ""
    ) -> PatientInfo:
        info = PatientInfo(
            id=next(self._ids),
            full_name=full_name,
            birth_date=birth_date,
            whatsapp_id=whatsapp_id,
        )
        self.patients[info.id] = StoredPatient(info=info, document=document)
        return info

    def book(self, patient_id: int, slot_id: int, specialty_id: int | None = None) -> int:
        appointment = StoredAppointment(
            id=next(self._ids), patient_id=patient_id, slot_id=slot_id, specialty_id=specialty_id
        )
        self.appointments[appointment.id] = appointment
        return appointment.id

    def remind(self, appointment_id: int) -> None:
        """A reminder of this appointment was sent to this conversation."""
        self.reminded.append(appointment_id)

    def offer(self, slot_id: int, patient_id: int) -> int:
        """A waitlist offer of this slot was sent to this conversation; its id."""
        offer_id = next(self._ids)
        self.offers[offer_id] = (slot_id, patient_id)
        return offer_id

    def free_slot_ids(self) -> list[int]:
        now = self.clock()
        return [s.id for s in self._bookable(now, None)]

    # --- the Gateway -------------------------------------------------------------------------

    def patient(self, patient_id: int) -> PatientInfo | None:
        stored = self.patients.get(patient_id)
        return stored.info if stored else None

    def patient_by_document(self, document: str) -> PatientInfo | None:
        document = clean_document(document)
        return next((p.info for p in self.patients.values() if p.document == document), None)

    def patient_by_whatsapp(self, wa_id: str) -> PatientInfo | None:
        return next((p.info for p in self.patients.values() if p.info.whatsapp_id == wa_id), None)

    def patient_register(
        self, *, document: str, full_name: str, birth_date: dt.date, whatsapp_id: str
    ) -> PatientInfo:
        self.calls.append(("patient_register", {"document": document, "full_name": full_name}))
        if not self.clinic.self_registration:
            raise RegistrationClosed("this clinic registers patients at the front desk")
        document = clean_document(document)
        if self.patient_by_document(document) is not None:
            raise PatientExists("a patient with that document already exists")
        return self.add_patient(document, full_name, birth_date, whatsapp_id)

    def patient_verified_on(self, *, patient_id: int, wa_id: str) -> bool:
        stored = self.patients.get(patient_id)
        if stored is None or not wa_id:
            return False
        return stored.info.whatsapp_id == wa_id or wa_id in self.phones.get(patient_id, set())

    def patients_on_number(self, wa_id: str) -> list[PatientInfo]:
        return [
            p.info
            for p in self.patients.values()
            if self.patient_verified_on(patient_id=p.info.id, wa_id=wa_id)
        ]

    def patient_phone_add(self, *, patient_id: int, wa_id: str) -> None:
        self.calls.append(("patient_phone_add", {"patient_id": patient_id}))
        stored = self.patients.get(patient_id)
        if stored is None:
            raise PatientNotFound("no such patient in this clinic")
        if stored.info.whatsapp_id != wa_id:
            self.phones.setdefault(patient_id, set()).add(wa_id)

    def identity_locked(self, *, wa_id: str, patient_id: int | None = None) -> bool:
        return wa_id in self.locked_numbers or patient_id in self.locked_patients

    def identity_failure_record(self, *, wa_id: str, patient_id: int | None) -> bool:
        self.calls.append(("identity_failure_record", {"patient_id": patient_id}))
        self.failures.append((wa_id, patient_id))
        if sum(1 for number, _ in self.failures if number == wa_id) >= self.max_failures:
            self.locked_numbers.add(wa_id)
        if (
            patient_id is not None
            and sum(1 for _, who in self.failures if who == patient_id) >= self.max_failures
        ):
            self.locked_patients.add(patient_id)
        return wa_id in self.locked_numbers

    def specialties(self) -> list[SpecialtyInfo]:
        return list(self.specialty_list)

    def specialty(self, slug: str) -> SpecialtyInfo | None:
        return next((s for s in self.specialty_list if s.slug == slug), None)

    def _taken(self, slot_id: int) -> bool:
        return any(a.slot_id == slot_id and a.status in ACTIVE for a in self.appointments.values())

    def _held_by_other(self, slot_id: int, holder: str | None, now: dt.datetime) -> bool:
        hold = self.holds.get(slot_id)
        return hold is not None and hold[1] > now and hold[0] != holder

    def _bookable(self, now: dt.datetime, specialty_id: int | None) -> list[StoredSlot]:
        return sorted(
            (
                s
                for s in self.slots.values()
                if (specialty_id is None or specialty_id in s.specialty_ids)
                and s.start_at > now
                and not s.blocked
                and not self._taken(s.id)
                and not self._held_by_other(s.id, None, now)
            ),
            key=lambda s: (s.start_at, s.id),
        )

    def _fits(self, slot: StoredSlot, only: SlotFilter) -> bool:
        local = slot.start_at.astimezone(self.clinic.tz)
        mine = [
            self.slots[a.slot_id].start_at
            for a in self.appointments.values()
            if a.patient_id == only.patient_id and a.status in ACTIVE
        ]
        return (
            (only.start is None or slot.start_at >= only.start)
            and (only.end is None or slot.start_at < only.end)
            and (only.time_from is None or local.time() >= only.time_from)
            and (only.time_to is None or local.time() < only.time_to)
            and (only.weekdays is None or local.weekday() in only.weekdays)
            and (only.doctor_id is None or self.doctor_ids.get(slot.doctor_name) == only.doctor_id)
            and slot.start_at not in mine
        )

    def slot_page(
        self,
        *,
        specialty_id: int,
        cursor: str | None,
        page_size: int,
        now: dt.datetime,
        only: SlotFilter | None = None,
    ) -> SlotPage:
        slots = [
            s for s in self._bookable(now, specialty_id) if self._fits(s, only or SlotFilter())
        ]
        if cursor is not None:
            try:
                start, slot_id = cursor.split("|")
                after = (dt.datetime.fromisoformat(start), int(slot_id))
            except ValueError as exc:
                raise InvalidInput("the page cursor is not valid", code="invalid_cursor") from exc
            slots = [s for s in slots if (s.start_at, s.id) > after]
        page, has_more = slots[:page_size], len(slots) > page_size
        last = page[-1] if page else None
        return SlotPage(
            slots=tuple(s.info_with(self.doctor_ids) for s in page),
            next_cursor=f"{last.start_at.isoformat()}|{last.id}" if has_more and last else None,
            has_more=has_more,
        )

    def doctors(self) -> list[DoctorInfo]:
        found = []
        for name, doctor_id in sorted(self.doctor_ids.items()):
            specialty_ids = set()
            for slot in self.slots.values():
                if slot.doctor_name == name:
                    specialty_ids |= slot.specialty_ids
            found.append(DoctorInfo(doctor_id, name, tuple(sorted(specialty_ids))))
        return found

    def last_doctor(self, *, patient_id: int, now: dt.datetime) -> DoctorInfo | None:
        past = [
            self.slots[a.slot_id]
            for a in self.appointments.values()
            if a.patient_id == patient_id
            and a.status != "cancelled"
            and self.slots[a.slot_id].start_at < now
        ]
        if not past:
            return None
        name = max(past, key=lambda s: s.start_at).doctor_name
        return next((d for d in self.doctors() if d.full_name == name), None)

    def faq_entries(self) -> list[FaqInfo]:
        return list(self.faq)

    def slot(self, slot_id: int) -> SlotInfo | None:
        stored = self.slots.get(slot_id)
        return stored.info() if stored else None

    def _check_bookable(self, slot_id: int, now: dt.datetime) -> StoredSlot:
        slot = self.slots.get(slot_id)
        if slot is None:
            raise SlotUnavailable(f"slot {slot_id} does not exist", code="slot_not_found")
        if slot.start_at <= now:
            raise SlotUnavailable("the slot has already started", code="slot_in_past")
        if slot.blocked:
            raise SlotUnavailable("the slot is blocked", code="slot_blocked")
        if self._taken(slot_id) or self._held_by_other(slot_id, self.holder, now):
            raise SlotTaken("someone else has the slot")
        return slot

    def slot_hold(self, *, slot_id: int, patient_id: int | None) -> SlotInfo:
        self.calls.append(("slot_hold", {"slot_id": slot_id}))
        now = self.clock()
        slot = self._check_bookable(slot_id, now)
        for other in [i for i, (holder, _) in self.holds.items() if holder == self.holder]:
            del self.holds[other]  # one hold per conversation: the new one replaces it
        self.holds[slot_id] = (self.holder, now + dt.timedelta(minutes=HOLD_MINUTES))
        return slot.info()

    def slot_release(self, *, slot_id: int) -> bool:
        self.calls.append(("slot_release", {"slot_id": slot_id}))
        hold = self.holds.get(slot_id)
        if hold is None or hold[0] != self.holder or hold[1] <= self.clock():
            return False
        del self.holds[slot_id]
        return True

    def holds_release(self) -> int:
        mine = [i for i, (holder, _) in self.holds.items() if holder == self.holder]
        return sum(self.slot_release(slot_id=i) for i in mine)

    def _take(self, slot_id: int, patient_id: int, now: dt.datetime) -> StoredSlot:
        slot = self._check_bookable(slot_id, now)
        hold = self.holds.get(slot_id)
        if hold is not None and hold[0] != self.holder and hold[1] > now:
            raise NotHolder("someone else holds the slot")
        for appointment in self.appointments.values():
            other = self.slots[appointment.slot_id]
            if (
                appointment.patient_id == patient_id
                and appointment.status in ACTIVE
                and other.start_at == slot.start_at
            ):
                raise PatientOverlap("the patient already has an appointment at that time")
        self.holds.pop(slot_id, None)
        return slot

    def _info(self, appointment: StoredAppointment, with_patient: bool = False) -> AppointmentInfo:
        slot = self.slots[appointment.slot_id]
        specialty = next((s for s in self.specialty_list if s.id == appointment.specialty_id), None)
        return AppointmentInfo(
            id=appointment.id,
            start_at=slot.start_at,
            doctor_name=slot.doctor_name,
            specialty=specialty,
            patient_id=appointment.patient_id,
            patient_name=self.patients[appointment.patient_id].info.full_name
            if with_patient
            else "",
        )

    def appointment_book(
        self, *, patient_id: int, slot_id: int, specialty_id: int | None, notes: str
    ) -> AppointmentInfo:
        self.calls.append(("appointment_book", {"slot_id": slot_id, "patient_id": patient_id}))
        if patient_id not in self.patients:
            raise PatientNotFound("no such patient in this clinic")
        self._take(slot_id, patient_id, self.clock())
        appointment = StoredAppointment(
            id=next(self._ids),
            patient_id=patient_id,
            slot_id=slot_id,
            specialty_id=specialty_id,
            notes=notes,
        )
        self.appointments[appointment.id] = appointment
        return self._info(appointment)

    def _own(self, patient_id: int, appointment_id: int) -> StoredAppointment:
        appointment = self.appointments.get(appointment_id)
        if appointment is None or appointment.patient_id != patient_id:
            raise AppointmentNotFound("no such appointment")
        if appointment.status not in ACTIVE:
            raise NotCancellable("the appointment is not active")
        return appointment

    def appointment_reschedule(
        self, *, patient_id: int, appointment_id: int, new_slot_id: int
    ) -> AppointmentInfo:
        self.calls.append(
            ("appointment_reschedule", {"appointment_id": appointment_id, "slot_id": new_slot_id})
        )
        appointment = self._own(patient_id, appointment_id)
        self._take(new_slot_id, patient_id, self.clock())
        appointment.slot_id = new_slot_id
        return self._info(appointment)

    def appointment_cancel(self, *, patient_id: int, appointment_id: int, reason: str) -> None:
        self.calls.append(("appointment_cancel", {"appointment_id": appointment_id}))
        self._own(patient_id, appointment_id).status = "cancelled"

    def upcoming_appointments(self, *, patient_id: int, now: dt.datetime) -> list[AppointmentInfo]:
        mine = [
            a
            for a in self.appointments.values()
            if a.patient_id == patient_id
            and a.status in ACTIVE
            and self.slots[a.slot_id].start_at > now
        ]
        mine.sort(key=lambda a: (self.slots[a.slot_id].start_at, a.id))
        return [self._info(a) for a in mine]

    def upcoming_appointments_on_number(
        self, *, wa_id: str, now: dt.datetime
    ) -> list[AppointmentInfo]:
        ids = {p.id for p in self.patients_on_number(wa_id)}
        theirs = [
            a
            for a in self.appointments.values()
            if a.patient_id in ids and a.status in ACTIVE and self.slots[a.slot_id].start_at > now
        ]
        theirs.sort(key=lambda a: (self.slots[a.slot_id].start_at, a.id))
        return [self._info(a, with_patient=True) for a in theirs]

    def rebooking_specialty(self, appointment_id: int) -> SpecialtyInfo | None:
        appointment = self.appointments.get(appointment_id)
        if appointment is None:
            return None
        slot = self.slots[appointment.slot_id]
        wanted = appointment.specialty_id or min(slot.specialty_ids, default=None)
        return next((s for s in self.specialty_list if s.id == wanted), None)

    def writes(self) -> list[str]:
        """The names of the write calls the engine made, in order."""
        return [name for name, _ in self.calls]

    # --- reminders and the waitlist ------------------------------------------------------------

    def open_reminder(self, *, now: dt.datetime) -> AppointmentInfo | None:
        for appointment_id in reversed(self.reminded):
            appointment = self.appointments[appointment_id]
            if appointment.status in ACTIVE and self.slots[appointment.slot_id].start_at > now:
                return self._info(appointment)
        return None

    def reminder_answer(
        self, *, appointment_id: int, confirm: bool, now: dt.datetime
    ) -> OutreachResult:
        self.calls.append(
            ("reminder_answer", {"appointment_id": appointment_id, "confirm": confirm})
        )
        appointment = self.appointments.get(appointment_id)
        if appointment is None or appointment_id not in self.reminded:
            return OutreachResult("not_found")
        info = self._info(appointment)
        if appointment.status == "cancelled":
            return OutreachResult("already_cancelled", info)
        if info.start_at <= now:
            return OutreachResult("too_late", info)
        if not confirm:
            appointment.status = "cancelled"
            return OutreachResult("cancelled", info)
        if appointment.status == "confirmed":
            return OutreachResult("already_confirmed", info)
        appointment.status = "confirmed"
        return OutreachResult("confirmed", info)

    def reminders_set(self, *, wa_id: str, patient_id: int | None, enabled: bool) -> int:
        self.calls.append(("reminders_set", {"wa_id": wa_id, "enabled": enabled}))
        changed = (wa_id in self.reminders_stopped) == enabled
        (self.reminders_stopped.discard if enabled else self.reminders_stopped.add)(wa_id)
        return int(changed)

    def waitlist_join(
        self, *, patient_id: int, specialty_id: int, doctor_id: int | None, part_of_day: str
    ) -> bool:
        self.calls.append(("waitlist_join", {"doctor_id": doctor_id, "part_of_day": part_of_day}))
        if any(p == patient_id and s == specialty_id for p, s, *_ in self.waitlist):
            return False
        self.waitlist.append((patient_id, specialty_id, doctor_id, part_of_day))
        return True

    def waitlist_answer(self, *, offer_id: int, accept: bool, now: dt.datetime) -> OutreachResult:
        self.calls.append(("waitlist_answer", {"offer_id": offer_id, "accept": accept}))
        if offer_id not in self.offers:
            return OutreachResult("not_found")
        slot_id, patient_id = self.offers.pop(offer_id)
        if not accept:
            return OutreachResult("declined")
        try:
            self._take(slot_id, patient_id, now)
        except (SlotTaken, SlotUnavailable):
            return OutreachResult("taken")
        appointment = StoredAppointment(
            id=next(self._ids), patient_id=patient_id, slot_id=slot_id, specialty_id=None
        )
        self.appointments[appointment.id] = appointment
        return OutreachResult("booked", self._info(appointment))
