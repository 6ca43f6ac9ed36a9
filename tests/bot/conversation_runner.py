"""Table-driven Spanish conversations against the real engine, gateway and PostgreSQL.

A `Conversation` is a name, the world it starts from (`setup`: names in `SETUPS`), the messages
a patient sends (each optionally with checks on the bot's answer to it) and the checks on the
outcome (`expect`): the booked slot's doctor and time, an emergency answer, the state reached…
`run_conversation` plays it with `tests.bot.conftest.Chat` on a fresh demo clinic
(`build_world()`) and raises `ConversationFailed` with the whole transcript when a check
fails. Outcomes are recorded in a dict (`collect_results`), which writes the share that
reached the right outcome and the messages each booking took to bench/results/<name>.json.

Reuse (another engineer's set, e.g. families):

    # tests/bot/test_family_conversations.py
    from tests.bot.conversation_runner import collect_results, run_conversation, shared_world
    from tests.bot.family_conversations import CONVERSATIONS

    @pytest.fixture(scope="module")
    def demo_world(django_db_setup, django_db_blocker):
        yield from shared_world(django_db_blocker)

    @pytest.fixture
    def world(demo_world, db):
        return demo_world

    @pytest.fixture(scope="module")
    def results():
        yield from collect_results("family_conversations", expected=len(CONVERSATIONS))

    @pytest.mark.parametrize("conversation", CONVERSATIONS, ids=lambda c: c.name)
    def test_it_reaches_the_right_outcome(conversation, world, results):
        run_conversation(conversation, world, results)

with `CONVERSATIONS` a list of `Conversation(...)`. New starting points go in `SETUPS` (a
function of the world: register yours with `SETUPS["name"] = function`) and new checks
subclass `Check` (`check(run) -> str | None`: the problem, or None).
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.utils import timezone

from bot import engine
from bot.text import normalize
from clinics.demo_data import SPECIALTIES
from clinics.management.commands.seed_demo import CLINICS, DOCTORS, FAQ
from clinics.models import (
    Appointment,
    AppointmentStatus,
    BlockedPeriod,
    Clinic,
    Doctor,
    FaqEntry,
    Patient,
    Slot,
    Specialty,
)
from tests.bot.conftest import Chat

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"
ANA = {
    "document": "1020304050",
    "full_name": "Ana María Gómez",
    "birth_date": dt.date(1985, 3, 14),
    "whatsapp_id": "573001234567",
}
NEW_NUMBER = "573205556677"
SLOT_MINUTES = 30
DAYS_AHEAD = 12
# Opening hours of the world's clinic, every day of the week (local time).
HOURS = [(dt.time(8), dt.time(12)), (dt.time(14), dt.time(18))]


# --- the world -------------------------------------------------------------------------------


@dataclass
class World:
    clinic: Clinic
    doctors: dict[str, Doctor]  # by full name
    specialties: dict[str, Specialty]  # by slug
    ana: Patient
    today: dt.date  # the clinic's local date when the world was made

    def doctor(self, name_part: str) -> Doctor:
        found = [d for n, d in self.doctors.items() if normalize(name_part) in normalize(n)]
        assert len(found) == 1, f"{name_part!r} names {len(found)} doctors"
        return found[0]


def _slots_for(doctor: Doctor, clinic: Clinic, today: dt.date) -> list[Slot]:
    tz = clinic.tz
    slots = []
    for offset in range(DAYS_AHEAD + 1):
        day = today + dt.timedelta(days=offset)
        for opens, closes in HOURS:
            start = dt.datetime.combine(day, opens, tzinfo=tz)
            end_of_block = dt.datetime.combine(day, closes, tzinfo=tz)
            while start < end_of_block:
                finish = start + dt.timedelta(minutes=SLOT_MINUTES)
                slots.append(Slot(clinic=clinic, doctor=doctor, start_at=start, end_at=finish))
                start = finish
    return slots


def build_world() -> World:
    """The demo clinic as seed_demo makes it (specialties, doctors, FAQ), its slots every day
    from today for DAYS_AHEAD days, and Ana María Gómez on her own number."""
    clinic = Clinic.objects.create(slug="demo", **CLINICS["demo"])
    today = timezone.localdate(timezone.now(), clinic.tz)
    specialties, doctors = {}, {}
    slots: list[Slot] = []
    for slug, names in DOCTORS["demo"].items():
        name, keywords = SPECIALTIES[slug]
        specialty = Specialty.objects.create(
            clinic=clinic, slug=slug, name=name, triage_keywords="\n".join(keywords)
        )
        specialties[slug] = specialty
        for full_name in names:
            doctor = Doctor.objects.create(clinic=clinic, full_name=full_name)
            doctor.specialties.add(specialty)
            doctors[full_name] = doctor
            slots += _slots_for(doctor, clinic, today)
    Slot.objects.bulk_create(slots, batch_size=2000)
    FaqEntry.objects.bulk_create(
        FaqEntry(clinic=clinic, question=q, keywords=k, answer=a, position=i)
        for i, (q, k, a) in enumerate(FAQ["demo"])
    )
    ana = Patient.objects.create(clinic=clinic, **ANA)
    return World(clinic, doctors, specialties, ana, today)


def shared_world(django_db_blocker):
    """A generator for a module-scoped fixture: one world for every conversation of a module
    (each test's own changes roll back with its transaction), removed afterwards.

        @pytest.fixture(scope="module")
        def demo_world(django_db_setup, django_db_blocker):
            yield from shared_world(django_db_blocker)

        @pytest.fixture
        def world(demo_world, db):
            return demo_world
    """
    with django_db_blocker.unblock():
        world = build_world()
    yield world
    with django_db_blocker.unblock():
        Clinic.objects.filter(pk=world.clinic.pk).delete()


def _appointment(world: World, doctor_name: str, when: dt.datetime, status: str) -> Appointment:
    """An appointment of Ana's written straight to the tables (a past one cannot be booked)."""
    doctor = world.doctor(doctor_name)
    slot, _ = Slot.objects.get_or_create(
        clinic=world.clinic,
        doctor=doctor,
        start_at=when,
        defaults={"end_at": when + dt.timedelta(minutes=SLOT_MINUTES)},
    )
    Slot.objects.filter(pk=slot.pk).update(status="booked")
    return Appointment.objects.create(
        clinic=world.clinic,
        patient=world.ana,
        slot=slot,
        doctor=doctor,
        specialty=doctor.specialties.first(),
        start_at=slot.start_at,
        end_at=slot.end_at,
        status=status,
        source="staff",
    )


def local_at(world: World, days: int, hour: int, minute: int = 0) -> dt.datetime:
    day = world.today + dt.timedelta(days=days)
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=world.clinic.tz)


def _past_dentist(world: World) -> None:
    """Ana saw Dra. Diana Marcela Rojas (odontología) a month ago."""
    _appointment(world, "Diana Marcela Rojas", local_at(world, -30, 9), AppointmentStatus.ATTENDED)


def _upcoming_two(world: World) -> None:
    """Ana has a pediatrics appointment (for her boy) and a dermatology one, both upcoming."""
    _appointment(world, "Natalia Restrepo", local_at(world, 3, 9), AppointmentStatus.BOOKED)
    _appointment(world, "María Camila Zuluaga", local_at(world, 4, 15), AppointmentStatus.BOOKED)


def _upcoming_general(world: World) -> None:
    """Ana has one general-medicine appointment in two days at 10:00."""
    _appointment(world, "Carlos Andrés Rodríguez", local_at(world, 2, 10), AppointmentStatus.BOOKED)


def _holiday_tomorrow(world: World) -> None:
    """Tomorrow the clinic is closed (a holiday entered after the slots were made)."""
    BlockedPeriod.objects.create(
        clinic=world.clinic,
        starts_at=local_at(world, 1, 0),
        ends_at=local_at(world, 2, 0),
        reason="festivo",
    )


def _luisa_nine_taken_tomorrow(world: World) -> None:
    """Tomorrow at 9:00 Dra. Luisa is taken (Dr. Rodríguez is free then)."""
    slot = Slot.objects.get(doctor=world.doctor("Luisa Fernanda"), start_at=local_at(world, 1, 9))
    Slot.objects.filter(pk=slot.pk).update(status="blocked")


SETUPS: dict[str, Callable[[World], None]] = {
    "luisa_nine_taken_tomorrow": _luisa_nine_taken_tomorrow,
    "past_dentist": _past_dentist,
    "upcoming_two": _upcoming_two,
    "upcoming_general": _upcoming_general,
    "holiday_tomorrow": _holiday_tomorrow,
}


# --- conversations and checks ------------------------------------------------------------------


@dataclass
class Run:
    """A conversation as played: the chat, every reply per message, and its world."""

    world: World
    chat: Chat
    sent: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)  # reply texts (and rows) per message
    results: list[engine.StepResult] = field(default_factory=list)
    before_ids: set[int] = field(default_factory=set)  # Ana's appointments before it started

    @property
    def last(self) -> engine.StepResult:
        return self.results[-1]

    def new_appointments(self) -> list[Appointment]:
        return list(
            Appointment.objects.filter(clinic=self.world.clinic)
            .exclude(pk__in=self.before_ids)
            .select_related("doctor", "specialty", "patient")
            .order_by("pk")
        )

    def transcript(self) -> str:
        lines = []
        for sent, answer in zip(self.sent, self.answers, strict=False):
            lines.append(f"  > {sent}")
            lines += [f"    < {line}" for line in answer]
        return "\n".join(lines)


def reply_lines(result: engine.StepResult) -> list[str]:
    lines = []
    for reply in result.replies:
        lines.append(reply.text)
        lines += [f"[{row.title} | {row.description}]" for row in reply.rows]
        lines += [f"({button.title})" for button in reply.buttons]
    return lines


class Check:
    def check(self, run: Run) -> str | None:
        raise NotImplementedError


@dataclass
class Says(Check):
    """The answer to the message (or the last one) contains these words (no accents/case)."""

    words: str

    def check(self, run: Run, answer: list[str] | None = None) -> str | None:
        text = normalize(" ".join(answer if answer is not None else run.answers[-1]))
        return None if normalize(self.words) in text else f"no {self.words!r} in the answer"


@dataclass
class DoesNotSay(Check):
    words: str

    def check(self, run: Run, answer: list[str] | None = None) -> str | None:
        text = normalize(" ".join(answer if answer is not None else run.answers[-1]))
        return f"{self.words!r} in the answer" if normalize(self.words) in text else None


@dataclass
class Silent(Check):
    """The bot answered nothing to that message."""

    def check(self, run: Run, answer: list[str] | None = None) -> str | None:
        answer = answer if answer is not None else run.answers[-1]
        return f"it answered {answer!r}" if answer else None


@dataclass
class InState(Check):
    state: str

    def check(self, run: Run) -> str | None:
        return None if run.chat.state == self.state else f"state {run.chat.state}"


@dataclass
class Booked(Check):
    """One new active appointment, for `patient` (Ana by default), matching what is given.

    `day`: days from the world's today; `weekday`: 0 = Monday; `hour`/`minute`: local start;
    `after`/`before`: local hour bounds (inclusive/exclusive); `doctor`: part of the name.
    """

    doctor: str | None = None
    specialty: str | None = None
    day: int | None = None
    weekday: int | None = None
    hour: int | None = None
    minute: int | None = None
    after: int | None = None
    before: int | None = None
    days: tuple[int, int] | None = None  # inclusive range of days from today
    weekdays: tuple[int, ...] | None = None
    not_day: int | None = None
    not_hour: int | None = None
    earliest: bool = False  # the first free time of that specialty
    patient: str | None = None
    rescheduled: bool = False  # it replaced an earlier appointment

    def check(self, run: Run) -> str | None:
        active = [
            a
            for a in run.new_appointments()
            if a.status in (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED)
        ]
        if len(active) != 1:
            return f"{len(active)} new active appointments"
        appt = active[0]
        start = appt.start_at.astimezone(run.world.clinic.tz)
        problems = []
        if self.doctor and normalize(self.doctor) not in normalize(appt.doctor.full_name):
            problems.append(f"doctor {appt.doctor.full_name}")
        if self.specialty and (appt.specialty is None or appt.specialty.slug != self.specialty):
            problems.append(f"specialty {appt.specialty}")
        if self.day is not None and start.date() != run.world.today + dt.timedelta(self.day):
            problems.append(f"date {start:%Y-%m-%d}")
        if self.weekday is not None and start.weekday() != self.weekday:
            problems.append(f"weekday {start:%A}")
        offset = (start.date() - run.world.today).days
        if self.days is not None and not self.days[0] <= offset <= self.days[1]:
            problems.append(f"day +{offset} outside {self.days}")
        if self.weekdays is not None and start.weekday() not in self.weekdays:
            problems.append(f"weekday {start:%A}")
        if self.not_day is not None and offset == self.not_day:
            problems.append(f"on day +{offset}")
        if self.not_hour is not None and start.hour == self.not_hour:
            problems.append(f"at {start:%H:%M}")
        if self.hour is not None and start.hour != self.hour:
            problems.append(f"hour {start:%H:%M}")
        if self.minute is not None and start.minute != self.minute:
            problems.append(f"minute {start:%H:%M}")
        if self.after is not None and start.hour < self.after:
            problems.append(f"{start:%H:%M} before {self.after}:00")
        if self.before is not None and start.hour >= self.before:
            problems.append(f"{start:%H:%M} not before {self.before}:00")
        if self.earliest:
            first = (
                Slot.objects.filter(
                    clinic=run.world.clinic,
                    doctor__specialties=appt.specialty,
                    start_at__gte=timezone.now() + dt.timedelta(minutes=61),
                    status="free",
                )
                .order_by("start_at")
                .values_list("start_at", flat=True)
                .first()
            )
            # No free slot starts before the booked one. (Not "equals the first": the lead
            # time moved on while the conversation ran, and the first may now be too close.)
            if first is not None and appt.start_at > first:
                problems.append(f"{start:%Y-%m-%d %H:%M} is not the earliest")
        if self.patient and normalize(self.patient) not in normalize(appt.patient.full_name):
            problems.append(f"patient {appt.patient.full_name}")
        if self.rescheduled and appt.rescheduled_from_id is None:
            problems.append("not a rescheduling")
        return ", ".join(problems) or None


@dataclass
class BookedRow(Check):
    """The booked slot is row `row` (1-based) of the last list shown before it was picked."""

    row: int

    def check(self, run: Run) -> str | None:
        lists = [r for result in run.results for r in result.replies if r.kind == "list"]
        booked = [a for a in run.new_appointments() if a.status == AppointmentStatus.BOOKED]
        if not lists or len(booked) != 1:
            return f"{len(lists)} lists, {len(booked)} bookings"
        rows = [row for row in lists[-1].rows if row.id.startswith("slot:")]
        if len(rows) < self.row:
            return f"only {len(rows)} rows"
        wanted = int(rows[self.row - 1].id.split(":")[1])
        return None if booked[0].slot_id == wanted else f"booked slot {booked[0].slot_id}"


@dataclass
class NothingBooked(Check):
    def check(self, run: Run) -> str | None:
        active = [
            a
            for a in run.new_appointments()
            if a.status in (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED)
        ]
        return f"booked {active}" if active else None


@dataclass
class Emergency(Check):
    """The answer sends the patient to the emergency line and flags staff; no slot list."""

    def check(self, run: Run, answer: list[str] | None = None) -> str | None:
        result = run.last
        if not result.urgent:
            return "not marked urgent"
        if any(reply.kind == "list" for reply in result.replies):
            return "a list came with the emergency"
        text = normalize(" ".join(reply_lines(result)))
        return None if run.world.clinic.emergency_line in text else "no emergency line"


@dataclass
class CancelledOne(Check):
    """Exactly that appointment of Ana's was cancelled (by doctor name part)."""

    doctor: str

    def check(self, run: Run) -> str | None:
        cancelled = list(
            Appointment.objects.filter(
                pk__in=run.before_ids, status=AppointmentStatus.CANCELLED
            ).select_related("doctor")
        )
        names = [a.doctor.full_name for a in cancelled]
        if len(cancelled) != 1 or normalize(self.doctor) not in normalize(names[0]):
            return f"cancelled {names}"
        return None


@dataclass
class HandedOff(Check):
    reason: str

    def check(self, run: Run) -> str | None:
        got = run.chat.data.get("handoff_reason")
        return None if got == self.reason else f"handoff reason {got!r}"


@dataclass
class Registered(Check):
    full_name: str
    birth_date: dt.date
    notes_contain: str = ""  # the symptoms kept for the booking

    def check(self, run: Run) -> str | None:
        patient = Patient.objects.filter(clinic=run.world.clinic, full_name=self.full_name).first()
        if patient is None:
            names = list(Patient.objects.values_list("full_name", flat=True))
            return f"no patient {self.full_name!r} (there are {names})"
        if patient.birth_date != self.birth_date:
            return f"birth date {patient.birth_date}"
        if self.notes_contain:
            symptoms = normalize(str(run.chat.data.get("symptoms", "")))
            if normalize(self.notes_contain) not in symptoms:
                return f"symptoms {run.chat.data.get('symptoms')!r}"
        return None


@dataclass
class Msg:
    """One message, with checks on the answer to it; `text` may be a function of the world
    (dates relative to the day the test runs)."""

    text: str | Callable[[World], str]
    expect: tuple = ()


@dataclass
class Conversation:
    name: str
    messages: list  # str or Msg
    expect: tuple = ()
    setup: tuple[str, ...] = ()
    wa_id: str = ANA["whatsapp_id"]
    topic: str = ""  # dates, doctors, faq, red flags… (for the report)
    # For messages per booking: "doc+symptoms" when the first message holds the document and
    # the symptoms, "returning" for another returning patient's booking, "" not counted.
    booking: str = ""


class ConversationFailed(AssertionError):
    pass


def run_conversation(conversation: Conversation, world: World, results: dict | None = None) -> Run:
    for name in conversation.setup:
        SETUPS[name](world)
    chat = Chat(world.clinic, conversation.wa_id)
    run = Run(
        world=world,
        chat=chat,
        before_ids=set(
            Appointment.objects.filter(clinic=world.clinic).values_list("pk", flat=True)
        ),
    )
    problems: list[str] = []
    booked_at: int | None = None
    for number, message in enumerate(conversation.messages, start=1):
        msg = message if isinstance(message, Msg) else Msg(message)
        text = msg.text(world) if callable(msg.text) else msg.text
        result = chat.send(text)
        run.sent.append(text)
        run.results.append(result)
        run.answers.append(reply_lines(result))
        for check in msg.expect:
            problem = (
                check.check(run, run.answers[-1])
                if isinstance(check, (Says, DoesNotSay, Silent, Emergency))
                else check.check(run)
            )
            if problem:
                problems.append(f"message {number} ({text!r}): {problem}")
        if booked_at is None and any(
            a.status == AppointmentStatus.BOOKED for a in run.new_appointments()
        ):
            booked_at = number
    for check in conversation.expect:
        if problem := check.check(run):
            problems.append(f"outcome: {problem}")
    if results is not None:
        results[conversation.name] = {
            "topic": conversation.topic,
            "ok": not problems,
            "messages": len(conversation.messages),
            "booking": conversation.booking,
            "messages_to_book": booked_at,
        }
    if problems:
        raise ConversationFailed(
            f"{conversation.name}:\n  " + "\n  ".join(problems) + "\n" + run.transcript()
        )
    return run


# --- results -----------------------------------------------------------------------------------


def collect_results(name: str, expected: int):
    """A generator for a module-scoped fixture: yields the dict `run_conversation` fills, then
    prints the summary and, when all `expected` conversations ran (not a `-k` selection),
    writes it to bench/results/<name>.json."""
    results: dict[str, dict] = {}
    yield results
    if not results:
        return
    summary = summarize(results)
    if len(results) == expected:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{name}.json").write_text(
            json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
        )
    print(f"\n{name}: {summary['passed']}/{summary['total']} right ({summary['share']:.0%})")
    for kind, figures in summary["messages_per_booking"].items():
        print(f"  messages per booking ({kind}): {figures}")


def summarize(results: dict[str, dict]) -> dict:
    total = len(results)
    passed = sum(1 for r in results.values() if r["ok"])
    per_booking: dict[str, dict] = {}
    for kind in ("doc+symptoms", "returning"):
        counts = [
            r["messages_to_book"]
            for r in results.values()
            if r["booking"] == kind and r["ok"] and r["messages_to_book"]
        ]
        if counts:
            per_booking[kind] = {
                "conversations": len(counts),
                "max": max(counts),
                "mean": round(statistics.mean(counts), 2),
                "goal_max": 4 if kind == "doc+symptoms" else 5,
            }
    topics: dict[str, list[int]] = {}
    for r in results.values():
        topics.setdefault(r["topic"], [0, 0])
        topics[r["topic"]][0] += r["ok"]
        topics[r["topic"]][1] += 1
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "total": total,
        "passed": passed,
        "share": passed / total if total else 0.0,
        "failed": sorted(name for name, r in results.items() if not r["ok"]),
        "by_topic": {t: f"{ok}/{n}" for t, (ok, n) in sorted(topics.items())},
        "messages_per_booking": per_booking,
    }
