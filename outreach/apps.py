from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OutreachConfig(AppConfig):
    """Reminders and the waitlist: messages the clinic starts, sent by the background worker."""

    name = "outreach"
    verbose_name = _("Reminders and waitlist")

    def ready(self) -> None:
        from outreach import receivers

        receivers.connect()
