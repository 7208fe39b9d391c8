"""``make test``: say which back ends this run covers, then run the whole suite."""

from __future__ import annotations

import sys

import pytest

from tests import backends
from tests.browser.conftest import missing as browser_missing


def main() -> int:
    pg, rd = backends.postgres(), backends.redis()
    print("Concord test run")
    print("  SQLite     : always tested")
    for name, avail in (("PostgreSQL", pg), ("Redis", rd)):
        if avail.ok:
            print(f"  {name:<11}: tested ({avail.reason})")
        else:
            print(f"  {name:<11}: SKIPPED — {avail.reason}; tests that need it are skipped")
    browser = browser_missing()
    if browser is None:
        print("  Browser    : tested (Debian's Chromium with Playwright, axe-core)")
    else:
        print(f"  Browser    : SKIPPED — {browser}; tests/browser is skipped")
    if not (pg.ok and rd.ok):
        print(
            "  (CI runs .ci/run, which provides both; set DATABASE_URL/REDIS_URL to run them here)"
        )
    sys.stdout.flush()
    return pytest.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
