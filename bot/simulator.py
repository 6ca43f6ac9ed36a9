"""The demo's WhatsApp: a fake Graph API plus a page where a person chats as a patient.

`make demo` has no Meta account, so WHATSAPP_API_URL points at `/simulator/graph`: the outbox
worker POSTs the bot's replies here exactly as it would to Meta. The page sends what the person
types as a realistic webhook payload, signed with WHATSAPP_APP_SECRET, through the real webhook
view; the replies, "typing…" and ticks arrive over a websocket (several phones side by side).
A phone's chat lives in the cache (it is a demo aid, not data). Only on with DEBUG or
SOPHIA_SIMULATOR.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from functools import wraps

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from bot import webhook
from clinics import access
from clinics.models import Clinic
from outreach import replies as outreach_replies
from sophia_web import live
from sophia_web.live import LiveConsumerMixin

app_name = "simulator"

STORE_SECONDS = 24 * 3600
TYPING_SECONDS = 10
DEFAULT_PHONE = "573001234567"
_PHONE = re.compile(r"^\d{8,15}$")
MAX_TEXT = 4096
MAX_PHONES = 4


def enabled() -> bool:
    return bool(settings.DEBUG or getattr(settings, "SOPHIA_SIMULATOR", False))


def _simulator_only(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not enabled():
            raise Http404("the simulator is off")
        return view(request, *args, **kwargs)

    return wrapper


# The chat store -------------------------------------------------------------------------------


def _key(phone_number_id: str, phone: str) -> str:
    return f"sophia:sim:{phone_number_id}:{phone}"


def group_name(phone_number_id: str, phone: str) -> str:
    """The channel group of one simulated phone (its page listens there)."""
    return f"sim-{phone_number_id}-{phone}"


def append_item(phone_number_id: str, phone: str, item: dict) -> int:
    """Add one chat bubble; its sequence number (atomic counter, so concurrent writers agree).

    The phone's page gets the bubble at once over its websocket.
    """
    key = _key(phone_number_id, phone)
    cache.add(f"{key}:seq", 0, STORE_SECONDS)
    seq = cache.incr(f"{key}:seq")
    item = {**item, "seq": seq}
    cache.set(f"{key}:item:{seq}", item, STORE_SECONDS)
    if item.get("wamid"):
        cache.set(f"{key}:wamid:{item['wamid']}", seq, STORE_SECONDS)
    group = group_name(phone_number_id, phone)
    if item["direction"] == "out":
        cache.delete(f"{key}:typing")
        live.send_ephemeral(group, "sim.typing", {"typing": False})
    live.send_now(group, "sim.bubble", render_bubble(item))
    return seq


def mark_read(phone_number_id: str, phone: str, wamid: str) -> None:
    """The bot read the patient's message: blue ticks on that bubble."""
    key = _key(phone_number_id, phone)
    seq = cache.get(f"{key}:wamid:{wamid}")
    item = cache.get(f"{key}:item:{seq}") if seq else None
    if item is None or item.get("read"):
        return
    item["read"] = True
    cache.set(f"{key}:item:{seq}", item, STORE_SECONDS)
    live.send_now(group_name(phone_number_id, phone), "sim.bubble", render_bubble(item))


def render_bubble(item: dict) -> str:
    return render_to_string("bot/_sim_bubble.html", {"item": item})


def items_after(phone_number_id: str, phone: str, after: int) -> list[dict]:
    """Bubbles after `after`, stopping at a gap (a writer between its counter and its item)."""
    key = _key(phone_number_id, phone)
    last = cache.get(f"{key}:seq") or 0
    if last <= after:
        return []
    found = cache.get_many([f"{key}:item:{n}" for n in range(after + 1, last + 1)])
    items = []
    for n in range(after + 1, last + 1):
        item = found.get(f"{key}:item:{n}")
        if item is None:
            break
        items.append(item)
    return items


def is_typing(phone_number_id: str, phone: str) -> bool:
    return bool(cache.get(f"{_key(phone_number_id, phone)}:typing"))


def _bubble_from_graph(body: dict) -> dict:
    """What the patient's phone would show for one Graph API message body."""
    kind = body.get("type")
    item: dict = {"direction": "out", "kind": "text", "text": "", "rows": [], "buttons": []}
    if kind == "text":
        item["text"] = str(body.get("text", {}).get("body", ""))
    elif kind == "interactive":
        interactive = body.get("interactive", {})
        action = interactive.get("action", {})
        item["text"] = str(interactive.get("body", {}).get("text", ""))
        if interactive.get("type") == "list":
            item["kind"] = "list"
            item["button"] = str(action.get("button", ""))
            item["rows"] = [
                {
                    "id": str(row.get("id", "")),
                    "title": str(row.get("title", "")),
                    "description": str(row.get("description", "")),
                    "vals": json.dumps(
                        {
                            "reply_type": "list_reply",
                            "reply_id": row.get("id", ""),
                            "reply_title": row.get("title", ""),
                        }
                    ),
                }
                for section in action.get("sections", [])
                for row in section.get("rows", [])
            ]
        else:
            item["kind"] = "buttons"
            item["buttons"] = [
                {
                    "id": str(b.get("reply", {}).get("id", "")),
                    "title": str(b.get("reply", {}).get("title", "")),
                    "vals": json.dumps(
                        {
                            "reply_type": "button_reply",
                            "reply_id": b.get("reply", {}).get("id", ""),
                            "reply_title": b.get("reply", {}).get("title", ""),
                        }
                    ),
                }
                for b in action.get("buttons", [])
            ]
    elif kind == "template":
        template = body.get("template", {})
        components = [c for c in template.get("components", []) or [] if isinstance(c, dict)]
        params = [
            str(p.get("text", ""))
            for c in components
            if c.get("type") == "body"
            for p in c.get("parameters", []) or []
            if isinstance(p, dict)
        ]
        payloads = [
            str(p.get("payload", ""))
            for c in components
            if c.get("type") == "button"
            for p in c.get("parameters", []) or []
            if isinstance(p, dict) and p.get("payload")
        ]
        item["kind"] = "buttons" if payloads else "template"
        item["text"] = _("Template: %(name)s") % {"name": template.get("name", "")}
        if params:
            item["text"] += " — " + ", ".join(params)
        # Quick replies come back as a "button" message carrying the payload (reminders…).
        item["buttons"] = [
            {
                "id": payload,
                "title": outreach_replies.template_button_title(payload),
                "vals": json.dumps(
                    {
                        "reply_type": "template_button",
                        "reply_id": payload,
                        "reply_title": outreach_replies.template_button_title(payload),
                    }
                ),
            }
            for payload in payloads
        ]
    else:
        item["text"] = f"[{kind}]"
    return item


# The fake Graph API ---------------------------------------------------------------------------


def _graph_error(status: int, code: int, message: str) -> JsonResponse:
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "SIM"}
    return JsonResponse({"error": error}, status=status)


@csrf_exempt
@require_POST
@_simulator_only
def graph(request: HttpRequest, phone_number_id: str) -> HttpResponse:
    """POST /simulator/graph/<phone_number_id>/messages, answered like the Cloud API."""
    clinic = Clinic.objects.filter(phone_number_id=phone_number_id).first()
    tokens = {settings.WHATSAPP_ACCESS_TOKEN} | (
        {clinic.whatsapp_access_token} if clinic else set()
    )
    sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if not sent or not any(t and secrets.compare_digest(sent, t) for t in tokens):
        return _graph_error(401, 190, "Invalid OAuth access token.")
    try:
        body = json.loads(request.body)
    except ValueError:
        return _graph_error(400, 100, "The request body is not JSON.")
    if not isinstance(body, dict):
        return _graph_error(400, 100, "The request body must be a JSON object.")

    if body.get("status") == "read":
        # Mark-read + typing indicator: blue ticks and "typing…" on the phone that wrote it.
        wamid = str(body.get("message_id", ""))
        target = cache.get(f"sophia:sim:wamid:{wamid}")
        if target:
            mark_read(*target, wamid)
            if "typing_indicator" in body:
                cache.set(f"{_key(*target)}:typing", True, TYPING_SECONDS)
                live.send_ephemeral(group_name(*target), "sim.typing", {"typing": True})
        return JsonResponse({"success": True})

    to = str(body.get("to", ""))
    if not _PHONE.match(to) or body.get("type") not in ("text", "interactive", "template"):
        return _graph_error(400, 100, "Invalid parameter.")
    wamid = f"wamid.SIM{secrets.token_hex(12)}"
    append_item(phone_number_id, to, {**_bubble_from_graph(body), "wamid": wamid})
    return JsonResponse(
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": wamid}],
        }
    )


# The page -------------------------------------------------------------------------------------


def _clinics_for(user) -> list[Clinic]:
    return list(access.staff_clinics(user))


def _chat(request: HttpRequest, source) -> tuple[list[Clinic], Clinic, str]:
    """The user's clinics, the chosen clinic (404 if not theirs) and the patient phone."""
    clinics = _clinics_for(request.user)
    if not clinics:
        raise PermissionDenied("the simulator is for clinic staff")
    clinic_id = source.get("clinic")
    if clinic_id:
        if not str(clinic_id).isdigit():
            raise Http404("unknown clinic")
        clinic = get_object_or_404(Clinic, pk=int(clinic_id), pk__in=[c.pk for c in clinics])
    else:
        clinic = clinics[0]
    phone = re.sub(r"\D", "", source.get("phone", "") or "") or DEFAULT_PHONE
    return clinics, clinic, phone


def _phones(source) -> list[str]:
    """The phones side by side: `?phones=573001234567,573005556677` (or one `phone`)."""
    raw = source.get("phones") or source.get("phone") or DEFAULT_PHONE
    phones = []
    for part in re.split(r"[,\s]+", raw):
        digits = re.sub(r"\D", "", part)
        if digits and digits not in phones:
            phones.append(digits)
    return phones[:MAX_PHONES] or [DEFAULT_PHONE]


@require_GET
@_simulator_only
@login_required
def page(request: HttpRequest) -> HttpResponse:
    clinics, clinic, _phone = _chat(request, request.GET)
    name = request.GET.get("name", "")[:80] or "Paciente Demo"
    phones = []
    for number in _phones(request.GET):
        ok = bool(_PHONE.match(number))
        group = group_name(clinic.phone_number_id, number)
        # The sequence number first: a bubble stored while the page renders is replayed.
        seq = live.page_sequences([group])[group] if ok else 0
        items = items_after(clinic.phone_number_id, number, 0) if ok else []
        phones.append(
            {
                "number": number,
                "ok": ok,
                "items": items,
                "typing": ok and is_typing(clinic.phone_number_id, number),
                "live_seq": json.dumps({group: seq}),
                "name": name if len(phones) == 0 else f"{name} {len(phones) + 1}",
            }
        )
    context = {
        "clinics": clinics,
        "clinic": clinic,
        "phones": phones,
        "phones_value": ",".join(p["number"] for p in phones),
        "name": name,
        "secret_missing": not settings.WHATSAPP_APP_SECRET,
    }
    return render(request, "bot/simulator.html", context)


@require_POST
@_simulator_only
@login_required
def send(request: HttpRequest) -> HttpResponse:
    """Turn what the person typed (or tapped) into a signed webhook POST to the real view."""
    _clinics, clinic, phone = _chat(request, request.POST)
    if not _PHONE.match(phone):
        return _status(request, phone, _("The phone number must have 8 to 15 digits."), 400)
    name = request.POST.get("name", "")[:80] or "Paciente Demo"
    reply_type = request.POST.get("reply_type", "")
    wamid = f"wamid.SIMIN{secrets.token_hex(12)}"
    message: dict = {"from": phone, "id": wamid, "timestamp": str(int(time.time()))}
    if reply_type in ("list_reply", "button_reply"):
        title = request.POST.get("reply_title", "")[:100]
        reply = {"id": request.POST.get("reply_id", "")[:256], "title": title}
        message |= {"type": "interactive", "interactive": {"type": reply_type, reply_type: reply}}
        bubble = title
    elif reply_type == "template_button":
        title = request.POST.get("reply_title", "")[:100]
        payload = request.POST.get("reply_id", "")[:256]
        message |= {"type": "button", "button": {"payload": payload, "text": title}}
        bubble = title
    elif reply_type == "image":
        message |= {"type": "image", "image": {"id": "SIM-MEDIA", "mime_type": "image/jpeg"}}
        bubble = _("📷 Photo")
    else:
        text = request.POST.get("text", "").strip()[:MAX_TEXT]
        if not text:
            return _status(request, phone, _("Write a message first."), 400)
        message |= {"type": "text", "text": {"body": text}}
        bubble = text

    cache.set(f"sophia:sim:wamid:{wamid}", (clinic.phone_number_id, phone), STORE_SECONDS)
    append_item(clinic.phone_number_id, phone, {"direction": "in", "text": bubble, "wamid": wamid})
    value = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": "15550000000",
            "phone_number_id": clinic.phone_number_id,
        },
        "contacts": [{"profile": {"name": name}, "wa_id": phone}],
        "messages": [message],
    }
    response = _post_webhook(value)
    if response.status_code != 200:
        reason = response.content.decode(errors="replace")[:200]
        text = _("The webhook answered %(status)s: %(reason)s") % {
            "status": response.status_code,
            "reason": reason,
        }
        return _status(request, phone, text, 502)
    return _status(request, phone, "", 200)


def _post_webhook(value: dict) -> HttpResponse:
    """Sign one webhook `value` as Meta would and run the real webhook view on it."""
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "SIMULATOR", "changes": [{"field": "messages", "value": value}]}],
        }
    ).encode()
    request = RequestFactory().post(
        reverse("bot:webhook"),
        data=body,
        content_type="application/json",
        headers={"X-Hub-Signature-256": webhook.signature_for(body)},
    )
    return webhook.webhook(request)


def _acknowledge(clinic: Clinic, phone: str, wamids: list[str]) -> None:
    """The phone showed these replies: report them delivered and read, as WhatsApp does."""
    if not wamids or not settings.WHATSAPP_APP_SECRET:
        return
    now = str(int(time.time()))
    statuses = [
        {"id": wamid, "status": status, "timestamp": now, "recipient_id": phone}
        for wamid in wamids
        for status in ("delivered", "read")
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": "15550000000",
            "phone_number_id": clinic.phone_number_id,
        },
        "statuses": statuses,
    }
    _post_webhook(value)


def _status(request: HttpRequest, phone: str, text: str, status: int) -> HttpResponse:
    # htmx swaps only 2xx answers by default: errors are shown with a 200 and the text.
    code = status if not request.htmx else 200
    return render(
        request,
        "bot/simulator.html#status",
        {"status_text": text, "error": status >= 400, "phone": {"number": phone}},
        status=code,
    )


def acknowledge_shown(clinic_id: int, phone: str, wamids: list[str]) -> None:
    """The phone's page showed these replies (websocket): delivered and read, as WhatsApp does."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None or not _PHONE.match(phone):
        return
    wamids = [w for w in wamids if isinstance(w, str) and w.startswith("wamid.SIM")][:50]
    _acknowledge(clinic, phone, wamids)


class SimulatorConsumer(LiveConsumerMixin, AsyncJsonWebsocketConsumer):
    """One simulated phone's live chat: bubbles, "typing…", ticks; the page acknowledges what
    it showed (delivered + read statuses through the real webhook)."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        kwargs = self.scope["url_route"]["kwargs"]
        self.joined = []
        self.phone = kwargs["phone"]
        if (
            not enabled()
            or user is None
            or not user.is_authenticated
            or not _PHONE.match(self.phone)
        ):
            await self.close(code=4403)
            return
        clinic = await database_sync_to_async(access.clinic_for_user)(user, kwargs["clinic_id"])
        if clinic is None:
            await self.close(code=4403)
            return
        self.clinic_id = clinic.pk
        self.joined = [group_name(clinic.phone_number_id, self.phone)]
        await self.channel_layer.group_add(self.joined[0], self.channel_name)
        await self.accept()
        await self.start_watching()

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict):
            return
        if content.get("action") == "resync":
            await self.resync(content.get("since"))
        elif content.get("action") == "ack" and isinstance(content.get("wamids"), list):
            await database_sync_to_async(acknowledge_shown)(
                self.clinic_id, self.phone, content["wamids"]
            )


urlpatterns = [
    path("", page, name="page"),
    path("send/", send, name="send"),
    path("graph/<str:phone_number_id>/messages", graph, name="graph"),
]
