"""Console benchmark (issue 8): live fan-out to 100 websockets, and the inbox at 10,000
conversations.

Own database `sophia_bench_console_<pid>` on the PostgreSQL of DATABASE_URL (dropped afterwards)
and Redis db BENCH_CONSOLE_REDIS_DB (default 13, flushed first).

1. Fan-out. One daphne process (the real ASGI app, Redis channel layer). 50 websockets on one
   conversation (`/ws/live/<clinic>/conversation/<id>/`) and 50 on the clinic's inbox
   (`/ws/live/<clinic>/`), all logged in as staff. Latency = signed webhook POST sent → the frame
   carrying that message received by all 100 (the inbox row on 50, the conversation update on
   50): store, commit, render once, number, fan out. Floor, same run, interleaved: the raw
   channel-layer round trip — `group_send` of a tiny frame from this process's event loop to
   both groups (channels_redis) → received by all 100 through the same consumers.
   Goal: p95 ≤ 150 ms; the ratio to the floor is reported.
2. Inbox. 10,000 conversations (each with an inbound and an outbound message). p95 of the
   first page and of a deep page (past row 5,000, by keyset cursor) of `/bandeja/filas/`
   over HTTP from the same daphne (middleware, session, auth, templates), beside `/health/`
   over the same connection as the floor. Goals: p95 ≤ 50 ms each, deep / first ≤ 1.3.

Figures → bench/results/console.json.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import redis
import websockets
from machine_info import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "console.json"
BENCH_DB = f"sophia_bench_console_{os.getpid()}"
APP_SECRET = "bench-console-secret"
PHONE_ID = "177777777777701"
SOCKETS_PER_GROUP = int(os.getenv("BENCH_CONSOLE_SOCKETS", "50"))
FANOUT_ROUNDS = int(os.getenv("BENCH_CONSOLE_ROUNDS", "40"))
CONVERSATIONS = int(os.getenv("BENCH_CONSOLE_CONVERSATIONS", "10000"))
INBOX_REQUESTS = int(os.getenv("BENCH_CONSOLE_INBOX_REQUESTS", "100"))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def summary(ms: list[float]) -> dict:
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "max_ms": round(max(ms), 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> tuple[str, dict[str, str]]:
    server = os.getenv("DATABASE_URL", "")
    if not server.startswith(("postgres://", "postgresql://")):
        sys.exit("bench_console needs DATABASE_URL pointing at PostgreSQL (use `make bench`)")
    redis_url = os.getenv("REDIS_URL", "redis://127.0.0.1:6379/15")
    db = os.getenv("BENCH_CONSOLE_REDIS_DB", "13")
    redis_url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{db}"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
        "DATABASE_URL": with_database(server, BENCH_DB),
        "REDIS_URL": redis_url,
        "SECRET_KEY": "sophia-bench-console",
        "DEBUG": "False",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_ACCESS_TOKEN": "bench",
        "WHATSAPP_API_URL": "http://127.0.0.1:9/unused",
        "LOG_LEVEL": "WARNING",
    }
    return server, env


def load(env: dict[str, str]) -> dict:
    """Migrate, then one clinic, a receptionist, CONVERSATIONS conversations with messages."""
    for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "LOG_LEVEL", "DJANGO_SETTINGS_MODULE",
                "ALLOWED_HOSTS", "WHATSAPP_APP_SECRET"):  # fmt: skip
        os.environ[key] = env[key]
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from bot.models import Conversation, Message
    from clinics.models import Clinic, StaffMembership

    call_command("migrate", verbosity=0)
    clinic = Clinic.objects.create(slug="bench", name="Clínica Bench", phone_number_id=PHONE_ID)
    user = get_user_model().objects.create_user("bench-recepcion", password="bench-password")
    StaffMembership.objects.create(user=user, clinic=clinic)
    now = timezone.now()
    conversations = Conversation.objects.bulk_create(
        Conversation(
            clinic=clinic,
            wa_id=f"57310{i:07d}",
            contact_name=f"Paciente {i}",
            last_inbound_at=now - dt.timedelta(minutes=i),
            last_activity_at=now - dt.timedelta(minutes=i),
            urgent=i % 997 == 0,
            needs_staff=i % 89 == 0,
        )
        for i in range(CONVERSATIONS)
    )
    messages = []
    for i, conversation in enumerate(conversations):
        at = now - dt.timedelta(minutes=i)
        messages.append(Message(clinic=clinic, conversation=conversation, direction="in",
                                text="Hola, quiero una cita", status="processed",
                                created_at=at - dt.timedelta(seconds=5)))  # fmt: skip
        messages.append(Message(clinic=clinic, conversation=conversation, direction="out",
                                text="¡Hola! Escríbeme tu documento.", status="read",
                                created_at=at))  # fmt: skip
    Message.objects.bulk_create(messages, batch_size=5000)
    client = Client()
    client.force_login(user)
    return {
        "clinic": clinic,
        "client": client,
        "cookie": client.cookies["sessionid"].value,
        "conversation": conversations[0],
    }


# --- 2. the inbox ---------------------------------------------------------------------------


def bench_inbox(data: dict, port: int) -> dict:
    from console import selectors

    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", cookies={"sessionid": data["cookie"]}, timeout=10
    )
    deep_row = selectors.inbox_page(
        clinic=data["clinic"], user=None, cursor=None, page_size=CONVERSATIONS // 2
    ).rows[-1]
    deep_cursor = selectors.encode_cursor(deep_row)
    paths = {
        "floor_health": "/health/",
        "first_page": "/bandeja/filas/",
        "deep_page": f"/bandeja/filas/?cursor={deep_cursor}",
    }
    for path in paths.values():  # warm up: connections, templates, plans
        for _ in range(5):
            assert client.get(path).status_code == 200, path
    timings: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(INBOX_REQUESTS):
        for name, path in paths.items():  # interleaved: the machine's noise hits all alike
            started = time.perf_counter()
            response = client.get(path)
            timings[name].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    deep_html = client.get(paths["deep_page"]).text
    assert deep_html.count('class="inbox-row') == 25, "the deep page is not a full page"
    assert f">{deep_row.contact_name}<" not in deep_html  # it starts after the cursor's row
    result = {name: summary(ms) for name, ms in timings.items()}
    result["deep_over_first_p95"] = round(
        result["deep_page"]["p95_ms"] / result["first_page"]["p95_ms"], 3
    )
    result["first_over_floor_p95"] = round(
        result["first_page"]["p95_ms"] / result["floor_health"]["p95_ms"], 2
    )
    return result


# --- 1. fan-out -----------------------------------------------------------------------------


def webhook_body(wa_id: str, token: str) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
        "contacts": [{"profile": {"name": "Paciente 0"}, "wa_id": wa_id}],
        "messages": [
            {
                "from": wa_id,
                "id": f"wamid.BENCHC{token}",
                "timestamp": str(int(time.time())),
                "type": "text",
                "text": {"body": f"{token} necesito una cita"},
            }
        ],
    }
    entry = {"id": "0", "changes": [{"field": "messages", "value": value}]}
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


def raw_frame(group: str, token: str) -> dict:
    """What the consumers forward, sent straight through the channel layer: the floor."""
    return {"type": "live.event", "group": group, "event": "bench", "html": f"<p>{token}</p>"}


class Listener:
    """One websocket: resolves the future registered for a token when a frame carries it."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future] = {}

    async def run(self) -> None:
        async for raw in self.ws:
            for token, future in list(self.waiting.items()):
                if token in raw and not future.done():
                    future.set_result(time.perf_counter())

    def expect(self, token: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting[token] = future
        return future


async def fanout(data: dict, env: dict[str, str], port: int) -> dict:
    from channels.layers import get_channel_layer

    from bot.webhook import signature_for

    layer = get_channel_layer()

    clinic, conversation = data["clinic"], data["conversation"]
    base = f"ws://127.0.0.1:{port}/ws/live/{clinic.pk}"
    headers = {"Cookie": f"sessionid={data['cookie']}", "Origin": f"http://127.0.0.1:{port}"}
    listeners = []
    for path in [f"{base}/conversation/{conversation.pk}/"] * SOCKETS_PER_GROUP + [
        f"{base}/"
    ] * SOCKETS_PER_GROUP:
        ws = await websockets.connect(path, additional_headers=headers, max_size=2**22)
        listeners.append(Listener(ws))
    tasks = [asyncio.create_task(listener.run()) for listener in listeners]
    groups = [f"clinic-{clinic.pk}", f"conversation-{conversation.pk}"]
    results: dict[str, list[float]] = {"webhook_to_all": [], "raw_layer_to_all": []}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for round_ in range(FANOUT_ROUNDS + 3):
            for kind in ("webhook_to_all", "raw_layer_to_all"):
                token = uuid.uuid4().hex[:12]
                futures = [listener.expect(token) for listener in listeners]
                started = time.perf_counter()
                if kind == "webhook_to_all":
                    body = webhook_body(conversation.wa_id, token)
                    response = await http.post(
                        "/whatsapp/webhook/",
                        content=body,
                        headers={"Content-Type": "application/json",
                                 "X-Hub-Signature-256": signature_for(body, APP_SECRET)},
                    )  # fmt: skip
                    assert response.status_code == 200, response.text
                else:
                    await asyncio.gather(
                        *(layer.group_send(group, raw_frame(group, token)) for group in groups)
                    )
                _finished, pending = await asyncio.wait(futures, timeout=15)
                if pending:
                    lost = [i for i, f in enumerate(futures) if not f.done()]
                    raise RuntimeError(f"{kind}: sockets {lost} never got {token}")
                done = [f.result() for f in futures]
                if os.getenv("BENCH_CONSOLE_VERBOSE"):
                    print(kind, round((max(done) - started) * 1000, 1), "ms", flush=True)
                if round_ >= 3:  # the first rounds warm caches and connections up
                    results[kind].append((max(done) - started) * 1000)
                for listener in listeners:
                    listener.waiting.pop(token, None)
                await asyncio.sleep(0.15)
    for task in tasks:
        task.cancel()
    for listener in listeners:
        await listener.ws.close()
    result = {name: summary(ms) for name, ms in results.items()}
    result["sockets"] = len(listeners)
    result["webhook_over_raw_p95"] = round(
        result["webhook_to_all"]["p95_ms"] / result["raw_layer_to_all"]["p95_ms"], 2
    )
    return result


def main() -> int:
    server, env = environment()
    with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    web = None
    try:
        started = time.perf_counter()
        data = load(env)
        print(f"loaded {CONVERSATIONS} conversations in {time.perf_counter() - started:.1f} s")
        port = free_port()
        web_log = open(os.getenv("BENCH_CONSOLE_LOG", os.devnull), "w")  # noqa: SIM115
        web = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "sophia_web.asgi:application"],
            cwd=ROOT, env=env, stdout=web_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        inbox = bench_inbox(data, port)
        fan = asyncio.run(fanout(data, env, port))
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        from django.db import connections

        connections.close_all()
        with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    goals = {
        "fanout_p95_le_150ms": fan["webhook_to_all"]["p95_ms"] <= 150,
        "inbox_first_p95_le_50ms": inbox["first_page"]["p95_ms"] <= 50,
        "inbox_deep_p95_le_50ms": inbox["deep_page"]["p95_ms"] <= 50,
        "inbox_deep_over_first_le_1_3": inbox["deep_over_first_p95"] <= 1.3,
    }
    results = {
        "machine": machine(),
        "fanout": fan,
        "inbox": {"conversations": CONVERSATIONS, **inbox},
        "goals_met": goals,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    webhook_ms = fan["webhook_to_all"]["p95_ms"]
    raw_ms = fan["raw_layer_to_all"]["p95_ms"]
    print(
        f"fan-out to {fan['sockets']} websockets, p95: webhook→all {webhook_ms} ms, "
        f"raw layer→all {raw_ms} ms (ratio {fan['webhook_over_raw_p95']})"
    )
    print(f"inbox at {CONVERSATIONS}, p95: first {inbox['first_page']['p95_ms']} ms, deep "
          f"{inbox['deep_page']['p95_ms']} ms (deep/first {inbox['deep_over_first_p95']}), "
          f"floor /health/ {inbox['floor_health']['p95_ms']} ms")  # fmt: skip
    print("goals:", goals)
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
