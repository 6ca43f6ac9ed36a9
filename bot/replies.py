"""The bot's messages: short, warm Spanish through gettext, within WhatsApp's size limits.

Every builder returns a `bot.messages.Reply`. Lists and buttons are clipped to DESIGN §7 here,
in one place, so the engine never sends something the Graph API would refuse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django.utils.dates import MONTHS, MONTHS_3, WEEKDAYS, WEEKDAYS_ABBR
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from bot.messages import (
    MAX_BUTTON_TITLE,
    MAX_BUTTONS,
    MAX_INTERACTIVE_BODY,
    MAX_LIST_BUTTON,
    MAX_LIST_ROWS,
    MAX_ROW_DESCRIPTION,
    MAX_ROW_TITLE,
    AppointmentInfo,
    Button,
    ClinicInfo,
    PatientInfo,
    Reply,
    Row,
    SlotInfo,
    SpecialtyInfo,
    clip,
)


def one_line(text: str, limit: int) -> str:
    """A title or label: one line, within `limit`."""
    return clip(" ".join(text.split()), limit)


def text(body: str) -> Reply:
    return Reply(kind="text", text=clip_body(body))


def clip_body(body: str) -> str:
    """Bodies are kept within the interactive limit, the smaller one, whatever the kind."""
    return clip(body, MAX_INTERACTIVE_BODY)


def list_reply(body: str, button: str, rows: Sequence[Row]) -> Reply:
    return Reply(
        kind="list",
        text=clip_body(body),
        button=one_line(button, MAX_LIST_BUTTON),
        rows=tuple(
            Row(
                id=row.id,
                title=one_line(row.title, MAX_ROW_TITLE),
                description=one_line(row.description, MAX_ROW_DESCRIPTION),
            )
            for row in rows[:MAX_LIST_ROWS]
        ),
    )


def buttons_reply(body: str, buttons: Sequence[Button]) -> Reply:
    return Reply(
        kind="buttons",
        text=clip_body(body),
        buttons=tuple(
            Button(id=b.id, title=one_line(b.title, MAX_BUTTON_TITLE))
            for b in buttons[:MAX_BUTTONS]
        ),
    )


# --- dates and times, in the clinic's time zone ----------------------------------------------


def local(moment: dt.datetime, clinic: ClinicInfo) -> dt.datetime:
    return moment.astimezone(clinic.tz)


def time_label(moment: dt.datetime) -> str:
    """8:00 a. m. / 3:20 p. m. (moment already local)."""
    hour = moment.hour % 12 or 12
    suffix = (
        pgettext("time of day", "a.m.") if moment.hour < 12 else pgettext("time of day", "p.m.")
    )
    return f"{hour}:{moment.minute:02d} {suffix}"


def short_date(moment: dt.datetime) -> str:
    """Lun 18 nov (moment already local)."""
    weekday = str(WEEKDAYS_ABBR[moment.weekday()]).capitalize()
    return f"{weekday} {moment.day} {MONTHS_3[moment.month]}"


def long_date(moment: dt.datetime) -> str:
    """lunes 18 de noviembre (moment already local)."""
    return _("%(weekday)s %(day)s of %(month)s") % {
        "weekday": str(WEEKDAYS[moment.weekday()]).lower(),
        "day": moment.day,
        "month": str(MONTHS[moment.month]).lower(),
    }


def slot_title(slot: SlotInfo, clinic: ClinicInfo) -> str:
    """Lun 18 nov 8:00 a. m. — fits a list row title (≤ 24)."""
    start = local(slot.start_at, clinic)
    return f"{short_date(start)} {time_label(start)}"


def doctor_line(doctor_name: str, specialty_name: str) -> str:
    return f"{doctor_name} · {specialty_name}" if specialty_name else doctor_name


# --- greetings and identity ------------------------------------------------------------------


def greeting(clinic: ClinicInfo, known_name: str = "") -> Reply:
    if known_name:
        return text(
            _(
                "Hi %(name)s! Welcome back to %(clinic)s. To continue, please write your "
                "document number."
            )
            % {"name": known_name, "clinic": clinic.name}
        )
    return text(
        _(
            "Hi! I'm Sophia, the virtual assistant of %(clinic)s. To help you, please write your "
            "document number (digits only)."
        )
        % {"clinic": clinic.name}
    )


def identify_first() -> Reply:
    return text(_("First I need to know who you are. Please write your document number."))


def invalid_document() -> Reply:
    return text(
        _(
            "That doesn't look like a document number. Please write it with 8 to 15 digits and "
            "no letters, for example 1020304050."
        )
    )


def identified(name: str) -> Reply:
    return text(
        _("Hi %(name)s! What symptoms do you have, or how can I help you?") % {"name": name}
    )


def ask_birth_date_to_verify() -> Reply:
    return text(
        _(
            "Thanks. To protect your information, please confirm your date of birth "
            "(for example 14/03/1985)."
        )
    )


def birth_date_first() -> Reply:
    return text(_("Please confirm your date of birth first (for example 14/03/1985)."))


def identity_failed() -> Reply:
    return text(
        _(
            "I couldn't confirm your identity, so I can't continue here. A person from the "
            "clinic will write to you soon."
        )
    )


def identity_needs_staff() -> Reply:
    return text(
        _(
            "To protect your information, a person from the clinic has to confirm your "
            "identity. They will write to you here soon."
        )
    )


def date_problem(problem: str) -> Reply:
    messages = {
        "future": _(
            "That date hasn't happened yet. Please check it and write it again "
            "(for example 14/03/1985)."
        ),
        "impossible": _("That date doesn't exist. Please check the day and the month."),
        "too_old": _("That date seems too far back. Please check the year."),
        "incomplete": _(
            "I need the day, the month and the year you were born, for example 14/03/1985."
        ),
    }
    return text(
        messages.get(problem)
        or _("I didn't understand the date. Please write it like this: 14/03/1985.")
    )


def birth_date_ambiguous(candidates: Sequence[dt.date]) -> Reply:
    years = [str(c.year) for c in candidates]
    return text(
        _("Were you born in %(first)s or in %(second)s? Write the year in full, like 14/03/1985.")
        % {"first": years[0], "second": years[-1]}
    )


def symptoms_kept_ask_name() -> Reply:
    return text(
        _(
            "I've noted what you feel, we'll use it to find your appointment. First I need your "
            "full name, first name and surname (for example: Ana María Gómez)."
        )
    )


def register_ask_name() -> Reply:
    # The same words whether or not the document is on file (DESIGN §6: no leak).
    return text(_("Thank you. Now your full name, please (first name and surname)."))


def register_bad_name() -> Reply:
    return text(
        _("Please write your full name, first name and surname (for example: Ana María Gómez).")
    )


def registered(name: str) -> Reply:
    return text(
        _("Done, %(name)s, you're registered! What symptoms do you have, or how can I help you?")
        % {"name": name}
    )


def identity_not_confirmed() -> Reply:
    """Said alike when a document is unknown here and when its checks failed (no leak)."""
    return text(
        _(
            "I couldn't confirm those details, so I can't continue here. A person from the "
            "clinic will write to you soon."
        )
    )


def whose_appointment(patients: Sequence[PatientInfo]) -> Reply:
    """Who the appointment is for: the patients this number speaks for, or someone else."""
    rows = [Row(id=f"who:{p.id}", title=p.full_name) for p in patients[: MAX_LIST_ROWS - 1]]
    rows.append(Row(id=WHO_SOMEONE_ELSE, title=_("Someone else")))
    return list_reply(
        _(
            "Who is the appointment for? Choose the person, or “Someone else” to add them "
            "(you'll need their document number)."
        ),
        _("Choose"),
        rows,
    )


WHO_SOMEONE_ELSE = "who:new"


def whose_appointment_help() -> Reply:
    return text(
        _(
            "Please choose from the list who the appointment is for, or write the person's "
            "document number."
        )
    )


def ask_other_document() -> Reply:
    return text(
        _(
            "Please write the document number of the person the appointment is for (for a "
            "child, their identity card or civil registry number)."
        )
    )


def booking_for(name: str) -> Reply:
    return text(_("All right, the appointment will be for %(name)s.") % {"name": name})


def registration_failed() -> Reply:
    return text(
        _(
            "Sorry, I couldn't complete your registration. A person from the team will write "
            "to you soon."
        )
    )


# --- safety, help, small talk -----------------------------------------------------------------


def emergency(clinic: ClinicInfo) -> Reply:
    return text(
        _(
            "⚠️ What you describe may be an emergency. Please call %(line)s right now or go to "
            "the nearest emergency room. I've also alerted the clinic's team."
        )
        % {"line": clinic.emergency_line}
    )


def unsupported() -> Reply:
    return text(
        _(
            "For now I can only read text messages and the options of lists and buttons. Could "
            "you write it to me, please? 🙂"
        )
    )


def human_requested() -> Reply:
    return text(_("Sure, I've let the team know. A person will write to you here soon."))


def queue_notice() -> Reply:
    return text(
        _(
            "You're in the queue: a person from the team will write to you here as soon as "
            "possible. If it's an emergency, call the emergency line."
        )
    )


HUMAN_YES = "human:yes"
HUMAN_NO = "human:no"


def unknown_question() -> Reply:
    return buttons_reply(
        _("I don't know the answer to that. Do you want me to put you through to a person?"),
        [Button(HUMAN_YES, _("Yes, a person")), Button(HUMAN_NO, _("No, thanks"))],
    )


def person_declined() -> Reply:
    return text(
        _("All right. You can ask me for an appointment, or write “mis citas” to see yours.")
    )


def goodbye() -> Reply:
    return text(_("You're welcome! Take care. If you need anything else, write to me here."))


def menu() -> Reply:
    return text(
        _(
            "I can help you with:\n"
            "📅 Booking an appointment: tell me your symptoms\n"
            "📋 “mis citas”: your upcoming appointments\n"
            "❌ “cancelar”: cancel an appointment\n"
            "🔁 “reprogramar”: change an appointment\n"
            "👤 “asesor”: talk with a person"
        )
    )


def generic_problem() -> Reply:
    return text(
        _(
            "Sorry, I couldn't do that right now. Please try again, or write “asesor” to talk "
            "with a person."
        )
    )


def address(clinic: ClinicInfo) -> Reply:
    if not clinic.address:
        return text(
            _("I don't have the address at hand. Write “asesor” and a person will help you.")
        )
    return text(
        _("📍 %(clinic)s is at %(address)s.") % {"clinic": clinic.name, "address": clinic.address}
    )


def hours(clinic: ClinicInfo) -> Reply:
    if not clinic.opening_hours:
        return text(
            _("I don't have the opening hours at hand. Write “asesor” and a person will help you.")
        )
    return text(_("🕒 Our opening hours: %(hours)s") % {"hours": clinic.opening_hours})


def _mid_sentence(value: str) -> str:
    """Clinic text placed inside a sentence: "Tu documento." → "tu documento" (not "EPS")."""
    value = value.strip().rstrip(".")
    if len(value) > 1 and value[0].isupper() and value[1].islower():
        value = value[0].lower() + value[1:]
    return value


def what_to_bring(clinic: ClinicInfo) -> Reply:
    bring = _mid_sentence(clinic.what_to_bring) or _(
        "your identity document and, if you have them, previous test results and prescriptions"
    )
    return text(_("🧾 For your appointment, please bring %(bring)s.") % {"bring": bring})


def phone(clinic: ClinicInfo) -> Reply:
    return text(
        _(
            "You can reach %(clinic)s right here on WhatsApp; write “asesor” to talk with a "
            "person. For emergencies call %(line)s."
        )
        % {"clinic": clinic.name, "line": clinic.emergency_line}
    )


# --- specialties and slots --------------------------------------------------------------------


def ask_symptoms() -> Reply:
    return text(
        _("Tell me what symptoms you have or which specialty you need, and I'll find you a time.")
    )


def choose_specialty(specialties: Sequence[SpecialtyInfo], no_slots_for: str = "") -> Reply:
    if no_slots_for:
        body = _(
            "Right now there are no free times for %(specialty)s. You can choose another "
            "specialty, or write “asesor” to talk with a person."
        ) % {"specialty": no_slots_for}
    else:
        body = _(
            "I want to find you the right doctor. Which specialty do you need? You can also tell "
            "me your symptoms in other words."
        )
    rows = [Row(id=f"spec:{s.slug}", title=s.name) for s in specialties]
    return list_reply(body, _("See specialties"), rows)


def no_slots_at_all(specialty_name: str) -> Reply:
    return text(
        _(
            "Right now there are no free times for %(specialty)s. Write “asesor” and a person "
            "will help you find one."
        )
        % {"specialty": specialty_name}
    )


def slot_list(
    slots: Sequence[SlotInfo],
    clinic: ClinicInfo,
    specialty_name: str,
    *,
    page: int,
    has_more: bool,
    intro: str = "",
) -> Reply:
    parts = [intro] if intro else []
    parts.append(
        _(
            "These are the free times for %(specialty)s. Choose one from the list or write "
            "its number."
        )
        % {"specialty": specialty_name}
    )
    if has_more and page > 1:
        parts.append(_("Write “más” for more times or “anterior” to go back."))
    elif has_more:
        parts.append(_("Write “más” to see more times."))
    elif page > 1:
        parts.append(_("Write “anterior” to go back."))
    rows = [
        Row(
            id=f"slot:{slot.id}",
            title=slot_title(slot, clinic),
            description=doctor_line(slot.doctor_name, specialty_name),
        )
        for slot in slots
    ]
    return list_reply(" ".join(parts), _("See times"), rows)


PART_OF_DAY_LABELS = {
    "morning": lambda: _("in the morning"),
    "midday": lambda: _("around midday"),
    "afternoon": lambda: _("in the afternoon"),
    "evening": lambda: _("in the evening"),
}


def _clock(value: str) -> str:
    hour, minute = (int(part) for part in value.split(":"))
    return time_label(dt.datetime(2000, 1, 1, hour, minute))


def request_label(want: dict, clinic: ClinicInfo) -> str:
    """ "del viernes 4 de diciembre en la tarde con la Dra. Rojas", from the engine's `want`."""
    parts = []
    first, last = want.get("from"), want.get("to")
    if first and first == last:
        day = dt.datetime.combine(dt.date.fromisoformat(first), dt.time(12))
        parts.append(_("on %(date)s") % {"date": long_date(day)})
    elif first and last:
        parts.append(
            _("between %(first)s and %(last)s")
            % {
                "first": long_date(dt.datetime.combine(dt.date.fromisoformat(first), dt.time())),
                "last": long_date(dt.datetime.combine(dt.date.fromisoformat(last), dt.time())),
            }
        )
    elif first:
        day = dt.datetime.combine(dt.date.fromisoformat(first), dt.time(12))
        parts.append(_("from %(date)s on") % {"date": long_date(day)})
    if want.get("weekdays"):
        names = [str(WEEKDAYS[d]).lower() for d in sorted(want["weekdays"])]
        parts.append(_("on %(days)s") % {"days": ", ".join(names)})
    part = want.get("part")
    if part in PART_OF_DAY_LABELS:
        parts.append(str(PART_OF_DAY_LABELS[part]()))
    elif want.get("time_from") and want.get("time_to"):
        parts.append(
            _("between %(first)s and %(last)s")
            % {"first": _clock(want["time_from"]), "last": _clock(want["time_to"])}
        )
    elif want.get("time_from"):
        parts.append(_("after %(time)s") % {"time": _clock(want["time_from"])})
    elif want.get("time_to"):
        parts.append(_("before %(time)s") % {"time": _clock(want["time_to"])})
    if want.get("doctor_name"):
        name = want["doctor_name"]
        # Spanish puts the article before a title: "con la Dra. Rojas", "con el Dr. García".
        title = name.split()[0].lower().rstrip(".") if name.split() else ""
        article = {"dra": "la ", "doctora": "la ", "dr": "el ", "doctor": "el "}.get(title, "")
        parts.append(_("with %(doctor)s") % {"doctor": f"{article}{name}"})
    return " ".join(parts)


def request_intro(want: dict, clinic: ClinicInfo) -> str:
    label = request_label(want, clinic)
    if want.get("earliest") and not label:
        return _("Here are the earliest free times.")
    return _("Here are the times %(what)s.") % {"what": label} if label else ""


def nothing_in_request(want: dict, clinic: ClinicInfo) -> Reply:
    return text(
        _("I found no free times %(what)s. Here are the nearest ones.")
        % {"what": request_label(want, clinic)}
    )


def doctor_not_found(said: str) -> Reply:
    return text(
        _("I didn't find a doctor called “%(name)s” at the clinic; here are all the times.")
        % {"name": said}
    )


def doctor_ambiguous(names: Sequence[str]) -> Reply:
    return text(
        _("Which one? We have %(names)s. Write the full name.") % {"names": ", ".join(names)}
    )


def no_previous_doctor() -> Reply:
    return text(_("I didn't find an earlier appointment of yours; here are all the doctors."))


def triaged_intro(specialty_name: str) -> str:
    return _("From what you tell me, %(specialty)s can help you.") % {"specialty": specialty_name}


def reschedule_intro(appointment: AppointmentInfo, clinic: ClinicInfo) -> str:
    start = local(appointment.start_at, clinic)
    return _("Let's move your appointment of %(date)s at %(time)s.") % {
        "date": long_date(start),
        "time": time_label(start),
    }


def no_more_pages() -> Reply:
    return text(_("Those are all the free times I have for now. Choose one from the list above."))


def first_page_already() -> Reply:
    return text(_("This is the first page of times. Choose one or write “más” for more."))


def slot_taken() -> Reply:
    return text(_("Sorry, someone just took that time. Here are the free times again."))


def hold_expired() -> Reply:
    return text(_("Sorry, that time is no longer available. Here are the free times again."))


def patient_overlap() -> Reply:
    return text(_("You already have an appointment at that time. Please choose another time."))


def time_not_found() -> Reply:
    return text(
        _(
            "I didn't find a free time at that hour in the next days. Choose one from the list "
            "or write “más” for more times."
        )
    )


def choose_slot_help(count: int) -> Reply:
    return text(
        _(
            "Choose a time from the list, or write its number (1 to %(n)s). Write “más” for more "
            "times or “asesor” to talk with a person."
        )
        % {"n": count}
    )


CONFIRM_YES = "confirm:yes"
CONFIRM_OTHER = "confirm:other"
CONFIRM_CANCEL = "confirm:cancel"


def confirm_slot(
    slot: SlotInfo, clinic: ClinicInfo, specialty_name: str, *, rescheduling: bool
) -> Reply:
    start = local(slot.start_at, clinic)
    values = {
        "date": long_date(start),
        "time": time_label(start),
        "doctor": slot.doctor_name,
        "specialty": specialty_name,
    }
    if rescheduling:
        body = _(
            "Shall I move your appointment to %(date)s at %(time)s with %(doctor)s (%(specialty)s)?"
        )
    else:
        body = _("You chose %(date)s at %(time)s with %(doctor)s (%(specialty)s). Shall I book it?")
    return buttons_reply(
        body % values,
        [
            Button(CONFIRM_YES, _("Yes, confirm")),
            Button(CONFIRM_OTHER, _("Another time")),
            Button(CONFIRM_CANCEL, _("Cancel")),
        ],
    )


def confirm_help(
    slot: SlotInfo, clinic: ClinicInfo, specialty_name: str, *, rescheduling: bool
) -> Reply:
    reply = confirm_slot(slot, clinic, specialty_name, rescheduling=rescheduling)
    return buttons_reply(
        _("Please tap a button, or answer “sí” or “no”.") + " " + reply.text, reply.buttons
    )


def booked(appointment: AppointmentInfo, clinic: ClinicInfo, *, rescheduled: bool) -> Reply:
    start = local(appointment.start_at, clinic)
    values = {
        "date": long_date(start),
        "time": time_label(start),
        "doctor": appointment.doctor_name,
        "specialty": appointment.specialty.name if appointment.specialty else "",
        "clinic": clinic.name,
        "address": clinic.address,
    }
    lines = [
        _("✅ Done, your appointment was moved!")
        if rescheduled
        else _("✅ Your appointment is booked!"),
        _("📅 %(date)s, %(time)s") % values,
        _("👩‍⚕️ %(doctor)s · %(specialty)s") % values
        if values["specialty"]
        else _("👩‍⚕️ %(doctor)s") % values,
        _("📍 %(clinic)s, %(address)s") % values if clinic.address else _("📍 %(clinic)s") % values,
    ]
    if clinic.what_to_bring:
        lines.append(_("🧾 Please bring: %(bring)s") % {"bring": clinic.what_to_bring})
    lines.append(_("If you need to cancel or change it, just write to me here."))
    return text("\n".join(lines))


def booking_dropped(*, rescheduling: bool) -> Reply:
    if rescheduling:
        return text(
            _("All right, your appointment stays as it was. Anything else I can help with?")
        )
    return text(_("All right, I didn't book anything. Anything else I can help with?"))


# --- the patient's appointments --------------------------------------------------------------


def appointment_line(
    appointment: AppointmentInfo, clinic: ClinicInfo, *, with_patient: bool = False
) -> str:
    start = local(appointment.start_at, clinic)
    specialty = appointment.specialty.name if appointment.specialty else ""
    who = doctor_line(appointment.doctor_name, specialty)
    line = f"• {short_date(start)}, {time_label(start)} — {who}"
    if with_patient and appointment.patient_name:
        line += f" · {appointment.patient_name}"
    return line


def _several_patients(appointments: Sequence[AppointmentInfo]) -> bool:
    return len({a.patient_id for a in appointments}) > 1


def upcoming(appointments: Sequence[AppointmentInfo], clinic: ClinicInfo) -> Reply:
    """One number's upcoming appointments; whose each is, when they are several people's."""
    if not appointments:
        return no_upcoming()
    several = _several_patients(appointments)
    lines = [_("Your upcoming appointments:")]
    lines += [
        appointment_line(a, clinic, with_patient=several) for a in appointments[:MAX_LIST_ROWS]
    ]
    return text("\n".join(lines))


def no_upcoming() -> Reply:
    return text(_("You have no upcoming appointments. If you want one, tell me your symptoms."))


def appointment_rows(appointments: Sequence[AppointmentInfo], clinic: ClinicInfo) -> list[Row]:
    rows = []
    several = _several_patients(appointments)
    for appointment in appointments[:MAX_LIST_ROWS]:
        start = local(appointment.start_at, clinic)
        specialty = appointment.specialty.name if appointment.specialty else ""
        description = doctor_line(appointment.doctor_name, specialty)
        if several and appointment.patient_name:
            description = f"{appointment.patient_name} · {description}"
        rows.append(
            Row(
                id=f"appt:{appointment.id}",
                title=f"{short_date(start)} {time_label(start)}",
                description=description,
            )
        )
    return rows


def pick_appointment(
    appointments: Sequence[AppointmentInfo], clinic: ClinicInfo, *, to_cancel: bool
) -> Reply:
    body = (
        _("Which appointment do you want to cancel?")
        if to_cancel
        else _("Which appointment do you want to change?")
    )
    return list_reply(body, _("See appointments"), appointment_rows(appointments, clinic))


def pick_appointment_help() -> Reply:
    return text(_("Please choose one of your appointments from the list, or write its number."))


CANCEL_YES = "cancel:yes"
CANCEL_NO = "cancel:no"


def confirm_cancel(appointment: AppointmentInfo, clinic: ClinicInfo) -> Reply:
    start = local(appointment.start_at, clinic)
    body = _("Do you want to cancel your appointment of %(date)s at %(time)s with %(doctor)s?") % {
        "date": long_date(start),
        "time": time_label(start),
        "doctor": appointment.doctor_name,
    }
    return buttons_reply(
        body,
        [
            Button(CANCEL_YES, _("Yes, cancel it")),
            Button(CANCEL_NO, _("No, keep it")),
        ],
    )


def cancelled(appointment: AppointmentInfo, clinic: ClinicInfo) -> Reply:
    start = local(appointment.start_at, clinic)
    return text(
        _(
            "Done, your appointment of %(date)s at %(time)s is cancelled. If you want another "
            "one, just write to me."
        )
        % {"date": long_date(start), "time": time_label(start)}
    )


def cancel_kept() -> Reply:
    return text(_("All right, your appointment stays as it is. Anything else I can help with?"))


def cancel_failed() -> Reply:
    return text(
        _("Sorry, I couldn't change that appointment. A person from the team will help you soon.")
    )


def thanks(name: str) -> Reply:
    return text(_("Thanks, %(name)s.") % {"name": name})
