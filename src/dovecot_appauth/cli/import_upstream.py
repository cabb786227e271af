"""`import-upstream`: the command line around `migrate.py` (registered by `cli/main.py`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any


def cmd_import_upstream(args: argparse.Namespace) -> int:
    from .base import CliError
    from .migrate import MigrationError, behaviour_changes, read_upstream, render, translate, write_private

    source = os.path.abspath(args.upstream)
    try:
        migration = translate(read_upstream(source), os.path.dirname(source))
    except MigrationError as e:
        raise CliError(str(e)) from None
    text = render(migration, source)
    if args.output:
        if os.path.exists(args.output) and not args.force:
            raise CliError(f"{args.output} exists (use --force to overwrite)")
        write_private(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for note in migration.notes:
        print(f"note: {note}", file=sys.stderr)
    if migration.untranslated:
        print("not translated:", file=sys.stderr)
        for item in migration.untranslated:
            print(f"  - {item}", file=sys.stderr)
    print("behaviour changes from upstream:", file=sys.stderr)
    for change in behaviour_changes(migration.config):
        print(f"  - {change}", file=sys.stderr)
    status = _check_config(text, args.output)
    if args.check_db:
        status = max(status, _check_db(text, args.output or source))
    return status


def _check_config(text: str, written: str | None) -> int:
    """`check-config` (without the database) on the translated config: 1 when it has errors."""
    import tempfile

    from .checks import check_all
    from .migrate import write_private

    with tempfile.TemporaryDirectory(prefix="appauth-import-") as tmp:
        path = written
        if path is None:  # printed to stdout: check a private copy
            path = os.path.join(tmp, "config.toml")
            write_private(path, text)
        problems = check_all(path, check_database=False)
    errors = sum(1 for p in problems if p.level == "error")
    print("check-config on the translated config:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    print(f"check-config: {errors} error(s), {len(problems) - errors} warning(s)"
          + ("; fix them before Dovecot uses this config" if errors else ""), file=sys.stderr)
    return 1 if errors else 0


def _check_db(text: str, where: str) -> int:
    import tomllib

    from ..config import ConfigError, parse
    from .checks import check_database_schema

    try:
        config = parse(tomllib.loads(text), where)
    except ConfigError as e:
        print(f"database: cannot check, the translated config has errors: {e}", file=sys.stderr)
        return 1
    problems = check_database_schema(config)
    for p in problems:
        print(f"database: {p}", file=sys.stderr)
    if any(p.level == "error" for p in problems):
        return 1
    print("database: schema is the one expected" + (" (run upgrade-db for the warnings)" if problems else ""),
          file=sys.stderr)
    return 0


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("import-upstream", cmd_import_upstream,
                "translate the upstream dovecot_web_auth config.toml into ours; list what cannot be translated",
                "dovecot-appauth import-upstream /opt/dovecot_web_auth/config.toml "
                "--output /etc/dovecot-appauth/config.toml --check-db")
    p.add_argument("upstream", metavar="UPSTREAM_CONFIG", help="the upstream app's config.toml")
    p.add_argument("--output", metavar="FILE", help="write the config to FILE (0640) instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite FILE")
    p.add_argument("--check-db", action="store_true",
                   help="connect to the database and check that its schema is the one expected")
