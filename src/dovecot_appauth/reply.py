"""The answer to Dovecot: fields for the reply, and how they reach fd 4.

`userdb_fields`, `helper_environment` and `helper_reply` are pure. When Dovecot gives its
reply helper, the program writes to fd 4 what that helper would write (`helper_reply`,
with `write_reply`): the same reply without an exec per login. `exec_helper` replaces
this process with the helper only when fd 4 is not open (a manual run; nothing of ours
runs after it: the audit line is written before). `write_fd4` writes the fields alone:
no helper given, or the audit chain, where the helper would add its own userdb_uid/gid
and clobber the earlier passdb's. `read_fd3` reads the request Dovecot writes to fd 3.

File descriptors are handled with `posix`, the C module behind `os`, loaded at start-up:
the fast path (fast_path.login_via_serve) answers a login without importing `os` (~1 ms).
"""

from __future__ import annotations

import posix

from .core import MAX_REQUEST_LEN, Misuse, TempFail, encode_reply

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

    from .config import UserdbConfig


def expand_template(template: str, user: str) -> str:
    """Dovecot-style variables: %u user, %n local part, %d domain, %% a percent sign."""
    local, _, domain = user.partition("@")
    out = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            code = template[i + 1]
            value = {"u": user, "n": local, "d": domain, "%": "%"}.get(code)
            if value is not None:
                out.append(value)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def userdb_fields(user: str, userdb: UserdbConfig) -> list[tuple[str, str]]:
    """The configured userdb_* fields for `user` (the canonical name from the database)."""
    fields = []
    for key, value in (("userdb_uid", userdb.uid), ("userdb_gid", userdb.gid),
                       ("userdb_home", userdb.home), ("userdb_mail", userdb.mail)):
        if value is not None:
            fields.append((key, expand_template(value, user)))
    for key, value in userdb.extra.items():
        fields.append((key, expand_template(value, user)))
    return fields


def helper_environment(
    base: Mapping[str, str], user: str, fields: list[tuple[str, str]], *, lookup: bool
) -> dict[str, str]:
    """The environment for checkpassword-reply: USER, EXTRA and the variables it names.

    Values are passed raw: Dovecot 2.3's checkpassword-reply tab-escapes every EXTRA
    name and value itself (str_append_tabescaped), so escaping here would double-escape.
    HOME is dropped: the helper would turn an inherited HOME into userdb_home.
    """
    env = {k: v for k, v in base.items() if k not in ("HOME", "EXTRA")}
    env["USER"] = user
    names = []
    for key, value in fields:
        name = key.upper()
        env[name] = value
        names.append(name)
    env["EXTRA"] = " ".join(names)
    if lookup:
        env["AUTHORIZED"] = "2"
    return env


def helper_reply(user: str, fields: list[tuple[str, str]], uid: int, gid: int) -> list[tuple[str, str]]:
    """What Dovecot 2.3's checkpassword-reply writes to fd 4 for `helper_environment`'s
    variables: `user`, each field with its name lower-cased, then `userdb_uid` and
    `userdb_gid` of the process (`uid`, `gid`) when the fields have none
    (checkpassword-reply.c; tests/unit/test_reply.py compares the two)."""
    reply = [("user", user)]
    names = set()
    for key, value in fields:
        name = key.lower()
        names.add(name)
        reply.append((name, value))
    if "userdb_uid" not in names:
        reply.append(("userdb_uid", str(uid)))
    if "userdb_gid" not in names:
        reply.append(("userdb_gid", str(gid)))
    return reply


def exec_helper(argv: list[str], env: dict[str, str]) -> NoReturn:
    try:
        posix.execve(argv[0], argv, env)  # the helper Dovecot gave us, no shell
    except OSError as e:
        raise TempFail(f"cannot run reply helper {argv[0]}: {e.strerror}") from None


def send(user: str, fields: list[tuple[str, str | None]], helper_argv: list[str] | tuple[str, ...],
         env: Mapping[str, str], *, lookup: bool = False) -> str | None:
    """Hand Dovecot a success for `user`: with a reply helper (`helper_argv`), what it would
    write, written to fd 4 here (one exec, about 2 ms, less per login), or the helper
    exec'd when fd 4 is not open (a manual run); without one, the fields alone to fd 4.
    Returns the line to say when nothing could be written; TempFail when the helper
    cannot be run."""
    if helper_argv:
        if write_reply(helper_reply(user, fields, posix.getuid(), posix.getgid())):
            return None
        import sys

        if sys.stderr is not None:  # None: started with fd 2 closed
            try:
                sys.stderr.flush()  # fd 4 not open (a manual run): the helper, as Dovecot expects it
            except (OSError, ValueError):
                pass  # nothing to keep: the helper is run all the same
        exec_helper(list(helper_argv), helper_environment(env, user, fields, lookup=lookup))
    if not write_fd4(user, fields):
        return "fd 4 is not open: reply not written (run as Dovecot does, or add 4>&1 to see it)"
    return None


def hold_fd4() -> None:
    """Call first thing: when fd 4 is not open (a manual run), put /dev/null there, read-only
    and close-on-exec, so that no file the login opens becomes fd 4.

    The per-login program may leave its database connection open to the exit
    (store.close_for_exit); a database opened while fd 4 is free would get fd 4, and the
    reply would be written into it. Held this way, a write to fd 4 fails with EBADF, as
    on a closed descriptor (`write_reply` says False), and the reply helper, run in that
    case, finds fd 4 closed, as before.
    """
    try:
        posix.fstat(4)
    except OSError:
        fd = posix.open("/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
        if fd != 4:  # fd 3 was free as well: it got /dev/null, which moves to 4
            posix.dup2(fd, 4, inheritable=False)
            posix.close(fd)


def write_fd4(user: str, fields: list[tuple[str, str]]) -> bool:
    """Write the reply to fd 4 ourselves; False when fd 4 is not open (a manual run)."""
    return write_reply([("user", user), *fields])


def write_reply(reply: list[tuple[str, str]]) -> bool:
    """Write `reply` (its first field `user`) to fd 4; False when fd 4 is not open."""
    data = encode_reply(reply)
    try:
        view = memoryview(data)
        while view:
            written = posix.write(4, view)
            view = view[written:]
    except OSError as e:
        if e.errno == 9:  # EBADF: not run by Dovecot and no 4> redirection
            return False
        raise TempFail(f"cannot write the reply to fd 4: {e.strerror}") from None
    return True


def read_fd3(usage: str) -> bytes:
    """Read the request from fd 3 up to EOF (a byte more than allowed, to see oversize).
    Misuse(`usage`) when fd 3 is not open (run by hand without 3<)."""
    chunks = []
    total = 0
    try:
        while total <= MAX_REQUEST_LEN:
            chunk = posix.read(3, MAX_REQUEST_LEN + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        if e.errno == 9:  # EBADF
            raise Misuse(usage) from None
        raise TempFail(f"cannot read the request from fd 3: {e.strerror}") from None
    return b"".join(chunks)
