#!/usr/bin/env python3
"""IMAP logins per second through a real Dovecot 2.3: `serve` against Dovecot's own passdb (issue 12 item 6).

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/serve_throughput.py [--logins 300] [--rounds 10] [--clients 8]

One Dovecot (tests/support/dovecot.DovecotServer), one `dovecot-appauth serve` (the real
command line, audit on, the example lists, test MaxMind files, reverse DNS on a local
server), one user with one app password. Three passdb set-ups, measured side by side:

- `native`: Dovecot's passwd-file passdb holding the app password's stored SHA512-CRYPT
  hash, byte for byte (same salt, same rounds): what Dovecot alone does;
- `lua`: `serve` via the Lua passdb (examples/dovecot/appauth.lua, `POST /verify`), the
  Dovecot 2.4 way: hash check, policy, audit and recording in `serve`;
- `policy`: the same passwd-file passdb plus `serve` as Dovecot's auth policy server
  (`/policy`: the lists before the login, the audit line and event after it), with the
  README's `auth_policy_check_after_auth = no` (`--dovecot-policy-defaults`: without);
- `floor` (with `--floor`): the same Lua passdb calling benchmarks/floor_responder.py, which
  answers `/verify` with the hash check alone on serve's HTTP server: the least any
  service behind the Lua passdb costs. Two more ratios split the Lua set-up's gap to
  native: floor/native (Dovecot's Lua passdb and HTTP client) and lua/floor (serve's work
  besides the hash: the policy, the limiter, the audit line and event, the recording).

Each round runs every set-up once (Dovecot restarted with it, one warm-up login per client
address, so the enrichment cache is warm), the order rotating between rounds, so load from
elsewhere hits all of them alike. `--clients` threads log in `--logins / --clients` times
each (connect, ID x-originating-ip, LOGIN, SELECT INBOX, LOGOUT). Printed: logins/s per
set-up (all rounds' logins over all rounds' wall time) and the two ratios, Lua/native and
policy+passwd-file/passwd-file (targets >= 0.9x), with the median and range of the same
ratio round by round and its 90 % interval (the bootstrap over the rounds), which the
verdict follows (PASS, MISS, or UNDECIDED when it spans the target); and the CPU each
login cost (median of the rounds): the machine's in all (/proc/stat: Dovecot, serve and
the IMAP clients), Dovecot's `auth` processes' and serve's, so a gap between set-ups can
be traced to a process. Errors must be 0: the exit
status is 1 otherwise. Needs root, Dovecot 2.3 with dovecot-auth-lua, and the `serve` extra.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # (benchmarks/run.py: config, CLI set-up, the IMAP load driver)

DEFAULT_JSON = bench.ROOT / "benchmarks" / "results" / "serve-throughput.json"
TARGET_RATIO = 0.9
# The ratios' 90 % interval: rounds resampled with replacement this many times (a fixed
# seed, so the same rounds always give the same interval)
RESAMPLES = 2000
CONFIDENCE = 0.90
# name -> what it is; the order of the first round
MODES = {
    "native": "passwd-file passdb, the same SHA512-CRYPT hash",
    "lua": "serve via the Lua passdb (/verify)",
    "policy": "passwd-file + serve auth policy (/policy)",
}
# The README's advice for the policy set-up: serve's `allow` judges the client address only,
# so Dovecot's second check after the password (the default) would repeat the first one.
RECOMMENDED_POLICY_SETTINGS = ("auth_policy_check_after_auth = no",)
RATIOS = (("lua", "native", "Lua passdb / native passwd-file"),
          ("policy", "native", "passwd-file + policy / passwd-file"))
# --floor: one more set-up and the two ratios that split the Lua set-up's gap (not targets
# of their own: shown with the same interval, judged against the same 0.9x)
FLOOR_MODE = ("floor", "Lua passdb -> hash-only responder (benchmarks/floor_responder.py)")
FLOOR_RATIOS = (("floor", "native", "Lua passdb, hash only / native passwd-file"),
                ("lua", "floor", "Lua passdb, serve / hash only"))
FLOOR_RESPONDER = Path(__file__).resolve().parent / "floor_responder.py"
# CPU per login, by process (comm name): Dovecot's auth and auth-worker processes are
# `auth`, serve's processes are the console script's name (15 characters at most)
CPU_GROUPS = (("auth", "Dovecot auth"), ("dovecot-appauth", "serve"))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> tuple[float, dict[int, tuple[str, float]]]:
    """The machine's busy CPU seconds (all processes, /proc/stat) and each process's
    (comm, utime + stime). Processes that live through a load (Dovecot's auth, serve) are
    counted exactly; short-lived ones (imap, imap-login) only in the machine's total."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = (sum(fields) - fields[3] - fields[4]) / TICKS  # all but idle and iowait
    procs: dict[int, tuple[str, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        rest = text.rpartition(")")[2].split()
        procs[int(name)] = (comm, (int(rest[11]) + int(rest[12])) / TICKS)
    return busy, procs


def cpu_per_login(before: tuple[float, dict], after: tuple[float, dict], logins: int) -> dict[str, float]:
    """CPU ms per login between two snapshots: the machine's, and each of CPU_GROUPS'."""
    out = {"machine": (after[0] - before[0]) / logins * 1000}
    for comm, label in CPU_GROUPS:
        used = 0.0
        for pid, (name, seconds) in after[1].items():
            if name == comm:
                earlier = before[1].get(pid)
                used += seconds - (earlier[1] if earlier and earlier[0] == name else 0.0)
        out[label] = used / logins * 1000
    return out


def serve_options(token_file: Path, workers: int | None, extra: list[str]) -> list[str]:
    """Everything after `serve --port PORT`: the one place that knows serve's command line.

    A token always (newer versions refuse TCP without one); `--workers` only when given
    and this serve has the option (read from its --help), so the benchmark runs against
    older and newer versions alike."""
    options = ["--token-file", str(token_file)]
    if workers:
        usage = subprocess.run([str(bench.CLI), "serve", "--help"], capture_output=True, text=True,
                               check=False).stdout
        if "--workers" not in usage:
            raise SystemExit("--workers given, but this serve has no --workers option")
        options += ["--workers", str(workers)]
    return options + extra


def policy_settings(args: argparse.Namespace) -> list[str]:
    """The Dovecot settings of the policy set-up besides the URL, the token and the nonce."""
    return [*(() if args.dovecot_policy_defaults else RECOMMENDED_POLICY_SETTINGS), *args.policy_setting]


def set_ups(args: argparse.Namespace) -> tuple[dict[str, str], tuple[tuple[str, str, str], ...]]:
    """The set-ups to measure (name -> what) and the ratios to print, for these options."""
    if not args.floor:
        return dict(MODES), RATIOS
    return {**MODES, FLOOR_MODE[0]: FLOOR_MODE[1]}, RATIOS + FLOOR_RATIOS


def stored_hash(db: Path, user: str) -> str:
    """The app password's stored value (`{CRYPT}$6$...`), as Dovecot's passwd-file reads it."""
    conn = sqlite3.connect(db)
    try:
        (value,) = conn.execute("SELECT password FROM app_passwords WHERE uid = ?", (user,)).fetchone()
    finally:
        conn.close()
    return str(value)


def missing_parts() -> str | None:
    try:
        from tests.support.dovecot import dovecot_available
    except ImportError as e:
        return f"cannot import tests/support/dovecot.py ({e})"
    reason = dovecot_available()
    if reason:
        return reason
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return f"serve needs starlette and uvicorn ({e})"
    from tests.e2e.test_end_to_end_serve import LUA_MODULE

    if not os.path.exists(LUA_MODULE):
        return "dovecot-auth-lua missing (apt-get install dovecot-auth-lua)"
    return None


class Site:
    """Dovecot, serve and the passdb set-ups; `configure(mode)` switches Dovecot to one."""

    def __init__(self, workdir: Path, args: argparse.Namespace):
        from tests.e2e.test_end_to_end_serve import Service
        from tests.support.common import dovecot_ids
        from tests.support.dovecot import DovecotServer, passwd_file_passdb, write_passwd_file
        from tests.support.localservers import LocalDns

        self.cleanup: list[Any] = []
        self.policy_settings = policy_settings(args)
        self.dns = LocalDns().start()
        self.cleanup.append(self.dns.stop)
        lists = workdir / "lists"
        shutil.copytree(bench.LISTS_DIR, lists)
        (workdir / "db").mkdir()
        uid, gid = dovecot_ids()
        cache = workdir / "cache"
        cache.mkdir(mode=0o700)
        os.chown(cache, uid, gid)
        db = workdir / "db" / "db.sqlite"
        # the same userdb fields as the passwd-file below (tests/support/dovecot.write_passwd_file)
        userdb = {"uid": str(uid), "gid": str(gid), "home": f"{workdir / 'mail'}/%u"}
        self.config = bench.write_config(workdir / "appauth.toml", dsn=f"sqlite:///{db}", cache_dir=cache,
                                         log_file=workdir / "audit.log", lists_dir=lists, dns_port=self.dns.port,
                                         userdb=userdb)
        self.password = bench.populate(self.config, owner="dovecot").password
        self.token = secrets.token_hex(24)
        token_file = workdir / "serve.token"
        token_file.write_text(self.token + "\n")
        os.chmod(token_file, 0o600)
        argv_extra = serve_options(token_file, args.workers, args.serve_arg)
        bench.log(f"starting serve: dovecot-appauth --config {self.config} serve --port PORT {' '.join(argv_extra)}")
        self.service = Service(self.config, workdir / "serve.log", *argv_extra)
        self.cleanup.append(self.service.stop)
        passwd = write_passwd_file(workdir / "native.passwd", {bench.USER: stored_hash(db, bench.USER)},
                                   workdir / "mail", scheme=None)  # DovecotServer's mail_root
        self.native_passdb = passwd_file_passdb(passwd)
        self.server = DovecotServer(workdir, self.native_passdb, auth_penalty=False)
        bench.log(f"starting Dovecot (tests/support/dovecot.DovecotServer) in {workdir}")
        self.server.start()
        self.cleanup.append(self.server.stop)
        self.floor_url: str | None = None
        if args.floor:
            self.floor_url = self._start_floor(workdir, stored_hash(db, bench.USER), args.workers)

    def _start_floor(self, workdir: Path, stored: str, workers: int) -> str:
        """benchmarks/floor_responder.py on a port of its own, answering as serve does (the
        fields of serve's own answer to the user's right password); returns its URL."""
        import time

        from tests.support.common import free_port, stop_process_group

        status, answer = self.service.request("POST", "/verify", {
            "user": bench.USER, "password": self.password, "service": "imap", "remote_ip": "198.51.100.10"},
            token=self.token)
        if status != 200 or answer.get("result") != "ok":
            raise SystemExit(f"serve did not accept the benchmark user: HTTP {status} {answer}")
        secrets_file = workdir / "floor.json"  # the stored hash and the token: never on a command line
        secrets_file.touch(mode=0o600)
        secrets_file.write_text(json.dumps({"user": answer["user"], "stored": stored, "token": self.token,
                                            "fields": answer["fields"]}))
        port = free_port()
        log = open(workdir / "floor.log", "ab")
        self.cleanup.append(log.close)
        proc = subprocess.Popen([sys.executable, str(FLOOR_RESPONDER), "--port", str(port), "--secrets",
                                 str(secrets_file), *(["--workers", str(workers)] if workers else [])],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                cwd=bench.ROOT, env={**os.environ, "PYTHONPATH": str(bench.ROOT / "src")})
        self.cleanup.append(lambda: stop_process_group(proc))
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    shown = (workdir / "floor.log").read_text()
                    raise SystemExit(f"floor_responder.py did not start: {shown}") from None
                time.sleep(0.1)
        bench.log(f"started benchmarks/floor_responder.py on port {port}")
        return f"http://127.0.0.1:{port}/verify"

    def configure(self, mode: str) -> None:
        from tests.e2e.test_end_to_end_serve import policy_conf, use_lua_passdb

        if mode == "native":
            self.server.reconfigure(passdb=self.native_passdb, extra_conf="", import_environment={})
        elif mode == "lua":
            use_lua_passdb(self.server, self.service.url("/verify"), token=self.token)
        elif mode == "floor" and self.floor_url:
            use_lua_passdb(self.server, self.floor_url, token=self.token)
        elif mode == "policy":
            self.server.reconfigure(passdb=self.native_passdb, import_environment={},
                                    extra_conf=policy_conf(self.service.url("/policy"), self.token)
                                    + "".join(f"{line}\n" for line in self.policy_settings))
        else:
            raise ValueError(mode)

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception as e:  # cleaning up must not hide the results
                bench.log(f"cleanup: {e}")


def measure(site: Site, args: argparse.Namespace) -> dict[str, Any]:
    ips = [f"198.51.100.{10 + i}" for i in range(args.clients)]
    per_client = max(1, -(-args.logins // args.clients))
    described, ratios = set_ups(args)
    modes = list(described)
    runs: dict[str, list[bench.ImapLoad]] = {m: [] for m in modes}
    cpu: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    round_rates: list[dict[str, float]] = []  # each round's logins/s by set-up
    round_loads: list[dict[str, tuple[int, float]]] = []  # each round's (logins, seconds) by set-up
    warm_failures: dict[str, str] = {}
    for r in range(args.rounds):
        round_rates.append({})
        round_loads.append({})
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode in order:
            site.configure(mode)
            failed = bench.warm_up_logins(site.server, bench.USER, site.password, ips)
            if failed:
                warm_failures.setdefault(mode, failed)
                bench.log(f"round {r + 1} {mode}: {failed}")
                continue
            before = cpu_snapshot()
            load = bench.drive_imap_logins(site.server, bench.USER, site.password, ips, per_client)
            if load.latencies_ms:
                cpu[mode].append(cpu_per_login(before, cpu_snapshot(), len(load.latencies_ms)))
            runs[mode].append(load)
            round_rates[-1][mode] = load.rate
            round_loads[-1][mode] = (len(load.latencies_ms), load.wall_s)
            bench.log(f"round {r + 1} {mode}: {load.describe()}")
    out: dict[str, Any] = {}
    for mode, loads in runs.items():
        latencies = [v for load in loads for v in load.latencies_ms]
        wall = sum(load.wall_s for load in loads)
        out[mode] = {
            "what": described[mode], "rounds": len(loads), "logins": len(latencies),
            "errors": sum(load.error_count for load in loads) + (1 if mode in warm_failures else 0),
            "logins_per_s": len(latencies) / wall if wall else 0.0,
            "round_rates": [round(load.rate, 2) for load in loads],
            "p50_ms": bench._median(latencies), "p99_ms": bench.percentile(latencies, 99),
            "first_error": next((e for load in loads for e in load.errors), None) or warm_failures.get(mode),
            "auth_log_errors": sum(len(load.auth_errors) for load in loads),
            # CPU ms per login, the median over the rounds
            "cpu_ms": {k: bench._median([c[k] for c in cpu[mode]]) for k in (cpu[mode][0] if cpu[mode] else {})},
        }
    # each round measures the set-ups back to back: its ratio is the least disturbed by
    # load from elsewhere that comes and goes between rounds
    per_round = {f"{a}/{b}": [rates[a] / rates[b] for rates in round_rates if rates.get(a) and rates.get(b)]
                 for a, b, _ in ratios}
    return {"clients": args.clients, "logins_per_client": per_client, "rounds": args.rounds, "modes": out,
            "ratios": {f"{a}/{b}": (out[a]["logins_per_s"] / out[b]["logins_per_s"]
                                    if out[b]["logins_per_s"] else None) for a, b, _ in ratios},
            "round_ratios": per_round,
            "intervals": {f"{a}/{b}": ratio_interval(round_loads, a, b) for a, b, _ in ratios},
            "ratio_labels": {f"{a}/{b}": label for a, b, label in ratios}}


def pooled_ratio(rounds: list[dict[str, tuple[int, float]]], a: str, b: str) -> float | None:
    """Set-up a's logins/s over set-up b's, each over all of `rounds` (logins over seconds)."""
    def rate(mode: str) -> float:
        seconds = sum(r[mode][1] for r in rounds)
        return sum(r[mode][0] for r in rounds) / seconds if seconds else 0.0
    rate_b = rate(b)
    return rate(a) / rate_b if rate_b else None


def ratio_interval(round_loads: list[dict[str, tuple[int, float]]], a: str, b: str,
                   resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> list[float] | None:
    """The `confidence` interval of a/b's ratio, by the bootstrap over rounds: the rounds
    where both ran, drawn with replacement, the pooled ratio of each draw, and its
    percentiles. Load from elsewhere moves a single round's ratio by +-0.15 on a 2-core VM,
    so the ratio of one run is a sample: the interval says how far it can be trusted.
    None with fewer than 3 such rounds."""
    import random

    both = [r for r in round_loads if a in r and b in r and r[a][0] and r[b][0]]
    if len(both) < 3:
        return None
    draw = random.Random(12).choices
    ratios = sorted(v for v in (pooled_ratio(draw(both, k=len(both)), a, b) for _ in range(resamples))
                    if v is not None)
    tail = (1 - confidence) / 2
    return [ratios[int(tail * (len(ratios) - 1))], ratios[int((1 - tail) * (len(ratios) - 1))]]


def verdict(ratio: float | None, interval: list[float] | None, target: float = TARGET_RATIO) -> str:
    """PASS or MISS when the interval is on one side of the target (or, without one, the
    ratio); UNDECIDED when the interval spans it: more rounds, or a quieter machine, decide."""
    if ratio is None:
        return "-"
    low, high = interval if interval else (ratio, ratio)
    if low >= target:
        return "PASS"
    if high < target:
        return "MISS"
    return "UNDECIDED"


def render(result: dict[str, Any], note: str) -> str:
    lines = [f"IMAP logins through Dovecot 2.3: {result['clients']} clients x {result['logins_per_client']} "
             f"logins x {result['rounds']} rounds (interleaved); {note}",
             f"policy set-up settings: {'; '.join(result['policy_settings']) or 'Dovecot defaults'}", "",
             f"{'set-up':<8} {'logins':>6} {'errors':>6} {'logins/s':>9} {'p50 ms':>7} {'p99 ms':>7}  what",
             f"{'-' * 8} {'-' * 6} {'-' * 6} {'-' * 9} {'-' * 7} {'-' * 7}  {'-' * 4}"]
    for mode, m in result["modes"].items():
        lines.append(f"{mode:<8} {m['logins']:>6} {m['errors']:>6} {m['logins_per_s']:>9.1f} "
                     f"{m['p50_ms'] or 0:>7.1f} {m['p99_ms'] or 0:>7.1f}  {m['what']}")
    lines += ["", "CPU ms per login (median of the rounds): the machine's (everything: Dovecot, serve, "
              "the IMAP clients), and of long-lived processes by name"]
    labels = ["machine", *(label for _, label in CPU_GROUPS)]
    lines.append(f"{'set-up':<8} " + " ".join(f"{label:>12}" for label in labels))
    for mode, m in result["modes"].items():
        if m.get("cpu_ms"):
            lines.append(f"{mode:<8} " + " ".join(f"{m['cpu_ms'].get(label, 0):>12.2f}" for label in labels))
    lines.append("")
    for key, label in result.get("ratio_labels", {f"{a}/{b}": label for a, b, label in RATIOS}).items():
        a, b = key.split("/")
        ratio = result["ratios"][key]
        interval = result.get("intervals", {}).get(f"{a}/{b}")
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        if interval:
            shown += f", {CONFIDENCE:.0%} interval {interval[0]:.2f}-{interval[1]:.2f}x"
        rounds = result.get("round_ratios", {}).get(f"{a}/{b}") or []
        spread = (f"; by round: median {bench._median(rounds):.2f}x, {min(rounds):.2f}-{max(rounds):.2f}x"
                  if rounds else "")
        lines.append(f"ratio {label}: {shown} (target >= {TARGET_RATIO}x) {verdict(ratio, interval)}{spread}")
    for mode, m in result["modes"].items():
        if m["first_error"]:
            lines.append(f"{mode}: first error: {m['first_error'][:200]}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logins", type=int, default=300, help="logins per set-up and round (default 300)")
    p.add_argument("--rounds", type=int, default=10,
                   help="rounds (default 10: with 3 the ratios moved by +-0.08 between runs on a 2-core VM)")
    p.add_argument("--clients", type=int, default=8, help="concurrent IMAP clients (default 8)")
    p.add_argument("--workers", type=int, default=0,
                   help="serve --workers N (only for a serve that has the option; default: serve's own)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for the serve command line (repeatable)")
    p.add_argument("--policy-setting", action="append", default=[], metavar="LINE",
                   help="one more Dovecot setting for the policy set-up (repeatable)")
    p.add_argument("--dovecot-policy-defaults", action="store_true",
                   help="measure the policy set-up without the README's advice "
                        f"({'; '.join(RECOMMENDED_POLICY_SETTINGS)})")
    p.add_argument("--floor", action="store_true",
                   help="one more set-up: the Lua passdb calling a responder that only checks the hash "
                        "(benchmarks/floor_responder.py), and the two ratios that split the Lua gap")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"write results here (default {DEFAULT_JSON})")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = p.parse_args(argv)
    if min(args.logins, args.rounds, args.clients) < 1 or args.workers < 0:
        p.error("counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = missing_parts()
    if reason:
        print(f"serve_throughput: SKIP: {reason}")
        return 0
    from tests.support.common import new_server_dir

    workdir = new_server_dir("appauth-bench-serve-")
    site = None
    try:
        site = Site(workdir, args)
        result = measure(site, args)
    finally:
        if site is not None:
            site.close()
        if args.keep:
            bench.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()
    note = f"load average {load[0]:.2f} at the end on {os.cpu_count()} cores"
    result["policy_settings"] = policy_settings(args)
    print(render(result, note))
    data = {"timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": bench.machine_info(), "loadavg_end": load, **result}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    bench.log(f"JSON written to {args.json}")
    return 1 if any(m["errors"] or not m["logins"] for m in result["modes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
