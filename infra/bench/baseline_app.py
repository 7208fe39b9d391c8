"""The thinnest durable HTTP command on our stack: the hot-path baselines of ``concord bench``.

A bare FastAPI app under the same uvicorn settings as the API, doing one INSERT per request
into a plain table through the same SQLAlchemy pool in a worker thread (as our routes do) and
answering JSON. No auth, no validation beyond the body, no events: the physical ceiling of a
durable command here. ``GET /health`` answers without touching anything.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from fastapi import FastAPI, Request
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from infra.db import Database
from infra.settings import Settings

TABLE = "bench_baseline_commands"
CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(id VARCHAR(36) PRIMARY KEY, body TEXT NOT NULL, created_at TIMESTAMP NOT NULL)"
)
INSERT = text(f"INSERT INTO {TABLE} (id, body, created_at) VALUES (:id, :body, CURRENT_TIMESTAMP)")


def create_app() -> FastAPI:
    # The API's own pool sizes (CONCORD_DB_POOL_SIZE, CONCORD_DB_MAX_OVERFLOW).
    db = Database.configured(Settings())
    app = FastAPI(openapi_url=None)

    @app.post("/insert", status_code=201)
    async def insert(request: Request) -> dict[str, Any]:
        body = (await request.body()).decode()
        key = str(uuid4())

        def write() -> None:
            with db.autocommit() as conn:
                conn.execute(INSERT, {"id": key, "body": body})

        await run_in_threadpool(write)
        return {"id": key}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def prepare(url: str) -> None:
    """Create the baseline's table (in the bench's scratch database)."""
    db = Database(url)
    try:
        with db.autocommit() as conn:
            conn.execute(text(CREATE))
    finally:
        db.dispose()
