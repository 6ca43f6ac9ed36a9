from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from integrations.api import errors, views

app_name = "api"


class PublicSchemaView(SpectacularAPIView):
    """The OpenAPI schema and its docs pages are public (they hold no clinic data)."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []


class PublicSwaggerView(SpectacularSwaggerView):
    authentication_classes = []
    permission_classes = []
    throttle_classes = []


class PublicRedocView(SpectacularRedocView):
    authentication_classes = []
    permission_classes = []
    throttle_classes = []


urlpatterns = [
    path("health/", views.HealthView.as_view(), name="health"),
    path("health/detailed/", views.DetailedHealthView.as_view(), name="health-detailed"),
    path("citas/disponibles/", views.AvailableSlotsView.as_view(), name="available"),
    path("slots/<int:slot_id>/hold/", views.SlotHoldView.as_view(), name="slot-hold"),
    path("citas/", views.AppointmentsView.as_view(), name="appointments"),
    path("citas/proximas/", views.UpcomingAppointmentsView.as_view(), name="upcoming"),
    path(
        "citas/<int:appointment_id>/",
        views.AppointmentDetailView.as_view(),
        name="appointment",
    ),
    path(
        "citas/<int:appointment_id>/cancelar/",
        views.AppointmentCancelView.as_view(),
        name="appointment-cancel",
    ),
    path(
        "citas/<int:appointment_id>/confirmar/",
        views.AppointmentConfirmView.as_view(),
        name="appointment-confirm",
    ),
    path(
        "citas/<int:appointment_id>/reprogramar/",
        views.AppointmentRescheduleView.as_view(),
        name="appointment-reschedule",
    ),
    path("pacientes/", views.PatientsView.as_view(), name="patients"),
    path("estadisticas/tiempo-real/", views.RealtimeStatsView.as_view(), name="stats-realtime"),
    path("schema/", PublicSchemaView.as_view(), name="schema"),
    path("docs/", PublicSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", PublicRedocView.as_view(url_name="api:schema"), name="redoc"),
    re_path(r"^.*$", errors.not_found),
]
