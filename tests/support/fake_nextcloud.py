"""A stand-in for Nextcloud's WebDAV endpoint on 127.0.0.1 (PROPFIND with basic auth).

Paths choose the behaviour: `/remote.php/dav/` answers 207 for a known user:password and
401 otherwise; `/error/` 500; `/slow/` waits before answering; `/drip/` sends the status
line one byte at a time; `/redirect/` 302. `requests` records (method, path, user, headers).
"""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VALID = {"alice@example.com": "abcd-efgh-ijkl-mnop", "bob": "pass:with:colons"}


class FakeNextcloud:
    def __init__(self, users: dict[str, str] | None = None, delay: float = 5.0):
        self.users = dict(VALID if users is None else users)
        self.delay = delay
        self.requests: list[tuple[str, str, str | None, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_PROPFIND(self):
                outer._handle(self)

            def do_GET(self):
                outer._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/remote.php/dav/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        user = password = None
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        self.requests.append((h.command, h.path, user, dict(h.headers)))
        if h.path.startswith("/slow/"):
            time.sleep(self.delay)
        if h.path.startswith("/drip/"):
            for b in b"HTTP/1.1 207 Multi-Status\r\n":
                try:
                    h.wfile.write(bytes([b]))
                    h.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)
            return
        if h.path.startswith("/error/"):
            self._send(h, 500, b"Internal Server Error")
        elif h.path.startswith("/redirect/"):
            self._send(h, 302, b"", {"Location": "/login"})
        elif h.command == "PROPFIND" and user is not None and self.users.get(user) == password:
            self._send(h, 207, b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:"/>',
                       {"Content-Type": "application/xml; charset=utf-8"})
        else:
            self._send(h, 401, b"", {"WWW-Authenticate": 'Basic realm="Nextcloud"'})

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            h.send_response(status)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
