"""The optional fast path: one login handed to a running `dovecot-appauth serve`.

With `[fast_path] socket` set, the per-login program sends the request it read from fd 3
and the environment to `serve --unix-socket` (POST /verify) and answers Dovecot with what
serve decided: the same engine (`login.decide`, with serve's warm config, lists, MaxMind
readers, database connection and enrichment cache) does the password check, the policy,
the audit and the rows.

`login_via_serve` is that whole login, run by `entry.checkpassword` when the config cache
has the fast path's record (`record`, written by `config.load_cached`, read by entry.py
with config_cache.read_current). It needs neither `os`, nor config.py, nor login.py, nor
SQLite, the hash or the audit, so a login costs little more than the interpreter's start
(docs/PERFORMANCE.md); a config without `[fast_path]` does not import this module at all.
Whatever it does not handle goes to `login.main` unchanged: an option other than
`--config`, a config whose cache is not current, a lookup, and every request serve did
not take.

Two outcomes of asking:
- an answer that says what serve decided (`ok`, `fail`, `tempfail`): that is the
  login's answer;
- `Unanswered`: serve did not take the request (nothing listens, a busy or a refused
  request, serve runs another config): the caller checks the login in-process, exactly
  as without a fast path, and says why. Only where serve never saw the request, so a
  failure is never counted twice.
A request sent but not answered within the timeout, or answered with something that is
not an answer, may have been decided already: `TempFail` (111), never a guess.

`request_body`, `encode_request` and `parse_answer` are pure (values in, bytes out, and
back); `ask` does the I/O. Only the standard library's C modules are loaded (`posix`,
`_socket`, and `_json` through cjson.py): no `os`, no `socket` (its `enum`), no `json`
(its `re`), no `http.client`.
"""

from __future__ import annotations

import posix

from .core import ExitCode, TempFail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import Config
    from .core import LoginRequest

CONNECT_TIMEOUT = 1.0  # seconds: a listening serve accepts at once; past this it is stuck
MAX_ANSWER = 64 * 1024  # bytes: serve's answers are a few hundred


class Unanswered(Exception):
    """serve did not take the request: check the login in-process (the message says why)."""


class _Untrusted(Exception):
    """The process on the socket may not be given a password (`untrusted_peer` says why)."""


class Answer:
    """What serve decided: `result` ok | fail | tempfail, the user and the userdb fields
    of a success, and whether a tempfail was the limiter's (the program then keeps its
    `[throttle] delay`, as in-process)."""

    __slots__ = ("fields", "result", "throttled", "user")

    def __init__(self, result: str, user: str | None = None, fields: list[tuple[str, str | None]] | None = None,
                 throttled: bool = False):
        self.result = result
        self.user = user
        self.fields = fields or []
        self.throttled = throttled


def record(config: Config) -> tuple[str, str | None, float, float, str] | None:
    """What `login_via_serve` needs of a config, kept in the config cache by
    `config.load_cached`: the socket, the token file (absolute paths), the timeout, the
    `[throttle] delay`, and the config's real path (serve's check that it runs this
    config). None without `[fast_path] socket`."""
    import os

    settings = config.fast_path
    if not settings.socket or not config.path:
        return None
    token_file = os.path.abspath(config.resolve(settings.token_file)) if settings.token_file else None
    return (os.path.abspath(config.resolve(settings.socket)), token_file, float(settings.timeout),
            float(config.throttle.delay), os.path.realpath(config.path))


def request_body(request: LoginRequest, config_real: str) -> dict[str, Any]:
    """The JSON object of POST /verify for `request`; `config_real`: the real path of the
    config file (serve answers 409 unless it runs the same file)."""
    return {"user": request.username, "password": request.password or "", "service": request.service,
            "remote_ip": request.remote_ip, "local_ip": request.local_ip, "remote_port": request.remote_port,
            "local_port": request.local_port, "config": config_real}


def encode_request(body: dict[str, Any], token: str | None = None) -> bytes:
    """The HTTP/1.1 POST /verify of `body` (`request_body`), one request per connection."""
    from .cjson import dumps

    data = dumps(body).encode("ascii")  # ASCII: every other character is escaped
    head = ("POST /verify HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n")
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    return head.encode("latin-1") + b"\r\n" + data


def parse_answer(data: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON object) of serve's whole answer; ValueError when it is not one."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("incomplete HTTP answer")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_text = rest[:3]
    if not version.startswith("HTTP/1.") or not (status_text.isascii() and status_text.isdigit()):
        raise ValueError("not an HTTP answer")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            text = value.strip()
            length = int(text) if text.isascii() and text.isdigit() else -1
        elif name.strip().lower() == "transfer-encoding":
            raise ValueError("chunked answer")  # serve's JSON answers carry a Content-Length
    if length is None or length < 0 or len(body) < length:
        raise ValueError("answer without its whole body")
    from .cjson import loads_finite

    try:
        value = loads_finite(body[:length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"answer is not JSON ({e})") from None
    if type(value) is not dict:
        raise ValueError("answer is not a JSON object")
    return int(status_text), value


def answer_of(status: int, body: dict) -> Answer:
    """serve's decision from a parsed answer. Raises Unanswered when serve did not take the
    request (the login is checked in-process) and TempFail when the answer is not one."""
    reason = body.get("reason")
    reason = f": {reason}" if isinstance(reason, str) and reason else ""
    if status in (401, 403):
        raise Unanswered(f"refused the request (HTTP {status}): [fast_path] token_file must be the "
                         "--token-file of that serve")
    if status == 409:
        raise Unanswered(f"runs another configuration{reason}")
    if status == 503:
        raise Unanswered(f"is busy (HTTP 503{reason})")
    if status == 413 or 400 <= status < 500:
        raise Unanswered(f"refused the request (HTTP {status}{reason})")
    result = body.get("result")
    if status != 200 or result not in ("ok", "fail", "tempfail"):
        raise TempFail(f"answered HTTP {status} {str(result)[:40]!r}: temporary failure")
    if result != "ok":
        return Answer(result, throttled=body.get("throttled") is True)
    user, fields = body.get("user"), body.get("fields")
    if type(user) is not str or not user or type(fields) is not dict:
        raise TempFail("answered ok without a user or fields: temporary failure")
    # what the in-process login would never answer: a user fd 3 could not have named, a
    # field name config.py refuses in [userdb.extra] (core.py); refused before anything is
    # written to Dovecot. The messages name the problem, never a value.
    from .core import field_name_ok, username_ok, utf8_ok

    if not username_ok(user):
        raise TempFail("answered ok for a user name with a control character or that is not UTF-8: "
                       "temporary failure")
    pairs: list[tuple[str, str | None]] = []
    for number, (name, value) in enumerate(fields.items(), 1):
        if not field_name_ok(name):
            raise TempFail(f"answered field #{number} with a name Dovecot's reply cannot carry (empty, or "
                           "white space, '=', a control character, not UTF-8): temporary failure")
        if value is not None and type(value) is not str:
            raise TempFail(f"answered field {name[:40]!r} that is not a string: temporary failure")
        if value is not None and not utf8_ok(value):
            raise TempFail(f"answered field {name[:40]!r} that is not UTF-8: temporary failure")
        pairs.append((name, value))
    return Answer("ok", user, pairs)


def read_token(path: str) -> str:
    """The serve token from `path` (stripped); TempFail when it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            token = f.read(4096).strip().decode("ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise TempFail(f"[fast_path] token_file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token or any(c in token for c in "\r\n"):
        raise TempFail(f"[fast_path] token_file {path}: empty or not one line")
    return token


def peer_uid(sock: object) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED:
    the kernel's word, which that process cannot fake)."""
    import sys
    from _socket import SO_PEERCRED, SOL_SOCKET

    data = sock.getsockopt(SOL_SOCKET, SO_PEERCRED, 12)  # type: ignore[attr-defined]  # pid, uid, gid
    return int.from_bytes(data[4:8], sys.byteorder)


def untrusted_peer(sock: object, socket_path: str) -> str | None:
    """Why the process that accepted on `socket_path` may not be given a password, or None.

    It must run as root or as this program's user (Dovecot runs both as `dovecot`; a
    login tried by hand as root may ask a serve of any user), and the socket's directory
    must belong to root or to it and be writable by nobody else: otherwise another local
    user could have put a socket of their own there first (in /tmp, say) and collected
    the passwords."""
    from .paths import dirname

    directory = dirname(socket_path) or "."
    try:
        uid = peer_uid(sock)
        st = posix.stat(directory)
    except OSError as e:
        return f"cannot tell who listens there ({e.strerror or type(e).__name__})"
    euid = posix.geteuid()
    if uid not in (0, euid) and euid != 0:
        return f"it runs as uid {uid}, neither root nor this program's uid {euid}"
    if st.st_uid not in (0, uid):
        return f"its directory {directory} belongs to uid {st.st_uid}, not to root or to serve's uid {uid}"
    if st.st_mode & 0o022:
        return f"its directory {directory} is writable by others (mode {st.st_mode & 0o7777:04o})"
    return None


def _connect(socket_path: str, timeout: float) -> Any:
    """A connected socket to the process on `socket_path`, once `untrusted_peer` found no
    reason not to talk to it. OSError when it cannot be reached; _Untrusted."""
    from _socket import AF_UNIX, SOCK_STREAM, socket

    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        distrust = untrusted_peer(sock, socket_path)
        if distrust:  # before a byte is sent
            raise _Untrusted(distrust)
    except BaseException:
        sock.close()
        raise
    return sock


def _receive(sock: Any, deadline: float) -> bytes:
    """Everything until the other end closes, by `deadline` (monotonic): TimeoutError when
    late, ValueError past MAX_ANSWER bytes, OSError when the connection breaks."""
    import time

    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(16384)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER:
            raise ValueError(f"more than {MAX_ANSWER} bytes")


def exchange(socket_path: str, data: bytes, timeout: float) -> tuple[int, dict]:
    """One request and its parsed answer (for `check-config`); OSError or ValueError, and
    _Untrusted when the peer is not trusted (`untrusted_peer`)."""
    import time

    sock = _connect(socket_path, timeout)
    try:
        sock.sendall(data)
        answer = _receive(sock, time.monotonic() + timeout)
    finally:
        sock.close()
    return parse_answer(answer)


def check(socket_path: str, config_file: str, token: str | None = None, timeout: float = 3.0) -> str | None:
    """What keeps serve at `socket_path` from taking this config's logins, or None: for
    `check-config`, run as the user the logins run as."""
    head = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    try:
        status, body = exchange(socket_path, (head + "\r\n").encode("latin-1"), timeout)
    except _Untrusted as e:
        return f"is not trusted: {e}: logins would be checked in-process"
    except OSError as e:
        return f"cannot be reached ({e.strerror or type(e).__name__}): every login is checked in-process and says so"
    except ValueError as e:
        return f"is not a dovecot-appauth serve ({e})"
    if status != 200 or body.get("ok") is not True:
        return f"answered HTTP {status} to /health"
    served = body.get("config")
    if served is None:
        return ("does not say which config it runs (a TCP serve, or one that wants a token: set [fast_path] "
                "token_file): logins would be checked in-process")
    import os

    if served != os.path.realpath(config_file):
        return f"runs {served}, not this config: every login is checked in-process and says so"
    return None


def ask(socket_path: str, data: bytes, *, timeout: float) -> Answer:
    """Send `data` (`encode_request`) to serve at `socket_path` and return its decision.

    Unanswered: nothing listens there (or it refused the request unseen): check in-process.
    TempFail: the request went out and no answer came back within `timeout` seconds.
    """
    import time

    try:
        sock = _connect(socket_path, CONNECT_TIMEOUT)
    except _Untrusted as e:
        raise Unanswered(f"is not trusted: {e}") from None
    except OSError as e:  # ENOENT, ECONNREFUSED, EACCES, a full backlog's time-out
        raise Unanswered(f"cannot be reached ({e.strerror or type(e).__name__})") from None
    try:
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            sock.sendall(data)
        except OSError as e:  # serve closed the connection before it had the whole request
            raise Unanswered(f"did not take the request ({e.strerror or type(e).__name__})") from None
        try:
            answer = _receive(sock, deadline)
        except TimeoutError:
            raise TempFail(f"did not answer within {timeout:g} s ([fast_path] timeout): temporary failure") from None
        except OSError as e:  # after the whole request went out: serve may have decided it
            raise TempFail(f"connection lost ({e.strerror or type(e).__name__}): temporary failure") from None
        except ValueError:
            raise TempFail(f"answered more than {MAX_ANSWER} bytes: temporary failure") from None
    finally:
        sock.close()
    try:
        status, body = parse_answer(answer)
    except ValueError as e:
        raise TempFail(f"answered something that is not an answer ({e}): temporary failure") from None
    return answer_of(status, body)


def unanswered_line(where: str, reason: Unanswered, username: str) -> str:
    """The line a login says when serve did not take it (then it is checked in-process)."""
    return f"fast path: serve at {where} {reason}: checking the login of {username} in-process"


def refusal(answer: Answer, where: str, username: str, delay: float) -> tuple[int, str | None]:
    """The exit status and the line of serve's `fail` or `tempfail`. A throttled client
    waits `delay` ([throttle] delay) first, as in-process: it slows a guessing client, and
    serve itself never holds a request."""
    if answer.result == "fail":
        return int(ExitCode.FAIL), None  # serve logged why (its journal), as for any login it decides
    if answer.throttled and delay > 0:
        import time

        time.sleep(delay)
    return int(ExitCode.TEMPFAIL), (f"user {username}: temporary failure decided by serve at {where}"
                                    f"{' (throttled)' if answer.throttled else ''}: its log says why")


class Handover:
    """A login `login_via_serve` leaves to `login.main`: the request it read from fd 3, and
    the line to say when serve did not take it (None: main runs as without the fast path
    having looked, asking serve itself where it would)."""

    __slots__ = ("data", "said")

    def __init__(self, data: bytes, said: str | None = None):
        self.data = data
        self.said = said


def login_via_serve(record: Any, helper_argv: list[str], env: dict[str, str]) -> int | Handover | None:
    """One login of the per-login program decided by serve, without `os`, config.py or
    login.py (see the module's docstring). `record`: the config cache's `record` of the
    config (config_cache.read_current, by entry.checkpassword), `helper_argv` and `env`
    the reply helper's command line and the environment. Returns the exit status when
    serve decided the login; a Handover when fd 3 was read but the login is login.main's;
    None when nothing was read. Never raises."""
    if type(record) is not tuple or len(record) != 5:
        return None
    from .core import Misuse, Mode, parse_request, read_environment, say
    from .reply import hold_fd4, read_fd3, send

    where, token_file, timeout, delay, config_real = record
    try:
        hold_fd4()
    except Exception:  # nothing read yet: login.main does it again and says what is wrong
        return None
    try:
        data = read_fd3("")
    except Misuse:
        return None  # fd 3 is not open: login.main says how to run the program
    except TempFail as e:  # as login.main would: part of the request may have been read
        say(None, str(e))
        return int(ExitCode.TEMPFAIL)
    try:
        request = read_environment(parse_request(data), env)
        if request.mode is not Mode.VERIFY or request.password is None:
            return Handover(data)
        token = read_token(token_file) if token_file else None
        sent = encode_request(request_body(request, config_real), token)
    except Exception:  # a misuse, a token that cannot be read: login.main says so
        return Handover(data)
    try:
        answer = ask(where, sent, timeout=timeout)
    except Unanswered as e:
        return Handover(data, unanswered_line(where, e, request.username))
    except TempFail as e:
        say(None, f"fast path: serve at {where} {e}")
        return int(ExitCode.TEMPFAIL)
    except Exception as e:  # the request may have been decided: never a guess
        say(None, f"fast path: serve at {where}: internal error ({type(e).__name__}): temporary failure")
        return int(ExitCode.TEMPFAIL)
    if answer.result != "ok":
        status, line = refusal(answer, where, request.username, delay)
        if line:
            say(None, line)
        return status
    try:
        problem = send(answer.user, answer.fields, helper_argv, env)
    except TempFail as e:
        say(None, str(e))
        return int(ExitCode.TEMPFAIL)
    except Exception as e:  # serve decided, the reply could not be made: never a guess, never a traceback
        say(None, f"fast path: user {request.username}: serve at {where} answered ok, but the reply to Dovecot "
                  f"cannot be written ({type(e).__name__}): temporary failure")
        return int(ExitCode.TEMPFAIL)
    if problem:
        say(None, problem)
    return int(ExitCode.OK)
