"""Websocket routes; the live dashboard's consumers are added here."""

from django.urls import path

from clinics.consumers import AgendaConsumer

websocket_urlpatterns: list = [
    path("ws/agenda/", AgendaConsumer.as_asgi()),
]
