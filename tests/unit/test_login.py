"""The login: `decide()` on a real SQLite store, `parse_args()`, and the installed program.

Program-level tests run the real console script `dovecot-appauth-checkpassword` next to
sys.executable as Dovecot does: the request on fd 3, a pipe on fd 4, Dovecot's
environment (no PATH, no HOME) and, where said, Dovecot's own checkpassword-reply.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dovecot_appauth import hashing
from dovecot_appauth.cli import schema
from dovecot_appauth.config import load
from dovecot_appauth.core import Credentials, ExitCode, Misuse, TempFail, decode_reply, read_environment
from dovecot_appauth.login import Options, decide, parse_args
from tests.support.common import new_server_dir

PROGRAM = Path(sys.executable).parent / "dovecot-appauth-checkpassword"
DOVECOT_HELPER = "/usr/lib/dovecot/checkpassword-reply"
NOW = 1_700_000_000.5

ALICE_1 = "Ab12-Cd34-Ef56-Gh78"
ALICE_2 = "Zz99-Yy88-Xx77-Ww66"
ALICE_OLD = "Old1-Old2-Old3-Old4"
CAROL_OLD = "Car0-Car1-Car2-Car3"
DAVE = "Dave-0000-1111-2222"
NASTY_VALUE = "a\tb\nc\rd\x01e"

USERDB = {"uid": "5000", "gid": "5001", "home": "/srv/mail/%d/%n", "mail": "maildir:~/Maildir"}
EXPECTED_FIELDS = [
    ("userdb_uid", "5000"),
    ("userdb_gid", "5001"),
    ("userdb_home", "/srv/mail/example.com/alice"),
    ("userdb_mail", "maildir:~/Maildir"),
    ("userdb_quota_rule", "*:storage=1G"),
]


def _toml(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a JSON string is a TOML basic string


@dataclass
class Site:
    """A config file with audit disabled and an initialised SQLite database."""

    dir: Path
    path: Path
    db: Path
    ids: dict[str, int] = field(default_factory=dict)
    hashes: list[str] = field(default_factory=list)

    def write(self, *, dsn: str | None = None, auth: dict | None = None, extra: dict | None = None,
              timeout: float = 2.0, audit: dict | None = None) -> None:
        lines = ["[database]", f"dsn = {_toml(dsn or f'sqlite:///{self.db}')}", f"connect_timeout = {timeout}",
                 "", "[auth]"]
        lines += [f"{k} = {_toml(v)}" for k, v in (auth or {}).items()]
        lines += ["", "[userdb]"] + [f"{k} = {_toml(v)}" for k, v in USERDB.items()]
        lines += ["", "[userdb.extra]", 'quota_rule = "*:storage=1G"']
        lines += [f"{k} = {_toml(v)}" for k, v in (extra or {}).items()]
        lines += ["", "[audit]"] + [f"{k} = {_toml(v)}" for k, v in (audit or {"enabled": False}).items()] + [""]
        if audit:  # no source that could reach the network
            lines += ["[audit.dns]", "enabled = false", "", "[audit.rdap]", "enabled = false", ""]
        self.path.write_text("\n".join(lines))
        os.chmod(self.path, 0o644)

    def config(self):
        return load(str(self.path))

    def log(self) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT pwid, service, src_ip, src_rdns, src_loc, src_isp, timestamp FROM log "
                                "ORDER BY id").fetchall()
        finally:
            conn.close()

    @property
    def secrets(self) -> list[str]:
        return [ALICE_1, ALICE_2, ALICE_OLD, CAROL_OLD, DAVE, *self.hashes]


@pytest.fixture
def site():
    directory = new_server_dir("appauth-login-")  # 0755: reachable by an unprivileged user too
    try:
        db = directory / "appauth.sqlite"
        s = Site(dir=directory, path=directory / "config.toml", db=db)
        engine = schema.make_engine(f"sqlite:///{db}")
        schema.init_db(engine)

        def add(key, uid, password, comment=None):
            hashed = hashing.hash_password(password)
            s.hashes.append(hashed)
            s.ids[key] = schema.create_password(engine, uid, hashed, comment)

        add("alice_old", "alice@example.com", ALICE_OLD, "old phone")
        add("alice_1", "alice@example.com", ALICE_1, "laptop")
        add("alice_2", "alice@example.com", ALICE_2, "phone")
        add("carol_old", "carol@example.com", CAROL_OLD)
        add("dave", "dave@example.com", DAVE)
        assert schema.revoke_password(engine, s.ids["alice_old"])
        assert schema.revoke_password(engine, s.ids["carol_old"])
        engine.dispose()
        os.chmod(db, 0o644)
        s.write()
        yield s
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _request(user: str, password: str | None, ip: str = "198.51.100.7", service: str = "imap", **env):
    base = {"PROTO": "TCP", "SERVICE": service, "TCPREMOTEIP": ip, "REMOTE_IP": ip, "TCPREMOTEPORT": "50000",
            "TCPLOCALIP": "192.0.2.1", "TCPLOCALPORT": "993", **env}
    return read_environment(Credentials(user, password, bool(password)), base)


def _decide(site: Site, request, config=None):
    err = io.StringIO()
    outcome = decide(request, config or site.config(), now=NOW, stderr=err)
    for secret in site.secrets:
        assert secret not in err.getvalue()
        assert secret not in (outcome.message or "")
    return outcome, err.getvalue()


@pytest.fixture
def verify_calls(monkeypatch):
    """Count hash checks (real ones still run): the unknown-user path must cost the same."""
    calls: list[str] = []
    real = hashing.verify

    def counting(password, stored):
        calls.append(stored)
        return real(password, stored)

    monkeypatch.setattr(hashing, "verify", counting)
    return calls


# --- decide(): verify mode -----------------------------------------------------------------


def test_right_password_ok_with_canonical_user_and_fields(site):
    outcome, err = _decide(site, _request("Alice@Example.COM", ALICE_1))
    assert outcome.exit_code is ExitCode.OK
    assert outcome.user == "alice@example.com"
    assert outcome.fields == EXPECTED_FIELDS
    assert outcome.message is None and err == ""
    assert site.log() == [(site.ids["alice_1"], "imap", "198.51.100.7", "<>", "", "", "2023-11-14 22:13:20.500")]


def test_second_password_of_same_user_works_and_is_recorded_as_itself(site):
    outcome, _ = _decide(site, _request("alice@example.com", ALICE_2, service="pop3"))
    assert outcome.exit_code is ExitCode.OK
    assert [(r[0], r[1]) for r in site.log()] == [(site.ids["alice_2"], "pop3")]


def test_repeated_login_is_recorded_once_within_dedup_window(site):
    for _ in range(3):
        assert _decide(site, _request("alice@example.com", ALICE_1))[0].exit_code is ExitCode.OK
    assert _decide(site, _request("alice@example.com", ALICE_1, service="smtp"))[0].exit_code is ExitCode.OK
    assert [r[1] for r in site.log()] == ["imap", "smtp"]


def test_wrong_password_fails_silently(site):
    outcome, err = _decide(site, _request("alice@example.com", "Ab12-Cd34-Ef56-Gh79"))
    assert outcome.exit_code is ExitCode.FAIL
    assert outcome.message is None and err == ""
    assert outcome.user is None and outcome.fields == []
    assert site.log() == []


def test_password_of_another_user_fails(site):
    assert _decide(site, _request("alice@example.com", DAVE))[0].exit_code is ExitCode.FAIL


def test_unknown_user_fails(site):
    outcome, err = _decide(site, _request("nobody@example.com", ALICE_1))
    assert outcome.exit_code is ExitCode.FAIL
    assert outcome.message is None and err == ""


def test_unknown_user_costs_the_same_hash_work(site, verify_calls):
    _decide(site, _request("dave@example.com", "wrong-password"))  # a known user with one password
    known = len(verify_calls)
    verify_calls.clear()
    _decide(site, _request("nobody@example.com", "wrong-password"))
    assert known == 10  # [auth] hash_checks, default 10
    assert len(verify_calls) == known
    assert hashing.scheme_of(verify_calls[0]) == "sha512-crypt"  # the configured scheme


def _add_passwords(site, uid: str, count: int) -> None:
    engine = schema.make_engine(f"sqlite:///{site.db}")
    try:
        for n in range(count):
            schema.create_password(engine, uid, hashing.hash_password(f"Many-{n:04d}-pass-word"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("hash_checks", [10, 3])
def test_wrong_password_costs_hash_checks_whatever_the_number_of_passwords(site, verify_calls, hash_checks):
    """Users with 1, 3 and 10 app passwords (alice also has a revoked one): a wrong password
    costs exactly `hash_checks` verifications, as an unknown user does; a user with more
    passwords than that costs one per password (the documented limit of the padding)."""
    site.write(auth={"hash_checks": hash_checks})
    for uid, count in (("one@example.com", 1), ("three@example.com", 3), ("ten@example.com", 10)):
        _add_passwords(site, uid, count)
    for uid, count in (("one@example.com", 1), ("three@example.com", 3), ("ten@example.com", 10),
                       ("alice@example.com", 3), ("nobody@example.com", 0)):
        verify_calls.clear()
        assert _decide(site, _request(uid, "Not-Any-Of-Them"))[0].exit_code is ExitCode.FAIL
        assert len(verify_calls) == max(hash_checks, count), uid
    verify_calls.clear()  # the right password stops at its row: no padding for a success
    assert _decide(site, _request("one@example.com", "Many-0000-pass-word"))[0].exit_code is ExitCode.OK
    assert len(verify_calls) == 1


def test_non_utf8_password_fails_with_the_same_hash_work(site, verify_calls):
    request = _request("dave@example.com", None)  # parse_request gives None for non-UTF-8
    outcome, _ = _decide(site, request)
    assert outcome.exit_code is ExitCode.FAIL
    assert len(verify_calls) == 10
    verify_calls.clear()
    assert _decide(site, _request("nobody@example.com", None))[0].exit_code is ExitCode.FAIL
    assert len(verify_calls) == 10


@pytest.mark.parametrize("password", [DAVE + "\0", "\0" + DAVE, DAVE + "\udc80"], ids=["nul-after", "nul-first",
                                                                                    "surrogate"])
def test_password_with_a_nul_or_a_surrogate_is_a_wrong_password_with_the_same_hash_work(site, verify_calls,
                                                                                       password):
    """serve's /verify JSON can carry them (fd 3 cannot): a wrong password, counted as one,
    never an internal error (libcrypt raised ValueError) and never a match of what a C
    string would see (DAVE, before the NUL)."""
    outcome, err = _decide(site, _request("dave@example.com", password))
    assert (outcome.exit_code, outcome.message, err) == (ExitCode.FAIL, None, "")
    assert len(verify_calls) == 10


def test_revoked_password_refused_with_reason(site):
    outcome, _ = _decide(site, _request("alice@example.com", ALICE_OLD))
    assert outcome.exit_code is ExitCode.FAIL
    assert "revoked" in outcome.message
    assert f"#{site.ids['alice_old']}" in outcome.message
    assert "alice@example.com" in outcome.message
    assert site.log() == []  # never recorded as a use


def test_revoked_only_user_refused(site):
    outcome, _ = _decide(site, _request("carol@example.com", CAROL_OLD))
    assert outcome.exit_code is ExitCode.FAIL
    assert f"#{site.ids['carol_old']}" in outcome.message
    assert site.log() == []


@pytest.mark.parametrize(
    ("ip", "blocked_by"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),  # IPv4-mapped
        ("2001:db8:1::5", "2001:db8:1::/48"),
        ("203.0.113.9", "203.0.113.9"),
        ("198.51.100.7", None),
        ("2001:db8:2::1", None),
        ("::ffff:198.51.100.7", None),
    ],
)
def test_disallow_passwords_from(site, ip, blocked_by):
    site.write(auth={"disallow_passwords_from": ["192.0.2.0/24", "2001:db8:1::/48", "203.0.113.9"]})
    outcome, _ = _decide(site, _request("alice@example.com", ALICE_1, ip=ip))
    if blocked_by is None:
        assert outcome.exit_code is ExitCode.OK
        return
    assert outcome.exit_code is ExitCode.FAIL
    assert ip in outcome.message and blocked_by in outcome.message
    assert "not accepted" in outcome.message
    assert site.log() == []


def test_disallow_passwords_from_as_string(site):
    site.write(auth={"disallow_passwords_from": "10.0.0.0/8, 192.0.2.0/24"})
    assert _decide(site, _request("alice@example.com", ALICE_1, ip="192.0.2.1"))[0].exit_code is ExitCode.FAIL


def _insert_raw_row(site, uid: str, stored: str) -> int:
    conn = sqlite3.connect(site.db)
    try:
        conn.execute("INSERT INTO app_passwords (uid, password) VALUES (?, ?)", (uid, stored))
        conn.commit()
        return conn.execute("SELECT max(id) FROM app_passwords").fetchone()[0]
    finally:
        conn.close()


UNVERIFIABLE = [
    pytest.param("{PLAIN}cleartext", "unknown format", id="unknown-format"),
    pytest.param("{CRYPT}$6$rounds=1000000000000$abc$def", "libcrypt rejected", id="libcrypt-refuses-setting"),
    pytest.param("{BLF-CRYPT}$2y$10$tooshort", "bcrypt hash is malformed", id="malformed-bcrypt"),
    pytest.param("{ARGON2ID}$argon2id$v=19$broken", "argon2id hash is malformed", id="malformed-argon2"),
    # libcrypt raised ValueError: every login of the user was "internal error (ValueError)"
    pytest.param("{CRYPT}$6$salt\0salt$a2/CTv42f5VN62PoLuodI", "sha512-crypt hash contains a NUL byte",
                 id="nul-in-sha512"),
]


@pytest.mark.parametrize(("stored", "reason"), UNVERIFIABLE)
def test_unverifiable_row_does_not_stop_a_matching_one(site, stored, reason):
    bad_id = _insert_raw_row(site, "erin@example.com", stored)  # tried first: the lower id
    _add_passwords(site, "erin@example.com", 1)
    outcome, err = _decide(site, _request("erin@example.com", "Many-0000-pass-word"))
    assert outcome.exit_code is ExitCode.OK and outcome.user == "erin@example.com"
    # the admin hears of the broken row, by id, never by content
    assert f"#{bad_id}" in err and reason in err and stored not in err and err.count("\n") == 1


@pytest.mark.parametrize(("stored", "reason"), UNVERIFIABLE)
def test_unverifiable_row_and_no_match_is_a_temporary_failure_not_counted(site, stored, reason):
    bad_id = _insert_raw_row(site, "dave@example.com", stored)
    with pytest.raises(TempFail) as info:
        _decide(site, _request("dave@example.com", "cleartext"))
    message = str(info.value)
    assert f"#{bad_id} (" in message and reason in message and "could not be verified" in message
    assert stored not in message and "cleartext" not in message and "\n" not in message
    conn = sqlite3.connect(site.db)
    try:  # not a failed login for the limiter
        assert conn.execute("SELECT count(*) FROM auth_failures").fetchone()[0] == 0
    finally:
        conn.close()


def test_unverifiable_revoked_row_is_skipped(site):
    bad_id = _insert_raw_row(site, "dave@example.com", "{PLAIN}cleartext")
    conn = sqlite3.connect(site.db)
    conn.execute("UPDATE app_passwords SET deleted = datetime('now') WHERE id = ?", (bad_id,))
    conn.commit()
    conn.close()
    outcome, err = _decide(site, _request("dave@example.com", "cleartext"))
    assert outcome.exit_code is ExitCode.FAIL and outcome.message is None and err == ""


def test_log_row_failure_does_not_refuse_a_right_password(site):
    site.write(timeout=0.2)
    other = sqlite3.connect(site.db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        outcome, err = _decide(site, _request("alice@example.com", ALICE_1))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert outcome.exit_code is ExitCode.OK
    assert "not recorded" in err and "locked" in err
    assert err.count("\n") == 1


# audit on (Site.write turns its network sources off): what a refusal records needs none
AUDIT_EVENTS_ONLY = {"enabled": True, "record_events": True}


def test_successful_login_commits_its_rows_once_before_answering(site):
    """Audit event, `log` row and known client of a successful login: one transaction, committed by
    decide() itself, also with a store it leaves open (serve's pool)."""
    from dovecot_appauth.store import open_store

    site.write(audit={"enabled": True, "record_events": True, "global_networks": ["198.51.100.0/24"]})
    store = open_store(f"sqlite:///{site.db}", 2.0)
    statements: list[str] = []
    try:
        store.conn.set_trace_callback(statements.append)
        outcome = decide(_request("alice@example.com", ALICE_1), site.config(), now=NOW, stderr=io.StringIO(),
                         store=store)
        assert outcome.exit_code is ExitCode.OK
        assert not store.conn.in_transaction  # committed before the answer
    finally:
        store.close()
    verbs = [s.split()[0].upper() for s in statements]
    assert verbs.count("BEGIN") == 1 and verbs.count("COMMIT") == 1, statements
    first, last = verbs.index("BEGIN"), verbs.index("COMMIT")
    writes = [s.split()[2] for s in statements[first + 1:last]]
    # the limiter's known-client row belongs to the same transaction (issue 13: one per login)
    assert writes == ["audit_events", "log", "known_clients"], statements
    assert all(v == "SELECT" for v in verbs[last + 1:]), statements
    assert len(site.log()) == 1 and len(_events(site)) == 1


def test_failed_commit_is_said_and_the_right_password_still_logs_in(site):
    """A commit that fails (here a foreign key checked at COMMIT, on a row pending when the
    request began) is one stderr line; the answer stands, as for a failed log insert."""
    from dovecot_appauth.store import open_store

    store = open_store(f"sqlite:///{site.db}", 2.0)
    try:
        store.conn.execute("PRAGMA defer_foreign_keys = ON")
        store.conn.execute("BEGIN")
        store.conn.execute("INSERT INTO log (pwid, service, src_ip, timestamp) VALUES (999999, 'x', 'y', 'z')")
        err = io.StringIO()
        outcome = decide(_request("alice@example.com", ALICE_1), site.config(), now=NOW, stderr=err, store=store)
    finally:
        store.close()
    assert outcome.exit_code is ExitCode.OK
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "not recorded" in lines[0] and "FOREIGN KEY" in lines[0], lines
    assert site.log() == []  # rolled back together


def _events(site: Site) -> list[tuple]:
    conn = sqlite3.connect(site.db)
    try:
        return conn.execute("SELECT uid, pwid, service, src_ip, result, rule, reason, authenticated "
                            "FROM audit_events ORDER BY id").fetchall()
    finally:
        conn.close()


def test_expired_password_refusal_is_an_audit_event(site):
    """Like the service and network refusals: the report's "blocked users and why" lists it."""
    engine = schema.make_engine(f"sqlite:///{site.db}")
    try:
        schema.set_policy(engine, site.ids["alice_1"], expires=NOW - 3600)
    finally:
        engine.dispose()
    site.write(audit=AUDIT_EVENTS_ONLY)
    outcome, _ = _decide(site, _request("alice@example.com", ALICE_1))
    assert outcome.exit_code is ExitCode.FAIL
    assert outcome.message == (f"user alice@example.com: refused expired app password #{site.ids['alice_1']} "
                               "(expired 2023-11-14 21:13:20 UTC)")
    # one event, the leaked-password one (the password was right): no second "policy" row
    assert _events(site) == [("alice@example.com", site.ids["alice_1"], "imap", "198.51.100.7", "refused",
                              "leaked-password", f"right password of expired app password #{site.ids['alice_1']} "
                              "(expired 2023-11-14 21:13:20 UTC)", 0)]
    assert site.log() == []


@pytest.mark.parametrize("audit", [None, AUDIT_EVENTS_ONLY])
@pytest.mark.parametrize("ip", ["not-an-ip", "198.51.100.7:993", "198.51.100.300", "2001:db8::1%eth0", "a\x01b"])
def test_client_address_that_is_not_an_address_is_refused_clearly(site, ip, audit):
    """Not an internal error (audit on) and not a login that every address check skipped (audit off)."""
    site.write(audit=audit, auth={"disallow_passwords_from": ["0.0.0.0/0", "::/0"]})
    outcome, _ = _decide(site, _request("alice@example.com", ALICE_1, ip=ip))
    assert outcome.exit_code is ExitCode.FAIL
    assert outcome.message == (f"user alice@example.com: refused: client address {ip!r} (TCPREMOTEIP) "
                               "is not an IP address")
    assert site.log() == []


@pytest.mark.parametrize("ip", ["0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "::1",
                                "::ffff:192.0.2.1", "2001:db8::1", "2001:db8::g", " 192.0.2.1", "\u0661.2.3.4"])
def test_address_check_agrees_with_inet_pton(ip):
    import socket

    from dovecot_appauth.login import _is_ip_address

    def parses(family: int) -> bool:
        try:
            socket.inet_pton(family, ip)
        except (OSError, ValueError):
            return False
        return True

    assert _is_ip_address(ip) == (parses(socket.AF_INET) or parses(socket.AF_INET6))


def test_service_is_stored_in_lower_case(site):
    assert _decide(site, _request("alice@example.com", ALICE_1, service="IMAP"))[0].exit_code is ExitCode.OK
    assert _decide(site, _request("alice@example.com", ALICE_1, service="imap"))[0].exit_code is ExitCode.OK
    assert [r[1] for r in site.log()] == ["imap"]  # one service: the second login is the same use


# --- decide(): lookups and internal failures -------------------------------------------------


def test_lookup_known_user(site):
    outcome, _ = _decide(site, _request("ALICE@example.com", None, AUTHORIZED="1"))
    assert outcome.exit_code is ExitCode.LOOKUP_OK
    assert outcome.user == "alice@example.com"
    assert outcome.fields == EXPECTED_FIELDS
    assert site.log() == []


@pytest.mark.parametrize("user", ["nobody@example.com", "carol@example.com"])  # unknown, revoked-only
def test_lookup_unknown_user(site, user):
    outcome, _ = _decide(site, _request(user, None, AUTHORIZED="1"))
    assert outcome.exit_code is ExitCode.LOOKUP_UNKNOWN


def test_credentials_lookup_is_tempfail(site):
    request = _request("alice@example.com", None, AUTHORIZED="1", CREDENTIALS_LOOKUP="1", SCHEME="CRAM-MD5")
    with pytest.raises(TempFail, match="credentials lookup") as info:
        _decide(site, request)
    assert all(secret not in str(info.value) for secret in site.secrets)


def test_database_missing_is_tempfail(site):
    site.write(dsn=f"sqlite:///{site.dir / 'missing.sqlite'}")
    with pytest.raises(TempFail, match="cannot open SQLite database"):
        _decide(site, _request("alice@example.com", ALICE_1))
    assert not (site.dir / "missing.sqlite").exists()


# --- decide(): --audit-chain ----------------------------------------------------------------


def _decide_chain(site: Site, request):
    err = io.StringIO()
    return decide(request, site.config(), now=NOW, audit_chain=True, stderr=err), err.getvalue()


def test_audit_chain_without_the_marker_refuses(site):
    """--audit-chain checks no password: without `appauth_ok=yes` from an earlier passdb that
    succeeded (first passdb, or no `skip = unauthenticated`) the login is refused (1, not 111:
    the example config lets an internal failure through)."""
    for env in ({}, {"APPAUTH_OK": "no"}, {"APPAUTH_OK": "1"}, {"APPAUTH_OKAY": "yes"}):
        outcome, err = _decide_chain(site, _request("anyone@example.com", "not-checked-by-anyone", **env))
        assert outcome.exit_code is ExitCode.FAIL, env
        assert outcome.message.startswith("user anyone@example.com: --audit-chain refused the login: "
                                          "no earlier passdb set appauth_ok=yes"), outcome.message
        assert "override_fields = appauth_ok=yes" in outcome.message
        assert "not-checked-by-anyone" not in outcome.message and err == ""


def test_audit_chain_with_the_marker_audits_and_answers(site):
    outcome, err = _decide_chain(site, _request("anyone@example.com", "checked-earlier", APPAUTH_OK="yes"))
    assert outcome.exit_code is ExitCode.OK, outcome.message
    assert outcome.user == "anyone@example.com" and "refused" not in err
    # lookups need no marker: they are answered "unknown" either way
    outcome, _ = _decide_chain(site, _request("anyone@example.com", None, AUTHORIZED="1"))
    assert outcome.exit_code is ExitCode.LOOKUP_UNKNOWN


# --- parse_args -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], Options()),
        (["/usr/lib/dovecot/checkpassword-reply"], Options(reply_argv=("/usr/lib/dovecot/checkpassword-reply",))),
        (["--config", "/etc/x.toml", "helper", "-x"], Options(config="/etc/x.toml", reply_argv=("helper", "-x"))),
        (["--config=/etc/x.toml", "--audit-chain"], Options(config="/etc/x.toml", audit_chain=True)),
        (["--", "--helper-with-dash"], Options(reply_argv=("--helper-with-dash",))),
        (["--debug", "--config", "c.toml", "helper", "--debug"],
         Options(config="c.toml", debug=True, reply_argv=("helper", "--debug"))),
        (["--help"], Options(show_help=True)),
        (["-h", "helper"], Options(show_help=True)),
    ],
)
def test_parse_args(argv, expected):
    assert parse_args(argv) == expected


@pytest.mark.parametrize("argv", [["--bogus"], ["--config"]])
def test_parse_args_misuse(argv):
    with pytest.raises(Misuse):
        parse_args(argv)


# --- the program, as Dovecot runs it --------------------------------------------------------


def _high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


@dataclass
class Run:
    status: int
    reply: bytes
    stderr: str
    stdout: str

    @property
    def fields(self):
        return decode_reply(self.reply)

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_program(site: Site, request: bytes | None, *args: str, env: dict | None = None, fd4: bool = True,
                helper: bool = False, user: str | None = None, config: bool = True,
                closed: tuple[int, ...] = ()) -> Run:
    """Run the installed checkpassword program with fd 3 (request) and fd 4 (reply pipe);
    `closed`: descriptors (1, 2) the program starts without."""
    argv = [str(PROGRAM)]
    if config:
        argv += ["--config", str(site.path)]
    argv += list(args)
    if helper:
        argv.append(DOVECOT_HELPER)
    environment = {"PROTO": "TCP", "SERVICE": "imap", "TCPREMOTEIP": "198.51.100.7", "REMOTE_IP": "198.51.100.7",
                   "TCPREMOTEPORT": "50000", "TCPLOCALIP": "127.0.0.1", "TCPLOCALPORT": "143",
                   "ORIG_UID": str(os.getuid()), **(env or {})}
    req_r = req_w = rep_r = rep_w = -1
    try:
        if request is not None:
            req_r, req_w = (_high(fd) for fd in os.pipe())
            os.write(req_w, request)
            os.close(req_w)
            req_w = -1
        if fd4:
            rep_r, rep_w = (_high(fd) for fd in os.pipe())

        def child() -> None:
            for source, target in ((req_r, 3), (rep_w, 4)):
                if source != -1:
                    os.dup2(source, target)  # inheritable
                else:
                    try:
                        os.close(target)
                    except OSError:
                        pass
            for fd in closed:
                os.close(fd)

        proc = subprocess.run(argv, env=environment, close_fds=False, preexec_fn=child, user=user,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        reply = b""
        if fd4:
            os.close(rep_w)
            rep_w = -1
            while chunk := os.read(rep_r, 65536):
                reply += chunk
    finally:
        for fd in (req_r, req_w, rep_r, rep_w):
            if fd != -1:
                os.close(fd)
    run = Run(proc.returncode, reply, proc.stderr.decode("utf-8", "replace"), proc.stdout.decode())
    for secret in site.secrets:
        assert secret not in run.stderr, "a password or hash reached stderr"
    assert "Traceback" not in run.stderr
    return run


def _req(user: str, password: str) -> bytes:
    return user.encode() + b"\0" + password.encode() + b"\0\0"


needs_dovecot_helper = pytest.mark.skipif(not os.access(DOVECOT_HELPER, os.X_OK),
                                          reason=f"{DOVECOT_HELPER} not installed (dovecot-core)")


def test_program_is_installed():
    assert os.access(PROGRAM, os.X_OK), f"{PROGRAM} missing: pip install -e . into this venv"


def test_program_without_fd3_is_usage_error(site):
    run = run_program(site, None, fd4=False)
    assert run.status == 2
    assert len(run.lines) == 1
    assert "usage: dovecot-appauth-checkpassword" in run.lines[0]


def test_program_help(site):
    run = run_program(site, None, "--help", config=False, fd4=False)
    assert run.status == 0
    assert "usage:" in run.stdout and "Exit status" in run.stdout


@pytest.mark.parametrize(
    "request_bytes",
    [b"alice@example.com\0secret", b"\0" + ALICE_1.encode() + b"\0\0", b"u\0" + b"p" * 509 + b"\0\0",
     b"alice\0a\0b\0\0"],
    ids=["missing-NUL", "empty-user", "oversize", "four-fields"],
)
def test_program_malformed_request(site, request_bytes):
    run = run_program(site, request_bytes)
    assert run.status == 2
    assert len(run.lines) == 1 and run.lines[0].startswith("dovecot-appauth: ")
    assert run.reply == b""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[database\n", "invalid TOML"),
        ("[auth]\ndedup_window = 'soon'\n", "dedup_window"),
        (None, "not found"),
    ],
    ids=["bad-toml", "wrong-type", "missing"],
)
def test_program_bad_config_is_tempfail(site, content, expected):
    if content is None:
        site.path.unlink()
    else:
        site.path.write_text(content)
    run = run_program(site, _req("alice@example.com", ALICE_1))
    assert run.status == 111
    assert len(run.lines) == 1 and expected in run.lines[0]


@pytest.mark.parametrize(("content", "expected"), [
    (b"[database]\ndsn = 'sqlite:///x'\n# caf\xe9\n", "config file is not UTF-8 (line 3): TOML must be UTF-8"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "invalid TOML: arrays or tables nested too deeply"),
], ids=["latin-1-byte", "nested-too-deeply"])
def test_program_config_that_tomllib_cannot_read_is_a_clear_config_error(site, content, expected):
    """Was "internal error (UnicodeDecodeError)" / "(RecursionError)": now the file and the line."""
    site.path.write_bytes(content)
    run = run_program(site, _req("alice@example.com", ALICE_1))
    assert run.status == 111
    assert run.lines == [f"dovecot-appauth: configuration: error: {site.path}: {expected}"]


def test_program_sqlite_dsn_with_a_nul_byte_is_a_clear_dsn_error(site):
    """sqlite3 raised ValueError ("internal error (ValueError)"): now the setting and the problem."""
    site.write(dsn=f"sqlite:///{site.db}%00.old")
    run = run_program(site, _req("alice@example.com", ALICE_1))
    assert run.status == 111
    assert run.lines == ["dovecot-appauth: [database] dsn: the SQLite file name contains a NUL byte (%00)"]


@pytest.mark.parametrize("closed", [(1,), (2,), (1, 2)], ids=["fd1", "fd2", "fd1-fd2"])
def test_program_started_without_stdout_or_stderr_answers_as_always(site, closed):
    """Python sets sys.stdout / sys.stderr to None when fd 1 / fd 2 is closed at start: the
    final flush and every line said (even main's own error handler) must not turn the
    answer into a traceback and exit 1 ("wrong password")."""
    ok = run_program(site, _req("alice@example.com", ALICE_1), closed=closed)
    assert ok.status == 0 and ok.fields[0] == ("user", "alice@example.com")
    assert run_program(site, _req("alice@example.com", "wrong"), closed=closed).status == 1
    revoked = run_program(site, _req("alice@example.com", ALICE_OLD), closed=closed)  # says a line
    assert revoked.status == 1 and revoked.reply == b""
    site.db.rename(site.db.with_suffix(".gone"))  # internal errors stay 111
    assert run_program(site, _req("alice@example.com", ALICE_1), closed=closed).status == 111
    site.path.unlink()  # a missing config: main's error handler says it
    assert run_program(site, _req("alice@example.com", ALICE_1), closed=closed).status == 111
    assert run_program(site, _req("alice@example.com", ALICE_1), "--nosuch", closed=closed).status == 2
    if 2 not in closed:
        assert "config file not found" in run_program(site, _req("alice@example.com", ALICE_1), closed=closed).stderr


def test_program_without_stderr_or_fd4_still_runs_the_reply_helper(site):
    """A manual run without fd 4 execs the reply helper; with fd 2 closed too, the flush of
    stderr before the exec (sys.stderr is None) must not turn the login into a 111."""
    run = run_program(site, _req("alice@example.com", ALICE_1), fd4=False, helper=True, closed=(2,))
    assert run.status == 0, run


def test_program_database_not_a_database(site):
    site.db.write_bytes(b"garbage, not SQLite" * 100)
    run = run_program(site, _req("alice@example.com", ALICE_1))
    assert run.status == 111
    assert len(run.lines) == 1 and str(site.db) in run.lines[0]


def test_program_database_missing(site):
    site.db.unlink()
    run = run_program(site, _req("alice@example.com", ALICE_1))
    assert run.status == 111
    assert len(run.lines) == 1 and "cannot open" in run.lines[0]


def test_program_database_unreadable(site):
    os.chmod(site.db, 0)
    # root reads anything: run as an unprivileged user, as Dovecot runs the program
    run = run_program(site, _req("alice@example.com", ALICE_1), user="nobody" if os.geteuid() == 0 else None)
    assert run.status == 111
    assert len(run.lines) == 1 and str(site.db) in run.lines[0]


@needs_dovecot_helper
def test_program_success_with_dovecot_helper(site):
    run = run_program(site, _req("Alice@Example.com", ALICE_1), helper=True)
    assert run.status == 0, run.stderr
    assert run.stderr == ""
    assert run.reply.startswith(b"user=alice@example.com\t")
    assert run.fields == [("user", "alice@example.com"), *EXPECTED_FIELDS]
    assert [r[0] for r in site.log()] == [site.ids["alice_1"]]


def test_program_writes_the_helpers_reply_itself_without_running_it(site, tmp_path):
    """With fd 4 open the helper is not run (one exec less per login): a helper that would
    fail proves it, and the reply is the helper's (see test_reply's byte comparison)."""
    helper = tmp_path / "helper-that-fails"
    helper.write_text("#!/bin/sh\necho ran >&2\nexit 111\n")
    helper.chmod(0o755)
    run = run_program(site, _req("Alice@Example.com", ALICE_1), str(helper))
    assert run.status == 0 and run.stderr == "", run.stderr
    assert run.fields == [("user", "alice@example.com"), *EXPECTED_FIELDS]
    # fd 4 not open (a manual run): the helper runs, as before
    run = run_program(site, _req("Alice@Example.com", ALICE_1), str(helper), fd4=False)
    assert run.status == 111 and run.stderr == "ran\n", run.stderr


def test_manual_run_without_fd4_never_writes_the_reply_into_a_file_it_opened(site):
    """Run by hand without fd 4, the first file the login opens would get descriptor 4,
    and the database stays open to the exit (store.close_for_exit): the reply must not be
    written into it (reply.hold_fd4)."""
    run = run_program(site, _req("Alice@Example.com", ALICE_1), fd4=False)  # no helper: write_fd4
    assert run.status == 0, run.stderr
    assert "fd 4 is not open" in run.stderr
    files = sorted(site.dir.glob("appauth.sqlite*"))
    assert Path(f"{site.db}-wal") in files  # the connection was left to the exit
    for path in files:
        assert b"quota_rule=" not in path.read_bytes(), f"the reply was written into {path.name}"
    conn = sqlite3.connect(site.db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert [r[0] for r in site.log()] == [site.ids["alice_1"]]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a login as root, then as user dovecot")
def test_a_wal_left_by_a_login_run_as_root_is_the_service_users(site):
    """An admin tests a login by hand as root (README); its connection is left open to the
    exit, so the -wal and -shm stay. SQLite gives them the database file's owner and mode,
    so the next login, as Dovecot runs it (user dovecot), still writes its rows."""
    from tests.support.common import dovecot_ids

    uid, gid = dovecot_ids()
    os.chown(site.dir, uid, gid)  # the database's directory is the service user's (README)
    os.chown(site.db, uid, gid)
    assert run_program(site, _req("alice@example.com", ALICE_1)).status == 0  # as root
    for suffix in ("-wal", "-shm"):
        st = os.stat(f"{site.db}{suffix}")
        assert (st.st_uid, st.st_gid) == (uid, gid), suffix
    run = run_program(site, _req("alice@example.com", ALICE_2), env={"TCPREMOTEIP": "198.51.100.8"}, user="dovecot")
    assert run.status == 0 and run.stderr == "", run.stderr
    assert [r[0] for r in site.log()] == [site.ids["alice_1"], site.ids["alice_2"]]


def _grow_wal(db: Path, size: int) -> None:
    """Append `size` bytes to the WAL of `db` from a process that exits without closing."""
    code = ("import os, sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "conn.execute('CREATE TABLE IF NOT EXISTS padding (x BLOB)')\n"
            "conn.execute('INSERT INTO padding VALUES (zeroblob(?))', (int(sys.argv[2]),))\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(db), str(size)], check=True, timeout=60)


def test_program_leaves_a_short_wal_to_the_next_login_and_closes_a_long_one(site):
    """store.close_for_exit: the per-login program leaves its connection open to the exit
    while the WAL is short (no checkpoint, no -wal/-shm to make again per login), and
    closes it once the WAL has grown past WAL_KEEP_BYTES, which, as the last connection,
    copies the WAL into the file and removes it; nothing committed is lost either way."""
    from dovecot_appauth.store import WAL_KEEP_BYTES

    wal = Path(f"{site.db}-wal")
    assert not wal.exists()
    assert run_program(site, _req("alice@example.com", ALICE_1)).status == 0
    assert run_program(site, _req("alice@example.com", ALICE_2), env={"TCPREMOTEIP": "198.51.100.8"}).status == 0
    short = wal.stat().st_size
    assert 0 < short < WAL_KEEP_BYTES
    _grow_wal(site.db, WAL_KEEP_BYTES)
    assert wal.stat().st_size > WAL_KEEP_BYTES
    assert run_program(site, _req("alice@example.com", ALICE_1), env={"TCPREMOTEIP": "198.51.100.9"}).status == 0
    assert not wal.exists()  # checkpointed and removed: the next login starts a new WAL
    assert [r[0] for r in site.log()] == [site.ids["alice_1"], site.ids["alice_2"], site.ids["alice_1"]]


def test_program_audit_chain_needs_the_marker(site):
    """The installed program, as Dovecot runs it: APPAUTH_OK=yes is how Dovecot 2.3 passes on
    the `appauth_ok=yes` extra field of the earlier passdb."""
    request = _req("anyone@example.com", "whatever")
    run = run_program(site, request, "--audit-chain", helper=True)
    assert run.status == 1, run.stderr
    assert len(run.lines) == 1 and "--audit-chain refused the login: no earlier passdb set appauth_ok=yes" \
        in run.lines[0], run.stderr
    run = run_program(site, request, "--audit-chain", helper=True, env={"APPAUTH_OK": "yes"})
    assert run.status == 0 and "refused" not in run.stderr, run.stderr
    assert run.reply.startswith(b"user=anyone@example.com\t")


def test_program_success_without_helper_writes_fd4(site):
    run = run_program(site, _req("Alice@Example.com", ALICE_2))
    assert run.status == 0, run.stderr
    assert run.stderr == ""
    assert run.fields == [("user", "alice@example.com"), *EXPECTED_FIELDS]


def test_program_success_without_fd4_says_so(site):
    run = run_program(site, _req("alice@example.com", ALICE_1), fd4=False)
    assert run.status == 0
    assert len(run.lines) == 1 and "fd 4 is not open" in run.lines[0]


@needs_dovecot_helper
def test_program_lookup_with_helper(site):
    run = run_program(site, _req("alice@example.com", ""), helper=True, env={"AUTHORIZED": "1"})
    # checkpassword-reply exits 2 only when we set AUTHORIZED=2 (with AUTHORIZED=1 it fails with 111)
    assert run.status == 2, run.stderr
    assert run.fields == [("user", "alice@example.com"), *EXPECTED_FIELDS]
    assert site.log() == []


@needs_dovecot_helper
def test_program_lookup_unknown_with_helper(site):
    run = run_program(site, _req("carol@example.com", ""), helper=True, env={"AUTHORIZED": "1"})
    assert run.status == 3
    assert run.reply == b"" and run.stderr == ""


def test_program_lookup_without_helper(site):
    run = run_program(site, _req("alice@example.com", ""), env={"AUTHORIZED": "1"})
    assert run.status == 2
    assert run.fields == [("user", "alice@example.com"), *EXPECTED_FIELDS]


def test_program_credentials_lookup(site):
    run = run_program(site, _req("alice@example.com", ""),
                      env={"AUTHORIZED": "1", "CREDENTIALS_LOOKUP": "1", "SCHEME": "CRAM-MD5"})
    assert run.status == 111
    assert len(run.lines) == 1 and "credentials lookup" in run.lines[0]
    assert run.reply == b""


@pytest.mark.parametrize(
    "request_bytes",
    [_req("alice@example.com", "wrong"), _req("nobody@example.com", ALICE_1), b"alice@example.com\0\xff\xfe\0\0"],
    ids=["wrong-password", "unknown-user", "non-utf8-password"],
)
def test_program_refused(site, request_bytes):
    run = run_program(site, request_bytes, helper=os.access(DOVECOT_HELPER, os.X_OK))
    assert run.status == 1
    assert run.reply == b"" and run.stderr == ""


def test_program_revoked(site):
    run = run_program(site, _req("alice@example.com", ALICE_OLD))
    assert run.status == 1
    assert len(run.lines) == 1 and "revoked" in run.lines[0] and f"#{site.ids['alice_old']}" in run.lines[0]
    assert run.reply == b""


@pytest.mark.parametrize("helper", [pytest.param(True, marks=needs_dovecot_helper), False],
                         ids=["dovecot-helper", "fd4"])
def test_program_escapes_tab_and_lf_in_fields(site, helper):
    site.write(extra={"userdb_x_note": NASTY_VALUE})
    run = run_program(site, _req("alice@example.com", ALICE_1), helper=helper)
    assert run.status == 0, run.stderr
    assert b"\n" not in run.reply and b"\r" not in run.reply
    assert run.fields[0] == ("user", "alice@example.com")
    assert sorted(run.fields[1:]) == sorted([*EXPECTED_FIELDS, ("userdb_x_note", NASTY_VALUE)])


@needs_dovecot_helper
def test_program_doveadm_style_lookup_without_scheme(site):
    # doveadm auth lookup: AUTHORIZED=1 + CREDENTIALS_LOOKUP=1 with an empty SCHEME is a plain lookup
    run = run_program(site, _req("alice@example.com", ""), helper=True,
                      env={"AUTHORIZED": "1", "CREDENTIALS_LOOKUP": "1", "SCHEME": ""})
    assert run.status == 2, run.stderr
    assert run.fields == [("user", "alice@example.com"), *EXPECTED_FIELDS]


def test_program_client_address_not_an_address_is_one_clear_line(site):
    """It was `internal error (ValueError)` with the audit on: now a refusal that says why."""
    site.write(audit=AUDIT_EVENTS_ONLY)
    run = run_program(site, _req("alice@example.com", ALICE_1), env={"TCPREMOTEIP": "unknown", "REMOTE_IP": ""})
    assert run.status == 1
    assert run.lines == ["dovecot-appauth: user alice@example.com: refused: client address 'unknown' (TCPREMOTEIP) "
                         "is not an IP address"]
    assert run.reply == b""
