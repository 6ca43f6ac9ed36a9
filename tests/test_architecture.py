"""The import structure (STYLE §2, issue 6), read with grimp: no circles, bot → clinics and never
back, and an engine that imports no ORM, HTTP, Redis or Channels — not even through the modules
it imports — nor hides imports inside functions.
"""

import ast
import pathlib

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRST_PARTY = ("bot", "clinics", "console", "sophia_web", "outreach")
# What a pure engine must not reach: the database, the network, Redis, websockets, and models.
ENGINE_FORBIDDEN = (
    "django.db",
    "django.http",
    "httpx",
    "openai",
    "psycopg",
    "redis",
    "channels",
    "channels_redis",
    "bot.models",
    "clinics.models",
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Django as a package of the graph, so "django.db" is told apart from "django.utils".
    return grimp.build_graph(
        *FIRST_PARTY, "django", include_external_packages=True, exclude_type_checking_imports=True
    )


def first_party(module: str) -> bool:
    return module.split(".")[0] in FIRST_PARTY


def test_it_has_no_import_circles(graph):
    circles = []
    for module in sorted(m for m in graph.modules if first_party(m)):
        for imported in graph.find_modules_directly_imported_by(module):
            if first_party(imported) and graph.chain_exists(importer=imported, imported=module):
                circles.append(graph.find_shortest_chain(importer=imported, imported=module))
    assert circles == []


def test_clinics_never_imports_bot(graph):
    assert graph.find_illegal_dependencies_for_layers(layers=["bot", "clinics"]) == set()


def engine_closure(graph) -> set[str]:
    """bot.engine and every first-party module it reaches through first-party modules."""
    seen, todo = set(), ["bot.engine"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [m for m in graph.find_modules_directly_imported_by(module) if first_party(m)]
    return seen


def test_the_engine_reaches_no_orm_http_redis_or_channels(graph):
    closure = engine_closure(graph)
    assert "bot.gateway" not in closure  # the ORM gateway is handed in, never imported
    reached = {
        (module, imported)
        for module in closure
        for imported in graph.find_modules_directly_imported_by(module)
        if any(imported == f or imported.startswith(f + ".") for f in ENGINE_FORBIDDEN)
    }
    assert reached == set()


def test_the_check_sees_a_forbidden_import(graph):
    """The closure check above would catch the engine importing the ORM gateway."""
    assert "clinics.models" in graph.find_modules_directly_imported_by("bot.gateway")
    assert "bot.engine" in engine_closure(graph)


def imports_inside_functions(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [
                f"{path.relative_to(ROOT)}:{sub.lineno}"
                for sub in ast.walk(node)
                if isinstance(sub, ast.Import | ast.ImportFrom)
            ]
    return found


def test_no_imports_hide_inside_functions():
    sources = [
        path
        for package in FIRST_PARTY
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    ]
    assert [hit for path in sources for hit in imports_inside_functions(path)] == []
