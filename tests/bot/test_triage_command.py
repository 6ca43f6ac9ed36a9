"""`manage.py triage --clinic <slug> "texto"`: one JSON line, clear errors."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from clinics.demo_data import SPECIALTIES
from clinics.models import Specialty
from tests.fakes import openai_server

fake_openai = openai_server.fake_openai  # the fixture
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_specialties(clinic):
    for slug, (name, keywords) in SPECIALTIES.items():
        Specialty.objects.create(
            clinic=clinic, slug=slug, name=name, triage_keywords=", ".join(keywords)
        )


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("triage", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_prints_one_json_line(demo_specialties, settings):
    settings.OPENAI_API_KEY = ""
    output = run("--clinic", "demo", "me duele la muela desde ayer")
    assert output.count("\n") == 1
    data = json.loads(output)
    assert list(data) == ["specialty", "confidence", "red_flag", "source"]
    assert data["specialty"] == "odontologia"
    assert 0.6 <= data["confidence"] <= 1
    assert data["red_flag"] is False
    assert data["source"] == "rules"


@pytest.mark.django_db
def test_it_joins_unquoted_words_and_reports_red_flags(demo_specialties, settings):
    settings.OPENAI_API_KEY = ""
    data = json.loads(run("--clinic", "demo", "me", "aprieta", "el", "pecho"))
    assert data["red_flag"] is True


@pytest.mark.django_db
def test_it_prints_null_when_nothing_matches(demo_specialties, settings):
    settings.OPENAI_API_KEY = ""
    assert json.loads(run("--clinic", "demo", "hola")) == {
        "specialty": None,
        "confidence": 0.0,
        "red_flag": False,
        "source": "rules",
    }


@pytest.mark.django_db
def test_it_uses_the_llm_when_configured_and_rules_are_unsure(
    demo_specialties, settings, fake_openai
):
    settings.OPENAI_API_KEY = "test-key"
    settings.OPENAI_BASE_URL = fake_openai.base_url
    fake_openai.reply_json({"specialty": "dermatologia", "confidence": 0.9})
    data = json.loads(run("--clinic", "demo", "tengo acné y sinusitis"))
    assert data == {
        "specialty": "dermatologia",
        "confidence": 0.9,
        "red_flag": False,
        "source": "llm",
    }


@pytest.mark.django_db
def test_it_rejects_an_unknown_clinic(clinic):
    with pytest.raises(CommandError, match=r"Unknown clinic 'nope'.*demo"):
        run("--clinic", "nope", "me duele la muela")


@pytest.mark.django_db(transaction=True)
def test_it_exits_non_zero_with_a_message_on_stderr_for_an_unknown_clinic(settings):
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(settings.DATABASES["default"]),
        "SECRET_KEY": "sophia-tests-only",
        "OPENAI_API_KEY": "",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "triage", "--clinic", "nope", "me duele la muela"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert "Unknown clinic 'nope'" in done.stderr


def _database_url(db: dict) -> str:
    """The test database, as the subprocess's DATABASE_URL."""
    return (
        f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )
