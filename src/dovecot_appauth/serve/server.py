"""`dovecot-appauth serve`: the login engine as a long-running HTTP service (ASGI on uvicorn).

Two faces of the same engine (login.decide, pipeline.assess/audit_login):

- `POST /policy?command=allow|report`: Dovecot's auth policy protocol
  (`auth_policy_server_url`). The request is JSON built from
  `auth_policy_request_attributes` (`login`, `remote`, `protocol`, ...; a report adds
  `success`, `policy_reject`, `tls`); the reply is `{"status": N, "msg": "..."}`: 0 go on,
  -1 refuse, N > 0 delay N seconds. `allow` judges the client address with the deny/allow
  lists (no audit line, no event); `report` of a successful login writes the audit line and
  the audit event, as the checkpassword program does after a right password.
- `POST /verify`: `{"user", "password", "service", "remote_ip"}` -> `{"result": "ok" | "fail"
  | "tempfail", "user", "fields"}`: the app-password check with policy, audit and recording
  (examples/dovecot/appauth.lua calls it from a Lua passdb, for Dovecot 2.4). The
  per-login program's fast path (fast_path.py) adds `local_ip`, the ports and `config`,
  its config file: a serve running another one answers 409. A limiter's answer carries
  `"throttled": true`.

Kept warm between requests: the interpreter and imports, the parsed config (reloaded
when the file changes), the parsed lists with their compiled matchers (`lists.keep_warm`:
read again when a file's stat changes), the database connections (`pool.py`), one
enrichment cache connection per thread (`enrich.keep_cache_open`) and the MaxMind
readers (`sources/maxmind.py`, reopened when a .mmdb file changes). Each file is stat'ed
at most once per `file_check_interval` (default 1 s, filestat.py), not per request. The engine is
synchronous (SQL, DNS). A request is first tried on the event loop itself (`on_loop` in
build_app, core.run_on_loop): a warm one needs nothing that can wait and is answered
there, without the hop to a thread and back. At the first thing that can wait (a lookup
the enrichment cache lacks, a lock held elsewhere, a slow hash: core.WouldWait, raised
before anything of it shows) it runs again on one of THREADS threads, at most
`max_requests` at once per process; one more is answered 503 at once. `GET /metrics`:
Prometheus text (metrics.py). The two endpoints Dovecot calls per login are plain ASGI
code (`build_app`'s `app`, `Call`); the others are a Starlette app.

Processes: `serve` listens, then forks `workers` processes that share the listening
socket (Supervisor), each with its own engine (pool, caches), so hashing and the audit
use every core; SIGTERM lets each finish the requests in flight. Each worker's HTTP
connections (serve/http.py): a request must arrive whole within REQUEST_TIMEOUT, its
head within MAX_HEAD bytes, and a worker keeps a bounded number of connections open.

Trust: with a token (the default on TCP), a caller that shows it is Dovecot and may name
the client's address and report logins; without one, it may not (see build_app).
Not on the per-login path: nothing imports this module but the `serve` command.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import time
from typing import Any

from .. import filestat
from ..config import Config, ConfigError, load
from ..core import LoginRequest, Mode, TempFail, WouldWait, must_not_wait, run_on_loop, utf8_ok
from ..filestat import DEFAULT_INTERVAL as DEFAULT_FILE_CHECK_INTERVAL
from .pool import StorePool

MAX_BODY = 64 * 1024
# Threads per worker process that run the engine; requests in work beyond these wait for
# one (in arrival order). Not hundreds: then the GIL's switching and a store opened per
# thread made a flood of cheap requests slow every other one. With DEFAULT_MAX_REQUESTS,
# a request waits for at most one round of THREADS requests: with every one of them held
# by a dead resolver for the audit deadline (1.5 s by default), 3 s in all, inside the
# Lua script's 5 s.
THREADS = 32
DEFAULT_MAX_REQUESTS = 64
GRACEFUL_SECONDS = 15.0  # SIGTERM: requests in flight get this long (each has its own deadlines)
THROTTLED = ": throttled, "  # in login.py's message for a client over a limit
# A (user, client) the limiter refused is answered the same for this long without a
# thread or a query: a flood of its requests then costs little more than their HTTP.
# Failure counts only grow within the window, so the verdict holds; `throttle reset`
# takes effect at most this late.
THROTTLE_MEMO_SECONDS = 2.0
THROTTLE_MEMO_MAX = 100_000  # entries; past it the expired ones are dropped, then all


class Engine:
    """The config, reloaded when its file changes, and the database pool; each request
    gets the current config and a pooled store. `metrics` (metrics.Metrics, set by
    build_app) counts what the requests found."""

    def __init__(self, path: str, stderr: Any = None, file_check_interval: float = DEFAULT_FILE_CHECK_INTERVAL):
        from ..audit.enrich import keep_cache_open
        from ..audit.lists import keep_warm

        self.path = path
        self.real_path = os.path.realpath(path)
        self.stderr = stderr or sys.stderr
        self.pool = StorePool(max_idle=THREADS)  # one per thread: never a store opened per request
        # the event loop's own store (run_on_loop): SQLite with a busy timeout of 0
        self.loop_pool = StorePool(max_idle=1, on_loop=True)
        self.threads_only = False  # serve --threads-only: no request runs on the event loop
        self._on_loop: tuple[Config | None, bool] = (None, False)  # config -> may_run_on_loop
        self.metrics: Any = None
        self._key: tuple[int, ...] | None = None
        self._config: Config | None = None
        # the line said with every request while a changed config file cannot be loaded and
        # the previous config answers (None when the file in force is the one loaded)
        self.reload_failed: str | None = None
        self._lists: dict[str, tuple[int, ...] | None] = {}  # list file -> lists.stat_signature
        self._watched: tuple[Config | None, list[tuple[str, str]]] = (None, [])  # config, its (kind, list file)
        # (filestat generation, until when): the list files' stats are reused till then, so
        # looking at them again would find nothing new (_watch_lists)
        self._watched_until: tuple[int, float] = (-1, 0.0)
        self._throttled: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}  # THROTTLE_MEMO_SECONDS
        keep_warm()  # lists parsed and compiled once per file version, not per request
        keep_cache_open()  # the enrichment cache's connection, per thread
        # every change check (config, lists, caches, database file): a stat per file and
        # interval, not per request (filestat.py says why)
        filestat.set_interval(file_check_interval)

    def same_config(self, named: Any) -> bool:
        """True unless the caller named a config file (the fast path does) other than this
        one; False for anything that is not a usable path (not a string, a NUL in it)."""
        if named is None:
            return True
        if not isinstance(named, str) or "\0" in named:
            return False
        if named == self.real_path:
            return True
        try:
            return os.path.realpath(named) == self.real_path
        except (OSError, ValueError):  # e.g. a name the file system cannot take
            return False

    @staticmethod
    def client_key(body: dict[str, Any]) -> tuple[str, str] | None:
        """(user, client) of a /verify body, as the throttled answers are kept: None without
        a user or a client address."""
        user, ip = body.get("user"), _ip(body.get("remote_ip"))
        if not isinstance(user, str) or ip is None:
            return None
        return user.lower(), ip

    def throttled_answer(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The answer given to this (user, client) a moment ago if the limiter refused it then
        (called on the event loop: no I/O)."""
        key = self.client_key(body)
        if key is None:
            return None
        memo = self._throttled.get(key)
        if memo is None or memo[0] < time.monotonic():
            return None
        if self.metrics is not None:
            service = _label(_text(body.get("service"), "imap").lower())
            self.metrics.child(self.metrics.throttled, service).inc()
            self._count_login("verify", memo[1]["result"], service)
        return memo[1]

    def _remember_throttled(self, request: LoginRequest, answer: dict[str, Any]) -> dict[str, Any]:
        if request.remote_ip:
            now = time.monotonic()
            if len(self._throttled) >= THROTTLE_MEMO_MAX:
                # list(): a copy taken at once (under the GIL), so threads adding entries
                # meanwhile cannot change the dict while it is walked
                self._throttled = {k: v for k, v in list(self._throttled.items()) if v[0] >= now}
                if len(self._throttled) >= THROTTLE_MEMO_MAX:
                    self._throttled = {}
            self._throttled[(request.username.lower(), request.remote_ip)] = (now + THROTTLE_MEMO_SECONDS, answer)
        return answer

    def config(self) -> Config:
        """The config, loaded again when its file's stat changed: size, mtime, ctime or
        inode (a file renamed into place with the same size and mtime, or rewritten and
        given its old mtime back, is still seen). A change that cannot be loaded keeps the
        previous config, and `reload_failed` says so (with every request: the requests
        write it to their log); without a previous one (a worker started after the file
        broke) every request is a temporary failure that says why (TempFail)."""
        try:
            st = filestat.stat(self.path)
        except OSError as e:
            if self._config is None:
                raise TempFail(f"configuration {self.path}: {e.strerror or e}") from None
            self.reload_failed = (f"configuration {self.path} cannot be read (keeping the previous one): "
                                  f"{e.strerror or e}")
            self._key = None  # loaded again once it can be read
            return self._config
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key != self._key or self._config is None:
            first = self._config is None
            try:
                self._config = load(self.path)
            except ConfigError as e:
                if self._config is None:
                    raise TempFail(f"configuration {self.path}: {e}") from None
                self.reload_failed = f"configuration {self.path} not reloaded (keeping the previous one): {e}"
                self._count_reload("failed")
            else:
                self.reload_failed = None
                if not first:
                    self._count_reload("ok")
            self._key = key
        if self.metrics is not None:
            self._watch_lists(self._config)
        return self._config

    def _count_reload(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.config_reloads.labels(result).inc()

    def _watch_lists(self, config: Config) -> None:
        """Count the list files that changed since they were last looked at (the list reloads
        of the metrics): one stat per configured list file and file check interval, shared
        with the lists' own (filestat), judged by the lists' own signature, so what is
        counted is what they read again (a chmod or a file renamed into place too)."""
        if not config.audit.enabled:
            return
        if self._watched[0] is not config:  # resolved once per config, not per request
            audit = config.audit
            self._watched = (config, [(kind, config.resolve(path)) for kind, path in
                                      [*audit.lists.items(), *(("allow-" + k, p) for k, p in audit.allow.items())]])
            self._watched_until = (-1, 0.0)
        elif filestat.stands(*self._watched_until):
            return
        from ..audit.lists import stat_signature  # the lists' own: a change they read again

        generation, until = filestat.generation(), float("inf")
        for kind, full in self._watched[1]:
            st, stands_until = filestat.stat_until(full)
            until = min(until, stands_until)
            signature = stat_signature(st) if st is not None else None
            if full in self._lists and self._lists[full] != signature:
                self.metrics.list_reloads.labels(kind).inc()
            self._lists[full] = signature
        self._watched_until = (generation, until)

    def may_run_on_loop(self, config: Config) -> bool:
        """Can a request under `config` be tried on the event loop (run_on_loop)? Not with
        what always waits on the network or a process: MariaDB, Nextcloud, the account
        gate, an alert's notify command."""
        if self._on_loop[0] is not config:
            from ..dsn import DsnError, parse_dsn

            try:
                sqlite = parse_dsn(config.database.dsn).dialect == "sqlite"
            except DsnError:
                sqlite = False
            allowed = (sqlite and not self.threads_only and config.auth.backend == "sql"
                       and not config.account.backend and not config.alerts.notify_command)
            self._on_loop = (config, allowed)
        return self._on_loop[1]

    def loop_allowed(self) -> bool:
        """may_run_on_loop for the config last loaded (loaded now if none was): a request
        on the loop loads the config itself and raises WouldWait if it changed so."""
        return self.may_run_on_loop(self._config or self.config())

    def say(self, message: str) -> None:
        try:
            self.stderr.write(f"dovecot-appauth serve: {' '.join(message.split())}\n")
            self.stderr.flush()
        except (OSError, ValueError):
            pass

    def _count_login(self, endpoint: str, result: str, service: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.logins, endpoint, result, service).inc()

    # --- the two faces ---------------------------------------------------------------

    def verify(self, body: dict[str, Any]) -> dict[str, Any]:
        """/verify. A throttled client is answered at once (`hold_throttled=False`): the
        per-login program's `[throttle] delay` would hold a thread here and, through the
        Lua passdb (blocking=yes), one of Dovecot's auth workers; Dovecot's own failure
        delay slows that client instead. Under run_on_loop it may raise WouldWait (run it
        again on a thread)."""
        from ..core import ExitCode
        from ..login import decide

        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            return {"result": "fail", "reason": "user and password must be strings"}
        service = _text(body.get("service"), "imap").lower()
        if not utf8_ok(user):
            self._count_login("verify", "fail", _label(service))
            return {"result": "fail"}  # no user has such a name
        if not utf8_ok(password):
            password = None  # as from fd 3: not UTF-8, so it matches nothing (after the same hash work)
        try:
            remote_ip = _client_ip(body.get("remote_ip"))
        except BadAddress as e:
            # as login.py refuses a TCPREMOTEIP that is not an address: taken for "no
            # client", it would pass for a local process, which no list or limit judges
            self.say(f"user {user}: refused: {e}")
            self._count_login("verify", "fail", _label(service))
            return {"result": "fail", "reason": "remote_ip is not an IP address"}
        request = LoginRequest(user, password, Mode.VERIFY, service, remote_ip=remote_ip,
                               local_ip=_ip(body.get("local_ip")), remote_port=_port(body.get("remote_port")),
                               local_port=_port(body.get("local_port")))
        config = self.config()
        log = io.StringIO()  # said when the request is answered (not when it is run again)
        if self.reload_failed is not None:
            log.write(self.reload_failed + "\n")
        pool = self._pool_for(config)
        try:
            with pool.store(config.database.dsn, config.database.connect_timeout) as store:
                outcome = decide(request, config, now=time.time(), stderr=log, store=store, hold_throttled=False)
        except TempFail as e:
            self._relay(log)
            self.say(str(e))
            self._count_login("verify", "tempfail", _label(service))
            if THROTTLED in str(e):
                self._count_throttled(service)
                return self._remember_throttled(request, {"result": "tempfail", "throttled": True})
            return {"result": "tempfail"}
        self._relay(log)
        if outcome.message:
            self.say(outcome.message)
        if outcome.exit_code is ExitCode.OK:
            self._count_login("verify", "ok", _label(service))
            return {"result": "ok", "user": outcome.user, "fields": dict(outcome.fields)}
        self._count_login("verify", "fail", _label(service))
        if outcome.message and THROTTLED in outcome.message:  # [throttle] verdict = "deny"
            self._count_throttled(service)
            return self._remember_throttled(request, {"result": "fail", "throttled": True})
        return {"result": "fail"}

    def _count_throttled(self, service: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.throttled, _label(service)).inc()

    def policy(self, command: str, body: dict[str, Any], trusted: bool = True) -> dict[str, Any]:
        """/policy. `trusted`: the caller proved it is Dovecot (the token); only then is a
        report audited (an untrusted one could feed fake places to the alert history).
        WouldWait under run_on_loop, as for verify."""
        from ..audit.pipeline import assess

        config = self.config()
        log = io.StringIO()  # said when the request is answered (not when it is run again)
        if self.reload_failed is not None:
            log.write(self.reload_failed + "\n")
        pool = self._pool_for(config)
        user = _text(body.get("login"), "")
        service = _text(body.get("protocol"), "imap").lower()
        try:
            ip = _client_ip(body.get("remote"))
        except BadAddress as e:
            # never "no client" (a local process, which no list judges): a check is
            # refused; a report is not audited (the login has happened either way)
            self._relay(log)
            self.say(f"user {user}: {'refused' if command == 'allow' else 'report not audited'}: {e}")
            if command == "allow":
                self._count_check("deny")
                return {"status": -1, "msg": "Authentication failed"}
            return {"status": 0, "msg": ""}
        now = time.time()
        again = False  # WouldWait: the messages are said by the run on a thread
        try:
            if command == "report":
                success = _true(body.get("success")) and not _true(body.get("policy_reject"))
                if success and config.audit.enabled and trusted:
                    self._audit_report(LoginRequest(user, None, Mode.VERIFY, service, remote_ip=ip), config,
                                       now, log, pool)
                self._count_login("policy_report", "ok" if success else "fail", _label(service))
                return {"status": 0, "msg": ""}
            if not config.audit.enabled:
                self._count_check("allow")
                return {"status": 0, "msg": ""}
            result = assess(user=user, service=service, ip=ip, config=config, now=now, stderr=log, with_line=False)
        except WouldWait:
            again = True
            raise
        finally:
            if not again:
                self._relay(log)
        if result.deny:
            self.say(result.denial(user, ip))
            self._count_check("deny")
            return {"status": -1, "msg": "Authentication failed"}
        self._count_check("allow")
        return {"status": 0, "msg": ""}

    def _count_check(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.policy_checks, result).inc()

    def _audit_report(self, request: LoginRequest, config: Config, now: float, log: io.StringIO,
                      pool: StorePool) -> None:
        """The audit line and event of a login another passdb accepted (Dovecot's report)."""
        from ..audit.pipeline import audit_login

        store = None
        if config.audit.record_events:
            try:
                store = pool.acquire(config.database.dsn, config.database.connect_timeout)
            except TempFail as e:  # the audit line is still written
                log.write(f"audit event not recorded: {e}\n")
        healthy = False
        try:
            audit_login(request, config, user=request.username, now=now, pwid=None, stderr=log, store=store)
            healthy = True
        except WouldWait:
            if store is not None:
                store.rollback()  # run again on a thread: nothing of this run is kept
            healthy = True
            raise
        finally:
            if store is not None:
                pool.release(store, healthy)  # finish() commits the audit_events row

    def _pool_for(self, config: Config) -> StorePool:
        """The request's store pool: on the event loop (run_on_loop) the loop's own, whose
        stores never wait, and WouldWait at once when `config` may not run there; on a
        thread the threads' pool."""
        if not must_not_wait():
            return self.pool
        if not self.may_run_on_loop(config):
            raise WouldWait("not with this config")
        return self.loop_pool

    def _relay(self, log: io.StringIO) -> None:
        for line in log.getvalue().splitlines():
            self.say(line.removeprefix("dovecot-appauth: "))

def _label(service: str) -> str:
    """A service name as a metrics label: Dovecot's own names, anything else "other"
    (a caller must not create unbounded label values)."""
    return service if service in _SERVICES else "other"


_SERVICES = frozenset(("imap", "pop3", "smtp", "submission", "lmtp", "managesieve", "sieve", "doveadm", "http"))


def _port(value: Any) -> int | None:
    """A TCP port from a request body (the per-login fast path sends Dovecot's), else None."""
    return value if type(value) is int and 0 < value < 65536 else None


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _ip(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return _normal_ip(value)


@functools.lru_cache(maxsize=4096)
def _normal_ip(text: str) -> str | None:
    """`text` as an IP address in its normal form, else None. Kept for the last 4,096
    addresses: a /verify parses its client's address three times (the throttle memo on the
    event loop, the engine, the request), and Dovecot's clients come back; a caller that
    sends other strings every time costs what it did before, never more memory."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class BadAddress(ValueError):
    """A client address that was given but is not an IP address."""


def _client_ip(value: Any) -> str | None:
    """The client's address from a request: None when none was given (a local process),
    BadAddress when something else than an address was."""
    if value is None or value == "":
        return None
    address = _ip(value)
    if address is None:
        shown = value[:64] if isinstance(value, str) else type(value).__name__
        raise BadAddress(f"client address {shown!r} is not an IP address")
    return address


def _true(value: Any) -> bool:
    return value is True or value in ("1", "yes", "true", 1)


class BodyTooLarge(Exception):
    """The request body is over MAX_BODY (answered 413)."""


# A /verify of a (user, client) already in the engine waits this long at most for that
# answer (a throttled one is then answered from memory) before it goes in itself.
SAME_CLIENT_WAIT = 1.0


class Busy(Exception):
    """max_requests are in work already."""


class Disconnected(Exception):
    """The client went away before its request body was read: nothing to answer."""


class Call:
    """What the hot endpoints (POST /verify, /policy) use of an HTTP request, read from its
    ASGI scope: its Authorization and Content-Length headers (the first of each, as
    Starlette's `Request.headers.get` takes), the query string, the peer address and the
    body as it arrives. No Starlette Request per request: see `build_app`."""

    __slots__ = ("authorization", "content_length", "peer", "query", "receive")

    def __init__(self, scope: dict[str, Any], receive: Any):
        authorization = content_length = None
        for name, value in scope["headers"]:  # the server gives the names in lower case
            if name == b"authorization":
                if authorization is None:
                    authorization = value
            elif name == b"content-length" and content_length is None:
                content_length = value
        self.authorization: str = authorization.decode("latin-1") if authorization is not None else ""
        self.content_length: bytes | None = content_length
        self.query: bytes = scope.get("query_string", b"")
        client = scope.get("client")
        self.peer: str | None = client[0] if client else None
        self.receive = receive

    def param(self, name: str, default: str) -> str:
        """A query parameter (the last one of that name, as Starlette's `query_params.get`)."""
        if not self.query:
            return default
        from urllib.parse import parse_qsl

        found = default
        for key, value in parse_qsl(self.query.decode("latin-1"), keep_blank_values=True):
            if key == name:
                found = value
        return found


async def _read_body(call: Call, limit: int = MAX_BODY) -> bytes:
    """The request body, read as it arrives and abandoned past `limit` bytes (BodyTooLarge):
    a 10 MiB body costs the service no more memory than a 64 KiB one. Disconnected when the
    client leaves before its end."""
    declared = call.content_length
    # bytes.isdigit: ASCII digits only (str.isdigit takes "²", which int() refuses)
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await call.receive()
        if message["type"] != "http.request":  # http.disconnect
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        # surrogateescape: a client's password need not be UTF-8 (Dovecot passes its bytes
        # on); such a password is a wrong one (verify), not a malformed request
        data = json.loads(body.decode("utf-8", "surrogateescape") or "{}")
    except (ValueError, RecursionError):  # RecursionError: nested too deep ("[" * 60000)
        return None
    return data if isinstance(data, dict) else None


# Starlette's JSONResponse.render (json.dumps with these options), its encoder made once:
# dumps builds one per call when given options
_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_JSON_TYPE = (b"content-type", b"application/json")


async def _send_json(send: Any, content: dict[str, Any], status: int = 200) -> None:
    """`content` as Starlette's JSONResponse sends it: the same status, headers and bytes."""
    body = _encode_json(content).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode("latin-1")), _JSON_TYPE]})
    await send({"type": "http.response.body", "body": body})


def build_app(engine: Engine, token: str | None = None, *, callers_trusted: bool | None = None,
              max_requests: int = DEFAULT_MAX_REQUESTS, metrics: Any = None) -> Any:
    """The ASGI app. With `token`, requests need `Authorization: Bearer TOKEN` or Basic
    with TOKEN as password (Dovecot's auth_policy_server_api_header can send either).

    `callers_trusted`: whether a request that got in may name the client (`remote_ip`,
    `remote`) and report logins. Default: only with a token. Without one (serve
    --insecure-no-token) any local process could pick an exempt address to skip the
    limiter and the deny lists, or feed the alert history with fake reports, so the
    client address is the caller's own and reports are not audited. A Unix socket's
    callers are trusted (its file mode is the check).

    `max_requests`: requests in work at once (running on one of THREADS threads or
    waiting for one); one more is answered at once with a temporary failure (503)
    instead of waiting in a queue past Dovecot's timeout.

    The hot endpoints, POST /verify, /policy and /, are answered by plain ASGI code (`Call`,
    `_send_json`), not through Starlette's middleware, routing, Request and Response
    objects, which cost about 0.1 ms of CPU per request, half a policy `allow`'s engine
    work (docs/PERFORMANCE.md). Their answers are the same (status, headers, JSON bytes).
    Everything else (GET /health, /metrics, 404, 405, the redirect of a trailing slash)
    is Starlette's, as before."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ..audit import pipeline
    from .metrics import CONTENT_TYPE, Metrics

    trusted = token is not None if callers_trusted is None else callers_trusted
    metrics = metrics or Metrics()
    engine.metrics = metrics
    # An assessment made on the event loop is counted once its request is answered there:
    # one that goes to a thread after all (WouldWait) is counted by the thread's run
    loop_assessments: list[Any] = []

    def observe(result: Any) -> None:
        if must_not_wait():
            loop_assessments.append(result)
        else:
            metrics.observe_assessment(result)

    pipeline.on_assessment = observe
    in_work = 0
    threads: list[Any] = []  # the engine's threads (an executor), made at the first request
    # (user, client) -> the event set when its request in the engine is answered: a flood
    # of one client's requests waits for that answer without a thread or a place among the
    # max_requests, instead of filling them before the first throttled answer is known
    in_engine: dict[tuple[str, str], Any] = {}
    expected = token.encode() if token is not None else b""

    def authorised(header: str) -> bool:
        """`header`: the request's Authorization header ("" without one)."""
        if token is None:
            return True
        import base64
        import hmac

        given = ""
        if header.startswith("Bearer "):
            given = header[7:]
        elif header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:]).decode().partition(":")[2]
            except ValueError:
                given = ""
        return hmac.compare_digest(given.encode(), expected)

    async def in_thread(endpoint: str, func: Any, *args: Any) -> Any:
        """`func(*args)` on one of the engine's threads; Busy when max_requests are in work.

        A plain ThreadPoolExecutor (its queue in arrival order): anyio's to_thread with a
        CapacityLimiter, which this replaced, cost about 30 µs more CPU per request for
        its cancel scopes and backend look-ups."""
        nonlocal in_work
        if in_work >= max_requests:
            metrics.busy.labels(endpoint).inc()
            raise Busy
        if not threads:
            threads.append(ThreadPoolExecutor(min(max_requests, THREADS), thread_name_prefix="appauth-engine"))
        in_work += 1
        held = False
        future = threads[0].submit(func, *args)
        try:
            return await asyncio.wrap_future(future)
        except TempFail:
            raise
        except asyncio.CancelledError:
            if not future.done():
                # the thread cannot be stopped: its place stays taken until it ends, so the
                # bound holds (to_thread waited for it instead, with the same effect)
                held = True
                loop = asyncio.get_running_loop()

                def release_later(_: Any) -> None:  # on the engine's thread, when it ends
                    try:
                        loop.call_soon_threadsafe(release)
                    except RuntimeError:
                        pass  # the loop is closed: nothing is left to bound

                future.add_done_callback(release_later)
            raise
        except Exception as e:  # a bug: a temporary failure and one line, never a traceback
            raise TempFail(f"internal error in {endpoint}: {type(e).__name__}") from None
        finally:
            if not held:
                in_work -= 1

    def release() -> None:
        nonlocal in_work
        in_work -= 1

    def on_loop(endpoint: str, func: Any, *args: Any) -> Any:
        """`func(*args)` right here, on the event loop (run_on_loop), without the hop to an
        engine thread and back (about half of a request's CPU besides the hash, more under
        concurrent requests: docs/PERFORMANCE.md). None when it needs something that can
        wait (WouldWait, before anything of it showed): then it goes to a thread."""
        if not engine.loop_allowed():
            return None  # MariaDB and the like: always a thread, not counted as sent there
        loop_assessments.clear()
        again = False
        try:
            return run_on_loop(func, *args)
        except WouldWait:
            again = True
            metrics.child(metrics.to_thread, endpoint).inc()
            return None
        except TempFail:
            raise
        except Exception as e:  # a bug: as in_thread, a temporary failure and one line
            raise TempFail(f"internal error in {endpoint}: {type(e).__name__}") from None
        finally:
            found, loop_assessments[:] = list(loop_assessments), []
            if not again:  # else the thread's run counts them
                for result in found:
                    metrics.observe_assessment(result)

    async def policy(call: Call) -> tuple[int, dict[str, Any]]:
        if not authorised(call.authorization):
            return 401, {"status": 0, "msg": "unauthorised"}
        try:
            body = _json(await _read_body(call))
        except BodyTooLarge:
            return 413, {"error": f"request body over {MAX_BODY} bytes"}
        command = call.param("command", "allow")
        if body is None or command not in ("allow", "report"):
            return 400, {"status": 0, "msg": "bad request"}
        if not trusted:
            body = {**body, "remote": call.peer}
        # Dovecot: auth_policy_reject_on_fail decides what an error means
        try:
            answer = on_loop("policy", engine.policy, command, body, trusted)
            if answer is None:
                answer = await in_thread("policy", engine.policy, command, body, trusted)
            return 200, answer
        except Busy:
            return 503, {"status": 0, "msg": "busy"}
        except TempFail as e:
            engine.say(str(e))
            if command == "allow":
                metrics.policy_checks.labels("tempfail").inc()
            return 503, {"status": 0, "msg": "temporary failure"}

    async def verify(call: Call) -> tuple[int, dict[str, Any]]:
        if not authorised(call.authorization):
            return 401, {"result": "tempfail"}
        try:
            body = _json(await _read_body(call))
        except BodyTooLarge:
            return 413, {"error": f"request body over {MAX_BODY} bytes"}
        if body is None:
            return 400, {"result": "fail", "reason": "bad request"}
        if not trusted:
            body = {**body, "remote_ip": call.peer, "local_ip": None}
        elif not engine.same_config(body.get("config")):
            # the per-login fast path names its config: a serve running another one (other
            # lists, another database) must not decide its logins; it checks them itself
            return 409, {"result": "tempfail", "reason": f"serve runs {engine.path}"}
        answer = engine.throttled_answer(body)
        if answer is not None:
            return 200, answer
        key = engine.client_key(body)
        pending = in_engine.get(key) if key is not None else None
        if pending is not None:
            # the same (user, client) is in the engine now: if the limiter refuses it, this
            # one gets that answer from memory; if not (another password may be right),
            # it goes on, after at most SAME_CLIENT_WAIT seconds
            try:
                await asyncio.wait_for(pending.wait(), SAME_CLIENT_WAIT)
            except TimeoutError:
                pass
            answer = engine.throttled_answer(body)
            if answer is not None:
                return 200, answer
        mine = None
        if key is not None and key not in in_engine:
            mine = in_engine[key] = asyncio.Event()
        try:
            answer = on_loop("verify", engine.verify, body)
            if answer is None:
                answer = await in_thread("verify", engine.verify, body)
            return 200, answer
        except Busy:
            return 503, {"result": "tempfail", "reason": "busy"}
        except TempFail as e:
            engine.say(str(e))
            return 200, {"result": "tempfail"}
        finally:
            if mine is not None:
                del in_engine[key]
                mine.set()

    async def health(request: Request) -> JSONResponse:
        # the fast path's callers (check-config) see which config
        if trusted and authorised(request.headers.get("authorization", "")):
            return JSONResponse({"ok": True, "pid": os.getpid(), "config": engine.real_path})
        return JSONResponse({"ok": True, "pid": os.getpid()})

    async def metrics_page(request: Request) -> Response:
        if not authorised(request.headers.get("authorization", "")):
            return Response("unauthorised\n", status_code=401, media_type="text/plain")
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def never(request: Request) -> Response:
        raise AssertionError("app() answers POST /verify and /policy before Starlette")

    rest = Starlette(routes=[
        # the hot routes too, for Starlette's answer to another method (405, Allow: POST)
        Route("/policy", never, methods=["POST"]),
        Route("/", never, methods=["POST"]),  # auth_policy_server_url = http://127.0.0.1:PORT/
        Route("/verify", never, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
    ])
    latency = {endpoint: metrics.child(metrics.latency, endpoint) for endpoint in ("policy", "verify")}
    hot = {"/verify": ("verify", verify), "/policy": ("policy", policy), "/": ("policy", policy)}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        found = hot.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if found is None:
            await rest(scope, receive, send)
            return
        endpoint, handler = found
        started = time.monotonic()
        try:  # its time observed in the latency histogram, whatever the answer
            try:
                status, content = await handler(Call(scope, receive))
            except Disconnected:
                return  # nobody left to answer
            except Exception as e:  # a bug: a temporary failure and one line, never a traceback
                engine.say(f"internal error in {endpoint}: {type(e).__name__}")
                status, content = (200, {"result": "tempfail"}) if endpoint == "verify" else \
                    (503, {"status": 0, "msg": "temporary failure"})
            await _send_json(send, content, status)
        finally:
            latency[endpoint].observe(time.monotonic() - started)

    return app


def serve(config_path: str, *, host: str = "127.0.0.1", port: int = 8077, uds: str | None = None,
          token: str | None = None, socket_mode: int = 0o660, workers: int = 1,
          max_requests: int = DEFAULT_MAX_REQUESTS, callers_trusted: bool | None = None,
          file_check_interval: float = DEFAULT_FILE_CHECK_INTERVAL, threads_only: bool = False) -> int:
    """Listen, then run `workers` processes that share the listening socket (each with
    its own event loop, database pool and caches: hashing and the audit use every core).
    This process supervises them: a worker that dies is replaced; SIGTERM or SIGINT is
    passed on to every worker, which finishes the requests in flight (up to
    GRACEFUL_SECONDS) and exits. `file_check_interval`: how long a stat of the config, a list
    or a cache file is reused (filestat.py). `threads_only`: never run a request on the
    event loop (Engine.may_run_on_loop). Returns the exit status. Raises OSError (cannot
    listen)."""
    Engine(config_path).config()  # a broken config fails at start, not at the first login
    from .http import MAX_CONNECTIONS, connections_allowed, raise_open_file_limit

    # descriptors for many connections and the engine (inherited by the workers); each
    # worker keeps at most `max_connections` open (serve/http.py)
    max_connections = connections_allowed(raise_open_file_limit())
    if max_connections < MAX_CONNECTIONS:
        print(f"dovecot-appauth serve: the open-file limit ({resource_limit()}) allows {max_connections} "
              f"connections per worker, not {MAX_CONNECTIONS} (raise it: LimitNOFILE= or ulimit -n)",
              file=sys.stderr)
    if uds:
        listener = unix_listener(uds, socket_mode)
        if callers_trusted is None:
            callers_trusted = True  # the socket's mode decides who may connect
    else:
        import socket

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=2048)
    supervisor = Supervisor(listener, lambda: _worker(config_path, listener, token, callers_trusted,
                                                      max_requests, file_check_interval, threads_only,
                                                      max_connections), workers)
    return supervisor.run()


def resource_limit() -> str:
    """The soft open-file limit, as said in the log."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


def uvicorn_config(app: Any, say: Any = None, **bounds: Any) -> Any:
    """The uvicorn.Config a worker runs `app` with. `bounds`: serve/http.py's
    guarded_protocol arguments (request_timeout, max_head, max_connections; tests make
    the timeout shorter); `say`: where its refusals are said."""
    import uvicorn

    from .http import guarded_protocol

    # proxy_headers=False: uvicorn's default takes X-Forwarded-For from a client on
    # 127.0.0.1 as the client's address, so without a token any local process could name
    # an exempt client (build_app's `peer`); `serve` is never behind a proxy that sets it.
    # http: httptools with a deadline per request and bounds on the head and the
    # connections (serve/http.py); ws="none": no WebSocket upgrade, whatever is installed
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                          timeout_graceful_shutdown=GRACEFUL_SECONDS, proxy_headers=False,
                          http=guarded_protocol(say=say, **bounds), ws="none")


def _worker(config_path: str, listener: Any, token: str | None, callers_trusted: bool | None,
            max_requests: int, file_check_interval: float = DEFAULT_FILE_CHECK_INTERVAL,
            threads_only: bool = False, max_connections: int | None = None) -> None:
    """One worker process: its own engine (pool, caches) on the shared socket."""
    import uvicorn

    from .http import MAX_CONNECTIONS

    engine = Engine(config_path, file_check_interval=file_check_interval)
    engine.threads_only = threads_only
    app = build_app(engine, token, callers_trusted=callers_trusted, max_requests=max_requests)
    config = uvicorn_config(app, engine.say, max_connections=max_connections or MAX_CONNECTIONS)
    uvicorn.Server(config).run(sockets=[listener])


class Supervisor:
    """A pre-fork parent: `count` children run `target` on the inherited listening socket."""

    def __init__(self, listener: Any, target: Any, count: int, stderr: Any = None):
        self.listener = listener
        self.target = target
        self.count = count
        self.stderr = stderr or sys.stderr
        self.children: dict[int, float] = {}  # pid -> start time
        self.stopping = False

    def say(self, message: str) -> None:
        try:
            self.stderr.write(f"dovecot-appauth serve: {message}\n")
            self.stderr.flush()
        except (OSError, ValueError):
            pass

    def run(self) -> int:
        import shutil
        import signal
        import tempfile

        # before any worker imports prometheus_client: every process counts in its own
        # files there, and /metrics sums them (metrics.py)
        metrics_dir = tempfile.mkdtemp(prefix="dovecot-appauth-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

        def stop(signum: int, frame: Any) -> None:
            self.stopping = True
            for pid in list(self.children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            for _ in range(self.count):
                if self.stopping:  # SIGTERM while the workers are started: no more of them
                    break
                self._start()
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                started = self.children.pop(pid, None)
                if started is None:
                    continue
                from .metrics import worker_exited

                worker_exited(pid)
                if self.stopping:
                    continue
                self.say(f"worker {pid} ended ({_status_text(status)}); starting another")
                if time.monotonic() - started < 1.0:
                    time.sleep(1.0)  # a worker that dies at once: do not spin
                if not self.stopping:
                    self._start()
        finally:
            self.listener.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0

    def _start(self) -> None:
        """Fork a worker. SIGTERM and SIGINT are blocked around the fork: one that arrives
        then waits, in the parent until the child is in `children` (so `stop` signals it
        too), in the child until the parent's handlers are replaced by the default ones (so
        it ends the child instead of running the parent's `stop` there and being lost)."""
        import signal

        stop_signals = {signal.SIGTERM, signal.SIGINT}
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGTERM ends it here
                self.target()
            except BaseException as e:  # never return into the parent's loop
                if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                    self.say(f"worker {os.getpid()} failed: {type(e).__name__}: {e}")
                    code = 1
            finally:
                os._exit(code)
        self.children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _status_text(status: int) -> str:
    import signal

    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def unix_listener(path: str, mode: int) -> Any:
    """A listening Unix socket at `path` with `mode` from the start (uvicorn's own is 0666:
    any local user could ask /verify or report fake logins). A socket file left by an
    earlier run is replaced; one that a running service answers on is not. Raises OSError."""
    import socket
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: uvicorn leaves it behind when stopped by a signal
        else:
            raise OSError(f"{path}: another service is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)  # the file never exists with wider permissions
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)  # the umask can only take bits away
    sock.listen(2048)  # uvicorn's default backlog
    return sock
