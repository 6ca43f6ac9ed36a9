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
        # must not wait for them, so the agenda's publisher thread does it (in order).
        cells.add(clinic_id, slot_ids)


CELLS_EVERY = 0.1  # seconds; a calendar shows a booking this much later at most


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


# clinic id → slot ids whose cells wait for the agenda's own publisher thread.
cells = live.Coalescer(send_cells, every=CELLS_EVERY, name="sophia-live-agenda")
