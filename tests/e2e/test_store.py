"""The per-login store on SQLite and on a real MariaDB (fixture `mariadb_database`).

The schema is created the admin way (`schema.init_db`, `schema.create_password`), then
the login's store (`store.open_store`) reads and writes it with the bare driver.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dovecot_appauth.audit.events import event_row
from dovecot_appauth.cli import schema
from dovecot_appauth.core import TempFail
from dovecot_appauth.store import LoginRecord, PasswordRow, open_store, utc_timestamp
from tests.support.common import shared_tempdir_base

# 2023-11-14 22:13:20.500 UTC; .5 is exact in binary, so the milliseconds are too
NOW = 1_700_000_000.5
NOW_TEXT = "2023-11-14 22:13:20.500"
HASH_A = "{CRYPT}$6$saltsaltsaltsalt$hash-of-alice-first-password"
HASH_B = "{CRYPT}$6$saltsaltsaltsalt$hash-of-alice-second-password"
HASH_C = "{CRYPT}$6$saltsaltsaltsalt$hash-of-carol-password"


@dataclass
class Backend:
    name: str
    dsn: str
    engine: Any
    path: Path | None = None  # SQLite file
    secret: str | None = None  # the DSN password (MariaDB)

    def store(self, timeout: float = 3.0):
        return open_store(self.dsn, timeout)

    def rows(self, sql: str, **params) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params).all()]

    def execute(self, sql: str, **params) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)


def _stamp(value: Any) -> str:
    """A timestamp as SQLite stores it; MariaDB's driver returns a datetime."""
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return value


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "appauth.sqlite"
    dsn = f"sqlite:///{path}"
    return Backend("sqlite", dsn, schema.make_engine(dsn), path=path)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def backend(request, tmp_path):
    """The same schema on each backend (MariaDB: a fresh database on the session's server)."""
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
    else:
        database = request.getfixturevalue("mariadb_database")
        b = Backend("mariadb", database.dsn, schema.make_engine(database.dsn), secret=database.server.password)
    schema.init_db(b.engine)
    yield b
    b.engine.dispose()


@pytest.fixture
def sqlite_backend(tmp_path):
    b = _sqlite_backend(tmp_path)
    schema.init_db(b.engine)
    yield b
    b.engine.dispose()


def _seed(backend: Backend) -> dict[str, int]:
    return {
        "a": schema.create_password(backend.engine, "alice@example.com", HASH_A, "laptop"),
        "b": schema.create_password(backend.engine, "alice@example.com", HASH_B, "phone"),
        "c": schema.create_password(backend.engine, "carol@example.com", HASH_C),
    }


@pytest.fixture
def alice(backend):
    """Two passwords of alice@example.com and one of carol; returns their ids."""
    return _seed(backend)


def _assert_clean(message: str, backend: Backend | None = None) -> None:
    for secret in (HASH_A, HASH_B, HASH_C, "$6$"):
        assert secret not in message
    if backend is not None and backend.secret:
        assert backend.secret not in message


# --- reading -----------------------------------------------------------------------------


def test_utc_timestamp():
    assert utc_timestamp(NOW) == NOW_TEXT
    assert utc_timestamp(0.0) == "1970-01-01 00:00:00.000"
    assert utc_timestamp(86399.875) == "1970-01-01 23:59:59.875"


def test_find_passwords_case_insensitive(backend, alice):
    store = backend.store()
    try:
        for name in ("alice@example.com", "Alice@Example.com", "ALICE@EXAMPLE.COM"):
            rows = store.find_passwords(name)
            assert sorted((r.id, r.uid, r.hash, r.deleted) for r in rows) == [
                (alice["a"], "alice@example.com", HASH_A, None),
                (alice["b"], "alice@example.com", HASH_B, None),
            ]
    finally:
        store.close()


@pytest.mark.parametrize("pattern", ["a%", "%", "_lice@example.com", "alice@example.co_", "alice@%", "*"])
def test_find_passwords_no_wildcards(backend, alice, pattern):
    store = backend.store()
    try:
        assert store.find_passwords(pattern) == []
    finally:
        store.close()


def test_find_passwords_unknown_user(backend, alice):
    store = backend.store()
    try:
        assert store.find_passwords("bob@example.com") == []
        assert store.find_passwords("alice") == []
    finally:
        store.close()


def test_find_passwords_shows_revocation(backend, alice):
    assert schema.revoke_password(backend.engine, alice["a"]) is True
    store = backend.store()
    try:
        rows = {r.id: r for r in store.find_passwords("alice@example.com")}
    finally:
        store.close()
    assert rows[alice["b"]].deleted is None
    revoked = rows[alice["a"]].deleted
    assert revoked is not None
    # a UTC time from the database, close to now
    when = datetime.datetime.fromisoformat(str(revoked)[:19]).replace(tzinfo=datetime.UTC)
    assert abs(when.timestamp() - time.time()) < 120


def test_PasswordRow_repr_hides_hash():
    row = PasswordRow(1, "alice", HASH_A, None)
    assert HASH_A not in repr(row)
    assert "alice" in repr(row)


# --- recording -----------------------------------------------------------------------------


def _log(backend: Backend, pwid: int) -> list[tuple]:
    return [
        (r[0], r[1], r[2], r[3], r[4], _stamp(r[5]))
        for r in backend.rows(
            "SELECT service, src_ip, src_rdns, src_loc, src_isp, timestamp FROM log WHERE pwid = :p ORDER BY id",
            p=pwid,
        )
    ]


def test_record_login_inserts_utc_milliseconds(backend, alice):
    store = backend.store()
    try:
        assert store.record_login(LoginRecord(alice["a"], "imap", "198.51.100.7"), now=NOW, dedup_window=60)
    finally:
        store.close()
    assert _log(backend, alice["a"]) == [("imap", "198.51.100.7", "<>", "", "", NOW_TEXT)]


def test_record_login_enrichment_columns(backend, alice):
    store = backend.store()
    try:
        store.record_login(
            LoginRecord(alice["a"], "smtp", "2001:db8::7", src_rdns="mail.example.net", src_loc="Berlin, DE",
                        src_isp="AS64500 Example"),
            now=NOW, dedup_window=60,
        )
    finally:
        store.close()
    assert _log(backend, alice["a"]) == [
        ("smtp", "2001:db8::7", "mail.example.net", "Berlin, DE", "AS64500 Example", NOW_TEXT),
    ]


def test_record_login_dedup_window(backend, alice):
    pw = alice["a"]
    store = backend.store()
    try:
        assert store.record_login(LoginRecord(pw, "imap", "198.51.100.7"), now=NOW, dedup_window=60) is True
        # same password, service and IP within the window: no row
        assert store.record_login(LoginRecord(pw, "imap", "198.51.100.7"), now=NOW + 10, dedup_window=60) is False
        assert store.record_login(LoginRecord(pw, "imap", "198.51.100.7"), now=NOW + 59, dedup_window=60) is False
        store.commit()  # the end of a request: what it wrote becomes visible to others
        assert len(_log(backend, pw)) == 1
        # a different service, IP or password is a new row
        assert store.record_login(LoginRecord(pw, "pop3", "198.51.100.7"), now=NOW + 10, dedup_window=60) is True
        assert store.record_login(LoginRecord(pw, "imap", "198.51.100.8"), now=NOW + 10, dedup_window=60) is True
        assert store.record_login(LoginRecord(alice["b"], "imap", "198.51.100.7"), now=NOW + 10,
                                  dedup_window=60) is True
        # after the window: a new row
        assert store.record_login(LoginRecord(pw, "imap", "198.51.100.7"), now=NOW + 61, dedup_window=60) is True
        # window 0 never deduplicates a later login
        assert store.record_login(LoginRecord(pw, "imap", "198.51.100.7"), now=NOW + 62, dedup_window=0) is True
    finally:
        store.close()
    assert [(r[0], r[1], r[5]) for r in _log(backend, pw)] == [
        ("imap", "198.51.100.7", NOW_TEXT),
        ("pop3", "198.51.100.7", "2023-11-14 22:13:30.500"),
        ("imap", "198.51.100.8", "2023-11-14 22:13:30.500"),
        ("imap", "198.51.100.7", "2023-11-14 22:14:21.500"),
        ("imap", "198.51.100.7", "2023-11-14 22:14:22.500"),
    ]
    assert len(_log(backend, alice["b"])) == 1


def test_record_login_default_timestamp_is_utc_with_milliseconds(backend, alice):
    # rows written by others (the plugin, an admin) get the column default: UTC, milliseconds
    backend.execute("INSERT INTO log (pwid, service, src_ip) VALUES (:p, 'imap', '192.0.2.1')", p=alice["a"])
    (stamp,) = backend.rows("SELECT timestamp FROM log WHERE pwid = :p", p=alice["a"])[0]
    stamp = _stamp(stamp)
    assert len(stamp) == len(NOW_TEXT) and stamp[19] == "."
    when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.UTC)
    assert abs(when.timestamp() - time.time()) < 120


def test_delete_password_cascades_to_log(backend, alice):
    store = backend.store()
    try:
        store.record_login(LoginRecord(alice["a"], "imap", "192.0.2.1"), now=NOW, dedup_window=60)
        store.record_login(LoginRecord(alice["b"], "imap", "192.0.2.1"), now=NOW, dedup_window=60)
    finally:
        store.close()
    backend.execute("DELETE FROM app_passwords WHERE id = :p", p=alice["a"])
    assert _log(backend, alice["a"]) == []
    assert len(_log(backend, alice["b"])) == 1


def test_record_login_unknown_password_id_is_tempfail(backend, alice):
    store = backend.store()
    try:
        with pytest.raises(TempFail) as info:
            store.record_login(LoginRecord(999_999, "imap", "192.0.2.1"), now=NOW, dedup_window=60)
    finally:
        store.close()
    _assert_clean(str(info.value), backend)


# --- the plugin's view -------------------------------------------------------------------


def test_view_lists_each_password_once_with_latest_log(backend, alice):
    insert = ("INSERT INTO log (pwid, service, src_ip, src_rdns, src_loc, src_isp, timestamp) "
              "VALUES (:p, 'imap', :ip, '<>', '', '', :t)")
    backend.execute(insert, p=alice["a"], ip="192.0.2.1", t="2023-11-14 10:00:00.000")
    backend.execute(insert, p=alice["a"], ip="192.0.2.2", t="2023-11-14 12:00:00.000")
    # two rows with the same (latest) timestamp: still one row in the view, the later insert
    backend.execute(insert, p=alice["b"], ip="192.0.2.3", t="2023-11-14 12:00:00.000")
    backend.execute(insert, p=alice["b"], ip="192.0.2.4", t="2023-11-14 12:00:00.000")
    rows = backend.rows("SELECT id, last_used_src_ip, last_used_timestamp FROM app_passwords_with_log")
    by_id = {r[0]: r for r in rows}
    assert len(rows) == 3 == len(by_id)
    assert by_id[alice["a"]][1] == "192.0.2.2"
    assert by_id[alice["b"]][1] == "192.0.2.4"
    assert _stamp(by_id[alice["b"]][2]) == "2023-11-14 12:00:00.000"
    assert by_id[alice["c"]][1:] == (None, None)


# --- internal failures: TempFail with a message that names the problem -----------------


def test_missing_sqlite_file(tmp_path):
    path = tmp_path / "nope" / "appauth.sqlite"
    with pytest.raises(TempFail) as info:
        open_store(f"sqlite:///{path}", 0.5)
    message = str(info.value)
    assert "cannot open SQLite database" in message
    assert str(path) in message
    assert not path.exists()


def test_missing_sqlite_file_in_existing_dir_is_not_created(tmp_path):
    path = tmp_path / "appauth.sqlite"
    with pytest.raises(TempFail, match="cannot open"):
        open_store(f"sqlite:///{path}", 0.5)
    assert not path.exists()


def test_sqlite_without_schema(tmp_path):
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.close()
    store = open_store(f"sqlite:///{path}", 0.5)
    try:
        with pytest.raises(TempFail) as info:
            store.find_passwords("alice@example.com")
    finally:
        store.close()
    message = str(info.value)
    assert "schema missing" in message and "init-db" in message and str(path) in message


def test_sqlite_not_a_database(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database file, but it is long enough to look like one" * 20)
    with pytest.raises(TempFail) as info:
        store = open_store(f"sqlite:///{path}", 0.5)
        store.find_passwords("alice@example.com")
    assert str(path) in str(info.value)
    assert "not a database" in str(info.value)


def test_sqlite_locked(sqlite_backend):
    backend = sqlite_backend
    alice = _seed(backend)
    other = sqlite3.connect(backend.path, isolation_level=None, timeout=0.1)
    try:
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO log (pwid, service, src_ip) VALUES (?, 'imap', '192.0.2.99')", (alice["a"],))
        store = backend.store(timeout=0.3)
        try:
            # WAL: a login still reads its passwords while another login writes
            assert len(store.find_passwords("alice@example.com")) == 2
            started = time.monotonic()
            with pytest.raises(TempFail) as info:
                store.record_login(LoginRecord(alice["a"], "imap", "192.0.2.1"), now=NOW, dedup_window=60)
            assert time.monotonic() - started < 3  # bounded by the busy timeout
        finally:
            store.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    message = str(info.value)
    assert "locked" in message and str(backend.path) in message
    _assert_clean(message)


def test_sqlite_write_locked_costs_one_timeout_per_login(sqlite_backend):
    """The audit event waits the whole busy timeout; the log row that follows does not wait again."""
    backend = sqlite_backend
    alice = _seed(backend)
    timeout = 1.5
    other = sqlite3.connect(backend.path, isolation_level=None, timeout=0.1)
    try:
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO log (pwid, service, src_ip) VALUES (?, 'imap', '192.0.2.99')", (alice["a"],))
        store = backend.store(timeout=timeout)
        try:
            with pytest.raises(TempFail, match="locked"):
                store.record_event(event_row(timestamp=utc_timestamp(NOW), user="alice@example.com", pwid=alice["a"],
                                             service="imap", ip="192.0.2.1", facts=None, result="unknown"))
            started = time.monotonic()
            with pytest.raises(TempFail, match=r"locked.*not waited for again") as info:
                store.record_login(LoginRecord(alice["a"], "imap", "192.0.2.1"), now=NOW, dedup_window=60)
            # SQLite's busy handler waits at least the whole timeout: this did not wait at all
            assert time.monotonic() - started < timeout
            store.finish()  # the next request (serve's pool) waits again: the lock may be gone
            other.execute("ROLLBACK")
            assert store.record_login(LoginRecord(alice["a"], "imap", "192.0.2.1"), now=NOW, dedup_window=60)
        finally:
            store.close()
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    _assert_clean(str(info.value))


@pytest.mark.parametrize("name", ["a%41.sqlite", "100%.sqlite", "x%2541?#.sqlite"])
def test_sqlite_file_name_with_percent(tmp_path, name):
    """The dsn is a URL (%25 is a percent sign); the store opens the very file SQLAlchemy opens."""
    from urllib.parse import quote

    path = tmp_path / name
    dsn = f"sqlite:///{quote(str(path))}"
    engine = schema.make_engine(dsn)
    schema.init_db(engine)
    schema.create_password(engine, "alice@example.com", HASH_A)
    engine.dispose()
    assert path.exists()
    store = open_store(dsn, 0.5)
    try:
        assert [r.uid for r in store.find_passwords("alice@example.com")] == ["alice@example.com"]
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".sqlite")) == [name]


_READONLY_SCRIPT = """
import sys
from dovecot_appauth.core import TempFail
from dovecot_appauth.audit.events import event_row
from dovecot_appauth.store import LoginRecord, open_store
try:
    store = open_store(sys.argv[1], 0.3)
    store.find_passwords("alice@example.com")
    store.record_login(LoginRecord(int(sys.argv[2]), "imap", "192.0.2.1"), now=1.0, dedup_window=60)
except TempFail as e:
    print("TEMPFAIL", e)
else:
    print("WROTE")
"""


def test_sqlite_read_only(sqlite_backend):
    """The database file is not writable for the login's user (root would write anyway)."""
    backend = sqlite_backend
    alice = _seed(backend)
    directory = Path(tempfile.mkdtemp(prefix="appauth-ro-", dir=shared_tempdir_base()))
    try:
        os.chmod(directory, 0o755)
        path = directory / "appauth.sqlite"
        backend.engine.dispose()
        shutil.copy(backend.path, path)
        os.chmod(path, 0o444)
        env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.run(
            [sys.executable, "-c", _READONLY_SCRIPT, f"sqlite:///{path}", str(alice["a"])],
            capture_output=True, text=True, timeout=60, env=env, cwd="/",
            user="nobody" if os.geteuid() == 0 else None,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("TEMPFAIL "), proc.stdout
    assert "read-only" in proc.stdout and str(path) in proc.stdout
    _assert_clean(proc.stdout)


def test_bad_dsn_is_tempfail():
    with pytest.raises(TempFail, match=r"\[database\] dsn") as info:
        open_store("postgresql://u:s3cr3t@db/x", 1)
    assert "s3cr3t" not in str(info.value)


def test_sqlite_dsn_with_a_nul_byte_is_a_dsn_error():
    """sqlite3 raised ValueError ("embedded null character"): an internal error of every login."""
    with pytest.raises(TempFail) as info:
        open_store("sqlite:////var/lib/app%00auth.sqlite", 1)
    assert str(info.value) == "[database] dsn: the SQLite file name contains a NUL byte (%00)"
    with pytest.raises(TempFail, match=r"^\[account.sql\] dsn: the SQLite file name contains a NUL byte"):
        open_store("sqlite:////x%00", 1, name="[account.sql] dsn")
    with pytest.raises(TempFail, match=r"^\[account.sql\] dsn: unsupported database") as info:
        open_store("postgresql://u:s3cr3t@db/x", 1, name="[account.sql] dsn")
    assert "s3cr3t" not in str(info.value)


@pytest.mark.mariadb
def test_mariadb_without_schema(mariadb_database):
    store = open_store(mariadb_database.dsn, 3)
    try:
        with pytest.raises(TempFail) as info:
            store.find_passwords("alice@example.com")
    finally:
        store.close()
    message = str(info.value)
    assert "doesn't exist" in message and "init-db" in message
    assert mariadb_database.server.password not in message


@pytest.mark.mariadb
def test_mariadb_wrong_credentials(mariadb_database):
    server = mariadb_database.server
    dsn = f"mysql+pymysql://{server.user}:Wr0ng-S3cret@{server.host}:{server.port}/{mariadb_database.name}"
    with pytest.raises(TempFail) as info:
        open_store(dsn, 3)
    message = str(info.value)
    assert "cannot connect" in message and "Access denied" in message
    assert "Wr0ng-S3cret" not in message and ":***@" in message


@pytest.mark.mariadb
def test_mariadb_unreachable_is_quick(mariadb):
    from tests.support.common import free_port

    dsn = f"mysql+pymysql://appauth:S3cret-x@127.0.0.1:{free_port()}/appauth"
    started = time.monotonic()
    with pytest.raises(TempFail, match="cannot connect") as info:
        open_store(dsn, 1)
    assert time.monotonic() - started < 5
    assert "S3cret-x" not in str(info.value)


def test_mariadb_host_name_is_resolved_within_the_timeout(monkeypatch):
    """The C library's resolver has no deadline (10 s and more with a nameserver that does
    not answer) and PyMySQL's connect_timeout covers only the TCP connect: the name is
    resolved by the timeout, as the connect is."""
    import socket

    asked = []

    def unanswered(host, *args, **kwargs):
        asked.append(host)
        time.sleep(3)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", unanswered)
    started = time.monotonic()
    with pytest.raises(TempFail) as info:
        open_store("mysql+pymysql://appauth:S3cret-x@db.appauth-test.invalid:3306/appauth", 0.5)
    assert time.monotonic() - started < 2
    assert asked == ["db.appauth-test.invalid"]
    assert str(info.value) == ("cannot connect to mysql+pymysql://appauth:***@db.appauth-test.invalid:3306/appauth: "
                               "no answer from the resolver for db.appauth-test.invalid within 0.5 s")


def test_mariadb_host_name_that_does_not_resolve_is_said_as_pymysql_says_it(monkeypatch):
    import socket

    def unknown(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with monkeypatch.context() as patched:
        patched.setattr(socket, "getaddrinfo", unknown)
        with pytest.raises(TempFail) as info:
            open_store("mysql+pymysql://appauth:S3cret-x@db.appauth-test.invalid/appauth", 3)
    assert str(info.value) == ("cannot connect to mysql+pymysql://appauth:***@db.appauth-test.invalid/appauth: "
                               "Can't connect to MySQL server on 'db.appauth-test.invalid' ([Errno -2] Name or "
                               "service not known) (error 2003)")
    # a label over 63 characters: UnicodeError from the idna codec, before any question is asked
    with pytest.raises(TempFail, match="Can't connect to MySQL server") as info:
        open_store(f"mysql+pymysql://appauth:S3cret-x@{'x' * 70}.invalid/appauth", 3)
    assert "S3cret-x" not in str(info.value)


@pytest.mark.mariadb
def test_mariadb_by_host_name_and_by_address(mariadb_database, monkeypatch):
    """A name goes through resolver.getaddrinfo_within (localhost: ::1 first, where nothing
    listens, then 127.0.0.1, as socket.create_connection tries them); an address does not,
    so its login costs what it did (no thread)."""
    import dovecot_appauth.resolver as resolver_module

    resolved = []
    real = resolver_module.getaddrinfo_within
    monkeypatch.setattr(resolver_module, "getaddrinfo_within",
                        lambda *args: resolved.append(args[0]) or real(*args))
    server = mariadb_database.server
    engine = schema.make_engine(mariadb_database.dsn)
    schema.init_db(engine)
    pwid = schema.create_password(engine, "alice@example.com", HASH_A)
    engine.dispose()
    by_name = mariadb_database.dsn.replace(f"@{server.host}:", "@localhost:")
    assert by_name != mariadb_database.dsn
    for dsn, names in ((by_name, ["localhost"]), (mariadb_database.dsn, [])):
        resolved.clear()
        store = open_store(dsn, 3)
        try:
            assert [row.id for row in store.find_passwords("alice@example.com")] == [pwid]
        finally:
            store.close()
        assert resolved == names
    with pytest.raises(TempFail, match=r"Can't connect to MySQL server on 'localhost' \(.*(error 2003)"):
        open_store(by_name.replace(f":{server.port}/", ":1/"), 3)  # nothing listens: every address refused


@pytest.mark.parametrize("backend", ["mariadb", "nextcloud"])
def test_program_with_a_resolver_that_never_answers_is_a_temporary_failure_by_the_deadline(tmp_path, backend):
    """The per-login program in a mount namespace whose /etc/resolv.conf names a nameserver
    that never answers (glibc: 5 s x 2 attempts): a temporary failure after the timeout of
    the call that named the host (MariaDB's connect_timeout, [nextcloud] timeout)."""
    import socket

    from tests.support.hardening import PROGRAM, make_site, request_bytes, run_checkpassword

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private /etc/resolv.conf")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        silent.bind(("127.0.0.153", 53))  # receives the questions, answers none
    except OSError as e:
        silent.close()
        pytest.skip(f"cannot bind 127.0.0.153:53 ({e})")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.153\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(resolv, 0o644)
    site = make_site(prefix="appauth-resolv-")
    try:
        site.add_password("alice", "alice@example.com")
        if backend == "mariadb":
            site.write(database={"dsn": "mysql+pymysql://appauth:S3cret-x@db.appauth-test.invalid/appauth",
                                 "connect_timeout": 1.0})
        else:
            site.write(auth={"backend": "nextcloud"},
                       nextcloud={"url": "http://cloud.appauth-test.invalid/", "timeout": 1.0})
        wrapper = ("unshare", "-m", "/bin/sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh",
                   str(PROGRAM))
        run = run_checkpassword(site.path, request_bytes("alice@example.com", site.pw("alice")), program=wrapper)
    finally:
        silent.close()
        site.remove()
    assert run.status == 111, run.stderr
    if backend == "mariadb":
        assert run.lines == ["dovecot-appauth: cannot connect to mysql+pymysql://appauth:***@db.appauth-test.invalid"
                             "/appauth: no answer from the resolver for db.appauth-test.invalid within 1 s"], \
            run.stderr
    else:
        assert run.lines == ["dovecot-appauth: nextcloud: no answer from http://cloud.appauth-test.invalid/ "
                             "within 1s"], run.stderr
    assert run.elapsed < 4  # was 10 s (glibc's default timeout and attempts)


@pytest.mark.mariadb
def test_mariadb_unix_socket_dsn(mariadb_database):
    engine = schema.make_engine(mariadb_database.dsn)
    schema.init_db(engine)
    pwid = schema.create_password(engine, "alice@example.com", HASH_A)
    engine.dispose()
    store = open_store(mariadb_database.socket_dsn, 3)
    try:
        assert [r.id for r in store.find_passwords("ALICE@example.com")] == [pwid]
    finally:
        store.close()


def test_record_login_dedup_without_client_ip(backend, alice):
    """A login without an address (a local process) is deduplicated too: NULL-safe compare."""
    pw = alice["a"]
    store = backend.store()
    try:
        assert store.record_login(LoginRecord(pw, "imap", None), now=NOW, dedup_window=60) is True
        assert store.record_login(LoginRecord(pw, "imap", None), now=NOW + 5, dedup_window=60) is False
        assert store.record_login(LoginRecord(pw, "imap", "198.51.100.7"), now=NOW + 5, dedup_window=60) is True
    finally:
        store.close()
    assert len(_log(backend, pw)) == 2


def test_record_login_concurrent_connections_lose_no_row_and_dedup_holds(backend, alice):
    # Concurrent INSERT ... SELECT into `log` deadlock on InnoDB's AUTO-INC lock (error 1467
    # or 1213); the store runs the statement again, so no successful login goes unrecorded.
    import threading

    def worker(n: int, barrier: threading.Barrier, errors: list) -> None:
        store = backend.store(timeout=10.0)
        try:
            barrier.wait()
            for i in range(10):
                store.record_login(LoginRecord(alice["a"], "imap", f"198.51.{n}.{i}"), now=NOW, dedup_window=60)
                # every worker also records the same login: exactly one row of it may exist
                store.record_login(LoginRecord(alice["b"], "imap", f"203.0.113.{i}"), now=NOW, dedup_window=60)
        except Exception as e:  # reported by the assert below
            errors.append(e)
        finally:
            store.close()

    errors: list = []
    barrier = threading.Barrier(6)
    threads = [threading.Thread(target=worker, args=(n, barrier, errors)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_log(backend, alice["a"])) == 60
    assert sorted(r[1] for r in _log(backend, alice["b"])) == sorted(f"203.0.113.{i}" for i in range(10))


# --- transactions and durability (SQLite) -------------------------------------------------


def test_sqlite_store_runs_wal_with_synchronous_normal(sqlite_backend):
    """init-db leaves the file in WAL mode; each login's connection commits with
    synchronous=NORMAL (no fsync per commit; docs/SECURITY.md, Durability)."""
    store = sqlite_backend.store()
    try:
        assert store.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store.conn.execute("PRAGMA synchronous").fetchone() == (1,)  # 1 = NORMAL, 2 = FULL
    finally:
        store.close()


def test_sqlite_writes_of_a_request_are_one_transaction(sqlite_backend):
    """Audit event, failure row and `log` row: one BEGIN, one COMMIT (in commit()), and
    nothing visible to another connection before it."""
    ids = _seed(sqlite_backend)
    store = sqlite_backend.store()
    statements: list[str] = []
    try:
        store.conn.set_trace_callback(statements.append)
        store.record_event(event_row(timestamp=NOW_TEXT, user="alice@example.com", pwid=ids["a"], service="imap",
                                     ip="198.51.100.7", facts=None, result="ok", rule="", reason="",
                                     authenticated=True))
        store.record_login(LoginRecord(ids["a"], "imap", "198.51.100.7"), now=NOW, dedup_window=60)
        store.record_failure("alice@example.com", "198.51.100.7", "imap", NOW)
        assert store.conn.in_transaction
        assert _log(sqlite_backend, ids["a"]) == []  # not committed yet
        store.commit()
        assert not store.conn.in_transaction
    finally:
        store.close()
    assert [s.split()[0] for s in statements] == ["BEGIN", "INSERT", "INSERT", "INSERT", "COMMIT"]
    assert len(_log(sqlite_backend, ids["a"])) == 1
    assert sqlite_backend.rows("SELECT count(*) FROM audit_events") == [(1,)]
    assert sqlite_backend.rows("SELECT count(*) FROM auth_failures") == [(1,)]


def test_sqlite_failed_commit_is_tempfail_and_rolled_back(sqlite_backend):
    """A COMMIT that fails (here: a foreign key checked at commit time) raises TempFail and
    leaves nothing half-written; the next request starts clean."""
    ids = _seed(sqlite_backend)
    store = sqlite_backend.store()
    try:
        store.conn.execute("PRAGMA defer_foreign_keys = ON")
        store.record_login(LoginRecord(ids["a"], "imap", "198.51.100.7"), now=NOW, dedup_window=60)
        store.record_login(LoginRecord(999_999, "imap", "192.0.2.1"), now=NOW, dedup_window=60)
        with pytest.raises(TempFail, match="FOREIGN KEY") as info:
            store.commit()
        assert not store.conn.in_transaction
        store.finish()  # nothing pending: no error
    finally:
        store.close()
    _assert_clean(str(info.value), sqlite_backend)
    assert _log(sqlite_backend, ids["a"]) == []
