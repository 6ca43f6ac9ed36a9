"""`make screenshots`: run the demo (scripts/demo's embedded default: SQLite, in-process layers,
the worker relaying its live events) on a scratch database, play a few patients through the
simulator, and photograph the console with Debian's chromium into docs/screenshots/.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "sophia-demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
            "SQLITE_PATH": str(workdir / "demo.sqlite3"),
            "DEBUG": "True",
            "SOPHIA_SIMULATOR": "True",
            "SOPHIA_LIVE_RELAY": "True",
            "WHATSAPP_APP_SECRET": "sophia-demo-app-secret",
            "WHATSAPP_VERIFY_TOKEN": "sophia-demo-verify-token",
            "WHATSAPP_ACCESS_TOKEN": "sophia-demo-access-token",
            "WHATSAPP_API_URL": f"{self.url}/simulator/graph",
            "OPENAI_API_KEY": "",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[subprocess.Popen] = []

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("w")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def start(self) -> Demo:
        self.manage("migrate", "--noinput")
        self.manage("seed_demo")
        self.manage("seed_console_demo")
        self.spawn(
            "web",
            [
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "sophia_web.asgi:application",
            ],
        )
        worker_env = {**self.env, "SOPHIA_LIVE_RELAY_URL": f"{self.url}/live/relay/"}
        self.spawn("worker", ["manage.py", "run_worker", "--interval", "0.1"], worker_env)
        for _ in range(200):
            try:
                if httpx.get(f"{self.url}/health/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the demo did not start; see " + str(self.workdir))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def login(page: Page, demo: Demo, username: str) -> None:
    page.goto(f"{demo.url}/cuenta/entrar/")
    page.get_by_label("Nombre de usuario").fill(username)
    page.get_by_label("Contraseña").fill(PASSWORD)
    page.get_by_role("button", name="Entrar").click()
    page.wait_for_url(f"{demo.url}/")


def say(page: Page, phone: str, text: str, wait_reply: bool = True) -> None:
    box = page.locator(f'.phone[data-phone="{phone}"]')
    before = box.locator(".sim-out").count()
    box.locator("input[name=text]").fill(text)
    box.locator("input[name=text]").press("Enter")
    expect(box.locator(".sim-in").last).to_contain_text(text[:20])
    if wait_reply:
        expect(box.locator(".sim-out")).not_to_have_count(before, timeout=20_000)
        page.wait_for_timeout(400)


def tap(page: Page, phone: str, label: str) -> None:
    box = page.locator(f'.phone[data-phone="{phone}"]')
    before = box.locator(".sim-out").count()
    summary = box.locator(".sim-out").last.locator("summary")
    if summary.count():
        summary.click()
    choices = box.locator(".sim-out").last.locator(".sim-choice")
    (choices.filter(has_text=label) if label else choices).first.click()
    expect(box.locator(".sim-out")).not_to_have_count(before, timeout=20_000)
    page.wait_for_timeout(400)


def shoot(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sophia-screens-"))
    demo = Demo(workdir).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            desk = browser.new_context(
                viewport={"width": 1440, "height": 900},
                locale="es-CO",
                timezone_id="America/Bogota",
                device_scale_factor=1,
            )
            sim_context = browser.new_context(
                viewport={"width": 1500, "height": 900}, locale="es-CO"
            )
            sim = sim_context.new_page()
            login(sim, demo, "recepcion")
            ana, pedro, lucia = "573001234567", "573105550101", "573208887766"
            sim.goto(f"{demo.url}/simulator/?phones={ana},{pedro},{lucia}&name=Paciente")
            sim.wait_for_function("document.getElementById('live-status').dataset.state==='live'")
            say(sim, ana, "Hola, buenos días")
            say(sim, ana, "1020304050")
            say(sim, ana, "Necesito cita, tengo fiebre y dolor de garganta desde ayer")
            tap(sim, ana, "")  # the first time offered
            tap(sim, ana, "Sí")
            say(sim, pedro, "Hola")
            say(sim, pedro, "Quiero hablar con una persona por favor")
            say(sim, lucia, "Buenas noches")
            say(sim, lucia, "Tengo un dolor muy fuerte en el pecho y me falta el aire")
            sim.screenshot(path=str(out / "simulator.png"))

            console = desk.new_page()
            login(console, demo, "recepcion")
            console.wait_for_timeout(800)
            console.screenshot(path=str(out / "inbox.png"))

            console.locator("#inbox-list .inbox-row", has_text="Paciente 2").locator("a").click()
            console.wait_for_url("**/conversaciones/**")
            console.get_by_role("button", name="Tomar el control").click()
            expect(console.locator("#conv-header")).to_contain_text("atiende este chat")
            console.get_by_label("Mensaje para el paciente").fill(
                "Hola, soy Laura de recepción. Con gusto te ayudo: ¿para qué especialidad "
                "buscas la cita?"
            )
            console.get_by_role("button", name="Enviar", exact=True).click()
            console.wait_for_timeout(800)
            say(sim, pedro, "Para pediatría, es para mi hijo de 5 años", wait_reply=False)
            console.locator("summary", has_text="Nota privada").click()
            console.get_by_label("Nota para el equipo (nunca se envía)").fill(
                "Mamá de un paciente de 5 años; prefiere citas en la tarde. Confirmar EPS."
            )
            console.get_by_role("button", name="Guardar nota").click()
            console.wait_for_timeout(1500)
            console.screenshot(path=str(out / "conversation-taken-over.png"))

            console.goto(f"{demo.url}/estadisticas/")
            console.wait_for_timeout(800)
            console.screenshot(path=str(out / "stats.png"), full_page=True)

            tablet = browser.new_context(
                viewport={"width": 820, "height": 1180}, locale="es-CO", device_scale_factor=1
            ).new_page()
            login(tablet, demo, "recepcion")
            tablet.screenshot(path=str(out / "inbox-tablet.png"))

            anon = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            anon.goto(f"{demo.url}/")
            anon.screenshot(path=str(out / "login.png"))
            browser.close()
    finally:
        demo.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"screenshots written to {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    shoot(Path(parser.parse_args().out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
