"""Issue 3 end to end: the login path through a real Dovecot 2.3 (checkpassword passdb).

One Dovecot per module (``dovecot.reconfigure`` restarts it only when the passdb changes).
The core cases run on SQLite and on MariaDB (``store`` is a module-scoped parameter, so
Dovecot is reconfigured once per store). Every test checks afterwards that no password
(app passwords, wrong ones, the MariaDB password) reached Dovecot's log or its stderr.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator

import pytest

from dovecot_appauth.hashing import generate_password, hash_password
from tests.conftest import AppauthConfig, _give_to_dovecot
from tests.support.common import dovecot_ids, free_port
from tests.support.dovecot import DEFAULT_USERDB, DovecotServer, checkpassword_passdb, our_lines, settle_log
from tests.support.hardening import HangingTcp

pytestmark = [pytest.mark.dovecot,
              pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")]

# Every secret a test types; the autouse check below greps Dovecot's log and stderr for them.
SECRETS: set[str] = set()
WRONG = "Wrong-pass-Zq81-never-logged"
SECRETS.add(WRONG)

# Webmail networks of the shared config: app passwords are refused from there.
DISALLOW = ["192.0.2.128/25", "2001:db8:dead::/48"]


# --- helpers ---------------------------------------------------------------------------
def new_password(cfg: AppauthConfig, user: str, comment: str | None = None) -> tuple[int, str]:
    """``password create`` through the admin CLI (about 0.5 s: used where the CLI is the point)."""
    created = cfg.create_password(user, comment)
    SECRETS.add(created["password"])
    return int(created["id"]), created["password"]


def seed_password(cfg: AppauthConfig, user: str, *, revoked: bool = False) -> tuple[int, str]:
    """An app password inserted the way the Roundcube plugin does (plain SQL, ``{CRYPT}$6$``
    from our hashing module), in milliseconds instead of a CLI run."""
    password = generate_password()
    hashed = hash_password(password)
    SECRETS.add(password)
    deleted = "CURRENT_TIMESTAMP" if revoked else "NULL"
    if cfg.db_path is not None:
        conn = sqlite3.connect(cfg.db_path)
        try:
            with conn:
                cur = conn.execute(f"INSERT INTO app_passwords (uid, password, comment, deleted) "
                                   f"VALUES (?, ?, 'seeded', {deleted})", (user, hashed))
            pwid = cur.lastrowid
        finally:
            conn.close()
        _give_to_dovecot(cfg.db_path.parent)
    else:
        conn = cfg.database.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO app_passwords (uid, password, comment, deleted) "
                            f"VALUES (%s, %s, 'seeded', {deleted})", (user, hashed))
                pwid = cur.lastrowid
        finally:
            conn.close()
    return int(pwid), password


def log_rows(cfg: AppauthConfig, pwid: int | None = None) -> list[tuple]:
    """``(pwid, service, src_ip, src_rdns, src_loc, src_isp)`` of the ``log`` table, in order."""
    sql = "SELECT pwid, service, src_ip, src_rdns, src_loc, src_isp FROM log ORDER BY id"
    if cfg.db_path is not None:
        conn = sqlite3.connect(cfg.db_path)
        try:
            rows = conn.execute(sql).fetchall()
        finally:
            conn.close()
    else:
        conn = cfg.database.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                rows = cur.fetchall()
        finally:
            conn.close()
    rows = [tuple(r) for r in rows]
    return rows if pwid is None else [r for r in rows if r[0] == pwid]


def use(dovecot: DovecotServer, cfg: AppauthConfig | os.PathLike | str) -> None:
    """Point Dovecot's passdb at our program with this config (restarts only on change)."""
    path = cfg.path if isinstance(cfg, AppauthConfig) else cfg
    dovecot.reconfigure(passdb=checkpassword_passdb(path))


def set_database_keys(cfg: AppauthConfig, **keys) -> None:
    """Add keys to the ``[database]`` table of a config written by ``write_appauth_config``."""
    text = cfg.path.read_text()
    extra = "".join(f"{k} = {v!r}\n" for k, v in keys.items())
    cfg.path.write_text(text.replace("[database]\n", "[database]\n" + extra, 1))



@pytest.fixture(autouse=True)
def no_secret_in_dovecot_output(dovecot: DovecotServer) -> Iterator[None]:
    log_mark = dovecot.log_mark()
    try:
        stdio_mark = dovecot.stdio_path.stat().st_size
    except FileNotFoundError:
        stdio_mark = 0
    yield
    time.sleep(0.05)
    text = dovecot.log_since(log_mark)
    try:
        with open(dovecot.stdio_path, "rb") as f:
            f.seek(stdio_mark)
            text += f.read().decode(errors="replace")
    except FileNotFoundError:
        pass
    leaked = sorted(s for s in SECRETS if s in text)
    assert not leaked, f"secrets in Dovecot's log/stderr: {leaked}"
    assert "$6$" not in text, "a password hash in Dovecot's log/stderr"
    assert "Traceback" not in text, text


# --- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def store(request, appauth_config_factory) -> AppauthConfig:
    """The shared config of the core cases, on SQLite or on a fresh MariaDB database."""
    extra = f"[auth]\ndisallow_passwords_from = {DISALLOW!r}\n".replace("'", '"')
    if request.param == "sqlite":
        return appauth_config_factory(extra_toml=extra)
    mariadb = request.getfixturevalue("mariadb")
    SECRETS.add(mariadb.password)
    database = mariadb.fresh_database("e2e")
    request.addfinalizer(database.drop)
    return appauth_config_factory(database.dsn, extra_toml=extra, database=database)


@pytest.fixture
def server(dovecot: DovecotServer, store: AppauthConfig) -> DovecotServer:
    use(dovecot, store)
    return dovecot


# --- the core cases, on both stores ----------------------------------------------------
def test_imap_login_select_and_recorded(server, store):
    pwid, password = new_password(store, "alice@example.com", "phone")
    ok, text = server.imap_login("alice@example.com", password, client_ip="198.51.100.11")
    assert ok, text + "\n" + server.log_text()[-3000:]
    assert "SELECT OK" in text
    assert log_rows(store, pwid) == [(pwid, "imap", "198.51.100.11", "<>", "", "")]
    ok, text = server.imap_login("ALICE@example.com", password, client_ip="198.51.100.31")
    assert ok, text
    assert [r[2] for r in log_rows(store, pwid)] == ["198.51.100.11", "198.51.100.31"]
    # the CLI shows the latest use
    [item] = [p for p in store.list_passwords("alice@example.com") if p["id"] == pwid]
    assert "198.51.100.31" in str(item), item


def test_wrong_password_is_authenticationfailed(server, store):
    pwid, _ = seed_password(store, "wrongpw@example.com")
    mark = server.log_mark()
    ok, text = server.imap_login("wrongpw@example.com", WRONG, client_ip="198.51.100.12")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    ok, text = server.imap_login("nobody@example.com", WRONG, client_ip="198.51.100.12")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    assert log_rows(store, pwid) == []
    time.sleep(0.2)
    assert our_lines(server.log_since(mark)) == []  # a plain mismatch: Dovecot logs it, we stay quiet


def test_revoked_password_refused_with_reason(server, store):
    pwid, password = new_password(store, "revoked@example.com")
    _, other = seed_password(store, "revoked@example.com")
    store.revoke(pwid)
    mark = server.log_mark()
    ok, text = server.imap_login("revoked@example.com", password, client_ip="198.51.100.13")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    log = settle_log(server, mark, r"auth: Error: dovecot-appauth: .*revoked")
    [line] = our_lines(log)
    assert f"user revoked@example.com: refused revoked app password #{pwid}" in line, line
    assert log_rows(store, pwid) == []
    # the user's other password still works
    assert server.imap_login("revoked@example.com", other, client_ip="198.51.100.13").ok


def test_second_password_of_same_user(server, store):
    first, pw1 = seed_password(store, "bob@example.com")
    second, pw2 = seed_password(store, "bob@example.com")
    ok, text = server.imap_login("bob@example.com", pw2, client_ip="198.51.100.14")
    assert ok, text
    ok, text = server.imap_login("bob@example.com", pw1, client_ip="198.51.100.15")
    assert ok, text
    assert log_rows(store, first) == [(first, "imap", "198.51.100.15", "<>", "", "")]
    assert log_rows(store, second) == [(second, "imap", "198.51.100.14", "<>", "", "")]


def test_username_case_insensitive(server, store):
    pwid, password = seed_password(store, "Carol@Example.com")
    ok, text = server.imap_login("CAROL@EXAMPLE.COM", password, client_ip="198.51.100.16")
    assert ok, text
    ok, text = server.imap_login("carol@example.com", password, client_ip="198.51.100.17")
    assert ok, text
    assert [r[2] for r in log_rows(store, pwid)] == ["198.51.100.16", "198.51.100.17"]
    # user= in the reply is the name as stored
    rc, out = server.doveadm_auth_test("carol@EXAMPLE.com", password, rip="198.51.100.18")
    assert rc == 0, out
    assert "user=Carol@Example.com" in out, out


def test_pop3_login_recorded(server, store):
    pwid, password = seed_password(store, "pop@example.com")
    ok, text = server.pop3_login("pop@example.com", password, client_ip="198.51.100.19")
    assert ok, text
    assert "STAT" in text
    ok, text = server.pop3_login("pop@example.com", WRONG, client_ip="198.51.100.19")
    assert not ok and "[AUTH]" in text, text
    assert log_rows(store, pwid) == [(pwid, "pop3", "198.51.100.19", "<>", "", "")]


def test_doveadm_auth_test_smtp_recorded(server, store):
    pwid, password = seed_password(store, "smtp@example.com")
    rc, out = server.doveadm_auth_test("smtp@example.com", password, service="smtp", rip="203.0.113.20")
    assert rc == 0, out
    assert "auth succeeded" in out, out
    rc, out = server.doveadm_auth_test("smtp@example.com", WRONG, service="smtp", rip="203.0.113.20")
    assert rc == 77, out
    assert log_rows(store, pwid) == [(pwid, "smtp", "203.0.113.20", "<>", "", "")]


def test_doveadm_auth_lookup_known_and_unknown(server, store):
    seed_password(store, "lookup@example.com")
    seed_password(store, "gone@example.com", revoked=True)
    rc, out = server.doveadm_auth_lookup("LOOKUP@example.com")
    assert rc == 0, out
    assert re.search(r"user\s*: lookup@example.com$", out, re.M), out  # a passdb lookup returns only user=
    rc, out = server.doveadm_auth_lookup("unknown@example.com")
    assert rc == 67, out
    rc, out = server.doveadm_auth_lookup("gone@example.com")  # only a revoked password: unknown
    assert rc == 67, out


def test_userdb_checkpassword_as_in_the_example(server, store):
    """examples/dovecot/auth-appauth.conf.ext: prefetch, then our program as userdb for
    lookups without a login (doveadm user, LMTP)."""
    seed_password(store, "userdb@example.com")
    userdb = DEFAULT_USERDB + checkpassword_passdb(store.path).replace("passdb {", "userdb {")
    try:
        server.reconfigure(userdb=userdb)
        res = server.doveadm("user", "USERDB@example.com")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{store.dir}/mail/userdb@example.com" in res.stdout, res.stdout
        assert server.doveadm("user", "nouser@example.com").returncode == 67
    finally:
        server.reconfigure(userdb=DEFAULT_USERDB)


def test_one_row_per_login_with_dedup(server, store):
    pwid, password = seed_password(store, "dedup@example.com")
    for _ in range(2):  # same password, service and IP within 60 s: one row
        assert server.imap_login("dedup@example.com", password, client_ip="198.51.100.21").ok
    assert len(log_rows(store, pwid)) == 1
    assert server.pop3_login("dedup@example.com", password, client_ip="198.51.100.21").ok  # other service
    assert server.imap_login("dedup@example.com", password, client_ip="198.51.100.22").ok  # other IP
    assert server.doveadm_auth_test("dedup@example.com", password, service="smtp", rip="198.51.100.21")[0] == 0
    assert server.doveadm_auth_test("dedup@example.com", password, service="smtp", rip="198.51.100.21")[0] == 0
    assert [(r[1], r[2]) for r in log_rows(store, pwid)] == [
        ("imap", "198.51.100.21"), ("pop3", "198.51.100.21"), ("imap", "198.51.100.22"),
        ("smtp", "198.51.100.21"),
    ]


@pytest.mark.parametrize("ip, network", [("192.0.2.130", "192.0.2.128/25"),
                                         ("2001:db8:dead::7", "2001:db8:dead::/48")])
def test_disallow_passwords_from(server, store, ip, network):
    user = f"webmail-{ip.replace(':', '-')}@example.com"
    pwid, password = seed_password(store, user)
    mark = server.log_mark()
    ok, text = server.imap_login(user, password, client_ip=ip)
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    log = settle_log(server, mark, r"dovecot-appauth: .*disallow_passwords_from")
    [line] = our_lines(log)
    assert f"app passwords are not accepted from {ip} (disallow_passwords_from {network})" in line, line
    assert log_rows(store, pwid) == []
    assert server.imap_login(user, password, client_ip="192.0.2.100").ok  # next to the webmail net


# --- internal failures: UNAVAILABLE, one line, never AUTHENTICATIONFAILED --------------
def _assert_unavailable(dovecot: DovecotServer, user: str, password: str, pattern: str,
                        client_ip: str, within: float | None = None) -> str:
    mark = dovecot.log_mark()
    start = time.monotonic()
    ok, text = dovecot.imap_login(user, password, client_ip=client_ip)
    elapsed = time.monotonic() - start
    assert not ok and "UNAVAILABLE" in text and "AUTHENTICATIONFAILED" not in text, text
    if within is not None:
        assert elapsed < within, f"UNAVAILABLE after {elapsed:.2f}s, expected < {within}s"
    log = settle_log(dovecot, mark, r"auth: Error: dovecot-appauth: ")
    lines = our_lines(log)
    assert len(lines) == 1, lines
    assert "auth: Error: dovecot-appauth: " in lines[0]
    assert pattern in lines[0], lines[0]
    return lines[0]


def test_sqlite_database_unreadable_is_unavailable(dovecot, appauth_config_factory):
    cfg = appauth_config_factory()
    use(dovecot, cfg)
    pwid, password = seed_password(cfg, "locked-out@example.com")
    assert dovecot.imap_login("locked-out@example.com", password, client_ip="198.51.100.23").ok
    os.chmod(cfg.db_path, 0)  # user dovecot (its owner) can no longer open it
    try:
        line = _assert_unavailable(dovecot, "locked-out@example.com", password,
                                   f"cannot open SQLite database {cfg.db_path}", "198.51.100.24")
        # doveadm sees the same temporary failure (exit 77, but code=temp_fail, not a mismatch)
        rc, out = dovecot.doveadm_auth_test("locked-out@example.com", password, rip="198.51.100.24")
        assert rc == 77 and "code=temp_fail" in out, out
    finally:
        os.chmod(cfg.db_path, 0o644)
    assert password not in line
    assert [r[2] for r in log_rows(cfg, pwid)] == ["198.51.100.23"]
    assert dovecot.imap_login("locked-out@example.com", password, client_ip="198.51.100.24").ok


def test_sqlite_schema_missing_is_unavailable(dovecot, appauth_config_factory):
    cfg = appauth_config_factory(init_db=False)
    sqlite3.connect(cfg.db_path).close()  # an empty database file, no tables
    os.chown(cfg.db_path, *dovecot_ids())
    use(dovecot, cfg)
    _assert_unavailable(dovecot, "someone@example.com", WRONG, "run 'dovecot-appauth init-db'", "198.51.100.25")


# --- MariaDB failures ------------------------------------------------------------------
@pytest.fixture
def restricted_user(mariadb, mariadb_config):
    """A second MariaDB user for the test database; grants are the test's business."""
    name = f"r{os.urandom(4).hex()}"
    pw = f"Rp-{os.urandom(6).hex()}"
    SECRETS.add(pw)
    mariadb.execute_root(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{pw}'")
    try:
        yield name, pw
    finally:
        mariadb.execute_root(f"DROP USER IF EXISTS '{name}'@'%'")


def _dsn_for(mariadb, user: str, password: str, database: str) -> str:
    return f"mysql+pymysql://{user}:{password}@127.0.0.1:{mariadb.port}/{database}"


@pytest.mark.mariadb
def test_mariadb_user_without_select_is_unavailable(dovecot, mariadb, mariadb_config, restricted_user,
                                                    appauth_config_factory):
    name, pw = restricted_user
    db = mariadb_config.database.name
    mariadb.execute_root(f"GRANT SELECT, INSERT ON `{db}`.`log` TO '{name}'@'%'")  # not app_passwords
    _, password = seed_password(mariadb_config, "noselect@example.com")
    cfg = appauth_config_factory(_dsn_for(mariadb, name, pw, db), init_db=False, database=mariadb_config.database)
    use(dovecot, cfg)
    line = _assert_unavailable(dovecot, "noselect@example.com", password, "SELECT command denied", "198.51.100.26")
    assert f"{name}:***@127.0.0.1:{mariadb.port}/{db}" in line, line


@pytest.mark.mariadb
def test_mariadb_user_without_insert_still_logs_in(dovecot, mariadb, mariadb_config, restricted_user,
                                                   appauth_config_factory):
    """The password is right: a failed log insert is reported, the login goes on."""
    name, pw = restricted_user
    db = mariadb_config.database.name
    mariadb.execute_root(f"GRANT SELECT ON `{db}`.* TO '{name}'@'%'")
    pwid, password = seed_password(mariadb_config, "noinsert@example.com")
    cfg = appauth_config_factory(_dsn_for(mariadb, name, pw, db), init_db=False, database=mariadb_config.database)
    use(dovecot, cfg)
    mark = dovecot.log_mark()
    ok, text = dovecot.imap_login("noinsert@example.com", password, client_ip="198.51.100.27")
    assert ok, text
    log = settle_log(dovecot, mark, r"dovecot-appauth: login of noinsert@example.com not recorded")
    [line] = our_lines(log)
    assert "INSERT command denied" in line, line
    assert log_rows(mariadb_config, pwid) == []


@pytest.mark.mariadb
def test_mariadb_wrong_database_password_is_unavailable(dovecot, mariadb, mariadb_config, appauth_config_factory):
    bad = "Not-the-db-pw-81x"
    SECRETS.add(bad)
    _, password = seed_password(mariadb_config, "badcreds@example.com")
    db = mariadb_config.database.name
    cfg = appauth_config_factory(_dsn_for(mariadb, mariadb.user, bad, db), init_db=False)
    use(dovecot, cfg)
    line = _assert_unavailable(dovecot, "badcreds@example.com", password, "cannot connect to mysql+pymysql://",
                               "198.51.100.28")
    assert "Access denied" in line and ":***@" in line, line


@pytest.mark.mariadb
def test_mariadb_closed_port_is_unavailable_fast(dovecot, mariadb, appauth_config_factory):
    port = free_port()  # nothing listens there
    cfg = appauth_config_factory(f"mysql+pymysql://appauth:x@127.0.0.1:{port}/nowhere", init_db=False)
    set_database_keys(cfg, connect_timeout=1)
    use(dovecot, cfg)
    line = _assert_unavailable(dovecot, "closed@example.com", WRONG, f"cannot connect to mysql+pymysql://appauth:***@"
                               f"127.0.0.1:{port}/nowhere", "198.51.100.29", within=1 + 1.5)
    assert "Can't connect" in line or "refused" in line.lower(), line


@pytest.mark.mariadb
def test_mariadb_silent_server_is_unavailable_within_connect_timeout(dovecot, mariadb, appauth_config_factory):
    """A server that accepts TCP and never speaks: the connect timeout bounds the login."""
    with HangingTcp() as silent:
        port = silent.port
        cfg = appauth_config_factory(f"mysql+pymysql://appauth:x@127.0.0.1:{port}/silent", init_db=False)
        set_database_keys(cfg, connect_timeout=1)
        use(dovecot, cfg)
        _assert_unavailable(dovecot, "silent@example.com", WRONG, f"127.0.0.1:{port}/silent", "198.51.100.30",
                            within=1 + 1.5)
