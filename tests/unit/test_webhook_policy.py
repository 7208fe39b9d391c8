"""The retry policy and the subscription's record in the log (pure: no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from services.decider import Context
from services.webhooks import policy
from services.webhooks.commands import DisableEndpoint, RecordDeliveryFailure
from services.webhooks.events import WebhookDeliveryFailed, WebhookEndpointDisabled
from services.webhooks.model import SUBSCRIPTION

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def middle() -> float:
    return 0.5


def test_the_schedule_is_the_standard_webhooks_example_and_lasts_more_than_a_day() -> None:
    delays = []
    at = NOW
    for attempts in range(1, policy.ATTEMPTS):
        nxt = policy.next_attempt_at(attempts, at, random=middle)
        assert nxt is not None
        delays.append(nxt - at)
        at = nxt
    assert delays == [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
    ]
    assert policy.next_attempt_at(policy.ATTEMPTS, at, random=middle) is None


@pytest.mark.parametrize("draw", [0.0, 0.999999])
def test_jitter_stays_within_ten_percent_and_the_total_above_24_hours(draw: float) -> None:
    total = timedelta(0)
    for attempts in range(1, policy.ATTEMPTS):
        nxt = policy.next_attempt_at(attempts, NOW, random=lambda: draw)
        assert nxt is not None
        delay = nxt - NOW
        assert abs(delay - policy.SCHEDULE[attempts]) <= policy.SCHEDULE[attempts] * 0.1
        total += delay
    assert total > timedelta(hours=24)


def test_retry_after_pushes_later_never_earlier_and_is_capped() -> None:
    later = policy.next_attempt_at(1, NOW, retry_after=timedelta(hours=1), random=middle)
    assert later == NOW + timedelta(hours=1)
    sooner = policy.next_attempt_at(3, NOW, retry_after=timedelta(seconds=1), random=middle)
    assert sooner == NOW + timedelta(minutes=30)
    capped = policy.next_attempt_at(1, NOW, retry_after=timedelta(days=30), random=middle)
    assert capped == NOW + timedelta(hours=24)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (" 0 ", timedelta(0)),
        ("Mon, 23 Nov 2026 10:00:00 GMT", timedelta(hours=1)),
        ("Mon, 23 Nov 2026 08:00:00 GMT", timedelta(0)),  # in the past
        ("99999999999", timedelta(hours=24)),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    value: str | None, expected: timedelta | None
) -> None:
    assert policy.parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, policy.Verdict.DELIVERED),
        (201, policy.Verdict.DELIVERED),
        (204, policy.Verdict.DELIVERED),
        (299, policy.Verdict.DELIVERED),
        (301, policy.Verdict.RETRY),  # 3xx is a failure; redirects are never followed
        (302, policy.Verdict.RETRY),
        (308, policy.Verdict.RETRY),
        (400, policy.Verdict.RETRY),
        (404, policy.Verdict.RETRY),
        (410, policy.Verdict.GONE),
        (429, policy.Verdict.RETRY),
        (500, policy.Verdict.RETRY),
        (503, policy.Verdict.RETRY),
        (None, policy.Verdict.RETRY),  # no answer: timeout, refused, reset
    ],
)
def test_what_an_answer_means(status: int | None, verdict: policy.Verdict) -> None:
    assert policy.verdict(status) is verdict


def test_an_endpoint_is_disabled_only_after_failing_for_the_whole_period() -> None:
    days = timedelta(days=5)
    assert not policy.should_disable(None, NOW, days)
    assert not policy.should_disable(NOW - days + timedelta(seconds=1), NOW, days)
    assert policy.should_disable(NOW - days, NOW, days)


# -- the record in the log -----------------------------------------------------------------------


def test_a_given_up_delivery_and_a_disabling_are_recorded_once_per_episode() -> None:
    sid, key = uuid4(), uuid4()
    ctx = Context(now=NOW)
    failure = RecordDeliveryFailure(sid, uuid4(), uuid4(), 7, 8, 500, "HTTP 500", "d/0/8")
    disable = DisableEndpoint(sid, key, "failing", NOW - timedelta(days=5), 500, "d/0/8")
    state = SUBSCRIPTION.initial()
    first = SUBSCRIPTION.decide(state, failure, ctx)
    assert [type(e) for e in first] == [WebhookDeliveryFailed]
    state = SUBSCRIPTION.fold(first, state)
    assert SUBSCRIPTION.decide(state, failure, ctx) == [], "a repeated decision adds nothing"
    disabled = SUBSCRIPTION.decide(state, disable, ctx)
    assert [type(e) for e in disabled] == [WebhookEndpointDisabled]
    state = SUBSCRIPTION.fold(disabled, state)
    assert SUBSCRIPTION.decide(state, disable, ctx) == []
    later = DisableEndpoint(sid, key, "gone", None, 410, "e/1/1")
    assert len(SUBSCRIPTION.decide(state, later, ctx)) == 1, "a new episode is a new fact"
