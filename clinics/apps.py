from importlib import import_module

from django.apps import AppConfig


class ClinicsConfig(AppConfig):
    name = "clinics"
    verbose_name = "Clinics"

    def ready(self) -> None:
        # Connect the live calendars' receiver of domain events in every process (web, worker).
        import_module("clinics.agenda_live")
