"""The HTTP API as a client sees it, on each back end."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from infra.bootstrap import System


@pytest.fixture
def client(system: System) -> Iterator[TestClient]:
    # Each test serves a handful of requests: preparing every route up front (about a second
    # of CPU, test_startup.py proves it happens for a server) would dominate the suite.
    app = create_app(system, background=False, prepare=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@dataclass
class Keys:
    """One key per role, as ``Authorization`` headers."""

    system: System

    def make(self, role: str, organisation_id: UUID | str | None = None) -> dict[str, str]:
        org = UUID(str(organisation_id)) if organisation_id is not None else None
        _, secret = self.system.keys.create(role, f"test {role}", org)
        return {"Authorization": f"Bearer {secret}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.make("admin")

    @property
    def organiser(self) -> dict[str, str]:
        return self.make("organiser")

    @property
    def integrator(self) -> dict[str, str]:
        return self.make("integrator")


@pytest.fixture
def keys(system: System) -> Keys:
    return Keys(system)


@pytest.fixture
def admin(keys: Keys) -> dict[str, str]:
    return keys.admin
