"""Model instances from hand-written SELECTs, and saved by hand-written UPDATEs, for the
statements every bot turn runs.

A turn claims its task, reads its message with the conversation and the clinic, locks the
conversation with its patient, looks the patient up, reads the clinic's FAQ and saves the
conversation. Through the ORM (`select_related`, `.first()`, `save(update_fields=…)`) these
cost more Python than anything else in a turn: the compiler rebuilds the same statement, column
by column, every time (bench/README.md, sixth session). Written once per process from the
models' own fields, rows are loaded here exactly as the ORM loads them (the database's and the
fields' converters, then `Model.from_db`) and saved as `Model.save` saves them (each field's
`pre_save` and `get_db_prep_save`), so a field added to a model needs no change here. Loading
sends the signals the ORM's loading sends (`Model.__init__`'s); saving, like `bulk_create` and
`QuerySet.update`, sends no pre_save/post_save: nothing listens to the conversation, the one
model saved here (tests/bot/test_turn_reads.py fails the day something does).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from django.db import DatabaseError, connection, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper


def select_list(model: type[models.Model], alias: str, db: BaseDatabaseWrapper) -> str:
    """The model's columns under `alias`, in its concrete fields' order (what `load` reads)."""
    quote = db.ops.quote_name
    return ", ".join(f"{quote(alias)}.{quote(f.column)}" for f in model._meta.concrete_fields)


def width(model: type[models.Model]) -> int:
    """How many columns `select_list` gives for `model`."""
    return len(model._meta.concrete_fields)


# (model, vendor) → (column index, its converters, the column) for the columns that have any.
# The same functions serve every connection of one backend: they take the connection as an
# argument, so they are worked out once per process (the compiler does it per query).
_converters: dict[tuple[type[models.Model], str], tuple] = {}


def _converters_for(model: type[models.Model], db: BaseDatabaseWrapper) -> tuple:
    key = (model, db.vendor)
    found = _converters.get(key)
    if found is None:
        found = []
        for index, field in enumerate(model._meta.concrete_fields):
            col = field.get_col(model._meta.db_table)
            converters = (*db.ops.get_db_converters(col), *col.get_db_converters(db))
            if converters:
                found.append((index, converters, col))
        found = _converters[key] = tuple(found)
    return found


def load(
    model: type[models.Model], values: Sequence[object], db: BaseDatabaseWrapper
) -> models.Model:
    """An instance of `model` from its `select_list` columns, as the ORM would have built it."""
    row = list(values)
    for index, converters, col in _converters_for(model, db):
        value = row[index]
        for converter in converters:
            value = converter(value, col, db)
        row[index] = value
    return model.from_db(db.alias, None, row)


def fetch(
    model: type[models.Model], sql: str, params: Sequence[object], *, using: str = "default"
) -> list[models.Model]:
    """Run `sql`, whose columns are `select_list(model, …)`, and load every row."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        db = cursor.db
    return [load(model, row, db) for row in rows]


@functools.cache
def _update_sql(model: type[models.Model], fields: tuple[str, ...], vendor: str) -> str:
    # `vendor` keys the cache: the quoting is the backend's.
    meta = model._meta
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in fields)
    return f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s"  # noqa: S608


def save_fields(instance: models.Model, fields: Sequence[str]) -> None:
    """`instance.save(update_fields=fields)` as one UPDATE built once per process; like
    `Model.save`, a DatabaseError when the row is gone."""
    meta = type(instance)._meta
    with connection.cursor() as cursor:
        db = cursor.db
        params = [
            field.get_db_prep_save(field.pre_save(instance, False), db)
            for field in (meta.get_field(name) for name in fields)
        ]
        params.append(meta.pk.get_db_prep_value(instance.pk, db))
        cursor.execute(_update_sql(type(instance), tuple(fields), db.vendor), params)
        if cursor.rowcount != 1:
            raise DatabaseError("Save with update_fields did not affect any rows.")
