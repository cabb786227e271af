"""`dovecot-appauth-checkpassword`: one Dovecot authentication, start to finish.

The orchestrator: read fd 3 and the environment (core), load the config, check the
password against the user's app passwords (store + hashing), run the audit (pipeline,
imported only when enabled), record the login, and answer Dovecot by exec'ing its
reply helper or writing fd 4. `decide()` holds the logic and returns an `Outcome`;
`main()` does the I/O around it and maps every exception to an exit status, so an
internal problem is a temporary failure (111) with one stderr line, never a wrong
password and never a traceback.

Imports at module level are the ones every login needs; keep it that way (see
`tests/e2e/test_imports.py` and `benchmarks/`).
"""

from __future__ import annotations

import posix
import sys
import time

from . import paths
from .config import ConfigError, config_path, load_cached
from .core import (
    AppAuthError,
    ExitCode,
    ListsUnreadable,
    Misuse,
    Mode,
    TempFail,
    WouldWait,
    must_not_wait,
    parse_request,
    read_environment,
)
from .core import say as _say
from .values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO

    from .audit.events import EventRow
    from .audit.pipeline import Assessment
    from .config import Config
    from .core import LoginRequest
    from .fast_path import Handover
    from .store import PasswordRow, Store

PROG = "dovecot-appauth"
USAGE = (
    "usage: dovecot-appauth-checkpassword [--config FILE] [--audit-chain] [--debug] [REPLY-HELPER...] "
    "3< request (user NUL password NUL NUL), run by Dovecot's checkpassword passdb"
)
HELP = f"""{USAGE}

Checks an app password for Dovecot (passdb driver = checkpassword). Dovecot writes
`user NUL password NUL NUL` to fd 3 and appends its reply helper as the last argument.

Options (before the reply helper):
  --config FILE   configuration (default: $DOVECOT_APPAUTH_CONFIG or /etc/dovecot-appauth/config.toml)
  --audit-chain   audit a login an earlier passdb already authenticated (no app-password check);
                  that passdb must set the extra field appauth_ok=yes (override_fields),
                  else the login is refused
  --debug         one `debug:` line per step on stderr (Dovecot logs them as errors): the
                  request, the passwords on record (ids only), which one matched, the
                  audit's sources and verdict, the log row, the time taken. Never a password
                  or hash.

Exit status: 0 authenticated, 1 refused, 2 lookup ok / misuse, 3 lookup: unknown user,
111 temporary failure. Test by hand:
  printf 'alice@example.com\\0xxxx-xxxx-xxxx-xxxx\\0\\0' | dovecot-appauth-checkpassword 3<&0 4>&1
"""


class Outcome(Value):
    """What to tell Dovecot: the status, the reply (on success) and one log line."""

    __slots__ = ("exit_code", "fields", "message", "user")
    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __init__(self, exit_code: ExitCode, user: str | None = None, fields: list[tuple[str, str]] | None = None,
                 message: str | None = None):
        self.exit_code = exit_code
        self.user = user
        self.fields = [] if fields is None else fields
        self.message = message  # one stderr line for Dovecot's log; never a secret


class Options(Value):
    __slots__ = ("audit_chain", "config", "debug", "reply_argv", "show_help")

    def __init__(self, config: str | None = None, audit_chain: bool = False, reply_argv: tuple[str, ...] = (),
                 show_help: bool = False, debug: bool = False):
        self.config = config
        self.audit_chain = audit_chain
        self.reply_argv = reply_argv
        self.show_help = show_help
        self.debug = debug


def parse_args(argv: list[str]) -> Options:
    """Our options come first; whatever follows is the reply helper's command line."""
    config = None
    audit_chain = False
    debug = False
    args = list(argv)
    while args and args[0].startswith("-"):
        arg = args.pop(0)
        if arg == "--":
            break
        if arg in ("-h", "--help"):
            return Options(show_help=True)
        if arg == "--config":
            if not args:
                raise Misuse("--config needs a file name")
            config = args.pop(0)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "--audit-chain":
            audit_chain = True
        elif arg == "--debug":
            debug = True
        else:
            raise Misuse(f"unknown option {arg}; {USAGE}")
    return Options(config=config, audit_chain=audit_chain, reply_argv=tuple(args), debug=debug)


def _fail(message: str | None = None) -> Outcome:
    return Outcome(ExitCode.FAIL, message=message)


def decide(request: LoginRequest, config: Config, *, now: float, audit_chain: bool = False,
           stderr: TextIO | None = None, store: Store | None = None, hold_throttled: bool = True) -> Outcome:
    """The whole decision for one request; raises TempFail on internal problems.

    `store`: an open store to use and leave open (serve's pool); by default one is
    opened for this request and closed at the end. `hold_throttled=False` (serve)
    answers a throttled client at once instead of after `[throttle] delay`: a held
    answer would hold a worker of the service and, through the Lua passdb, one of
    Dovecot's auth workers; Dovecot's own failure delay slows that client instead.
    """
    stderr = stderr or sys.stderr

    if request.mode is Mode.CREDENTIALS_LOOKUP:
        raise TempFail(
            f"credentials lookup for {request.username} refused: app-password hashes never leave "
            "dovecot-appauth; allow only plaintext mechanisms (auth_mechanisms = plain login)"
        )
    if request.remote_ip is not None and request.mode is Mode.VERIFY and not _is_ip_address(request.remote_ip):
        # Every check that compares addresses (disallow_passwords_from, policies, throttle,
        # lists) would silently skip a client it cannot parse: refuse it, saying why.
        return _fail(f"user {request.username}: refused: client address {request.remote_ip[:64]!r} "
                     "(TCPREMOTEIP) is not an IP address")
    if audit_chain:
        return _decide_audit_chain(request, config, now=now, stderr=stderr)

    if store is None:
        from .store import open_store

        own = open_store(config.database.dsn, config.database.connect_timeout)
        try:
            return _decide_and_commit(request, config, own, now=now, stderr=stderr, hold=hold_throttled)
        finally:
            from . import per_login_process  # read now: entry.checkpassword sets it

            own.close(exiting=per_login_process)  # store.close_for_exit
    return _decide_and_commit(request, config, store, now=now, stderr=stderr, hold=hold_throttled)


def _decide_and_commit(request: LoginRequest, config: Config, store: Store, *, now: float,
                       stderr: TextIO, hold: bool = True) -> Outcome:
    """`_decide`, then one commit of everything it wrote (store.py: one transaction per
    login). Before the answer: a login is answered only once its rows are committed, and a
    commit that fails is said, never silently lost; the answer stands (the password was
    checked; refusing over a row would lock the user out)."""
    try:
        return _decide(request, config, store, now=now, stderr=stderr, hold=hold)
    except WouldWait:
        store.rollback()  # serve runs it again on a thread: nothing of it is kept
        raise
    finally:
        try:
            store.commit()
        except TempFail as e:
            _say(stderr, f"writes of this login of {request.username} not recorded: {e}")


def _decide(request: LoginRequest, config: Config, store: Store, *, now: float, stderr: TextIO,
            hold: bool = True) -> Outcome:
    """Lookup or password check against `store`, then policy, audit and the `log` row."""
    from .reply import userdb_fields

    if config.auth.backend == "nextcloud":
        return _decide_nextcloud(request, config, store, now=now, stderr=stderr, hold=hold)
    rows = store.find_passwords(request.username)
    if store.upgrade_note:
        _say(stderr, store.upgrade_note)
    # an expired password (app_password_policy) is treated exactly like a revoked one
    active = [row for row in rows if row.deleted is None and not _expired(row, now)]
    if _debugging:
        _debug_passwords(request.username, rows, now)

    if request.mode is Mode.LOOKUP:
        if not active:
            return Outcome(ExitCode.LOOKUP_UNKNOWN)
        user = active[0].uid
        return Outcome(ExitCode.LOOKUP_OK, user=user, fields=userdb_fields(user, config.userdb))

    refused = _check_source(store, config, request, now, stderr, hold)
    if refused is not None:
        return refused

    matched, revoked, unverifiable = _check_password(request.password, rows, active, config, now)
    if _debugging:
        _debug(f"password #{matched.id} matched" if matched else
               f"no active password matched ({len(active)} tried)"
               + (f"; it is #{revoked.id}, not active" if revoked else ""))
    if unverifiable:
        # Some active row could not be checked at all: it may be the one this password
        # is for, so "wrong password" (and a count for the limiter) would be a guess.
        which = ", ".join(f"#{row.id} ({problem})" for row, problem in unverifiable)
        if matched is None:
            raise TempFail(f"user {request.username}: no app password matched and active app password(s) "
                           f"{which} could not be verified: fix or revoke them")
        _say(stderr, f"user {request.username}: active app password(s) {which} could not be verified: "
                     "fix or revoke them")

    if matched is None:
        _record_failure(store, config, request, now, stderr)
        if revoked is not None:
            # the one audit event of this refusal (rule leaked-password): the report lists it
            # under leaked passwords and among the blocked users
            _alert_leaked_password(store, config, request, revoked, now, stderr)
        if revoked is not None and revoked.deleted is None:
            from .policy import utc_text

            reason = f"expired {utc_text(revoked.policy.expires)} UTC"  # type: ignore[union-attr]
            return _fail(f"user {request.username}: refused expired app password #{revoked.id} ({reason})")
        if revoked is not None:
            return _fail(
                f"user {request.username}: refused revoked app password #{revoked.id} "
                f"(revoked {revoked.deleted} UTC)"
            )
        return _fail()  # wrong password or unknown user: Dovecot logs these itself

    if config.account.backend:
        # after the match, not before: see _check_account
        refused = _check_account(store, config, request, matched.uid, matched.id, now, stderr)
        if refused is not None:
            return refused

    if matched.policy is not None:
        from .policy import check

        refusal = check(matched.policy, request.service, request.remote_ip, now)
        if refusal is not None:
            _record_event(store, config, request, matched.uid, matched.id, "policy", refusal, now, stderr)
            return _fail(f"user {matched.uid}: app password #{matched.id} refused: {refusal}")

    record_fields = {"src_rdns": "<>", "src_loc": "", "src_isp": ""}
    if config.audit.enabled:
        from .audit.pipeline import audit_login

        result = audit_login(request, config, user=matched.uid, now=now, pwid=matched.id, stderr=stderr,
                             store=store)
        if _debugging:
            _debug_audit(result)
        if result.deny:
            return _fail(result.denial(matched.uid, request.remote_ip))
        record_fields = result.log_columns()

    from .store import LoginRecord

    try:
        inserted = store.record_login(
            LoginRecord(pwid=matched.id, service=request.service, src_ip=request.remote_ip, **record_fields),
            now=now,
            dedup_window=config.auth.dedup_window,
        )
        if _debugging:
            _debug("log row written" if inserted else
                   f"log row skipped: same password, service and client within {config.auth.dedup_window:g} s")
    except TempFail as e:
        # The password was right: refusing would lock the user out over a log row.
        _say(stderr, f"login of {matched.uid} not recorded: {e}")
    else:  # after the log row, so that a locked database is not waited for twice
        _record_known_client(store, config, request, matched.uid, now, stderr)
    return Outcome(ExitCode.OK, user=matched.uid, fields=userdb_fields(matched.uid, config.userdb))


def _decide_nextcloud(request: LoginRequest, config: Config, store: Store, *, now: float,
                      stderr: TextIO, hold: bool = True) -> Outcome:
    """`[auth] backend = "nextcloud"`: Nextcloud checks the password (nextcloud.py).

    The same throttling, audit and audit events as a SQL login, without what needs a
    password row: no `log` row, no per-password policy, `pwid` NULL in `audit_events`.
    Nextcloud knows its users, we do not: a userdb lookup answers "unknown user".
    """
    from .reply import userdb_fields

    if request.mode is Mode.LOOKUP:
        return Outcome(ExitCode.LOOKUP_UNKNOWN)
    refused = _check_source(store, config, request, now, stderr, hold)
    if refused is not None:
        return refused

    from .nextcloud import NextcloudSettings, verify

    nc = config.nextcloud
    settings = NextcloudSettings(nc.url or "", nc.timeout, nc.cache_seconds,
                                 config.resolve(nc.ca_file) if nc.ca_file else None, nc.forward_ip)
    cache_dir = config.resolve(config.audit.cache.path) if config.audit.cache.enabled else None
    if not request.password or not verify(request.username, request.password, request.remote_ip, settings,
                                          cache_dir, now=now):
        _record_failure(store, config, request, now, stderr)
        return _fail()  # wrong password or unknown user: Dovecot logs these itself
    if config.account.backend:
        refused = _check_account(store, config, request, request.username, None, now, stderr)
        if refused is not None:
            return refused
    if config.audit.enabled:
        from .audit.pipeline import audit_login

        result = audit_login(request, config, user=request.username, now=now, pwid=None, stderr=stderr,
                             store=store)
        if _debugging:
            _debug_audit(result)
        if result.deny:
            return _fail(result.denial(request.username, request.remote_ip))
    _record_known_client(store, config, request, request.username, now, stderr)
    return Outcome(ExitCode.OK, user=request.username, fields=userdb_fields(request.username, config.userdb))


def _is_ip_address(text: str) -> bool:
    """An IPv4 or IPv6 address as Dovecot writes TCPREMOTEIP (no scope, no port)."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        # the common case without an import; leading zeros are refused, as inet_pton does
        return all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)
    import _socket  # the C module: `socket` would import enum and more on every login

    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, text)
            return True
        except (OSError, ValueError):
            continue
    return False


def _check_source(store: Store, config: Config, request: LoginRequest, now: float,
                  stderr: TextIO | None = None, hold: bool = True) -> Outcome | None:
    """Refusals that depend on where the client is, checked before any password work:
    `disallow_passwords_from` (e.g. the webmail host), then the brute-force limiter."""
    blocked_by = None
    if config.auth.disallow_passwords_from:  # policy.py is not imported without it
        from .policy import in_networks

        blocked_by = in_networks(request.remote_ip, config.auth.disallow_passwords_from)
    if blocked_by:
        return _fail(
            f"user {request.username}: app passwords are not accepted from {request.remote_ip} "
            f"(disallow_passwords_from {blocked_by})"
        )
    return _check_throttle(store, config, request, now, stderr, hold)


def _check_throttle(store: Store, config: Config, request: LoginRequest, now: float,
                    stderr: TextIO | None = None, hold: bool = True) -> Outcome | None:
    """Refuse, before any hash work, a client over a brute-force limit (throttle.py).

    Returns the refusal for verdict "deny"; raises TempFail (after `delay` when `hold`) for "tempfail".
    Clients are counted as throttle.client_key names them (IPv4-mapped = IPv4, IPv6 per
    prefix). A client that logged in as this user lately (known_clients) is exempt from
    the per-user limit, not from the others. Counters that cannot be read: TempFail, or
    with `unavailable = "skip"` one line and no limiter.
    """
    settings = config.throttle
    if not settings.enabled or not request.remote_ip or store.upgrade_note:
        return None
    from .throttle import assess, client_key

    client = client_key(request.remote_ip, settings.ipv6_prefix)
    try:
        counts = store.failure_counts(request.username, client, now - settings.window)
    except TempFail as e:
        return _limiter_unavailable(config, request, e, stderr)
    if store.upgrade_note:  # auth_failures missing: an old database, said on every login
        _say(stderr, store.upgrade_note)
        return None
    if _debugging:
        _debug(f"throttle: failures within {settings.window:g} s: {counts[0]} of this user from {client}, "
               f"{counts[1]} from {client}, {counts[2]} of this user")
    throttled = assess(*counts, settings)
    if throttled is not None and throttled.limit == "user" and settings.known_client_days > 0:
        try:
            known = store.known_client(request.username, client, now - settings.known_client_window)
        except TempFail as e:
            return _limiter_unavailable(config, request, e, stderr)
        if known:
            if _debugging:
                _debug(f"throttle: {client} logged in as this user within {settings.known_client_days:g} days: "
                       "exempt from the per-user limit")
            return None
    if throttled is None or _throttle_exempt(request.remote_ip, config, stderr):
        return None
    message = (f"user {request.username} from {request.remote_ip}: throttled, "
               f"{throttled.describe(settings.window)}; 'dovecot-appauth throttle reset' lifts it")
    if settings.verdict == "deny":
        return _fail(message)
    if hold and settings.delay > 0:
        time.sleep(settings.delay)  # slows a guessing client down; Dovecot waits for us
    raise TempFail(message)


def _limiter_unavailable(config: Config, request: LoginRequest, error: TempFail,
                         stderr: TextIO | None) -> None:
    """The limiter cannot read its tables: fail closed (TempFail) unless `unavailable = "skip"`
    or the client is one the limiter never holds back; say so either way, on every login."""
    if config.throttle.unavailable == "skip":
        why = '[throttle] unavailable = "skip"'
    elif _throttle_exempt(request.remote_ip or "", config, stderr):
        why = "an exempt network, never throttled"
    else:
        why = None
    if why is not None:
        _say(stderr, f"user {request.username}: brute-force limiter off for this login ({why}): {error}")
        return None
    raise TempFail(f"user {request.username}: brute-force limiter unavailable, login refused for now "
                   f"(or set [throttle] unavailable = \"skip\"): {error}")


def _throttle_exempt(ip: str, config: Config, stderr: TextIO | None) -> bool:
    """Exempt: [throttle] exempt_networks and the global [audit.allow] ip_networks list."""
    from .policy import in_networks
    from .throttle import plain_address

    ip = plain_address(ip)  # ::ffff:192.0.2.5 is in 192.0.2.0/24
    if in_networks(ip, config.throttle.exempt_networks):
        return True
    allow_file = config.audit.allow.get("ip_networks")
    if not allow_file:
        return False
    from .audit.lists import ListUnreadable, enforce_readable, load_kept
    from .audit.rules import ip_in_list

    try:
        entries, _problems = load_kept("ip_networks", config.resolve(allow_file), role="allow")
    except ListUnreadable as e:
        # an allow list nobody can read exempts nobody; by default the login fails for now
        enforce_readable([e], config.audit.unreadable_list, stderr)
        return False
    return ip_in_list(entries, ip) is not None


def _record_failure(store: Store, config: Config, request: LoginRequest, now: float, stderr: TextIO) -> None:
    if not config.throttle.enabled or store.upgrade_note:
        return
    from .throttle import client_key

    client = client_key(request.remote_ip, config.throttle.ipv6_prefix) if request.remote_ip else None
    try:
        store.record_failure(request.username, client, request.service, now)
    except TempFail as e:
        _say(stderr, f"failed login of {request.username} not counted for throttling: {e}")


def _record_known_client(store: Store, config: Config, request: LoginRequest, user: str, now: float,
                         stderr: TextIO) -> None:
    """A successful login makes its client known for the user (exempt from the per-user limit)."""
    settings = config.throttle
    if not (settings.enabled and settings.known_client_days > 0 and request.remote_ip) or store.upgrade_note:
        return
    from .throttle import client_key

    try:
        store.record_known_client(user, client_key(request.remote_ip, settings.ipv6_prefix), now)
    except TempFail as e:
        _say(stderr, f"login of {user} not recorded as a known client for throttling: {e}")


def _expired(row: PasswordRow, now: float) -> bool:
    policy = row.policy
    return policy is not None and policy.expires is not None and now >= policy.expires


def _check_account(store: Store, config: Config, request: LoginRequest, user: str, pwid: int | None,
                   now: float, stderr: TextIO) -> Outcome | None:
    """The account gate ([account], account.py): None when the account exists and is enabled.

    Asked only after the password matched, never before: a client without the right
    password learns nothing about the account (same answer, same time, whether it is
    deleted, disabled or fine), and password guessing never reaches the directory, so it
    can neither load it nor, when it is down, turn wrong passwords into temporary failures.
    A directory that cannot answer raises TempFail (111): fail closed, never "wrong password".
    """
    from .account import check_account

    try:
        answer = check_account(user, config, now=now, store=store, stderr=stderr)
    except TempFail as e:
        raise TempFail(f"user {user}: {e}") from None
    if _debugging:
        _debug(f"account gate: {answer.describe()}")
    if answer.active:
        return None
    reason = f"account {answer.state} in {answer.backend}: {answer.detail}"
    _record_failure(store, config, request, now, stderr)
    _record_event(store, config, request, user, pwid, "account", reason, now, stderr)
    return _fail(f"user {user}: refused by the account gate: {reason}")


def _alert_leaked_password(store: Store, config: Config, request: LoginRequest, row: PasswordRow, now: float,
                           stderr: TextIO) -> None:
    """The right password of a revoked or expired app password: it has leaked. An audit
    event with alert `leaked-password`, and with [alerts] on, a log line and the notify
    command, as for a new-country alert. The login is refused all the same.

    On serve's event loop, WouldWait: its lookups, the notify command and the enrichment
    cache's write run on a thread (the failure row written before is rolled back)."""
    if must_not_wait():
        raise WouldWait("a leaked password's alert")
    from .audit.events import LEAKED_ALERT
    from .policy import utc_text

    if row.deleted is not None:
        state, when = "revoked", f"{row.deleted} UTC"
    else:
        state, when = "expired", f"{utc_text(row.policy.expires)} UTC"  # type: ignore[union-attr]
    facts, place = None, None
    if config.audit.enabled and request.remote_ip:
        from .audit.pipeline import assess

        try:  # where the client is, for the alert; the refusal stands whatever happens here
            found = assess(user=row.uid, service=request.service, ip=request.remote_ip, config=config, now=now,
                           stderr=stderr)
            facts, place = found.facts, found.log_columns()["src_loc"] or None
        except TempFail as e:
            _say(stderr, f"user {row.uid}: {LEAKED_ALERT} alert without a place: {e}")
    detail = f"right password of {state} app password #{row.id} ({state} {when})"
    event = _record_event(store, config, request, row.uid, row.id, LEAKED_ALERT, detail, now, stderr,
                          alert=LEAKED_ALERT, facts=facts, place=place)
    if not config.alerts.enabled or _leak_told_recently(config, row.id, request.remote_ip, now):
        return
    _say(stderr, f"user {row.uid}: login alert {LEAKED_ALERT} from {request.remote_ip or '-'}"
                 f"{f' ({place})' if place else ''}: {detail}")
    if config.alerts.notify_command:
        from .audit.events import notify

        payload = event.to_json()
        payload.update(alerts=[{"kind": LEAKED_ALERT, "detail": detail}], action="deny",
                       password_state=state, password_state_since=when)
        notify(config.alerts.notify_command, payload, stderr)


LEAK_TOLD_SECONDS = 86400.0
LEAK_TOLD_SOURCE = "leak-told"  # its rows in the enrichment cache


def _leak_told_recently(config: Config, pwid: int, ip: str | None, now: float) -> bool:
    """Was this password's leak from this client already told (line + notify) within a day?

    A phone still set up with a revoked password retries every few minutes; one alert a
    day per password and client is news, a hundred are noise that gets alerts switched
    off. Every attempt is still an audit event. Kept in the enrichment cache (JSON, no
    secret); without a usable cache every attempt is told.
    """
    if not config.audit.cache.enabled:
        return False
    from .audit.cache import CacheUnavailable, IpCache

    cache = IpCache(config.resolve(config.audit.cache.path))
    key = f"{pwid}|{ip or '-'}"
    try:
        if cache.get(LEAK_TOLD_SOURCE, key, now) is not None:
            return True
        cache.put(LEAK_TOLD_SOURCE, key, {"told": now}, LEAK_TOLD_SECONDS, now)
    except CacheUnavailable:
        pass
    finally:
        cache.close()
    return False


def _record_event(store: Store, config: Config, request: LoginRequest, user: str, pwid: int | None, rule: str,
                  reason: str, now: float, stderr: TextIO | None, *, alert: str | None = None,
                  facts: object = None, place: str | None = None) -> EventRow:
    """A refused login's audit event (result "refused"); written when events are recorded."""
    from .audit.events import REFUSED, event_row
    from .store import utc_timestamp

    row = event_row(timestamp=utc_timestamp(now), user=user, pwid=pwid, service=request.service,
                    ip=request.remote_ip, facts=facts, place=place, result=REFUSED,  # type: ignore[arg-type]
                    rule=rule, reason=reason, authenticated=False, alert=alert)
    if config.audit.enabled and config.audit.record_events and not store.upgrade_note:
        try:
            store.record_event(row)
        except TempFail as e:
            _say(stderr, f"audit event of {user} not recorded: {e}")
    return row


def _check_password(password: str | None, rows: list[PasswordRow], active: list[PasswordRow], config: Config,
                    now: float) -> tuple[PasswordRow | None, PasswordRow | None, list[tuple[PasswordRow, str]]]:
    """(the active row that matched, else the revoked or expired one that did, the active
    rows that could not be verified with the reason).

    Every active row is tried until one matches; an unverifiable row does not stop the
    others. A check that matches no active row is padded with dummy hash checks to
    `[auth] hash_checks` verifications in all, so a wrong password costs the same for a
    user with 1 or 10 passwords as for an unknown user (docs/SECURITY.md).
    """
    from . import hashing

    if must_not_wait():
        _no_slow_hash_on_loop(rows, config)
    revoked = None
    unverifiable: list[tuple[PasswordRow, str]] = []
    checks = 0
    if password is not None:
        for row in active:
            checks += 1
            try:
                if hashing.verify(password, row.hash):
                    return row, None, unverifiable
            except hashing.UnsupportedHash as e:
                unverifiable.append((row, str(e)))
        if unverifiable:
            return None, None, unverifiable  # a temporary failure: no point in padding
        # Only after every active row failed: tell a revoked (or expired) password apart.
        # An inactive row that cannot be verified is no reason to refuse: skip it.
        for row in rows:
            if row.deleted is not None or _expired(row, now):
                checks += 1
                try:
                    if hashing.verify(password, row.hash):
                        revoked = row
                        break
                except hashing.UnsupportedHash:
                    continue
    # unknown user, wrong password, or a password that is not UTF-8 (matches nothing)
    hashing.dummy_verify(password or "", config.auth.hash_scheme, rounds=config.auth.sha512_rounds,
                         count=config.auth.hash_checks - checks)
    return None, revoked, unverifiable


# The hashes serve's event loop computes itself: libcrypt's SHA-crypt takes about 2 ms at
# the default rounds and holds the GIL, so on an engine thread it would hold the loop as long.
# A check that may need more than _LOOP_MAX_HASHES of them (the default [auth] hash_checks:
# a wrong password's padding) goes to a thread, where the loop gets the GIL back between two.
_LOOP_SCHEMES = frozenset(("sha512-crypt", "sha256-crypt"))
_LOOP_MAX_HASHES = 10


def _no_slow_hash_on_loop(rows: list[PasswordRow], config: Config) -> None:
    """WouldWait when this check needs bcrypt or argon2id (tens of milliseconds, and their
    libraries let other threads run meanwhile) or more than _LOOP_MAX_HASHES SHA-crypt
    hashes: serve runs it on a thread."""
    from . import hashing

    if max(len(rows), config.auth.hash_checks) > _LOOP_MAX_HASHES:
        raise WouldWait(f"{len(rows)} app passwords to check")
    schemes = {config.auth.hash_scheme}
    for row in rows:
        try:
            schemes.add(hashing.scheme_of(row.hash))
        except hashing.UnsupportedHash:
            continue  # reported by the check itself
    if not schemes <= _LOOP_SCHEMES:
        raise WouldWait("a bcrypt or argon2id hash")


# --audit-chain checks no password, so it must know that an earlier passdb did. Dovecot 2.3
# hands a checkpassword program the extra fields of the passdbs that succeeded before it,
# upper-cased (`appauth_ok=yes` arrives as APPAUTH_OK=yes); those of a passdb that failed
# are dropped, and a client cannot set them. The example config sets this field on the
# passdb before ours (`override_fields = appauth_ok=yes`); without it we refuse.
AUDIT_CHAIN_MARKER = ("appauth_ok", "yes")


def audit_chain_marker_present(request: LoginRequest) -> bool:
    """True when an earlier passdb that succeeded set `appauth_ok=yes`."""
    name, value = AUDIT_CHAIN_MARKER
    return request.passdb_fields.get(name) == value


def _decide_audit_chain(request: LoginRequest, config: Config, *, now: float, stderr: TextIO | None) -> Outcome:
    """An earlier passdb authenticated the user; we only audit (PROTOCOL.md, Chains)."""
    from .audit.pipeline import audit_login
    from .reply import userdb_fields

    if request.mode is Mode.LOOKUP:
        return Outcome(ExitCode.LOOKUP_UNKNOWN)
    if not audit_chain_marker_present(request):
        # Exit 1, not 111: the example maps an internal failure to return-ok, which would
        # let exactly this login (no password checked by anyone) through.
        name, value = AUDIT_CHAIN_MARKER
        return _fail(
            f"user {request.username}: --audit-chain refused the login: no earlier passdb set {name}={value}, "
            f"so no password was checked (the passdb before this one needs `override_fields = {name}={value}` "
            "and `result_success = continue-ok`, this one `skip = unauthenticated`; "
            "see examples/dovecot/auth-audit-chain.conf.ext)"
        )
    store = None
    if config.audit.enabled and config.audit.record_events:
        # only for the audit events and alerts: a database that is down must not fail the login
        from .store import open_store

        try:
            store = open_store(config.database.dsn, config.database.connect_timeout)
        except TempFail as e:
            _say(stderr, f"audit event of {request.username} not recorded: {e}")
    try:
        result = audit_login(request, config, user=request.username, now=now, pwid=None, stderr=stderr, store=store)
    except ListsUnreadable as e:
        # Exit 1, not 111, for the same reason as above: the example's return-ok would let
        # every login through that the list that cannot be read should have judged.
        return _fail(f"user {request.username}: --audit-chain refused the login: {e}")
    finally:
        if store is not None:
            from . import per_login_process

            store.close(exiting=per_login_process)
    if _debugging:
        _debug_audit(result)
    if result.deny:
        return _fail(result.denial(request.username, request.remote_ip))
    return Outcome(ExitCode.OK, user=request.username, fields=userdb_fields(request.username, config.userdb))


def _ms_since(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.1f} ms"


# --debug of the per-login program. A module flag rather than a parameter because only
# main() sets it, for this one process; `serve` never does.
_debugging = False


def _debug(message: str) -> None:
    """A `debug:` line on stderr when --debug is given. Callers pass ids, counts, names and
    verdicts only: never a password, hash or DSN secret; and test `_debugging` first, so
    that a login without --debug does not build the text."""
    if _debugging:
        _say(None, "debug: " + message)


def _debug_request(request: LoginRequest) -> None:
    _debug(f"request: user {request.username!r}, service {request.service}, mode {request.mode.value}, "
           f"client {request.remote_ip or '-'}, local {request.local_ip or '-'}, "
           f"password {'given' if request.password is not None else 'absent or not UTF-8'}")


def _debug_passwords(username: str, rows: list[PasswordRow], now: float) -> None:
    states = [f"#{row.id} {'revoked' if row.deleted is not None else 'expired' if _expired(row, now) else 'active'}"
              for row in rows]
    _debug(f"passwords of {username!r}: {', '.join(states) or 'none'}")


def _debug_audit(result: Assessment) -> None:
    # with each source's detail (a file it could not read, a reader that crashed): what an
    # admin testing a login by hand needs, and never a secret (addresses, files, errors)
    sources = ", ".join(f"{name} {report.status.value} {report.elapsed_ms:.1f} ms"
                        + (f" ({report.detail})" if report.detail else "")
                        for name, report in (result.facts.sources.items() if result.facts else ()))
    _debug(f"audit: source {result.source.kind.value}, verdict {result.verdict.outcome.value}"
           f"{' (refused)' if result.deny else ''}: {result.reason}" + (f"; {sources}" if sources else ""))


def _debug_internal_error(error: BaseException) -> None:
    """Where an unexpected exception was raised (file:line), not its message: a library's
    message may quote what it was given."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "dovecot_appauth" in f.filename] or frames
    where = f"{paths.basename(ours[-1].filename)}:{ours[-1].lineno} in {ours[-1].name}" if ours else "?"
    _debug(f"internal error {type(error).__name__} at {where}")


def _real_path(path: str) -> str:
    import os  # asked from here only where login_via_serve did not ask (--debug, a changed config)

    return os.path.realpath(path)


def _ask_serve(request: LoginRequest, config: Config, path: str, started: float) -> Outcome | None:
    """The login as decided by the serve on `[fast_path] socket` (fast_path.py), or None when
    serve did not take it: then it is checked in-process, after one line saying why.
    Raises TempFail when serve took the request and gave no answer."""
    from .fast_path import Unanswered, ask, encode_request, read_token, refusal, request_body, unanswered_line

    settings = config.fast_path
    where = config.resolve(settings.socket)
    try:
        token = read_token(config.resolve(settings.token_file)) if settings.token_file else None
    except TempFail as e:  # nothing sent: the login is checked here, as serve would have
        _say(None, f"fast path: {e}: checking the login of {request.username} in-process")
        return None
    try:
        answer = ask(where, encode_request(request_body(request, _real_path(path)), token),
                     timeout=settings.timeout)
    except Unanswered as e:
        _say(None, unanswered_line(where, e, request.username))
        return None
    except TempFail as e:
        raise TempFail(f"fast path: serve at {where} {e}") from None
    if _debugging:
        _debug(f"fast path: serve at {where} answered {answer.result!r} after {_ms_since(started)}")
    if answer.result == "ok":
        return Outcome(ExitCode.OK, user=answer.user, fields=answer.fields)
    status, message = refusal(answer, where, request.username, config.throttle.delay)
    return Outcome(ExitCode(status), message=message)


def respond(outcome: Outcome, options: Options, request: LoginRequest, env: Mapping[str, str]) -> int:
    """Hand Dovecot the outcome (reply.send); returns the status."""
    from .reply import send

    if outcome.exit_code not in (ExitCode.OK, ExitCode.LOOKUP_OK) or outcome.user is None:
        return int(outcome.exit_code)
    # under --audit-chain the fields go alone: the helper would add its own userdb_uid/gid
    # and clobber the earlier passdb's
    problem = send(outcome.user, outcome.fields, () if options.audit_chain else options.reply_argv, env,
                   lookup=outcome.exit_code is ExitCode.LOOKUP_OK)
    if problem:
        _say(None, problem)
    return int(outcome.exit_code)


def main(argv: list[str] | None = None, *, handover: Handover | None = None, cached: tuple | None = None,
         env: dict[str, str] | None = None) -> None:
    """The per-login program. `handover`: a login fast_path.login_via_serve read from fd 3
    and left to this function (with the line to say when serve did not take it);
    `cached`: the config cache as entry.checkpassword read it (config_cache.read_current),
    not read again by load_cached; `env`: the environment as entry.checkpassword decoded
    it (paths.environment), not decoded again."""
    global _debugging
    started = time.monotonic()
    args = sys.argv[1:] if argv is None else argv
    if env is None:
        env = paths.environment()
    try:
        from .reply import hold_fd4, read_fd3

        hold_fd4()
        options = parse_args(args)
        if options.show_help:
            sys.stdout.write(HELP)
            sys.exit(0)
        _debugging = options.debug
        credentials = parse_request(handover.data if handover is not None else read_fd3(USAGE))
        request = read_environment(credentials, env)
        if _debugging:
            _debug_request(request)
        path = config_path(options.config, env)
        try:
            # the parsed TOML is cached per login user (config.py); validated as always
            config = load_cached(path, cached)
        except ConfigError as e:
            raise TempFail(f"configuration: {e}") from None
        if _debugging:
            _debug(f"config {path} loaded after {_ms_since(started)}")
        outcome = None
        if config.fast_path.socket and request.mode is Mode.VERIFY and not options.audit_chain \
                and request.password is not None:
            if handover is not None and handover.said is not None:
                _say(None, handover.said)  # asked already: serve did not take it
            else:
                outcome = _ask_serve(request, config, path, started)
        if outcome is None:
            outcome = decide(request, config, now=time.time(), audit_chain=options.audit_chain)
        if outcome.message:
            _say(None, outcome.message)
        if _debugging:
            _debug(f"answer: status {int(outcome.exit_code)} after {_ms_since(started)}"
                   + (f", user {outcome.user!r}" if outcome.user else ""))
        status = respond(outcome, options, request, env)
    except AppAuthError as e:
        _say(None, str(e))
        status = int(e.exit_code)
        if _debugging:
            _debug(f"answer: status {status} after {_ms_since(started)}")
    except Exception as e:
        _say(None, f"internal error ({type(e).__name__}): temporary failure")
        if _debugging:
            _debug_internal_error(e)
        status = int(ExitCode.TEMPFAIL)
    try:
        sys.stdout.flush()  # --help's text; None when fd 1 was closed at start
    except Exception:  # noqa: S110 - fd 1 closed or a broken pipe: nothing to tell, the status stands
        pass
    # Skip interpreter teardown: nothing is left to clean up, and it costs milliseconds
    # on every login (daemon enrichment threads may still be waiting on the network).
    posix._exit(status)
