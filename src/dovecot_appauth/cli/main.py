"""`dovecot-appauth`: the admin command line.

Each command parses its arguments, calls one or two library functions (schema,
hashing, config, lists, enrich, rules, cache) and prints. Logic belongs in those
modules, not here. Listings take `--json`. Errors are one line on stderr and status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from ..config import Config, config_path
from .base import CliError, load_config, print_json, service_user_option

EPILOG_MAIN = """examples:
  dovecot-appauth init-db
  dovecot-appauth password create alice@example.com --comment "Thunderbird laptop"
  dovecot-appauth password create bob@example.com --services imap,smtp --expires 90d --from 198.51.100.0/24
  dovecot-appauth password list alice@example.com
  dovecot-appauth login-test alice@example.com --service imap --ip 198.51.100.7
  dovecot-appauth check-config
"""


def _engine(config: Config):
    from .schema import make_engine

    return make_engine(config.database.dsn, config.database.connect_timeout)


# --- init-db -----------------------------------------------------------------------


def cmd_init_db(args: argparse.Namespace) -> int:
    config = load_config(args)
    from ..dsn import parse_dsn

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


def cmd_upgrade_db(args: argparse.Namespace) -> int:
    from .schema import upgrade_db

    config = load_config(args)
    added = upgrade_db(_engine(config))
    from ..dsn import parse_dsn

    where = parse_dsn(config.database.dsn).redacted()
    print(f"added {', '.join(added)} to {where}" if added else f"nothing to add: {where} is up to date")
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
    config = load_config(args)
    from ..hashing import generate_password, hash_password
    from .schema import canonical_user, create_password

    try:
        user = canonical_user(args.user)
    except ValueError as e:
        raise CliError(f"{e}: no password created") from None
    if user != args.user:
        print(f"dovecot-appauth: user name {args.user!r} stored in lower case as {user!r}", file=sys.stderr)
    policy = _policy_from_args(args)
    password = generate_password(config.auth.password_length, config.auth.password_chunk)
    hashed = hash_password(password, config.auth.hash_scheme, rounds=config.auth.sha512_rounds)
    password_id = create_password(_engine(config), user, hashed, args.comment, policy=policy)
    if args.json:
        print_json({"id": password_id, "uid": user, "comment": args.comment, "password": password,
                     **policy.to_json()})
    else:
        print(f"app password #{password_id} for {user}: {password}")
        if not policy.empty:
            print(f"policy: {policy.describe()}")
        print("It is shown only this once; the dashes are part of it.")
    return 0


def _policy_from_args(args: argparse.Namespace, *, changes: bool = False) -> Any:
    """The policy options as a Policy (create), or as `set_policy` keyword changes (set)."""
    import time

    from ..policy import Policy, PolicyError, parse_expiry, parse_networks, parse_services

    updates: dict[str, Any] = {}
    try:
        if getattr(args, "all_services", False):
            updates["services"] = None
        elif args.services:
            updates["services"] = parse_services(args.services)
        if getattr(args, "no_expiry", False):
            updates["expires"] = None
        elif args.expires:
            updates["expires"] = parse_expiry(args.expires, time.time())
        if getattr(args, "from_anywhere", False):
            updates["networks"] = None
        elif args.networks:
            updates["networks"] = parse_networks(args.networks)
    except PolicyError as e:
        raise CliError(str(e)) from None
    if changes:
        return updates
    return Policy(updates.get("services"), updates.get("expires"), updates.get("networks"))


def cmd_password_set(args: argparse.Namespace) -> int:
    from .schema import set_policy

    changes = _policy_from_args(args, changes=True)
    if not changes:
        raise CliError("nothing to change: give --services/--all-services, --expires/--no-expiry "
                       "or --from/--from-anywhere")
    config = load_config(args)
    try:
        policy = set_policy(_engine(config), args.id, **changes)
    except LookupError as e:
        raise CliError(str(e)) from None
    if args.json:
        from ..policy import Policy

        print_json({"id": args.id, **(policy or Policy()).to_json()})
    else:
        print(f"app password #{args.id}: {policy.describe() if policy else 'no limits'}")
    return 0


def _format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def cmd_password_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    import time

    from .schema import list_passwords

    now = time.time()
    items = list_passwords(_engine(config), args.user, include_revoked=not args.active)
    if args.json:
        print_json([item.to_json(now) for item in items])
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
            last, item.policy.describe() if item.policy else "-", _state(item, now),
        ])
    print(_format_table(["ID", "USER", "CREATED (UTC)", "COMMENT", "LAST USE (UTC)", "POLICY", "STATE"], rows))
    return 0


def _state(item: Any, now: float) -> str:
    from ..policy import is_expired, utc_text

    if item.deleted:
        return f"revoked {item.deleted[:19]}"
    if is_expired(item.policy, now):
        return f"expired {utc_text(item.policy.expires)[:16]}"
    return "active"


def cmd_password_revoke(args: argparse.Namespace) -> int:
    config = load_config(args)
    from .schema import revoke_password

    if not revoke_password(_engine(config), args.id):
        raise CliError(f"app password #{args.id} does not exist or is already revoked")
    print(f"revoked app password #{args.id}")
    return 0


# --- login-test ------------------------------------------------------------------------


def cmd_login_test(args: argparse.Namespace) -> int:
    password = "" if args.lookup else _read_password(args.user)
    run_as = None
    if os.geteuid() == 0 or args.service_user:
        # as Dovecot does: the program runs as the service user, not as root
        from .service_user import ServiceUserError, can_drop_to, resolve

        try:
            user = resolve(load_config(args), args.service_user)
        except ServiceUserError as e:
            raise CliError(str(e)) from None
        except CliError:
            user = None  # the program reports the config problem itself
        if user is not None and user.uid != os.geteuid():
            if not can_drop_to(user):
                raise CliError(f"cannot run the program as {user.describe()}: run login-test as root")
            run_as = user
    try:
        result = _run_login_test(args, password, run_as)
    except PermissionError as e:
        # as Dovecot would find: the service user cannot run the interpreter or the program
        who = run_as.describe() if run_as is not None else "this user"
        raise CliError(f"cannot run the program as {who}: {e.strerror} ({e.filename or 'interpreter'}); "
                       "Dovecot cannot either: the program, its interpreter and venv must be reachable "
                       "by that user") from None
    if run_as is not None:
        from .service_user import drop_to

        # the gate's answer may be cached in the enrichment cache: never as root (a root-owned
        # file there would make every later login run uncached)
        drop_to(run_as)
    gate = _account_gate_report(args)
    if args.json:
        print_json({**result.to_json(), "account_gate": gate})
    else:
        print(result.describe() + (f"\naccount gate: {gate['line']}" if gate else ""))
    return 0 if result.exit_code in (0, 2) else 1


def _run_login_test(args: argparse.Namespace, password: str, run_as: Any) -> Any:
    from .logintest import run_login_test

    return run_login_test(
        user=args.user,
        password=password,
        config=config_path(args.config),
        service=args.service,
        remote_ip=args.ip,
        remote_port=args.port,
        lookup=args.lookup,
        program=args.program,
        audit_chain=args.audit_chain,
        run_as=run_as,
    )


def _account_gate_report(args: argparse.Namespace) -> dict | None:
    """The [account] gate's own answer for the user (cached if a login just cached it)."""
    if args.lookup or args.audit_chain:
        return None
    try:
        config = load_config(args)
    except CliError:
        return None  # the program's own answer above already says what is wrong
    from ..account import gate_report

    return gate_report(args.user, config)


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
    problems = check_all(path, check_database=not args.no_database, service_user=args.service_user,
                         check_dovecot=not args.no_dovecot, dovecot_config=args.dovecot_config)
    for problem in problems:
        print(problem)
    errors = sum(1 for p in problems if p.level == "error")
    warnings = sum(1 for p in problems if p.level == "warning")
    print(f"{path}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


# --- throttle ---------------------------------------------------------------------------


def cmd_throttle_list(args: argparse.Namespace) -> int:
    import time

    from ..store import utc_timestamp
    from .schema import throttle_counts

    config = load_config(args)
    settings = config.throttle
    counts = throttle_counts(_engine(config), utc_timestamp(time.time() - settings.window))
    limits = {"user+ip": settings.max_per_user_ip, "ip": settings.max_per_ip, "user": settings.max_per_user}
    rows = []
    for kind, entries in counts.items():
        for *key, failures in entries:
            limit = limits[kind]
            throttled = limit > 0 and failures >= limit
            if throttled or args.all:
                rows.append({"kind": kind, "user": key[0] if kind != "ip" else None,
                             "ip": key[-1] if kind != "user" else None,
                             "failures": failures, "limit": limit, "throttled": throttled})
    if args.json:
        print_json({"window_seconds": settings.window, "entries": rows})
        return 0
    if not rows:
        print(f"nothing throttled (failed logins in the last {settings.window:g} s are under every limit)")
        return 0
    print(_format_table(
        ["KIND", "USER", "IP", "FAILURES", "LIMIT", "STATE"],
        [[r["kind"], r["user"] or "", r["ip"] or "", str(r["failures"]), str(r["limit"] or "off"),
          "throttled" if r["throttled"] else "ok"] for r in rows],
    ))
    return 0


def cmd_throttle_reset(args: argparse.Namespace) -> int:
    from .schema import throttle_reset

    if not (args.user or args.ip or args.all):
        raise CliError("say what to reset: --user USER, --ip IP (or both), or --all")
    config = load_config(args)
    removed = throttle_reset(_engine(config), user=args.user, ip=args.ip,
                             ipv6_prefix=config.throttle.ipv6_prefix)
    print(f"forgot {removed} failed login(s)")
    return 0


# --- prune and report -------------------------------------------------------------------


def cmd_prune(args: argparse.Namespace) -> int:
    import time

    from ..policy import PolicyError, parse_duration
    from ..store import utc_timestamp
    from .schema import prune

    config = load_config(args)
    try:
        keep = parse_duration(args.older_than) if args.older_than else config.audit.events_retention_days * 86400
    except PolicyError as e:
        raise CliError(f"--older-than: {e}") from None
    if keep <= 0:
        raise CliError("--older-than must be more than 0")
    now = time.time()
    # failed logins matter only inside the limiter's window; a day is kept for `throttle list`
    throttle = getattr(config, "throttle", None)
    failures_keep = max(float(getattr(throttle, "window", 0.0)), 86400.0)
    # a known client is forgotten once it no longer exempts anyone
    known_keep = float(getattr(throttle, "known_client_window", 0.0))
    counts = prune(_engine(config), events_before=utc_timestamp(now - keep),
                   failures_before=utc_timestamp(now - failures_keep), dry_run=args.dry_run,
                   known_clients_before=utc_timestamp(now - known_keep))
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {counts.get('audit_events', 0)} audit event(s) older than {keep / 86400:g} days and "
          f"{counts.get('auth_failures', 0)} failed-login record(s) older than {failures_keep / 86400:g} days"
          f"; {counts.get('known_clients', 0)} known client(s) not seen for {known_keep / 86400:g} days")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .. import report

    config = load_config(args)
    try:
        text = report.run(_engine(config), args, database=config.database.dsn)
    except report.ReportError as e:
        raise CliError(str(e)) from None
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    elif not args.mail_to:
        sys.stdout.write(text)
    return 0


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
    command("upgrade-db", cmd_upgrade_db,
            "add what a newer version needs (policy and audit-event tables, indexes); idempotent",
            "dovecot-appauth upgrade-db")

    pw = sub.add_parser("password", help="create, list, limit and revoke app passwords",
                        description="create, list, limit and revoke app passwords", parents=[common],
                        epilog="examples:\n  dovecot-appauth password create alice@example.com --comment Phone\n"
                               "  dovecot-appauth password set 12 --services imap,smtp --expires 90d\n"
                               "  dovecot-appauth password list alice@example.com\n"
                               "  dovecot-appauth password revoke 12",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pw_sub = pw.add_subparsers(dest="password_command", metavar="ACTION")
    pw_sub.required = True
    p = command("create", cmd_password_create, "create an app password and print it once",
                'dovecot-appauth password create alice@example.com --comment "Phone"', pw_sub)
    p.add_argument("user", help="the user name as Dovecot sees it (stored with A-Z in lower case)")
    p.add_argument("--comment", help="what the password is for (shown in the webmail plugin)")
    _policy_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("set", cmd_password_set, "change an app password's policy (services, expiry, networks)",
                "dovecot-appauth password set 12 --services imap --expires 2026-12-31 --from-anywhere", pw_sub)
    p.add_argument("id", type=int, help="the password's id (see password list)")
    _policy_options(p, changing=True)
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
    service_user_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("check-config", cmd_check_config,
                "validate the config, every list file, the sources, the database schema and Dovecot's "
                "--audit-chain passdb (doveconf -n)",
                "dovecot-appauth check-config --config /etc/dovecot-appauth/config.toml")
    p.add_argument("--no-database", action="store_true", help="do not connect to the database")
    service_user_option(p)
    p.add_argument("--dovecot-config", metavar="FILE",
                   help="Dovecot config whose passdb chain to check with `doveconf -n -c FILE` "
                        "(default: doveconf's own, when Dovecot is installed)")
    p.add_argument("--no-dovecot", action="store_true", help="do not run doveconf")

    p = command("prune", cmd_prune, "delete old audit events and failed-login records",
                "dovecot-appauth prune --older-than 90d --dry-run")
    p.add_argument("--older-than", metavar="AGE",
                   help="audit events older than AGE (90d, 12h; default: [audit] events_retention_days)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    p = command("report", cmd_report,
                "summarise the audit events: blocked users, new places, unknown networks, unused passwords",
                "dovecot-appauth report --since 24h --format html --known-good known.yml --mail-to root")
    p.add_argument("--since", default="24h", metavar="AGE", help="events of the last AGE, or since a UTC date "
                   "(default: 24h)")
    p.add_argument("--format", choices=("text", "markdown", "html", "json"), default="text")
    p.add_argument("--known-good", metavar="FILE",
                   help="YAML with KNOWN_GOOD_ASNS, KNOWN_DNS_SUFF, AS_COMMENTS (upstream audit_mail.py's file)")
    p.add_argument("--unused-days", type=int, default=90, metavar="N",
                   help="list active app passwords not used for N days (default: 90; 0: leave out)")
    p.add_argument("--mail-to", metavar="ADDR", action="append",
                   help="send the report by mail through the local `sendmail -t` (repeatable)")
    p.add_argument("--mail-from", metavar="ADDR", help="From: of the mail (default: sendmail's)")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE instead of stdout")

    th = sub.add_parser("throttle", help="show or reset the brute-force limiter",
                        description="show or reset the brute-force limiter", parents=[common])
    th_sub = th.add_subparsers(dest="throttle_command", metavar="ACTION")
    th_sub.required = True
    p = command("list", cmd_throttle_list, "users and IPs at a limit (failed logins in the window)",
                "dovecot-appauth throttle list --all --json", th_sub)
    p.add_argument("--all", action="store_true", help="also list counters under their limit")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("reset", cmd_throttle_reset, "forget failed logins, so a throttled client may try again",
                "dovecot-appauth throttle reset --user alice@example.com --ip 198.51.100.7", th_sub)
    p.add_argument("--user", help="only this user's failures")
    p.add_argument("--ip", help="only failures from this address")
    p.add_argument("--all", action="store_true", help="forget every failure")

    _add_audit_commands(sub, command)
    return parser


def _policy_options(p: argparse.ArgumentParser, changing: bool = False) -> None:
    from ..policy import KNOWN_SERVICES

    p.add_argument("--services", metavar="LIST", action="append",
                   help=f"only these services ({','.join(KNOWN_SERVICES)}; repeatable; default: all)")
    p.add_argument("--expires", metavar="WHEN",
                   help="90d, 12h, a UTC date (valid through that day) or time, or never")
    p.add_argument("--from", dest="networks", metavar="CIDR", action="append",
                   help="only from these networks (IPv4/IPv6; comma list, repeatable; default: anywhere)")
    if changing:
        p.add_argument("--all-services", action="store_true", help="remove the service limit")
        p.add_argument("--no-expiry", action="store_true", help="remove the expiry")
        p.add_argument("--from-anywhere", action="store_true", help="remove the network limit")


def _add_audit_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """explain, cache, import-upstream and serve: registered here, implemented in
    `cli/audit.py`, `cli/import_upstream.py` and `cli/serve.py` (which imports the server lazily)."""
    from . import audit as cli_audit
    from . import import_upstream as cli_migrate
    from . import serve as cli_serve

    cli_audit.register(sub, command)
    cli_migrate.register(sub, command)
    cli_serve.register(sub, command)


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
        from ..core import AppAuthError

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
