"""`manage.py worker_health`: the worker containers' health probe."""

import datetime as dt

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from bot.models import PeriodicJob

pytestmark = pytest.mark.django_db


def test_it_fails_until_a_worker_ran_recently(capsys):
    with pytest.raises(CommandError, match="no worker"):
        call_command("worker_health")
    PeriodicJob.objects.create(
        name="deliver_outbox", last_run_at=timezone.now() - dt.timedelta(minutes=5)
    )
    with pytest.raises(CommandError, match="heartbeat"):
        call_command("worker_health", "--max-age", "60")
    PeriodicJob.objects.create(name="expire_holds", last_run_at=timezone.now())
    call_command("worker_health", "--max-age", "60")
    assert "worker heartbeat" in capsys.readouterr().out
