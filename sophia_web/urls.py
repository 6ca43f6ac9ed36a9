from django.contrib import admin
from django.urls import include, path

from sophia_web import health, monitoring

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health.health, name="health"),
    path("api/v1/", include("integrations.api.urls")),
    path("metrics", monitoring.metrics_view, name="metrics"),
    # The benchmark's do-nothing baseline (404 unless DEBUG or SOPHIA_BENCH=1).
    path("bench/noop/", health.noop, name="bench-noop"),
    path("whatsapp/", include("bot.urls")),
    # The demo's stand-in for WhatsApp; its views answer 404 unless DEBUG or SOPHIA_SIMULATOR.
    path("simulator/", include("bot.simulator")),
]
