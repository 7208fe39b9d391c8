"""A router that turns a request away by its path's literal start before trying its routes.

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

from fastapi import APIRouter
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import Scope


class Router(APIRouter):
    """:class:`fastapi.APIRouter` with the shortcut above. Include it without a prefix of its
    own (``include_router(router)``): the routes' paths are the whole paths."""

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
