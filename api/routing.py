"""Routers: every /v1 route checks the caller's key; a router turns a request away by its
path's literal start before trying its routes.

**The key check.** A key that is sent is checked on every route of a keyed router (the
default), even a public one: a bad key is always a 401 (api/deps.py, ``current_principal``).
The check runs in the route's handler, before its dependencies are solved, rather than as a
dependency of its own: FastAPI solving one more dependency costs every request a sixth as
much again as a bare route. Routes that must answer without a key (the probes, the metrics
scrape with its own rule, the public pages) sit on routers made with ``keyed=False``.

**The shortcut.**
FastAPI keeps an included router as one entry of the app's routes and, for every request,
tries each of that router's routes in turn (a scope update, a context lookup and a regular
expression apiece), whatever the router's prefix; the router that matches is then searched
once more to handle the request. A read of a consultation was tried against some fifty routes
that way before its own: a sixth of the request, measured under load.

:class:`Router` answers "not mine" at once for a path that starts with none of its routes'
literal beginnings (the text before a route's first ``{``): every path a route matches starts
with that text. It changes no answer — ``tests/unit/test_routing.py`` compares every route's
path with and without the shortcut, and checks that no two routes match the same request, so
the order in which routers are included and routes declared is free to follow how often they
are read.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import Scope

from api.deps import current_principal

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class KeyedRoute(APIRoute):
    """A route that checks the caller's key (401 for a bad one) before anything else."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def keyed(request: Request) -> Response:
            await current_principal(request)
            return await handler(request)

        return keyed


class Router(APIRouter):
    """:class:`fastapi.APIRouter` with the key check and the shortcut above. Include it
    without a prefix of its own (``include_router(router)``): the routes' paths are the whole
    paths."""

    def __init__(self, *args: Any, keyed: bool = True, **kwargs: Any) -> None:
        if keyed:
            kwargs.setdefault("route_class", KeyedRoute)
        super().__init__(*args, **kwargs)

    shortcut = True  # False: FastAPI's own matching, for the test that compares the two

    _heads: tuple[str, ...] = ()
    _heads_of = -1  # how many routes the heads were worked out for

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            self.shortcut
            and scope["type"] == "http"
            and not get_route_path(scope).startswith(self.heads())
        ):
            return Match.NONE, {}
        return super().matches(scope)

    def heads(self) -> tuple[str, ...]:
        """The literal beginnings of this router's routes, shortest first."""
        if self._heads_of != len(self.routes):
            found = {getattr(route, "path", "").split("{", 1)[0] for route in self.routes}
            # A route without a path of its own (an included router) could match anything.
            self._heads = ("",) if "" in found else tuple(sorted(found, key=len))
            self._heads_of = len(self.routes)
        return self._heads
