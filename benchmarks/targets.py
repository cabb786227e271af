#!/usr/bin/env python3
"""Every row of issue 13's target table, measured side by side in one run.

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/targets.py [--reps 20] [--logins 300 --rounds 3 --clients 8]

Per-login rows (interleaved rounds of real logins started as Dovecot starts them, with
run.py's `spawn`; ratios to a bare `python -c pass` of the same interpreter, same run):

- `warm`: successful login, SQLite, SHA-512-crypt, audit with MaxMind and reverse DNS
  (local server) from a warm cache, the 13 list kinds, global client; the venv's own
  script (with `site`; shown, not judged: Dovecot runs the launcher), and `warm-launcher`:
  the same through the `-IS` launcher the install writes (`python -m dovecot_appauth.entry
  install`), which the target applies to;
- `warm-full`: as `warm` plus RDAP (local server), every source cached;
- `cold`, `cold-launcher`: the cache directory removed before each login, the local
  sources answering at once (MaxMind + DNS); judged through the launcher, as `warm`;
- `rss-cold-rdap`: peak RSS of a cold login with RDAP configured (run.py's RSS wrapper).

These standalone rows are measured with no `serve` running (one would keep the database
open, as no standalone site does); then the `-fast` rows (the fast path: the launcher
handing the login to a `serve` on a Unix socket), against a bare start measured in that
second phase.

Dovecot rows: one real Dovecot 2.3 (tests/support/dovecot.DovecotServer), IMAP logins
driven by run.py's `drive_imap_logins` (the one IMAP load driver of benchmarks/), three
checkpassword passdbs measured in rotating order each round: `reference` (a minimal
stdlib-Python checkpassword verifying the same SHA512-CRYPT hash,
benchmarks/reference_checkpassword.py), `noaudit` (dovecot-appauth, audit off) and `audit`
(audit on, warm cache). Ratios are logins/s against `reference`. Errors must be 0.

Exit status 1 when a login failed or a server could not start; a missed target is
reported (MISS), not an error. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # run.py: spawning, config, CLI set-up, the IMAP load driver
from tests.support.serve import Service  # serve as a subprocess (the tests' own)

REFERENCE = Path(__file__).resolve().parent / "reference_checkpassword.py"
DEFAULT_JSON = bench.ROOT / "benchmarks" / "results" / "targets.json"
# row -> (what, target text, comparison, limit); comparison "le": value <= limit, "ge": >=
ROWS: dict[str, tuple[str, str, str, float]] = {
    # the venv's own script runs `site` (and with it `os`): what the issue measured first, shown
    # for comparison; Dovecot runs the -IS launcher the install writes, judged on the next row
    "warm": ("warm successful login (MaxMind, DNS, 13 lists, global client), venv script", "info", "info", 0.0),
    "warm-launcher": ("  the same through the -IS launcher (the install's program)", "<= 2.0x bare", "le", 2.0),
    "warm-full": ("warm login, MaxMind + DNS + RDAP + 13 lists, public client", "<= 2.5x bare", "le", 2.5),
    "cold": ("cold login (empty cache, local sources at once), venv script", "info", "info", 0.0),
    "cold-launcher": ("  the same through the -IS launcher (the install's program)", "<= 4x bare", "le", 4.0),
    "rss-cold-rdap": ("peak RSS, cold login with RDAP configured", "<= 25 MiB", "le", 25.0),
    # Issue 13: "If the standalone program cannot reach the throughput targets, an optional
    # fast path may hand the request to a running serve": the Dovecot targets are judged on
    # the fast path's rows below; the standalone program's throughput is shown beside them
    "dovecot-noaudit": ("Dovecot 2.3 IMAP, no audit / reference, standalone (shown; judged: -fast)", "info", "info",
                        0.0),
    "dovecot-audit": ("Dovecot 2.3 IMAP, audit on, warm cache / reference, standalone (shown)", "info", "info", 0.0),
    # the same rows through the fast path ([fast_path] socket: the -IS launcher hands each
    # login to a running `serve --unix-socket` with the same config)
    "warm-fast": ("warm successful login, fast path", "<= 2.0x bare", "le", 2.0),
    "warm-full-fast": ("warm login + RDAP, public client, fast path", "<= 2.5x bare", "le", 2.5),
    "cold-fast": ("cold login (an address serve's cache never saw), fast path", "<= 4x bare", "le", 4.0),
    "rss-cold-rdap-fast": ("peak RSS, cold login with RDAP, fast path (the per-login process)", "<= 25 MiB", "le",
                           25.0),
    "dovecot-noaudit-fast": ("Dovecot 2.3 IMAP, no audit, fast path / reference", ">= 0.9x", "ge", 0.9),
    "dovecot-audit-fast": ("Dovecot 2.3 IMAP, audit on, warm cache, fast path / reference", ">= 0.8x", "ge", 0.8),
}
MODES = {
    "reference": "minimal stdlib-Python checkpassword, the same SHA512-CRYPT hash",
    "noaudit": "dovecot-appauth, audit off",
    "audit": "dovecot-appauth, audit on (MaxMind, DNS, lists), warm cache",
    "noaudit-fast": "dovecot-appauth, audit off, fast path (serve --unix-socket)",
    "audit-fast": "dovecot-appauth, audit on, warm cache, fast path (serve --unix-socket)",
}
SERVE_WORKERS = 2  # serve processes of a fast-path row's serve (the machine's 2 cores)


def with_fast_path(config: Path, name: str, sock: Path) -> Path:
    """A copy of `config` (same database, cache, lists) whose logins go to serve at `sock`."""
    path = config.with_name(name)
    path.write_text(config.read_text() + f"\n[fast_path]\nsocket = {bench.toml_str(str(sock))}\n")
    os.chmod(path, 0o644)
    return path


class Site:
    """Temp dir, local DNS and RDAP servers, the database (made with the CLI) and the configs."""

    def __init__(self, workdir: Path):
        from tests.support.localservers import LocalDns, LocalRdap

        self.workdir = workdir
        self.cleanup: list[Any] = []
        self.dns = LocalDns().start()
        self.cleanup.append(self.dns.stop)
        self.rdap = LocalRdap().start()
        self.cleanup.append(self.rdap.stop)
        self.lists = workdir / "lists"
        shutil.copytree(bench.LISTS_DIR, self.lists)
        (workdir / "db").mkdir()
        self.dsn = f"sqlite:///{workdir / 'db' / 'db.sqlite'}"

    def config(self, name: str, *, rdap: bool = False, audit: bool = True, dsn: str | None = None,
               log_file: Path | None = None, cache: Path | None = None) -> Path:
        path = bench.write_config(self.workdir / f"{name}.toml", dsn=dsn or self.dsn,
                                  cache_dir=cache or self.workdir / f"cache-{name}",
                                  log_file=log_file or self.workdir / "audit.log", lists_dir=self.lists,
                                  dns_port=self.dns.port, rdap_servers=[self.rdap.base("rdap")] if rdap else None)
        if not audit:
            text = path.read_text().replace("[audit]\nenabled = true", "[audit]\nenabled = false", 1)
            assert "enabled = false" in text
            path.write_text(text)
        return path

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception as e:  # cleaning up must not hide the results
                bench.log(f"cleanup: {e}")


def install_launcher(target: Path) -> Path:
    """The -IS launcher, written the way the README's install does."""
    target.parent.mkdir(exist_ok=True)
    res = subprocess.run([bench.PYTHON, "-m", "dovecot_appauth.entry", "install", str(target)],
                         capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        raise SystemExit(f"cannot write the launcher: {res.stderr.strip()}")
    return target


def measure_logins(site: Site, reps: int, helper: list[str]) -> tuple[dict[str, list[float]], dict[str, list[str]],
                                                                        list[float]]:
    """Interleaved rounds; returns ms samples and errors per scenario, and cold-RDAP RSS samples (MiB)."""
    password = site.accounts.password
    launcher = install_launcher(site.workdir / "bin" / "dovecot-appauth-checkpassword")
    env = bench.dovecot_env(bench.CLIENT_IP, user=bench.USER)
    request = bench.request_bytes(bench.USER, password)
    warm_cfg = site.config("warm")
    full_cfg = site.config("full", rdap=True)
    cold_cache = site.workdir / "cache-cold"
    cold_cfg = site.config("cold", cache=cold_cache)
    rss_cache = site.workdir / "cache-cold-rdap"
    rss_cfg = site.config("cold-rdap", rdap=True, cache=rss_cache)
    program = str(bench.PROGRAM)
    fast: dict[str, Path] = {}
    run_dir = site.workdir / "run"
    standalone: dict[str, tuple[list[str], Any]] = {
        "bare": ([bench.PYTHON, "-c", "pass"], None),
        "warm": ([program, "--config", str(warm_cfg), *helper], None),
        "warm-launcher": ([str(launcher), "--config", str(warm_cfg), *helper], None),
        "warm-full": ([program, "--config", str(full_cfg), *helper], None),
        "cold": ([program, "--config", str(cold_cfg), *helper], cold_cache),
        "cold-launcher": ([str(launcher), "--config", str(cold_cfg), *helper], cold_cache),
    }
    names = [*standalone, "bare-fast", "warm-fast", "warm-full-fast", "cold-fast"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, list[str]] = {name: [] for name in names}
    err_path = str(site.workdir / "stderr.txt")
    # cold through serve: serve keeps its cache open, so "empty" means an address it never
    # saw: each cold-fast login comes from the next address of 198.51.100.0/24 (allowed by
    # conf/lists/allow, in the test .mmdb; no PTR record: the local DNS answers NXDOMAIN at once)
    fresh = iter(f"198.51.100.{n}" for n in range(11, 250))

    def one(name: str, argv: list[str], empty: Path | None, rss: bool = False) -> bench.Sample:
        if empty is not None:
            shutil.rmtree(empty, ignore_errors=True)
        login_env = env
        if name.startswith("cold-") or name == "rss-cold-rdap-fast":
            address = next(fresh)
            login_env = bench.dovecot_env(address, user=bench.USER)
        sample = bench.spawn(argv, login_env, b"" if name.startswith("bare") else request, err_path, rss=rss)
        if sample.status != 0:
            first = sample.stderr.strip().splitlines()[:1]
            errors[name].append(f"exit {sample.status}: {first[0] if first else 'no stderr'}")
        elif "fast path:" in sample.stderr:  # serve did not take it: not a fast-path login
            errors[name].append(sample.stderr.strip().splitlines()[0])
        return sample

    def measure(scenarios: dict[str, tuple[list[str], Any]]) -> None:
        bench.log("warming up (2 untimed runs each)")
        for name, (argv, empty) in scenarios.items():
            for _ in range(2):
                one(name, argv, empty)
            errors[name].clear()
        bench.log(f"measuring {reps} interleaved rounds over {', '.join(scenarios)}")
        for _ in range(reps):
            for name, (argv, empty) in scenarios.items():
                samples[name].append(one(name, argv, empty).seconds * 1000)

    # The standalone rows first, with no serve running: a serve keeps the database and the
    # enrichment cache open, which spares each login's close the checkpoint that a
    # standalone site pays (store.close_for_exit), so the rows would not be the standalone's.
    measure(standalone)
    # the fast path: one serve per config (serve decides only logins of its own config),
    # measured against a bare start of its own phase
    run_dir.mkdir(exist_ok=True)
    for name, cfg in (("warm", warm_cfg), ("full", full_cfg)):
        sock = run_dir / f"{name}.sock"
        fast[name] = with_fast_path(cfg, f"{name}-fast.toml", sock)
        served = Service(fast[name], site.workdir / f"serve-{name}.log", "--workers", "1", unix_socket=sock)
        site.cleanup.append(served.stop)
    measure({
        "bare-fast": standalone["bare"],
        "warm-fast": ([str(launcher), "--config", str(fast["warm"]), *helper], None),
        "warm-full-fast": ([str(launcher), "--config", str(fast["full"]), *helper], None),
        "cold-fast": ([str(launcher), "--config", str(fast["warm"]), *helper], None),
    })
    bench.log(f"peak RSS of {reps} cold logins with RDAP configured via {bench.rss_wrapper()[0]}")
    rss_argv = [program, "--config", str(rss_cfg), *helper]
    rss = []
    errors["rss-cold-rdap"] = []
    for _ in range(reps):
        sample = one("rss-cold-rdap", rss_argv, rss_cache, rss=True)
        rss.append(sample.maxrss_kib / 1024)
    errors["rss-cold-rdap-fast"] = []
    rss_fast_argv = [str(launcher), "--config", str(fast["full"]), *helper]
    samples["rss-cold-rdap-fast"] = []
    for _ in range(reps):
        sample = one("rss-cold-rdap-fast", rss_fast_argv, None, rss=True)
        samples["rss-cold-rdap-fast"].append(sample.maxrss_kib / 1024)
    return samples, errors, rss


def reference_hash_file(db: Path, user: str, path: Path) -> Path:
    """`user<TAB>{CRYPT}$6$...`: the hash dovecot-appauth stores, for the reference program."""
    conn = sqlite3.connect(db)
    try:
        (stored,) = conn.execute("SELECT password FROM app_passwords WHERE uid = ?", (user,)).fetchone()
    finally:
        conn.close()
    path.write_text(f"{user}\t{stored}\n")
    os.chmod(path, 0o644)
    return path


def measure_dovecot(site: Site, args: argparse.Namespace) -> dict[str, Any]:
    """The three checkpassword passdbs through one Dovecot, rotating order each round."""
    from tests.support.common import dovecot_ids, new_server_dir
    from tests.support.dovecot import DovecotServer, checkpassword_passdb, dovecot_available

    reason = dovecot_available()
    if reason:
        return {"skipped": reason}
    basedir = new_server_dir("appauth-bench-targets-")
    site.cleanup.append(lambda: None if args.keep else shutil.rmtree(basedir, ignore_errors=True))
    uid, gid = dovecot_ids()
    # everything the program touches must be the dovecot user's (it runs as that user)
    (basedir / "db").mkdir()
    audit_log = basedir / "audit.log"
    audit_log.touch()
    os.chown(audit_log, uid, gid)
    cache = basedir / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, uid, gid)
    db = basedir / "db" / "db.sqlite"
    audit_cfg = site.config("dovecot-audit", dsn=f"sqlite:///{db}", log_file=audit_log, cache=cache)
    noaudit_cfg = site.config("dovecot-noaudit", dsn=f"sqlite:///{db}", log_file=audit_log, cache=cache, audit=False)
    for cfg in (audit_cfg, noaudit_cfg):
        shutil.copy(cfg, basedir / cfg.name)
    audit_cfg, noaudit_cfg = basedir / audit_cfg.name, basedir / noaudit_cfg.name
    password = bench.populate(audit_cfg, owner="dovecot").password
    hashes = reference_hash_file(db, bench.USER, basedir / "reference.hash")
    # ours: the -IS launcher the README's install writes (python -m dovecot_appauth.entry install)
    launcher = install_launcher(basedir / "bin" / "dovecot-appauth-checkpassword")
    os.chmod(launcher.parent, 0o755)
    run_dir = basedir / "run"
    run_dir.mkdir()
    os.chown(run_dir, uid, gid)
    fast_cfgs = {}
    for mode, cfg in (("noaudit-fast", noaudit_cfg), ("audit-fast", audit_cfg)):
        sock = run_dir / f"{mode}.sock"
        fast_cfgs[mode] = with_fast_path(cfg, f"dovecot-{mode}.toml", sock)
        log = basedir / f"serve-{mode}.log"
        served = Service(fast_cfgs[mode], log, "--workers", str(SERVE_WORKERS), unix_socket=sock, user="dovecot")
        site.cleanup.append(served.stop)
    passdbs = {
        "reference": checkpassword_passdb(None, str(REFERENCE), str(hashes), program=bench.PYTHON),
        "noaudit": checkpassword_passdb(noaudit_cfg, program=launcher),
        "audit": checkpassword_passdb(audit_cfg, program=launcher),
        "noaudit-fast": checkpassword_passdb(fast_cfgs["noaudit-fast"], program=launcher),
        "audit-fast": checkpassword_passdb(fast_cfgs["audit-fast"], program=launcher),
    }
    server = DovecotServer(basedir, passdbs["reference"], auth_penalty=False)
    site.cleanup.append(server.stop)
    bench.log(f"starting Dovecot (tests/support/dovecot.DovecotServer) in {basedir}")
    server.start()
    ips = [f"198.51.100.{10 + i}" for i in range(args.clients)]
    per_client = max(1, -(-args.logins // args.clients))
    modes = list(MODES)
    loads: dict[str, list[bench.ImapLoad]] = {m: [] for m in modes}
    failed: dict[str, str] = {}
    for r in range(args.rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            server.reconfigure(passdb=passdbs[mode])
            problem = bench.warm_up_logins(server, bench.USER, password, ips)
            if problem:
                failed.setdefault(mode, problem)
                bench.log(f"round {r + 1} {mode}: {problem}")
                continue
            mark = server.log_mark()
            load = bench.drive_imap_logins(server, bench.USER, password, ips, per_client)
            loads[mode].append(load)
            fell_back = [line for line in server.log_since(mark).splitlines() if "fast path:" in line]
            if fell_back:  # serve did not take these logins: the row would not measure the fast path
                failed.setdefault(mode, f"{len(fell_back)} logins not taken by serve: {fell_back[0][-200:]}")
            bench.log(f"round {r + 1} {mode}: {load.describe()}")
    out: dict[str, Any] = {"clients": args.clients, "logins_per_client": per_client, "rounds": args.rounds,
                           "modes": {}}
    for mode in modes:
        done = loads[mode]
        logins = sum(len(load.latencies_ms) for load in done)
        wall = sum(load.wall_s for load in done)
        first_error = next((e for load in done for e in load.errors), None) or failed.get(mode)
        out["modes"][mode] = {
            "what": MODES[mode], "logins": logins, "rounds": len(done),
            "errors": sum(load.error_count for load in done) + (1 if mode in failed else 0),
            "logins_per_s": logins / wall if wall else 0.0, "round_rates": [round(load.rate, 2) for load in done],
            "first_error": first_error,
        }
    return out


def judge(value: float | None, row: str) -> str:
    if value is None:
        return "ERROR"
    _, _, how, limit = ROWS[row]
    if how == "info":
        return "INFO"
    ok = value <= limit if how == "le" else value >= limit
    return "PASS" if ok else "MISS"


def table(samples: dict[str, list[float]], errors: dict[str, list[str]], rss: list[float],
          dovecot: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    med = {name: bench._median(values) for name, values in samples.items()}
    bare = med["bare"]
    rows: dict[str, dict[str, Any]] = {}
    for name in ("warm", "warm-launcher", "warm-full", "cold", "cold-launcher", "warm-fast", "warm-full-fast",
                 "cold-fast"):
        base = med.get("bare-fast") if name.endswith("-fast") else bare  # the bare start of its phase
        ratio = med[name] / base if med[name] and base else None
        rows[name] = {"measured": f"{med[name]:.1f} ms" if med[name] else "-", "value": ratio,
                      "shown": f"{ratio:.2f}x bare" if ratio else "-", "errors": len(errors[name])}
    peak = max(rss) if rss else None
    rows["rss-cold-rdap"] = {"measured": f"median {bench._median(rss) or 0:.1f} MiB" if rss else "-", "value": peak,
                             "shown": f"max {peak:.1f} MiB" if peak else "-", "errors": len(errors["rss-cold-rdap"])}
    fast_rss = samples.get("rss-cold-rdap-fast") or []
    peak = max(fast_rss) if fast_rss else None
    rows["rss-cold-rdap-fast"] = {"measured": f"median {bench._median(fast_rss) or 0:.1f} MiB" if fast_rss else "-",
                                  "value": peak, "shown": f"max {peak:.1f} MiB" if peak else "-",
                                  "errors": len(errors.get("rss-cold-rdap-fast", []))}
    modes = dovecot.get("modes")
    for row, mode in (("dovecot-noaudit", "noaudit"), ("dovecot-audit", "audit"),
                      ("dovecot-noaudit-fast", "noaudit-fast"), ("dovecot-audit-fast", "audit-fast")):
        if not modes:
            rows[row] = {"measured": "-", "value": None, "shown": "-", "errors": 0,
                         "note": dovecot.get("skipped", "not run")}
            continue
        ref, ours = modes["reference"], modes[mode]
        ratio = ours["logins_per_s"] / ref["logins_per_s"] if ref["logins_per_s"] else None
        rows[row] = {"measured": f"{ours['logins_per_s']:.1f} vs {ref['logins_per_s']:.1f} logins/s",
                     "value": ratio, "shown": f"{ratio:.2f}x" if ratio else "-",
                     "errors": ours["errors"] + ref["errors"]}
    lines = [f"{'row':<20} {'what':<66} {'measured':<26} {'ratio':<15} {'target':<13} result"]
    for row, (what, target, _, _) in ROWS.items():
        r = rows[row]
        r["target"] = target
        r["result"] = "SKIP" if r.get("note") else ("ERROR" if r["errors"] else judge(r["value"], row))
        lines.append(f"{row:<20} {what:<66} {r['measured']:<26} {r['shown']:<15} {target:<13} {r['result']}")
    notes = [f"bare python -c pass: {bare or 0:.1f} ms (median of {len(samples['bare'])}), "
             f"{med.get('bare-fast') or 0:.1f} ms in the fast-path phase (serve running)"]
    for name, errs in errors.items():
        if errs:
            notes.append(f"{name}: {len(errs)} error(s), first: {errs[0]}")
    if modes:
        for mode, m in modes.items():
            notes.append(f"dovecot {mode}: {m['logins']} logins, {m['errors']} errors, {m['logins_per_s']:.1f}/s, "
                         f"rounds {m['round_rates']}" + (f"; first error: {m['first_error'][:160]}"
                                                          if m["first_error"] else ""))
    for row, r in rows.items():
        if r.get("note"):
            notes.append(f"{row}: SKIP: {r['note']}")
    return "\n".join([*lines, "", "notes:", *(f"  {n}" for n in notes)]), {row: rows[row] for row in ROWS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20, help="runs per per-login scenario (default 20)")
    p.add_argument("--logins", type=int, default=300, help="IMAP logins per passdb and round (default 300)")
    p.add_argument("--rounds", type=int, default=3, help="Dovecot rounds (default 3)")
    p.add_argument("--clients", type=int, default=8, help="concurrent IMAP clients (default 8)")
    p.add_argument("--no-dovecot", action="store_true", help="per-login rows only")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"write results here (default {DEFAULT_JSON})")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs")
    args = p.parse_args(argv)
    if min(args.reps, args.logins, args.rounds, args.clients) < 1:
        p.error("counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.access(bench.PROGRAM, os.X_OK):
        raise SystemExit(f"{bench.PROGRAM} missing: install the package into this venv")
    workdir = Path(tempfile.mkdtemp(prefix="appauth-targets-", dir=bench.shared_tmp()))
    os.chmod(workdir, 0o755)
    helper = [bench.REPLY_HELPER] if os.access(bench.REPLY_HELPER, os.X_OK) else []
    load_start = os.getloadavg()
    started = time.monotonic()
    site = None
    try:
        site = Site(workdir)
        bench.log(f"work dir {workdir}; creating the SQLite database with the CLI")
        site.accounts = bench.populate(site.config("warm"))
        samples, errors, rss = measure_logins(site, args.reps, helper)
        dovecot = {"skipped": "--no-dovecot"} if args.no_dovecot else measure_dovecot(site, args)
    finally:
        if site is not None:
            site.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text, rows = table(samples, errors, rss, dovecot)
    load_end = os.getloadavg()
    print(f"issue 13 targets, one run: Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end, {time.monotonic() - started:.0f} s; "
          f"reply helper: {helper[0] if helper else 'none'}\n")
    print(text)
    data = {"timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": bench.machine_info(), "loadavg_end": load_end, "reps": args.reps, "rows": rows,
            "samples_ms": samples, "rss_cold_rdap_mib": rss, "dovecot": dovecot}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    bench.log(f"JSON written to {args.json}")
    return 1 if any(r["result"] == "ERROR" for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
