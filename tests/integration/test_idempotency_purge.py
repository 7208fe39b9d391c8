"""Stored answers to Idempotency-Keys are deleted after their 24 h, by the scheduler's hourly
``idempotency.purge`` (they may hold personal data of people erased since)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from infra.bootstrap import System
from infra.idempotency import IdempotencyStore
from infra.queue import make_app
from infra.schema import idempotency_keys


def test_answers_older_than_a_day_are_purged_and_younger_ones_kept(system: System) -> None:
    now = datetime.now(UTC)
    with system.db.write() as conn:
        for key, age in (("old", timedelta(hours=25)), ("young", timedelta(hours=23))):
            conn.execute(
                idempotency_keys.insert().values(
                    scope="key:test",
                    key=key,
                    request_hash="0" * 64,
                    status_code=201,
                    headers={},
                    body=b'{"name": "Daw Aye Aye Mar"}',
                    created_at=now - age,
                    completed_at=now - age,
                )
            )
    assert IdempotencyStore(system.db).purge(now) == 1
    with system.db.read() as conn:
        left = conn.execute(select(idempotency_keys.c.key)).scalars().all()
    assert left == ["young"]


def test_the_scheduler_runs_the_purge_every_hour(system: System) -> None:
    import workers.tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import app

    schedule = make_app(system.settings).conf.beat_schedule["idempotency.purge"]
    assert schedule == {"task": "idempotency.purge", "schedule": 3600.0}
    assert "idempotency.purge" in app.tasks
