"""Multi-row INSERT statements built from the models, for the hot paths (webhook, booking).

The webhook stores every WhatsApp message before it answers, so what it costs per request
bounds how many messages a web process accepts; a booking holds its slot's row lock while it
writes. Through the ORM both cost more Python (querysets, compilers, model instances, one
cursor per statement) than PostgreSQL spent running their statements: the ack benchmark
(`make bench BENCH_ARGS=bot`) measured the webhook at 0.41 of a do-nothing endpoint (goal 0.6)
and the booking benchmark the service at a quarter of the same statements in plain SQL
(bench/README.md). These statements are the same SQL on PostgreSQL and on SQLite ≥ 3.35 (the
embedded demo): `INSERT … ON CONFLICT … RETURNING`.

Column lists and defaults come from the model's fields, so a field added later with a default
needs no change here; identifiers come from the models and every value is a parameter. Like
`bulk_create`, no `pre_save`/`post_save` signal is sent: nothing listens to the models written
here (tests/test_inserts.py fails the day something does).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence

from django.db import connection, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

MAX_PARAMS = 10_000


@functools.cache
def _fields(model: type[models.Model]) -> tuple[models.Field, ...]:
    """The columns an INSERT of `model` writes: all but those the database fills itself."""
    return tuple(
        f
        for f in model._meta.concrete_fields
        if not f.db_returning and not f.generated and not f.has_db_default()
    )


def _default(field: models.Field, now: dt.datetime) -> object:
    return now if _set_on_save(field) else field.get_default()


def _set_on_save(field: models.Field) -> bool:
    return getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)


def columns(model: type[models.Model]) -> dict[str, str]:
    """The model's quoted column names by attname: the hot paths' hand-written statements
    (here, bot.processing, bot.whatsapp) take their names from the models, never by hand."""
    quote = connection.ops.quote_name
    return {f.attname: quote(f.column) for f in model._meta.concrete_fields}


# Keyed by row count too: a payload carries a handful of messages at most.
@functools.lru_cache(maxsize=256)
def _sql(model: type[models.Model], rows: int, tail: str) -> str:
    one_row = row_sql(model)
    return f"{into_sql(model)} VALUES {', '.join([one_row] * rows)} {tail}"


def into_sql(model: type[models.Model]) -> str:
    """`INSERT INTO <table> (<columns>)` for `model`, the columns in `row_sql`'s order."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in _fields(model))
    return f"INSERT INTO {quote(model._meta.db_table)} ({columns})"


def row_sql(
    model: type[models.Model], expressions: Mapping[str, str] | None = None, *, casts: bool = False
) -> str:
    """One row's values for `into_sql`: a parameter per column, or for a column named (by
    attname) in `expressions` that SQL instead, its own parameters in that place (`row_params`
    takes them). `casts` casts each parameter to its column's type, for an INSERT … SELECT,
    where PostgreSQL cannot infer it from the column as it does in VALUES."""
    expressions = expressions or {}
    return (
        "("
        + ", ".join(
            expressions.get(f.attname) or (f"%s::{f.cast_db_type(connection)}" if casts else "%s")
            for f in _fields(model)
        )
        + ")"
    )


def insert(
    cursor: CursorWrapper,
    model: type[models.Model],
    rows: Sequence[dict],
    now: dt.datetime,
    *,
    on_conflict: str = "",
    returning: Sequence[str] = ("id",),
) -> list[tuple]:
    """INSERT `rows` (values by attname; the model's defaults for the rest): one statement, or
    one per chunk of rows when they would pass the database's parameter limit.

    `on_conflict` is the statement's ON CONFLICT clause, written by the caller from its own
    constants; the result is RETURNING `returning` (columns) for the rows written, in no
    guaranteed order. With `returning` empty nothing is read back and the result is [].
    """
    if not rows:
        return []
    # The cursor's own connection, not django.db.connection: that proxy looks the connection
    # up (asgiref's context-local storage) on every use, and the loop below uses it per value
    # (8 % of the webhook's Python time when it did).
    db = cursor.db
    fields = _fields(model)
    quote = db.ops.quote_name
    tail = on_conflict
    if returning:
        tail += f" RETURNING {', '.join(quote(c) for c in returning)}"
    # A statement takes only so many parameters (PostgreSQL 65,535; SQLite its build's limit),
    # so a payload of many messages is written a chunk of rows at a time.
    limit = min(db.features.max_query_params or MAX_PARAMS, MAX_PARAMS)
    per_statement = max(1, limit // len(fields))
    written: list[tuple] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        params: list = []
        for values in chunk:
            params += row_params(model, values, now, db)
        cursor.execute(_sql(model, len(chunk), tail), params)
        if returning:
            written += cursor.fetchall()
    return written


def values_of(instance: models.Model) -> dict:
    """An unsaved instance's values for `insert`/`row_params`, by attname (the columns an
    INSERT writes: not its id)."""
    return {f.attname: getattr(instance, f.attname) for f in _fields(type(instance))}


@functools.cache
def nulls(model: type[models.Model], given: frozenset[str]) -> dict[str, str]:
    """`row_sql` expressions writing NULL for the columns an INSERT of `model` leaves to a
    default of None when the caller gives only `given` (attnames), for `row_params` too (their
    parameters: none). psycopg converts a statement of at most 50 parameters once per process
    (its MAX_CACHED_STATEMENT_PARAMS) and every other one on each execute, which costs a large
    statement (bot.webhook's store) more than sending it."""
    return {
        f.attname: "NULL"
        for f in _fields(model)
        if f.attname not in given and not _set_on_save(f) and f.get_default() is None
    }


def one_row_sql(model: type[models.Model]) -> str:
    """The INSERT of one row of `model` (its parameters: `row_params`), for a caller that
    makes it part of a larger statement (clinics.services' booking on PostgreSQL)."""
    return _sql(model, 1, "").rstrip()


def row_params(
    model: type[models.Model],
    values: dict,
    now: dt.datetime,
    db: BaseDatabaseWrapper,
    expressions: Mapping[str, Sequence] | None = None,
) -> list:
    """One row's parameters, in `row_sql`'s column order, prepared for `db`; for a column
    named in `expressions`, that expression's parameters (`row_sql`'s `expressions`)."""
    params: list = []
    for field in _fields(model):
        if expressions is not None and field.attname in expressions:
            params += expressions[field.attname]
        else:
            value = values[field.attname] if field.attname in values else _default(field, now)
            params.append(field.get_db_prep_save(value, db))
    return params
