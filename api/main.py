"""The HTTP application: ``create_app()`` is what uvicorn serves (``--factory``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import openapi, pages, problems, ratelimit
from api.idempotency import Idempotency
from api.middleware import BodyLimit, RequestContext
from api.routers import (
    api_keys,
    consultations,
    event_types,
    events,
    health,
    invitations,
    metrics,
    organisations,
    people,
    reminders,
    series,
    statements,
    subscriptions,
)
from infra.bootstrap import System, bootstrap
from infra.integration import live
from infra.logging import configure as configure_logging
from infra.metrics import count_connections
from infra.runtime import tune_process
from infra.settings import get_settings

DESCRIPTION = """
Concord keeps an append-only log of everything that happens in civil-society consultations —
planning, sign-ups, joint statements and endorsements — and builds current state from it.

* Errors are [RFC 9457](https://www.rfc-editor.org/rfc/rfc9457) `application/problem+json`.
* `GET /v1/events?after=N` pages through the log in global `position` order; a reader that
  follows `next_after` never misses an event, even one whose transaction commits late.
* Reads served from projections accept `X-Min-Position: N` and include event N (or answer 503).
"""


def create_app(
    system: System | None = None, *, background: bool = False, prepare: bool = True
) -> FastAPI:
    """Build the FastAPI app; without ``system`` it bootstraps one from the environment.

    Projections catch up in the worker (``concord worker``); ``background=True`` runs that
    loop in this process instead (handy for a single-process deployment or a test).
    ``prepare=False`` leaves each route to be prepared on its first request, as FastAPI does
    by default: for an app that lives for a handful of requests (a test), not for a server.
    """
    settings = system.settings if system is not None else get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = system is None
        running = system or bootstrap(settings)
        app.state.system = running
        count_connections(running.db)  # concord_db_connections_opened_total
        # FastAPI prepares each route (its dependencies, pydantic adapters) the first time a
        # request is matched against its router: about a second of CPU per process, which the
        # first requests would otherwise wait for. The OpenAPI document walks every route.
        if prepare:
            app.openapi()
        if background:
            running.start_background()
        live.drain_on_signals()  # a stop signal ends live event streams, so shutdown is not held
        guard = ratelimit.guard_of(app)
        guard.start()  # key usage is written every few seconds
        try:
            yield
        finally:
            await guard.aclose()
            guard.close()  # … and once more on the way out
            app.state.rate_guard = None
            if own:
                running.close()

    if system is None:
        configure_logging(settings.log_format, settings.log_level)
        tune_process()
    app = FastAPI(
        title="Concord",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    if system is not None:
        app.state.system = system
    problems.install(app)
    openapi.install(app)
    app.include_router(health.router)
    app.include_router(metrics.router)  # its own access rule: see api/routers/metrics.py
    # Every /v1 route checks a key that is sent, even a public one: a bad key is always 401
    # (api/routing.py). Routers are tried in this order, each turning most paths away at once.
    for router in (
        consultations,
        statements,
        events,
        organisations,
        reminders,
        series,
        api_keys,
        invitations,
        people,
        subscriptions,
        event_types,
    ):
        app.include_router(router.router)
    # Public HTML pages: no key needed, none read (a link's token is what a sign-on page needs).
    pages.install(app)
    app.add_middleware(Idempotency)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ratelimit.Throttle)
    app.add_middleware(RequestContext)  # … which also retries a read that lost its connection
    return app
