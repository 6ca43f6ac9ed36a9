"""sophia_web.task_rows writes the task rows django-tasks-db's own enqueue would."""

import pytest
from django.db import connection, transaction
from django.tasks import task
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.models import DBTaskResult, get_date_max

from bot.processing import run_turns
from sophia_web import task_rows

pytestmark = pytest.mark.django_db

# Fields the two writers must agree on: everything but the id and the enqueue time.
COMPARED = [f.attname for f in DBTaskResult._meta.concrete_fields if f.attname != "id"]
COMPARED.remove("enqueued_at")


@task(queue_name="turns", priority=7)
def _prioritised(number: int, label: str) -> None:
    """A module-level task of its own (priority, two arguments) for the comparison."""


def _values(pk) -> dict:
    return DBTaskResult.objects.values(*COMPARED).get(pk=pk)


@pytest.mark.parametrize(
    ("queued", "args"),
    [(run_turns, (41, 0)), (_prioritised, (3, "ñandú")), (run_turns.using(priority=-5), (9, 2))],
    ids=["run_turns", "other_task", "using"],
)
def test_it_writes_the_row_the_library_writes(queued, args):
    by_library = queued.enqueue(*args).id
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        (by_hand,) = task_rows.enqueue_many(cursor, queued, [args], now)

    assert _values(by_hand) == _values(by_library)
    row = DBTaskResult.objects.get(pk=by_hand)
    assert row.enqueued_at == now
    assert row.run_after == get_date_max()  # "any time", as the library's pre_save stores it
    assert row.task_result.args == list(args)
    assert row.task.func is queued.func


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL statement")
@pytest.mark.parametrize(
    ("queued", "rest"),
    [(run_turns, (0,)), (_prioritised, ("ñandú",)), (run_turns.using(priority=-5), (2,))],
    ids=["run_turns", "other_task", "using"],
)
def test_it_writes_the_library_row_for_each_row_of_a_query(queued, rest):
    by_library = {queued.enqueue(n, *rest).id: n for n in (5, 6)}
    now = timezone.now()
    sql, params = task_rows.enqueue_each_sql(
        queued, "(SELECT 5 AS n UNION ALL SELECT 6)", "n", rest, now, connection
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)

    by_hand = DBTaskResult.objects.exclude(pk__in=by_library).order_by("args_kwargs")
    assert [_values(row.pk) for row in by_hand] == [_values(pk) for pk in by_library]
    assert {row.enqueued_at for row in by_hand} == {now}
    assert len({row.pk for row in by_hand}) == 2  # the database made an id for each


def test_it_keeps_a_delayed_tasks_run_after():
    later = timezone.now() + timezone.timedelta(minutes=5)
    delayed = run_turns.using(run_after=later)
    with transaction.atomic(), connection.cursor() as cursor:
        (pk,) = task_rows.enqueue_many(cursor, delayed, [(1, 0)], timezone.now())

    assert DBTaskResult.objects.get(pk=pk).run_after == later
    assert not DBTaskResult.objects.ready().filter(pk=pk).exists()


def test_it_queues_many_calls_in_one_statement_the_worker_can_claim():
    calls = [(n, 0) for n in range(25)]
    with (
        transaction.atomic(),
        CaptureQueriesContext(connection) as queries,
        connection.cursor() as cursor,  # after the capture starts: it wraps new cursors
    ):
        ids = task_rows.enqueue_many(cursor, run_turns, calls, timezone.now())

    inserts = [q for q in queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1 and "RETURNING" not in inserts[0]["sql"]  # nothing read back
    ready = DBTaskResult.objects.ready().filter(task_path=run_turns.module_path)
    assert {row.pk: row.args_kwargs["args"][0] for row in ready} == dict(zip(ids, range(25)))


def test_it_writes_nothing_for_no_calls():
    with connection.cursor() as cursor:
        assert task_rows.enqueue_many(cursor, run_turns, [], timezone.now()) == []
    assert not DBTaskResult.objects.exists()


def test_it_rolls_back_with_the_callers_transaction():
    with pytest.raises(RuntimeError), transaction.atomic():
        with connection.cursor() as cursor:
            task_rows.enqueue_many(cursor, run_turns, [(1, 0)], timezone.now())
        raise RuntimeError("the webhook failed after queueing")

    assert not DBTaskResult.objects.exists()
