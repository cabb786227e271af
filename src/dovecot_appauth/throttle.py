"""The brute-force limiter's decision: pure, from failure counts to a verdict.

Failed logins are counted in sliding windows per user, per source IP and per
(user, IP), in the shared `auth_failures` table (store.py reads and writes it), in the
spirit of weakforced and fail2ban: a client that fails too often is refused before any
hash is computed, even with the right password. The per-user limit guards against
slow distributed guessing but also lets an attacker annoy a user, so it is the
highest by default, the verdict is a temporary failure (the client retries later)
rather than a denial, and allow-listed and local networks are never throttled.
"""

from __future__ import annotations

from .values import Value

THROTTLE_VERDICTS = ("tempfail", "deny")


class ThrottleSettings(Value):
    """`[throttle]` in the config."""

    __slots__ = ("delay", "enabled", "exempt_networks", "max_per_ip", "max_per_user", "max_per_user_ip",
                 "verdict", "window")

    def __init__(
        self,
        enabled: bool = True,
        window: float = 600.0,
        max_per_user_ip: int = 10,
        max_per_ip: int = 30,
        max_per_user: int = 100,
        verdict: str = "tempfail",
        delay: float = 2.0,
        exempt_networks: tuple[str, ...] = (),
    ) -> None:
        self.enabled = enabled
        self.window = window
        self.max_per_user_ip = max_per_user_ip
        self.max_per_ip = max_per_ip
        self.max_per_user = max_per_user
        self.verdict = verdict  # "tempfail" (exit 111 after `delay`) or "deny" (exit 1)
        self.delay = delay
        self.exempt_networks = exempt_networks


class Throttled:
    """Which limit a request is over: `limit` is "user+ip", "ip" or "user"."""

    __slots__ = ("count", "limit", "maximum")

    def __init__(self, limit: str, count: int, maximum: int) -> None:
        self.limit = limit
        self.count = count
        self.maximum = maximum

    def describe(self, window: float) -> str:
        return f"{self.count} failed logins per {self.limit} in {window:g} s (limit {self.maximum})"

    def __repr__(self) -> str:
        return f"Throttled({self.limit!r}, {self.count}, {self.maximum})"


def assess(user_ip: int, ip: int, user: int, settings: ThrottleSettings) -> Throttled | None:
    """The first limit reached, most specific first; None when the request may proceed.

    A limit of 0 switches that counter off. Reaching the limit counts: after
    `max_per_user_ip` failures the next attempt is refused.
    """
    for limit, count, maximum in (
        ("user+ip", user_ip, settings.max_per_user_ip),
        ("ip", ip, settings.max_per_ip),
        ("user", user, settings.max_per_user),
    ):
        if maximum > 0 and count >= maximum:
            return Throttled(limit, count, maximum)
    return None
