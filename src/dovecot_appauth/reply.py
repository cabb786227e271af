"""The answer to Dovecot: fields for the reply, and how they reach fd 4.

`userdb_fields`, `helper_environment` and `helper_reply` are pure. When Dovecot gives its
reply helper, the program writes to fd 4 what that helper would write (`helper_reply`,
with `write_reply`): the same reply without an exec per login. `exec_helper` replaces
this process with the helper only when fd 4 is not open (a manual run; nothing of ours
runs after it: the audit line is written before). `write_fd4` writes the fields alone:
no helper given, or the audit chain, where the helper would add its own userdb_uid/gid
and clobber the earlier passdb's.
"""

from __future__ import annotations

import os

from .core import TempFail, encode_reply

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
        os.execve(argv[0], argv, env)  # noqa: S606 - the helper Dovecot gave us, no shell
    except OSError as e:
        raise TempFail(f"cannot run reply helper {argv[0]}: {e.strerror}") from None


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
        os.fstat(4)
    except OSError:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if fd != 4:  # fd 3 was free as well: it got /dev/null, which moves to 4
            os.dup2(fd, 4, inheritable=False)
            os.close(fd)


def write_fd4(user: str, fields: list[tuple[str, str]]) -> bool:
    """Write the reply to fd 4 ourselves; False when fd 4 is not open (a manual run)."""
    return write_reply([("user", user), *fields])


def write_reply(reply: list[tuple[str, str]]) -> bool:
    """Write `reply` (its first field `user`) to fd 4; False when fd 4 is not open."""
    data = encode_reply(reply)
    try:
        view = memoryview(data)
        while view:
            written = os.write(4, view)
            view = view[written:]
    except OSError as e:
        if e.errno == 9:  # EBADF: not run by Dovecot and no 4> redirection
            return False
        raise TempFail(f"cannot write the reply to fd 4: {e.strerror}") from None
    return True
