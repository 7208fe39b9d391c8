"""Sign-on without an account, in headless Chromium against the real system.

The organiser invites a migrant-workers' association in Yangon by API; the invitation e-mail
arrives at a real SMTP server; a mail scanner's plain GET of its link changes nothing; the
coordinator opens the link on a phone, reads the exact text and its hash, signs with the
keyboard and gets the receipt, while the statement's public page — open in another browser —
shows the new signatory without a reload; then she withdraws. Forged forms are refused, dead
links explain themselves, the form works with JavaScript off, axe-core finds no serious or
critical violation, and screenshots of both pages at phone and desktop sizes are written to
var/screenshots/.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from infra.invitations import expire_due
from tests.browser.conftest import DESKTOP, PHONE, Served, axe, screenshot
from tests.e2e.test_invitations_api import finalised_statement, invite

pytestmark = pytest.mark.browser

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/s/[0-9a-f-]{36}/sign/[A-Za-z0-9_-]{43})")
SERIOUS = ("serious", "critical")


def mail_link(served: Served, address: str, *, besides: str = "", within: float = 60.0) -> str:
    """The link in the newest invitation e-mail to ``address`` (other than ``besides``)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for message in reversed(list(served.smtp.inbox.messages)):
            if address in str(message["To"]):
                found = LINK.search(message.get_body(("plain",)).get_content())
                assert found, "the invitation e-mail carries the link"
                if found.group(1) != besides:
                    _wait_recorded(served, str(message["Message-ID"]), deadline)
                    return found.group(1)
                break
        time.sleep(0.2)
    raise AssertionError(f"no invitation mail to {address}; log: {served.log.read_text()[-2000:]}")


def _wait_recorded(served: Served, message_id: str, deadline: float) -> None:
    """Until the worker has recorded the mail as sent (``reminder.sent``, appended just after
    the SMTP server took it): a test that then watches the log sees only what it causes."""
    wanted = message_id.strip("<>")
    while time.monotonic() < deadline:
        sent = served.system.store.read_all(0, 10_000, types=["reminder.sent"], payload=True)
        if any(str(e.data.get("message_id", "")).strip("<>") == wanted for e in sent):
            return
        time.sleep(0.1)
    raise AssertionError(f"the mail {message_id} was never recorded as sent")


def invitation_status(client: httpx.Client, served: Served, sid: str, iid: str) -> str:
    response = client.get(f"/v1/statements/{sid}/invitations/{iid}", headers=served.organiser)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def eventually(check: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.2)


def no_serious(violations: list[dict[str, Any]]) -> list[str]:
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v["impact"] in SERIOUS
    ]


def test_invited_by_email_endorsed_on_a_phone_seen_live_and_withdrawn(
    served: Served, browser: Any
) -> None:
    with served.http() as client:
        world = finalised_statement(client, served.organiser)
        sid = world["sid"]
        address = f"coordinator-{sid[:8]}@yangon.example.org"
        invitation = invite(client, served.organiser, world, email=address)
        # Someone else signed already, by API (a Thai name in the list).
        thai = client.post(
            "/v1/organisations",
            json={"name": "มูลนิธิเพื่อสิทธิแรงงานข้ามชาติ", "kind": "ngo", "country": "TH"},
            headers=served.organiser,
        ).json()["id"]
        signed = client.post(
            f"/v1/statements/{sid}/endorsements",
            json={
                "organisation_id": thai,
                "signatory_name": "สมชาย ใจดี",
                "signatory_title": "ผู้อำนวยการ",
            },
            headers=served.organiser,
        )
        assert signed.status_code == 201, signed.text

        link = mail_link(served, address)
        public_url = f"{served.url}/s/{sid}"

        # A mail scanner fetches the link: it sees the page, and nothing at all changes.
        head = served.head()
        scanned = httpx.get(link, timeout=10)
        assert scanned.status_code == 200 and "Endorse on behalf of" in scanned.text
        assert served.head() == head, "a plain GET appends nothing to the log"
        assert invitation_status(client, served, sid, invitation["id"]) == "issued"

        # The public page, open in another browser before anyone signs with the link.
        watcher = browser.new_context(viewport=DESKTOP)
        public = watcher.new_page()
        public.goto(public_url)
        summary = public.locator("#signatory-summary")
        expect(summary).to_have_text("Signed by 1 organisation from 1 country.")
        expect(public.locator("#live-note")).to_be_visible()  # the live stream is open

        # The coordinator opens the link on her phone.
        phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
        page = phone.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        response = page.goto(link)
        assert response is not None and response.status == 200
        assert page.locator("html").get_attribute("lang") == "en"
        expect(page.locator("h1")).to_have_text(
            "Regional Civil Society Recommendations on Migrant Workers' Rights"
        )
        expect(page.locator("#content-hash")).to_have_text(world["content_hash"])
        expect(page.locator("input[name=content_hash]")).to_have_value(world["content_hash"])
        expect(page.locator(".lead")).to_contain_text("ရန်ကုန် Migrant Workers Association")
        screenshot(page, "sign-page-phone")
        page.set_viewport_size(DESKTOP)
        screenshot(page, "sign-page-desktop")
        page.set_viewport_size(PHONE)
        assert served.head() == head, "opening the page records nothing by itself"

        # Keyboard only: the first keypress tells the server the link was opened.
        page.locator("#signatory_name").focus()
        page.keyboard.type("Thet Thet Aung")
        eventually(lambda: invitation_status(client, served, sid, invitation["id"]) == "opened")
        page.keyboard.press("Tab")
        expect(page.locator("#signatory_title")).to_be_focused()
        page.keyboard.type("ညွှန်ကြားရေးမှူး")
        page.keyboard.press("Enter")

        # The receipt: statement, the hash endorsed and the position of the endorsement event.
        expect(page.locator("h1")).to_contain_text("Thank you")
        expect(page.locator("#receipt-hash")).to_have_text(world["content_hash"])
        feed = client.get(
            "/v1/events", params={"types": "statement.endorsed", "stream_id": sid},
            headers=served.admin,
        ).json()["data"]  # fmt: skip
        mine = next(e for e in feed if e["data"]["organisation_id"] == world["yangon"])
        assert mine["data"]["signatory_name"] == "Thet Thet Aung"
        assert mine["data"]["signatory_title"] == "ညွှန်ကြားရေးမှူး"
        assert mine["metadata"]["actor"] == f"invitation:{invitation['id']}/1"
        expect(page.locator("#receipt-position")).to_have_text(str(mine["position"]))
        expect(page.locator(".receipt")).to_contain_text(sid)
        screenshot(page, "receipt-phone")
        assert invitation_status(client, served, sid, invitation["id"]) == "used"

        # The public page shows her without a reload, and announces it.
        expect(summary).to_have_text("Signed by 2 organisations from 2 countries.", timeout=15_000)
        myanmar = public.locator("#country-mm")
        expect(myanmar).to_have_text("Myanmar (1)")
        expect(public.locator("#signatory-list")).to_contain_text("Thet Thet Aung, ညွှန်ကြားရေးမှူး")
        expect(public.locator("#signatory-list")).to_contain_text("สมชาย ใจดี, ผู้อำนวยการ")
        expect(public.locator("#live-status")).to_contain_text("ရန်ကုန် Migrant Workers Association")
        assert public.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert "@" not in public.content(), "no e-mail address on the public page"
        screenshot(public, "public-page-desktop")
        public.set_viewport_size(PHONE)
        screenshot(public, "public-page-phone")

        # Accessibility of both pages, with signatories in the list.
        for url, size in ((public_url, PHONE), (link, DESKTOP), (link, PHONE)):
            problems = no_serious(axe(browser, url, size))
            assert not problems, (url, problems)

        # She withdraws from the same link; the public page follows.
        page.locator("#reason").fill("Our members have not agreed yet")
        page.get_by_role("button", name="Withdraw the endorsement").click()
        expect(page.locator("h1")).to_contain_text("is withdrawn")
        expect(summary).to_have_text("Signed by 1 organisation from 1 country.", timeout=15_000)
        expect(public.locator("#live-status")).to_contain_text("withdrawn")
        # Single use: the link cannot endorse again.
        page.goto(link)
        expect(page.locator("h1")).to_contain_text("has withdrawn its endorsement")
        assert not errors, errors  # no script or CSP error on the page
        watcher.close()
        phone.close()


def test_forged_forms_are_refused_and_the_form_works_without_javascript(
    served: Served, browser: Any
) -> None:
    with served.http() as client:
        world = finalised_statement(client, served.organiser)
        sid = world["sid"]
        address = f"no-js-{sid[:8]}@yangon.example.org"
        invite(client, served.organiser, world, email=address)
        link = mail_link(served, address)
        context = browser.new_context(viewport=PHONE, java_script_enabled=False)
        page = context.new_page()
        page.goto(link)

        # A forged form token: refused, nothing recorded.
        context_js = browser.new_context(viewport=PHONE)
        forger = context_js.new_page()
        forger.goto(link)
        forger.fill("#signatory_name", "Mallory")
        forger.locator("input[name=csrf]").evaluate("node => { node.value = 'forged.token' }")
        forger.get_by_role("button", name="Endorse the statement").click()
        expect(forger.locator("h1")).to_have_text("Please reload the page and try again")
        # A form edited to sign for another organisation: refused.
        forger.goto(link)
        forger.fill("#signatory_name", "Mallory")
        forger.locator("input[name=organisation_id]").evaluate(
            f"node => {{ node.value = '{world['hrwg']}' }}"
        )
        forger.get_by_role("button", name="Endorse the statement").click()
        expect(forger.locator("h1")).to_have_text("This link cannot sign for another organisation")
        endorsed = client.get(
            "/v1/events", params={"types": "statement.endorsed", "stream_id": sid},
            headers=served.admin,
        ).json()["data"]  # fmt: skip
        assert endorsed == [], "nothing was endorsed"
        context_js.close()

        # With JavaScript off, the plain form endorses (and records the opening itself).
        page.fill("#signatory_name", "Nguyễn Thị Thu Hằng")
        page.fill("#signatory_title", "Điều phối viên")
        page.get_by_role("button", name="Endorse the statement").click()
        expect(page.locator("h1")).to_contain_text("Thank you")
        expect(page.locator(".receipt")).to_contain_text("Nguyễn Thị Thu Hằng, Điều phối viên")
        context.close()


def test_expired_revoked_replaced_and_reopened_links_explain_themselves(
    served: Served, browser: Any
) -> None:
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    with served.http() as client:
        world = finalised_statement(client, served.organiser)
        sid = world["sid"]
        base = f"/v1/statements/{sid}/invitations"
        links = {}
        ids = {}
        for name in ("expired", "revoked", "replaced", "reopened"):
            address = f"{name}-{sid[:8]}@yangon.example.org"
            ids[name] = invite(client, served.organiser, world, email=address, expires_in="PT1H")[
                "id"
            ]
            links[name] = mail_link(served, address)
        # Expired: the sweep, run as if two hours had passed, records it.
        served.system.projector.catch_up()
        expired = expire_due(served.system, datetime.now(UTC) + timedelta(hours=2))
        assert expired == 4
        response = page.goto(links["expired"])
        assert response is not None and response.status == 410
        expect(page.locator("h1")).to_have_text("This link has expired")
        screenshot(page, "expired-link-phone")
        # Revoked.
        client.post(f"{base}/{ids['revoked']}/revoke", headers=served.organiser)
        response = page.goto(links["revoked"])
        assert response is not None and response.status == 410
        expect(page.locator("h1")).to_have_text("This invitation was withdrawn")
        # Replaced by a resend: the old link says so, the new one works.
        resent = client.post(f"{base}/{ids['replaced']}/resend", headers=served.organiser)
        assert resent.status_code == 200, resent.text
        response = page.goto(links["replaced"])
        assert response is not None and response.status == 410
        expect(page.locator("h1")).to_have_text("This link was replaced")
        fresh = mail_link(
            served, f"replaced-{sid[:8]}@yangon.example.org", besides=links["replaced"]
        )
        assert page.goto(fresh).status == 200  # type: ignore[union-attr]
        # Reopened: the resent link (still live) shows that the text is being changed.
        reopened = client.post(
            f"/v1/statements/{sid}/reopen", json={"reason": "An amendment came late"},
            headers=served.organiser,
        )  # fmt: skip
        assert reopened.status_code == 200, reopened.text
        response = page.goto(fresh)
        assert response is not None and response.status == 409
        expect(page.locator("h1")).to_have_text("The statement was reopened for changes")
        screenshot(page, "reopened-statement-phone")
        problems = no_serious(axe(browser, fresh, PHONE))
        assert not problems, problems
        response = page.goto(f"{served.url}/s/{sid}")
        assert response is not None and response.status == 404
    context.close()
