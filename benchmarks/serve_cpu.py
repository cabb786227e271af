#!/usr/bin/env python3
"""CPU that one `serve` worker spends per request, by kind (issue 12 item 6): what load hardly distorts.

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/serve_cpu.py [--requests 2000] [--repeat 3] [--src OLD/src]
        [--clients N]

Starts the real `dovecot-appauth serve --workers 1 --port PORT --token-file FILE` on the
benchmark site of `serve_throughput.py` (SQLite, audit on with the test MaxMind files,
reverse DNS on tests/support/localservers.LocalDns, the example lists, one user with one app
password), warms it, then sends `--requests` sequential requests of each kind over one
keep-alive connection, as Dovecot's HTTP client does, and reads the worker's CPU-time clock
(its scheduler time in ns; utime+stime where that clock is missing) before and after each batch:

- `verify`: a right app password (`POST /verify`, the Lua script's body), the same client
  every time, warm enrichment cache;
- `allow`: `POST /policy?command=allow` with Dovecot 2.3's default request attributes;
- `report`: `POST /policy?command=report` of a successful login (audit line + event row).

Printed: CPU µs per request per kind (the median of `--repeat` batches, kinds interleaved),
and the same for a `GET /health` (the HTTP floor: uvicorn, Starlette, no engine), with the
context switches of the worker's threads per request. `--clients N` sends over N
keep-alive connections at once (Dovecot's auth workers do, under load): each release of
the GIL (a system call, an SQLite statement) is then a chance for a thread switch, which
costs CPU that a sequential batch does not show. Every answer is checked. `--src DIR`
(repeatable) runs one more `serve` per DIR with PYTHONPATH=DIR (e.g. an unpacked `git
archive OLD src`), measured in the same rounds as the installed one: an A/B comparison, as
the machine's load moves CPU time per request by 10-20 % (a busy sibling hyperthread,
caches). Needs the `serve` extra; root is not
needed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # (benchmarks/run.py: write_config, populate, CLI)

CLIENT = "198.51.100.10"  # serve_throughput.py's first client address
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The CPU time of a process (all its threads, live and ended), in seconds: its CPU-time
    clock (Linux: clock id (~pid << 3) | 2, the scheduler's ns count), else utime + stime.
    utime/stime are sampled at each clock tick (100 Hz): a batch of 1,500 `allow` requests
    is ~75 ticks, so their figure moved by ±10 % from sampling alone."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def worker_pid(parent: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("serve started no worker")


class Client:
    """One keep-alive HTTP/1.1 connection, as Dovecot's lib-http keeps one."""

    def __init__(self, port: int, token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read() or b"null")


def requests(password: str) -> dict[str, tuple[str, str, bytes | None, object]]:
    """kind -> (method, path, body, the expected answer (a dict, or a predicate))"""
    verify = json.dumps({"user": bench.USER, "password": password, "service": "imap", "remote_ip": CLIENT,
                         "local_ip": "127.0.0.1"}, separators=(",", ":")).encode()
    # Dovecot 2.3's default auth_policy_request_attributes (pwhash: a nonce'd hash)
    policy = {"login": bench.USER, "pwhash": "0123abcd", "remote": CLIENT, "device_id": "", "protocol": "imap",
              "session_id": "AbCdEfGhIjKlMnOp", "fail_type": ""}
    report = {**policy, "success": True, "policy_reject": False, "tls": False}
    return {
        "health": ("GET", "/health", None, lambda a: a.get("ok") is True),
        "verify": ("POST", "/verify", verify, lambda a: a.get("result") == "ok"),
        "allow": ("POST", "/policy?command=allow", json.dumps(policy).encode(), {"status": 0, "msg": ""}),
        "report": ("POST", "/policy?command=report", json.dumps(report).encode(), {"status": 0, "msg": ""}),
    }


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all of a process's threads so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:  # a thread that just ended
            pass
    return total


def run_batch(clients: list[Client], spec: tuple[str, str, bytes | None, object], n: int) -> None:
    """`n` requests of one kind: sequential on one connection, or spread over several at once."""
    if len(clients) == 1:
        batch(clients[0], spec, n)
        return
    import threading

    failures: list[BaseException] = []

    def one(client: Client, count: int) -> None:
        try:
            batch(client, spec, count)
        except BaseException as e:  # re-raised below, in the main thread
            failures.append(e)

    share = -(-n // len(clients))
    threads = [threading.Thread(target=one, args=(c, share)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def batch(client: Client, spec: tuple[str, str, bytes | None, object], n: int) -> None:
    method, path, body, expected = spec
    client.conn.close()  # reconnects: uvicorn drops a connection idle for 5 s (another target's batch)
    for _ in range(n):
        status, answer = client.call(method, path, body)
        ok = expected(answer) if callable(expected) else answer == expected
        if status != 200 or not ok:
            raise RuntimeError(f"{method} {path}: {status} {answer}")


class Target:
    """One `serve --workers 1` (the installed code, or PYTHONPATH=src) and a connection to it."""

    def __init__(self, name: str, src: str | None, config: Path, token: str, token_file: Path, workdir: Path,
                 extra: list[str], clients: int = 1):
        import socket

        self.name = name
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = src
        self.log_path = workdir / f"serve-{len(list(workdir.glob('serve-*.log')))}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(bench.CLI), "--config", str(config), "serve", "--port", str(port),
                                          "--token-file", str(token_file), "--workers", "1", *extra],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        self.worker = worker_pid(self.proc.pid)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client = Client(port, token)
                self.client.call("GET", "/health")
                self.clients = [self.client, *(Client(port, token) for _ in range(clients - 1))]
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(self.log_path.read_text()) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(15)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per kind and batch (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="batches per kind, interleaved (default 3)")
    p.add_argument("--kinds", default="health,verify,allow,report", help="comma-separated subset")
    p.add_argument("--src", action="append", default=[], metavar="DIR",
                   help="also measure a serve run with PYTHONPATH=DIR (repeatable)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG", help="one more serve argument")
    p.add_argument("--clients", type=int, default=1, metavar="N",
                   help="N keep-alive connections sending at once (default 1: one after another)")
    args = p.parse_args(argv)
    if args.clients < 1:
        p.error("--clients: at least 1")
    from tests.support.localservers import LocalDns

    workdir = Path(tempfile.mkdtemp(prefix="appauth-serve-cpu-", dir=bench.shared_tmp()))
    dns = LocalDns().start()
    targets: list[Target] = []
    try:
        lists = workdir / "lists"
        shutil.copytree(bench.LISTS_DIR, lists)
        (workdir / "cache").mkdir(mode=0o700)
        config = bench.write_config(workdir / "appauth.toml", dsn=f"sqlite:///{workdir / 'db.sqlite'}",
                                    cache_dir=workdir / "cache", log_file=workdir / "audit.log", lists_dir=lists,
                                    dns_port=dns.port, userdb={"home": f"{workdir}/mail/%u"})
        password = bench.populate(config).password
        token = secrets.token_hex(24)
        token_file = workdir / "serve.token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        for name, src in [("installed", None), *((src, src) for src in args.src)]:
            targets.append(Target(name, src, config, token, token_file, workdir, args.serve_arg, args.clients))
        specs = requests(password)
        kinds = [k for k in args.kinds.split(",") if k]
        for target in targets:  # warm: caches, pool, lists, code paths
            for kind in kinds:
                run_batch(target.clients, specs[kind], 100)
        samples: dict[tuple[str, str], list[float]] = {(t.name, k): [] for t in targets for k in kinds}
        switches: dict[tuple[str, str], list[float]] = {(t.name, k): [] for t in targets for k in kinds}
        for _ in range(args.repeat):
            for kind in kinds:
                for target in targets:
                    before, switched = cpu_seconds(target.worker), context_switches(target.worker)
                    run_batch(target.clients, specs[kind], args.requests)
                    used = cpu_seconds(target.worker) - before
                    samples[(target.name, kind)].append(used / args.requests * 1e6)
                    switches[(target.name, kind)].append(
                        (context_switches(target.worker) - switched) / args.requests)
        load = os.getloadavg()[0]
        how = ("one keep-alive connection" if args.clients == 1 else
               f"{args.clients} keep-alive connections at once")
        print(f"serve worker CPU per request ({args.requests} x {args.repeat}, {how}; "
              f"load {load:.2f} on {os.cpu_count()} cores); context switches of its threads per request")
        for target in targets:
            print(f"{target.name}:")
            for kind in kinds:
                values = samples[(target.name, kind)]
                shown = ", ".join(f"{v:.0f}" for v in values)
                print(f"  {kind:<7} {statistics.median(values):>7.0f} µs   ({shown})   "
                      f"{statistics.median(switches[(target.name, kind)]):>5.1f} switches")
    finally:
        for target in targets:
            target.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
