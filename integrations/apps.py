from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IntegrationsConfig(AppConfig):
    """Sophia's edges to other systems: the JSON API, API keys, outgoing webhooks, retention."""

    name = "integrations"
    verbose_name = _("integrations")

    def ready(self) -> None:
        # Subscribe the outgoing webhooks and the booking counter to clinics' domain events.
        from integrations import receivers  # noqa: F401
