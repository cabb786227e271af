#!/usr/bin/env python3
"""Where a login's start-up time goes: `python -X importtime` over a real login.

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/importtime.py [--scenario warm|wrong|unknown|cold] [--runs 5]
                                                          [--top 20] [--raw FILE] [--json FILE]

Sets up the same temp environment as benchmarks/run.py (SQLite database made with the CLI,
test MaxMind files, example lists, local DNS server), warms the enrichment cache, then runs
the console script `dovecot-appauth-checkpassword` under `-X importtime` as Dovecot would
start it (fd 3 request, Dovecot's environment). Each module's self and cumulative times are
the median over --runs runs; the top N by cumulative and by self time are printed, with
the heavy modules the per-login path must not load (issue 5) flagged.

-X importtime itself slows imports down (roughly 1.3-2x); read the figures as shares, and
measure any change with benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench
from tests.support.common import wrong_password  # run put the checkout on sys.path

# Modules a warm login must not import (issue 5, part 3), and other known heavy ones.
HEAVY = ("sqlalchemy", "geoip2", "maxminddb", "ipwhois", "dns", "diskcache", "urllib.request", "http.client",
         "email", "ssl", "pymysql", "argparse", "asyncio", "concurrent.futures", "importlib.metadata")


def parse_importtime(text: str) -> list[tuple[str, int, int, int]]:
    """[(module, self_us, cumulative_us, depth)] in import order from -X importtime's stderr."""
    out = []
    for line in text.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        raw = parts[2]
        name = raw.strip()
        depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
        out.append((name, int(parts[0]), int(parts[1]), depth))
    return out


def shebang_options(script: Path) -> list[str]:
    """Interpreter options on the script's #! line (e.g. `-IS`), so they apply under -X importtime too."""
    with open(script, "rb") as f:
        first = f.readline().decode(errors="replace")
    parts = first[2:].split() if first.startswith("#!") else []
    return [p for p in parts[1:] if p.startswith("-")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("warm", "wrong", "unknown", "cold"), default="warm")
    p.add_argument("--runs", type=int, default=5, help="runs to take the median of (default 5, max 50)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--raw", type=Path, help="write the last run's raw -X importtime output here")
    p.add_argument("--json", type=Path, help="write the per-module medians here")
    p.add_argument("--no-reply-helper", action="store_true")
    p.add_argument("--program", type=Path, default=bench.PROGRAM,
                   help="the checkpassword program (a Python script) to run; default: the installed one")
    args = p.parse_args(argv)
    runs = max(1, min(args.runs, 50))

    with bench.small_site("appauth-importtime-") as site:
        cfg, cache, accounts = site.config, site.cache, site.accounts
        user, password, expect = {
            "warm": (bench.USER, accounts.password, 0),
            "cold": (bench.USER, accounts.password, 0),
            "wrong": (bench.USER, wrong_password(accounts.password), 1),
            "unknown": (bench.UNKNOWN_USER, accounts.password, 1),
        }[args.scenario]
        helper = [] if args.no_reply_helper or not os.access(bench.REPLY_HELPER, os.X_OK) else [bench.REPLY_HELPER]
        program = [str(args.program), "--config", str(cfg), *helper]
        env = bench.dovecot_env(bench.CLIENT_IP, user=user)
        request = bench.request_bytes(user, password)
        err = str(site.workdir / "stderr.txt")
        # warm the enrichment and list caches, and check the login works as expected
        plain_ms = []
        for _ in range(max(3, runs)):
            if args.scenario == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            sample = bench.spawn(program, env, request, err)
            if sample.status != expect:
                raise SystemExit(f"login exited {sample.status}, expected {expect}: {sample.stderr.strip()}")
            plain_ms.append(sample.seconds * 1000)
        per_module: dict[str, dict[str, list[int]]] = {}
        order: list[tuple[str, int]] = []
        totals = []
        raw = ""
        for _ in range(runs):
            if args.scenario == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            # python [its shebang options] -X importtime SCRIPT: the script run by the same interpreter
            sample = bench.spawn([bench.PYTHON, *shebang_options(args.program), "-X", "importtime", *program],
                                 env, request, err)
            if sample.status != expect:
                raise SystemExit(f"login exited {sample.status}, expected {expect}")
            raw = sample.stderr
            rows = parse_importtime(raw)
            totals.append(sample.seconds * 1000)
            for name, self_us, cum_us, depth in rows:
                entry = per_module.setdefault(name, {"self": [], "cum": []})
                entry["self"].append(self_us)
                entry["cum"].append(cum_us)
                if len(entry["self"]) == 1:
                    order.append((name, depth))

    depth_of = dict(order)
    med = {n: (statistics.median(v["self"]), statistics.median(v["cum"]), len(v["self"]))
           for n, v in per_module.items()}
    top_level_ms = sum(c for n, (_, c, _) in med.items() if depth_of[n] == 0) / 1000
    self_total_ms = sum(s for s, _, _ in med.values()) / 1000
    print(f"{args.scenario} login under -X importtime, median of {runs} runs: "
          f"{len(med)} modules imported, imports {top_level_ms:.1f} ms (sum of top-level cumulative), "
          f"wall {statistics.median(totals):.1f} ms with -X importtime, "
          f"{statistics.median(plain_ms):.1f} ms without")
    heavy: dict[str, int] = {}
    for n in med:
        for h in HEAVY:
            if n == h or n.startswith(h + "."):
                heavy[h] = heavy.get(h, 0) + 1
    print("heavy modules imported: " + (", ".join(f"{h} ({c} modules)" if c > 1 else h
                                                  for h, c in sorted(heavy.items())) or "none"))
    if args.scenario == "cold":
        print("(sources run in threads on a cache miss: their import lines interleave, so nesting and self "
              "times of modules imported there are approximate)")
    for title, key in (("cumulative", 1), ("self", 0)):
        print(f"\ntop {args.top} by {title} time (ms; median over runs; depth = nesting in the import tree)")
        print(f"{'cumul':>8} {'self':>8} {'share':>6}  depth  module")
        ranked = sorted(med.items(), key=lambda kv: kv[1][key], reverse=True)[: args.top]
        for name, (self_us, cum_us, _) in ranked:
            share = (cum_us if key == 1 else self_us) / 1000 / (top_level_ms or 1)
            print(f"{cum_us / 1000:8.2f} {self_us / 1000:8.2f} {share:6.1%}  {depth_of[name]:>5}  {name}")
    print(f"\n(sum of self times {self_total_ms:.1f} ms)")
    if args.raw:
        args.raw.write_text(raw)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "scenario": args.scenario, "runs": runs, "python": sys.version.split()[0],
            "wall_ms_importtime": statistics.median(totals), "wall_ms_plain": statistics.median(plain_ms),
            "modules": {n: {"self_us": s, "cumulative_us": c, "depth": depth_of[n]} for n, (s, c, _) in med.items()},
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
