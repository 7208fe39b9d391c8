"""The HTTP API as a client sees it, on each back end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from infra.bootstrap import System


@pytest.fixture
def client(system: System) -> Iterator[TestClient]:
    app = create_app(system, background=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
