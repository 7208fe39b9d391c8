"""docker-compose.yml and the Dockerfile stay true to the code (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.main import get_command

from infra.cli import app
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


def test_compose_environment_uses_settings_the_code_reads() -> None:
    known = {f.alias for f in Settings.model_fields.values() if f.alias}
    env = compose()["services"]["api"]["environment"]
    assert set(env) <= known
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["REDIS_URL"].startswith("redis://")


def test_the_dockerfile_copies_paths_that_exist() -> None:
    dockerfile = (ROOT / "infra/docker/Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert compose()["x-app"]["build"]["dockerfile"] == "infra/docker/Dockerfile"
