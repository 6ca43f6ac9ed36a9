"""Browser tests: the real product under daphne + a worker, driven by Playwright's chromium.

Reuse from any browser test (e.g. tests/browser/test_agenda.py):

    pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

    def test_it_shows_the_agenda(live_app, page, receptionist):
        login(page, live_app, receptionist)              # lands on the console
        page.goto(live_app.url + "/agenda/")
        expect(page.get_by_role("heading", name="Agenda")).to_be_visible()

- `live_app`: daphne (HTTP + websockets, `sophia_web.asgi`) and `run_worker` as subprocesses on a
  free port, against this test's database and Redis db, with the WhatsApp simulator on: the
  worker's outbound messages go to `/simulator/graph` of the same server, exactly as in
  `make demo`. `live_app.url`, `live_app.ws_url`, `live_app.post_webhook(body)`. Data the test
  creates must be committed (`django_db(transaction=True)`) for the servers to see it.
- `browser`: one headless Debian chromium per test module (`/usr/bin/chromium`, installed by
  scripts/ensure-services; never `playwright install`).
- `page`: a fresh browser context + page per test (own cookies), closed afterwards;
  `new_page()` for a second user in the same test.
- `login(page, live_app, user)`: logs in through the real login form.
- `shot(page, name)`: a screenshot in the test's tmp dir (look at it when a test fails).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from playwright.sync_api import Browser, Page, sync_playwright

from bot.webhook import signature_for
from tests.conftest import PASSWORD, eventually

# Playwright's sync API runs an event loop in this thread; the tests' own ORM calls are still
# plain synchronous code, so Django's async-safety guard must not refuse them.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APP_SECRET = "browser-app-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveApp:
    """daphne + run_worker subprocesses on the test database, the simulator as WhatsApp."""

    def __init__(self, tmp_path: Path, worker: bool = True, **env: str) -> None:
        db = connection.settings_dict
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
            "DATABASE_URL": (
                f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
            ),
            "REDIS_URL": settings.REDIS_URL,
            "SECRET_KEY": "browser-tests",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SOPHIA_SIMULATOR": "True",
            "WHATSAPP_API_URL": f"{self.url}/simulator/graph",
            "WHATSAPP_ACCESS_TOKEN": "browser-access-token",
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": "browser-verify",
            "OPENAI_API_KEY": "",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.tmp_path = tmp_path
        self.with_worker = worker
        self.procs: dict[str, subprocess.Popen] = {}
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.tmp_path / f"{name}.log").open("a")
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc

    def start_web(self) -> None:
        self._spawn(
            "web", "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
            "sophia_web.asgi:application",
        )  # fmt: skip

        def up() -> bool:
            try:
                return self.client.get("/health/").status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, what="daphne serving /health/")

    def stop_web(self) -> None:
        """Stop daphne only (a server restart: open pages must reconnect by themselves)."""
        self._stop(self.procs.pop("web"))

    def start(self) -> LiveApp:
        self.start_web()
        if self.with_worker:
            self._spawn(
                "worker", "manage.py", "run_worker", "--interval", "0.05", "--processes", "1"
            )
        return self

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self.client.close()
        for proc in self.procs.values():
            self._stop(proc)
        self.procs.clear()

    def post_webhook(self, body: bytes) -> httpx.Response:
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature_for(body, APP_SECRET),
        }
        return self.client.post("/whatsapp/webhook/", content=body, headers=headers)

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def live_app(transactional_db, tmp_path):
    running = LiveApp(tmp_path).start()
    yield running
    running.stop()  # before the test database is flushed


@pytest.fixture(scope="module")
def browser():
    # Module scope, not session: Playwright's sync API keeps an event loop running in this
    # thread while it is open, which would make async_to_sync fail in every later test.
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/ensure-services (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Browser):
    """A factory of pages, each in its own context (its own session cookie)."""
    contexts = []

    def make(**options) -> Page:
        context = browser.new_context(
            locale="es-CO", timezone_id="America/Bogota", viewport={"width": 1366, "height": 860}
        ) if not options else browser.new_context(**options)  # fmt: skip
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page) -> Page:
    return new_page()


def login(page: Page, app: LiveApp, user, password: str = PASSWORD) -> None:
    """Log in through the real Spanish login form; waits for the console."""
    page.goto(f"{app.url}/cuenta/entrar/")
    page.get_by_label("Nombre de usuario").fill(user.get_username())
    page.get_by_label("Contraseña").fill(password)
    page.get_by_role("button", name="Entrar").click()
    page.wait_for_url(f"{app.url}/")


def shot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
