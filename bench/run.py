"""Run Sophia's benchmarks (`make bench`). Benchmarks measure; tests never time anything.

    python bench/run.py            # every bench/bench_*.py, in name order
    python bench/run.py booking    # only bench/bench_booking.py (several names allowed)

Each module exposes `main() -> int` (0 when its goals are met), writes its figures to
bench/results/<name>.json and prints a short table. Each runs in its own process, so each may
configure Django (settings, database) its own way. The exit status is non-zero when any
benchmark missed a goal or failed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def available() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH.glob("bench_*.py"))}


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered and importable by name, so multiprocessing can pickle the module's functions.
    sys.modules[spec.name] = module
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec.loader.exec_module(module)
    return module


def run_one(name: str) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return int(load(name, available()[name]).main() or 0)
    except Exception:
        traceback.print_exc()
        return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"] and len(argv) == 2:
        return run_one(argv[1])
    benches = available()
    names = argv or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(benches)}")
        return 2
    failed = []
    for name in names:
        print(f"== bench {name} ==", flush=True)
        status = subprocess.run([sys.executable, __file__, "--one", name], cwd=ROOT).returncode
        if status:
            failed.append(name)
    if failed:
        print(f"goals missed or errors in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
