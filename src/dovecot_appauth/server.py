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
when the file changes) and the parsed lists (keyed by path, size and mtime in
`lists.py`). Not yet: a database pool (`login.decide` opens its own store per request)
and MaxMind readers (`sources/maxmind.py` opens the .mmdb per cache miss). The engine
is synchronous (SQL, DNS), so each request runs in Starlette's thread pool. Not on the
per-login path: nothing imports this module but the `serve` command.
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

MAX_BODY = 64 * 1024


class Engine:
    """The config, reloaded when its file changes; each request gets the current one."""

    def __init__(self, path: str, stderr: Any = None):
        self.path = path
        self.stderr = stderr or sys.stderr
        self._key: tuple[int, int] | None = None
        self._config: Config | None = None

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
        request = LoginRequest(user, password, Mode.VERIFY, _text(body.get("service"), "imap").lower(),
                               remote_ip=_ip(body.get("remote_ip")), local_ip=_ip(body.get("local_ip")))
        log = io.StringIO()
        try:
            outcome = decide(request, self.config(), now=time.time(), stderr=log)
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
        from .pipeline import assess, audit_login

        config = self.config()
        user = _text(body.get("login"), "")
        service = _text(body.get("protocol"), "imap").lower()
        ip = _ip(body.get("remote"))
        now = time.time()
        log = io.StringIO()
        try:
            if command == "report":
                if _true(body.get("success")) and not _true(body.get("policy_reject")) and config.audit.enabled:
                    request = LoginRequest(user, None, Mode.VERIFY, service, remote_ip=ip)
                    store = self._event_store(config, log)
                    try:
                        audit_login(request, config, user=user, now=now, pwid=None, stderr=log, store=store)
                    finally:
                        if store is not None:
                            store.close()  # commits the audit_events row
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

    def _event_store(self, config: Config, log: io.StringIO):
        if not config.audit.record_events:
            return None
        from .store import open_store

        try:
            return open_store(config.database.dsn, config.database.connect_timeout)
        except TempFail as e:
            log.write(f"audit event not recorded: {e}\n")
            return None

    def _relay(self, log: io.StringIO) -> None:
        for line in log.getvalue().splitlines():
            self.say(line.removeprefix("dovecot-appauth: "))


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
        data = json.loads(body or b"{}")
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
          token: str | None = None) -> None:
    import uvicorn

    engine = Engine(config_path)
    engine.config()  # a broken config fails at start, not at the first login
    app = build_app(engine, token)
    if uds:
        uvicorn.run(app, uds=uds, log_level="warning", access_log=False)
    else:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
