from django.urls import path

from bot import webhook

app_name = "bot"
urlpatterns = [
    path("webhook/", webhook.webhook, name="webhook"),
]
