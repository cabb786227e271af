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

from .config import ThrottleSettings  # `[throttle]`: its fields are rows of config.FIELDS

__all__ = ["ThrottleSettings", "Throttled", "assess"]


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


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def client_key(ip: str, ipv6_prefix: int = 64) -> str:
    """The name under which the limiter counts a client address.

    An IPv4 address stays as it is, also when it arrives IPv4-mapped (`::ffff:192.0.2.69`
    is 192.0.2.69: one client must not get two sets of counters). An IPv6 address stands
    for its /`ipv6_prefix` network (`2001:db8:1:2::/64`): a single host usually holds a
    whole /64 and could otherwise take a fresh address for every guess. Text that is not an
    address is counted under itself.
    """
    if ":" not in ip:  # IPv4, the common case: no import, no parsing
        return ip
    from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton

    try:
        packed = inet_pton(AF_INET6, ip.split("%", 1)[0])  # without a zone (fe80::1%eth0)
    except (OSError, ValueError):
        return ip
    if packed[:12] == _V4_MAPPED:
        return inet_ntop(AF_INET, packed[12:])
    if ipv6_prefix >= 128:
        return inet_ntop(AF_INET6, packed)
    host_bits = 128 - ipv6_prefix
    network = (int.from_bytes(packed, "big") >> host_bits) << host_bits
    return f"{inet_ntop(AF_INET6, network.to_bytes(16, 'big'))}/{ipv6_prefix}"


def plain_address(ip: str) -> str:
    """`ip` with an IPv4-mapped IPv6 address written as the IPv4 address (for network lists)."""
    if ":" not in ip or not ip[:7].lower().startswith("::ffff:"):
        return ip
    return client_key(ip, 128)
