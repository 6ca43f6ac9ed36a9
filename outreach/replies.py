"""What reminders and waitlist offers say, in Spanish through gettext (msgids in English).

Worker-started messages (a reminder, a waitlist offer, "someone else took it") and the bot's
answers to their buttons are built here, so the wording of one feature lives in one place. No
ORM at run time: bot.engine imports this module.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Protocol

from django.utils.translation import gettext as _

from bot import replies as bot_replies
from bot.messages import AppointmentInfo, Button, OutreachResult, Reply

if TYPE_CHECKING:
    import zoneinfo

    from clinics.models import Appointment, Slot


class HasTimeZone(Protocol):
    """A clinic as the worker (clinics.models.Clinic) or the engine (ClinicInfo) holds it."""

    name: str

    @property
    def tz(self) -> zoneinfo.ZoneInfo: ...


# Button and template payload ids; the engine routes them (bot/engine.py).
REMINDER_CONFIRM = "reminder:confirm:"
REMINDER_CANCEL = "reminder:cancel:"
WAITLIST_ACCEPT = "waitlist:accept:"
WAITLIST_DECLINE = "waitlist:decline:"
WAITLIST_JOIN = "waitlist:join:"
WAITLIST_NO = "waitlist:no"


def template_button_title(payload: str) -> str:
    """The words of the approved templates' quick-reply buttons, for a payload (the template
    itself holds them at Meta; the demo's simulator shows them from here)."""
    titles = (
        (REMINDER_CONFIRM, _("Confirm")),
        (REMINDER_CANCEL, _("Cancel")),
        (WAITLIST_ACCEPT, _("Yes, I want it")),
        (WAITLIST_DECLINE, _("No, thanks")),
    )
    return next((title for prefix, title in titles if payload.startswith(prefix)), payload)


def when(moment: dt.datetime, clinic: HasTimeZone) -> tuple[str, str]:
    """("jueves 3 de diciembre", "8:00 a. m.") in the clinic's time zone."""
    local = bot_replies.local(moment, clinic)
    return bot_replies.long_date(local), bot_replies.time_label(local)


def first_name(full_name: str) -> str:
    return (full_name.split() or [""])[0]


# --- reminders -------------------------------------------------------------------------------


def reminder_parameters(appointment: Appointment, clinic: HasTimeZone) -> list[str]:
    """The approved template's body parameters {{1}}…{{4}}: name, date, time, doctor."""
    day, time = when(appointment.start_at, clinic)
    return [first_name(appointment.patient.full_name), day, time, appointment.doctor.full_name]


def reminder_text(appointment: Appointment, clinic: HasTimeZone) -> str:
    """How the template reads, for the staff's view of the conversation."""
    name, day, time, doctor = reminder_parameters(appointment, clinic)
    return _(
        "Hello %(name)s, we remind you of your appointment on %(day)s at %(time)s with "
        "%(doctor)s at %(clinic)s. Will you attend?"
    ) % {"name": name, "day": day, "time": time, "doctor": doctor, "clinic": clinic.name} + (
        f"\n[{_('Confirm')}] [{_('Cancel')}]"
    )


def reminder_confirmed(appointment: AppointmentInfo, clinic: HasTimeZone) -> Reply:
    day, time = when(appointment.start_at, clinic)
    return bot_replies.text(
        _("Thank you! Your appointment on %(day)s at %(time)s is confirmed. See you then.")
        % {"day": day, "time": time}
    )


def reminder_already_confirmed(appointment: AppointmentInfo, clinic: HasTimeZone) -> Reply:
    day, time = when(appointment.start_at, clinic)
    return bot_replies.text(
        _("Your appointment on %(day)s at %(time)s was already confirmed. See you then.")
        % {"day": day, "time": time}
    )


def reminder_cancelled(appointment: AppointmentInfo, clinic: HasTimeZone) -> Reply:
    day, time = when(appointment.start_at, clinic)
    return bot_replies.text(
        _(
            "Your appointment on %(day)s at %(time)s is cancelled. If you want another one, "
            "write “agendar”."
        )
        % {"day": day, "time": time}
    )


def reminder_already_cancelled() -> Reply:
    return bot_replies.text(
        _("That appointment was already cancelled. If you want another one, write “agendar”.")
    )


def reminder_too_late() -> Reply:
    return bot_replies.text(
        _(
            "That appointment can no longer be changed from here. Write “asesor” to talk to "
            "a person."
        )
    )


def reminder_not_found() -> Reply:
    return bot_replies.text(
        _(
            "We could not find that reminder. Write “mis citas” to see your appointments or "
            "“asesor” to talk to a person."
        )
    )


def reminder_result(result: OutreachResult, clinic: HasTimeZone) -> Reply:
    """The bot's answer to a Confirm / Cancel tap (or "confirmo" / "cancelar")."""
    appointment = result.appointment
    if appointment is not None:
        if result.outcome == "confirmed":
            return reminder_confirmed(appointment, clinic)
        if result.outcome == "already_confirmed":
            return reminder_already_confirmed(appointment, clinic)
        if result.outcome == "cancelled":
            return reminder_cancelled(appointment, clinic)
    if result.outcome == "already_cancelled":
        return reminder_already_cancelled()
    if result.outcome == "too_late":
        return reminder_too_late()
    return reminder_not_found()


def reminders_stopped() -> Reply:
    return bot_replies.text(
        _(
            "Done: we will not send you appointment reminders any more. If you want them back, "
            "write “quiero recordatorios”."
        )
    )


def reminders_resumed() -> Reply:
    return bot_replies.text(_("Done: we will remind you of your appointments again."))


# --- waitlist --------------------------------------------------------------------------------


def waitlist_invite(specialty_name: str, join_id: str) -> Reply:
    """What the bot adds when no slot fits: join the specialty's waitlist? `join_id` is the
    specialty's slug, optionally followed by ":<doctor id>:<part of day>"."""
    return bot_replies.buttons_reply(
        _(
            "Would you like to join the waitlist for %(specialty)s? When a time frees up we "
            "will offer it to you here."
        )
        % {"specialty": specialty_name},
        [
            Button(id=f"{WAITLIST_JOIN}{join_id}", title=_("Join the waitlist")),
            Button(id=WAITLIST_NO, title=_("No, thanks")),
        ],
    )


def waitlist_joined(specialty_name: str, *, already: bool) -> Reply:
    if already:
        body = _("You are already on the waitlist for %(specialty)s. We will write to you.")
    else:
        body = _(
            "You are on the waitlist for %(specialty)s. When a time frees up we will offer it "
            "to you here; the first to accept gets it."
        )
    return bot_replies.text(body % {"specialty": specialty_name})


def waitlist_not_joined() -> Reply:
    return bot_replies.text(_("All right. Write “agendar” whenever you want to look again."))


def offer_parameters(slot: Slot, clinic: HasTimeZone, specialty_name: str) -> list[str]:
    """The waitlist template's body parameters {{1}}…{{4}}: specialty, date, time, doctor."""
    day, time = when(slot.start_at, clinic)
    return [specialty_name, day, time, slot.doctor.full_name]


def offer_body(slot: Slot, clinic: HasTimeZone, specialty_name: str, minutes: int) -> str:
    specialty, day, time, doctor = offer_parameters(slot, clinic, specialty_name)
    return _(
        "Good news from the waitlist: a time for %(specialty)s freed up on %(day)s at %(time)s "
        "with %(doctor)s. Do you want it? The first to accept gets it (this offer lasts "
        "%(minutes)s minutes)."
    ) % {"specialty": specialty, "day": day, "time": time, "doctor": doctor, "minutes": minutes}


def offer(offer_id: int, body: str) -> Reply:
    return bot_replies.buttons_reply(
        body,
        [
            Button(id=f"{WAITLIST_ACCEPT}{offer_id}", title=_("Yes, I want it")),
            Button(id=f"{WAITLIST_DECLINE}{offer_id}", title=_("No, thanks")),
        ],
    )


def offer_accepted(appointment: AppointmentInfo, clinic: HasTimeZone) -> Reply:
    day, time = when(appointment.start_at, clinic)
    return bot_replies.text(
        _(
            "It is yours! Your appointment is booked for %(day)s at %(time)s with %(doctor)s. "
            "We have taken you off the waitlist."
        )
        % {"day": day, "time": time, "doctor": appointment.doctor_name}
    )


def offer_taken() -> Reply:
    return bot_replies.text(
        _(
            "We are sorry: someone else took that time a moment ago. You keep your place on the "
            "waitlist and we will write to you again."
        )
    )


def offer_declined() -> Reply:
    return bot_replies.text(
        _("All right, we will offer it to someone else. You keep your place on the waitlist.")
    )


def offer_overlap() -> Reply:
    return bot_replies.text(
        _(
            "You already have an appointment at that time, so we will offer this one to someone "
            "else. You keep your place on the waitlist."
        )
    )


def offer_result(result: OutreachResult, clinic: HasTimeZone) -> Reply:
    """The bot's answer to a waitlist offer's buttons."""
    if result.outcome == "booked" and result.appointment is not None:
        return offer_accepted(result.appointment, clinic)
    if result.outcome == "taken":
        return offer_taken()
    if result.outcome == "declined":
        return offer_declined()
    if result.outcome == "overlap":
        return offer_overlap()
    return offer_gone()


def offer_gone() -> Reply:
    return bot_replies.text(
        _(
            "That offer is no longer open. You keep your place on the waitlist and we will "
            "write to you again."
        )
    )
