"""Per-password policies: parsing the admin's input and the decision at login (pure)."""

from __future__ import annotations

import calendar
import subprocess
import sys

import pytest

from dovecot_appauth.policy import (
    Policy,
    PolicyError,
    check,
    format_networks,
    format_services,
    from_row,
    in_networks,
    is_expired,
    parse_duration,
    parse_expiry,
    parse_networks,
    parse_services,
    parse_utc,
    utc_text,
)

NOW = calendar.timegm((2026, 3, 1, 12, 0, 0))


def test_parse_services_normalises_and_rejects_typos():
    assert parse_services("IMAP, smtp,imap") == ("imap", "smtp")
    assert parse_services(["imap", "pop3,sieve"]) == ("imap", "pop3", "sieve")
    assert parse_services("all") is None
    assert parse_services(["imap", "all"]) is None
    with pytest.raises(PolicyError, match="unknown service 'imapp'"):
        parse_services("imapp")
    with pytest.raises(PolicyError, match="no service"):
        parse_services(" , ")
    assert format_services(("imap", "smtp")) == "imap,smtp"
    assert format_services(None) is None


def test_parse_networks_masks_host_bits_and_accepts_ipv6():
    assert parse_networks(["198.51.100.7/24", "2001:db8::1/32,192.0.2.1"]) == (
        "198.51.100.0/24", "2001:db8::/32", "192.0.2.1/32")
    assert parse_networks("198.51.100.0/24,198.51.100.0/24") == ("198.51.100.0/24",)
    assert parse_networks("anywhere") is None
    with pytest.raises(PolicyError, match=r"not an IPv4/IPv6 network: 'example\.com'"):
        parse_networks("example.com")
    with pytest.raises(PolicyError, match="no network"):
        parse_networks("")
    assert format_networks(("198.51.100.0/24", "2001:db8::/32")) == "198.51.100.0/24,2001:db8::/32"


def test_in_networks_ipv4_mapped_and_families():
    nets = ("198.51.100.0/24", "2001:db8::/32")
    assert in_networks("198.51.100.9", nets) == "198.51.100.0/24"
    assert in_networks("::ffff:198.51.100.9", nets) == "198.51.100.0/24"
    assert in_networks("2001:db8:1::5", nets) == "2001:db8::/32"
    assert in_networks("203.0.113.1", nets) is None
    assert in_networks(None, nets) is None
    assert in_networks("not-an-ip", nets) is None
    assert in_networks("198.51.100.9", ("garbage",)) is None  # a damaged entry allows nothing


@pytest.mark.parametrize(("text", "seconds"), [
    ("90d", 90 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2w", 14 * 86400), ("1d12h", 129600),
    ("1.5h", 5400),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "12", "h", "12x", "-3d", "1..5h"])
def test_parse_duration_rejects(text):
    with pytest.raises(PolicyError):
        parse_duration(text)


def test_parse_expiry_forms():
    assert parse_expiry("90d", NOW) == NOW + 90 * 86400
    assert parse_expiry("12h", NOW) == NOW + 12 * 3600
    # a bare date is valid through that day (UTC)
    assert parse_expiry("2026-12-31", NOW) == calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert parse_expiry("2026-12-31 18:30", NOW) == calendar.timegm((2026, 12, 31, 18, 30, 0))
    assert parse_expiry("2026-12-31T18:30:15Z", NOW) == calendar.timegm((2026, 12, 31, 18, 30, 15))
    assert parse_expiry("never", NOW) is None
    for bad in ("2026-02-30", "2026-13-01", "2026-12-31 25:00", "soon", "2026-1"):
        with pytest.raises(PolicyError):
            parse_expiry(bad, NOW)


@pytest.mark.parametrize("when", [
    (1970, 1, 1, 0, 0, 0), (2000, 2, 29, 23, 59, 59), (2024, 12, 31, 0, 0, 0), (2100, 3, 1, 1, 2, 3),
    (1969, 12, 31, 12, 0, 0),
])
def test_parse_utc_matches_timegm(when):
    y, mo, d, h, mi, s = when
    text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"
    assert parse_utc(text) == calendar.timegm(when)
    assert utc_text(parse_utc(text)) == text
    assert parse_utc(text + ".250") == calendar.timegm(when) + 0.25


def test_check_in_order_expiry_service_network():
    policy = Policy(("imap",), NOW + 60, ("198.51.100.0/24",))
    assert check(policy, "imap", "198.51.100.7", NOW) is None
    assert check(policy, "IMAP", "198.51.100.7", NOW) is None
    assert check(policy, "smtp", "198.51.100.7", NOW) == "service smtp not allowed (only imap)"
    assert check(policy, "imap", "203.0.113.9", NOW) == "source 203.0.113.9 not allowed (only from 198.51.100.0/24)"
    assert check(policy, "imap", None, NOW) == "source - not allowed (only from 198.51.100.0/24)"
    # expiry wins over everything: an expired password is refused like a revoked one
    assert check(policy, "smtp", "203.0.113.9", NOW + 60) == f"expired {utc_text(NOW + 60)} UTC"
    assert is_expired(policy, NOW + 60) and not is_expired(policy, NOW + 59)
    assert check(None, "smtp", None, NOW) is None
    assert check(Policy(), "smtp", None, NOW) is None


def test_from_row_reads_both_drivers_forms():
    assert from_row(None, None, None) is None
    p = from_row("imap,smtp", "2026-12-31 00:00:00.000000", "198.51.100.0/24,2001:db8::/32")
    assert p == Policy(("imap", "smtp"), calendar.timegm((2026, 12, 31, 0, 0, 0)),
                       ("198.51.100.0/24", "2001:db8::/32"))
    assert from_row(None, "2026-12-31 00:00:00", None).services is None
    # an unreadable expiry counts as expired: a damaged row never widens what a password may do
    assert from_row(None, "garbage", None).expires == 0.0
    assert p.describe() == "services imap,smtp; expires 2026-12-31 00:00; from 198.51.100.0/24,2001:db8::/32"
    assert Policy().describe() == "-"
    assert p.to_json() == {"services": ["imap", "smtp"], "expires": "2026-12-31 00:00:00",
                           "networks": ["198.51.100.0/24", "2001:db8::/32"]}


def test_policy_and_alerts_import_cheaply():
    """Imported on the login path: no dataclasses, typing, datetime or ipaddress at import."""
    code = ("import sys; import dovecot_appauth.policy, dovecot_appauth.audit.alerts; "
            "print(' '.join(m for m in ('dataclasses', 'typing', 'datetime', 'ipaddress', 'sqlalchemy', 'calendar')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ":".join(sys.path)}).stdout
    assert out.strip() == ""
