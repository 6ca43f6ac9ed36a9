"""Throughput benchmark (issue 6): does the product, as `make demo` starts it, keep up?

Runs `scripts/demo` itself — migrate, seed, `run_worker` and daphne — on PostgreSQL and Redis (its
own database `sophia_bench_tp_<pid>` on the server of DATABASE_URL, Redis db BENCH_REDIS_DB,
default 13), with the fake Graph API of tests/fakes in a child process. `run_worker` starts one
worker process per CPU (at most 4) unless SOPHIA_WORKER_PROCESSES says otherwise; each variant of
BENCH_WORKER_COUNTS (default "1,2") starts the demo with that many worker processes, and the goals
are checked on the variant the demo starts by default on this machine (`default_processes`):

1. Burst: BENCH_BURST_PATIENTS patients (default 300) each send two messages (a greeting, then
   their document) as fast as BENCH_BURST_CONCURRENCY connections allow. Acceptance rate =
   messages ÷ time until the last webhook POST was answered; drain rate = messages ÷ time until
   the last of them was processed (no `received` message left). Goal: drain ÷ acceptance ≥ 0.5.
2. Right after the backlog is drained: 200 other patients walk the booking path at a steady
   20 messages/s (bench_bot's patient loop) for BENCH_E2E_SECONDS. Latency = webhook POST sent →
   first reply of that turn at the fake Graph API. Goal: p95 ≤ 300 ms.
3. CPU per processed message over the burst (send + drain): user+system CPU of daphne, the
   worker process(es) and the PostgreSQL backends serving this database (from /proc), ÷ messages.
   Goal: ≤ half of the code before issue 6 (BENCH_BASELINE_COMMIT, default f8f568e), measured
   in the same run: BENCH_CPU_ROUNDS rounds (default 3) of one burst of that code as its demo
   started it, then one burst of this code as its demo starts it, back to back; the ratio is the
   median round's. The machine's speed moved up to fivefold between sessions and up to 40 %
   between two runs of one session (bench/README.md), so a figure from another run is no floor.
   The baseline's checkout is extracted from git into BENCH_BASELINE_DIR (reusing this venv).
   BENCH_CPU_BASELINE_MS instead compares with a fixed figure (and runs no baseline rounds).

BENCH_APP_DIR runs another checkout's scripts/demo instead of this one.
Figures → bench/results/throughput.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bench_bot as bot_bench
from machine_info import machine

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = Path(os.getenv("BENCH_APP_DIR", str(ROOT))).resolve()
RESULTS = ROOT / "bench" / "results" / "throughput.json"
BENCH_DB = f"sophia_bench_tp_{os.getpid()}"
BURST_PATIENTS = int(os.getenv("BENCH_BURST_PATIENTS", "300"))
BURST_CONCURRENCY = int(os.getenv("BENCH_BURST_CONCURRENCY", "16"))
DRAIN_TIMEOUT = float(os.getenv("BENCH_DRAIN_TIMEOUT", "300"))
WORKER_COUNTS = [int(n) for n in os.getenv("BENCH_WORKER_COUNTS", "1,2").split(",")]
# What `run_worker` starts on this machine with PostgreSQL (bot.management.commands.run_worker).
DEFAULT_PROCESSES = max(1, min(4, os.cpu_count() or 1))
# A fixed CPU ms per processed message to compare with instead of the baseline rounds.
CPU_BASELINE_MS = float(os.getenv("BENCH_CPU_BASELINE_MS", "0") or 0)
# The code before issue 6, measured in the same run (burst only, its demo's one worker).
BASELINE_COMMIT = os.getenv("BENCH_BASELINE_COMMIT", "f8f568e")
BASELINE_DIR = Path(
    os.getenv("BENCH_BASELINE_DIR", f"/tmp/sophia-bench-baseline-{BASELINE_COMMIT}")
).resolve()
CPU_ROUNDS = int(os.getenv("BENCH_CPU_ROUNDS", "3"))

GOALS = {"drain_over_acceptance_min": 0.5, "e2e_p95_ms_max": 300.0, "cpu_vs_baseline_max": 0.5}


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(FileNotFoundError):  # the process ended
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # that thread ended
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    result = []
    for child in children(pid):
        result += [child, *descendants(child)]
    return result


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += bot_bench.process_cpu_seconds(pid)
    return total


def backend_pids() -> list[int]:
    """PostgreSQL backends connected to the bench database (our web and worker connections)."""
    import psycopg

    with psycopg.connect(bot_bench.with_database(SERVER, "postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (BENCH_DB,),
        ).fetchall()
    return [row[0] for row in rows]


class CpuMeter:
    """CPU seconds of the product's processes and of PostgreSQL backends between two points."""

    def __init__(self, processes: dict[str, list[int]]) -> None:
        self.processes = processes
        self.start = {name: cpu_seconds(pids) for name, pids in processes.items()}
        self.backends_start = {pid: cpu_seconds([pid]) for pid in backend_pids()}

    def stop(self) -> dict[str, float]:
        used = {name: cpu_seconds(pids) - self.start[name] for name, pids in self.processes.items()}
        postgres = 0.0
        for pid in backend_pids():  # new backends (pool growth) count whole
            postgres += cpu_seconds([pid]) - self.backends_start.get(pid, 0.0)
        used["postgresql"] = postgres
        return used


def pending_count() -> int:
    from bot.models import Message

    return Message.objects.filter(direction="in", status="received").count()


async def post_all(base_url: str, bodies: list[bytes]) -> float:
    """POST every body over BURST_CONCURRENCY keep-alive connections; seconds until the last
    answer (non-200 answers raise)."""
    import httpx

    queue = [(body, bot_bench.signed(body)) for body in bodies]
    queue.reverse()  # pop() from the end: first body first
    limits = httpx.Limits(
        max_connections=BURST_CONCURRENCY, max_keepalive_connections=BURST_CONCURRENCY
    )
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        await asyncio.gather(*(client.get("/health/") for _ in range(BURST_CONCURRENCY)))

        async def one_client() -> None:
            while queue:
                body, headers = queue.pop()
                response = await client.post("/whatsapp/webhook/", content=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"webhook answered {response.status_code}")

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(BURST_CONCURRENCY)))
        return time.perf_counter() - started


def burst(base_url: str, patients: list, processes: dict[str, list[int]]) -> dict:
    bodies = []
    for patient in patients:  # every greeting first, then every document: two turns each
        bodies.append(bot_bench.message_body(bot_bench.PHONE_ID, patient.whatsapp_id, _hola()))
    for patient in patients:
        bodies.append(
            bot_bench.message_body(
                bot_bench.PHONE_ID, patient.whatsapp_id, bot_bench.text(patient.document)
            )
        )
    meter = CpuMeter(processes)
    started = time.perf_counter()
    accept_seconds = asyncio.run(post_all(base_url, bodies))
    deadline = started + DRAIN_TIMEOUT
    while (left := pending_count()) and time.perf_counter() < deadline:
        time.sleep(0.05)
    drain_seconds = time.perf_counter() - started
    cpu = meter.stop()
    messages = len(bodies)
    acceptance = messages / accept_seconds
    drain = (messages - left) / drain_seconds
    return {
        "messages": messages,
        "patients": len(patients),
        "concurrency": BURST_CONCURRENCY,
        "accept_seconds": round(accept_seconds, 2),
        "acceptance_rate": round(acceptance, 1),
        "drain_seconds": round(drain_seconds, 2),
        "drain_rate": round(drain, 1),
        "drain_over_acceptance": round(drain / acceptance, 3),
        "left_unprocessed": left,
        "cpu_seconds": {name: round(value, 2) for name, value in cpu.items()},
        "cpu_ms_per_message": round(sum(cpu.values()) / messages * 1000, 2),
        "cpu_ms_per_message_by_part": {
            name: round(value / messages * 1000, 2) for name, value in cpu.items()
        },
    }


def _hola() -> dict:
    return bot_bench.text("hola")


def make_patients(prefix: str, count: int, first_document: int) -> list:
    from clinics.models import Clinic, Patient

    clinic = Clinic.objects.get(phone_number_id=bot_bench.PHONE_ID)
    return Patient.objects.bulk_create(
        Patient(
            clinic=clinic,
            document=f"{first_document + i}",
            full_name=f"Paciente {prefix} {i}",
            birth_date=dt.date(1980, 1, 1) + dt.timedelta(days=i),
            whatsapp_id=f"57{prefix}{bot_bench.RUN:03d}{i:05d}",
        )
        for i in range(count)
    )


def start_demo(env: dict, port: int, logs: Path, app_dir: Path) -> subprocess.Popen:
    demo_env = {**env, "PORT": str(port)}
    return subprocess.Popen(
        ["scripts/demo"],
        cwd=app_dir,
        env=demo_env,
        stdout=(logs / "demo.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # stopped as a group
    )


def stop_demo(demo: subprocess.Popen) -> None:
    if demo.poll() is None:
        os.killpg(demo.pid, signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def product_processes(demo: subprocess.Popen) -> dict[str, list[int]]:
    """daphne and run_worker under scripts/demo, by their command lines."""
    found: dict[str, list[int]] = {"web": [], "workers": []}
    for pid in descendants(demo.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            continue
        if "daphne" in cmdline:
            found["web"].append(pid)
        elif "run_worker" in cmdline:
            found["workers"].append(pid)
    return found


def worker_count(pids: list[int]) -> int:
    """The run_worker processes that run tasks: not a supervisor (one whose children run them)."""
    workers = set(pids)
    return sum(1 for pid in pids if not workers & set(descendants(pid)))


def run_variant(
    workers: int | None,
    server: str,
    redis_url: str,
    graph,
    logs: Path,
    *,
    app_dir: Path = APP_DIR,
    steady: bool = True,
) -> dict:
    """The demo of `app_dir` with `workers` worker processes (None: as its demo starts them):
    the burst, then (`steady`) the steady load right after it."""
    import psycopg

    with psycopg.connect(bot_bench.with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    db_url = bot_bench.with_database(server, BENCH_DB)
    env = bot_bench.app_env(db_url, redis_url, graph.url, "")
    env.pop("OPENAI_API_KEY")  # as the demo runs: no LLM configured
    env.pop("OPENAI_BASE_URL")
    env["DEBUG"] = "False"
    if workers is not None:
        env["SOPHIA_WORKER_PROCESSES"] = str(workers)
    port = bot_bench.free_port()
    base_url = f"http://127.0.0.1:{port}"
    demo = start_demo(env, port, logs, app_dir)
    try:
        bot_bench.wait_until_up(base_url, timeout=180)
        steady_patients = bot_bench.load_data()  # the bench clinic and bench_bot's patients
        burst_patients = make_patients("31", BURST_PATIENTS, 80000000)
        bot_bench.warm_up_workers(base_url, graph)
        processes = product_processes(demo)
        started = worker_count(processes["workers"])
        print(
            f"{app_dir.name}, {started} worker process(es): burst of {2 * BURST_PATIENTS} messages",
            flush=True,
        )
        burst_result = burst(base_url, burst_patients, processes)
        print(f"  {burst_result}", flush=True)
        result = {"worker_processes": workers or started, "burst": burst_result}
        if not steady:
            return result
        print("  steady load right after the burst", flush=True)
        e2e = bot_bench.run_patients(base_url, graph, steady_patients)
        e2e["workers"] = workers
        print(f"  {e2e}", flush=True)
        return {
            **result,
            "worker_concurrency": _concurrency(workers),
            "e2e_after_burst": e2e,
        }
    finally:
        stop_demo(demo)
        from django.db import connections

        connections.close_all()
        connections["default"].close_pool()  # its connections die with the database
        with psycopg.connect(bot_bench.with_database(server, "postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def _concurrency(processes: int) -> str:
    """Threads per worker process, for the record: SOPHIA_WORKER_CONCURRENCY, else run_worker's
    default for this machine (its INFO start-up line is below the bench's log level)."""
    configured = os.getenv("SOPHIA_WORKER_CONCURRENCY")
    default = max(1, min(8, 2 * (os.cpu_count() or 1) // processes))
    return configured or f"default: {default} threads per process"


def baseline_checkout() -> Path:
    """The code before issue 6, extracted from this repository's git history (once; reused),
    with this checkout's venv and its own compiled messages."""
    if not (BASELINE_DIR / "scripts" / "demo").exists():
        BASELINE_DIR.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BASELINE_COMMIT],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(BASELINE_DIR)], input=archive, check=True)
    venv = BASELINE_DIR / ".venv"
    if not venv.exists():
        venv.symlink_to(ROOT / ".venv")
    subprocess.run(
        [str(venv / "bin" / "python"), "scripts/i18n.py", "compile"],
        cwd=BASELINE_DIR,
        check=True,
        capture_output=True,
    )
    return BASELINE_DIR


def cpu_rounds(server: str, redis_url: str, graph, logs: Path) -> dict:
    """BENCH_CPU_ROUNDS × (a burst of the baseline, a burst of this code), each on a fresh demo
    as its own `make demo` starts it; each round's ratio, and the median round's."""
    baseline_dir = baseline_checkout()
    rounds = []
    for number in range(CPU_ROUNDS):
        print(f"CPU round {number + 1} of {CPU_ROUNDS}", flush=True)
        before = run_variant(
            None, server, redis_url, graph, logs, app_dir=baseline_dir, steady=False
        )
        after = run_variant(None, server, redis_url, graph, logs, steady=False)
        b, a = before["burst"]["cpu_ms_per_message"], after["burst"]["cpu_ms_per_message"]
        rounds.append(
            {
                "baseline_cpu_ms_per_message": b,
                "baseline_by_part": before["burst"]["cpu_ms_per_message_by_part"],
                "baseline_worker_processes": before["worker_processes"],
                "cpu_ms_per_message": a,
                "by_part": after["burst"]["cpu_ms_per_message_by_part"],
                "worker_processes": after["worker_processes"],
                "ratio": round(a / b, 3),
            }
        )
    median = sorted(rounds, key=lambda r: r["ratio"])[(len(rounds) - 1) // 2]  # the lower median
    return {
        "baseline_commit": BASELINE_COMMIT,
        "rounds": rounds,
        "median_round": median,
        "ratio": median["ratio"],
    }


SERVER = ""


def main() -> int:
    global SERVER
    server, _, redis_url = bot_bench.bench_urls()
    SERVER = server
    redis_url = redis_url.rsplit("/", 1)[0] + "/" + os.getenv("BENCH_REDIS_DB", "13")
    graph = bot_bench.Graph()
    logs = Path(os.getenv("BENCH_LOG_DIR", "/tmp")) / f"sophia-bench-throughput-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    # This process reads and writes the bench database through Django too.
    bot_bench.setup_django(
        {
            **bot_bench.app_env(bot_bench.with_database(server, BENCH_DB), redis_url, "", ""),
            "LOG_LEVEL": "WARNING",
        }
    )
    load_before = os.getloadavg()
    variants = []
    versus_baseline = None
    try:
        for workers in WORKER_COUNTS:
            variants.append(run_variant(workers, server, redis_url, graph, logs))
        if not CPU_BASELINE_MS and CPU_ROUNDS > 0:
            versus_baseline = cpu_rounds(server, redis_url, graph, logs)
    finally:
        graph.stop()
    # The goals are for the stack as started: the variant with the demo's default processes.
    one = next((v for v in variants if v["worker_processes"] == DEFAULT_PROCESSES), variants[0])
    cpu = one["burst"]["cpu_ms_per_message"]
    goals_met = {
        "drain_over_acceptance": one["burst"]["drain_over_acceptance"]
        >= GOALS["drain_over_acceptance_min"],
        "e2e_p95": one["e2e_after_burst"]["p95_ms"] <= GOALS["e2e_p95_ms_max"],
        "nothing_lost": all(
            v["e2e_after_burst"]["lost"] == 0 and v["burst"]["left_unprocessed"] == 0
            for v in variants
        ),
    }
    if CPU_BASELINE_MS:
        goals_met["cpu_halved"] = cpu <= CPU_BASELINE_MS * GOALS["cpu_vs_baseline_max"]
    elif versus_baseline is not None:
        goals_met["cpu_halved"] = versus_baseline["ratio"] <= GOALS["cpu_vs_baseline_max"]
    results = {
        "benchmark": "throughput",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "app_dir": str(APP_DIR.relative_to(ROOT)) if APP_DIR.is_relative_to(ROOT) else "other",
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before]},
        "goals": GOALS,
        "cpu_ms_per_message_baseline": CPU_BASELINE_MS or None,
        "cpu_versus_baseline": versus_baseline,
        "default_processes": DEFAULT_PROCESSES,
        "goals_checked_on_processes": one["worker_processes"],
        "variants": variants,
        "goals_met": goals_met,
    }
    out = Path(os.getenv("BENCH_RESULTS", str(RESULTS)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    header = ("workers", "accept/s", "drain/s", "ratio", "CPU ms/msg", "p95 ms")
    print("".join(f"{h:>11}" for h in header))
    for v in variants:
        b, e = v["burst"], v["e2e_after_burst"]
        row = (
            v["worker_processes"],
            b["acceptance_rate"],
            b["drain_rate"],
            b["drain_over_acceptance"],
            b["cpu_ms_per_message"],
            e["p95_ms"],
        )
        print("".join(f"{value:>11}" for value in row))
    if versus_baseline is not None:
        for number, r in enumerate(versus_baseline["rounds"], start=1):
            print(
                f"CPU round {number}: baseline ({BASELINE_COMMIT}) "
                f"{r['baseline_cpu_ms_per_message']} ms/message, this code "
                f"{r['cpu_ms_per_message']} ms/message: ratio {r['ratio']}"
            )
        print(f"CPU versus baseline (median round): {versus_baseline['ratio']}")
    print(f"goals met: {goals_met}; results → {out}")
    return 0 if all(goals_met.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
