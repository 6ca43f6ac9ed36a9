"""Template tags of the console shell (templates/base.html)."""

from __future__ import annotations

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from clinics import access

register = template.Library()


@register.simple_tag(takes_context=True)
def nav_item(context: template.Context, url_name: str, label: str, admin_only: bool = False):
    """One link of the console's nav; nothing when the page does not exist (yet) or the user
    lacks the role, so every section can be listed in base.html before its branch lands."""
    request = context.get("request")
    if request is None:
        return ""
    if admin_only and not access.is_clinic_admin(access.membership_for(request)):
        return ""
    try:
        url = reverse(url_name)
    except NoReverseMatch:
        return ""
    root = reverse("console:home")
    active = request.path == url if url == root else request.path.startswith(url)
    return format_html(
        '<li><a class="nav-link{}" href="{}"{}>{}</a></li>',
        " is-active" if active else "",
        url,
        mark_safe(' aria-current="page"') if active else "",
        label,
    )
