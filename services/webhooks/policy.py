"""When to try a webhook delivery again, when to give up, and what an answer means.

The schedule is the Standard Webhooks example: an attempt right away, then after 5 s, 5 min,
30 min, 2 h, 5 h, 10 h and 10 h — eight attempts over about 27.6 hours, each delay jittered
by ±10 % so endpoints coming back from an outage are not hit by every sender at once (the
shortest jittered total is still over 24 h). ``Retry-After`` on 429/503 pushes the next attempt
later, never earlier.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import Enum

#: Delay before attempt n + 1 (index n): the first attempt is immediate.
SCHEDULE: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
ATTEMPTS = len(SCHEDULE)
JITTER = 0.1
#: A ``Retry-After`` longer than this is taken as this (a typo must not park a delivery for
#: a year).
MAX_RETRY_AFTER = timedelta(hours=24)
#: Status codes whose ``Retry-After`` is honoured.
SLOW_DOWN = frozenset({429, 503})


class Verdict(Enum):
    DELIVERED = "delivered"
    #: 410 Gone: the receiver says the endpoint no longer exists.
    GONE = "gone"
    RETRY = "retry"


def verdict(status_code: int | None) -> Verdict:
    """Any 2xx is success; 410 disables; everything else (3xx too, and no answer) retries."""
    if status_code is not None and 200 <= status_code < 300:
        return Verdict.DELIVERED
    if status_code == 410:
        return Verdict.GONE
    return Verdict.RETRY


def next_attempt_at(
    attempts: int,
    now: datetime,
    *,
    retry_after: timedelta | None = None,
    random: Callable[[], float],
) -> datetime | None:
    """When to try again after ``attempts`` failed attempts, or None to give up."""
    if attempts >= ATTEMPTS:
        return None
    delay = SCHEDULE[attempts] * (1 + (2 * random() - 1) * JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return now + delay


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After`` as delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=min(int(value), int(MAX_RETRY_AFTER.total_seconds())))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when - now, timedelta(0))


def should_disable(failing_since: datetime | None, now: datetime, after: timedelta) -> bool:
    """An endpoint failing without a single success for ``after`` is disabled."""
    return failing_since is not None and now - failing_since >= after
