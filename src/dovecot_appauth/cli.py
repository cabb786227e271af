"""`dovecot-appauth`: the admin command line.

Each command parses its arguments, calls one or two library functions (schema,
hashing, config, lists, enrich, rules, cache) and prints. Logic belongs in those
modules, not here. Listings take `--json`. Errors are one line on stderr and status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .config import Config, ConfigError, config_path, load

EPILOG_MAIN = """examples:
  dovecot-appauth init-db
  dovecot-appauth password create alice@example.com --comment "Thunderbird laptop"
  dovecot-appauth password list alice@example.com
  dovecot-appauth login-test alice@example.com --service imap --ip 198.51.100.7
  dovecot-appauth check-config
"""


class CliError(Exception):
    """A problem to report as one line, exit status 1."""


def _load_config(args: argparse.Namespace) -> Config:
    path = config_path(args.config)
    try:
        return load(path)
    except ConfigError as e:
        raise CliError(f"configuration {path}: {e}") from None


def _engine(config: Config):
    from .schema import make_engine

    return make_engine(config.database.dsn, config.database.connect_timeout)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# --- init-db -----------------------------------------------------------------------


def cmd_init_db(args: argparse.Namespace) -> int:
    config = _load_config(args)
    from .dsn import parse_dsn

    dsn = parse_dsn(config.database.dsn)
    if dsn.dialect == "sqlite" and dsn.path:
        directory = os.path.dirname(os.path.abspath(dsn.path))
        os.makedirs(directory, exist_ok=True)
    from .schema import init_db

    created = init_db(_engine(config))
    where = dsn.redacted()
    if created:
        print(f"created {', '.join(created)} in {where}")
    else:
        print(f"schema already complete in {where}")
    if dsn.dialect == "sqlite" and dsn.path and args.owner:
        _chown_sqlite(dsn.path, args.owner)
    return 0


def _chown_sqlite(path: str, owner: str) -> None:
    """The checkpassword program runs as Dovecot's auth user: it must write the file and its dir."""
    import shutil

    directory = os.path.dirname(os.path.abspath(path))
    for target in (directory, path, path + "-wal", path + "-shm"):
        if os.path.exists(target):
            shutil.chown(target, user=owner, group=None)
    print(f"gave {path} and its directory to {owner}")


# --- password ------------------------------------------------------------------------


def cmd_password_create(args: argparse.Namespace) -> int:
    config = _load_config(args)
    from .hashing import generate_password, hash_password
    from .schema import create_password

    password = generate_password(config.auth.password_length, config.auth.password_chunk)
    hashed = hash_password(password, config.auth.hash_scheme, rounds=config.auth.sha512_rounds)
    password_id = create_password(_engine(config), args.user, hashed, args.comment)
    if args.json:
        _print_json({"id": password_id, "uid": args.user, "comment": args.comment, "password": password})
    else:
        print(f"app password #{password_id} for {args.user}: {password}")
        print("It is shown only this once; the dashes are part of it.")
    return 0


def _format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def cmd_password_list(args: argparse.Namespace) -> int:
    config = _load_config(args)
    from .schema import list_passwords

    items = list_passwords(_engine(config), args.user, include_revoked=not args.active)
    if args.json:
        _print_json([item.to_json() for item in items])
        return 0
    if not items:
        print("no app passwords" + (f" for {args.user}" if args.user else ""))
        return 0
    rows = []
    for item in items:
        if item.last_used:
            where = item.last_ip or ""
            if item.last_rdns and item.last_rdns != "<>":
                where += f" ({item.last_rdns})"
            place = "; ".join(x for x in (item.last_loc, item.last_isp) if x)
            last = f"{item.last_used[:19]} {item.last_service or ''} {where}".strip()
            if place:
                last += f" [{place}]"
        else:
            last = "never used"
        rows.append([
            str(item.id), item.uid, item.created[:19], item.comment or "",
            last, f"revoked {item.deleted[:19]}" if item.deleted else "active",
        ])
    print(_format_table(["ID", "USER", "CREATED (UTC)", "COMMENT", "LAST USE (UTC)", "STATE"], rows))
    return 0


def cmd_password_revoke(args: argparse.Namespace) -> int:
    config = _load_config(args)
    from .schema import revoke_password

    if not revoke_password(_engine(config), args.id):
        raise CliError(f"app password #{args.id} does not exist or is already revoked")
    print(f"revoked app password #{args.id}")
    return 0


# --- login-test ------------------------------------------------------------------------


def cmd_login_test(args: argparse.Namespace) -> int:
    from .logintest import run_login_test

    password = "" if args.lookup else _read_password(args.user)
    result = run_login_test(
        user=args.user,
        password=password,
        config=config_path(args.config),
        service=args.service,
        remote_ip=args.ip,
        remote_port=args.port,
        lookup=args.lookup,
        program=args.program,
        audit_chain=args.audit_chain,
    )
    if args.json:
        _print_json(result.to_json())
    else:
        print(result.describe())
    return 0 if result.exit_code in (0, 2) else 1


def _read_password(user: str) -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"password for {user}: ")
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


# --- check-config ------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from .checks import check_all

    path = config_path(args.config)
    problems = check_all(path, check_database=not args.no_database)
    for problem in problems:
        print(problem)
    errors = sum(1 for p in problems if p.level == "error")
    warnings = len(problems) - errors
    print(f"{path}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="configuration file (default: $DOVECOT_APPAUTH_CONFIG or /etc/dovecot-appauth/config.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="dovecot-appauth",
        description="Manage app passwords and the login audit of dovecot-appauth.",
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str, example: str,
                parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common],
        )
        p.set_defaults(func=func)
        return p

    p = command("init-db", cmd_init_db, "create the tables and the view (idempotent)",
                "dovecot-appauth init-db --owner dovecot")
    p.add_argument("--owner", metavar="USER", help="SQLite: give the file and its directory to USER (e.g. dovecot)")

    pw = sub.add_parser("password", help="create, list and revoke app passwords",
                        description="create, list and revoke app passwords", parents=[common],
                        epilog="examples:\n  dovecot-appauth password create alice@example.com --comment Phone\n"
                               "  dovecot-appauth password list alice@example.com\n"
                               "  dovecot-appauth password revoke 12",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pw_sub = pw.add_subparsers(dest="password_command", metavar="ACTION")
    pw_sub.required = True
    p = command("create", cmd_password_create, "create an app password and print it once",
                'dovecot-appauth password create alice@example.com --comment "Phone"', pw_sub)
    p.add_argument("user", help="the user name as Dovecot sees it")
    p.add_argument("--comment", help="what the password is for (shown in the webmail plugin)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("list", cmd_password_list, "list app passwords with their last use (never hashes)",
                "dovecot-appauth password list alice@example.com --json", pw_sub)
    p.add_argument("user", nargs="?", help="only this user (case-insensitive)")
    p.add_argument("--active", action="store_true", help="leave out revoked passwords")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("revoke", cmd_password_revoke, "revoke an app password (soft delete, as the plugin does)",
                "dovecot-appauth password revoke 12", pw_sub)
    p.add_argument("id", type=int, help="the password's id (see password list)")

    p = command("login-test", cmd_login_test,
                "run the checkpassword program exactly as Dovecot does and explain the result",
                "echo 'xxxx-xxxx-xxxx-xxxx' | dovecot-appauth login-test alice@example.com --ip 198.51.100.7")
    p.add_argument("user")
    p.add_argument("--service", default="imap", help="SERVICE as Dovecot sets it (default: imap)")
    p.add_argument("--ip", default="127.0.0.1", help="client IP (TCPREMOTEIP; default 127.0.0.1)")
    p.add_argument("--port", type=int, default=54321, help="client port (TCPREMOTEPORT)")
    p.add_argument("--lookup", action="store_true", help="a userdb lookup (AUTHORIZED=1) instead of a login")
    p.add_argument("--audit-chain", action="store_true", help="run the program with --audit-chain")
    p.add_argument("--program", help="checkpassword program (default: the one installed next to this command)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("check-config", cmd_check_config,
                "validate the config, every list file, the sources and the database schema",
                "dovecot-appauth check-config --config /etc/dovecot-appauth/config.toml")
    p.add_argument("--no-database", action="store_true", help="do not connect to the database")

    _add_audit_commands(sub, command)
    return parser


def _add_audit_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """explain and cache: registered here, implemented in `cli_audit.py`."""
    from . import cli_audit

    cli_audit.register(sub, command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        return args.func(args)
    except CliError as e:
        print(f"dovecot-appauth: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from .core import AppAuthError

        if isinstance(e, AppAuthError):
            print(f"dovecot-appauth: {e}", file=sys.stderr)
            return 1
        if os.environ.get("DOVECOT_APPAUTH_DEBUG"):
            raise
        print(f"dovecot-appauth: {type(e).__name__}: {_safe_message(e)}", file=sys.stderr)
        return 1


def _safe_message(error: Exception) -> str:
    """SQLAlchemy puts the statement and its parameters in messages: keep only the first line."""
    text = str(error).splitlines()[0] if str(error) else ""
    orig = getattr(error, "orig", None)
    if orig is not None:
        text = str(orig).splitlines()[0]
    return text[:300]


if __name__ == "__main__":
    raise SystemExit(main())
