#!/usr/bin/env python3
"""Write conf/config.toml, the commented example, from the table of fields in config.py.

    python scripts/write-config-example.py           # rewrite conf/config.toml
    python scripts/write-config-example.py --check   # exit 1 when it differs (as the test does)

The example is never edited by hand: a key, its default or its help changes in
`dovecot_appauth.config.FIELDS` (one row per key), then this script runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dovecot_appauth.config import example_toml

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "config.toml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file differs")
    args = p.parse_args(argv)
    text = example_toml()
    if args.check:
        if EXAMPLE.read_text() != text:
            print(f"{EXAMPLE} differs from the table of fields: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    EXAMPLE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
