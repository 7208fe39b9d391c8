"""The public pages over HTTP, on each back end: what a link shows in every state, that a plain
GET changes nothing, the form token, the organisation a link is bound to, the receipt, the
withdrawal, a crash between the two appends repaired, rate limits, and the live list."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from api.main import create_app
from infra.bootstrap import System
from infra.invitations import expire_due, metadata
from infra.tokens import link_token, secret_key
from services.people import person_id
from services.statements.commands import EndorseStatement
from services.statements.model import STATEMENT
from tests.e2e.conftest import Keys
from tests.e2e.test_event_stream_api import serving
from tests.e2e.test_invitations_api import finalised_statement, invite

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Later:
    """A clock ``by`` ahead of the wall clock (the pages and the bus read the same clock)."""

    def __init__(self, by: timedelta) -> None:
        self.by = by

    def now(self) -> datetime:
        return datetime.now(UTC) + self.by


@dataclasses.dataclass
class Invited:
    client: TestClient
    system: System
    organiser: dict[str, str]
    world: dict[str, Any]
    invitation: dict[str, Any]
    token: str

    @property
    def sid(self) -> str:
        return str(self.world["sid"])

    @property
    def iid(self) -> UUID:
        return UUID(self.invitation["id"])

    @property
    def url(self) -> str:
        return f"/s/{self.sid}/sign/{self.token}"

    def events(self, stream: UUID | str) -> list[str]:
        return [e.type for e in self.system.store.read_stream(UUID(str(stream)))]

    def form(self, page: httpx.Response) -> str:
        found = CSRF.search(page.text)
        assert found, page.text[:500]
        return found.group(1)

    def sign(self, **fields: str) -> httpx.Response:
        page = self.client.get(self.url)
        body = {
            "csrf": self.form(page),
            "content_hash": self.world["content_hash"],
            "signatory_name": "Thet Thet Aung",
            "signatory_title": "ညွှန်ကြားရေးမှူး",
            **fields,
        }
        return self.client.post(self.url, data=body)


def token_of(system: System, invitation: dict[str, Any], generation: int = 1) -> str:
    return link_token(secret_key(system.settings), UUID(invitation["id"]), generation)


@pytest.fixture
def invited(client: TestClient, system: System, keys: Keys) -> Invited:
    organiser = keys.organiser
    world = finalised_statement(client, organiser)
    invitation = invite(client, organiser, world)
    return Invited(client, system, organiser, world, invitation, token_of(system, invitation))


def assert_page(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text[:800]
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    for word in words:
        assert word in response.text, (word, response.text[:800])


# -- GET shows, and changes nothing --------------------------------------------------------------


def test_a_plain_get_shows_the_exact_text_and_changes_nothing(invited: Invited) -> None:
    head = invited.system.store.head_position()
    pages = [invited.client.get(invited.url) for _ in range(3)]  # scanner, preview, person
    for page in pages:
        assert_page(page, 200, "Endorse on behalf of")
    assert invited.system.store.head_position() == head, "a GET appends nothing"
    assert invited.events(invited.iid) == ["invitation.issued"], "not even 'opened'"
    text = page.text
    assert invited.world["content_hash"] in text
    assert "Extend social protection to all migrant workers." in text
    assert "Guarantee access to legal aid and interpreters." in text
    assert "ရန်ကုန် Migrant Workers Association" in text
    assert 'name="content_hash" value="' + invited.world["content_hash"] + '"' in text
    assert page.headers["cache-control"] == "no-store"
    cookie = pages[0].headers["set-cookie"]  # the form's nonce (kept, not set again)
    assert "set-cookie" not in page.headers
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/s/" in cookie
    assert '<html lang="en">' in text
    assert 'name="viewport"' in text
    assert invited.token not in invited.client.get(f"/s/{invited.sid}").text


def test_the_page_is_in_the_statements_language_with_the_interface_marked_english(
    client: TestClient, system: System, keys: Keys
) -> None:
    organiser = keys.organiser
    world = finalised_statement(client, organiser, language="vi")
    invitation = invite(client, organiser, world)
    page = client.get(f"/s/{world['sid']}/sign/{token_of(system, invitation)}")
    assert_page(page, 200, '<html lang="vi">', '<div class="invite" lang="en">')
    assert '<h2 lang="en">Recommendations</h2>' in page.text


# -- endorsing ---------------------------------------------------------------------------------


def test_endorsing_gives_a_receipt_and_records_the_use(invited: Invited) -> None:
    response = invited.sign()
    assert_page(response, 200, "Thank you", "Endorsement receipt", "Thet Thet Aung")
    records = invited.system.store.read_stream(UUID(invited.sid))
    endorsed = next(r for r in records if r.type == "statement.endorsed")
    assert endorsed.data["organisation_id"] == invited.world["yangon"]
    assert endorsed.data["content_hash"] == invited.world["content_hash"]
    assert endorsed.metadata["actor"] == f"invitation:{invited.iid}/1"
    assert endorsed.metadata["causation_id"] == str(invited.iid)
    assert f'<dd id="receipt-position">{endorsed.position}</dd>' in response.text
    assert invited.world["content_hash"] in response.text
    assert invited.sid in response.text
    assert invited.events(invited.iid) == [
        "invitation.issued",
        "invitation.opened",
        "invitation.used",
    ]
    used = invited.system.store.read_stream(invited.iid)[-1]
    assert used.data["endorsement_version"] == endorsed.version
    # The organiser's list shows it used, with the endorsement's position.
    listed = invited.client.get(
        f"/v1/statements/{invited.sid}/invitations", headers=invited.organiser
    ).json()["data"]
    assert (listed[0]["status"], listed[0]["endorsement_position"]) == ("used", endorsed.position)
    # The link now shows the receipt; sending the form again endorses nothing more.
    head = invited.system.store.head_position()
    again = invited.client.get(invited.url)
    assert_page(again, 200, "has endorsed this statement", "Withdraw the endorsement")
    resent = invited.client.post(
        invited.url,
        data={
            "csrf": invited.form(again),
            "content_hash": invited.world["content_hash"],
            "signatory_name": "Someone else",
        },
    )
    assert_page(resent, 200, "Thet Thet Aung")
    assert invited.system.store.head_position() == head


def test_a_forged_or_missing_form_token_is_refused_and_changes_nothing(invited: Invited) -> None:
    page = invited.client.get(invited.url)
    good = invited.form(page)
    nonce, mac = good.split(".")
    head = invited.system.store.head_position()
    body = {"content_hash": invited.world["content_hash"], "signatory_name": "Mallory"}
    for csrf in ("", "forged", f"{nonce}.{mac[:-2]}AA", f"{nonce[:-2]}AA.{mac}"):
        refused = invited.client.post(invited.url, data={**body, "csrf": csrf})
        assert_page(refused, 403, "Nothing was changed")
    assert invited.system.store.head_position() == head
    # The right token without this browser's cookie (a cross-site form post) is refused too.
    kept = dict(invited.client.cookies)
    invited.client.cookies.clear()
    assert invited.client.post(invited.url, data={**body, "csrf": good}).status_code == 403
    invited.client.cookies.update(kept)
    # A token made for another link does not pass either.
    other = invite(invited.client, invited.organiser, invited.world, email="b@example.org")
    other_url = f"/s/{invited.sid}/sign/{token_of(invited.system, other)}"
    other_csrf = invited.form(invited.client.get(other_url))
    head = invited.system.store.head_position()
    assert invited.client.post(invited.url, data={**body, "csrf": other_csrf}).status_code == 403
    assert invited.system.store.head_position() == head


def test_a_link_endorses_only_for_its_own_organisation(invited: Invited) -> None:
    refused = invited.sign(organisation_id=invited.world["hrwg"])
    assert_page(refused, 403, "cannot sign for another organisation")
    assert "statement.endorsed" not in invited.events(invited.sid)
    # And only on its own statement: the same token under another statement is not a link.
    second = finalised_statement(invited.client, invited.organiser)
    assert_page(invited.client.get(f"/s/{second['sid']}/sign/{invited.token}"), 404)


def test_a_blank_name_shows_the_form_again_with_the_error(invited: Invited) -> None:
    response = invited.sign(signatory_name="   ", signatory_title="Coordinator")
    assert_page(
        response, 422, "Please check the form", 'aria-invalid="true"', 'value="Coordinator"'
    )
    assert 'href="#signatory_name"' in response.text
    assert "statement.endorsed" not in invited.events(invited.sid)


def test_a_statement_changed_since_the_page_was_read_is_not_endorsed(invited: Invited) -> None:
    page = invited.client.get(invited.url)
    url = f"/v1/statements/{invited.sid}"
    organiser = invited.organiser
    assert (
        invited.client.post(
            f"{url}/reopen", json={"reason": "A late amendment"}, headers=organiser
        ).status_code
        == 200
    )
    assert_page(invited.client.get(invited.url), 409, "reopened for changes")
    assert_page(invited.client.get(f"/s/{invited.sid}"), 404, "reopened for changes")
    body = invited.client.get(url, headers=organiser).json()
    rid = body["sections"][0]["recommendations"][0]["id"]
    revised = invited.client.patch(
        f"{url}/recommendations/{rid}",
        json={"text": "Extend social protection to all migrant workers and their families."},
        headers=organiser,
    )
    assert revised.status_code == 200
    deadline = (datetime.now(UTC) + timedelta(days=5)).isoformat()
    refinalised = invited.client.post(
        f"{url}/finalise", json={"endorsement_deadline": deadline}, headers=organiser
    )
    assert refinalised.status_code == 200
    stale = invited.client.post(
        invited.url,
        data={
            "csrf": invited.form(page),
            "content_hash": invited.world["content_hash"],
            "signatory_name": "Thet Thet Aung",
        },
    )
    assert_page(stale, 409, "The statement changed since you opened this page")
    assert "statement.endorsed" not in invited.events(invited.sid)
    # The link shows the new text, which can be endorsed.
    fresh = invited.client.get(invited.url)
    assert_page(fresh, 200, "and their families", refinalised.json()["content_hash"])


def test_an_organisation_that_endorsed_already_gets_no_form(invited: Invited, keys: Keys) -> None:
    yangon = invited.world["yangon"]
    endorsed = invited.client.post(
        f"/v1/statements/{invited.sid}/endorsements",
        json={"organisation_id": yangon, "signatory_name": "Ko Min Htike"},
        headers=keys.make("organisation", yangon),
    )
    assert endorsed.status_code == 201
    assert_page(invited.client.get(invited.url), 409, "has already endorsed", "Ko Min Htike")


# -- dead links --------------------------------------------------------------------------------


def test_unknown_expired_replaced_and_revoked_links_get_clear_pages(invited: Invited) -> None:
    client, sid = invited.client, invited.sid
    assert_page(client.get(f"/s/{sid}/sign/{'A' * 43}"), 404, "This link is not valid")
    assert_page(client.get(f"/s/not-a-uuid/sign/{invited.token}"), 404)
    assert_page(client.get(f"/s/{sid}/sign/x"), 404)
    # Past its time: expired at once, before the sweep records it (and the form is refused).
    page = client.get(invited.url)
    invited.system.bus.clock = Later(timedelta(days=15))
    assert_page(client.get(invited.url), 410, "This link has expired")
    late = client.post(
        invited.url,
        data={"csrf": invited.form(page), "content_hash": invited.world["content_hash"],
              "signatory_name": "Too late"},
    )  # fmt: skip
    assert_page(late, 410, "This link has expired")
    assert expire_due(invited.system, invited.system.bus.clock.now()) == 1
    assert_page(client.get(invited.url), 410, "This link has expired")
    # Resent: the old link is replaced, the new one works.
    resend = f"/v1/statements/{sid}/invitations/{invited.invitation['id']}/resend"
    invited.system.bus.clock = Later(timedelta(0))
    assert client.post(resend, headers=invited.organiser).status_code == 200
    assert_page(client.get(invited.url), 410, "This link was replaced")
    new_url = f"/s/{sid}/sign/{token_of(invited.system, invited.invitation, 2)}"
    assert_page(client.get(new_url), 200, "Endorse on behalf of")
    # Revoked: every link of the invitation is dead.
    revoke = f"/v1/statements/{sid}/invitations/{invited.invitation['id']}/revoke"
    assert client.post(revoke, headers=invited.organiser).status_code == 200
    assert_page(client.get(new_url), 410, "This invitation was withdrawn")
    assert "statement.endorsed" not in invited.events(sid)


def test_closed_endorsements_close_the_link(invited: Invited) -> None:
    closed = invited.client.post(
        f"/v1/statements/{invited.sid}/close-endorsements", headers=invited.organiser
    )
    assert closed.status_code == 200
    assert_page(invited.client.get(invited.url), 410, "Endorsements are closed")


# -- withdrawing -------------------------------------------------------------------------------


def test_the_same_link_withdraws_and_cannot_endorse_again(invited: Invited) -> None:
    receipt = invited.sign()
    withdrawn = invited.client.post(
        f"{invited.url}/withdraw",
        data={"csrf": invited.form(receipt), "reason": "Our board has not agreed yet"},
    )
    assert_page(withdrawn, 200, "is withdrawn")
    record = invited.system.store.read_stream(UUID(invited.sid))[-1]
    assert record.type == "statement.endorsement_withdrawn"
    assert record.data["reason"] == "Our board has not agreed yet"
    assert record.metadata["actor"] == f"invitation:{invited.iid}/1"
    assert f"position {record.position} in the log" in withdrawn.text
    head = invited.system.store.head_position()
    assert_page(invited.client.get(invited.url), 200, "has withdrawn its endorsement")
    again = invited.client.post(
        invited.url,
        data={
            "csrf": invited.form(receipt),
            "content_hash": invited.world["content_hash"],
            "signatory_name": "Thet Thet Aung",
        },
    )
    assert_page(again, 200, "has withdrawn its endorsement")
    assert invited.system.store.head_position() == head, "single-use: no second endorsement"
    public = invited.client.get(f"/s/{invited.sid}")
    assert "Thet Thet Aung" not in public.text
    assert "Not signed by any organisation" in public.text


def test_a_withdrawal_needs_the_form_token_and_a_used_link(invited: Invited) -> None:
    page = invited.client.get(invited.url)
    nothing = invited.client.post(f"{invited.url}/withdraw", data={"csrf": invited.form(page)})
    assert_page(nothing, 200, "Endorse on behalf of"), "nothing to withdraw: the form again"
    receipt = invited.sign()
    forged = invited.client.post(f"{invited.url}/withdraw", data={"csrf": "forged"})
    assert_page(forged, 403)
    assert invited.events(invited.sid)[-1] == "statement.endorsed"
    assert "Withdraw the endorsement" in receipt.text


# -- opened, and a crash between the two appends --------------------------------------------------


def test_opened_is_recorded_from_a_post_only_once(invited: Invited) -> None:
    page = invited.client.get(invited.url)
    csrf = invited.form(page)
    assert invited.client.post(f"{invited.url}/opened", data={"csrf": "nope"}).status_code == 403
    for _ in range(2):
        beacon = invited.client.post(f"{invited.url}/opened", data={"csrf": csrf})
        assert beacon.status_code == 204
    assert invited.events(invited.iid) == ["invitation.issued", "invitation.opened"]
    listed = invited.client.get(
        f"/v1/statements/{invited.sid}/invitations", headers=invited.organiser
    ).json()["data"]
    assert listed[0]["status"] == "opened"


def endorse_through_the_link_without_recording_the_use(invited: Invited) -> None:
    """The statement's append of a link's endorsement, as if the process died before the
    invitation's use was recorded."""
    invited.system.bus.handle(
        STATEMENT,
        UUID(invited.sid),
        EndorseStatement(
            statement_id=UUID(invited.sid),
            organisation_id=UUID(invited.world["yangon"]),
            person_id=person_id("crash"),
            signatory_name="Thet Thet Aung",
            organisation_name="ရန်ကုန် Migrant Workers Association",
            organisation_country="MM",
            organisation_kind="ngo",
        ),
        metadata=metadata(invited.iid, 1),
    )


def test_a_crash_between_endorsing_and_recording_the_use_is_repaired(invited: Invited) -> None:
    system = invited.system
    # The statement's append happened (through the link) but the process died before the use.
    endorse_through_the_link_without_recording_the_use(invited)
    assert invited.events(invited.iid) == ["invitation.issued"]
    head = system.store.head_position()
    page = invited.client.get(invited.url)
    assert_page(page, 200, "has endorsed this statement")  # the statement's log says so
    assert system.store.head_position() == head, "a GET still records nothing"
    beacon = invited.client.post(f"{invited.url}/opened", data={"csrf": invited.form(page)})
    assert beacon.status_code == 204
    assert invited.events(invited.iid) == ["invitation.issued", "invitation.used"]


def test_the_expiry_sweep_repairs_a_lost_use_instead_of_expiring(invited: Invited) -> None:
    system = invited.system
    endorse_through_the_link_without_recording_the_use(invited)
    assert expire_due(system, datetime.now(UTC) + timedelta(days=15)) == 0
    assert invited.events(invited.iid) == ["invitation.issued", "invitation.used"]


# -- rate limits -------------------------------------------------------------------------------


@pytest.mark.usefixtures("whole_minute_ahead")
def test_a_link_is_rate_limited(invited: Invited) -> None:
    tuned = dataclasses.replace(
        invited.system,
        settings=invited.system.settings.model_copy(
            update={"signon_rate_per_link": "3/minute", "signon_rate_per_client": "100/minute"}
        ),
    )
    with TestClient(create_app(tuned), raise_server_exceptions=False) as client:
        statuses = [client.get(invited.url).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = client.get(invited.url)
        assert_page(refused, 429, "Too many attempts")
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-policy"].startswith('"signon-link"')
        # Another link from the same address still works.
        other = invite(client, invited.organiser, invited.world, email="c@example.org")
        assert client.get(f"/s/{invited.sid}/sign/{token_of(tuned, other)}").status_code == 200


# -- the public page and its live list ------------------------------------------------------------


def test_the_public_page_lists_signatories_by_country_and_nothing_personal_besides(
    invited: Invited, keys: Keys
) -> None:
    invited.sign()
    hrwg = invited.world["hrwg"]
    invited.client.post(
        f"/v1/statements/{invited.sid}/endorsements",
        json={
            "organisation_id": hrwg,
            "signatory_name": "Hà Thị Minh Đức",
            "signatory_title": "Giám đốc",
        },
        headers=keys.make("organisation", hrwg),
    )
    page = invited.client.get(f"/s/{invited.sid}")
    assert_page(
        page,
        200,
        "Signed by 2 organisations from 2 countries",
        'Indonesia <span class="count">(1)</span>',
        'Myanmar <span class="count">(1)</span>',
        "Hà Thị Minh Đức, Giám đốc",
        "Thet Thet Aung, ညွှန်ကြားရေးမှူး",
        invited.world["content_hash"],
        'data-live="/s/',
    )
    assert page.headers["cache-control"] == "no-cache"
    assert "@" not in page.text, "no e-mail address of anyone"
    assert invited.token not in page.text
    assert page.text.index("Indonesia") < page.text.index("Myanmar")


def test_drafts_and_unknown_statements_have_no_public_page(client: TestClient, keys: Keys) -> None:
    draft = finalised_statement(client, keys.organiser, finalise=False)
    assert_page(client.get(f"/s/{draft['sid']}"), 404, "This statement is not public")
    assert_page(client.get("/s/00000000-0000-0000-0000-000000000000"), 404)
    assert_page(client.get("/s/nothing"), 404)
    live = client.get(f"/s/{draft['sid']}/live")
    assert live.status_code == 404
    assert live.headers["content-type"] == "application/problem+json"


def test_the_live_list_sends_the_new_list_within_seconds(system: System, keys: Keys) -> None:
    with (
        serving(system, sse_heartbeat_s=0.5, public_sse_max_per_client=2) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        organiser = keys.organiser
        world = finalised_statement(client, organiser)
        invitation = invite(client, organiser, world)
        link = Invited(client, system, organiser, world, invitation, token_of(system, invitation))  # type: ignore[arg-type]
        position = system.store.head_position()
        with connect_sse(
            client, "GET", f"/s/{world['sid']}/live", params={"after": position}
        ) as source:
            assert source.response.status_code == 200
            assert "set-cookie" not in source.response.headers
            events = source.iter_sse()
            # Two streams per address here: a third is refused while these two are open.
            with connect_sse(client, "GET", f"/s/{world['sid']}/live") as second:
                assert second.response.status_code == 200
                third = client.get(f"/s/{world['sid']}/live")
                assert third.status_code == 429
                assert third.headers["retry-after"]
            started = time.monotonic()
            link.sign()
            event = next(e for e in events if e.event == "signatories")
            assert time.monotonic() - started < 5
            body = json.loads(event.data)
            assert int(event.id) > position
            assert body["signatories"]["count"] == 1
            (group,) = body["signatories"]["groups"]
            assert (group["code"], group["name"]) == ("MM", "Myanmar")
            assert group["signatories"] == [
                {
                    "organisation": "ရန်ကုန် Migrant Workers Association",
                    "name": "Thet Thet Aung",
                    "title": "ညွှန်ကြားရေးမှူး",
                }
            ]
            assert "@" not in event.data and "organisation_id" not in event.data
            assert link.token not in event.data


def test_followers_of_a_live_list_share_each_list_and_an_erasure_remakes_it(
    system: System, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Visitors follow one statement's live list: each change is read once for all of them
    (not once each), and only what changed since the last list is read. Once a signatory is
    erased, a visitor resuming from the same place gets the list folded again from the
    start, without the name."""
    reads: list[tuple[int, int]] = []
    real = system.store.read_stream

    def counted(stream_id: UUID, **kwargs: Any) -> list[Any]:
        found = real(stream_id, **kwargs)
        if kwargs.get("until_position") is not None:  # the live lists' reads
            reads.append((kwargs.get("after_version", 0), len(found)))
        return found

    monkeypatch.setattr(system.store, "read_stream", counted)
    with (
        serving(system, public_sse_max_per_client=5) as url,
        httpx.Client(base_url=url, timeout=10) as client,
        contextlib.ExitStack() as stack,
    ):
        organiser = keys.organiser
        world = finalised_statement(client, organiser)
        invitation = invite(client, organiser, world)
        link = Invited(client, system, organiser, world, invitation, token_of(system, invitation))  # type: ignore[arg-type]
        live, after = f"/s/{world['sid']}/live", {"after": system.store.head_position()}
        followers = [
            stack.enter_context(connect_sse(client, "GET", live, params=after)).iter_sse()
            for _ in range(3)
        ]
        link.sign()
        seen = [next(e for e in f if e.event == "signatories") for f in followers]
        assert len({(e.id, e.data) for e in seen}) == 1, "the same list for everyone"
        assert "Thet Thet Aung" in seen[0].data
        ((_, first),) = reads
        assert first > 1, "the first list: the statement read from its start, once"
        # A second signatory: only what changed since is read.
        other = invite(client, organiser, world, organisation_id=world["hrwg"], email="a@hrwg.id")
        Invited(client, system, organiser, world, other, token_of(system, other)).sign(  # type: ignore[arg-type]
            signatory_name="Nguyễn Văn An"
        )
        seen = [next(e for e in f if e.event == "signatories") for f in followers]
        assert len({(e.id, e.data) for e in seen}) == 1
        assert json.loads(seen[0].data)["signatories"]["count"] == 2
        assert len(reads) == 2 and reads[1] == (reads[0][1], 1), "one more event read"
        organisation = invitation["organisation_id"]
        assert system.store.forget(person_id(f"{organisation}/Thet Thet Aung"))
        with connect_sse(client, "GET", live, params=after) as again:
            events = again.iter_sse()
            remade = [next(e for e in events if e.event == "signatories") for _ in range(2)]
        assert all("Thet Thet Aung" not in e.data for e in remade), "folded again after erasure"
        assert "Nguyễn Văn An" in remade[-1].data
        assert reads[2][0] == 0, "from the start"


def test_the_public_page_is_rendered_once_per_change_and_never_shows_an_erased_name(
    invited: Invited, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Visitors of one statement's page share one rendering per change: repeated visits read
    nothing of the statement, a change is read as the events it added (a signing shows at
    once), and an erasure has the statement read from the start again, the name gone."""
    system, sid = invited.system, UUID(invited.sid)
    reads: list[tuple[int, int]] = []  # (after_version, events read) of each read of it
    real = system.store.read_stream

    def counted(stream_id: UUID, **kwargs: Any) -> list[Any]:
        found = real(stream_id, **kwargs)
        if stream_id == sid:
            reads.append((kwargs.get("after_version", 0), len(found)))
        return found

    monkeypatch.setattr(system.store, "read_stream", counted)
    url = f"/s/{invited.sid}"
    first = invited.client.get(url)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    assert "Thet Thet Aung" not in first.text
    read_first = len(reads)
    for _ in range(5):
        again = invited.client.get(url)
        assert (again.status_code, again.text) == (200, first.text)
        assert again.headers["content-security-policy"] == first.headers["content-security-policy"]
    assert len(reads) == read_first, "nothing read for the same page"
    signing = invited.sign()
    assert signing.status_code == 200, signing.text
    reads.clear()
    signed = invited.client.get(url)
    assert "Thet Thet Aung" in signed.text, signed.text
    assert all(after > 0 for after, _ in reads) and sum(n for _, n in reads) <= 2, reads
    assert invited.client.get(url).text == signed.text
    organisation = invited.invitation["organisation_id"]
    assert system.store.forget(person_id(f"{organisation}/Thet Thet Aung"))
    reads.clear()
    erased = invited.client.get(url)
    assert erased.status_code == 200 and "Thet Thet Aung" not in erased.text
    assert (0, len(real(sid))) in reads, "read from the start after the erasure"


def test_signing_pages_read_the_statement_once_then_only_what_it_gained(
    invited: Invited, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The form, the answer and the receipt each load the statement: the first load reads it
    whole, later ones only the events appended since, until someone is erased."""
    system, sid = invited.system, UUID(invited.sid)
    reads: list[int] = []  # after_version of each read of the whole statement by the pages
    real = system.store.read_stream

    def counted(stream_id: UUID, **kwargs: Any) -> list[Any]:
        if stream_id == sid and "limit" not in kwargs:  # not the command lanes' catch-up
            reads.append(kwargs.get("after_version", 0))
        return real(stream_id, **kwargs)

    monkeypatch.setattr(system.store, "read_stream", counted)
    for _ in range(3):
        assert invited.client.get(invited.url).status_code == 200
    assert reads.count(0) == 1, reads
    version = len(real(sid))
    assert reads[1:] == [version, version], "then only what came after"
    signed = invited.sign()
    assert signed.status_code == 200 and "Thet Thet Aung" in signed.text
    assert reads.count(0) == 1, "signing read no more of it from the start"
    organisation = invited.invitation["organisation_id"]
    assert system.store.forget(person_id(f"{organisation}/Thet Thet Aung"))
    reads.clear()
    after = invited.client.get(invited.url)
    assert after.status_code == 200 and "Thet Thet Aung" not in after.text
    assert reads == [0], "read from the start after the erasure"
