#!/usr/bin/env python3
"""Compare two benchmark results: `benchmarks/compare.py OLD.json NEW.json`.

Prints, per scenario, the old and new medians, the delta (absolute and relative), the
ratios to the bare interpreter of each run (the figure that survives a change of machine
or load) and the PASS/MISS change. Warns when the runs come from different machines,
Python versions or a different number of CPUs. Exit status 0 (a report, not a gate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: {e}") from None
    if not isinstance(data, dict) or "scenarios" not in data:
        raise SystemExit(f"{path}: not a benchmarks/run.py result (no 'scenarios')")
    return data


def _num(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    lines = []
    om, nm = old.get("machine", {}), new.get("machine", {})
    lines.append(f"old: {old.get('timestamp')}  Python {om.get('python')}  nproc {om.get('nproc')}  "
                 f"src {om.get('code', {}).get('src_sha256')}  {'quick' if old.get('quick') else 'full'}")
    lines.append(f"new: {new.get('timestamp')}  Python {nm.get('python')}  nproc {nm.get('nproc')}  "
                 f"src {nm.get('code', {}).get('src_sha256')}  {'quick' if new.get('quick') else 'full'}")
    for key in ("python", "nproc", "hostname", "cpu", "executable"):
        if om.get(key) != nm.get(key):
            lines.append(f"warning: {key} differs ({om.get(key)!r} -> {nm.get(key)!r}): compare the ratios, not ms")
    if old.get("reply_helper") != new.get("reply_helper"):
        lines.append("warning: one run used Dovecot's reply helper and the other did not")
    lines.append("")
    cols = ["scenario", "unit", "old", "new", "delta", "delta %", "old x bare", "new x bare", "result"]
    rows = []
    names = list(new["scenarios"]) + [n for n in old["scenarios"] if n not in new["scenarios"]]
    for name in names:
        o, n = old["scenarios"].get(name), new["scenarios"].get(name)
        unit = (n or o or {}).get("unit", "ms")
        om_, nm_ = (o or {}).get("median"), (n or {}).get("median")
        delta = nm_ - om_ if om_ is not None and nm_ is not None else None
        pct = delta / om_ if delta is not None and om_ else None
        status = f"{(o or {}).get('status', '-')} -> {(n or {}).get('status', '-')}"
        rows.append([name, unit, _num(om_), _num(nm_), _num(delta, "+.1f"), _num(pct, "+.1%"),
                     _num((o or {}).get("ratio_bare"), ".2f", "x"), _num((n or {}).get("ratio_bare"), ".2f", "x"),
                     status])
        for key, label in (("logins_per_s", "logins/s"), ("p99_ms", "p99 ms")):
            ov, nv = (o or {}).get("extra", {}).get(key), (n or {}).get("extra", {}).get(key)
            if ov is not None or nv is not None:
                d = nv - ov if ov is not None and nv is not None else None
                rows.append([f"  {label}", "", _num(ov), _num(nv), _num(d, "+.1f"),
                             _num(d / ov if d is not None and ov else None, "+.1%"), "", "", ""])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in (0, 1, 8) else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    lines += [fmt(cols), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print the deltas between two benchmarks/run.py JSON results.")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    args = p.parse_args(argv)
    print(compare(load(args.old), load(args.new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
