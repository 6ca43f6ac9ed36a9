"""Queue a task for many arguments in one INSERT, inside the caller's transaction.

django-tasks-db's `DatabaseBackend.enqueue` writes one `DBTaskResult` per call through the
ORM's `create()`. On the webhook's path that was the largest single cost left: 11.5 % of
daphne's Python time under the ack benchmark's load, about 0.6 ms of the 5.6 ms a webhook
request cost the web process (py-spy, bench/README.md "Fourth session"). `enqueue_many` writes
the same rows with `sophia_web.inserts` (one statement for every call, the SQL cached).

The row is the library's: the fields its backend sets (args_kwargs normalized by Django's own
`normalize_json`, priority, task_path, queue_name, run_after, backend_name) and the model's
defaults for the rest (id, status READY, worker_ids, …). Two things the library does through
the ORM are done here by hand, and tests/test_task_rows.py compares a row written here with
one the library writes, so an upgrade that changes either fails there:
- its `pre_save` handler stores a missing run_after as `get_date_max()` ("run any time");
- its `task_enqueued` signal is not sent: its only receiver is Django's DEBUG log line.
A task on another backend, or a backend with its own `id_function`, goes through the
library's `enqueue` unchanged.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Sequence

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.tasks import Task
from django.utils.json import normalize_json
from django_tasks_db.backend import DatabaseBackend
from django_tasks_db.models import DBTaskResult, get_date_max

from sophia_web import inserts


def enqueue_many(
    cursor: CursorWrapper, task: Task, calls: Sequence[tuple], now: dt.datetime
) -> list[uuid.UUID]:
    """Queue `task(*args)` for each `args` in `calls`; the task ids, in the order of `calls`.

    Written through `cursor`, so the rows commit (or roll back) with the caller's transaction.
    """
    if not calls:
        return []
    backend = _database_backend(task)
    if backend is None:
        return [task.enqueue(*args).id for args in calls]
    fixed = _fixed_fields(task, backend)
    # The ids are made here (the model's own default): nothing needs reading back.
    rows = [
        {
            "id": DBTaskResult._meta.pk.get_default(),
            "args_kwargs": normalize_json({"args": args, "kwargs": {}}),
            **fixed,
        }
        for args in calls
    ]
    inserts.insert(cursor, DBTaskResult, rows, now, returning=())
    return [row["id"] for row in rows]


def enqueue_each_sql(
    task: Task, source: str, column: str, rest: tuple, now: dt.datetime, db: BaseDatabaseWrapper
) -> tuple[str, list] | None:
    """PostgreSQL: an INSERT … SELECT that queues `task(<column>, *rest)` for each row of
    `source` (a table, or a query in parentheses, whose `column` gives the first argument), and
    its parameters, for a caller's larger statement (bot.webhook stores a payload in one). The
    rows are `enqueue_many`'s; PostgreSQL makes their ids (`gen_random_uuid()`, a version 4
    UUID like the model's default). None when the task is not on the database backend."""
    backend = _database_backend(task)
    if backend is None:
        return None
    # The first argument, unknown until the statement runs, replaces a null in the template.
    template = DBTaskResult._meta.get_field("args_kwargs").get_db_prep_save(
        normalize_json({"args": [None, *rest], "kwargs": {}}), db
    )
    fixed = _fixed_fields(task, backend)
    # The columns given: the fixed ones, the id and the arguments (the rest: NULL or defaults).
    given = frozenset({*fixed, "id", "args_kwargs"})
    nulls = inserts.nulls(DBTaskResult, given)
    expressions = {"id": (), "args_kwargs": [template], **dict.fromkeys(nulls, ())}
    params = inserts.row_params(DBTaskResult, fixed, now, db, expressions)
    return _each_sql(source, db.ops.quote_name(column), given), params


@functools.lru_cache(maxsize=16)
def _each_sql(source: str, column: str, given: frozenset[str]) -> str:
    expressions = {
        "id": "gen_random_uuid()",
        "args_kwargs": f"jsonb_set(%s::jsonb, '{{args,0}}', to_jsonb(s.{column}))",
        **inserts.nulls(DBTaskResult, given),
    }
    values = inserts.row_sql(DBTaskResult, expressions, casts=True)[1:-1]
    # `source` and `column` are the caller's constants; every value is a parameter.
    return f"{inserts.into_sql(DBTaskResult)} SELECT {values} FROM {source} AS s"  # noqa: S608


def _database_backend(task: Task) -> DatabaseBackend | None:
    """The task's backend when it is django-tasks-db's with the model's own ids, else None."""
    backend = task.get_backend()
    if not isinstance(backend, DatabaseBackend) or backend.options.get("id_function"):
        return None
    backend.validate_task(task)
    return backend


def _fixed_fields(task: Task, backend: DatabaseBackend) -> dict:
    """The fields the library's `enqueue` sets that are the same for every call of `task`."""
    return {
        "priority": task.priority,
        "task_path": task.module_path,
        "queue_name": task.queue_name,
        "run_after": task.run_after if task.run_after is not None else get_date_max(),
        "backend_name": backend.alias,
    }
