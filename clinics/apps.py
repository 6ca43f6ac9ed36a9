from django.apps import AppConfig


class ClinicsConfig(AppConfig):
    name = "clinics"
    verbose_name = "Clinics"

    def ready(self) -> None:
        # Connects the live calendars' receiver of domain events.
        from clinics import agenda_live  # noqa: F401
