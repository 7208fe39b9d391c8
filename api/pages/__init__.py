"""Public HTML pages, rendered on the server: a statement's public page with its live list of
signatories, and the sign-on pages behind invitation links.

No JavaScript framework and nothing that needs JavaScript: every page works with it off; a
small static script (``static/concord.js``) adds the live list and records that a link was
opened. Every page is sent with a strict Content Security Policy (no inline script or style),
``Referrer-Policy: no-referrer`` (a link's token must not leak to another site) and
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.pages import signon, statement
from api.pages.common import mount_static
from api.routing import Router

router = Router(tags=["public pages"], keyed=False)
router.include_router(statement.router)
router.include_router(signon.router)


def install(app: FastAPI) -> None:
    """Serve the pages and their static files."""
    app.include_router(router)
    mount_static(app)
