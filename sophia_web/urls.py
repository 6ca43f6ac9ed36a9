from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from bot import console_triage
from sophia_web import health, live, monitoring

urlpatterns = [
    # First: Meta calls the webhook for every message and status, and Django tries the patterns
    # in order (the benchmark's do-nothing baseline resolves just as fast; 404 unless DEBUG or
    # SOPHIA_BENCH=1).
    path("whatsapp/", include("bot.urls")),
    path("bench/noop/", health.noop, name="bench-noop"),
    path("", include("console.urls")),
    path("", include("clinics.urls")),
    path(
        "ajustes/especialidades/<int:specialty_id>/probar/",
        console_triage.specialty_try,
        name="triage-try",
    ),
    path("cuenta/entrar/", auth_views.LoginView.as_view(), name="login"),
    path("cuenta/salir/", auth_views.LogoutView.as_view(), name="logout"),
    path("cuenta/clave/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "cuenta/clave/lista/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("lista-de-espera/", include("outreach.urls")),
    path("admin/", admin.site.urls),
    path("live/relay/", live.relay, name="live-relay"),
    path("health/", health.health, name="health"),
    path("api/v1/", include("integrations.api.urls")),
    path("integraciones/", include("integrations.urls")),
    path("metrics", monitoring.metrics_view, name="metrics"),
    # The demo's stand-in for WhatsApp; its views answer 404 unless DEBUG or SOPHIA_SIMULATOR.
    path("simulator/", include("bot.simulator")),
]
