#!/usr/bin/env python3
"""What a login costs in CPU instructions (valgrind's callgrind), the noise-free comparison.

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/instructions.py [--program PATH] [--json FILE]

Wall-clock ratios move with whatever else the machine does (the bare interpreter start
itself varied from 14 to 20 ms between runs on the shared test machine). Instruction
counts do not: the same program, inputs and environment give the same count to within a
fraction of a percent, so two versions of the code can be compared on a busy machine.
They are not time (cache misses, syscalls and page faults cost more than their
instructions), so `run.py` stays the judge of the targets; this is for A/B.

Sets up the same temp environment as benchmarks/run.py (SQLite database made with the CLI,
test MaxMind files, example lists, local DNS server), warms the caches, then counts each
scenario once under `valgrind --tool=callgrind` (three runs for `warm`, to show the
spread). The reply helper is not appended: callgrind's count ends at an exec, so the
program writes fd 4 itself (to /dev/null) and exits. Needs valgrind (Debian: valgrind).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

COLLECTED = re.compile(r"==\d+== Collected : (\d+)")


def count(argv: list[str], env: dict[str, str], request: bytes, err: str, expect: int) -> int:
    """Instructions of one run of argv under callgrind; the exit status must be `expect`."""
    valgrind = shutil.which("valgrind") or "valgrind"
    sample = bench.spawn([valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv], env, request, err)
    if sample.status != expect:
        raise SystemExit(f"{argv[0]} exited {sample.status}, expected {expect}: {sample.stderr.strip()[-500:]}")
    found = COLLECTED.search(sample.stderr)
    if not found:
        raise SystemExit(f"no instruction count from callgrind: {sample.stderr.strip()[-500:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--program", type=Path, default=bench.PROGRAM,
                   help="the checkpassword program to count; default: the installed one")
    p.add_argument("--json", type=Path, help="write the counts here as JSON")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    counts: dict[str, list[int]] = {}
    with bench.small_site("appauth-instructions-") as site:
        err = str(site.workdir / "stderr.txt")
        program = [str(args.program), "--config", str(site.config)]
        scenarios = [
            # name, argv, user, password, expected status, runs
            ("bare", [bench.PYTHON, "-c", "pass"], bench.USER, "", 0, 1),
            ("bare-isolated", [bench.PYTHON, "-I", "-S", "-c", "pass"], bench.USER, "", 0, 1),
            ("warm", program, bench.USER, site.accounts.password, 0, 3),
            *((name, program, bench.USERS_BY_COUNT[n], bench.WRONG_PASSWORD, 1, 1)
              for n, name in bench.WRONG_BY_COUNT.items()),
            ("unknown", program, bench.UNKNOWN_USER, site.accounts.password, 1, 1),
        ]
        for name, cmd, user, password, expect, runs in scenarios:
            env = bench.dovecot_env(bench.CLIENT_IP, user=user)
            request = bench.request_bytes(user, password)
            if cmd is program:  # fill .pyc files, the config, list and enrichment caches first
                for _ in range(2):
                    bench.spawn(cmd, env, request, err)
            counts[name] = [count(cmd, env, request, err, expect) for _ in range(runs)]

    bare = min(counts["bare"])
    isolated = min(counts["bare-isolated"])
    print(f"instructions per login (callgrind), program {args.program}")
    print(f"{'scenario':<14} {'instructions':>14} {'x bare':>8} {'x -I -S':>8}  spread")
    for name, values in counts.items():
        low = min(values)
        spread = f"{(max(values) - low) / low:.2%} over {len(values)}" if len(values) > 1 else ""
        print(f"{name:<14} {low:>14,} {low / bare:>7.2f}x {low / isolated:>7.2f}x  {spread}")
    unknown = min(counts["unknown"])
    ratios = {str(n): min(counts[name]) / unknown for n, name in bench.WRONG_BY_COUNT.items()}
    print("\n" + bench.render_ratios(ratios, "instructions; target 0.90-1.10"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"program": str(args.program), "python": sys.version.split()[0],
                                         "instructions": counts, "timing_ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
