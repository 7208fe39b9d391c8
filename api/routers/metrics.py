"""Prometheus metrics for the scraper: ``GET /metrics``."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request, Response

from api.deps import SystemDep, current_principal, require
from api.routing import Router
from api.threads import in_thread
from infra.bootstrap import System
from infra.metrics import CONTENT_TYPE, render

router = Router(tags=["operations"], keyed=False)


async def metrics_reader(request: Request, system: SystemDep) -> None:
    """Anyone when ``CONCORD_METRICS_PUBLIC`` is set; else the ``CONCORD_METRICS_TOKEN`` bearer
    token or an admin key (401 without a valid key, 403 for other roles)."""
    # Read from the request, not declared as a parameter: nothing here can be a 422.
    authorization = request.headers.get("authorization")
    settings = system.settings
    if settings.metrics_public:
        return
    # An empty token (``CONCORD_METRICS_TOKEN=``) is no token: it would match an empty bearer.
    wanted = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else b""
    if wanted and authorization is not None:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(secret.strip().encode(), wanted):
            return
    principal = await current_principal(request)
    await require("admin")(principal)


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(metrics_reader)],
    responses={
        200: {"description": "Prometheus text exposition format 0.0.4"},
        401: {"description": "Missing or invalid API key or metrics token"},
        403: {"description": "This key's role may not"},
    },
    openapi_extra={"security": [{"apiKey": []}, {}]},
)
async def metrics(system: SystemDep) -> Response:
    """Prometheus metrics: commands, events, projection lag, queue depth, mail delivery."""
    body = await in_thread(_render, system)
    return Response(body, media_type=CONTENT_TYPE)


def _render(system: System) -> bytes:
    projections = [*system.projector.projections, *system.dispatcher.projections]
    return render(system.db, system.settings, projections)
