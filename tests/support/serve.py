"""`dovecot-appauth serve` as a subprocess, for the tests and the benchmarks: the real
command line, on TCP or on a Unix socket, optionally as another user."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.common import free_port, stop_process_group

CLI = Path(sys.executable).parent / "dovecot-appauth"  # the venv's, as tests/conftest.py's


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over an AF_UNIX stream socket (what a reverse proxy in front of serve does)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Service:
    """`dovecot-appauth serve --port PORT` (or `--unix-socket PATH`) as a subprocess (the real
    command line); ``extra`` are more arguments, e.g. ``"--token-file", FILE``; ``user``: run
    it as that user (e.g. dovecot, as the systemd unit does)."""

    def __init__(self, config: Path, log: Path, *extra: str, unix_socket: Path | None = None,
                 user: str | None = None):
        self.unix_socket = unix_socket
        self.port = None if unix_socket else free_port()
        listen = ["--unix-socket", str(unix_socket)] if unix_socket else ["--port", str(self.port)]
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([str(CLI), "--config", str(config), "serve", *listen, *extra],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True, user=user)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.request("GET", "/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve did not start: {log.read_text()}")
            time.sleep(0.1)

    def url(self, path: str) -> str:
        assert self.port is not None, "a Unix-socket service has no URL"
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None,
                timeout: float = 10) -> tuple[int, dict]:
        """One request over TCP or the Unix socket: (status, the JSON answer)."""
        if self.unix_socket is not None:
            conn: http.client.HTTPConnection = UnixHTTPConnection(self.unix_socket, timeout=timeout)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.log.close()
