"""Every regular expression that reads patients' words runs in linear time (issue 7).

One signed 900,000-character text once froze the worker in a red-flag pattern whose time grew
with the square of the length. Two guards: a structural audit of every compiled pattern in
bot.nlu, bot.triage and bot.text (no repeat of `.`, no unbounded repeat inside another), and
measured ratios — a text 100 times longer may cost about 100 times more, never 10,000 times.
Ratios, not absolute times, so a busy machine does not fail them; each side takes its best of
a few runs.
"""

import datetime as dt
import re
import re._constants as sre
import re._parser as sre_parse
import time

import pytest

from bot import engine, nlu, text, triage
from bot.messages import Inbound
from clinics.demo_data import SPECIALTIES
from clinics.models import Specialty
from tests.bot.memory_gateway import MemoryGateway

SPECIALTY_ROWS = [
    Specialty(slug=slug, name=name, triage_keywords=", ".join(keywords))
    for slug, (name, keywords) in SPECIALTIES.items()
]
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)


def compiled_patterns() -> list[tuple[str, re.Pattern]]:
    found = []
    for module in (nlu, triage, text):
        for name, value in vars(module).items():
            if isinstance(value, re.Pattern):
                found.append((f"{module.__name__}.{name}", value))
    found += [(f"red flag {code}", pattern) for code, pattern in triage._RED_FLAGS]
    return found


def risky_constructs(items, inside_unbounded: bool = False) -> list[str]:
    problems = []
    for op, arg in items:
        if op in _REPEATS:
            _, high, sub = arg
            unbounded = high == sre.MAXREPEAT
            body = list(sub)
            if unbounded and inside_unbounded:
                problems.append("an unbounded repeat inside another")
            if unbounded and any(o == sre.ANY for o, _ in body):
                problems.append("an unbounded repeat of '.'")
            problems += risky_constructs(body, inside_unbounded or unbounded)
        elif op == sre.SUBPATTERN:
            problems += risky_constructs(list(arg[-1]), inside_unbounded)
        elif op == sre.BRANCH:
            for branch in arg[1]:
                problems += risky_constructs(list(branch), inside_unbounded)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            problems += risky_constructs(list(arg[1]), inside_unbounded)
    return problems


def test_it_has_no_pattern_that_can_backtrack_quadratically():
    patterns = compiled_patterns()
    assert len(patterns) > 150  # the red flags alone are more: the audit sees them all
    bad = {
        name: problems
        for name, pattern in patterns
        if (problems := risky_constructs(list(sre_parse.parse(pattern.pattern, pattern.flags))))
    }
    assert bad == {}


def best_time(function, argument, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        function(argument)
        best = min(best, time.perf_counter() - started)
    return best


# Texts that make a backtracking pattern try and fail at many starting points.
ADVERSARIAL_SEEDS = [
    "dolor",  # one endless word after a literal the patterns start with (`dolor\w* …`)
    "no tengo dolor en el pecho ",  # a denied match again and again
    "embarazada ",
    "hijo fiebre ",
    "me tome ",
    "1.",
    "a",
    " ",
    "las 3 ",
    "14 de marzo de ",
    "con la dra ",
]


def repeated(seed: str, length: int) -> str:
    return (seed * (length // len(seed) + 1))[:length]


@pytest.mark.parametrize("seed", ADVERSARIAL_SEEDS)
def test_it_runs_every_red_flag_pattern_in_linear_time(seed):
    # Straight on the folded text, past the length cap the public functions apply.
    small = " ".join(triage._fold_words(repeated(seed, 3_000))[0])
    big = small * 10
    slowest = max(
        best_time(lambda t, p=pattern: list(p.finditer(t)), big)
        / max(best_time(lambda t, p=pattern: list(p.finditer(t)), small), 1e-6)
        for _, pattern in triage._RED_FLAGS
    )
    assert slowest < 60  # linear: about 10; quadratic: about 100


@pytest.mark.parametrize("seed", ADVERSARIAL_SEEDS)
def test_it_classifies_a_900k_text_about_as_fast_as_a_small_one(seed):
    today = dt.date(2026, 12, 2)
    readers = {
        "red flags": triage.detect_red_flag,
        "triage": lambda t: triage.classify(t, SPECIALTY_ROWS),
        "recent red flags": lambda t: triage.detect_red_flag_in_messages([t, t]),
        "document": nlu.parse_document,
        "when": lambda t: nlu.parse_when(t, today),
        "birth date": lambda t: nlu.parse_birth_date(t, today),
        "intent": nlu.detect_intent,
        "choice": lambda t: nlu.parse_choice(t, []),
        "doctor": lambda t: nlu.match_doctor(t, {1: "Dra. Luisa Rojas"}),
        "yes": nlu.is_yes,
        "name": nlu.parse_full_name,
    }
    small, big = repeated(seed, text.MAX_TEXT), repeated(seed, 900_000)
    ratios = {
        name: best_time(read, big) / max(best_time(read, small), 1e-5)
        for name, read in readers.items()
    }
    # Only the first MAX_TEXT characters are read, by linear patterns: the 900k text costs
    # what a full-length message costs (plus slicing), far from the 220x of reading it all.
    assert {name: ratio for name, ratio in ratios.items() if ratio > 20} == {}


def test_a_whole_turn_on_a_900k_text_costs_about_what_a_full_message_costs():
    """The engine itself (memory gateway, no database) reads no more of a text than a message."""
    gateway = MemoryGateway()
    specialty = gateway.add_specialty("medicina-general", "Medicina General", "fiebre, gripa")
    first = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    gateway.add_slots(specialty, "Dr. Carlos García", first, 20)
    gateway.add_patient("1020304050", "Ana María Gómez", dt.date(1985, 3, 14), "573001234567")

    def turn(body: str) -> None:
        ctx = engine.Context(
            gateway=gateway,
            conversation_id=1,
            wa_id="573001234567",
            now=dt.datetime.now(dt.UTC),
        )
        snapshot = engine.step(engine.Snapshot(), Inbound(kind="text", text="1020304050"), ctx)
        engine.step(snapshot.snapshot, Inbound(kind="text", text=body), ctx)

    for seed in ("me duele el pecho ", "dolor", "con la dra el viernes a las 3 ", "1."):
        small, big = repeated(seed, text.MAX_TEXT), repeated(seed, 900_000)
        assert best_time(turn, big) / max(best_time(turn, small), 1e-5) < 20, seed
