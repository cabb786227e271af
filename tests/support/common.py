"""Small helpers shared by the real-server fixtures (no fixtures here)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import AnyStr

import pytest

TRUTHY = {"1", "true", "yes", "on"}
DOVECOT_USER = "dovecot"  # the auth process's user: it runs the checkpassword program


def fill_datagram_queue(path: str | os.PathLike, datagram: bytes = b"x" * 512, limit: int = 100_000) -> None:
    """Send to the Unix datagram socket at `path` until a send would wait: its reader's queue
    is full, as a syslog daemon or journald that stopped reading leaves it (the datagrams
    stay queued after this returns). AssertionError if it never fills."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.connect(os.fspath(path))
        sender.setblocking(False)
        for _ in range(limit):
            try:
                sender.send(datagram)
            except BlockingIOError:
                return
    raise AssertionError(f"the queue of {path} never filled")


def until_closed(sock: socket.socket) -> bytes:
    """Everything a server sends on `sock` until it closes the connection (the socket's own
    timeout, socket.timeout, fails the caller)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def stop_process_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM to the process group of `proc` (started with start_new_session=True), SIGKILL
    if it has not ended within `timeout`; nothing if it already has."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in TRUTHY


def missing_dependency(reason: str) -> None:
    """Skip locally; fail under CI=true, where the end-to-end tests must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: end-to-end tests must not be skipped)", pytrace=False)
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_LAST_CHARACTERS = "xyzXYZ0123456789"


def wrong_password(right: AnyStr, *others: str | bytes) -> AnyStr:
    """A wrong password that differs from ``right`` (and from each of ``others``) by construction.

    ``right`` with its last character replaced by one that none of them ends with: the same
    length and alphabet (so a wrong password costs the same hash work), never equal to any of
    them, whatever random passwords the test made. (``pw[:-1] + "x"`` is the right password
    whenever it already ends in "x": one run in 62.)
    """
    ends = {p[-1:].decode("latin-1") if isinstance(p, bytes) else p[-1:] for p in (right, *others)}
    last = next(c for c in _LAST_CHARACTERS if c not in ends)
    return right[:-1] + (last.encode() if isinstance(right, bytes) else last)  # type: ignore[operator]


@cache
def shared_tempdir_base() -> str:
    """A directory for fixture dirs that other users (`dovecot`, `mysql`) can traverse.

    pytest's tmp_path lives under a 0700 directory, so server fixtures make their dirs here
    with tempfile.mkdtemp(dir=...) and chmod them 0755. Override: APPAUTH_TEST_TMPDIR.
    """
    for candidate in (os.environ.get("APPAUTH_TEST_TMPDIR"), tempfile.gettempdir(), "/tmp", "/var/tmp"):
        if candidate and os.path.isdir(candidate) and _world_traversable(candidate):
            return candidate
    return "/tmp"


def _world_traversable(path: str) -> bool:
    path = os.path.abspath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def run_as(user: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command as another user (we are root): `runuser -u USER -- ARGV`."""
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
    )


def dovecot_ids() -> tuple[int, int]:
    """(uid, gid) of user dovecot."""
    pw = pwd.getpwnam(DOVECOT_USER)
    return pw.pw_uid, pw.pw_gid


def new_server_dir(prefix: str = "appauth-dc-") -> Path:
    """A fresh 0755 directory user dovecot can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=shared_tempdir_base()))
    os.chmod(d, 0o755)
    return d


def give_to_dovecot(path: Path) -> None:
    """chown -R to user dovecot (we run as root in these tests; a no-op otherwise)."""
    if os.geteuid() != 0:
        return
    uid, gid = dovecot_ids()
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

