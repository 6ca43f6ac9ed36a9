"""Small presentation helpers for the console's templates."""

from __future__ import annotations

from django import template
from django.utils.translation import gettext as _

from console import selectors

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """3725 → "1 h 02 min"; 300 → "5 min"; under a minute → "<1 min"."""
    try:
        seconds = int(seconds)
    except (TypeError, ValueError):
        return ""
    if seconds < 60:
        return _("<1 min")
    minutes = seconds // 60
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min"


@register.simple_tag
def choices(message) -> dict:
    """The list rows / reply buttons an outbound interactive message offered, or the choice an
    inbound reply made, as the patient saw them."""
    payload = message.payload if isinstance(message.payload, dict) else {}
    result: dict = {"rows": [], "buttons": [], "button": "", "picked": ""}
    if message.direction == "out" and payload.get("type") == "interactive":
        interactive = payload.get("interactive") or {}
        action = interactive.get("action") or {}
        result["body"] = (interactive.get("body") or {}).get("text", "")
        result["button"] = action.get("button", "")
        result["rows"] = [
            {"title": row.get("title", ""), "description": row.get("description", "")}
            for section in action.get("sections", []) or []
            for row in section.get("rows", []) or []
        ]
        result["buttons"] = [
            (b.get("reply") or {}).get("title", "") for b in action.get("buttons", []) or []
        ]
    elif message.direction == "in" and payload.get("type") == "interactive":
        interactive = payload.get("interactive") or {}
        reply = interactive.get("list_reply") or interactive.get("button_reply") or {}
        result["picked"] = reply.get("title", "")
    return result


register.filter("initials", selectors.initials)
