#!/usr/bin/env python3
"""CPU time of the RDAP entity walk (sources/rdap.py `entity_handles`) for large answers.

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/rdap_entities.py [--sizes 1000,5000,20000] [--old]

An RDAP network object may carry thousands of entities (nested contacts, maintainers);
the walk runs inside the login's audit deadline. Each answer here has registrants with
99 contacts each plus one contact shared by all (a repeated handle), as JSON decoding
gives it. `--old` also times the list-based walk it replaced (each new handle compared
with every handle kept so far), for the figure in the README. Process CPU time, best of 3:
still noisy on a shared machine, so compare the growth, not the digits.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dovecot_appauth.audit.sources.rdap import entity_handles


def answer(count: int) -> list[dict[str, Any]]:
    tops = max(1, count // 100)
    return [{"handle": f"ORG-{i}", "entities": [{"handle": f"C-{i}-{j}"} for j in range(99)]
             + [{"handle": "ABUSE-SHARED"}]} for i in range(tops)]


def old_walk(entities: Any, out: list[str]) -> list[str]:
    """The walk before issue 15 (quadratic: `handle not in out` on a list)."""
    for ent in entities or ():
        if not isinstance(ent, dict):
            continue
        handle = ent.get("handle")
        if isinstance(handle, str) and handle not in out:
            out.append(handle)
        old_walk(ent.get("entities"), out)
    return out


def cpu_seconds(func: Any, *args: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        func(*args)
        best = min(best, time.process_time() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000,20000", help="entities per answer, comma-separated")
    p.add_argument("--old", action="store_true", help="also time the list-based walk it replaced")
    args = p.parse_args(argv)
    header = f"{'entities':>9}  {'handles':>8}  {'walk (ms CPU)':>13}"
    print(header + (f"  {'old walk (ms CPU)':>17}" if args.old else ""))
    for size in (int(s) for s in args.sizes.split(",")):
        entities = answer(size)
        total = sum(1 + len(e["entities"]) for e in entities)
        handles = len(entity_handles(entities))
        line = f"{total:>9}  {handles:>8}  {cpu_seconds(entity_handles, entities) * 1000:>13.1f}"
        if args.old:
            line += f"  {cpu_seconds(lambda e: old_walk(e, []), entities) * 1000:>17.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
