"""docker-compose.yml and the Dockerfile stay true to the code (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from typer.main import get_command

from infra.cli import app
from infra.projections import all_projections
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_shape() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "scheduler"} <= services.keys()
    for role in ("api", "worker", "scheduler"):
        assert (
            services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "noeviction" in services["redis"]["command"]


def test_every_compose_command_is_a_real_cli_command() -> None:
    commands = get_command(app).commands  # type: ignore[attr-defined]
    for name in ("api", "worker", "scheduler", "migrate"):
        command = compose()["services"][name]["command"]
        assert command[0] == "concord"
        assert command[1] in commands, f"{name}: concord {command[1]} does not exist"


#: Read by uvicorn itself (``concord serve`` turns on ``proxy_headers``), not by Settings.
UVICORN_ENV = {"FORWARDED_ALLOW_IPS"}


def test_compose_environment_uses_settings_the_code_reads() -> None:
    known = {f.alias for f in Settings.model_fields.values() if f.alias}
    env = compose()["services"]["api"]["environment"]
    assert set(env) <= known | UVICORN_ENV
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["REDIS_URL"].startswith("redis://")


def test_the_dockerfile_copies_paths_that_exist() -> None:
    dockerfile = (ROOT / "infra/docker/Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert compose()["x-app"]["build"]["dockerfile"] == "infra/docker/Dockerfile"


def test_compose_runs_replicas_that_cannot_clash() -> None:
    """Two APIs and two workers by default, one scheduler; no replica is pinned to a name or
    a host port, and the one published port is a proxy in front of every API replica."""
    services = compose()["services"]
    assert services["api"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["scheduler"]["deploy"]["replicas"] == 1
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a fixed name allows one replica"
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}, f"only the proxy publishes a host port, not {published}"
    api_port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert services["api"]["expose"] == [api_port]
    proxy = services["proxy"]
    assert proxy["command"][proxy["command"].index("--to") + 1] == f"api:{api_port}"
    container_port = proxy["command"][proxy["command"].index("--from") + 1].rsplit(":", 1)[1]
    assert [p.rsplit(":", 1)[1] for p in proxy["ports"]] == [container_port]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"


def test_the_readme_backup_leaves_out_the_rows_of_every_read_model() -> None:
    """README's backup recipe names the read models' tables: all of them, and only them."""
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r'^PROJECTIONS="([^"]+)"$', readme, flags=re.M)
    assert listed is not None, "README's backup recipe lost its PROJECTIONS line"
    store: Any = None  # the projections' tables do not depend on a store
    tables = {t.name for p in all_projections(store) for t in p.tables}
    assert set(listed.group(1).split()) == tables
