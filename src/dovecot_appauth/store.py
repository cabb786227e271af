"""Per-login SQL: a user's app passwords, and the `log` row of a successful login.

This is the hot path, so it talks to the bare driver (stdlib sqlite3, or PyMySQL)
with hand-written SQL that works on the schema `schema.py` creates, which is the
Roundcube plugin imap_apppasswd's. Admin work (creating the schema, listing, revoking)
goes through SQLAlchemy in `schema.py`; nothing here imports it.

Every driver error becomes `TempFail` with a message that names the problem and
never a password or hash: a broken database must never look like a wrong password.
"""

from __future__ import annotations

import posix
import time

from .core import TempFail, WouldWait
from .dsn import DsnError, parse_dsn
from .values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    import os
    from collections.abc import Callable
    from typing import Any, Protocol

    from .audit.events import EventRow
    from .dsn import Dsn
    from .policy import Policy


class PasswordRow(Value):
    __slots__ = ("deleted", "hash", "id", "policy", "uid")

    def __init__(self, id: int, uid: str, hash: str, deleted: str | None, policy: Policy | None = None):
        self.id = id
        self.uid = uid  # as stored: the canonical user name returned to Dovecot
        self.hash = hash
        self.deleted = deleted  # UTC time of the soft delete (revocation), None while active
        self.policy = policy  # app_password_policy (policy.py); None: no limits

    def __repr__(self) -> str:  # keep the hash out of any accidental log or traceback
        return f"PasswordRow(id={self.id}, uid={self.uid!r}, deleted={self.deleted!r}, policy={self.policy!r})"


class LoginRecord(Value):
    __slots__ = ("pwid", "service", "src_ip", "src_isp", "src_loc", "src_rdns")

    def __init__(self, pwid: int, service: str, src_ip: str | None, src_rdns: str | None = "<>",
                 src_loc: str | None = "", src_isp: str | None = ""):
        self.pwid = pwid
        self.service = service
        self.src_ip = src_ip
        self.src_rdns = src_rdns
        self.src_loc = src_loc
        self.src_isp = src_isp


def utc_timestamp(now: float) -> str:
    """`YYYY-MM-DD HH:MM:SS.fff` in UTC, the text form of MariaDB's DATETIME(3)."""
    seconds = int(now)
    millis = int((now - seconds) * 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}"


if TYPE_CHECKING:  # a Protocol only for the type checker: `typing` costs a login ~4 ms

    class Store(Protocol):
        upgrade_note: str | None

        def find_passwords(self, username: str) -> list[PasswordRow]: ...

        def account_rows(self, query: str, username: str) -> list[tuple[Any, ...]]: ...

        def record_event(self, row: EventRow) -> None: ...

        def recent_events(self, username: str, since: float) -> list[tuple[Any, ...]]: ...

        def record_login(self, record: LoginRecord, *, now: float, dedup_window: float) -> bool: ...

        def failure_counts(self, username: str, ip: str, since: float) -> tuple[int, int, int]: ...

        def record_failure(self, username: str, ip: str | None, service: str, now: float) -> None: ...

        def known_client(self, username: str, client: str, since: float) -> bool: ...

        def record_known_client(self, username: str, client: str, now: float) -> None: ...

        def commit(self) -> None: ...

        def claim_writes(self) -> None: ...

        def rollback(self) -> None: ...

        def finish(self) -> None: ...

        def usable(self) -> bool: ...

        def close(self, exiting: bool = False) -> None: ...


_SELECT_PASSWORDS = "SELECT id, uid, password, deleted FROM app_passwords WHERE uid = {p}{collate}"
# With each password's policy, in the same round trip (the side table may be missing in a
# database from before `upgrade-db`: then the plain query above, and a note).
_SELECT_PASSWORDS_POLICY = (
    "SELECT p.id, p.uid, p.password, p.deleted, q.services, q.expires, q.networks FROM app_passwords p "
    "LEFT JOIN app_password_policy q ON q.pwid = p.id WHERE p.uid = {p}{collate}"
)
# PRAGMA synchronous of the per-login connections (see SqliteStore.__init__)
SQLITE_SYNCHRONOUS = "NORMAL"
UPGRADE_NOTE = ("database has no app_password_policy/audit_events/auth_failures tables (policies, audit events "
                "and throttling are off): "
                "run 'dovecot-appauth upgrade-db'")


def _password_row(r: tuple[Any, ...]) -> PasswordRow:
    policy = None
    if len(r) > 4 and (r[4] is not None or r[5] is not None or r[6] is not None):
        from .policy import from_row  # only for a password that has a policy

        policy = from_row(r[4], None if r[5] is None else str(r[5]), r[6])
    return PasswordRow(int(r[0]), str(r[1]), str(r[2]), None if r[3] is None else str(r[3]), policy)

# One statement, so the check and the insert cannot interleave with another login's.
_INSERT_LOG = (
    "INSERT INTO log (pwid, service, src_ip, src_rdns, src_loc, src_isp, timestamp) "
    "SELECT {p}, {p}, {p}, {p}, {p}, {p}, {p} {dual}WHERE NOT EXISTS ("
    "SELECT 1 FROM log WHERE pwid = {p} AND service = {p} AND src_ip {same} {p} AND timestamp >= {p})"
)


# The throttle's three counters in one round trip; the WHERE uses the uid and src_ip
# indexes of auth_failures (schema.py).
_COUNT_FAILURES = (
    "SELECT COALESCE(SUM(CASE WHEN uid = {p}{collate} AND src_ip = {p} THEN 1 ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN src_ip = {p} THEN 1 ELSE 0 END), 0), "
    "COALESCE(SUM(CASE WHEN uid = {p}{collate} THEN 1 ELSE 0 END), 0) "
    "FROM auth_failures WHERE timestamp >= {p} AND (uid = {p}{collate} OR src_ip = {p})"
)
_INSERT_FAILURE = "INSERT INTO auth_failures (timestamp, uid, src_ip, service) VALUES ({p}, {p}, {p}, {p})"

# Known clients (a client that logged in as the user lately is exempt from the per-user
# limit): one row per (user, client), its time moved forward by every successful login.
_SELECT_KNOWN = "SELECT 1 FROM known_clients WHERE uid = {p}{collate} AND client = {p} AND last_login >= {p} LIMIT 1"
# The time moves only when it is more than KNOWN_CLIENT_REFRESH old: a statement that
# changes nothing writes no page (SQLite: no WAL frame to sync; InnoDB: no redo).
KNOWN_CLIENT_REFRESH = 3600.0
_UPSERT_KNOWN_SQLITE = ("INSERT INTO known_clients (uid, client, last_login) VALUES (?, ?, ?) "
                        "ON CONFLICT (uid, client) DO UPDATE SET last_login = excluded.last_login "
                        "WHERE known_clients.last_login < ?")
_UPSERT_KNOWN_MYSQL = ("INSERT INTO known_clients (uid, client, last_login) VALUES (%s, %s, %s) "
                       "ON DUPLICATE KEY UPDATE last_login = IF(last_login < %s, VALUES(last_login), last_login)")

# What the mail host's database user needs, table by table (docs/CONFIGURATION.md, "Least privilege on MariaDB"):
# a permission error names the GRANT that is missing, and check-config probes each one.
MAIL_HOST_GRANTS = {
    "app_passwords": "SELECT",
    "app_password_policy": "SELECT",
    "log": "SELECT, INSERT",
    "audit_events": "SELECT, INSERT",
    "auth_failures": "SELECT, INSERT",
    "known_clients": "SELECT, INSERT, UPDATE",
}
# the tables the brute-force limiter reads and writes
LIMITER_TABLES = ("auth_failures", "known_clients")
_SIDE_TABLES = ("app_password_policy", "audit_events", "auth_failures", "known_clients")


def _count_params(username: str, ip: str, since: float) -> tuple[Any, ...]:
    return (username, ip, ip, username, utc_timestamp(since), username, ip)


def _insert_params(record: LoginRecord, now: float, dedup_window: float) -> tuple[Any, ...]:
    stamp = utc_timestamp(now)
    since = utc_timestamp(now - dedup_window)
    return (
        record.pwid, record.service, record.src_ip, record.src_rdns, record.src_loc, record.src_isp, stamp,
        record.pwid, record.service, record.src_ip, since,
    )


def sqlite_uri(path: str, mode: str) -> str:
    """The `file:` URI that opens exactly the file `path`.

    SQLite decodes %XX escapes in a URI, so a `%` in the file name must be sent as `%25`
    (or `a%41.db` would open `aA.db`); `?` and `#` would end the path.
    """
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode={mode}"


def _is_lock_timeout(error: Exception) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection held the lock for the whole timeout."""
    text = str(error)
    return "locked" in text or "busy" in text


def _describe_sqlite_error(error: Exception, path: str) -> str:
    text = str(error)
    if "no such table" in text:
        if any(table in text for table in _SIDE_TABLES):
            return f"{path}: {text}: run 'dovecot-appauth upgrade-db'"
        return f"database schema missing in {path} ({text}): run 'dovecot-appauth init-db'"
    if "unable to open" in text:
        return f"cannot open SQLite database {path} (missing, or its directory not accessible to this user)"
    if _is_lock_timeout(error):
        return f"SQLite database {path} is locked ({text})"
    if "readonly" in text:
        return f"SQLite database {path} is read-only for this user ({text})"
    return f"SQLite database {path}: {text}"


def _no_statement_cache(maxsize: int) -> Any:
    """Stands in for `functools.lru_cache` while `_sqlite3` is imported by `_sqlite_module`:
    `lru_cache(maxsize)(connection)` becomes the connection itself, which prepares each
    statement it is called with (what CPython's cache calls on a miss)."""
    return _connection_itself


def _connection_itself(connection: Any) -> Any:
    return connection


# what the stand-in `functools` holds while `_sqlite3` is imported (_sqlite_module)
_FUNCTOOLS_STAND_IN = {"lru_cache": _no_statement_cache}


def _sqlite_module() -> Any:
    """The `_sqlite3` C module, without `functools` and `collections` when nothing loaded them.

    CPython 3.11-3.13's `_sqlite3` takes `functools.lru_cache` when it is imported, for a
    per-connection cache of prepared statements; importing `functools` (and `collections`
    under it) is about 10 % of a warm login's instructions (docs/PERFORMANCE.md). The
    per-login program runs each of its statements once or twice on its one connection, so
    it has nothing to cache: while `_sqlite3` is imported, a stand-in `functools` whose
    `lru_cache` caches nothing is in `sys.modules`, and it is removed right after. A process
    that has `functools` already (serve, the CLI, the tests) gets the real cache, and if
    the stand-in does not satisfy this Python's `_sqlite3`, the plain import is done.
    """
    import sys

    module = sys.modules.get("_sqlite3")
    if module is not None or "functools" in sys.modules:
        import _sqlite3

        return _sqlite3
    stand_in = type(sys)("functools")
    stand_in.__dict__.update(_FUNCTOOLS_STAND_IN)
    sys.modules["functools"] = stand_in
    try:
        import _sqlite3
    except Exception:
        _sqlite3 = None
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]
    if _sqlite3 is None:  # this Python's _sqlite3 wants more of functools: the plain import
        sys.modules.pop("_sqlite3", None)
        import _sqlite3
    return _sqlite3


# A process about to exit leaves its SQLite connection open while the WAL is shorter than
# this (close_for_exit): about a dozen successful logins' writes, which the next process
# to open the file first reads whole (~0.3 ms at this size).
WAL_KEEP_BYTES = 256 * 1024


def close_for_exit(conn: Any, path: str) -> None:
    """Close `conn`, a connection to the SQLite file at `path`, in a process that exits
    right after (the per-login program), or leave it to the exit.

    Closing the last connection to a database in WAL mode checkpoints it (fsync of the
    WAL, its pages copied into the file, fsync of the file) and deletes the -wal and -shm
    files; the next login creates both again and fsyncs the new WAL's header. One process
    per login paid that every time: ~1 ms here, three fsyncs on a real disk.

    Left open to `os._exit`, nothing committed is lost (the commit is in the WAL, which
    SQLite reads like the file); the -wal and -shm stay, and the next login appends to the
    WAL. The price: the first process to open the file while no other has it open
    rebuilds the WAL's index by reading the whole WAL, and having forgotten how much of it
    was copied back, never starts the WAL afresh, so a WAL that nobody closes only grows.
    So a process that finds the WAL past WAL_KEEP_BYTES closes: when it is the last one
    open, that checkpoints the file and removes the WAL. Under steady concurrent logins
    some process always has the file open, nothing is rebuilt, and SQLite's own
    checkpoints (every 1,000 pages) keep the WAL bounded as they always did.

    Durability stays what `synchronous = NORMAL` gives (SqliteStore.__init__): a power cut
    or OS crash can lose the last commits, never corrupt the file.
    """
    try:
        size = posix.stat(path + "-wal").st_size
    except OSError:
        size = WAL_KEEP_BYTES  # no WAL (a rollback-journal file) or cannot tell: close
    if size >= WAL_KEEP_BYTES:
        conn.close()
    else:
        _left_to_exit.append(conn)  # a connection that nothing refers to closes itself


_left_to_exit: list[Any] = []


class SqliteStore:
    def __init__(self, path: str, timeout: float, shared: bool = False):
        # The C module itself: the `sqlite3` package adds only datetime adapters we never
        # use, and its dbapi2 imports datetime (~3 ms a login). Same classes, same errors.
        # Without functools' statement cache when nothing else loaded functools (above).
        sqlite3 = _sqlite_module()

        self._errors = sqlite3.Error
        self.path = path
        self.upgrade_note: str | None = None  # set when the side tables are missing
        # Set when a write waited the whole timeout for the lock: the request's other writes
        # fail at once, so a locked database costs one timeout in all, not one per row.
        self._locked: str | None = None
        # serve's event loop (server.py): a lock another connection holds is WouldWait, not
        # a wait (the loop's store has a busy timeout of 0), and the write transaction is
        # claimed before the request's first visible effect (claim_writes)
        self.inline = False
        self._wal: bool | None = None  # in_wal(), once known
        try:
            # mode=rw: never create an empty database where the real one is missing
            self.conn = sqlite3.connect(
                sqlite_uri(path, "rw"),
                uri=True,
                timeout=timeout,
                isolation_level=None,
                # shared: kept by serve's pool, which hands it to one thread at a time
                check_same_thread=not shared,
            )
            self.conn.execute("PRAGMA foreign_keys = ON")
            # The database is in WAL mode (init-db/upgrade-db). NORMAL: a commit appends to
            # the WAL without an fsync; the WAL is synced at checkpoints. A power cut or OS
            # crash can lose the last commits (log rows, audit events, limiter rows), never
            # corrupt the file; a crash of this process loses nothing committed. FULL would
            # pay ~1.5 ms of fsync on every successful login (docs/PERFORMANCE.md, SECURITY.md).
            self.conn.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
            # which file this is, so that a pool notices the database was replaced (mv, restore)
            self._identity = _file_identity(path) if shared else None
        except sqlite3.Error as e:
            raise TempFail(_describe_sqlite_error(e, path)) from None

    def find_passwords(self, username: str) -> list[PasswordRow]:
        sql = _SELECT_PASSWORDS_POLICY.format(p="?", collate=" COLLATE NOCASE")
        try:
            try:
                rows = self.conn.execute(sql, (username,)).fetchall()
            except self._errors as e:
                if "no such table: app_password_policy" not in str(e):
                    raise
                self.upgrade_note = UPGRADE_NOTE
                rows = self.conn.execute(_SELECT_PASSWORDS.format(p="?", collate=" COLLATE NOCASE"),
                                         (username,)).fetchall()
        except self._errors as e:
            raise self._read_error(e) from None
        return [_password_row(r) for r in rows]

    def _read_error(self, error: Exception) -> Exception:
        if self.inline and _is_lock_timeout(error):
            return WouldWait(f"SQLite database {self.path} is locked")
        return TempFail(_describe_sqlite_error(error, self.path))

    def _write_error(self, error: Exception) -> Exception:
        message = _describe_sqlite_error(error, self.path)
        if _is_lock_timeout(error):
            if self.inline:
                return WouldWait(f"SQLite database {self.path} is locked")
            self._locked = message
        return TempFail(message)

    def _check_not_locked(self) -> None:
        if self._locked is not None:
            raise TempFail(f"{self._locked}; not waited for again in this login")

    def account_rows(self, query: str, username: str) -> list[tuple[Any, ...]]:
        """The account gate's query ([account.sql], account.py), :user bound to `username`."""
        try:
            return self.conn.execute(query, {"user": username}).fetchmany(2)
        except self._errors as e:
            raise self._read_error(e) from None

    def _begin(self) -> None:
        """Open the request's write transaction unless it is open: the audit event, the
        `log` row and whatever the request writes after them commit together, in `commit()`
        (one commit, one WAL append per login). BEGIN is deferred: the write lock is taken
        by the first write, which comes after the enrichment, never before it."""
        if self.inline:
            self.claim_writes()
        elif not self.conn.in_transaction:
            self.conn.execute("BEGIN")

    def claim_writes(self) -> None:
        """On serve's event loop (`inline`): open the request's write transaction with the
        write lock now, or raise WouldWait when another connection holds it (no wait: the
        busy timeout is 0). Called before the first thing of a request that shows (the
        audit line, a row), so that its rerun on a thread repeats nothing. Elsewhere a
        no-op: there the transaction opens with the first write (`_begin`)."""
        if not self.inline or self.conn.in_transaction:
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except self._errors as e:
            raise self._write_error(e) from None

    def in_wal(self) -> bool:
        """Is the database in WAL mode (init-db makes it so)? Only then can serve's event loop
        write to it: in the older rollback-journal mode a commit waits for the readers, and
        the loop's connection cannot wait. Asked once per connection."""
        if self._wal is None:
            try:
                mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
            except self._errors:
                return False  # not now; asked again next time
            self._wal = str(mode).lower() == "wal"
        return self._wal

    def rollback(self) -> None:
        """Undo the request's uncommitted writes (a request serve runs again on a thread)."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except self._errors:
                pass

    def record_event(self, row: EventRow) -> None:
        from .audit.events import INSERT_EVENT

        self._check_not_locked()
        try:
            self._begin()
            self.conn.execute(INSERT_EVENT.format(p="?"), row.params())
        except self._errors as e:
            raise self._write_error(e) from None

    def recent_events(self, username: str, since: float) -> list[tuple[Any, ...]]:
        from .audit.events import SELECT_HISTORY

        try:
            return self.conn.execute(SELECT_HISTORY.format(p="?", collate=" COLLATE NOCASE"),
                                     (username, utc_timestamp(since))).fetchall()
        except self._errors as e:
            raise self._read_error(e) from None

    def failure_counts(self, username: str, ip: str, since: float) -> tuple[int, int, int]:
        """Failed logins since `since`: (this user from this IP, this IP, this user)."""
        try:
            row = self.conn.execute(_COUNT_FAILURES.format(p="?", collate=" COLLATE NOCASE"),
                                    _count_params(username, ip, since)).fetchone()
        except self._errors as e:
            if "no such table: auth_failures" in str(e):  # an old database: no throttling until upgrade-db
                self.upgrade_note = UPGRADE_NOTE
                return (0, 0, 0)
            raise self._read_error(e) from None
        return (int(row[0]), int(row[1]), int(row[2]))

    def record_failure(self, username: str, ip: str | None, service: str, now: float) -> None:
        self._check_not_locked()
        try:
            # a transaction of its own (autocommit) unless one is open: a refusal for a
            # leaked password evaluates the sources after this row, and must not hold the
            # write lock meanwhile. On serve's loop, in the request's transaction (which a
            # leaked password rolls back: login._alert_leaked_password)
            self.claim_writes()
            self.conn.execute(_INSERT_FAILURE.format(p="?"), (utc_timestamp(now), username, ip, service))
        except self._errors as e:
            raise self._write_error(e) from None

    def known_client(self, username: str, client: str, since: float) -> bool:
        """Did `client` log in as `username` since `since`?"""
        try:
            row = self.conn.execute(_SELECT_KNOWN.format(p="?", collate=" COLLATE NOCASE"),
                                    (username, client, utc_timestamp(since))).fetchone()
        except self._errors as e:
            raise self._read_error(e) from None
        return row is not None

    def record_known_client(self, username: str, client: str, now: float) -> None:
        try:
            self.conn.execute(_UPSERT_KNOWN_SQLITE, (username, client, utc_timestamp(now),
                                                     utc_timestamp(now - KNOWN_CLIENT_REFRESH)))
        except self._errors as e:  # after the audit line: never WouldWait
            raise TempFail(_describe_sqlite_error(e, self.path)) from None

    def record_login(self, record: LoginRecord, *, now: float, dedup_window: float) -> bool:
        sql = _INSERT_LOG.format(p="?", dual="", same="IS")  # IS: NULL-safe, a login without IP
        self._check_not_locked()
        try:
            self._begin()
            cursor = self.conn.execute(sql, _insert_params(record, now, dedup_window))
            inserted = cursor.rowcount == 1
        except self._errors as e:
            raise self._write_error(e) from None
        return inserted

    def commit(self) -> None:
        """Commit the request's writes (one transaction); TempFail when that fails, after
        rolling back, so that the caller can say what was not recorded."""
        if not self.conn.in_transaction:
            return
        try:
            self.conn.execute("COMMIT")
        except self._errors as e:
            try:
                self.conn.execute("ROLLBACK")
            except self._errors:
                pass
            raise TempFail(_describe_sqlite_error(e, self.path)) from None  # never WouldWait

    def finish(self) -> None:
        """End the request: commit what is pending, forget what it learnt of the schema."""
        self.upgrade_note = None
        self._locked = None
        try:
            self.commit()
        except TempFail:
            pass  # the caller that cares (login.decide) committed and reported already

    def usable(self) -> bool:
        """Still the database at `path` (not replaced since it was opened)? For pooled stores."""
        if self._identity is None:
            return True
        from .filestat import stat  # serve only: its stat at most once per interval

        return self._identity == _file_identity(self.path, stat)

    def close(self, exiting: bool = False) -> None:
        """Commit and close; `exiting`: this process ends right after (close_for_exit)."""
        self.finish()
        if exiting:
            close_for_exit(self.conn, self.path)
        else:
            self.conn.close()


def _file_identity(path: str, stat: Callable[[str], os.stat_result] = posix.stat) -> tuple[int, int] | None:
    try:
        st = stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


# InnoDB deadlocks between concurrent logins, e.g. their INSERT ... SELECT into `log`: each
# takes the table's AUTO-INC lock (a bulk insert, innodb_autoinc_lock_mode=1) and shared
# next-key locks for its NOT EXISTS. 1213 is the deadlock; 1467 ("Failed to read
# auto-increment value from storage engine") is the same deadlock met while waiting for
# the AUTO-INC lock. MysqlStore._run runs such a statement again.
_DEADLOCK_ERRORS = (1213, 1467)
_DEADLOCK_RETRIES = 8  # doubling pauses from about 2 ms: under 1 s in all
# "command denied" for a table (1142) or a column (1143): a missing GRANT, not a missing table
_PERMISSION_ERRORS = (1142, 1143)
_NO_SUCH_TABLE = 1146


class MysqlStore:
    def __init__(self, dsn: Dsn, timeout: float):
        import pymysql

        self._errors = pymysql.Error
        self.where = dsn.redacted()
        self.database = dsn.database
        self.upgrade_note: str | None = None  # set when the side tables are missing
        kwargs: dict[str, Any] = {
            "user": dsn.user,
            "password": dsn.password or "",
            "database": dsn.database,
            "charset": dsn.query.get("charset", "utf8mb4"),
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "write_timeout": timeout,
            "autocommit": True,
        }
        named = None  # a host name, not an address: resolved here, by the deadline (resolver.py)
        if "unix_socket" in dsn.query:
            kwargs["unix_socket"] = dsn.query["unix_socket"]
        else:
            kwargs["host"] = dsn.host or "localhost"
            kwargs["port"] = dsn.port or 3306
            from .resolver import is_ip_address

            if not is_ip_address(kwargs["host"]):
                named = kwargs["host"]
                kwargs["defer_connect"] = True  # no I/O: conn.connect(sock) below
        try:
            self.conn = pymysql.connect(**kwargs)
            if named is not None:
                # PyMySQL keeps the name (conn.host): TLS, if ever set up, verifies it
                self.conn.connect(self._tcp(named, kwargs["port"], timeout, pymysql.err.OperationalError))
        except pymysql.Error as e:
            raise TempFail(f"cannot connect to {self.where}: {self._message(e)}") from None

    def _tcp(self, host: str, port: int, timeout: float, error: type[Exception]) -> Any:
        """A TCP connection to `host`, a name, as PyMySQL would make it (each address in turn,
        its socket options), but the lookup and the connects within `timeout` in all
        (resolver.connect_within).
        `error(2003, ...)` as PyMySQL raises it when no connection is made; TempFail when
        the resolver does not answer in time."""
        import socket

        from .resolver import LookupTimeout, connect_within

        try:
            sock = connect_within(host, port, timeout)
        except LookupTimeout:
            raise TempFail(f"cannot connect to {self.where}: no answer from the resolver for {host} within "
                           f"{timeout:g} s") from None
        except (OSError, UnicodeError) as e:  # socket.gaierror, refused, timed out; an overlong label
            raise error(2003, f"Can't connect to MySQL server on {host!r} ({e})") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as PyMySQL's connect does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    @staticmethod
    def _message(error: Exception) -> str:
        args = getattr(error, "args", ())
        if len(args) >= 2:
            return f"{args[1]} (error {args[0]})"
        return str(error) or type(error).__name__

    def _run(self, sql: str, params: tuple[Any, ...]) -> Any:
        """Execute one autocommit statement; errors become TempFail.

        A statement InnoDB chose as a deadlock victim was rolled back, and running it again
        is what InnoDB expects: each of ours is a transaction of its own, and the `log`
        insert's NOT EXISTS then sees the row of the login that won. A jittered, doubling
        pause keeps the same logins from meeting again.
        """
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                cursor = self.conn.cursor()
                cursor.execute(sql, params)
                return cursor
            except self._errors as e:
                code = e.args[0] if e.args else None
                if code not in _DEADLOCK_ERRORS or attempt == _DEADLOCK_RETRIES:
                    raise self._tempfail(e) from None
                jitter = (time.perf_counter_ns() % 1000 + 500) / 1000
                time.sleep(0.002 * (2**attempt) * jitter)
        raise AssertionError("unreachable")

    def _tempfail(self, error: Exception) -> TempFail:
        message = self._message(error)
        code = error.args[0] if getattr(error, "args", None) else None
        if code in _PERMISSION_ERRORS:
            grant = self._grant_for(message)
            return TempFail(f"{self.where}: permission denied ({message})"
                            + (f": run {grant}" if grant else ""))
        if "doesn't exist" in message:
            side = any(table in message for table in _SIDE_TABLES)
            message += f": run 'dovecot-appauth {'upgrade-db' if side else 'init-db'}'"
        return TempFail(f"{self.where}: {message}")

    def _grant_for(self, message: str) -> str | None:
        """The GRANT statement that lifts a "command denied to user 'u'@'h' for table `t`" error."""
        table = next((t for t in MAIL_HOST_GRANTS if f"`{t}`" in message or f"'{t}'" in message), None)
        start = message.find("to user ")
        if table is None or start < 0:
            return None
        account = message[start + len("to user "):].split(" for ", 1)[0].strip()
        return self.grant_statement(table, account)

    def grant_statement(self, table: str, account: str | None = None) -> str:
        """`GRANT <what the mail host needs> ON db.table TO account` (default: this connection's)."""
        if account is None:
            try:
                cursor = self.conn.cursor()
                cursor.execute("SELECT CURRENT_USER()")
                user, _, host = str(cursor.fetchone()[0]).rpartition("@")
                account = f"'{user}'@'{host}'"
            except self._errors:
                account = "<mail host account>"
        return f"GRANT {MAIL_HOST_GRANTS[table]} ON `{self.database}`.`{table}` TO {account}"

    def find_passwords(self, username: str) -> list[PasswordRow]:
        # uid has a case-insensitive collation (schema.py), so `=` matches any case
        try:
            cursor = self.conn.cursor()
            cursor.execute(_SELECT_PASSWORDS_POLICY.format(p="%s", collate=""), (username,))
        except self._errors as e:
            # only a missing table is an old database; a missing GRANT is reported as one
            if not (e.args and e.args[0] == _NO_SUCH_TABLE and "app_password_policy" in self._message(e)):
                raise self._tempfail(e) from None
            self.upgrade_note = UPGRADE_NOTE
            cursor = self._run(_SELECT_PASSWORDS.format(p="%s", collate=""), (username,))
        return [_password_row(r) for r in cursor.fetchall()]

    def account_rows(self, query: str, username: str) -> list[tuple[Any, ...]]:
        """The account gate's query ([account.sql], account.py), :user bound to `username`."""
        # PyMySQL's named style is %(user)s, and a literal % must be doubled
        sql = query.replace("%", "%%").replace(":user", "%(user)s")
        try:
            cursor = self.conn.cursor()
            cursor.execute(sql, {"user": username})
        except self._errors as e:
            raise self._tempfail(e) from None
        return list(cursor.fetchmany(2))

    def record_event(self, row: EventRow) -> None:
        from .audit.events import INSERT_EVENT

        self._run(INSERT_EVENT.format(p="%s"), row.params())

    def recent_events(self, username: str, since: float) -> list[tuple[Any, ...]]:
        from .audit.events import SELECT_HISTORY

        return list(self._run(SELECT_HISTORY.format(p="%s", collate=""), (username, utc_timestamp(since))).fetchall())

    def failure_counts(self, username: str, ip: str, since: float) -> tuple[int, int, int]:
        """Failed logins since `since`: (this user from this IP, this IP, this user)."""
        try:
            cursor = self.conn.cursor()
            cursor.execute(_COUNT_FAILURES.format(p="%s", collate=""), _count_params(username, ip, since))
        except self._errors as e:
            missing = e.args and e.args[0] == _NO_SUCH_TABLE
            if missing and "auth_failures" in self._message(e):  # an old database: no throttling until upgrade-db
                self.upgrade_note = UPGRADE_NOTE
                return (0, 0, 0)
            raise self._tempfail(e) from None
        row = cursor.fetchone()
        return (int(row[0]), int(row[1]), int(row[2]))

    def record_failure(self, username: str, ip: str | None, service: str, now: float) -> None:
        self._run(_INSERT_FAILURE.format(p="%s"), (utc_timestamp(now), username, ip, service))

    def known_client(self, username: str, client: str, since: float) -> bool:
        """Did `client` log in as `username` since `since`?"""
        return self._run(_SELECT_KNOWN.format(p="%s", collate=""),
                         (username, client, utc_timestamp(since))).fetchone() is not None

    def record_known_client(self, username: str, client: str, now: float) -> None:
        self._run(_UPSERT_KNOWN_MYSQL, (username, client, utc_timestamp(now),
                                        utc_timestamp(now - KNOWN_CLIENT_REFRESH)))

    def record_login(self, record: LoginRecord, *, now: float, dedup_window: float) -> bool:
        sql = _INSERT_LOG.format(p="%s", dual="FROM DUAL ", same="<=>")
        return self._run(sql, _insert_params(record, now, dedup_window)).rowcount == 1

    def commit(self) -> None:
        """Nothing to do: each statement is a transaction of its own (autocommit), so that
        `_run` can retry the one InnoDB picked as a deadlock victim."""

    def claim_writes(self) -> None:
        """Nothing to do: serve never runs a MariaDB request on its event loop."""

    def rollback(self) -> None:
        """Nothing to undo (autocommit)."""

    def finish(self) -> None:
        """End the request (autocommit: nothing pending); forget what it learnt of the schema."""
        self.upgrade_note = None

    def usable(self) -> bool:
        """Is the server still there (it closes idle connections after wait_timeout)? For pooled stores."""
        try:
            self.conn.ping(reconnect=False)
        except self._errors:
            return False
        return True

    def close(self, exiting: bool = False) -> None:
        # exiting or not: a connection dropped without COM_QUIT is an "Aborted connection" in the server's log
        try:
            self.conn.close()
        except self._errors:
            pass


def open_store(dsn_text: str, timeout: float, *, shared: bool = False, name: str = "[database] dsn") -> Store:
    """Connect with the driver the DSN names; `timeout` bounds connecting and each query.

    `shared`: the store will be kept in a pool (pool.py) and used by one thread after another.
    `name`: the setting the DSN comes from, for the message of a DSN that cannot be used.
    """
    try:
        dsn = parse_dsn(dsn_text)
    except DsnError as e:
        raise TempFail(f"{name}: {e}") from None
    if dsn.dialect == "sqlite":
        if "\0" in (dsn.path or ""):  # no file name holds one: sqlite3 would raise ValueError
            raise TempFail(f"{name}: the SQLite file name contains a NUL byte (%00)")
        return SqliteStore(dsn.path or "", timeout, shared)
    return MysqlStore(dsn, timeout)
