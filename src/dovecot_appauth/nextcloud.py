"""Nextcloud backend: an app password is right when Nextcloud's WebDAV accepts it.

Belongs here: one `PROPFIND` with HTTP basic auth to the configured URL (the shape of
the Lua passdb in the Dovecot docs' Nextcloud example), its verdict, and a short
positive cache. Not here: the audit, recording and throttling (login.py applies them
to this verdict as to a SQL one).

207 Multi-Status = right, 401 = wrong, anything else (redirect, 429 brute-force
throttling, 5xx), a refused connection, a TLS error or the deadline = `TempFail`, so
Nextcloud being down is never "wrong password".

Only the status line is read, on a raw socket with one deadline for connect, TLS,
request and answer: a server dripping bytes cannot hold a login longer than `timeout`
(http.client's per-read timeout could). Imported only when `[auth] backend = "nextcloud"`.

The cache: after a 207 the program touches `<cache dir>/nextcloud/<mac>`, where mac is
keyed BLAKE2b (a MAC) of url, user and password under a random per-install key in
`<cache dir>/nextcloud.key` (0600). Nothing in the cache reveals or lets anyone test a
password without that key. A file younger than `cache_seconds` answers "right" without
asking Nextcloud, so a revoked app password keeps working for at most that long; wrong
passwords are never cached (Nextcloud's own brute-force protection sees each one).
"""

from __future__ import annotations

import os
import time

from .core import TempFail
from .private_file import make_private_dirs
from .resolver import connect_within

KEY_BYTES = 32
USER_AGENT = "dovecot-appauth"
MAX_STATUS_LINE = 1024


class NextcloudSettings:
    """`[nextcloud]`: url (may contain %u, the URL-quoted user), timeout, cache_seconds, ca_file."""

    __slots__ = ("ca_file", "cache_seconds", "forward_ip", "timeout", "url")

    def __init__(self, url: str, timeout: float = 3.0, cache_seconds: float = 60.0, ca_file: str | None = None,
                 forward_ip: bool = True):
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.ca_file = ca_file
        self.forward_ip = forward_ip


def verify(user: str, password: str, remote_ip: str | None, settings: NextcloudSettings,
           cache_dir: str | None, now: float | None = None) -> bool:
    """True for an accepted app password, False for a rejected one; TempFail otherwise."""
    now = time.time() if now is None else now
    entry = _cache_entry(cache_dir, settings, user, password) if cache_dir and settings.cache_seconds > 0 else None
    if entry is not None and _fresh(entry, now, settings.cache_seconds):
        return True
    status = request_status(settings, user, password, remote_ip)
    if status == 207:
        if entry is not None:
            _touch(entry, now, settings.cache_seconds)
        return True
    if status == 401:
        return False
    raise TempFail(f"nextcloud: HTTP {status} from {_redacted(settings.url)} (expected 207 or 401)")


# --- HTTP ----------------------------------------------------------------------------


def _split_url(url: str, user: str) -> tuple[bool, str, int, str]:
    from urllib.parse import quote, urlsplit

    parts = urlsplit(url.replace("%u", quote(user, safe="@")))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TempFail(f"nextcloud: [nextcloud] url must be http(s)://host/...: {url}")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return https, parts.hostname, port, path


def build_request(settings: NextcloudSettings, user: str, password: str,
                  remote_ip: str | None) -> tuple[bool, str, int, bytes]:
    """(https, host, port, request bytes); the request never goes to a log."""
    import base64

    https, host, port, path = _split_url(settings.url, user)
    if any(c in user for c in "\r\n\0") or ":" in user:
        raise _Wrong()
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    default_port = 443 if https else 80
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    lines = [
        f"PROPFIND {path} HTTP/1.1",
        f"Host: {host_header}",
        f"Authorization: Basic {token}",
        "Depth: 0",
        "Content-Length: 0",
        f"User-Agent: {USER_AGENT}",
        "Connection: close",
    ]
    if settings.forward_ip and remote_ip and all(c in "0123456789abcdefABCDEF.:" for c in remote_ip):
        lines.append(f"X-Forwarded-For: {remote_ip}")
    return https, host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class _Wrong(Exception):
    """Credentials Nextcloud could never accept (a colon or line break in the user name)."""


def request_status(settings: NextcloudSettings, user: str, password: str, remote_ip: str | None) -> int:
    try:
        https, host, port, data = build_request(settings, user, password, remote_ip)
    except _Wrong:
        return 401
    end = time.monotonic() + settings.timeout

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    where = _redacted(settings.url)
    sock = None
    try:
        sock = connect_within(host, port, left())  # the host name's lookup within the timeout too
        if https:
            import ssl

            context = ssl.create_default_context(cafile=settings.ca_file)
            sock.settimeout(left())
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.settimeout(left())
        sock.sendall(data)
        buf = b""
        while b"\n" not in buf and len(buf) < MAX_STATUS_LINE:
            sock.settimeout(left())
            chunk = sock.recv(MAX_STATUS_LINE)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise TempFail(f"nextcloud: no answer from {where} within {settings.timeout:g}s") from None
    except OSError as e:
        raise TempFail(f"nextcloud: {where}: {e.strerror or e}") from None
    finally:
        if sock is not None:
            sock.close()
    line = buf.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TempFail(f"nextcloud: {where} did not answer HTTP: {line[:80]!r}")
    return int(parts[1])


def _redacted(url: str) -> str:
    """The URL without any userinfo (never log credentials)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


# --- positive cache ------------------------------------------------------------------


def _cache_entry(cache_dir: str, settings: NextcloudSettings, user: str, password: str) -> str | None:
    """Path of this credential's cache file, or None when the cache cannot be used safely."""
    import hashlib

    key = load_key(cache_dir)
    if key is None:
        return None
    mac = hashlib.blake2b(b"\0".join(s.encode("utf-8", "surrogateescape") for s in (settings.url, user, password)),
                          key=key, digest_size=32, person=b"appauth-nc").hexdigest()
    return os.path.join(cache_dir, "nextcloud", mac)


def load_key(cache_dir: str) -> bytes | None:
    """The per-install key, created on first use (0600, this user's); None if unusable."""
    path = os.path.join(cache_dir, "nextcloud.key")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create_key(cache_dir, path)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None  # someone else could read or plant it: no cache rather than a weak one
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    return key if len(key) == KEY_BYTES else None


def _create_key(cache_dir: str, path: str) -> bytes | None:
    try:
        make_private_dirs(cache_dir)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another login created first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError:
        return None
    return load_key(cache_dir)


def _fresh(entry: str, now: float, seconds: float) -> bool:
    try:
        st = os.lstat(entry)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and 0 <= now - st.st_mtime < seconds


def _touch(entry: str, now: float, seconds: float) -> None:
    directory = os.path.dirname(entry)
    try:
        make_private_dirs(directory)
        fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.utime(entry, (now, now))
        _purge(directory, now, seconds)
    except OSError:
        pass  # the cache is an optimisation: the login goes on


def _purge(directory: str, now: float, seconds: float) -> None:
    """Remove expired entries, so the directory stays as small as the burst it serves."""
    try:
        with os.scandir(directory) as entries:
            for e in entries:
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime >= seconds:
                        os.unlink(e.path)
                except OSError:
                    pass
    except OSError:
        pass
