"""The account gate ([account], account.py) against a real slapd and real SQL databases.

In-process tests call `account.check_account` with a parsed config; program tests run
the installed checkpassword program as Dovecot does (tests/support/hardening.py). Dovecot SASL
and `serve` are in test_account_e2e.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest

from dovecot_appauth import account
from dovecot_appauth.config import ConfigError, parse
from dovecot_appauth.core import TempFail
from tests.support.common import dovecot_ids, free_port
from tests.support.hardening import CLI, HangingTcp, make_site
from tests.support.ldap import BIND_DN, BIND_PW

NOW = 1_800_000_000.0


def ldap_config(tmp_path, slapd, *, cache: bool = True, **ldap_overrides) -> object:
    data = {
        "database": {"dsn": f"sqlite:///{tmp_path / 'unused.sqlite'}"},
        "audit": {"enabled": False, "cache": {"path": str(tmp_path / "cache"), "enabled": cache}},
        "account": {"backend": "ldap", "timeout": 2.0, "ldap": slapd.settings(**ldap_overrides)},
    }
    return parse(data, str(tmp_path / "config.toml"))


# --- pure parts ------------------------------------------------------------------------------


def test_ldap_filter_escapes_the_login_name():
    assert account.ldap_filter("(uid=%u)", "alice@example.com") == "(uid=alice@example.com)"
    assert account.ldap_filter("(&(uid=%n)(dc=%d)(x=100%%))", "a@b") == "(&(uid=a)(dc=b)(x=100%))"
    # a login name cannot widen the filter: every special character is escaped
    assert account.ldap_filter("(uid=%u)", "*") == "(uid=\\2a)"
    assert account.ldap_filter("(uid=%u)", "a)(uid=*") == "(uid=a\\29\\28uid=\\2a)"
    assert account.ldap_filter("(uid=%u)", "a\\b\x00") == "(uid=a\\5cb\\00)"


@pytest.mark.parametrize(("value", "active"), [
    (None, False), (False, False), (True, True), (0, False), (1, True), (-1, True), (0.0, False), (2.5, True),
    (float("nan"), False), ("", False), ("0", False), ("00", False), ("0.0", False), ("-0", False), (" 0 ", False),
    ("false", False), ("FALSE", False), ("No", False), ("n", False), ("1", True), ("yes", True), ("active", True),
    ("-", True), ("0.5", True),
    # bytes: a MariaDB BIT(n) flag (PyMySQL returns b"\x00" for 0), BINARY columns, SQLite blobs
    (b"", False), (b"\x00", False), (b"\x00\x00", False), (b"\x01", True), (b"\x00\x01", True), (b"\x80", True),
    (b"0", False), (b"00", False), (b"false", False), (b"1", True), (b" ", True), (b"\xff", True),
    (bytearray(b"\x00"), False), (bytearray(b"\x01"), True), (memoryview(b"\x00"), False),
    (memoryview(b"\x01"), True),
])
def test_sql_flag_is_judged_by_its_type(value, active):
    assert account.sql_flag_active(value) is active


def test_sql_flag_decimal_and_types_that_say_nothing():
    from datetime import date, timedelta
    from decimal import Decimal

    for value, active in ((Decimal("0"), False), (Decimal("0.00"), False), (Decimal("-0"), False),
                          (Decimal("NaN"), False), (Decimal("sNaN"), False), (Decimal("1"), True),
                          (Decimal("0.01"), True)):
        assert account.sql_flag_active(value) is active, value
    for value in (date(2026, 1, 1), timedelta(0), {"a"}, object()):
        with pytest.raises(TempFail, match=rf"first column of the \[account.sql\] query is of type "
                                           rf"{type(value).__name__}: it must be"):
            account.sql_flag_active(value)


def test_config_requires_the_backend_keys():
    with pytest.raises(ConfigError) as e:
        parse({"account": {"backend": "ldap"}})
    text = str(e.value)
    assert "[account.ldap] uri: is required" in text and "basedn: is required" in text
    with pytest.raises(ConfigError, match="must contain %u or %n"):
        parse({"account": {"backend": "ldap", "ldap": {"uri": "ldap://x", "basedn": "dc=x", "filter": "(uid=x)"}}})
    with pytest.raises(ConfigError, match="must be ldap://"):
        parse({"account": {"backend": "ldap", "ldap": {"uri": "http://x", "basedn": "dc=x"}}})
    with pytest.raises(ConfigError, match="not both"):
        parse({"account": {"backend": "ldap", "ldap": {"uri": "ldap://x", "basedn": "dc=x", "bind_dn": "cn=a",
                                                       "bind_password": "p", "bind_password_file": "f"}}})
    with pytest.raises(ConfigError, match=r"\[account.sql\] query: is required"):
        parse({"account": {"backend": "sql"}})
    with pytest.raises(ConfigError, match="must use :user"):
        parse({"account": {"backend": "sql", "sql": {"query": "SELECT 1"}}})
    # off by default; upstream's markers of a disabled account are the default markers
    config = parse({})
    assert config.account.backend == ""
    assert config.account.ldap.disabled == {"loginShell": ("/bin/false",), "homeDirectory": ("/dev/null",)}
    assert "s3cret" not in repr(parse({"account": {"ldap": {"bind_password": "s3cret"}}}).account.ldap)


# --- LDAP, in process ------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "state", "detail"), [
    ("alice@example.com", account.ACTIVE, "uid=alice@example.com,ou=users,dc=example,dc=com"),
    ("ALICE@example.com", account.ACTIVE, "uid=alice@example.com"),
    ("bob@example.com", account.DISABLED, "loginShell=/bin/false"),
    ("carol@example.com", account.DISABLED, "homeDirectory=/dev/null"),
    ("dave@example.com", account.MISSING, "no entry matches (uid=dave@example.com)"),
    ("twin@example.com", account.AMBIGUOUS, "2 entries match"),
    ("*", account.MISSING, "(uid=\\2a)"),
])
def test_check_account_ldap_states(tmp_path, slapd, user, state, detail):
    answer = account.check_account(user, ldap_config(tmp_path, slapd, cache=False), now=NOW)
    assert (answer.state, answer.backend, answer.cached) == (state, "ldap", False)
    assert detail in answer.detail


def test_check_account_ldap_configurable_markers_and_filter(tmp_path, slapd):
    # only loginShell marks a disabled account: carol (homeDirectory /dev/null) is active
    config = parse({
        "audit": {"enabled": False, "cache": {"enabled": False}},
        "account": {"backend": "ldap", "ldap": {**slapd.settings(filter="(&(objectClass=posixAccount)(uid=%n@%d))"),
                                                "disabled": {"loginShell": ["/bin/false", "/usr/sbin/nologin"]}}},
    })
    assert account.check_account("carol@example.com", config, now=NOW).state == account.ACTIVE
    assert account.check_account("bob@example.com", config, now=NOW).state == account.DISABLED


def test_ldap_bind_password_from_file(tmp_path, slapd):
    secret = tmp_path / "ldap.secret"
    secret.write_text(BIND_PW + "\n")
    config = ldap_config(tmp_path, slapd, cache=False, bind_password=None, bind_password_file=str(secret))
    assert account.check_account("alice@example.com", config, now=NOW).active


def test_ldap_without_bind_sees_nothing_and_fails_closed(tmp_path, slapd):
    """Anonymous clients may not read this directory: the base is invisible, a temporary failure."""
    config = ldap_config(tmp_path, slapd, cache=False, bind_dn=None, bind_password=None)
    with pytest.raises(TempFail, match="is not visible to this bind"):
        account.check_account("alice@example.com", config, now=NOW)


def test_ldap_wrong_bind_password_is_tempfail_without_the_password(tmp_path, slapd):
    config = ldap_config(tmp_path, slapd, cache=False, bind_password="wrong-" + BIND_PW)
    with pytest.raises(TempFail) as e:
        account.check_account("alice@example.com", config, now=NOW)
    assert f"bind as {BIND_DN} refused" in str(e.value)
    assert BIND_PW not in str(e.value)


def test_ldap_closed_port_is_tempfail(tmp_path, slapd):
    config = ldap_config(tmp_path, slapd, cache=False, uri=f"ldap://127.0.0.1:{free_port()}")
    with pytest.raises(TempFail, match="Can't contact LDAP server"):
        account.check_account("alice@example.com", config, now=NOW)


def test_ldap_hanging_server_ends_at_the_deadline(tmp_path, slapd):
    """A server that accepts and never answers: TempFail after [account] timeout, not later."""
    with HangingTcp() as hang:
        config = ldap_config(tmp_path, slapd, cache=False, uri=f"ldap://127.0.0.1:{hang.port}")
        start = time.monotonic()
        with pytest.raises(TempFail):
            account.check_account("alice@example.com", config, now=NOW)
        elapsed = time.monotonic() - start
    assert elapsed < 2.0 + 1.5, elapsed


class FullBacklog:
    """A TCP port whose accept queue is full: the kernel drops new SYNs, so a connect hangs
    (an LDAP server that is down behind a firewall that drops, seen from loopback)."""

    def __init__(self) -> None:
        import socket

        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(filler)
        time.sleep(0.1)

    def close(self) -> None:
        for sock in (*self.fillers, self.server):
            sock.close()


def test_several_ldap_uris_share_one_deadline(tmp_path, slapd):
    """libldap tries each URI with the connect time-out it is given: three unreachable
    servers must not take three deadlines."""
    ports = [FullBacklog() for _ in range(3)]
    try:
        uri = " ".join(f"ldap://127.0.0.1:{p.port}" for p in ports)
        config = ldap_config(tmp_path, slapd, cache=False, uri=uri)  # [account] timeout = 2
        start = time.monotonic()
        with pytest.raises(TempFail):
            account.check_account("alice@example.com", config, now=NOW)
        elapsed = time.monotonic() - start
    finally:
        for p in ports:
            p.close()
    assert elapsed < 2.0 + 2.5, elapsed  # was 3 x 2 s


def test_ldap_starttls_and_ldaps_verify_the_server(tmp_path, slapd):
    ok_starttls = ldap_config(tmp_path, slapd, cache=False, starttls=True, ca_file=str(slapd.cert))
    assert account.check_account("alice@example.com", ok_starttls, now=NOW).active
    ok_ldaps = ldap_config(tmp_path, slapd, cache=False, uri=slapd.ldaps_uri, ca_file=str(slapd.cert))
    assert account.check_account("alice@example.com", ok_ldaps, now=NOW).active
    # a server certificate nobody vouches for: no answer, temporary failure
    other_ca = tmp_path / "other.pem"
    other_ca.write_text(open("/etc/ssl/certs/ca-certificates.crt").read() if os.path.exists(
        "/etc/ssl/certs/ca-certificates.crt") else "")
    untrusted = ldap_config(tmp_path, slapd, cache=False, uri=slapd.ldaps_uri, ca_file=str(other_ca))
    with pytest.raises(TempFail):
        account.check_account("alice@example.com", untrusted, now=NOW)


def test_ldap_active_answer_is_cached_without_secrets(tmp_path, slapd):
    """A warm login does not ask the directory; only "active" is cached; no secret in the file."""
    config = ldap_config(tmp_path, slapd)
    first = account.check_account("alice@example.com", config, now=NOW)
    assert first.active and not first.cached
    second = account.check_account("alice@example.com", config, now=NOW + 30)
    assert second.active and second.cached
    assert not account.check_account("alice@example.com", config, now=NOW + 61).cached  # expired
    # refusals are not cached: bob stays refused, and asks every time
    assert not account.check_account("bob@example.com", config, now=NOW).cached
    assert not account.check_account("bob@example.com", config, now=NOW + 1).cached
    raw = (tmp_path / "cache" / "cache.sqlite").read_bytes()
    assert BIND_PW.encode() not in raw
    rows = sqlite3.connect(tmp_path / "cache" / "cache.sqlite").execute(
        "SELECT key, value FROM entry WHERE source = 'account'").fetchall()
    assert [k.split("|")[0] for k, _ in rows] == ["alice@example.com"]
    # a different directory is a different key: no answer from the cache for it
    moved = ldap_config(tmp_path, slapd, uri=f"ldap://127.0.0.1:{free_port()}")
    with pytest.raises(TempFail):
        account.check_account("alice@example.com", moved, now=NOW + 31)


# --- SQL, in process -------------------------------------------------------------------------


def _accounts_db(path) -> str:
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE mailbox (username TEXT PRIMARY KEY COLLATE NOCASE, active INTEGER NOT NULL);
        INSERT INTO mailbox VALUES ('alice@example.com', 1), ('bob@example.com', 0);
    """)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def test_check_account_sql_separate_dsn(tmp_path):
    dsn = _accounts_db(tmp_path / "accounts.sqlite")
    config = parse({"audit": {"enabled": False, "cache": {"enabled": False}},
                    "account": {"backend": "sql",
                                "sql": {"dsn": dsn, "query": "SELECT active FROM mailbox WHERE username = :user"}}})
    assert account.check_account("ALICE@example.com", config, now=NOW).state == account.ACTIVE
    assert account.check_account("bob@example.com", config, now=NOW).state == account.DISABLED
    assert account.check_account("dave@example.com", config, now=NOW).state == account.MISSING
    broken = parse({"audit": {"enabled": False},
                    "account": {"backend": "sql", "sql": {"dsn": dsn, "query": "SELECT x FROM nope WHERE u = :user"}}})
    with pytest.raises(TempFail, match="no such table: nope"):
        account.check_account("alice@example.com", broken, now=NOW)


# --- the installed program -------------------------------------------------------------------


@pytest.fixture
def site():
    s = make_site(prefix="appauth-acct-")
    yield s
    s.remove()


def _events(site) -> list[tuple]:
    return site.rows("SELECT uid, pwid, result, rule, reason, authenticated, alert FROM audit_events ORDER BY id")


def test_program_ldap_gate(site, slapd):
    for key in ("alice", "bob", "carol", "dave"):
        site.add_password(key, f"{key}@example.com")
    site.write(audit={"enabled": True, "record_events": True, "syslog_socket": "", "journal": "no",
                      "global_networks": ["198.51.100.0/24"]},
               audit__dns={"enabled": False}, account={"backend": "ldap", "timeout": 2.0},
               account__ldap=slapd.settings())
    ok = site.login("alice")
    assert ok.status == 0, ok.stderr
    for key, state in (("bob", "disabled"), ("carol", "disabled"), ("dave", "missing")):
        run = site.login(key)
        assert run.status == 1, run.stderr
        assert f"user {key}@example.com: refused by the account gate: account {state} in ldap" in run.stderr
        assert len(run.stderr.splitlines()) == 1
    # the refusals are audit events (rule "account"); alice's login is the audit's own row
    refused = [e for e in _events(site) if e[2] == "refused"]
    assert [(e[0], e[1], e[3], e[5]) for e in refused] == [
        ("bob@example.com", site.pwid("bob"), "account", 0), ("carol@example.com", site.pwid("carol"), "account", 0),
        ("dave@example.com", site.pwid("dave"), "account", 0)]
    # a wrong password is a plain wrong password: the directory is not asked, nothing about it is said
    wrong = site.login("bob", "wrong-" + site.pw("bob"))
    assert (wrong.status, wrong.stderr) == (1, "")


def test_program_directory_down_is_tempfail_not_wrong_password(site, slapd):
    site.add_password("alice", "alice@example.com")
    site.write(account={"backend": "ldap", "timeout": 1.0},
               account__ldap=slapd.settings(uri=f"ldap://127.0.0.1:{free_port()}"))
    run = site.login("alice")
    assert run.status == 111, run.stderr
    assert run.stderr.startswith("dovecot-appauth: user alice@example.com: account gate: LDAP ldap://127.0.0.1:")
    assert "Can't contact LDAP server" in run.stderr and len(run.stderr.splitlines()) == 1
    assert BIND_PW not in run.stderr
    # a wrong password stays a wrong password while the directory is down
    assert site.login("alice", "wrong-" + site.pw("alice")).status == 1


def test_program_warm_login_uses_the_cache(site, slapd):
    """The second login takes the gate's answer from the cache (--debug says so)."""
    site.add_password("alice", "alice@example.com")
    site.write(account={"backend": "ldap", "cache_seconds": 300}, account__ldap=slapd.settings())
    first = site.login("alice", args=("--debug",))
    assert first.status == 0
    assert "debug: account gate: active (ldap): uid=alice@example.com" in first.stderr
    run = site.login("alice", args=("--debug",))
    assert run.status == 0
    assert "debug: account gate: active (ldap, cached): uid=alice@example.com" in run.stderr


def test_program_bind_password_file_unreadable_by_dovecot_fails_closed(site, slapd):
    site.add_password("alice", "alice@example.com")
    secret = site.dir / "ldap.secret"
    secret.write_text(BIND_PW + "\n")
    os.chmod(secret, 0o600)  # root only: the dovecot user cannot read it
    site.write(account={"backend": "ldap"}, account__ldap=slapd.settings(bind_password=None,
                                                                         bind_password_file=str(secret)))
    run = site.login("alice", user="dovecot")
    assert run.status == 111, run.stderr
    assert f"bind_password_file {secret}: Permission denied" in run.stderr
    os.chown(secret, *dovecot_ids())  # (Popen's user= keeps root's groups, so not root:dovecot 0640 here)
    assert site.login("alice", user="dovecot").status == 0


def test_program_sql_gate_on_the_app_password_database(site):
    site.add_password("alice", "alice@example.com")
    site.add_password("bob", "bob@example.com")
    conn = sqlite3.connect(site.db_path)
    conn.executescript("CREATE TABLE mailbox (username TEXT PRIMARY KEY COLLATE NOCASE, active INTEGER);"
                       "INSERT INTO mailbox VALUES ('alice@example.com', 1);")
    conn.commit()
    conn.close()
    site.write(account={"backend": "sql", "cache_seconds": 0},
               account__sql={"query": "SELECT active FROM mailbox WHERE username = :user"})
    assert site.login("alice").status == 0
    run = site.login("bob")
    assert run.status == 1
    assert "refused by the account gate: account missing in sql: no row from [account.sql] query" in run.stderr
    site.write(account={"backend": "sql"}, account__sql={"query": "SELECT active FROM nosuch WHERE u = :user"})
    run = site.login("alice")
    assert run.status == 111 and "account gate: " in run.stderr and "no such table: nosuch" in run.stderr


def test_program_sql_gate_mariadb(mariadb_database):
    site = make_site(mariadb_database.dsn, prefix="appauth-acct-")
    try:
        site.add_password("alice", "alice@example.com")
        site.add_password("bob", "bob@example.com")
        from dovecot_appauth.cli import schema

        engine = schema.make_engine(mariadb_database.dsn)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE mailbox (username VARCHAR(255) PRIMARY KEY, active TINYINT)")
            conn.exec_driver_sql("INSERT INTO mailbox VALUES ('alice@example.com', 1), ('bob@example.com', 0)")
        engine.dispose()
        # a literal % in the query must survive PyMySQL's parameter style
        site.write(account={"backend": "sql", "cache_seconds": 0},
                   account__sql={"query": "SELECT active FROM mailbox WHERE username = :user "
                                          "AND username LIKE '%@%'"})
        assert site.login("alice").status == 0
        run = site.login("bob")
        assert run.status == 1 and "account disabled in sql: [account.sql] query gave 0" in run.stderr
        # a separate DSN for the accounts
        site.write(account={"backend": "sql", "cache_seconds": 0},
                   account__sql={"dsn": mariadb_database.dsn,
                                 "query": "SELECT active FROM mailbox WHERE username = :user"})
        assert site.login("alice").status == 0
        assert site.login("bob").status == 1
    finally:
        site.remove()


def test_program_sql_gate_mariadb_bit_flag(mariadb_database):
    """A BIT(1) flag: PyMySQL returns b"\\x00" for 0, which is a disabled account, not an
    active one (bytes are judged as bits)."""
    site = make_site(mariadb_database.dsn, prefix="appauth-acct-")
    try:
        site.add_password("alice", "alice@example.com")
        site.add_password("bob", "bob@example.com")
        site.add_password("carol", "carol@example.com")
        from dovecot_appauth.cli import schema

        engine = schema.make_engine(mariadb_database.dsn)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE mailbox (username VARCHAR(255) PRIMARY KEY, active BIT(1) NOT NULL, "
                                 "quota DECIMAL(10,2), created DATE)")
            conn.exec_driver_sql("INSERT INTO mailbox VALUES ('alice@example.com', b'1', 1.5, '2026-01-01'), "
                                 "('bob@example.com', b'0', 0.00, '2026-01-01'), "
                                 "('carol@example.com', b'0', NULL, NULL)")
        engine.dispose()
        site.write(account={"backend": "sql", "cache_seconds": 0},
                   account__sql={"query": "SELECT active FROM mailbox WHERE username = :user"})
        assert site.login("alice").status == 0
        for key in ("bob", "carol"):
            run = site.login(key)
            assert run.status == 1, run.stderr
            assert f"user {key}@example.com: refused by the account gate: account disabled in sql: " \
                   "[account.sql] query gave b'\\x00'" in run.stderr
        # DECIMAL: 0.00 and NULL are disabled
        site.write(account={"backend": "sql", "cache_seconds": 0},
                   account__sql={"query": "SELECT quota FROM mailbox WHERE username = :user"})
        assert site.login("alice").status == 0
        assert "query gave Decimal('0.00')" in site.login("bob").stderr
        assert site.login("carol").status == 1
        # a column that says neither (a date): a temporary failure naming the type, never a guess
        site.write(account={"backend": "sql", "cache_seconds": 0},
                   account__sql={"query": "SELECT created FROM mailbox WHERE username = :user"})
        run = site.login("alice")
        assert run.status == 111, run.stderr
        assert "account gate: the first column of the [account.sql] query is of type date" in run.stderr
        assert len(run.lines) == 1 and "Traceback" not in run.stderr
    finally:
        site.remove()


def test_check_config_reports_the_gate(site, slapd):
    from tests.support.hardening import run_cli

    site.write(account={"backend": "ldap"}, account__ldap=slapd.settings(ca_file="/nonexistent/ca.pem"))
    os.chmod(site.path, 0o644)
    res = run_cli(site.path, "check-config", "--no-database", check=False)
    out = res.stdout + res.stderr
    assert "[account.ldap] ca_file" in out and "/nonexistent/ca.pem" in out
    assert "holds an LDAP bind password and is world-readable" in out
    assert BIND_PW not in out
    assert res.returncode == 1


def test_check_config_runs_the_sql_query(site):
    from tests.support.hardening import run_cli

    site.write(account={"backend": "sql"}, account__sql={"query": "SELECT active FROM nosuch WHERE u = :user"})
    res = run_cli(site.path, "check-config", check=False)
    assert "[account.sql] query" in res.stdout + res.stderr and "no such table: nosuch" in res.stdout + res.stderr
    assert res.returncode == 1


def test_explain_and_login_test_show_the_gate(site, slapd):
    import json

    from tests.support.hardening import run_cli

    site.add_password("bob", "bob@example.com")
    site.add_password("alice", "alice@example.com")
    site.write(account={"backend": "ldap"}, account__ldap=slapd.settings())
    out = run_cli(site.path, "explain", "198.51.100.7", "--user", "bob@example.com").stdout
    assert ("account gate (bob@example.com): disabled (ldap): uid=bob@example.com,ou=users,dc=example,dc=com "
            "has loginShell=/bin/false; login refused (1)") in out
    data = json.loads(run_cli(site.path, "explain", "198.51.100.7", "--user", "alice@example.com", "--json").stdout)
    assert data["account_gate"]["state"] == "active"
    res = subprocess.run([str(CLI), "--config", str(site.path), "login-test", "bob@example.com"],
                         input=site.pw("bob") + "\n", capture_output=True, text=True, timeout=60, check=False)
    assert "verdict:     REFUSED" in res.stdout
    assert "refused by the account gate: account disabled in ldap" in res.stdout  # Dovecot would log
    assert "account gate: disabled (ldap)" in res.stdout
    # the directory cannot answer: login-test shows the temporary failure and why
    site.write(account={"backend": "ldap", "timeout": 0.5},
               account__ldap=slapd.settings(uri=f"ldap://127.0.0.1:{free_port()}"))
    res = subprocess.run([str(CLI), "--config", str(site.path), "login-test", "alice@example.com", "--json"],
                         input=site.pw("alice") + "\n", capture_output=True, text=True, timeout=60, check=False)
    data = json.loads(res.stdout)
    assert data["exit_code"] == 111 and data["verdict"] == "TEMPORARY FAILURE"
    assert data["account_gate"]["state"] == "tempfail" and "Can't contact LDAP server" in data["account_gate"]["detail"]
    assert BIND_PW not in res.stdout + res.stderr


def test_nextcloud_backend_goes_through_the_gate(appauth_config_factory, slapd):
    """[auth] backend = "nextcloud": the account gate runs after Nextcloud said yes."""
    from dovecot_appauth.config import load
    from dovecot_appauth.core import ExitCode, LoginRequest, Mode
    from dovecot_appauth.login import decide
    from tests.support.fake_nextcloud import FakeNextcloud

    nc = FakeNextcloud(users={"alice@example.com": "alice-nc-pw", "bob@example.com": "bob-nc-pw"})
    try:
        ldap_lines = "".join(f'{k} = "{v}"\n' for k, v in slapd.settings().items())
        cfg = appauth_config_factory(extra_toml=f'[auth]\nbackend = "nextcloud"\n\n[nextcloud]\nurl = "{nc.url()}"\n'
                                                f'cache_seconds = 0\n\n[account]\nbackend = "ldap"\n\n'
                                                f'[account.ldap]\n{ldap_lines}')
        config = load(str(cfg.path))

        def login(user: str, password: str) -> object:
            return decide(LoginRequest(user, password, Mode.VERIFY, "smtp", remote_ip="198.51.100.9"), config,
                          now=time.time())

        assert login("alice@example.com", "alice-nc-pw").exit_code is ExitCode.OK
        refused = login("bob@example.com", "bob-nc-pw")
        assert refused.exit_code is ExitCode.FAIL
        assert "refused by the account gate: account disabled in ldap" in refused.message
        assert login("bob@example.com", "wrong").message is None  # a wrong password: the gate is not asked
    finally:
        nc.close()


def test_lookups_and_wrong_passwords_never_ask_the_gate(site):
    """A userdb lookup (AUTHORIZED=1) is not gated, and neither is a wrong password: with a
    directory that cannot answer, both keep their usual answers (2 and 1), not 111."""
    from tests.support.hardening import dovecot_env

    site.add_password("alice", "alice@example.com")
    site.write(account={"backend": "ldap", "timeout": 0.5},
               account__ldap={"uri": f"ldap://127.0.0.1:{free_port()}", "basedn": "dc=example,dc=com"})
    lookup = site.login("alice", "", env=dovecot_env(AUTHORIZED="1"))
    assert lookup.status == 2, lookup.stderr
    assert site.login("alice", "wrong-" + site.pw("alice")).status == 1
    assert site.login("alice").status == 111
