"""Helpers for the hardening tests (issue 6): test_fuzz, test_faults, test_parallel, test_secrets.

Everything here drives the *installed* programs next to sys.executable, as Dovecot does, and
uses only public functions of the package (the hot-path modules are refactored often):

- ``run_checkpassword(config, request, ...)``: one login, the request on fd 3, a pipe on fd 4,
  Dovecot's environment (no PATH, no HOME). Thread-safe: fd 3/4 are set up by ``/bin/bash``
  with ``pass_fds``, never with ``preexec_fn``, so the parallel tests can use it from a pool.
- ``Site``: a config file plus an initialised SQLite (or MariaDB) database with known app
  passwords, built with the admin CLI's own library functions.
- small local servers: ``HangingTcp`` (accepts, never answers), ``UdpResponder`` (answers DNS
  queries with bytes a test chooses), ``HttpResponder`` (answers HTTP with bytes a test
  chooses, optionally dripping them slowly).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.common import give_to_dovecot as chown_dovecot
from tests.support.common import new_server_dir

VENV_BIN = Path(sys.executable).parent
PROGRAM = VENV_BIN / "dovecot-appauth-checkpassword"
CLI = VENV_BIN / "dovecot-appauth"
DOCUMENTED_STATUSES = {0, 1, 2, 3, 111}
GLOBAL_NETWORKS = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]


def request_bytes(user: str | bytes, password: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return u + b"\0" + p + b"\0\0"


def dovecot_env(ip: str | None = "198.51.100.7", service: str = "imap", **extra: str) -> dict[str, str]:
    env = {"PROTO": "TCP", "SERVICE": service, "TCPLOCALIP": "127.0.0.1", "LOCAL_IP": "127.0.0.1",
           "TCPREMOTEPORT": "50000", "TCPLOCALPORT": "143", "ORIG_UID": str(os.getuid())}
    if ip is not None:
        env.update(TCPREMOTEIP=ip, REMOTE_IP=ip)
    env.update(extra)
    return env


@dataclass
class Run:
    status: int
    reply: bytes
    stderr: str
    elapsed: float

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def _high(fd: int) -> int:
    """The fd moved to >= 10, so the shell's ``3<&N`` never closes what it just made."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def run_checkpassword(config: str | os.PathLike | None, request: bytes | None, *, env: dict[str, str] | None = None,
                      args: tuple[str, ...] = (), user: str | None = None, timeout: float = 60,
                      program: tuple[str, ...] = (str(PROGRAM),)) -> Run:
    """One login through the installed program (or `program`, e.g. an interpreter with options
    and the -IS launcher). ``request=None``: fd 3 closed."""
    argv = [*program] + (["--config", str(config)] if config is not None else []) + list(args)
    environment = dovecot_env() if env is None else env
    req_r = req_w = rep_r = rep_w = -1
    try:
        redirs = []
        pass_fds = []
        if request is not None:
            req_r, req_w = (_high(fd) for fd in os.pipe())
            os.write(req_w, request)  # <= 600 bytes: fits the pipe buffer
            os.close(req_w)
            req_w = -1
            redirs.append(f"3<&{req_r} {req_r}<&-")
            pass_fds.append(req_r)
        else:
            redirs.append("3<&-")
        rep_r, rep_w = (_high(fd) for fd in os.pipe())
        redirs.append(f"4>&{rep_w} {rep_w}>&-")
        pass_fds.append(rep_w)
        script = 'exec "$@" ' + " ".join(redirs)
        start = time.monotonic()
        proc = subprocess.Popen(["/bin/bash", "-c", script, "bash", *argv], env=environment, pass_fds=pass_fds,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                user=user)
        os.close(rep_w)
        rep_w = -1
        if req_r != -1:
            os.close(req_r)
            req_r = -1
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        elapsed = time.monotonic() - start
        reply = b""
        os.set_blocking(rep_r, False)
        try:
            while chunk := os.read(rep_r, 65536):
                reply += chunk
        except BlockingIOError:
            pass
    finally:
        for fd in (req_r, req_w, rep_r, rep_w):
            if fd != -1:
                os.close(fd)
    return Run(proc.returncode, reply, err.decode("utf-8", "replace"), elapsed)


def run_cli(config: str | os.PathLike, *args: str, check: bool = True, user: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([str(CLI), "--config", str(config), *args], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL, user=user, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"dovecot-appauth {' '.join(args)} exited {res.returncode}: {res.stderr}")
    return res


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def toml_doc(sections: dict[str, dict]) -> str:
    """``{"database": {"dsn": ...}, "audit.dns": {...}}`` -> TOML text (one table per key)."""
    out = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)


@dataclass
class Site:
    """A 0755 directory with ``config.toml``, a database, ``cache/`` and ``lists/``.

    ``passwords``: key -> (id, user, password, hash). The config is rewritten with ``write``.
    """

    dir: Path
    dsn: str
    db_path: Path | None
    passwords: dict[str, tuple[int, str, str, str]] = field(default_factory=dict)
    sections: dict[str, dict] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.dir / "config.toml"

    @property
    def cache(self) -> Path:
        return self.dir / "cache"

    def write(self, name: str = "config.toml", **sections: dict) -> Path:
        """Base config plus ``sections`` (keys with dots as ``audit__dns``) merged over it,
        written to ``DIR/name`` (``config.toml``: the site's own config)."""
        merged: dict[str, dict] = {
            "database": {"dsn": self.dsn, "connect_timeout": 1.0},
            "auth": {"dedup_window": 3600},
            "userdb": {"uid": "5000", "gid": "5000", "home": "/srv/mail/%d/%n"},
            "audit": {"enabled": False},
            "audit.cache": {"path": str(self.cache)},
        }
        for key, table in sections.items():
            merged.setdefault(key.replace("__", "."), {}).update(table)
        path = self.dir / name
        if name == "config.toml":
            self.sections = merged
        path.write_text(toml_doc(merged))
        os.chmod(path, 0o644)
        return path

    def add_password(self, key: str, user: str, password: str | None = None, *, revoked: bool = False) -> str:
        from dovecot_appauth import hashing
        from dovecot_appauth.cli import schema

        password = password or hashing.generate_password()
        hashed = hashing.hash_password(password)
        engine = schema.make_engine(self.dsn)
        try:
            pwid = schema.create_password(engine, user, hashed, key)
            if revoked:
                assert schema.revoke_password(engine, pwid)
        finally:
            engine.dispose()
        self.passwords[key] = (int(pwid), user, password, hashed)
        if self.db_path is not None:
            chown_dovecot(self.db_path.parent)
        return password

    def pw(self, key: str) -> str:
        return self.passwords[key][2]

    def pwid(self, key: str) -> int:
        return self.passwords[key][0]

    @property
    def secrets(self) -> list[str]:
        """Every password, hash and salt of this site."""
        out = []
        for _pwid, _user, password, hashed in self.passwords.values():
            out += [password, hashed, hashed.removeprefix("{CRYPT}")]
            if "$6$" in hashed:
                out.append(hashed.split("$")[2 if "rounds=" not in hashed else 3])  # the salt
        return out

    def log_rows(self) -> list[tuple]:
        return self.rows("SELECT pwid, service, src_ip, src_rdns, src_loc, src_isp FROM log ORDER BY id")

    def rows(self, sql: str) -> list[tuple]:
        """The rows of `sql` in the site's database (SQLite file or MariaDB)."""
        if self.db_path is not None:
            conn = sqlite3.connect(self.db_path)
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        from dovecot_appauth.cli import schema

        engine = schema.make_engine(self.dsn)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.exec_driver_sql(sql).fetchall()]
        finally:
            engine.dispose()

    def login(self, key_or_user: str, password: str | None = None, **kw) -> Run:
        """A login for ``passwords[key]`` (its right password unless ``password`` is given)."""
        if key_or_user in self.passwords:
            _, user, right, _ = self.passwords[key_or_user]
            password = right if password is None else password
        else:
            user = key_or_user
        env = kw.pop("env", None) or dovecot_env(**kw.pop("env_kw", {}))
        return run_checkpassword(self.path, request_bytes(user, password or ""), env=env, **kw)

    def remove(self) -> None:
        if not os.environ.get("APPAUTH_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def make_site(dsn: str | None = None, prefix: str = "appauth-hard-") -> Site:
    """A new site; ``dsn=None``: a fresh SQLite file under ``DIR/db`` owned by user dovecot."""
    from dovecot_appauth.cli import schema

    directory = new_server_dir(prefix)
    db_path = None
    if dsn is None:
        (directory / "db").mkdir()
        db_path = directory / "db" / "appauth.sqlite"
        dsn = f"sqlite:///{db_path}"
    (directory / "cache").mkdir(mode=0o700)
    (directory / "lists").mkdir()
    site = Site(dir=directory, dsn=dsn, db_path=db_path)
    engine = schema.make_engine(dsn)
    try:
        schema.init_db(engine)
    finally:
        engine.dispose()
    chown_dovecot(directory / "cache")
    if db_path is not None:
        chown_dovecot(db_path.parent)
    site.write()
    return site


# --- small local servers -----------------------------------------------------------------


class HangingTcp:
    """A TCP port on 127.0.0.1 that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()

    def __enter__(self) -> HangingTcp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UdpResponder:
    """A UDP "DNS server" on 127.0.0.1: ``reply(query) -> bytes | None`` (None: stay silent)."""

    def __init__(self, reply: Callable[[bytes], bytes | list[bytes] | None]):
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.queries += 1
            try:
                out = self.reply(data)
            except Exception:  # a broken test reply function must not kill the server
                out = None
            for datagram in ([out] if isinstance(out, bytes) else out or []):
                try:
                    self.sock.sendto(datagram[:65507], addr)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> UdpResponder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpResponder:
    """A TCP server on 127.0.0.1 answering every connection with ``response(path) -> bytes``.

    ``drip``: seconds between bytes (a slow-drip server), for at most ``drip_for`` seconds.
    """

    def __init__(self, response: Callable[[str], bytes], *, drip: float = 0.0, drip_for: float = 5.0):
        self.response = response
        self.drip = drip
        self.drip_for = drip_for
        self.requests: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(2)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].decode("latin-1") if data.count(b" ") >= 2 else "/"
            self.requests.append(path)
            body = self.response(path)
            if self.drip:
                end = time.monotonic() + self.drip_for
                for i in range(len(body)):
                    if self._stop.is_set() or time.monotonic() > end:
                        break
                    conn.sendall(body[i:i + 1])
                    time.sleep(self.drip)
            else:
                conn.sendall(body)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> HttpResponder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_response(body: bytes, status: int = 200, content_type: str = "application/rdap+json",
                  length: int | None = None) -> bytes:
    head = (f"HTTP/1.0 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
    return head.encode() + body


class MysqlProxy:
    """A TCP proxy to a MariaDB server that can fail on command.

    ``mode``: ``pass`` (forward everything), ``hang`` (the first COM_QUERY is swallowed and never
    answered: a server that stopped answering mid-run), ``reset`` (the connection is closed at
    the first COM_QUERY: a server killed mid-run), ``refuse`` (new connections are closed at once).
    """

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.target = (host, port)
        self.mode = "pass"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            if self.mode == "refuse":
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._open += [client, server]
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        buf = b""
        try:
            src.settimeout(None)
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client:
                    buf += data
                    # MySQL packet: 3-byte length, sequence id; COM_QUERY = seq 0, command 0x03
                    if self.mode in ("hang", "reset") and len(buf) >= 5 and buf[3] == 0 and buf[4] == 0x03:
                        if self.mode == "reset":
                            break
                        while not self._stop.is_set():  # hang: swallow everything
                            if not src.recv(65536):
                                break
                        break
                    buf = b""
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in self._open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sock.close()

    def __enter__(self) -> MysqlProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
