"""Signing through an invitation link: ``/s/{statement_id}/sign/{token}``.

* ``GET`` only shows: the exact finalised text, its hash and the form — or what became of the
  link (used: the receipt and a way to withdraw; expired, replaced, revoked; the statement
  reopened or closed). It changes nothing at all, so a mail scanner that fetches the link
  records nothing, not even an opening.
* ``POST`` endorses, ``POST …/withdraw`` withdraws, ``POST …/opened`` (the page's script, on
  the first keypress or tap) records that the link was opened. Each needs the form token: a
  nonce in a cookie and, in the form, that nonce with an HMAC binding it to the link
  (a signed double-submit token, infra/tokens.py).

A link acts only for its invitation's organisation, on its invitation's statement, and
endorses only the text whose hash the page showed. Endorsing appends the statement's event
through the command bus (actor ``invitation:<id>/<generation>``), then ``invitation.used``;
if a crash comes in between, the next POST (or the expiry sweep) records the use from the
statement's log (infra/invitations.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

import structlog
from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from api.deps import SystemDep
from api.pages.common import (
    HTML,
    SECURITY_HEADERS,
    Loaded,
    load,
    message,
    page,
    parse_uuid,
    rate_limited,
    statement_records,
    statement_status,
    text_view,
)
from api.routing import Router
from api.threads import in_thread
from infra.bootstrap import System
from infra.documents.model import ERASED
from infra.documents.render import format_moment
from infra.invitations import find_link, generation_of, made_through, metadata, record_use, repair
from infra.projections.organisations import organisations
from infra.tokens import SecretKeyMissing, form_token, form_token_valid, new_nonce, secret_key
from services.decider import Context
from services.invitations.commands import OpenInvitation
from services.invitations.model import (
    INVITATION,
    LINK_EXPIRED,
    LINK_LIVE,
    LINK_REPLACED,
    LINK_REVOKED,
    LINK_UNKNOWN,
    Invitation,
    link_state,
)
from services.people import person_id
from services.statements.commands import EndorseStatement, WithdrawEndorsement
from services.statements.errors import (
    AlreadyEndorsed,
    ContentHashMismatch,
    EndorsementsAreClosed,
    NotEndorsed,
    StatementError,
)
from services.statements.model import (
    ACTIVE,
    STATEMENT,
    WITHDRAWN,
    Endorsement,
    active_endorsement_of,
    endorsement_open_at,
)

log = structlog.get_logger("concord.signon")
router = Router(keyed=False)

COOKIE = "concord_form"
FORM = "application/x-www-form-urlencoded"
_NONCE = re.compile(r"[A-Za-z0-9_-]{20,64}")
MAX_NAME = 300


def _html(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "The form could not be read",
        403: "The form token is missing or forged, or the form names another organisation",
        404: "No such link",
        409: "The statement was reopened or changed, or the organisation has endorsed already",
        410: "The link expired, was replaced or revoked, or endorsements are closed",
        415: "The form was not sent as application/x-www-form-urlencoded",
        422: "A field is missing or too long (the form is shown again)",
        429: "Too many attempts from this address or with this link",
        503: "Links cannot be checked: the service has no secret key",
    }
    return {c: {"description": described[c], "content": {HTML: {}}} for c in codes}


FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            FORM: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "csrf": {"type": "string", "description": "The form token of the page"},
                        "content_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "organisation_id": {"type": "string", "format": "uuid"},
                        "signatory_name": {"type": "string", "maxLength": MAX_NAME},
                        "signatory_title": {"type": "string", "maxLength": MAX_NAME},
                        "reason": {"type": "string", "maxLength": 2000},
                    },
                    "required": ["csrf"],
                }
            }
        },
    }
}


class Stop(Exception):
    """Answer with this page now (a dead link, a refused form …)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass(frozen=True)
class Link:
    """A link's token, what it names, and the state of its invitation."""

    token: str
    statement_id: UUID
    generation: int
    invitation: Invitation

    @property
    def invitation_id(self) -> UUID:
        assert self.invitation.invitation_id is not None
        return self.invitation.invitation_id

    @property
    def organisation_id(self) -> UUID:
        assert self.invitation.organisation_id is not None
        return self.invitation.organisation_id

    @property
    def url(self) -> str:
        return f"/s/{self.statement_id}/sign/{self.token}"


NOT_VALID = (
    "This link is not valid",
    "Please check that you opened the whole link from the invitation e-mail. If it still "
    "does not work, ask the organisers for a new invitation.",
)


async def _link(system: System, statement_id: str, token: str) -> Link:
    sid = parse_uuid(statement_id)
    found = await in_thread(find_link, system, token) if sid is not None else None
    if sid is None or found is None:
        raise Stop(message(404, *NOT_VALID))
    invitation_id, generation = found
    invitation, _, _ = await in_thread(system.bus.load, INVITATION, invitation_id)
    if invitation.statement_id != sid:  # a link is bound to its own statement
        raise Stop(message(404, *NOT_VALID))
    return Link(token, sid, generation, invitation)


def _secret(system: System) -> bytes:
    try:
        return secret_key(system.settings)
    except SecretKeyMissing:
        log.error("sign-on pages need CONCORD_SECRET_KEY")
        raise Stop(message(503, "Signing is not available", "Please try again later.")) from None


def _binding(link: Link) -> str:
    return f"{link.invitation_id}:{link.generation}"


def _nonce(request: Request) -> tuple[str, bool]:
    """The form nonce of this browser (from its cookie), and whether it must be set."""
    given = request.cookies.get(COOKIE, "")
    if _NONCE.fullmatch(given):
        return given, False
    return new_nonce(), True


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise Stop(message(415, "The form could not be read", "Please use the form on the page."))
    try:
        raw = (await request.body()).decode("utf-8")
        fields = parse_qs(raw, keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise Stop(
            message(400, "The form could not be read", "Please use the form on the page.")
        ) from None
    return {k: v[0] for k, v in fields.items()}


def _check_form_token(request: Request, system: System, link: Link, form: dict[str, str]) -> None:
    """403 unless the form's token was made for this link and matches this browser's cookie."""
    ok = form_token_valid(
        _secret(system), request.cookies.get(COOKIE), form.get("csrf", ""), _binding(link)
    )
    if not ok:
        raise Stop(
            message(
                403,
                "Please reload the page and try again",
                "The form could not be verified: it was not sent from this page, or your browser "
                "did not keep its cookie. Nothing was changed.",
                links=((link.url, "Reload the page"),),
            )
        )


def _correlation(request: Request) -> str | None:
    found = request.scope.get("state", {}).get("request_id")
    return str(found) if found else None


# -- what a link shows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """Everything :func:`_show` needs besides the link."""

    loaded: Loaded
    organisation: str
    now: datetime


async def _shown(system: System, link: Link) -> Shown:
    loaded = await load(system, link.statement_id)

    def name() -> str | None:
        with system.db.read() as conn:
            found = conn.execute(
                select(organisations.c.name).where(
                    organisations.c.organisation_id == link.organisation_id
                )
            ).scalar_one_or_none()
            return str(found) if found is not None else None

    organisation = await in_thread(name)
    return Shown(loaded, organisation or "your organisation", system.bus.clock.now())


def _local(moment: datetime | None, shown: Shown) -> str:
    return format_moment(moment, shown.loaded.state.timezone or "UTC") if moment else ""


def _show(
    request: Request,
    system: System,
    link: Link,
    shown: Shown,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    done: bool = False,
) -> HTMLResponse:
    """The page for the link as things stand: the form, the receipt, or why neither."""
    invitation, state = link.invitation, shown.loaded.state
    current = link_state(invitation, link.generation, shown.now)
    if current == LINK_UNKNOWN:
        return message(404, *NOT_VALID)
    if current == LINK_REVOKED:
        return message(
            410,
            "This invitation was withdrawn",
            "The organisers revoked this invitation, so its link no longer works. If you think "
            "this is a mistake, please contact them.",
        )
    made = made_through(shown.loaded.records, link.invitation_id)
    if made is not None and generation_of(made, invitation.generation) == link.generation:
        return _after_use(request, system, link, shown, made, done=done)
    if current == LINK_REPLACED or (made is not None):
        return message(
            410,
            "This link was replaced",
            "The organisers sent a newer link to the same address; please use the most recent "
            "invitation e-mail.",
        )
    organiser = (shown.loaded.organiser or "the organisers").strip()
    if current == LINK_EXPIRED:
        return message(
            410,
            "This link has expired",
            f"It could be used until {_local(invitation.expires_at, shown)}. Please ask "
            f"{organiser} to send a new invitation.",
            links=((f"/s/{link.statement_id}", "See the statement and its signatories"),),
        )
    assert current == LINK_LIVE
    if not state.finalised:
        return message(
            409,
            "The statement was reopened for changes",
            "Its text is being revised, so it cannot be endorsed right now. Once it is "
            "finalised again, this link will show the new text.",
        )
    if not endorsement_open_at(state, shown.now):
        return message(
            410,
            "Endorsements are closed",
            statement_status(state, shown.now)["text"] + ".",
            links=((f"/s/{link.statement_id}", "See the statement and its signatories"),),
        )
    existing = active_endorsement_of(state, link.organisation_id)
    if existing is not None:
        signer = existing.signatory_name.value or "someone"
        return message(
            409,
            f"{shown.organisation} has already endorsed this statement",
            f"It was signed for {shown.organisation} by {signer}. There is nothing more to do.",
            links=((f"/s/{link.statement_id}", "See the statement and its signatories"),),
        )
    return _with_form_token(
        request,
        system,
        link,
        "sign.html",
        422 if errors else 200,
        shown,
        errors=errors or {},
        values=values or {},
    )


def _with_form_token(
    request: Request,
    system: System,
    link: Link,
    template: str,
    status_code: int,
    shown: Shown,
    **context: Any,
) -> HTMLResponse:
    nonce, fresh = _nonce(request)
    state = shown.loaded.state
    response = page(
        template,
        status_code,
        language=state.language,
        link=link.url,
        public=f"/s/{link.statement_id}",
        csrf=form_token(_secret(system), nonce, _binding(link)),
        organisation=shown.organisation,
        organisation_id=str(link.organisation_id),
        statement=text_view(shown.loaded),
        status=statement_status(state, shown.now),
        expires=_local(link.invitation.expires_at, shown),
        **context,
    )
    if fresh:
        response.set_cookie(
            COOKIE,
            nonce,
            path="/s/",
            httponly=True,
            samesite="strict",
            secure=system.settings.public_url.startswith("https://"),
        )
    return response


def _endorsement(shown: Shown, made: Any) -> Endorsement | None:
    return next(
        (e for e in shown.loaded.state.endorsement_records if e.version == made.version), None
    )


def _after_use(
    request: Request,
    system: System,
    link: Link,
    shown: Shown,
    made: Any,
    *,
    done: bool,
) -> HTMLResponse:
    """The link endorsed: its receipt (and a way to withdraw), or what became of it since."""
    endorsement = _endorsement(shown, made)
    if endorsement is None:  # pragma: no cover - the record is the endorsement
        return message(404, *NOT_VALID)
    state = shown.loaded.state
    ended = next((r for r in shown.loaded.records if r.version == endorsement.ended_version), None)
    if endorsement.status == WITHDRAWN:
        return page(
            "withdrawn.html",
            language=state.language,
            statement=text_view(shown.loaded),
            organisation=shown.organisation,
            when=_local(ended.recorded_at if ended else None, shown),
            position=ended.position if ended else None,
            done=done,
        )
    if endorsement.status != ACTIVE:  # voided by a reopening
        return message(
            409 if not state.finalised else 410,
            "The endorsement made through this link was voided",
            "The statement was reopened for changes after you endorsed it, which voids every "
            "endorsement of the earlier text. Please ask the organisers for a new invitation "
            "to endorse the text as it now stands.",
        )
    title = endorsement.signatory_title
    receipt = {
        "statement_id": str(link.statement_id),
        "organisation": shown.organisation,
        "signatory": endorsement.signatory_name.value or ERASED,
        "title": title.value if title and endorsement.signatory_name.value else None,
        "content_hash": endorsement.content_hash,
        "event_id": str(made.id),
        "event_hash": getattr(made, "hash", None),
        "version": made.version,
        "position": made.position,
        "recorded": _local(made.recorded_at, shown),
    }
    can_withdraw = not state.closed and state.published is None
    return _with_form_token(
        request,
        system,
        link,
        "receipt.html",
        200,
        shown,
        receipt=receipt,
        done=done,
        can_withdraw=can_withdraw,
    )


# -- routes -------------------------------------------------------------------------------------


@router.get(
    "/s/{statement_id}/sign/{token}",
    response_class=HTMLResponse,
    responses=_html(404, 409, 410, 429, 503),
    summary="An invitation link's page",
)
async def sign_page(statement_id: str, token: str, request: Request, system: SystemDep) -> Response:
    """The finalised text, its hash and the endorsement form — or the receipt of the link's
    endorsement, or why the link cannot endorse. Changes nothing (mail scanners fetch links)."""
    limited = await rate_limited(request, system, token)
    if limited is not None:
        return limited
    try:
        link = await _link(system, statement_id, token)
        return _show(request, system, link, await _shown(system, link))
    except Stop as stop:
        return stop.response


async def _posted(
    request: Request, system: System, statement_id: str, token: str
) -> tuple[Link, dict[str, str]]:
    """A POST to a link: the link, its form, the form token checked, a lost use repaired."""
    link = await _link(system, statement_id, token)
    form = await _form(request)
    _check_form_token(request, system, link, form)
    invitation = await in_thread(
        repair,
        system,
        link.invitation,
        _correlation(request),
        records=partial(statement_records, system),
    )
    return replace(link, invitation=invitation), form


def _clean(value: str) -> str:
    text = unicodedata.normalize("NFC", value).strip()
    return "".join(c for c in text if unicodedata.category(c) != "Cc" or c in "\t")


@router.post(
    "/s/{statement_id}/sign/{token}",
    response_class=HTMLResponse,
    responses=_html(400, 403, 404, 409, 410, 415, 422, 429, 503),
    openapi_extra=FORM_BODY,
    summary="Endorse through an invitation link",
)
async def endorse(statement_id: str, token: str, request: Request, system: SystemDep) -> Response:
    """Endorse the text whose hash the page showed, for the invitation's organisation; answers
    with the receipt. Sent again, it shows the same receipt."""
    limited = await rate_limited(request, system, token)
    if limited is not None:
        return limited
    try:
        link, form = await _posted(request, system, statement_id, token)
        shown = await _shown(system, link)
        named = form.get("organisation_id")
        if named and named != str(link.organisation_id):
            return message(
                403,
                "This link cannot sign for another organisation",
                f"It endorses only on behalf of {shown.organisation}. Nothing was changed.",
            )
        if not _can_sign(link, shown):
            return _show(request, system, link, shown)  # a receipt, or why it cannot sign
        state = shown.loaded.state
        if form.get("content_hash") != state.content_hash:
            return _changed(link)
        name, title = (
            _clean(form.get("signatory_name", "")),
            _clean(form.get("signatory_title", "")),
        )
        errors = {}
        if not name:
            errors["signatory_name"] = "Enter the name of the person who signs."
        elif len(name) > MAX_NAME:
            errors["signatory_name"] = f"The name can be at most {MAX_NAME} characters long."
        if len(title) > MAX_NAME:
            errors["signatory_title"] = f"The title can be at most {MAX_NAME} characters long."
        if errors:
            values = {"signatory_name": name, "signatory_title": title}
            return _show(request, system, link, shown, errors=errors, values=values)
        return await _endorse(request, system, link, shown, name, title or None)
    except Stop as stop:
        return stop.response


def _can_sign(link: Link, shown: Shown) -> bool:
    """Whether the form is what the link shows now."""
    state = shown.loaded.state
    return (
        link_state(link.invitation, link.generation, shown.now) == LINK_LIVE
        and made_through(shown.loaded.records, link.invitation_id) is None
        and state.finalised
        and endorsement_open_at(state, shown.now)
        and active_endorsement_of(state, link.organisation_id) is None
    )


def _catch_up(system: System) -> None:
    """Bring the read side up to date (the organiser's list), as commands through the API do;
    the worker does it anyway, so a failure here changes nothing that happened."""
    try:
        system.projector.catch_up()
    except Exception:
        log.exception("inline projection failed after a sign-on page's change")


def _changed(link: Link) -> HTMLResponse:
    return message(
        409,
        "The statement changed since you opened this page",
        "Its text is not the one you read, so nothing was endorsed. Please read the current "
        "text before you endorse it.",
        links=((link.url, "Show the current text"),),
    )


async def _endorse(
    request: Request, system: System, link: Link, shown: Shown, name: str, title: str | None
) -> Response:
    state = shown.loaded.state
    correlation = _correlation(request)
    facts = metadata(link.invitation_id, link.generation, correlation)

    def run() -> Any:
        # Opened at the latest now (the page's script usually said so already).
        system.bus.handle(
            INVITATION,
            link.invitation_id,
            OpenInvitation(link.invitation_id, link.generation),
            metadata=facts,
        )
        with system.db.read() as conn:
            organisation = conn.execute(
                select(organisations).where(organisations.c.organisation_id == link.organisation_id)
            ).first()
        if organisation is None:
            raise Stop(message(404, *NOT_VALID))
        outcome = system.bus.handle(
            STATEMENT,
            link.statement_id,
            EndorseStatement(
                statement_id=link.statement_id,
                organisation_id=link.organisation_id,
                person_id=person_id(f"{link.organisation_id}/{name}"),
                signatory_name=name,
                signatory_title=title,
                organisation_name=organisation.name,
                organisation_country=organisation.country,
                organisation_kind=organisation.kind,
                content_hash=state.content_hash,
            ),
            metadata=facts,
            context=Context(
                now=system.bus.clock.now(),
                actor=facts.actor,
                organisation_id=link.organisation_id,
            ),
        )
        record_use(system, link.invitation, outcome.recorded[-1], correlation)
        _catch_up(system)

    try:
        await in_thread(run)
    except ContentHashMismatch:
        return _changed(link)
    except (AlreadyEndorsed, StatementError) as refused:
        # Someone got there first (this link in another tab, or the organisation by other
        # means), or the statement moved on: show the link as things now stand.
        log.info("endorsement by link refused", reason=refused.code)
    fresh, _, _ = await in_thread(system.bus.load, INVITATION, link.invitation_id)
    link = replace(link, invitation=fresh)
    return _show(request, system, link, await _shown(system, link), done=True)


@router.post(
    "/s/{statement_id}/sign/{token}/withdraw",
    response_class=HTMLResponse,
    responses=_html(400, 403, 404, 409, 410, 415, 429, 503),
    openapi_extra=FORM_BODY,
    summary="Withdraw the endorsement an invitation link made",
)
async def withdraw(statement_id: str, token: str, request: Request, system: SystemDep) -> Response:
    """Withdraw the endorsement this link made (until endorsements close); it stays in the
    statement's history."""
    limited = await rate_limited(request, system, token)
    if limited is not None:
        return limited
    try:
        link, form = await _posted(request, system, statement_id, token)
        shown = await _shown(system, link)
        made = made_through(shown.loaded.records, link.invitation_id)
        endorsement = _endorsement(shown, made) if made is not None else None
        if (
            made is None
            or generation_of(made, link.invitation.generation) != link.generation
            or endorsement is None
            or not endorsement.active
            or link_state(link.invitation, link.generation, shown.now) == LINK_REVOKED
        ):
            return _show(request, system, link, shown)
        reason = _clean(form.get("reason", ""))[:2000] or None
        facts = metadata(link.invitation_id, link.generation, _correlation(request))

        def run() -> None:
            system.bus.handle(
                STATEMENT,
                link.statement_id,
                WithdrawEndorsement(link.statement_id, link.organisation_id, reason),
                metadata=facts,
                context=Context(
                    now=system.bus.clock.now(),
                    actor=facts.actor,
                    organisation_id=link.organisation_id,
                ),
            )
            _catch_up(system)

        try:
            await in_thread(run)
        except EndorsementsAreClosed:
            return message(
                410,
                "Endorsements are closed",
                "The list of signatories is final, so the endorsement can no longer be "
                "withdrawn. Please contact the organisers.",
            )
        except NotEndorsed:
            pass  # withdrawn meanwhile (another tab): the page says so
        return _show(request, system, link, await _shown(system, link), done=True)
    except Stop as stop:
        return stop.response


@router.post(
    "/s/{statement_id}/sign/{token}/opened",
    status_code=204,
    response_class=Response,
    responses=_html(400, 403, 404, 415, 429, 503),
    openapi_extra=FORM_BODY,
    summary="Record that an invitation link was opened",
)
async def opened(statement_id: str, token: str, request: Request, system: SystemDep) -> Response:
    """Sent by the page's script on the first keypress or tap (never by merely fetching the
    page): records ``invitation.opened`` once per link."""
    limited = await rate_limited(request, system, token)
    if limited is not None:
        return limited
    try:
        link, _ = await _posted(request, system, statement_id, token)
    except Stop as stop:
        return stop.response
    now = system.bus.clock.now()
    if link_state(link.invitation, link.generation, now) == LINK_LIVE:
        facts = metadata(link.invitation_id, link.generation, _correlation(request))

        def run() -> None:
            outcome = system.bus.handle(
                INVITATION,
                link.invitation_id,
                OpenInvitation(link.invitation_id, link.generation),
                metadata=facts,
            )
            if outcome.changed:
                _catch_up(system)

        await in_thread(run)
    return Response(status_code=204, headers=dict(SECURITY_HEADERS))
