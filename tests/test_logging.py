"""Log output, captured for real: JSON lines, context fields, no document or phone anywhere."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from sophia_web import logging as sophia_logging
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = "1020304050"
PHONE = "573001234567"


def env() -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
        "DATABASE_URL": (
            f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "logging-tests",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be JSON


@pytest.mark.parametrize(
    "text,masked",
    [
        (f"documento {DOCUMENT}", "documento …050"),
        (f"q={DOCUMENT}&page=2", "q=…050&page=2"),
        ("+57 300 123 4567 escribió", "…567 escribió"),
        ("cédula 1.020.304.050", "cédula …050"),
        (f"wa {PHONE}", "wa …567"),
        ("slot 42 at 2026-12-03 08:00 took 12.5 ms", "slot 42 at 2026-12-03 08:00 took 12.5 ms"),
        ("127.0.0.1:54321 id 1234567", "127.0.0.1:54321 id 1234567"),
        ("?q=%2B573001234567&x=%201020304050", "?q=%2B…567&x=%…050"),
        ("task dfafd4d1-1234-5586-bf3b-cd2d1d3abb32", "task dfafd4d1-1234-5586-bf3b-cd2d1d3abb32"),
    ],
)
def test_it_masks_documents_and_phone_numbers_only(text, masked):
    assert sophia_logging.mask(text) == masked


def test_every_logger_writes_masked_json_lines_with_context(transactional_db):
    script = f"""
import django, logging
django.setup()
from sophia_web import logging as sl
logging.getLogger("clinics.services").info("patient %s registered", "{DOCUMENT}")
logging.getLogger("some.library").warning("call from {PHONE}", extra={{"phone": "{PHONE}"}})
token = sl.bind(request_id="req-abc", clinic=3, session=sl.mask_session("{PHONE}"), action="t")
try:
    raise ValueError("bad document {DOCUMENT}")
except ValueError:
    logging.getLogger("django.request").exception("failed for %s", "{DOCUMENT}")
sl.reset(token)
logging.getLogger("x").info("%s", {{"document": "{DOCUMENT}"}}, extra={{"duration_ms": 12.5}})
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env=env(), cwd=ROOT, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert DOCUMENT not in output and PHONE not in output
    lines = json_lines(output)
    assert len(lines) == 4
    assert lines[0]["message"] == "patient …050 registered"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "clinics.services"
    assert lines[0]["timestamp"].endswith("+00:00")
    assert lines[1]["phone"] == "…567"
    failed = lines[2]
    assert failed["request_id"] == "req-abc" and failed["clinic"] == 3
    assert failed["session"] == "…4567" and failed["action"] == "t"
    assert "ValueError: bad document …050" in failed["exc_info"]
    assert "request_id" not in lines[3] and lines[3]["duration_ms"] == 12.5


def test_it_masks_in_memory_records_too():
    record = logging.LogRecord("x", logging.INFO, "f", 1, "doc %s", (DOCUMENT,), None)
    sophia_logging.MaskDigits().filter(record)
    assert record.getMessage() == "doc …050"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_daphnes_access_log_is_json_and_masked(transactional_db, tmp_path):
    port = free_port()
    log_path = tmp_path / "daphne.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "sophia_web.asgi:application"],
            cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

        def up() -> bool:
            try:
                return client.get("/health/").status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, what="daphne up")
        # The admin search issue 7 reported, and an API lookup, both with a full document.
        client.get(f"/admin/clinics/patient/?q={DOCUMENT}")
        client.get(f"/api/v1/pacientes/?documento={DOCUMENT}")
        client.get(f"/no-such-page/{PHONE}/")

        def logged() -> bool:
            return log_path.read_text().count('"daphne.access"') >= 3

        eventually(logged, what="access lines written")
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    output = log_path.read_text()
    assert DOCUMENT not in output and PHONE not in output
    lines = json_lines(output)
    access = [line for line in lines if line["logger"] == "daphne.access"]
    assert any("q=…050" in line["message"] for line in access)
    assert any("documento=…050" in line["message"] for line in access)
    assert any("/no-such-page/…567/" in line["message"] for line in access)
    requests = [line for line in lines if line.get("action") == "http.request"]
    assert requests and all("request_id" in line and "duration_ms" in line for line in requests)
