"""The real system in a real browser: ``concord serve`` (API, worker and scheduler, embedded
mode, SQLite) sending mail to a real SMTP server, and Debian's Chromium driven by Playwright.

``make install`` provides Chromium (apt) and axe-core (npm, tests/browser/package-lock.json);
without them these tests are skipped, saying why (``tests/run.py`` says so up front too).
Screenshots go to ``var/screenshots/`` (printed at the end of the run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.bootstrap import System, bootstrap
from infra.settings import Settings
from tests.mailserver import MailServer
from tests.processes import ROOT, free_port

CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (make install puts Debian's chromium there)"
    if not AXE.exists():
        return f"{AXE.relative_to(ROOT)} is missing (make install runs npm ci)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing (make install)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    why = missing()
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


_WRITTEN: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _WRITTEN:
        terminalreporter.write_sep("-", "screenshots of the public pages")
        terminalreporter.write_line(f"{len(_WRITTEN)} written to {SCREENSHOTS}:")
        for path in _WRITTEN:
            terminalreporter.write_line(f"  {path.name}")


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot at the page's current size, into var/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if path not in _WRITTEN:
        _WRITTEN.append(path)
    return path


@dataclass
class Served:
    """The running system: its URL, its SMTP inbox, and an in-process view of its database."""

    url: str
    smtp: MailServer
    system: System
    admin: dict[str, str]
    organiser: dict[str, str]
    log: Path

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def head(self) -> int:
        return self.system.store.head_position()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``concord serve`` in embedded mode with mail to a real SMTP server on loopback."""
    if missing():
        pytest.skip(missing() or "")
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    with MailServer() as smtp:
        env = {
            **os.environ,
            "CONCORD_DATA_DIR": str(tmp / "var"),
            "CONCORD_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "SMTP_URL": smtp.url,
            "CONCORD_LOG_FORMAT": "console",
            "CONCORD_SCHEDULER_TICK": "2",
            # The live list's stream may stay open for the whole test (tests/conftest.py sets
            # one second for the API tests' sake).
            "CONCORD_SSE_MAX_SECONDS": "600",
        }
        for name in ("DATABASE_URL", "REDIS_URL", "CONCORD_SECRET_KEY"):
            env.pop(name, None)
        subprocess.run(
            [sys.executable, "-m", "infra.cli", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        log = tmp / "serve.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "serve", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        system = bootstrap(
            Settings(CONCORD_DATA_DIR=tmp / "var", REDIS_URL=None, DATABASE_URL=None)
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.2)
            admin = {"Authorization": f"Bearer {system.keys.create('admin', 'browser')[1]}"}
            organiser = {"Authorization": f"Bearer {system.keys.create('organiser', 'browser')[1]}"}
            yield Served(base, smtp, system, admin, organiser, log)
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
            system.close()


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def axe(browser: Any, url: str, size: dict[str, int]) -> list[dict[str, Any]]:
    """axe-core's violations on ``url``, in a context that lets the script be injected (the
    pages' Content Security Policy forbids inline script, as it should)."""
    context = browser.new_context(viewport=size, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(url)
        page.add_script_tag(path=str(AXE))
        result: dict[str, Any] = page.evaluate(
            "axe.run(document, {runOnly: {type: 'tag', values: "
            "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
        )
        return list(result["violations"])
    finally:
        context.close()
