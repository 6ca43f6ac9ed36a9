"""The calendar cell, rendered in Python: one home for its markup (the grid and the live updates
both use it), and fast — a day view has hundreds of cells, and a template include per cell cost
more than the whole database work of the page (bench/bench_agenda.py)."""

from __future__ import annotations

from html import escape

from django import template
from django.urls import reverse
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from clinics.selectors import CalendarCell

register = template.Library()


def _labels() -> dict:
    return {
        # The URL is built by hand from one reverse: reversing per cell is a large share.
        "url": reverse("clinics:slot", args=[0]),
        "free": escape(_("Free")),
        "held": escape(_("Held")),
        "booked": escape(_("Booked")),
        "blocked": escape(_("Blocked")),
        # After a patient's name: the appointment's status when it is more than booked.
        "appointment": {
            "confirmed": " ✓",
            "attended": " · " + escape(_("attended")),
            "no_show": " · " + escape(_("no show")),
        },
    }


def cell_html(cell: CalendarCell, *, oob: bool = False, labels: dict | None = None) -> SafeString:
    """One cell as a button that opens the slot's panel; `oob` for an htmx out-of-band swap.

    Plain string building with the standard library's escape: format_html's lazy-aware escaping
    cost ~0.1 ms per cell, most of a 480-cell day view.
    """
    labels = labels or _labels()
    if cell.patient_name:
        label = escape(cell.patient_name) + labels["appointment"].get(
            cell.appointment_status or "", ""
        )
    else:
        label = labels.get(cell.state, labels["blocked"])
    classes = f"cell cell-{cell.state}"
    if cell.appointment_status:
        classes += f" appt-{cell.appointment_status}"
    swap = ""
    if oob:
        classes += " cell-flash"
        swap = ' hx-swap-oob="true"'
    url = labels["url"].replace("/0/", f"/{int(cell.slot_id)}/")
    # state and appointment status are our own choice values; ids are ints; the only free text
    # (the patient's name) is escaped above, and the labels when they are built.
    return SafeString(
        f'<button type="button" id="slot-{int(cell.slot_id)}" class="{classes}"{swap} '
        f'hx-get="{url}" hx-target="#panel" data-state="{cell.state}" '
        f'data-slot="{int(cell.slot_id)}"><span class="cell-time">{cell.start:%H:%M}</span>'
        f'<span class="cell-label">{label}</span></button>'
    )


@register.simple_tag(takes_context=True)
def calendar_cell(context: template.Context, cell: CalendarCell, oob: bool = False) -> SafeString:
    # Labels once per rendering, not once per cell.
    labels = context.render_context.get("_cell_labels")
    if labels is None:
        labels = _labels()
        context.render_context["_cell_labels"] = labels
    return cell_html(cell, oob=oob, labels=labels)


@register.simple_tag(takes_context=True)
def calendar_cells(context: template.Context, cells: list[CalendarCell]) -> SafeString:
    """A column's cells in one call (one tag call per cell was a visible share of a page)."""
    labels = context.render_context.get("_cell_labels")
    if labels is None:
        labels = _labels()
        context.render_context["_cell_labels"] = labels
    return SafeString("".join(cell_html(cell, labels=labels) for cell in cells))
