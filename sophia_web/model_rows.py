"""Model instances from hand-written SELECTs, for the worker's per-turn reads.

Every turn reads its message with the conversation and the clinic, then locks the conversation
with its patient. Through the ORM (`select_related`) those two reads cost more Python than
anything else in a turn: the compiler rebuilds the same joined SELECT, column by column, every
time (bench/README.md, sixth session). Written once per process from the models' own fields,
they are loaded here exactly as the ORM loads them: the database's and the fields' converters,
then `Model.from_db`, so a field added to a model needs no change here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper

Converter = Callable[[object, object, BaseDatabaseWrapper], object]


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
