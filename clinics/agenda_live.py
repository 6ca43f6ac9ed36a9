"""Domain events → the agenda's live calendars (receivers only notify; no business logic).

A booking, cancellation, hold or status change re-renders that slot's cell and sends it to
`agenda-<clinic>`; htmx swaps it in place on every open calendar (out-of-band, by id). A bulk
change (schedule, absence, holiday) tells the calendars to reload their grid.

Cells are rendered in the agenda's own publisher thread, never in the booking's caller, and only
when some calendar of the clinic is open. Slots that change while the clinic's previous cells
still wait for the publisher join them: a burst of bookings costs one "who watches?" and one send,
with each cell rendered from the state it has by then (the latest). A clinic's cells go at most
every CELLS_EVERY seconds: the first change after a quiet spell goes at once, the changes of a
busy spell wait for the rest of that interval and go together. Without it every booking woke the
publisher for a Redis round trip of its own (~16 % of a booking's Python: py-spy of 4,000
bookings in one process); the agenda's own thread waits without holding up the console's
live events.
"""

from __future__ import annotations

import logging
import threading
import time

from django.dispatch import receiver
from django.utils import timezone

from clinics import selectors
from clinics.consumers import agenda_group
from clinics.events import domain_event
from clinics.models import Clinic
from clinics.templatetags.agenda import cell_html
from sophia_web import live

logger = logging.getLogger(__name__)


def cells_html(clinic: Clinic, slot_ids: list[int]) -> str:
    """The cells of these slots as out-of-band fragments (time shown in the clinic's zone)."""
    parts = []
    with timezone.override(clinic.tz):
        for slot_id in slot_ids:
            cell = selectors.calendar_cell(clinic=clinic, slot_id=slot_id)
            if cell is not None:
                parts.append(cell_html(cell, oob=True))
    return "".join(parts)


@receiver(domain_event, dispatch_uid="clinics.agenda_live")
def update_calendars(sender, clinic_id: int, name: str, payload: dict, **kwargs) -> None:
    group = agenda_group(clinic_id)
    if name == "agenda.actualizada":
        live.broadcast(group, "agenda-refresh", {"doctor_ids": payload.get("doctor_ids")})
        return
    slot_ids = [payload.get("slot_id")]
    previous = payload.get("previous")
    if isinstance(previous, dict):
        slot_ids.append(previous.get("slot_id"))
    slot_ids = [i for i in slot_ids if isinstance(i, int)]
    if slot_ids:
        # Rendering the cells costs queries and a template; the booking that emitted the event
        # must not wait for them, so the live publisher's thread does it (in order).
        _queue_cells(clinic_id, slot_ids)


CELLS_EVERY = 0.1  # seconds; a calendar shows a booking this much later at most
publisher = live.Publisher("sophia-live-agenda")

# clinic id → slot ids whose cells wait for the publisher (one task per clinic at a time).
_pending_lock = threading.Lock()
_pending: dict[int, dict[int, None]] = {}
# clinic id → when its cells last went (time.monotonic()).
_last_sent: dict[int, float] = {}


def _queue_cells(clinic_id: int, slot_ids: list[int]) -> None:
    with _pending_lock:
        waiting = _pending.get(clinic_id)
        if waiting is not None:  # a task for this clinic is queued: it will send these too
            waiting.update(dict.fromkeys(slot_ids))
            return
        _pending[clinic_id] = dict.fromkeys(slot_ids)
    publisher.submit(_send_pending, clinic_id)


def _send_pending(clinic_id: int) -> None:
    if publisher.in_background():  # inline (the in-process layer), the caller must not wait
        wait = _last_sent.get(clinic_id, float("-inf")) + CELLS_EVERY - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the agenda's thread: changes meanwhile join this send
    _last_sent[clinic_id] = time.monotonic()
    with _pending_lock:
        slot_ids = list(_pending.pop(clinic_id, {}))
    if slot_ids:
        send_cells(clinic_id, slot_ids)


def send_cells(clinic_id: int, slot_ids: list[int]) -> None:
    """Render these slots' cells and send them to the clinic's open calendars (if any)."""
    if not live.watching([agenda_group(clinic_id)]):
        return
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None:
        return
    html = cells_html(clinic, slot_ids)
    if html:
        live.send_now(agenda_group(clinic_id), "agenda-cell", html)
