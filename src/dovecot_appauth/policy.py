"""Per-password policies: which services, until when, and from where an app password works.

What belongs here: the pure logic (parse and format the admin's input, decide whether
a login is within a password's policy). What does not: SQL (`schema.py` stores the
policy in the side table `app_password_policy`, `store.py` reads it with the
passwords), and the decision to refuse (`login.py`).

The login imports this module after a password matched, so it is cheap to import: no
dataclasses, no typing, no datetime (times are epoch seconds, converted with `time`
and a days-from-civil formula); a login compares networks as integers (`ipnum.py`),
without `ipaddress`, which only the admin's input (`parse_networks`) imports.
Stored form, one row per password (absent row or NULL column: no limit):
`services` "imap,smtp" (lower case, sorted), `expires` UTC text "YYYY-MM-DD HH:MM:SS",
`networks` "198.51.100.0/24,2001:db8::/32" (host bits masked).
"""

from __future__ import annotations

import time

from .values import Value

# Dovecot's SERVICE values (managesieve is "sieve"; SMTP AUTH through Dovecot SASL is "smtp").
KNOWN_SERVICES = ("imap", "pop3", "smtp", "submission", "sieve", "lmtp", "doveadm")
ALL_WORDS = ("", "all", "any", "*")
NEVER_WORDS = ("never", "none", "no", "")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class PolicyError(ValueError):
    """An admin's input that is not a valid policy (message names what is wrong)."""


class Policy(Value):
    """`None` in a field means "no limit"; a policy whose fields are all None limits nothing."""

    __slots__ = ("expires", "networks", "services")

    def __init__(self, services: tuple[str, ...] | None = None, expires: float | None = None,
                 networks: tuple[str, ...] | None = None):
        self.services = services  # lower-case service names
        self.expires = expires  # epoch seconds (UTC); the password is refused from then on
        self.networks = networks  # CIDR texts, IPv4 and IPv6

    @property
    def empty(self) -> bool:
        return self.services is None and self.expires is None and self.networks is None

    def to_json(self) -> dict:
        return {
            "services": list(self.services) if self.services is not None else None,
            "expires": utc_text(self.expires) if self.expires is not None else None,
            "networks": list(self.networks) if self.networks is not None else None,
        }

    def describe(self) -> str:
        """One line for `password list`: `services imap,smtp; expires ...; from ...`."""
        parts = []
        if self.services is not None:
            parts.append("services " + ",".join(self.services))
        if self.expires is not None:
            parts.append("expires " + utc_text(self.expires)[:16])
        if self.networks is not None:
            parts.append("from " + ",".join(self.networks))
        return "; ".join(parts) or "-"


def from_row(services: object, expires: object, networks: object) -> Policy | None:
    """The policy from the side table's columns (None for a missing row or all-NULL columns).

    `expires` may be text (SQLite) or a datetime (PyMySQL); both print as UTC text.
    A value that cannot be read limits as much as it can: an unreadable expiry counts as
    expired, so a damaged row never widens what a password may do.
    """
    if services is None and expires is None and networks is None:
        return None
    svc = tuple(s for s in str(services).split(",") if s) if services is not None else None
    nets = tuple(n for n in str(networks).split(",") if n) if networks is not None else None
    when = None
    if expires is not None:
        try:
            when = parse_utc(str(expires))
        except PolicyError:
            when = 0.0
    return Policy(svc, when, nets)


# --- services ---------------------------------------------------------------------------


def parse_services(values: str | list[str] | tuple[str, ...]) -> tuple[str, ...] | None:
    """`"imap,smtp"` or several such texts -> sorted unique names; `all` -> None (no limit)."""
    items = [values] if isinstance(values, str) else list(values)
    names: set[str] = set()
    for item in items:
        for part in item.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name in ALL_WORDS:
                return None
            if name not in KNOWN_SERVICES:
                raise PolicyError(f"unknown service {part.strip()!r} (known: {', '.join(KNOWN_SERVICES)}, or all)")
            names.add(name)
    if not names:
        raise PolicyError("no service named (use all for every service)")
    return tuple(sorted(names))


def format_services(services: tuple[str, ...] | None) -> str | None:
    """The stored text (None: every service)."""
    return None if services is None else ",".join(services)


# --- networks ---------------------------------------------------------------------------


def parse_networks(values: str | list[str] | tuple[str, ...]) -> tuple[str, ...] | None:
    """CIDRs (or single addresses), comma-separated and/or repeated -> normalised texts.

    `any`/`anywhere` -> None (no limit). Host bits are masked, as in the deny lists.
    """
    import ipaddress

    items = [values] if isinstance(values, str) else list(values)
    found: list[str] = []
    for item in items:
        for part in item.split(","):
            text = part.strip()
            if not text:
                continue
            if text.lower() in ("any", "anywhere", "all"):
                return None
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise PolicyError(f"not an IPv4/IPv6 network: {text!r}") from None
            if str(network) not in found:
                found.append(str(network))
    if not found:
        raise PolicyError("no network named (use anywhere for no limit)")
    return tuple(found)


def format_networks(networks: tuple[str, ...] | None) -> str | None:
    return None if networks is None else ",".join(networks)


def in_networks(ip: str | None, networks: tuple[str, ...]) -> str | None:
    """The first network containing `ip` (IPv4-mapped IPv6 counts as IPv4), else None."""
    if not ip or not networks:  # the common case on a login: nothing to parse
        return None
    from . import ipnum  # integers, not ipaddress: the same answers without its import cost

    address = ipnum.address(ip)
    if address is None:
        return None
    address = ipnum.unmapped(address)
    for text in networks:
        try:
            network = ipnum.network(text)  # ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue  # a damaged stored entry allows nothing
        if ipnum.contains(network, address):
            return text
    return None


# --- time -------------------------------------------------------------------------------


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _timegm(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: float = 0.0) -> float:
    if not (1 <= mo <= 12 and 1 <= d <= 31 and 0 <= h <= 23 and 0 <= mi <= 59 and 0 <= s < 61):
        raise PolicyError(f"not a valid date/time: {y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}")
    days_in_month = (31, 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28, 31, 30, 31, 30,
                     31, 31, 30, 31, 30, 31)[mo - 1]
    if d > days_in_month:
        raise PolicyError(f"not a valid date: {y:04d}-{mo:02d}-{d:02d}")
    return _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def parse_utc(text: str) -> float:
    """`YYYY-MM-DD[ T]HH:MM[:SS[.fff]]` or `YYYY-MM-DD` (midnight) in UTC -> epoch seconds."""
    value = text.strip().rstrip("Z").replace("T", " ")
    date, _, clock = value.partition(" ")
    try:
        y, mo, d = (int(x) for x in date.split("-"))
        h = mi = 0
        s = 0.0
        if clock:
            bits = clock.split(":")
            if len(bits) not in (2, 3):
                raise ValueError
            h, mi = int(bits[0]), int(bits[1])
            s = float(bits[2]) if len(bits) == 3 else 0.0
    except ValueError:
        raise PolicyError(f"not a UTC date/time (YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS]): {text!r}") from None
    return _timegm(y, mo, d, h, mi, s)


def utc_text(when: float) -> str:
    """Epoch seconds -> `YYYY-MM-DD HH:MM:SS` (UTC), the stored form."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(when)))


def parse_duration(text: str) -> float:
    """`90d`, `12h`, `30m`, `45s`, `2w` (also combined: `1d12h`) -> seconds."""
    value = text.strip().lower()
    total = 0.0
    number = ""
    if not value:
        raise PolicyError("empty duration")
    for c in value:
        if c.isdigit() or c == ".":
            number += c
        elif c in _UNITS and number:
            try:
                total += float(number) * _UNITS[c]
            except ValueError:
                raise PolicyError(f"not a duration: {text!r}") from None
            number = ""
        else:
            raise PolicyError(f"not a duration (use e.g. 90d, 12h, 30m, 2w): {text!r}")
    if number:
        raise PolicyError(f"duration without a unit (s, m, h, d, w): {text!r}")
    return total


def parse_expiry(text: str, now: float) -> float | None:
    """`--expires`: a duration from `now` (`90d`, `12h`), a UTC date or time, or `never` (None).

    A bare date means the end of that day: `2026-12-31` is valid through 31 December (UTC).
    """
    value = text.strip()
    if value.lower() in NEVER_WORDS:
        return None
    if value[:1].isdigit() and len(value) >= 8 and value[4:5] == "-":
        when = parse_utc(value)
        if len(value) == 10:
            when += 86400
        return when
    return now + parse_duration(value)


# --- the decision -------------------------------------------------------------------------


def check(policy: Policy | None, service: str | None, ip: str | None, now: float) -> str | None:
    """None when the login is within the policy, else the reason it is not (for Dovecot's log).

    Expiry first: an expired password is refused like a revoked one, whatever else it allows.
    """
    if policy is None:
        return None
    if policy.expires is not None and now >= policy.expires:
        return f"expired {utc_text(policy.expires)} UTC"
    if policy.services is not None and (service or "").lower() not in policy.services:
        return f"service {service or '-'} not allowed (only {','.join(policy.services)})"
    if policy.networks is not None and in_networks(ip, policy.networks) is None:
        return f"source {ip or '-'} not allowed (only from {','.join(policy.networks)})"
    return None


def is_expired(policy: Policy | None, now: float) -> bool:
    return policy is not None and policy.expires is not None and now >= policy.expires
