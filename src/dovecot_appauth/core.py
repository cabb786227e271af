"""The checkpassword contract as pure functions: bytes and dicts in, values out.

What belongs here: parsing the fd-3 request, reading Dovecot's environment into a
`LoginRequest`, encoding the fd-4 reply, the exit statuses, and the errors that carry
them. Nothing here touches a file descriptor, the database, the network or the clock;
`login.py` does the I/O around these functions. The one exception is `say`, the single
place that writes the program's one-line messages (every module of a login uses it). The facts come from Dovecot 2.3's
`db-checkpassword.c` and `checkpassword-reply.c` (see shared/PROTOCOL.md).
"""

from __future__ import annotations

from .values import Choice, IntChoice, Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, TextIO

# db-checkpassword.c: CHECKPASSWORD_MAX_REQUEST_LEN
MAX_REQUEST_LEN = 512


class ExitCode(IntChoice):
    """Every status the per-login program can end with; never write these as numbers."""

    OK = 0  # verify mode: authenticated (with a non-empty fd-4 reply)
    FAIL = 1  # verify mode: wrong password, unknown user, refused
    LOOKUP_OK = 2  # lookup mode: user exists (reply written, AUTHORIZED=2)
    LOOKUP_UNKNOWN = 3  # lookup mode: no such user
    TEMPFAIL = 111  # internal failure: Dovecot answers UNAVAILABLE, the client retries


# Misuse (run by hand without fd 3, malformed request) shares its number with
# LOOKUP_OK, as in checkpassword tradition: Dovecot reads it as an internal failure in
# verify mode, which is what a malformed request is.
MISUSE = ExitCode.LOOKUP_OK

EXIT_MEANINGS: dict[int, str] = {
    0: "authenticated (verify mode)",
    1: "refused: wrong password, unknown user or denied (client: AUTHENTICATIONFAILED)",
    2: "lookup: user exists / verify: misuse, internal failure (client: UNAVAILABLE)",
    3: "lookup: user unknown",
    111: "temporary failure (client: UNAVAILABLE, retry later)",
}


def say(stderr: TextIO | None, message: str) -> None:
    """One line on `stderr` (default: sys.stderr), white space folded: Dovecot logs each
    line of a checkpassword program's stderr as `auth: Error: ...`. A stream that cannot
    be written loses the line; the login goes on. So does a missing one: Python sets
    sys.stderr to None when the program starts with fd 2 closed."""
    import sys  # built in, already loaded: costs nothing

    stream = stderr if stderr is not None else sys.stderr
    if stream is None:
        return
    line = f"dovecot-appauth: {' '.join(message.split())}\n"
    try:
        stream.write(line)
        stream.flush()
    except Exception:  # noqa: S110 - a line that cannot be said never changes the answer
        pass


class AppAuthError(Exception):
    """Base error; `exit_code` says what Dovecot must be told."""

    exit_code: int = ExitCode.TEMPFAIL


class TempFail(AppAuthError):
    """An internal problem (database, config, I/O): never a wrong password."""

    exit_code = ExitCode.TEMPFAIL


class ListsUnreadable(TempFail):
    """A configured deny or allow list cannot be read, so the login cannot be judged
    (`[audit] unreadable_list = "tempfail"`). A temporary failure, except under
    --audit-chain, which refuses instead: Dovecot's example maps 111 to return-ok there."""


class WouldWait(Exception):
    """`serve` runs a request on its event loop first (serve/server.py, "on the loop"):
    raised there when the request needs something that can wait (a lookup the
    enrichment cache does not answer, a lock another process holds, a slow hash), so it
    is run again from the start on one of the engine's threads. Raised only before the
    request did anything that shows: its database writes are in a transaction that is
    rolled back, and no audit line has been written. Never raised on a thread or in the
    per-login program (`must_not_wait`)."""


# The thread ident of serve's event loop while it runs a request itself; None otherwise
# (always, in the per-login program).
_loop_thread: int | None = None


def must_not_wait() -> bool:
    """True while serve's event loop runs a request: whatever could wait raises WouldWait."""
    if _loop_thread is None:
        return False
    import _thread  # built in: nothing to load

    return _thread.get_ident() == _loop_thread


def run_on_loop(func: Any, *args: Any, **kwargs: Any) -> Any:
    """`func(*args, **kwargs)` as a request on serve's event loop: `must_not_wait()` is true
    on this thread meanwhile."""
    import _thread

    global _loop_thread
    _loop_thread = _thread.get_ident()
    try:
        return func(*args, **kwargs)
    finally:
        _loop_thread = None


class Misuse(AppAuthError):
    """The program was called wrongly (no fd 3, malformed request)."""

    exit_code = MISUSE


class Mode(Choice):
    VERIFY = "verify"  # a plaintext password to check
    LOOKUP = "lookup"  # userdb / passdb lookup: AUTHORIZED=1, no password
    CREDENTIALS_LOOKUP = "credentials-lookup"  # Dovecot wants the hash: refused


class Credentials(Value):
    """The fd-3 request. `password` is None when it was not valid UTF-8."""

    __slots__ = ("password", "password_given", "username")
    _repr_hidden = ("password",)

    def __init__(self, username: str, password: str | None, password_given: bool):
        self.username = username
        self.password = password
        self.password_given = password_given


def parse_request(data: bytes) -> Credentials:
    """Parse `user NUL password NUL timestamp NUL` (at most 512 bytes).

    Framing errors are `Misuse`: only Dovecot or an admin at a shell writes fd 3. A
    password that is not UTF-8 cannot equal any stored password; it is kept as None
    so that the caller still spends the hash work and answers "wrong password".
    """
    if len(data) > MAX_REQUEST_LEN:
        raise Misuse(f"request on fd 3 is {len(data)} bytes, more than {MAX_REQUEST_LEN}")
    parts = data.split(b"\0")
    # Three NUL-terminated fields leave one empty element after the last NUL.
    if len(parts) < 4 or parts[-1] != b"":
        raise Misuse(
            "request on fd 3 must be user NUL password NUL timestamp NUL "
            f"({len(parts) - 1} NUL bytes found, 3 expected)"
        )
    if len(parts) > 4:
        raise Misuse(f"request on fd 3 has {len(parts) - 1} NUL-terminated fields, 3 expected")
    raw_user, raw_password = parts[0], parts[1]
    if not raw_user:
        raise Misuse("request on fd 3 has an empty username")
    try:
        username = raw_user.decode("utf-8")
    except UnicodeDecodeError:
        raise Misuse("username on fd 3 is not valid UTF-8") from None
    if has_control_character(username):
        raise Misuse("username on fd 3 contains a control character")
    try:
        password: str | None = raw_password.decode("utf-8")
    except UnicodeDecodeError:
        password = None
    return Credentials(username=username, password=password, password_given=bool(raw_password))


def encode_request(username: str, password: str) -> bytes:
    """The inverse of `parse_request`, as Dovecot writes it (timestamp always empty)."""
    return username.encode() + b"\0" + password.encode() + b"\0\0"


# Variables Dovecot sets itself; the rest of the environment are extra fields from
# earlier passdbs (upper-cased by Dovecot) or import_environment items.
_DOVECOT_VARIABLES = frozenset(
    {
        "PROTO", "SERVICE", "TCPREMOTEIP", "REMOTE_IP", "TCPLOCALIP", "LOCAL_IP",
        "TCPREMOTEPORT", "TCPLOCALPORT", "MASTER_USER", "AUTHORIZED",
        "CREDENTIALS_LOOKUP", "SCHEME", "ORIG_UID", "USER", "HOME", "EXTRA", "PATH",
        "LANG", "PWD", "SHLVL", "_", "INSECURE_SETUID", "DOVECOT_APPAUTH_CONFIG",
    }
)


class LoginRequest(Value):
    """One authentication request as Dovecot describes it."""

    __slots__ = (
        "credentials_scheme",
        "local_ip",
        "local_port",
        "master_user",
        "mode",
        "passdb_fields",
        "password",
        "remote_ip",
        "remote_port",
        "service",
        "username",
    )
    _repr_hidden = ("password",)

    def __init__(
        self,
        username: str,
        password: str | None,
        mode: Mode,
        service: str,
        remote_ip: str | None = None,
        local_ip: str | None = None,
        remote_port: int | None = None,
        local_port: int | None = None,
        master_user: str | None = None,
        credentials_scheme: str | None = None,
        passdb_fields: Mapping[str, str] | None = None,
    ):
        self.username = username
        self.password = password
        self.mode = mode
        self.service = service
        self.remote_ip = remote_ip
        self.local_ip = local_ip
        self.remote_port = remote_port
        self.local_port = local_port
        self.master_user = master_user
        self.credentials_scheme = credentials_scheme
        self.passdb_fields = {} if passdb_fields is None else passdb_fields


def _port(value: str | None) -> int | None:
    # isascii too: "¹" is a digit to str.isdigit, not to int()
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    port = int(value)
    return port if 0 < port < 65536 else None


def read_environment(credentials: Credentials, env: Mapping[str, str]) -> LoginRequest:
    """Combine the fd-3 credentials with Dovecot's environment variables."""
    if env.get("AUTHORIZED") == "1":
        # `doveadm auth lookup` and passdb lookups arrive as credentials lookups with an
        # empty SCHEME: they want the fields, not a hash, so they are plain lookups.
        wants_hash = env.get("CREDENTIALS_LOOKUP") == "1" and bool(env.get("SCHEME"))
        mode = Mode.CREDENTIALS_LOOKUP if wants_hash else Mode.LOOKUP
    else:
        mode = Mode.VERIFY
    fields = {
        key.lower(): value
        for key, value in env.items()
        if key not in _DOVECOT_VARIABLES and not key.startswith(("AUTH_", "DOVECOT_", "LC_"))
    }
    return LoginRequest(
        username=credentials.username,
        password=credentials.password if mode is Mode.VERIFY else None,
        mode=mode,
        # lower case, as serve does: `IMAP` and `imap` are one service in policies, log and events
        service=(env.get("SERVICE") or "").lower(),
        remote_ip=env.get("TCPREMOTEIP") or env.get("REMOTE_IP") or None,
        local_ip=env.get("TCPLOCALIP") or env.get("LOCAL_IP") or None,
        remote_port=_port(env.get("TCPREMOTEPORT")),
        local_port=_port(env.get("TCPLOCALPORT")),
        master_user=env.get("MASTER_USER") or None,
        credentials_scheme=env.get("SCHEME") or None,
        passdb_fields=fields,
    )


# Dovecot's tab-escaping (lib/strescape.c str_tabescape): 0x01 first, so that the
# escape byte itself is never ambiguous.
_TAB_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\n": "\x01n", "\r": "\x01r", "\0": "\x010"}
_TAB_UNESCAPES = {v[1]: k for k, v in _TAB_ESCAPES.items()}


def tab_escape(value: str) -> str:
    if not any(ch in value for ch in _TAB_ESCAPES):
        return value
    return "".join(_TAB_ESCAPES.get(ch, ch) for ch in value)


def tab_unescape(value: str) -> str:
    out: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\x01":
            nxt = next(chars, "")
            if nxt not in _TAB_UNESCAPES:
                raise ValueError(f"bad escape \\x01{nxt!r} in reply field")
            out.append(_TAB_UNESCAPES[nxt])
        else:
            out.append(ch)
    return "".join(out)


def utf8_ok(text: str) -> bool:
    """Whether `text` can be written as UTF-8 (no lone surrogate, as JSON's \\udc80 makes one)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def has_control_character(text: str) -> bool:
    """A C0 control character or DEL in `text`."""
    return any(ord(ch) < 0x20 or ch == "\x7f" for ch in text)


def username_ok(name: str) -> bool:
    """A user name as `parse_request` takes one from fd 3: not empty, UTF-8, no control character."""
    return bool(name) and not has_control_character(name) and utf8_ok(name)


def field_name_ok(name: str) -> bool:
    """A Dovecot extra-field name that survives both ways of answering (reply.py): written
    to fd 4 (`encode_reply` refuses an empty one or one with "="), and given to the reply
    helper as an environment variable listed, space-separated, in EXTRA."""
    return (bool(name) and not has_control_character(name) and not any(ch.isspace() or ch == "=" for ch in name)
            and utf8_ok(name))


def encode_reply(fields: list[tuple[str, str | None]]) -> bytes:
    """Encode extra fields for fd 4: `key=value` (or a bare `key`), each ending in TAB.

    Keys and values are escaped, so the result never holds a raw LF or NUL (which
    would make Dovecot fail the whole request).
    """
    out = []
    for key, value in fields:
        if not key or "=" in key:
            raise ValueError(f"invalid reply field name {key!r}")
        item = tab_escape(key) if value is None else f"{tab_escape(key)}={tab_escape(value)}"
        out.append(item + "\t")
    return "".join(out).encode("utf-8")


def decode_reply(data: bytes) -> list[tuple[str, str | None]]:
    """Parse an fd-4 reply (used by `login-test` and the tests)."""
    fields: list[tuple[str, str | None]] = []
    for item in data.decode("utf-8").split("\t"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        fields.append((tab_unescape(key), tab_unescape(value) if sep else None))
    return fields
