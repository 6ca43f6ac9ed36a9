from importlib import import_module

from django.apps import AppConfig


class BotConfig(AppConfig):
    name = "bot"
    verbose_name = "WhatsApp bot"

    def ready(self) -> None:
        # Connect the receiver that tells patients of cancellations, in every process.
        import_module("bot.notices")
