from importlib import import_module

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OutreachConfig(AppConfig):
    """Reminders and the waitlist: messages the clinic starts, sent by the background worker."""

    name = "outreach"
    verbose_name = _("Reminders and waitlist")

    def ready(self) -> None:
        # Once the models are loaded: the receivers import the services.
        import_module("outreach.receivers").connect()
