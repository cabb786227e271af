"""`dovecot-appauth serve`: the login engine as a long-running HTTP service (Starlette on uvicorn).

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
  (examples/dovecot/appauth.lua calls it from a Lua passdb, for Dovecot 2.4).

Kept warm between requests: the interpreter and imports, the parsed config (reloaded
when the file changes), the parsed lists with their compiled matchers (`lists.keep_warm`:
read again when a file's stat changes), the database connections (`pool.py`), one
enrichment cache connection per thread (`enrich.keep_cache_open`) and the MaxMind
readers (`sources/maxmind.py`, reopened when a .mmdb file changes). The engine is synchronous (SQL, DNS), so each
request runs in Starlette's thread pool. Not on the per-login path: nothing imports
this module but the `serve` command.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .config import Config, ConfigError, load
from .core import LoginRequest, Mode, TempFail
from .pool import StorePool

MAX_BODY = 64 * 1024


class Engine:
    """The config, reloaded when its file changes, and the database pool; each request
    gets the current config and a pooled store."""

    def __init__(self, path: str, stderr: Any = None):
        from .enrich import keep_cache_open
        from .lists import keep_warm

        self.path = path
        self.stderr = stderr or sys.stderr
        self.pool = StorePool()
        self._key: tuple[int, int] | None = None
        self._config: Config | None = None
        keep_warm()  # lists parsed and compiled once per file version, not per request
        keep_cache_open()  # the enrichment cache's connection, per thread

    def config(self) -> Config:
        st = os.stat(self.path)
        key = (st.st_mtime_ns, st.st_size)
        if key != self._key or self._config is None:
            try:
                self._config = load(self.path)
            except ConfigError as e:
                if self._config is None:
                    raise TempFail(f"configuration {self.path}: {e}") from None
                self.say(f"configuration {self.path} not reloaded (keeping the previous one): {e}")
            self._key = key
        return self._config

    def say(self, message: str) -> None:
        try:
            self.stderr.write(f"dovecot-appauth serve: {' '.join(message.split())}\n")
            self.stderr.flush()
        except (OSError, ValueError):
            pass

    # --- the two faces ---------------------------------------------------------------

    def verify(self, body: dict[str, Any]) -> dict[str, Any]:
        from .core import ExitCode
        from .login import decide

        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            return {"result": "fail", "reason": "user and password must be strings"}
        if not _utf8(user):
            return {"result": "fail"}  # no user has such a name
        if not _utf8(password):
            password = None  # as from fd 3: not UTF-8, so it matches nothing (after the same hash work)
        request = LoginRequest(user, password, Mode.VERIFY, _text(body.get("service"), "imap").lower(),
                               remote_ip=_ip(body.get("remote_ip")), local_ip=_ip(body.get("local_ip")))
        config = self.config()
        log = io.StringIO()
        try:
            with self.pool.store(config.database.dsn, config.database.connect_timeout) as store:
                outcome = decide(request, config, now=time.time(), stderr=log, store=store)
        except TempFail as e:
            self._relay(log)
            self.say(str(e))
            return {"result": "tempfail"}
        self._relay(log)
        if outcome.message:
            self.say(outcome.message)
        if outcome.exit_code is ExitCode.OK:
            return {"result": "ok", "user": outcome.user, "fields": dict(outcome.fields)}
        return {"result": "fail"}

    def policy(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        from .pipeline import assess

        config = self.config()
        user = _text(body.get("login"), "")
        service = _text(body.get("protocol"), "imap").lower()
        ip = _ip(body.get("remote"))
        now = time.time()
        log = io.StringIO()
        try:
            if command == "report":
                if _true(body.get("success")) and not _true(body.get("policy_reject")) and config.audit.enabled:
                    self._audit_report(LoginRequest(user, None, Mode.VERIFY, service, remote_ip=ip), config,
                                       now, log)
                return {"status": 0, "msg": ""}
            if not config.audit.enabled:
                return {"status": 0, "msg": ""}
            result = assess(user=user, service=service, ip=ip, config=config, now=now, stderr=log)
        finally:
            self._relay(log)
        if result.deny:
            self.say(result.denial(user, ip))
            return {"status": -1, "msg": "Authentication failed"}
        return {"status": 0, "msg": ""}

    def _audit_report(self, request: LoginRequest, config: Config, now: float, log: io.StringIO) -> None:
        """The audit line and event of a login another passdb accepted (Dovecot's report)."""
        from .pipeline import audit_login

        store = None
        if config.audit.record_events:
            try:
                store = self.pool.acquire(config.database.dsn, config.database.connect_timeout)
            except TempFail as e:  # the audit line is still written
                log.write(f"audit event not recorded: {e}\n")
        healthy = False
        try:
            audit_login(request, config, user=request.username, now=now, pwid=None, stderr=log, store=store)
            healthy = True
        finally:
            if store is not None:
                self.pool.release(store, healthy)  # finish() commits the audit_events row

    def _relay(self, log: io.StringIO) -> None:
        for line in log.getvalue().splitlines():
            self.say(line.removeprefix("dovecot-appauth: "))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _ip(value: Any) -> str | None:
    import ipaddress

    if not isinstance(value, str) or not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _true(value: Any) -> bool:
    return value is True or value in ("1", "yes", "true", 1)


async def _json(request: Request) -> dict[str, Any] | None:
    import json

    body = await request.body()
    if len(body) > MAX_BODY:
        return None
    try:
        # surrogateescape: a client's password need not be UTF-8 (Dovecot passes its bytes
        # on); such a password is a wrong one (verify), not a malformed request
        data = json.loads(body.decode("utf-8", "surrogateescape") or "{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def build_app(engine: Engine, token: str | None = None) -> Starlette:
    """The ASGI app. With `token`, requests need `Authorization: Bearer TOKEN` or Basic
    with TOKEN as password (Dovecot's auth_policy_server_api_header can send either)."""

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        import base64
        import hmac

        header = request.headers.get("authorization", "")
        given = ""
        if header.startswith("Bearer "):
            given = header[7:]
        elif header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:]).decode().partition(":")[2]
            except ValueError:
                given = ""
        return hmac.compare_digest(given.encode(), token.encode())

    async def policy(request: Request) -> JSONResponse:
        if not authorised(request):
            return JSONResponse({"status": 0, "msg": "unauthorised"}, status_code=401)
        body = await _json(request)
        command = request.query_params.get("command", "allow")
        if body is None or command not in ("allow", "report"):
            return JSONResponse({"status": 0, "msg": "bad request"}, status_code=400)
        try:
            return JSONResponse(await run_in_threadpool(engine.policy, command, body))
        except TempFail as e:
            engine.say(str(e))
            # Dovecot: auth_policy_reject_on_fail decides what an error means
            return JSONResponse({"status": 0, "msg": "temporary failure"}, status_code=503)

    async def verify(request: Request) -> JSONResponse:
        if not authorised(request):
            return JSONResponse({"result": "tempfail"}, status_code=401)
        body = await _json(request)
        if body is None:
            return JSONResponse({"result": "fail", "reason": "bad request"}, status_code=400)
        try:
            return JSONResponse(await run_in_threadpool(engine.verify, body))
        except TempFail as e:
            engine.say(str(e))
            return JSONResponse({"result": "tempfail"})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/policy", policy, methods=["POST"]),
        Route("/", policy, methods=["POST"]),  # auth_policy_server_url = http://127.0.0.1:PORT/
        Route("/verify", verify, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])


def serve(config_path: str, *, host: str = "127.0.0.1", port: int = 8077, uds: str | None = None,
          token: str | None = None, socket_mode: int = 0o660) -> None:
    import uvicorn

    engine = Engine(config_path)
    engine.config()  # a broken config fails at start, not at the first login
    app = build_app(engine, token)
    if uds:
        listener = unix_listener(uds, socket_mode)
        uvicorn.run(app, fd=listener.fileno(), log_level="warning", access_log=False)
    else:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


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
