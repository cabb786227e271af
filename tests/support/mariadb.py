"""A real MariaDB server for tests: `mariadb-install-db` into a temp dir, own socket and port.

Fixtures
--------
``mariadb`` (session): a running server, see :class:`MariaDBServer`.
``mariadb_database`` (function): a new empty database on it, see :class:`MariaDBDatabase`.

Without the binaries the fixtures skip, except under ``CI=true`` where they fail:
CI must run the end-to-end tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.common import free_port, missing_dependency, shared_tempdir_base

DB_USER = "appauth"
# Characters that need URL quoting in a DSN, so tests catch a DSN parser that forgets it.
DB_PASSWORD = "T3st:pw@/x%"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def _which(*names: str) -> str | None:
    for name in names:
        for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    return None


@dataclass(frozen=True)
class MariaDBDatabase:
    """One database on the test server, with the test user's credentials."""

    server: MariaDBServer
    name: str

    @property
    def dsn(self) -> str:
        """TCP DSN: ``mysql+pymysql://appauth:...@127.0.0.1:PORT/NAME``."""
        return self.server.dsn_for(self.name)

    @property
    def socket_dsn(self) -> str:
        """Unix-socket DSN: ``mysql+pymysql://appauth:...@localhost/NAME?unix_socket=...``."""
        return self.server.socket_dsn_for(self.name)

    def connect(self, **kwargs):
        return self.server.connect(database=self.name, **kwargs)

    def drop(self) -> None:
        self.server.drop_database(self.name)


class MariaDBServer:
    """A mariadbd process owned by the test session.

    Attributes: ``host`` (127.0.0.1), ``port``, ``socket`` (path), ``user``, ``password``,
    ``database`` (a database created at start), ``dsn`` / ``socket_dsn`` for it, ``datadir``,
    ``log_path`` (the server's error log).
    """

    def __init__(self, basedir: Path):
        self.basedir = basedir
        self.datadir = basedir / "data"
        self.socket = str(basedir / "mysqld.sock")
        self.pid_file = basedir / "mysqld.pid"
        self.log_path = basedir / "mysqld.err"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = DB_USER
        self.password = DB_PASSWORD
        self.database = "appauth"
        self.proc: subprocess.Popen | None = None

    # --- DSNs -------------------------------------------------------------------------
    def dsn_for(self, database: str) -> str:
        return (
            f"mysql+pymysql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{database}"
        )

    def socket_dsn_for(self, database: str) -> str:
        return (
            f"mysql+pymysql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@localhost/{database}?unix_socket={quote(self.socket, safe='/')}"
        )

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    @property
    def socket_dsn(self) -> str:
        return self.socket_dsn_for(self.database)

    # --- connections ------------------------------------------------------------------
    def connect(self, database: str | None = None, *, root: bool = False, **kwargs):
        """A PyMySQL connection (TCP as the test user; ``root=True``: socket as root)."""
        import pymysql

        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("charset", "utf8mb4")
        if root:
            return pymysql.connect(unix_socket=self.socket, user="root", database=database, **kwargs)
        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password,
            database=database, **kwargs,
        )

    def execute_root(self, *statements: str) -> None:
        conn = self.connect(root=True)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def fresh_database(self, prefix: str = "t") -> MariaDBDatabase:
        """Create a new empty database the test user owns."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute_root(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return MariaDBDatabase(self, name)

    def drop_database(self, name: str) -> None:
        self.execute_root(f"DROP DATABASE IF EXISTS `{name}`")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        install = _which("mariadb-install-db", "mysql_install_db")
        mariadbd = _which("mariadbd", "mysqld")
        assert install and mariadbd
        as_root = os.geteuid() == 0
        user_opt = ["--user=root"] if as_root else []
        res = subprocess.run(
            [install, "--no-defaults", f"--datadir={self.datadir}", *user_opt,
             "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=180, check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({res.returncode}):\n{res.stdout[-4000:]}")
        out = open(self.basedir / "mysqld.out", "wb")  # closed in stop()
        self._out = out
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.pid_file}",
             f"--log-error={self.log_path}", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
             "--innodb-flush-log-at-trx-commit=2", "--max-connections=300",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci", *user_opt],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()
        # The socket's directory must be traversable by other users (the `dovecot` user).
        os.chmod(self.basedir, 0o755)
        self.execute_root(
            f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'",
            f"CREATE USER '{self.user}'@'localhost' IDENTIFIED BY '{self.password}'",
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'%'",
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'localhost'",
            f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            "FLUSH PRIVILEGES",
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited with {self.proc.returncode} during start:\n{self.log_text()[-4000:]}"
                )
            if os.path.exists(self.socket):
                try:
                    with socket.create_connection((self.host, self.port), timeout=1):
                        pass
                    conn = self.connect(root=True)
                    conn.close()
                    return
                except Exception as exc:  # not ready yet
                    last = exc
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mariadbd not ready after {START_TIMEOUT}s ({last}):\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        out = getattr(self, "_out", None)
        if out is not None:
            out.close()
            self._out = None


def mariadb_available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    missing = [n for n, alts in (("mariadb-install-db", ("mariadb-install-db", "mysql_install_db")),
                                 ("mariadbd", ("mariadbd", "mysqld"))) if not _which(*alts)]
    if missing:
        return f"MariaDB binaries missing: {', '.join(missing)} (apt-get install mariadb-server)"
    try:
        import pymysql  # noqa: F401
    except ImportError:
        return "PyMySQL is not installed"
    return None


@pytest.fixture(scope="session")
def mariadb():
    """A real MariaDB server for the whole session (stopped at the end)."""
    reason = mariadb_available()
    if reason:
        missing_dependency(reason)
    basedir = Path(tempfile.mkdtemp(prefix="appauth-mdb-", dir=shared_tempdir_base()))
    os.chmod(basedir, 0o755)
    server = MariaDBServer(basedir)
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.fail(f"could not start MariaDB: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        if not os.environ.get("APPAUTH_TEST_KEEP"):
            shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture
def mariadb_database(mariadb):
    """A fresh, empty database on the session server, dropped after the test."""
    db = mariadb.fresh_database()
    yield db
    try:
        db.drop()
    except Exception:  # the server may be the thing under test; never mask the test's result
        pass
