from django.contrib import admin
from django.urls import include, path

from sophia_web import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health.health, name="health"),
    path("whatsapp/", include("bot.urls")),
]
