"""Websocket routes: the console's live channel and the WhatsApp simulator's phones."""

from django.urls import path

from bot.simulator import SimulatorConsumer
from clinics.consumers import AgendaConsumer
from console.consumers import LiveConsumer

websocket_urlpatterns: list = [
    path("ws/live/<int:clinic_id>/", LiveConsumer.as_asgi()),
    path("ws/live/<int:clinic_id>/conversation/<int:conversation_id>/", LiveConsumer.as_asgi()),
    path("ws/simulator/<int:clinic_id>/<str:phone>/", SimulatorConsumer.as_asgi()),
    path("ws/agenda/", AgendaConsumer.as_asgi()),
]
