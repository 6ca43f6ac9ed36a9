"""Inbound WhatsApp webhook (DESIGN §7). Placeholder until the bot issue lands."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def webhook(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=503)
