"""Routing: the routers' shortcut changes no answer, and no two routes take the same request,
so routers and routes may be ordered by how often they are used (api/routing.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.routing import BaseRoute, Match, Mount

from api.main import create_app
from api.routing import KeyedRoute, Router
from infra.bootstrap import System
from infra.settings import Settings

_PARAM = re.compile(r"\{[^}]+\}")


@pytest.fixture(scope="module")
def app() -> Any:
    settings = Settings(DATABASE_URL="sqlite:///unused.sqlite3")
    return create_app(cast(System, SimpleNamespace(settings=settings)), prepare=False)


def _walk(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every entry, inside included routers too (FastAPI keeps those as one entry each)."""
    for route in routes:
        yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)


def _leaves(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, inside included routers too."""
    return (r for r in _walk(routes) if not hasattr(r, "original_router"))


def _requests(app: Any) -> list[tuple[str, str, BaseRoute]]:
    """(method, a path the route takes, the route) for every route and method of the app."""
    found = []
    for route in _leaves(app.router.routes):
        if isinstance(route, Mount):
            continue
        path = _PARAM.sub("s1", getattr(route, "path", ""))
        found += [(method, path, route) for method in sorted(getattr(route, "methods", ()))]
    return found


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def test_the_routes_are_all_found(app: Any) -> None:
    requests = _requests(app)
    assert len(requests) > 80
    assert any(p.startswith("/v1/consultations/") for _, p, _ in requests)


def test_no_two_routes_take_the_same_request(app: Any) -> None:
    routes = [r for r in _leaves(app.router.routes) if not isinstance(r, Mount)]
    for method, path, route in _requests(app):
        takers = [
            r
            for r in routes
            if method in getattr(r, "methods", ()) and r.path_regex.match(path)  # type: ignore[attr-defined]
        ]
        assert takers == [route], (method, path, [getattr(r, "path", r) for r in takers])


@pytest.mark.parametrize("extra", ["", "/", "/more"])
def test_the_shortcut_changes_no_routers_answer(
    app: Any, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    included = [
        r for r in app.router.routes if isinstance(getattr(r, "original_router", None), Router)
    ]
    assert len(included) >= 10
    paths = {(m, p + extra) for m, p, _ in _requests(app)} | {("GET", "/nowhere"), ("GET", "/")}
    turned_away = 0
    for method, path in sorted(paths):
        for entry in included:
            fast, _ = entry.matches(_scope(method, path))
            with monkeypatch.context() as m:
                m.setattr(Router, "shortcut", False)
                slow, _ = entry.matches(_scope(method, path))
            assert fast == slow, (method, path, entry.original_router.heads())
            turned_away += slow == Match.NONE
    assert turned_away > len(paths)  # most routers turn most paths away


def test_a_router_without_routes_of_its_own_path_is_never_shortcut() -> None:
    outer, inner = Router(), Router(prefix="/v1/x")
    inner.add_api_route("/{a}", lambda a: a, methods=["GET"])
    outer.include_router(inner)
    assert outer.heads() == ("",)
    assert inner.heads() == ("/v1/x/",)


def test_every_v1_route_checks_the_key_and_no_other_does(app: Any) -> None:
    # What a bad key gets on each route is in tests/e2e/test_authorization_matrix.py.
    for _, path, route in _requests(app):
        assert isinstance(route, KeyedRoute) == path.startswith("/v1/"), path


def test_every_router_is_included_without_a_prefix_of_its_own(app: Any) -> None:
    """The shortcut reads a router's routes' paths as the whole paths (api/routing.py): a
    prefix given at inclusion would turn every request to it away."""
    entries: list[Any] = [r for r in _walk(app.router.routes) if hasattr(r, "original_router")]
    assert len(entries) >= 15
    for entry in entries:
        assert entry.include_context.prefix == "", entry.original_router.heads()
