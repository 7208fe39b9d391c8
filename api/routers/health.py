"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SystemDep
from api.routing import Router
from api.threads import in_thread
from infra.bootstrap import System

router = Router(tags=["operations"], keyed=False)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "A dependency is unreachable"}})
async def ready(system: SystemDep) -> JSONResponse:
    """Readiness: the database and the broker are reachable."""
    checks = await in_thread(_checks, system)
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


def _checks(system: System) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        with system.db.read() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "backend": system.db.dialect}
    except Exception as exc:
        checks["database"] = {
            "ok": False,
            "backend": system.db.dialect,
            "error": type(exc).__name__,
        }
    redis_url = system.settings.redis_url
    if redis_url:
        try:
            import redis

            client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
            client.ping()
            client.close()
            checks["broker"] = {"ok": True, "backend": "redis"}
        except Exception as exc:
            checks["broker"] = {"ok": False, "backend": "redis", "error": type(exc).__name__}
    else:
        # Embedded mode: the broker lives in the embedded database checked above.
        checks["broker"] = {"ok": checks["database"]["ok"], "backend": "embedded"}
    return checks
