"""The service user: the account the per-login program (and `serve`) runs as, normally `dovecot`.

What belongs here: finding that user for the admin CLI, dropping to it, and checking the
configured files as it sees them. Admin commands run as root; judged as root, a list,
database or `.mmdb` only root can read passes every check and is off for every login, and
files root creates in the cache directories are unusable for the logins. So:

- `check-config` checks every file a login opens, and the sockets its audit line is sent
  to, in a child that dropped to the service user (`access_problems`), and the cache
  directory's owner and mode;
- `explain`, `cache stats` and `cache purge` drop to the service user before they touch the
  cache (`drop_to`), so they see what a login sees and leave only files it can use;
- `login-test` starts the program as the service user, as Dovecot does.

Which user: `--service-user NAME`, else the owner of `[audit.cache] path`, else (the
directory does not exist yet) the owner of its nearest existing parent. Not on the
per-login path: only the admin CLI imports this module.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass

from ..config import Config, Problem


class ServiceUserError(Exception):
    """The service user cannot be found or taken on."""


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    how: str  # how it was chosen, for messages
    cache_missing: bool = False  # chosen as the owner of the missing cache directory's parent

    @property
    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)

    def describe(self) -> str:
        return f"{self.name} (uid {self.uid}; {self.how})"


def cache_directory(config: Config) -> str:
    return config.resolve(config.audit.cache.path)


def resolve(config: Config, explicit: str | None = None) -> ServiceUser:
    """The user the logins run as: `explicit`, else the cache directory's owner (see above)."""
    if explicit:
        try:
            entry = pwd.getpwnam(explicit) if not explicit.isdigit() else pwd.getpwuid(int(explicit))
        except KeyError:
            raise ServiceUserError(f"--service-user {explicit}: no such user") from None
        return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, "--service-user")
    path = cache_directory(config)
    how = f"owner of the cache directory {path}"
    probe = path
    while True:
        try:
            st = os.stat(probe)
            break
        except OSError:
            parent = os.path.dirname(probe)
            if parent == probe:
                raise ServiceUserError(f"cannot find the owner of {path}: pass --service-user") from None
            probe = parent
            how = f"owner of {probe}, as the cache directory {path} does not exist"
    try:
        entry = pwd.getpwuid(st.st_uid)
        name, gid = entry.pw_name, entry.pw_gid
    except KeyError:
        name, gid = str(st.st_uid), st.st_gid
    return ServiceUser(name, st.st_uid, gid, how, cache_missing=probe != path)


def missing_cache_warning(user: ServiceUser, config: Config) -> str | None:
    """A warning when a command run as root is about to create the cache directory as root
    although the logins most likely run as `dovecot` (the install step was skipped)."""
    if not user.cache_missing or user.uid != 0 or os.geteuid() != 0 or not _dovecot_exists():
        return None
    path = cache_directory(config)
    return (f"the cache directory {path} does not exist, so this command acts as root (its parent's owner) "
            f"and what it creates there is root's, which logins as dovecot cannot use: run "
            f"'install -d -o dovecot -g dovecot -m 0700 {path}' first, or pass --service-user dovecot")


def root_cache_warning(user: ServiceUser, config: Config) -> str | None:
    """A warning when root was taken for the service user only because root owns the
    existing cache directory while a `dovecot` user exists: then every check passes as
    root, which reads everything, although the logins most likely run as dovecot. Only
    when the audit uses that cache: otherwise its owner says nothing about the logins."""
    if user.how == "--service-user" or user.cache_missing or user.uid != 0:
        return None
    if not (config.audit.enabled and config.audit.cache.enabled) or not _dovecot_exists():
        return None
    path = cache_directory(config)
    return (f"the cache directory {path} belongs to root, so files are judged as root, who can read them all; "
            f"if logins run as dovecot, they cannot use that cache and a file only root can read is off for "
            f"them: 'chown -R dovecot:dovecot {path}', or pass --service-user dovecot")


def _dovecot_exists() -> bool:
    """Is there a `dovecot` user, the one Dovecot's auth processes usually run as?"""
    try:
        pwd.getpwnam("dovecot")
    except KeyError:
        return False
    return True


def can_drop_to(user: ServiceUser) -> bool:
    """Whether this process may become `user` (root), or already is it."""
    return os.geteuid() == 0 or os.geteuid() == user.uid


def drop_to(user: ServiceUser) -> None:
    """Become `user` for the rest of this process (groups, gid, uid); nothing to do when
    already it. Raises ServiceUserError when that is not allowed (not root)."""
    if os.geteuid() == user.uid and os.getuid() == user.uid:
        return
    if os.geteuid() != 0:
        raise ServiceUserError(f"cannot act as {user.describe()}: run this command as root or as that user")
    try:
        os.setgroups(user.groups)
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as e:
        raise ServiceUserError(f"cannot become {user.describe()}: {e.strerror}") from None


def check_cache_directory(config: Config, user: ServiceUser) -> list[Problem]:
    """The cache directory's owner and mode (as root sees them): its entries feed the allow
    lists, so a directory others can write is not trusted (a login then runs uncached)."""
    path = cache_directory(config)
    where = f"[audit.cache] path {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []  # a login creates it; whether it can is checked as the service user
    except OSError as e:
        return [Problem(where, f"cannot stat: {e.strerror}")]
    if not stat.S_ISDIR(st.st_mode):
        return [Problem(where, "is not a directory")]
    problems = []
    if st.st_mode & 0o022:
        problems.append(Problem(where, f"is group- or world-writable (mode {st.st_mode & 0o7777:04o}): its "
                                       "entries feed the allow lists, so logins do not trust it and run "
                                       "uncached; chmod 0700"))
    if st.st_uid not in (user.uid, 0):
        problems.append(Problem(where, f"belongs to uid {st.st_uid}, neither the service user {user.name} nor "
                                       "root: that user can forge the entries the logins read", "warning"))
    return problems


# ---------------------------------------------------------------------------
# what the service user can open: run in a child that dropped to it


def _readable(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return e.strerror or type(e).__name__
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        os.read(fd, 1)
    except OSError as e:
        return e.strerror or type(e).__name__
    finally:
        os.close(fd)
    return None


def is_socket(path: str) -> bool:
    """A Unix socket is at `path` (as this process sees it)."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _writable_dir(path: str) -> str | None:
    if not os.path.isdir(path):
        return None  # reported elsewhere (missing)
    if not os.access(path, os.W_OK | os.X_OK):
        return "directory not writable"
    return None


def _files_to_check(config: Config, config_path: str) -> list[tuple[str, str, str]]:
    """(where, path, what) for every file a login opens: what is "read", "readwrite",
    "append" or "cachedir"."""
    audit = config.audit
    out = [("config", config_path, "read")]
    if audit.enabled:
        for role, files in (("audit.lists", audit.lists), ("audit.allow", audit.allow)):
            for kind, file in files.items():
                out.append((f"[{role}] {kind}", config.resolve(file), "read"))
        for label in ("city", "asn"):
            file = getattr(audit.maxmind, label)
            if file:
                out.append((f"[audit.maxmind] {label}", config.resolve(file), "read"))
        if audit.log_file:
            out.append(("[audit] log_file", config.resolve(audit.log_file), "append"))
        # where the audit lines are sent (audit/line.py's emit): journald's socket first
        if audit.journal != "no":
            from ..audit.line import JOURNAL_SOCKET

            out.append(("[audit] journal", JOURNAL_SOCKET, "journald"))
        if audit.syslog_socket:
            out.append(("[audit] syslog_socket", audit.syslog_socket, "syslog"))
    if audit.cache.enabled:
        out.append(("[audit.cache] path", cache_directory(config), "cachedir"))
    from ..dsn import DsnError, parse_dsn

    try:
        dsn = parse_dsn(config.database.dsn)
    except DsnError:
        dsn = None
    if dsn is not None and dsn.dialect == "sqlite" and dsn.path:
        out.append(("[database] dsn", os.path.abspath(dsn.path), "readwrite"))
    if config.auth.backend == "nextcloud" and config.nextcloud.ca_file:
        out.append(("[nextcloud] ca_file", config.resolve(config.nextcloud.ca_file), "read"))
    if config.fast_path.socket:
        if config.fast_path.token_file:
            out.append(("[fast_path] token_file", config.resolve(config.fast_path.token_file), "read"))
        out.append(("[fast_path] socket", config.resolve(config.fast_path.socket), "serve"))
    return out


def _socket_refuses(path: str) -> str | None:
    """Why this user cannot send a datagram to the Unix socket at `path` (as audit/line.py
    does: connect, then send), or None. A stream socket (some syslog daemons) is tried when
    the datagram connect says it is one."""
    import errno
    import socket

    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(path)
            except OSError as e:
                if e.errno == errno.EPROTOTYPE and kind == socket.SOCK_DGRAM:
                    continue
                return e.strerror or type(e).__name__
            return None
    return None


def _cache_entries_problems(directory: str, uid: int) -> list[str]:
    """Entries of the cache directory and its `lists/` and `nextcloud/` subdirectories
    that belong to another user (root's, made by an admin command): unusable for logins."""
    found = []
    for d in (directory, os.path.join(directory, "lists"), os.path.join(directory, "nextcloud")):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            p = os.path.join(d, name)
            try:
                owner = os.lstat(p).st_uid
            except OSError:
                continue
            if owner != uid:
                found.append(f"{p} belongs to uid {owner}")
    return found


def _check_as_current_user(config: Config, config_path: str) -> list[tuple[str, str, str]]:
    """(where, path, message) of every file this process cannot use as a login would."""
    problems = []
    journald_takes_lines = False
    for where, path, what in _files_to_check(config, config_path):
        if what in ("journald", "syslog"):
            # a socket that is missing, or not a socket, is check_audit_log's (as root sees it);
            # here: one that exists but that this user may not send to (its mode)
            if not is_socket(path) or (what == "syslog" and journald_takes_lines):
                continue
            reason = _socket_refuses(path)
            if reason is None:
                journald_takes_lines = what == "journald"
            elif what == "journald":
                problems.append((where, path, f"cannot send to it: {reason}: every login's audit line goes to "
                                              "syslog instead"))
            else:
                problems.append((where, path, f"cannot send to it: {reason}: every login will say that its "
                                              "audit line was not logged there"))
        elif what == "read":
            reason = _readable(path)
            if reason and where.startswith("[audit.maxmind]") and not os.path.exists(path):
                continue  # a missing file: check_audit_sources reports it
            if reason:
                problems.append((where, path, f"not readable: {reason}"))
        elif what == "append":
            if os.path.exists(path):
                if not os.access(path, os.W_OK):
                    problems.append((where, path, "not writable: audit lines would not be written there"))
            elif not os.access(os.path.dirname(path) or ".", os.W_OK | os.X_OK):
                problems.append((where, path, "cannot be created: directory not writable"))
        elif what == "readwrite":
            if not os.path.exists(path):
                continue  # check_database_schema reports it
            if not os.access(path, os.R_OK | os.W_OK):
                problems.append((where, path, "database file not readable and writable: logins fail"))
            reason = _writable_dir(os.path.dirname(path))
            if reason:
                problems.append((where, os.path.dirname(path), f"{reason}: SQLite cannot make its journal "
                                                               "files there"))
        elif what == "cachedir":
            if not os.path.isdir(path):
                parent = os.path.dirname(path)
                if not os.access(parent, os.W_OK | os.X_OK):
                    problems.append((where, path, "does not exist and cannot be created: every login runs "
                                                  "uncached"))
                continue
            reason = _writable_dir(path)
            if reason:
                problems.append((where, path, f"{reason}: every login runs uncached"))
            for entry in _cache_entries_problems(path, os.geteuid()):
                problems.append((where, path, f"{entry}: this user cannot use it (chown it or remove it)"))
        elif what == "serve":
            from ..core import TempFail
            from ..fast_path import check, read_token

            try:
                token = read_token(config.resolve(config.fast_path.token_file)) if config.fast_path.token_file \
                    else None
            except TempFail:
                continue  # the token file is reported above
            reason = check(path, config_path, token)
            if reason:
                problems.append((where, path, f"serve {reason}"))
            else:
                problems.append((where, path, "serve answers for this config: logins take the fast path"))
    return problems


def access_problems(config: Config, config_path: str, user: ServiceUser) -> list[Problem]:
    """Every file a login opens, checked by a child process that dropped to `user`.

    Errors for what a login needs (config, lists, `.mmdb`, database), warnings for what only
    slows it or loses a line (cache, log_file). Without the right to become `user` (not
    root, another user): one warning saying the check was not done.
    """
    import json

    if not can_drop_to(user):
        return [Problem("service user", f"files not checked as {user.describe()}: run check-config as root "
                                        "or as that user", "warning")]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop, check, report, exit without cleanup
        status = 0
        try:
            os.close(read_fd)
            drop_to(user)
            data = json.dumps(_check_as_current_user(config, config_path)).encode()
        except BaseException as e:  # reported to the parent, whatever it is
            data = json.dumps([["service user", "", f"check failed: {type(e).__name__}: {e}"]]).encode()
            status = 1
        try:
            from ..private_file import write_all

            write_all(write_fd, data)
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    try:
        found = json.loads(b"".join(chunks) or b"[]")
    except ValueError:
        found = [["service user", "", "check gave no answer"]]
    problems = []
    for where, path, message in found:
        # a MaxMind file only feeds the sources (its lists then see "unknown", G6)
        level = "warning" if where.startswith(("[audit.cache]", "[audit] ", "[audit.maxmind]",
                                               "[fast_path]")) else "error"
        if where == "[fast_path] socket" and message.endswith("logins take the fast path"):
            level = "info"
        problems.append(Problem(f"{where} {path}".rstrip(), f"as {user.name}: {message}", level))
    return problems
