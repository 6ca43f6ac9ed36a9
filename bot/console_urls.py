from django.urls import path

from bot import console_views

app_name = "console"
urlpatterns = [
    path("", console_views.home, name="home"),
    path("clinica/", console_views.switch_clinic, name="switch-clinic"),
]
