"""`manage.py worker_health`: exit 1 unless a worker ran a periodic job recently (a probe)."""

from __future__ import annotations

from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from bot.models import PeriodicJob


class Command(BaseCommand):
    help = "Exit 0 when some worker ran a periodic job within --max-age seconds, else 1."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--max-age", type=float, default=60.0)

    def handle(self, *, max_age: float, **options) -> None:
        last = PeriodicJob.objects.order_by("-last_run_at").values_list("last_run_at", flat=True)
        last_run = last.first()
        if last_run is None:
            raise CommandError("no worker has run yet")
        age = (timezone.now() - last_run).total_seconds()
        if age > max_age:
            raise CommandError(f"last worker heartbeat {age:.0f} s ago")
        self.stdout.write(f"worker heartbeat {age:.1f} s ago\n")
