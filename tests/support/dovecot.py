"""A real Dovecot 2.3 for end-to-end tests, on free loopback ports, one per test module.

Fixtures
--------
``dovecot_factory`` (module): ``start(passdb=..., userdb=..., extra_conf=..., ...) -> DovecotServer``;
    every server started through it is stopped at the end of the module.
``dovecot`` (module): one server started with a throw-away passwd-file passdb; tests call
    ``dovecot.reconfigure(passdb=...)`` (restarts only when the config text changes; ~0.3 s).

Building blocks for the ``passdb`` string: :func:`checkpassword_passdb` (our program, with a
check that the `dovecot` user can run it), :func:`passwd_file_passdb` + :func:`write_passwd_file`,
:func:`audit_chain_passdbs` (passwd-file with ``result_success = continue-ok`` and the marker
``override_fields = appauth_ok=yes`` followed by ours with ``skip = unauthenticated``).

Facts (PROTOCOL.md, last section): the program runs as user `dovecot` with no PATH/HOME;
everything it touches must be reachable by that user, so the server's directory is made with
mkdtemp under a world-traversable base and chmod 0755. ``auth_failure_delay = 0`` and the per-IP
auth penalty are switched off by default (``auth_penalty=True`` turns it back on); a failed login
is still answered on a ~0.5 s timer. A login can be ``OK`` and then disconnected (no usable uid):
:meth:`DovecotServer.imap_login` therefore also selects INBOX, :meth:`pop3_login` runs STAT.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.common import (
    DOVECOT_USER,
    dovecot_ids,
    free_port,
    missing_dependency,
    new_server_dir,
    run_as,
)

REPLY_HELPER = "/usr/lib/dovecot/checkpassword-reply"
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin, wherever the venv is
CHECKPASSWORD_PROGRAM = VENV_BIN / "dovecot-appauth-checkpassword"
START_TIMEOUT = 20.0
STOP_GRACE = 2.0  # then SIGKILL: a master stopped while children start up takes ~6 s

DEFAULT_USERDB = "userdb {\n  driver = prefetch\n}\n"
# Users of the throw-away passdb the `dovecot` fixture starts with.
FIXTURE_USERS = {"fixture-user": "fixture-pass"}


class LoginResult(NamedTuple):
    """``ok`` is True only when the login AND the follow-up check worked; ``text`` has the replies."""

    ok: bool
    text: str


def _which(name: str) -> str | None:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def dovecot_available() -> str | None:
    """None when a Dovecot 2.3 can be started here, else the reason it cannot."""
    missing = [n for n in ("dovecot", "doveadm") if not _which(n)]
    if missing:
        return (f"Dovecot missing: {', '.join(missing)} "
                "(apt-get install dovecot-core dovecot-imapd dovecot-pop3d)")
    for binary, package in (("imap", "dovecot-imapd"), ("pop3", "dovecot-pop3d")):
        if not os.access(f"/usr/lib/dovecot/{binary}", os.X_OK):
            return f"/usr/lib/dovecot/{binary} missing (apt-get install {package})"
    if not os.access(REPLY_HELPER, os.X_OK):
        return f"{REPLY_HELPER} missing"
    if os.geteuid() != 0:
        return "a real Dovecot needs root (it switches to the dovecot/dovenull users)"
    try:
        pwd.getpwnam(DOVECOT_USER)
    except KeyError:
        return f"user {DOVECOT_USER!r} does not exist"
    version = subprocess.run([_which("dovecot"), "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    if not version.startswith("2.3."):
        return f"Dovecot 2.3 needed (checkpassword), found {version!r}"
    return None


# --- checks that the `dovecot` user can reach things ----------------------------------
@cache
def _check_interpreter(program: str) -> None:
    if not os.access(program, os.X_OK):
        raise RuntimeError(f"{program} does not exist or is not executable (pip install -e . in this venv?)")
    with open(program, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
    interpreter = first[2:].strip().split()[0] if first.startswith("#!") else None
    problems = []
    if run_as(DOVECOT_USER, "test", "-x", program).returncode != 0:
        problems.append(f"user dovecot cannot execute {program}")
    if interpreter:
        if run_as(DOVECOT_USER, "test", "-x", interpreter).returncode != 0:
            problems.append(f"user dovecot cannot execute the interpreter {interpreter}")
        else:
            r = run_as(DOVECOT_USER, interpreter, "-c", "import dovecot_appauth")
            if r.returncode != 0:
                problems.append(
                    f"user dovecot cannot import dovecot_appauth with {interpreter}: "
                    f"{(r.stderr.strip().splitlines() or ['?'])[-1]}"
                )
    if problems:
        raise RuntimeError(
            "; ".join(problems)
            + ". Dovecot runs the checkpassword program as user dovecot: build the venv from "
            "/usr/bin/python3 in a world-readable place (not under /root), with the package "
            "installed from a world-readable checkout."
        )


def check_dovecot_can_reach(*paths: str | os.PathLike, write: bool = False) -> None:
    """Raise with a clear message when user dovecot cannot read (or write) one of ``paths``."""
    flag = "-w" if write else "-r"
    bad = [str(p) for p in paths if run_as(DOVECOT_USER, "test", flag, str(p)).returncode != 0]
    if bad:
        raise RuntimeError(f"user dovecot cannot {'write' if write else 'read'}: {', '.join(bad)}")


def checkpassword_passdb(config: str | os.PathLike | None, *extra_args: str, settings: str = "",
                         program: str | os.PathLike = CHECKPASSWORD_PROGRAM) -> str:
    """A ``passdb { driver = checkpassword ... }`` block running our program.

    ``extra_args`` go after ``--config CONFIG`` (e.g. ``"--audit-chain"``); ``settings`` are
    extra lines inside the block (e.g. ``"skip = unauthenticated"``). Checks first that user
    dovecot can run the program and read the config, and raises a clear error otherwise.
    """
    program = str(program)
    _check_interpreter(program)
    args = [program]
    if config is not None:
        check_dovecot_can_reach(config)
        args += ["--config", str(config)]
    args += list(extra_args)
    return _passdb_block("checkpassword", " ".join(args), settings)


def passwd_file_passdb(path: str | os.PathLike, settings: str = "") -> str:
    """A ``passdb { driver = passwd-file ... }`` block (see :func:`write_passwd_file`)."""
    return _passdb_block("passwd-file", str(path), settings)


AUDIT_CHAIN_MARKER_SETTING = "override_fields = appauth_ok=yes"  # what --audit-chain requires


def audit_chain_passdbs(passwd_file: str | os.PathLike, config: str | os.PathLike,
                        *extra_args: str, flag: str = "--audit-chain",
                        first_settings: str = f"result_success = continue-ok\n{AUDIT_CHAIN_MARKER_SETTING}",
                        second_settings: str = "skip = unauthenticated") -> str:
    """The audit-only chain: passwd-file (continue-ok, the marker), then our program with ``flag``."""
    return passwd_file_passdb(passwd_file, first_settings) + checkpassword_passdb(
        config, flag, *extra_args, settings=second_settings
    )


def _passdb_block(driver: str, args: str, settings: str) -> str:
    lines = ["passdb {", f"  driver = {driver}", f"  args = {args}"]
    lines += [f"  {line.strip()}" for line in settings.splitlines() if line.strip()]
    return "\n".join([*lines, "}", ""])


def write_passwd_file(path: str | os.PathLike, users: dict[str, str], home_root: str | os.PathLike,
                      extra_fields: str = "", scheme: str | None = "PLAIN") -> Path:
    """Write a passwd-file with ``{PLAIN}`` passwords and prefetchable userdb fields (uid/gid
    of user dovecot, home ``home_root/USER``); ``extra_fields``: more ``key=value`` items.
    ``scheme=None``: the values are stored hashes that carry their own ``{SCHEME}`` prefix."""
    uid, gid = dovecot_ids()
    path = Path(path)
    prefix = "" if scheme is None else f"{{{scheme}}}"
    # passwd-file's own uid/gid/home columns are not prefetched: give userdb_* extra fields
    lines = [f"{user}:{prefix}{pw}::::::userdb_uid={uid} userdb_gid={gid} "
             f"userdb_home={Path(home_root) / user} {extra_fields}".rstrip()
             for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return path


# --- the server ----------------------------------------------------------------------
class DovecotServer:
    """One ``dovecot -F -c CONF`` process with its own dirs under ``basedir``.

    Attributes: ``host`` (127.0.0.1), ``imap_port``, ``pop3_port``, ``conf_path``, ``log_path``,
    ``mail_root`` (0777; default homes are ``mail_root/USER``), ``basedir`` (0755, reachable by
    user dovecot: put configs and databases for the program here, or anywhere similar).
    """

    host = "127.0.0.1"

    def __init__(self, basedir: Path, passdb: str, userdb: str = DEFAULT_USERDB, extra_conf: str = "",
                 auth_penalty: bool = False, auth_debug: bool = False,
                 import_environment: dict[str, str] | None = None):
        self.basedir = basedir
        self.run_dir = basedir / "run"
        self.state_dir = basedir / "state"
        self.mail_root = basedir / "mail"
        self.conf_path = basedir / "dovecot.conf"
        self.log_path = basedir / "dovecot.log"
        self.stdio_path = basedir / "dovecot.stdio"
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.proc: subprocess.Popen | None = None
        self._settings = dict(passdb=passdb, userdb=userdb, extra_conf=extra_conf, auth_penalty=auth_penalty,
                              auth_debug=auth_debug, import_environment=dict(import_environment or {}))
        self._initial = dict(self._settings)
        self._written = ""
        for d in (self.state_dir, self.mail_root):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.mail_root, 0o1777)

    # --- configuration -----------------------------------------------------------------
    def config_text(self) -> str:
        s = self._settings
        env = " ".join(["TZ", *(f"{k}={v}" for k, v in s["import_environment"].items())])
        penalty = "" if s["auth_penalty"] else (
            "service anvil {\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}\n"
        )
        return f"""# written by tests/support/dovecot.py
protocols = imap pop3
listen = {self.host}
base_dir = {self.run_dir}
state_dir = {self.state_dir}
instance_name = appauth-test-{self.basedir.name}
log_path = {self.log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S "
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
auth_debug = {"yes" if s["auth_debug"] else "no"}
login_trusted_networks = 127.0.0.0/8
first_valid_uid = 1
first_valid_gid = 1
mail_home = {self.mail_root}/%u
mail_location = maildir:~/Maildir
default_internal_user = {DOVECOT_USER}
default_login_user = dovenull
import_environment = {env}
shutdown_clients = yes
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{penalty}
{s["passdb"]}
{s["userdb"]}
{s["extra_conf"]}
"""

    def write_config(self) -> None:
        text = self.config_text()
        self.conf_path.write_text(text)
        os.chmod(self.conf_path, 0o644)
        self._written = text

    def reconfigure(self, **changes) -> bool:
        """Change settings (passdb, userdb, extra_conf, auth_penalty, auth_debug,
        import_environment) and restart when the config text changed. Returns True if restarted."""
        unknown = set(changes) - set(self._settings)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        self._settings.update(changes)
        if self.config_text() == self._written and self.running:
            return False
        self.restart()
        return True

    def reset(self) -> bool:
        """Back to the settings the server was started with."""
        return self.reconfigure(**self._initial)

    # --- life cycle --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.write_config()
        check = subprocess.run([_which("doveconf"), "-c", str(self.conf_path), "-n"], capture_output=True,
                               text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"doveconf rejects {self.conf_path}:\n{check.stderr}\n{self._written}")
        for port in (self.imap_port, self.pop3_port):
            _wait_port_free(port)
        stdio = open(self.stdio_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [_which("dovecot"), "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, start_new_session=True,
            )
        finally:
            stdio.close()
        try:
            self._wait_ready()
        except Exception:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        need_sockets = [self.run_dir / "auth-client", self.run_dir / "auth-userdb"]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.proc.returncode} during start:\n"
                                   f"{_tail(self.stdio_path)}\n{_tail(self.log_path)}")
            # the greetings come only once the login processes are connected to auth
            if all(p.exists() for p in need_sockets) and _greets(self.host, self.imap_port, b"* OK") \
                    and _greets(self.host, self.pop3_port, b"+OK"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot not ready after {START_TIMEOUT}s:\n{_tail(self.stdio_path)}\n"
                           f"{_tail(self.log_path)}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is not None:  # the master died: its children must not linger
            _signal_group(proc.pid, signal.SIGKILL)
            return
        # SIGTERM to the whole process group (the master alone waits ~1 s for its children)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
        deadline = time.monotonic() + 3
        while _signal_group(proc.pid, 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        _signal_group(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- clients -----------------------------------------------------------------------
    def imap_login(self, user: str, password: str | bytes, client_ip: str | None = None, select: bool = True,
                   timeout: float = 30) -> LoginResult:
        """LOGIN over IMAP (after ``ID ("x-originating-ip" IP)`` when ``client_ip``), then
        SELECT INBOX. ``ok`` needs both; ``text`` holds the server's replies, e.g.
        ``LOGIN NO [AUTHENTICATIONFAILED] Authentication failed.`` or ``... [UNAVAILABLE] ...``.
        A ``bytes`` password goes as is (e.g. not UTF-8) with AUTHENTICATE PLAIN instead of LOGIN;
        its replies are labelled ``LOGIN`` too."""
        parts: list[str] = []
        try:
            conn = imaplib.IMAP4(self.host, self.imap_port, timeout=timeout)
        except OSError as exc:
            return LoginResult(False, f"connect failed: {exc}")
        try:
            if client_ip:
                typ, data = conn.xatom("ID", f'("x-originating-ip" "{client_ip}")')
                parts.append(f"ID {typ} {_text(conn.untagged_responses.pop('ID', data))}")
            try:
                if isinstance(password, bytes):
                    plain = b"\0" + user.encode() + b"\0" + password
                    typ, data = conn.authenticate("PLAIN", lambda _challenge: plain)
                else:
                    typ, data = conn.login(conn._quote(user), password)
            except imaplib.IMAP4.abort as exc:
                return LoginResult(False, " | ".join([*parts, f"LOGIN aborted: {_text(exc.args)}"]))
            except imaplib.IMAP4.error as exc:
                return LoginResult(False, " | ".join([*parts, f"LOGIN NO {_text(exc.args)}"]))
            parts.append(f"LOGIN {typ} {_text(data)}")
            if not select:
                return LoginResult(typ == "OK", " | ".join(parts))
            try:
                typ, data = conn.select("INBOX")
            except (imaplib.IMAP4.error, OSError) as exc:
                return LoginResult(False, " | ".join([*parts, f"SELECT failed: {exc}"]))
            parts.append(f"SELECT {typ} {_text(data)}")
            return LoginResult(typ == "OK", " | ".join(parts))
        except (imaplib.IMAP4.error, OSError) as exc:
            return LoginResult(False, " | ".join([*parts, f"error: {exc}"]))
        finally:
            try:
                conn.shutdown()
            except Exception:
                pass

    def pop3_login(self, user: str, password: str, client_ip: str | None = None, stat: bool = True,
                   timeout: float = 30) -> LoginResult:
        """USER/PASS over POP3 (after ``XCLIENT ADDR=IP`` when ``client_ip``), then STAT."""
        parts: list[str] = []
        try:
            conn = poplib.POP3(self.host, self.pop3_port, timeout=timeout)
        except OSError as exc:
            return LoginResult(False, f"connect failed: {exc}")
        try:
            if client_ip:
                parts.append(f"XCLIENT {_text(conn._shortcmd(f'XCLIENT ADDR={client_ip}'))}")
            conn.user(user)
            try:
                parts.append(f"PASS {_text(conn.pass_(password))}")
            except poplib.error_proto as exc:
                return LoginResult(False, " | ".join([*parts, f"PASS {_text(exc.args)}"]))
            if stat:
                try:
                    count, size = conn.stat()
                except (poplib.error_proto, OSError) as exc:
                    return LoginResult(False, " | ".join([*parts, f"STAT failed: {exc}"]))
                parts.append(f"STAT {count} {size}")
            try:
                conn.quit()
            except (poplib.error_proto, OSError):
                pass
            return LoginResult(True, " | ".join(parts))
        except (poplib.error_proto, OSError) as exc:
            return LoginResult(False, " | ".join([*parts, f"error: {exc}"]))
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def doveadm(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([_which("doveadm"), "-c", str(self.conf_path), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def doveadm_auth_test(self, user: str, password: str, service: str | None = None, rip: str | None = None,
                          extra: dict[str, str] | None = None) -> tuple[int, str]:
        """``doveadm auth test [-x service=S] [-x rip=IP] USER PASS``: (0 ok | 77 failed, output)."""
        res = self.doveadm("auth", "test", *_x_args(service, rip, extra), user, password)
        return res.returncode, res.stdout + res.stderr

    def doveadm_auth_lookup(self, user: str, service: str | None = None, rip: str | None = None,
                            extra: dict[str, str] | None = None) -> tuple[int, str]:
        """``doveadm auth lookup USER``: (0 found | 67 unknown | 75 internal failure, output)."""
        res = self.doveadm("auth", "lookup", *_x_args(service, rip, extra), user)
        return res.returncode, res.stdout + res.stderr

    # --- the log -----------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """An offset for :meth:`log_since` (take it before the action you want to see)."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, since: int = 0, timeout: float = 5.0) -> str:
        """Wait until a line matching regex ``pattern`` appears after ``since``; return that line.
        Dovecot's log process writes asynchronously, so look for lines this way."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_since(since).splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no log line matching {pattern!r}; log since mark:\n{self.log_since(since)}"
                )
            time.sleep(0.05)

    def auth_errors(self, since: int = 0) -> list[str]:
        """Lines ``auth: Error: ...`` (the program's stderr ends up there)."""
        return [line for line in self.log_since(since).splitlines() if "auth: Error:" in line]


def _x_args(service: str | None, rip: str | None, extra: dict[str, str] | None) -> list[str]:
    fields = {}
    if service:
        fields["service"] = service
    if rip:
        fields["rip"] = rip
    fields.update(extra or {})
    out: list[str] = []
    for key, value in fields.items():
        out += ["-x", f"{key}={value}"]
    return out


def _text(data) -> str:
    if isinstance(data, (list, tuple)):
        return " ".join(_text(d) for d in data if d is not None)
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return str(data)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return ""


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no processes left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _greets(host: str, port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return s.recv(200).startswith(greeting)
    except OSError:
        return False


def _wait_port_free(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"port {port} still in use") from None
        time.sleep(0.05)


@pytest.fixture(scope="module")
def dovecot_factory():
    """``start(passdb=None, userdb=DEFAULT_USERDB, extra_conf="", auth_penalty=False,
    auth_debug=False, import_environment=None) -> DovecotServer``.

    ``passdb=None`` gives a passwd-file passdb with :data:`FIXTURE_USERS`. The server's
    ``basedir`` is a 0755 directory for the test's own files (configs, databases)."""
    reason = dovecot_available()
    if reason:
        missing_dependency(reason)
    servers: list[DovecotServer] = []

    def start(passdb: str | None = None, **kwargs) -> DovecotServer:
        basedir = new_server_dir()
        if passdb is None:
            write_passwd_file(basedir / "fixture.passwd", FIXTURE_USERS, basedir / "mail")
            passdb = passwd_file_passdb(basedir / "fixture.passwd")
        server = DovecotServer(basedir, passdb, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
        if not os.environ.get("APPAUTH_TEST_KEEP"):
            shutil.rmtree(server.basedir, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot(dovecot_factory) -> DovecotServer:
    """A module-wide Dovecot (passwd-file passdb with FIXTURE_USERS until reconfigured)."""
    return dovecot_factory()


def our_lines(text: str) -> list[str]:
    """The lines of a Dovecot log that our program wrote (its stderr, as `auth: Error:`)."""
    return [line for line in text.splitlines() if "dovecot-appauth:" in line]


def settle_log(dovecot: DovecotServer, mark: int, pattern: str) -> str:
    """Dovecot's log since `mark`: wait for `pattern`, then a moment more (the log process
    writes asynchronously)."""
    dovecot.wait_for_log(pattern, since=mark)
    time.sleep(0.15)
    return dovecot.log_since(mark)
