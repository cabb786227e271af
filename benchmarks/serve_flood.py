"""`dovecot-appauth serve` under a flood of throttled requests: how long an innocent
/verify takes meanwhile (issue 12, item 1).

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/serve_flood.py [--flood 1000] [--innocent 20] [--workers N]

Makes a temporary SQLite site (init-db, two app passwords, a serve token), starts the real
`serve` on a free loopback port, throttles one (user, client) with 10 wrong passwords, then
sends `--flood` concurrent requests of that client while `--innocent` requests of another
user (right password, another address) are sent one after the other. Prints the innocent
latencies (p50, p99, max) and how long the flood took, as JSON. Loopback only; removes its
temp dir at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "dovecot-appauth")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, token: str, body: dict, timeout: float = 60) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/verify", json.dumps(body), {"Authorization": f"Bearer {token}"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


async def _flood(port: int, token: str, body: dict, count: int) -> int:
    payload = json.dumps(body).encode()
    request = (f"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload

    async def one() -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await reader.read()
            writer.close()
            return b'"tempfail"' in answer
        except OSError:
            return False

    return sum(await asyncio.gather(*(one() for _ in range(count))))


def make_site() -> tuple[Path, Path, str, str]:
    """A temp dir with a config (SQLite, audit off), two users, a token: (dir, config, token, a password)."""
    base = Path(tempfile.mkdtemp(prefix="appauth-serve-bench-"))
    config = base / "config.toml"
    config.write_text(f'[database]\ndsn = "sqlite:///{base / "db.sqlite"}"\n\n[audit]\nenabled = false\n')

    def run(*args: str) -> str:
        return subprocess.run([CLI, "--config", str(config), *args], check=True, capture_output=True,
                              text=True).stdout

    run("init-db")
    innocent = json.loads(run("password", "create", "innocent@example.com", "--json"))["password"]
    run("password", "create", "victim@example.com", "--json")
    run("serve-token", "--write", str(base / "token"))
    return base, config, (base / "token").read_text().strip(), innocent


def start_serve(config: Path, base: Path, port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([CLI, "--config", str(config), "serve", "--port", str(port), "--token-file",
                             str(base / "token"), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            conn.getresponse().read()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("serve did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--innocent", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    base, config, token, innocent = make_site()
    port = _free_port()
    extra = ["--workers", str(args.workers)] if args.workers else []
    proc = start_serve(config, base, port, "--max-requests", str(args.flood * 2), *extra)
    try:
        guess = {"user": "victim@example.com", "password": "Wrong-Pass-Word-0000", "remote_ip": "198.51.100.66"}
        for _ in range(10):
            _post(port, token, guess)
        flood_result: dict = {}

        def flood() -> None:
            started = time.monotonic()
            flood_result["throttled"] = asyncio.run(_flood(port, token, guess, args.flood))
            flood_result["seconds"] = round(time.monotonic() - started, 3)

        thread = threading.Thread(target=flood)
        thread.start()
        latencies = []
        right = {"user": "innocent@example.com", "password": innocent, "remote_ip": "198.51.100.20"}
        for _ in range(args.innocent):
            started = time.monotonic()
            assert _post(port, token, right)["result"] == "ok"
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
        thread.join()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    print(json.dumps({"flood": args.flood, "flood_throttled": flood_result["throttled"],
                      "flood_seconds": flood_result["seconds"], "innocent": len(latencies),
                      "innocent_p50_s": round(statistics.median(latencies), 4), "innocent_p99_s": round(p99, 4),
                      "innocent_max_s": round(latencies[-1], 4), "load_average": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
