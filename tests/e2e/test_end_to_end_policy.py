"""Issue 7 end to end: per-password policies, audit events and alerts through a real Dovecot 2.3.

One Dovecot and one SQLite config per module; the audit runs with the test MaxMind files
only (no DNS, no RDAP, no lists), so a login costs a few milliseconds. Policies and the
alert history are seeded with plain SQL, as the plugin or an earlier login would have left
them; the policies themselves are set through the CLI once, where the CLI is the point.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import pytest

from dovecot_appauth.hashing import generate_password, hash_password
from dovecot_appauth.store import utc_timestamp
from tests.conftest import AppauthConfig, _give_to_dovecot
from tests.support.dovecot import DovecotServer, checkpassword_passdb, our_lines, settle_log

pytestmark = [pytest.mark.dovecot,
              pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")]

SECRETS: set[str] = set()
GLOBAL_NETWORKS = '["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]'
FRANKFURT_IP = "198.51.100.40"  # test MaxMind: DE, AS64501, 50.12,8.68 (20 km)
KHASAVYURT_IP = "203.0.113.40"  # test MaxMind: RU, AS64500, 43.25,46.59 (20 km), ~2,700 km away


def seed_password(cfg: AppauthConfig, user: str) -> tuple[int, str]:
    password = generate_password()
    SECRETS.add(password)
    with _db(cfg) as conn:
        pwid = conn.execute("INSERT INTO app_passwords (uid, password, comment) VALUES (?, ?, 'e2e')",
                            (user, hash_password(password))).lastrowid
    _give_to_dovecot(cfg.db_path.parent)
    return int(pwid), password


def _db(cfg: AppauthConfig) -> sqlite3.Connection:
    return sqlite3.connect(cfg.db_path, isolation_level=None)


def rows(cfg: AppauthConfig, sql: str, *params) -> list[tuple]:
    conn = _db(cfg)
    try:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def execute(cfg: AppauthConfig, sql: str, *params) -> None:
    conn = _db(cfg)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()



@pytest.fixture(scope="module")
def cfg(appauth_config_factory, mmdb_paths) -> AppauthConfig:
    city, asn = mmdb_paths
    extra = f"""
[audit.maxmind]
city = "{city}"
asn = "{asn}"

[audit.dns]
enabled = false
"""
    made = appauth_config_factory(audit=True, extra_toml=extra)
    notify_out = made.dir / "notify"
    notify_out.mkdir()
    notify_out.chmod(0o777)
    text = made.path.read_text().replace(
        "[audit]\n",
        f'[audit]\nglobal_networks = {GLOBAL_NETWORKS}\nsyslog_socket = ""\njournal = "no"\n'
        f'log_file = "{made.dir / "audit.log"}"\n', 1)
    made.path.write_text(text)
    (made.dir / "audit.log").touch()
    _give_to_dovecot(made.dir / "audit.log")
    return made


@pytest.fixture
def server(dovecot: DovecotServer, cfg: AppauthConfig) -> Iterator[DovecotServer]:
    base = cfg.path.read_text()
    dovecot.reconfigure(passdb=checkpassword_passdb(cfg.path))
    yield dovecot
    cfg.path.write_text(base)


@pytest.fixture(autouse=True)
def no_secret_in_dovecot_output(dovecot: DovecotServer) -> Iterator[None]:
    mark = dovecot.log_mark()
    yield
    time.sleep(0.05)
    text = dovecot.log_since(mark)
    leaked = sorted(s for s in SECRETS if s in text)
    assert not leaked, f"secrets in Dovecot's log: {leaked}"
    assert "Traceback" not in text, text


def _refused(server: DovecotServer, user: str, password: str, ip: str, pattern: str) -> str:
    mark = server.log_mark()
    ok, text = server.imap_login(user, password, client_ip=ip)
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    [line] = our_lines(settle_log(server, mark, r"dovecot-appauth: " + pattern))
    return line


# --- policies ---------------------------------------------------------------------------------


def test_service_policy(server, cfg):
    pwid, password = seed_password(cfg, "svc@example.com")
    cfg.cli("password", "set", str(pwid), "--services", "pop3,smtp")
    line = _refused(server, "svc@example.com", password, FRANKFURT_IP, "user svc")
    assert f"user svc@example.com: app password #{pwid} refused: service imap not allowed (only pop3,smtp)" in line
    assert rows(cfg, "SELECT count(*) FROM log WHERE pwid = ?", pwid) == [(0,)]
    assert rows(cfg, "SELECT result, rule, reason, authenticated, service FROM audit_events WHERE pwid = ?",
                pwid) == [("refused", "policy", "service imap not allowed (only pop3,smtp)", 0, "imap")]
    ok, text = server.pop3_login("svc@example.com", password, client_ip=FRANKFURT_IP)
    assert ok, text
    rc, out = server.doveadm_auth_test("svc@example.com", password, service="smtp", rip=FRANKFURT_IP)
    assert rc == 0, out
    assert [r[0] for r in rows(cfg, "SELECT service FROM log WHERE pwid = ? ORDER BY id", pwid)] == ["pop3", "smtp"]


def test_network_policy(server, cfg):
    pwid, password = seed_password(cfg, "net@example.com")
    execute(cfg, "INSERT INTO app_password_policy (pwid, networks) VALUES (?, '198.51.100.0/25,2001:db8::/32')",
            pwid)
    line = _refused(server, "net@example.com", password, KHASAVYURT_IP, "user net")
    assert (f"user net@example.com: app password #{pwid} refused: source {KHASAVYURT_IP} not allowed "
            "(only from 198.51.100.0/25,2001:db8::/32)") in line
    assert server.imap_login("net@example.com", password, client_ip=FRANKFURT_IP).ok
    assert server.imap_login("net@example.com", password, client_ip="2001:db8::9").ok
    assert rows(cfg, "SELECT src_ip FROM log WHERE pwid = ? ORDER BY id", pwid) == [(FRANKFURT_IP,), ("2001:db8::9",)]


def test_expired_password_is_refused_like_a_revoked_one(server, cfg):
    pwid, password = seed_password(cfg, "old@example.com")
    _, other = seed_password(cfg, "old@example.com")
    assert server.imap_login("old@example.com", password, client_ip=FRANKFURT_IP).ok
    execute(cfg, "INSERT INTO app_password_policy (pwid, expires) VALUES (?, ?)", pwid,
            utc_timestamp(time.time() - 60))
    line = _refused(server, "old@example.com", password, FRANKFURT_IP, "user old")
    assert f"user old@example.com: refused expired app password #{pwid} (expired " in line
    # one audit event (the leaked-password one: the password was right): the report's blocked users list it
    [(result, rule, reason, authenticated)] = rows(
        cfg, "SELECT result, rule, reason, authenticated FROM audit_events WHERE pwid = ? AND result = 'refused'", pwid)
    assert (result, rule, authenticated) == ("refused", "leaked-password", 0)
    assert reason.startswith(f"right password of expired app password #{pwid} (expired ")
    assert rows(cfg, "SELECT count(*) FROM log WHERE pwid = ?", pwid) == [(1,)]  # only the first login
    assert server.imap_login("old@example.com", other, client_ip=FRANKFURT_IP).ok
    # an expiry in the future is no limit yet
    execute(cfg, "UPDATE app_password_policy SET expires = ? WHERE pwid = ?", utc_timestamp(time.time() + 3600),
            pwid)
    assert server.imap_login("old@example.com", password, client_ip=FRANKFURT_IP).ok


def test_database_without_side_tables_still_logs_in(server, cfg, appauth_config_factory):
    """An old database (before upgrade-db): logins work, one line asks for the upgrade."""
    old = appauth_config_factory(audit=False)
    execute(old, "DROP TABLE app_password_policy")
    execute(old, "DROP TABLE audit_events")
    pwid, password = seed_password(old, "legacy@example.com")
    server.reconfigure(passdb=checkpassword_passdb(old.path))
    try:
        mark = server.log_mark()
        ok, text = server.imap_login("legacy@example.com", password, client_ip=FRANKFURT_IP)
        assert ok, text
        lines = our_lines(settle_log(server, mark, "upgrade-db"))
        assert len(lines) == 1 and "run 'dovecot-appauth upgrade-db'" in lines[0], lines
        assert rows(old, "SELECT pwid FROM log") == [(pwid,)]
    finally:
        server.reconfigure(passdb=checkpassword_passdb(cfg.path))


# --- audit events and alerts --------------------------------------------------------------------


def test_successful_login_is_an_audit_event(server, cfg):
    pwid, password = seed_password(cfg, "event@example.com")
    assert server.imap_login("event@example.com", password, client_ip=FRANKFURT_IP).ok
    [event] = rows(cfg, "SELECT uid, pwid, service, src_ip, country, asn, as_org, place, latitude, longitude, "
                        "accuracy_km, result, authenticated, alert FROM audit_events WHERE uid = ?",
                   "event@example.com")
    assert event == ("event@example.com", pwid, "imap", FRANKFURT_IP, "DE", 64501, "Example Telecom GmbH",
                     "Frankfurt am Main, Hesse, Germany", 50.1188, 8.6843, 20, "unknown", 1, None)


def _seed_history(cfg: AppauthConfig, user: str, pwid: int, minutes_ago: float) -> None:
    execute(cfg, "INSERT INTO audit_events (timestamp, uid, pwid, service, src_ip, country, asn, latitude, "
                 "longitude, accuracy_km, result, authenticated) "
                 "VALUES (?, ?, ?, 'imap', ?, 'DE', 64501, 50.1188, 8.6843, 20, 'unknown', 1)",
            utc_timestamp(time.time() - minutes_ago * 60), user, pwid, FRANKFURT_IP)


def test_alert_deny_from_seeded_history(server, cfg):
    pwid, password = seed_password(cfg, "traveller@example.com")
    _seed_history(cfg, "traveller@example.com", pwid, 24 * 60)
    _seed_history(cfg, "traveller@example.com", pwid, 30)  # Frankfurt half an hour ago
    notify = cfg.dir / "notify" / "alert.json"
    cfg.path.write_text(cfg.path.read_text() + (
        '\n[alerts]\nenabled = true\naction = "deny"\nmax_speed_kmh = 1000\nlookback_days = 30\n'
        f'notify_command = "cat > {notify}"\n'))
    line = _refused(server, "traveller@example.com", password, KHASAVYURT_IP, "user traveller")
    assert (f"user traveller@example.com: login from {KHASAVYURT_IP} refused: alert "
            "impossible-travel,new-country,new-asn") in line
    assert rows(cfg, "SELECT count(*) FROM log WHERE pwid = ?", pwid) == [(0,)]
    [event] = rows(cfg, "SELECT result, rule, alert, authenticated, country FROM audit_events "
                        "WHERE uid = ? AND src_ip = ?", "traveller@example.com", KHASAVYURT_IP)
    assert event == ("refused", "alert", "impossible-travel,new-country,new-asn", 0, "RU")
    audit = [x for x in (cfg.dir / "audit.log").read_text().splitlines() if "traveller@" in x]
    assert audit[-1].endswith(", alert=impossible-travel,new-country,new-asn, alert_action=deny"), audit[-1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (notify.exists() and notify.read_text().endswith("\n")):
        time.sleep(0.05)
    sent = json.loads(notify.read_text())
    assert sent["uid"] == "traveller@example.com" and sent["src_ip"] == KHASAVYURT_IP
    assert [a["kind"] for a in sent["alerts"]] == ["impossible-travel", "new-country", "new-asn"]
    assert sent["action"] == "deny"
    # the user's usual place still works
    assert server.imap_login("traveller@example.com", password, client_ip=FRANKFURT_IP).ok


def test_alert_log_lets_the_login_through(server, cfg):
    pwid, password = seed_password(cfg, "roamer@example.com")
    _seed_history(cfg, "roamer@example.com", pwid, 3 * 24 * 60)  # three days ago: travel is possible
    cfg.path.write_text(cfg.path.read_text() + '\n[alerts]\nenabled = true\naction = "log"\n')
    mark = server.log_mark()
    ok, text = server.imap_login("roamer@example.com", password, client_ip=KHASAVYURT_IP)
    assert ok, text
    [line] = our_lines(settle_log(server, mark, "user roamer"))
    assert "user roamer@example.com: login alert new-country,new-asn from 203.0.113.40" in line
    assert rows(cfg, "SELECT result, alert, authenticated FROM audit_events WHERE uid = ? AND src_ip = ?",
                "roamer@example.com", KHASAVYURT_IP) == [("unknown", "new-country,new-asn", 1)]
    assert rows(cfg, "SELECT count(*) FROM log WHERE pwid = ?", pwid) == [(1,)]
