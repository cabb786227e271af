"""The brute-force limiter: the pure decision, the login path and the CLI."""

from __future__ import annotations

import pytest

from dovecot_appauth.throttle import ThrottleSettings, assess


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ((0, 0, 0), None),
        ((9, 9, 9), None),
        ((10, 10, 10), "user+ip"),  # the most specific limit is named first
        ((3, 30, 3), "ip"),
        ((3, 29, 100), "user"),
        ((3, 29, 99), None),
    ],
)
def test_assess_limits_in_order(counts, expected):
    settings = ThrottleSettings(max_per_user_ip=10, max_per_ip=30, max_per_user=100)
    verdict = assess(*counts, settings)
    assert (verdict.limit if verdict else None) == expected


def test_assess_zero_switches_a_counter_off():
    settings = ThrottleSettings(max_per_user_ip=0, max_per_ip=0, max_per_user=5)
    assert assess(1000, 1000, 4, settings) is None
    throttled = assess(1000, 1000, 5, settings)
    assert throttled is not None and throttled.limit == "user"
    assert throttled.describe(600) == "5 failed logins per user in 600 s (limit 5)"
