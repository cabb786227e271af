"""The brute-force limiter: the pure decision, the login path and the CLI."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dovecot_appauth.throttle import ThrottleSettings, assess
from tests.conftest import run_cli
from tests.support.hardening import dovecot_env, make_site


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


# --- the installed program, on SQLite and MariaDB ----------------------------------------------


LIMITS = {"max_per_user_ip": 3, "max_per_ip": 5, "max_per_user": 8, "delay": 0.0}


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def site(request):
    dsn = None
    if request.param == "mariadb":
        dsn = request.getfixturevalue("mariadb_database").dsn
    s = make_site(dsn, prefix="appauth-throttle-")
    s.add_password("a", "alice@example.com")
    s.add_password("b", "bob@example.com")
    s.write(throttle=LIMITS)
    yield s
    s.remove()


def _login(site, key, password=None, ip="198.51.100.7", user=None):
    env = dovecot_env(ip=ip)
    if user is not None:
        return site.login(user, password, env=env)
    return site.login(key, password, env=env)


def test_right_password_refused_after_too_many_failures(site):
    for _ in range(3):
        assert _login(site, "a", "wrong").status == 1
    right = _login(site, "a")
    assert right.status == 111, right
    assert "throttled, 3 failed logins per user+ip in 600 s (limit 3)" in right.stderr
    assert site.pw("a") not in right.stderr
    # the same user from another address, and another user from this one, still log in
    assert _login(site, "a", ip="198.51.100.8").status == 0
    assert _login(site, "b").status == 0
    # a reset lifts it
    out = run_cli(site.path, "throttle", "reset", "--user", "alice@example.com", "--ip", "198.51.100.7").stdout
    assert "forgot 3 failed login(s)" in out
    assert _login(site, "a").status == 0


def test_throttled_login_does_no_hash_work(site, monkeypatch):
    """A throttled client gets its answer before any password hash is computed."""
    from dovecot_appauth import hashing
    from dovecot_appauth.config import load
    from dovecot_appauth.core import Credentials, TempFail, read_environment
    from dovecot_appauth.login import decide

    for _ in range(3):
        _login(site, "a", "wrong")
    calls = []
    real_verify = hashing.verify
    monkeypatch.setattr(hashing, "verify", lambda pw, stored: calls.append(1) or real_verify(pw, stored))
    config = load(str(site.path))
    request = read_environment(Credentials("alice@example.com", site.pw("a"), True), dovecot_env())
    with pytest.raises(TempFail, match="throttled"):
        decide(request, config, now=time.time())
    assert calls == []
    # from another address the same request is checked (one hash) and accepted
    request = read_environment(Credentials("alice@example.com", site.pw("a"), True), dovecot_env("198.51.100.9"))
    assert decide(request, config, now=time.time()).exit_code == 0
    assert calls == [1]


def test_per_ip_and_per_user_limits(site):
    for n in range(5):  # five different users from one address
        assert _login(site, None, "wrong", user=f"nobody{n}@example.com").status == 1
    run = _login(site, "b")
    assert run.status == 111 and "per ip" in run.stderr
    for n in range(8):  # alice guessed at from eight addresses
        _login(site, "a", "wrong", ip=f"203.0.113.{10 + n}")
    run = _login(site, "a", ip="203.0.113.99")
    assert run.status == 111 and "per user in" in run.stderr


def test_deny_verdict_and_exempt_networks(site):
    site.write(throttle={**LIMITS, "verdict": "deny", "exempt_networks": ["192.0.2.0/24"]})
    for ip in ("198.51.100.7", "192.0.2.5"):
        for _ in range(3):
            _login(site, "a", "wrong", ip=ip)
    denied = _login(site, "a")
    assert denied.status == 1 and "throttled" in denied.stderr
    assert _login(site, "a", ip="192.0.2.5").status == 0  # exempt network


def test_allow_listed_network_is_exempt(site):
    (site.dir / "lists" / "allow.lst").write_text("198.51.100.0/24 the office\n")
    site.write(throttle=LIMITS, audit__allow={"ip_networks": str(site.dir / "lists" / "allow.lst")})
    for _ in range(4):
        _login(site, "a", "wrong")
    assert _login(site, "a").status == 0


def test_disabled_throttle_counts_nothing(site):
    site.write(throttle={**LIMITS, "enabled": False})
    for _ in range(5):
        _login(site, "a", "wrong")
    assert _login(site, "a").status == 0
    data = json.loads(run_cli(site.path, "throttle", "list", "--all", "--json").stdout)
    assert data["entries"] == []


def test_concurrent_failures_are_all_counted(site):
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: _login(site, "a", "wrong", ip="203.0.113.50"), range(12)))
    assert all(r.status in (1, 111) for r in runs), [(r.status, r.stderr) for r in runs]
    data = json.loads(run_cli(site.path, "throttle", "list", "--all", "--json").stdout)
    by_kind = {(e["kind"], e["user"], e["ip"]): e for e in data["entries"]}
    # every refusal before the limit is counted; throttled attempts are not counted again
    counted = by_kind[("user+ip", "alice@example.com", "203.0.113.50")]["failures"]
    assert counted == sum(1 for r in runs if r.status == 1)
    assert counted >= 3


def test_throttle_list_text_and_reset_all(site):
    for _ in range(3):
        _login(site, "a", "wrong")
    text = run_cli(site.path, "throttle", "list").stdout
    assert "user+ip" in text and "alice@example.com" in text and "throttled" in text
    assert "forgot 3" in run_cli(site.path, "throttle", "reset", "--all").stdout
    assert "nothing throttled" in run_cli(site.path, "throttle", "list").stdout
    res = run_cli(site.path, "throttle", "reset", check=False)
    assert res.returncode == 1 and "--all" in res.stderr


# --- client addresses: IPv4-mapped and IPv6 prefixes (issue 15, item 4a) ------------------------


@pytest.mark.parametrize(
    ("ip", "prefix", "expected"),
    [
        ("192.0.2.69", 64, "192.0.2.69"),
        ("::ffff:192.0.2.69", 64, "192.0.2.69"),
        ("::FFFF:c000:0245", 64, "192.0.2.69"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:0db8:0001:0002:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1"),
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("not:an-address", 64, "not:an-address"),
    ],
)
def test_client_key(ip, prefix, expected):
    from dovecot_appauth.throttle import client_key

    assert client_key(ip, prefix) == expected


def test_ipv4_mapped_address_shares_the_ipv4_counters(site):
    for _ in range(3):
        assert _login(site, "a", "wrong", ip="192.0.2.69").status == 1
    run = _login(site, "a", ip="::ffff:192.0.2.69")
    assert run.status == 111 and "throttled, 3 failed logins per user+ip" in run.stderr, run
    # and the other way round: failures from the mapped form count for the plain one
    for _ in range(3):
        assert _login(site, "b", "wrong", ip="::ffff:192.0.2.70").status == 1
    assert _login(site, "b", ip="192.0.2.70").status == 111


def test_ipv6_clients_are_counted_per_prefix(site):
    for host in ("a", "b", "c"):  # a fresh address for every guess, all in one /64
        assert _login(site, "a", "wrong", ip=f"2001:db8:1:2::{host}").status == 1
    run = _login(site, "a", ip="2001:db8:1:2::d")
    assert run.status == 111 and "per user+ip" in run.stderr, run
    assert _login(site, "a", ip="2001:db8:1:3::d").status == 0  # the next /64 is another client
    data = json.loads(run_cli(site.path, "throttle", "list", "--json").stdout)
    assert [(e["kind"], e["ip"]) for e in data["entries"]] == [("user+ip", "2001:db8:1:2::/64")]
    # reset takes any address of the network (or the network itself)
    assert "forgot 3" in run_cli(site.path, "throttle", "reset", "--ip", "2001:db8:1:2::99").stdout
    assert _login(site, "a", ip="2001:db8:1:2::d").status == 0


def test_ipv6_prefix_is_configurable(site):
    site.write(throttle={**LIMITS, "ipv6_prefix": 128})
    for host in ("a", "b", "c"):
        assert _login(site, "a", "wrong", ip=f"2001:db8:1:2::{host}").status == 1
    assert _login(site, "a", ip="2001:db8:1:2::d").status == 0


def test_mapped_address_in_exempt_network_is_exempt(site):
    site.write(throttle={**LIMITS, "exempt_networks": ["192.0.2.0/24"]})
    for _ in range(4):
        _login(site, "a", "wrong", ip="::ffff:192.0.2.5")
    assert _login(site, "a", ip="::ffff:192.0.2.5").status == 0


# --- known clients and the per-user limit (issue 15, item 4b) ------------------------------------


def _fail_alice_from_many_addresses(site, count=8):
    for n in range(count):  # alice guessed at from many addresses: the per-user limit (8)
        assert _login(site, "a", "wrong", ip=f"203.0.113.{10 + n}").status == 1


def test_known_client_is_exempt_from_the_per_user_limit(site):
    assert _login(site, "a", ip="198.51.100.50").status == 0  # alice's phone, known from now on
    _fail_alice_from_many_addresses(site)
    stranger = _login(site, "a", ip="203.0.113.99")
    assert stranger.status == 111 and "per user in" in stranger.stderr
    known = _login(site, "a", ip="198.51.100.50")
    assert known.status == 0, known
    assert known.stderr == ""
    # the phone's own failures still count: the user+ip limit applies to a known client
    for _ in range(3):
        assert _login(site, "a", "wrong", ip="198.51.100.50").status == 1
    run = _login(site, "a", ip="198.51.100.50")
    assert run.status == 111 and "per user+ip" in run.stderr


def test_known_client_is_known_for_that_user_only_and_within_the_window(site):
    assert _login(site, "b", ip="198.51.100.51").status == 0  # bob's client, not alice's
    _fail_alice_from_many_addresses(site)
    assert _login(site, "a", ip="198.51.100.51").status == 111
    # a client last seen before the window is a stranger again
    from dovecot_appauth.cli import schema
    from dovecot_appauth.store import utc_timestamp

    engine = schema.make_engine(site.dsn)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO known_clients (uid, client, last_login) VALUES ('alice@example.com', '198.51.100.52', "
                f"'{utc_timestamp(time.time() - 31 * 86400)}')")
    finally:
        engine.dispose()
    assert _login(site, "a", ip="198.51.100.52").status == 111
    site.write(throttle={**LIMITS, "known_client_days": 60})
    assert _login(site, "a", ip="198.51.100.52").status == 0


def test_database_without_known_clients_says_upgrade_db(site):
    """A database upgraded before known clients existed: logins go on, each says what to run."""
    from dovecot_appauth.cli import schema

    engine = schema.make_engine(site.dsn)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE known_clients")
    finally:
        engine.dispose()
    ok = _login(site, "a")
    assert ok.status == 0
    [line] = ok.lines
    assert "not recorded as a known client" in line and "run 'dovecot-appauth upgrade-db'" in line
    _fail_alice_from_many_addresses(site)  # the per-user limit needs the table: fail closed
    run = _login(site, "a")
    assert run.status == 111 and "brute-force limiter unavailable" in run.stderr and "upgrade-db" in run.stderr
    run_cli(site.path, "upgrade-db")
    assert _login(site, "a", ip="203.0.113.99").status == 111  # a stranger, at the per-user limit
    bob = _login(site, "b")
    assert (bob.status, bob.stderr) == (0, ""), bob  # the table is back: nothing to say


def test_known_clients_off(site):
    site.write(throttle={**LIMITS, "known_client_days": 0})
    assert _login(site, "a", ip="198.51.100.50").status == 0
    _fail_alice_from_many_addresses(site)
    assert _login(site, "a", ip="198.51.100.50").status == 111


# --- through a real Dovecot --------------------------------------------------------------------


@pytest.mark.dovecot
def test_throttle_through_dovecot(dovecot, sqlite_config):
    from tests.support.dovecot import checkpassword_passdb

    with open(sqlite_config.path, "a") as f:
        f.write("\n[throttle]\nmax_per_user_ip = 2\ndelay = 0\n")
    pw = sqlite_config.create_password("throttled@example.com")["password"]
    dovecot.reconfigure(passdb=checkpassword_passdb(sqlite_config.path))
    for _ in range(2):
        ok, text = dovecot.imap_login("throttled@example.com", "wrong-password", client_ip="100.64.7.7")
        assert not ok and "AUTHENTICATIONFAILED" in text
    ok, text = dovecot.imap_login("throttled@example.com", pw, client_ip="100.64.7.7")
    assert not ok and "UNAVAILABLE" in text, text
    assert dovecot.wait_for_log(r"dovecot-appauth: user throttled@example.com from 100\.64\.7\.7: throttled")
    ok, text = dovecot.imap_login("throttled@example.com", pw, client_ip="100.64.7.8")
    assert ok, text
    sqlite_config.cli("throttle", "reset", "--ip", "100.64.7.7")
    ok, text = dovecot.imap_login("throttled@example.com", pw, client_ip="100.64.7.7")
    assert ok, text
    # an IPv6 client is counted per /64: a new address for every guess does not help
    for host in ("a", "b"):
        ok, _ = dovecot.imap_login("throttled@example.com", "wrong-password", client_ip=f"2001:db8:7:7::{host}")
        assert not ok
    ok, text = dovecot.imap_login("throttled@example.com", pw, client_ip="2001:db8:7:7::c")
    assert not ok and "UNAVAILABLE" in text, text
    # and an IPv4-mapped address is its IPv4 address
    for _ in range(2):
        ok, _ = dovecot.imap_login("throttled@example.com", "wrong-password", client_ip="100.64.7.9")
        assert not ok
    ok, text = dovecot.imap_login("throttled@example.com", pw, client_ip="::ffff:100.64.7.9")
    assert not ok and "UNAVAILABLE" in text, text
