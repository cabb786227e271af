#!/usr/bin/env python3
"""The least a Lua-passdb service can do per login: `POST /verify` answered with the hash check alone.

    python benchmarks/floor_responder.py --port PORT --secrets FILE [--workers N]

`serve_throughput.py --floor` runs it as a set-up of its own, behind the same Lua passdb
(examples/dovecot/appauth.lua), so that the benchmark can split the Lua set-up's gap to
Dovecot's native passdb in two: what Dovecot's Lua passdb and its HTTP client cost with
any service behind them (floor / native), and what `serve` does besides the hash (lua /
floor: the policy, the limiter, the audit line and event, the recording).

It is `serve` without the engine: the same server (uvicorn with a plain ASGI app, as
serve's hot endpoints), the same worker processes sharing one socket, the same token
check and the same hash code (dovecot_appauth.hashing.verify), and the answer `serve`
gives, fields included. Nothing else: no lists, no database, no audit. A benchmark aid,
never a passdb: it knows one user and one stored hash.

`--secrets FILE` (mode 0600, JSON): {"user", "stored", "token", "fields"}; the stored hash
and the token are read from a file, never from the command line.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import socket
import sys
from typing import Any


def build_app(user: str, stored: str, token: str, fields: dict[str, str]) -> Any:
    from dovecot_appauth.hashing import verify
    from dovecot_appauth.serve.server import MAX_BODY  # serve's limit

    expected = f"Bearer {token}".encode()
    ok_answer = {"result": "ok", "user": user, "fields": fields}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, answer = 404, {"result": "fail"}
        if scope["method"] == "POST" and scope["path"] == "/verify":
            authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > MAX_BODY or not message.get("more_body", False):
                    break
            if not hmac.compare_digest(authorization, expected):
                status, answer = 401, {"result": "tempfail"}
            elif size > MAX_BODY:
                status, answer = 413, {"result": "tempfail"}
            else:
                try:
                    body = json.loads(b"".join(chunks))
                    right = (body["user"] == user and isinstance(body["password"], str)
                             and verify(body["password"], stored))
                except (ValueError, KeyError, TypeError):
                    status, answer = 400, {"result": "fail"}
                else:
                    status, answer = 200, ok_answer if right else {"result": "fail"}
        payload = json.dumps(answer, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secrets", required=True, help="JSON file: user, stored, token, fields")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="processes sharing the socket (default: the number of cores, as serve)")
    args = p.parse_args(argv)
    with open(args.secrets) as f:
        secrets = json.load(f)
    app = build_app(secrets["user"], secrets["stored"], secrets["token"], secrets["fields"])
    listener = socket.create_server((args.host, args.port), backlog=2048)
    import uvicorn

    children = []
    for _ in range(max(1, args.workers) - 1):  # this process is one of the workers
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        for pid in children:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
