"""The on-disk enrichment cache: one plain SQLite file of JSON values with expiry times.

What belongs here: storing and finding (source, key) -> JSON dict entries, positive and
negative, with their expiry; stats and purge for the admin CLI. What does not: knowing
what a source returns or how long to keep it (enrich.py decides the TTLs), and the clock
(`now` is always passed in, so tests can move time).

Why plain sqlite3 and not diskcache: diskcache pickles values by default and imports far
more at start-up; a login that hits the cache costs one SELECT here. Values are JSON text,
never pickle, so a file written by someone else cannot run code in the login process.

Safety: the directory is made 0700 and the file 0600 whatever the umask (SQLite gives
its -wal/-shm files the database file's mode). WAL lets concurrent logins read while one
writes; a short busy timeout bounds how long any login waits. The file appears ready-made
(table created, WAL on) and the writer after a miss checkpoints, so that no login holds a
lock across fsyncs that the others would wait for. Every sqlite or OS problem becomes
`CacheUnavailable`, and the caller carries on without a cache.

Stdlib only (_sqlite3, os, and _json through cjson.py): this module is imported on every audited login.
"""

from __future__ import annotations

# The C module, not the `sqlite3` package: that only adds datetime adapters we never use,
# and its dbapi2 imports datetime (~3 ms a login). Same classes, so `sqlite3.Error` callers
# still catch these errors.
import _sqlite3 as sqlite3
import _thread
import posix

from .. import paths
from ..cjson import dumps as json_dumps
from ..cjson import loads as json_loads
from ..private_file import make_private_dirs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    import os
    from collections.abc import Callable
    from typing import Any

FILE_NAME = "cache.sqlite"
BUSY_TIMEOUT_MS = 500  # a login never waits longer than this for another login's write or checkpoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entry (
    source  TEXT NOT NULL,
    key     TEXT NOT NULL,
    ok      INTEGER NOT NULL,   -- 1: value is the source's answer; 0: a negative entry
    value   TEXT NOT NULL,      -- JSON object
    stored  REAL NOT NULL,      -- unix time
    expires REAL,               -- unix time; NULL: until replaced (e.g. MaxMind, keyed by file)
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
"""


class CacheUnavailable(Exception):
    """The cache cannot be used (corrupt, unwritable, locked): bypass it for this login."""


class Negative(tuple):
    """A cached failure: the source was asked recently and did not answer usefully.

    A tuple with named fields, as a NamedTuple would be, without importing `typing`.
    """

    __slots__ = ()

    def __new__(cls, status: str, detail: str, stored: float) -> Negative:
        return tuple.__new__(cls, (status, detail, stored))

    @property
    def status(self) -> str:
        """Either "failed" or "timeout" (facts.SourceStatus values)."""
        return self[0]

    @property
    def detail(self) -> str:
        return self[1]

    @property
    def stored(self) -> float:
        return self[2]

    def __repr__(self) -> str:
        return f"Negative(status={self[0]!r}, detail={self[1]!r}, stored={self[2]!r})"


def file_signature(path: str, stat: Callable[[str], os.stat_result] = posix.stat) -> str:
    """`mtime_ns-size` of a file, so entries derived from it expire when it changes.

    Here rather than in sources/maxmind.py because the warm path must check it without
    importing the source module. Raises OSError when the file cannot be stat'ed. `stat`:
    serve passes filestat.stat.
    """
    st = stat(path)
    return f"{st.st_mtime_ns}-{st.st_size}"


def _check_trusted(directory: str, path: str) -> None:
    """Refuse a cache others could write: its entries feed the allow lists (an AS or a
    country on an allow list), so a forged entry could let a login through.

    The directory must be a directory, and it and an existing cache file must be writable
    by neither group nor others and belong to this user or root (a path another user made
    first is theirs to fill). Otherwise the login runs uncached, with one line saying why
    (enrich.py). `serve` checks again each time it looks at the kept file (distrust).
    """
    st = posix.stat(directory)
    try:
        fst: os.stat_result | None = posix.lstat(path)
    except FileNotFoundError:
        fst = None
    problem = distrust(directory, st, path, fst)
    if problem:
        raise CacheUnavailable(problem)


def distrust(directory: str, st: os.stat_result, path: str, fst: os.stat_result | None) -> str | None:
    """Why the cache at `path` in `directory` (their stats; `fst` None: no file yet) cannot
    be trusted, or None. Root may use a cache of any owner (admin commands drop to the
    service user before they touch it; see cli/service_user.py)."""
    if (st.st_mode & 0o170000) != 0o040000:
        return f"{directory} is not a directory"
    if st.st_mode & 0o022:
        return (f"directory {directory} is group- or world-writable (mode {st.st_mode & 0o7777:04o}), "
                "so its entries could be forged: not trusted; chmod 0700")
    me = posix.geteuid()
    if me != 0 and st.st_uid not in (me, 0):
        return (f"directory {directory} belongs to uid {st.st_uid}, not to this user (uid {me}) or root, "
                "so its entries could be forged: not trusted")
    if fst is None:
        return None
    if fst.st_mode & 0o022:
        return f"{path} is group- or world-writable (mode {fst.st_mode & 0o7777:04o}): not trusted; chmod 0600"
    if me != 0 and fst.st_uid not in (me, 0):
        return f"{path} belongs to uid {fst.st_uid}, not to this user (uid {me}) or root: not trusted"
    return None


class IpCache:
    """The cache file in `directory`; created on first use. Not shared between threads."""

    def __init__(self, directory: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        self.directory = directory
        self.path = paths.join(directory, FILE_NAME)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None

    # -- connection -------------------------------------------------------------------

    def _prepare_directory(self) -> bool:
        """Make the directory (0700) when missing and check it can be trusted; whether the
        cache file exists. Raises CacheUnavailable (OSError and distrust alike)."""
        try:
            if not paths.isdir(self.directory):
                make_private_dirs(self.directory)  # missing parents 0700 too, whatever the umask
            _check_trusted(self.directory, self.path)
            return paths.exists(self.path)
        except OSError as e:
            raise CacheUnavailable(f"{self.path}: {e}") from None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            if not self._prepare_directory():
                self._create_file()
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
            # a cache may lose its last writes in a power cut; it must not make logins
            # queue behind each other's fsync (WAL + NORMAL syncs only at checkpoints)
            conn.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as e:
            raise CacheUnavailable(f"{self.path}: {e}") from None
        self._conn = conn
        return conn

    def _create_file(self, rows: list[tuple[Any, ...]] | None = None) -> bool:
        """Put a ready cache file (0600, WAL, table made, `rows` in it) at `path`, atomically;
        whether this call put it there (False: another login was first, `rows` not written).

        Built under a private name and hard-linked into place, so a concurrent login never
        opens a file without its table or still in rollback-journal mode: making the table
        there takes locks across several fsyncs, which on a slow disk outlast every other
        login's busy timeout. Nobody else opens the private file, so it is built without
        SQLite's syncs (synchronous=OFF: ~8 fsyncs) and synced once, whole, before the link.
        Losing the race to another login is fine: its file is used.
        """
        # unique per thread too: `serve` runs logins in threads of one process
        tmp = f"{self.path}.new-{posix.getpid()}-{_thread.get_ident()}"
        try:
            posix.unlink(tmp)  # left by a killed process that had our pid
        except FileNotFoundError:
            pass
        # our own mode: sqlite3.connect would create 0644 & ~umask
        fd = posix.open(tmp, posix.O_CREAT | posix.O_EXCL | posix.O_WRONLY, 0o600)
        try:
            posix.fchmod(fd, 0o600)
        finally:
            posix.close(fd)
        placed = False
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA synchronous=OFF")  # a connection setting: not kept in the file
                self._init_schema(conn)
                if rows:
                    conn.execute("BEGIN")
                    conn.executemany("INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?, ?, ?)", rows)
                    conn.execute("COMMIT")
            finally:
                conn.close()  # the last connection: checkpoints and removes tmp's -wal/-shm
            fd = posix.open(tmp, posix.O_RDONLY)
            try:
                posix.fsync(fd)  # the whole file on disk before it has its name
            finally:
                posix.close(fd)
            try:
                posix.link(tmp, self.path)
                placed = True
            except FileExistsError:
                pass  # another login was first
            except OSError:
                # no hard links on this file system (some FUSE and network ones): a rename,
                # which replaces a file another login made meanwhile (its rows are only lost)
                if not paths.exists(self.path):
                    posix.replace(tmp, self.path)
                    placed = True
        finally:
            try:
                posix.unlink(tmp)
            except FileNotFoundError:
                pass  # renamed into place
        return placed

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        # WAL is a property of the file: set once, when the table is made
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    def _run(self, fn: Any) -> Any:
        """Run fn(conn); create the schema on a new file; map every failure to CacheUnavailable."""
        try:
            conn = self._connect()
            try:
                return fn(conn)
            except sqlite3.OperationalError as e:
                if "no such table" not in str(e):
                    raise
                self._init_schema(conn)
                return fn(conn)
        except CacheUnavailable:
            raise
        except (sqlite3.Error, OSError, ValueError) as e:
            # ValueError: a JSON value that does not decode (someone edited the file)
            self.close()
            raise CacheUnavailable(f"{self.path}: {e}") from None

    def close(self, exiting: bool = False) -> None:
        """`exiting`: this process ends right after; the connection may be left to the
        exit, as the per-login program does with the database (store.close_for_exit)."""
        if self._conn is not None:
            try:
                if exiting:
                    from ..store import close_for_exit

                    close_for_exit(self._conn, self.path)
                else:
                    self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    # -- reading ----------------------------------------------------------------------

    def get_many(self, keys: list[tuple[str, str]], now: float) -> dict[tuple[str, str], dict | Negative]:
        """Every unexpired entry among `keys` in one SELECT: value dicts and Negative hits."""
        if not keys:
            return {}
        if self._conn is None and not self._prepare_directory():
            return {}  # no file yet: nothing cached; the first write makes it (put_many)
        where = " OR ".join(["(source = ? AND key = ?)"] * len(keys))
        params: list[Any] = [p for pair in keys for p in pair]

        def q(conn: sqlite3.Connection) -> dict[tuple[str, str], dict | Negative]:
            rows = conn.execute(
                f"SELECT source, key, ok, value, stored FROM entry "
                f"WHERE ({where}) AND (expires IS NULL OR expires > ?)",
                [*params, now],
            ).fetchall()
            out: dict[tuple[str, str], dict | Negative] = {}
            for source, key, ok, value, stored in rows:
                data = json_loads(value)
                if not isinstance(data, dict):
                    raise ValueError(f"entry {source}/{key} is not a JSON object")
                out[(source, key)] = data if ok else Negative(
                    str(data.get("status", "failed")), str(data.get("detail", "")), stored
                )
            return out

        return self._run(q)

    def get(self, source: str, key: str, now: float) -> dict | Negative | None:
        """The entry's value dict, a `Negative` for a cached failure, or None (miss/expired)."""
        return self.get_many([(source, key)], now).get((source, key))

    # -- writing ----------------------------------------------------------------------

    def put_many(self, rows: list[tuple[str, str, dict, float | None, bool]], now: float) -> None:
        """Write (source, key, value, ttl, ok) rows in one transaction; ttl None: no expiry."""
        if not rows:
            return
        data = [
            (source, key, int(ok), json_dumps(value), now,
             None if ttl is None else now + ttl)
            for source, key, value, ttl, ok in rows
        ]

        if self._conn is None:
            # no file yet (a cold login: the cache directory was new or emptied): build it
            # with the rows in it, one fsync, rather than make it empty and then write
            try:
                if not self._prepare_directory() and self._create_file(data):
                    return
            except (OSError, sqlite3.Error) as e:
                raise CacheUnavailable(f"{self.path}: {e}") from None

        def w(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?, ?, ?)", data)
            # Copy the new pages into the main file now, while other logins keep reading.
            # Otherwise the last login to close the file does it, holding an exclusive lock
            # across two fsyncs that every login opening the file meanwhile waits for; on a
            # slow disk that outlasts their busy timeout and they run without the cache.
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.OperationalError:
                pass  # another login is checkpointing: the rows are committed, it copies them

        self._run(w)

    def put(self, source: str, key: str, value: dict, ttl: float | None, now: float) -> None:
        self.put_many([(source, key, value, ttl, True)], now)

    def put_failure(self, source: str, key: str, detail: str, ttl: float, now: float,
                    status: str = "failed") -> None:
        """A negative entry: `get` returns Negative(status, detail) until it expires."""
        self.put_many([(source, key, {"status": status, "detail": detail}, ttl, False)], now)

    # -- admin ------------------------------------------------------------------------

    def stats(self, now: float) -> dict[str, Any]:
        """Entries per source (positive/negative), expired entries, bytes on disk."""

        def q(conn: sqlite3.Connection) -> dict[str, Any]:
            per_source: dict[str, dict[str, int]] = {}
            for source, ok, n in conn.execute(
                "SELECT source, ok, count(*) FROM entry "
                "WHERE expires IS NULL OR expires > ? GROUP BY source, ok", (now,)
            ):
                per_source.setdefault(source, {"entries": 0, "negative": 0})
                per_source[source]["entries" if ok else "negative"] += n
            (expired,) = conn.execute(
                "SELECT count(*) FROM entry WHERE expires IS NOT NULL AND expires <= ?", (now,)
            ).fetchone()
            return {"path": self.path, "sources": per_source, "expired": expired,
                    "bytes": self._bytes()}

        return self._run(q)

    def _bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += posix.stat(self.path + suffix).st_size
            except OSError:
                pass
        return total

    def purge(self, ip: str | None = None, *, expired_before: float | None = None) -> int:
        """Remove entries: those of one IP, the expired ones, or (no arguments) all.

        Purging everything deletes the file, so it is also the repair for a corrupt cache.
        Returns the number of entries removed (-1 when an unreadable file was deleted).
        """
        if ip is None and expired_before is None:
            try:
                (count,) = self._run(lambda c: c.execute("SELECT count(*) FROM entry").fetchone())
            except CacheUnavailable:
                count = -1
            self.close()
            try:  # files a killed login left half made (see _create_file)
                leftovers = [n for n in posix.listdir(self.directory) if n.startswith(FILE_NAME + ".new-")]
            except OSError:
                leftovers = []
            for suffix in ("", "-wal", "-shm", *(n[len(FILE_NAME):] for n in leftovers)):
                try:
                    posix.unlink(self.path + suffix)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise CacheUnavailable(f"{self.path}{suffix}: {e}") from None
            return count
        if ip is not None:
            import ipaddress  # admin path only

            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise CacheUnavailable(f"not an IP address: {ip!r}") from None
            mapped = getattr(addr, "ipv4_mapped", None)
            key = str(mapped or addr)

            def d(conn: sqlite3.Connection) -> int:
                with conn:
                    return conn.execute("DELETE FROM entry WHERE key = ?", (key,)).rowcount

            return self._run(d)

        def e(conn: sqlite3.Connection) -> int:
            with conn:
                return conn.execute(
                    "DELETE FROM entry WHERE expires IS NOT NULL AND expires <= ?", (expired_before,)
                ).rowcount

        return self._run(e)
