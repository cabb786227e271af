"""The account gate (`[account]`): a login's account must exist and be enabled.

Upstream checked every login against LDAP (`[ldap] host`, `basedn`): a user removed from
the directory, or marked disabled there (`loginShell=/bin/false`, `homeDirectory=/dev/null`),
was refused even with a right password. Dovecot's userdb would do the same for IMAP, but
SMTP AUTH through Dovecot SASL does no userdb lookup, so without this gate a deleted user
keeps sending mail with their app passwords.

What belongs here: asking the directory (python-ldap) or the database (one configured
query) about one account, under one deadline, and the short positive cache in the
enrichment cache directory. What does not: deciding what the login answers (login.py).

Fail closed: anything that keeps the gate from answering (directory down or slow,
bind refused, python-ldap missing, the query failing) raises `TempFail`, so the login is
a temporary failure (111, client `UNAVAILABLE`), never a wrong password and never let
through. Only an answer from the directory refuses (exit 1).

Imported only when `[account] backend` is set; python-ldap only on a cache miss.
"""

from __future__ import annotations

import os
import time

from .core import TempFail
from .core import say as _say
from .values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any, TextIO

    from .config import AccountConfig, Config, LdapAccountConfig
    from .store import Store

ACTIVE = "active"
DISABLED = "disabled"
MISSING = "missing"
AMBIGUOUS = "ambiguous"  # the filter found more than one entry: refused, as upstream did
CACHE_SOURCE = "account"  # the source name of the gate's rows in the enrichment cache


class AccountAnswer(Value):
    """What the gate found about one account."""

    __slots__ = ("backend", "cached", "detail", "state")

    def __init__(self, state: str, detail: str, backend: str, cached: bool = False):
        self.state = state  # ACTIVE, DISABLED, MISSING or AMBIGUOUS
        self.detail = detail  # for the refusal line: which entry or row, which marker; never a secret
        self.backend = backend  # "ldap" or "sql"
        self.cached = cached

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def describe(self) -> str:
        return f"{self.state} ({self.backend}{', cached' if self.cached else ''}): {self.detail}"


def check_account(username: str, config: Config, *, now: float, store: Store | None = None,
                  stderr: TextIO | None = None, use_cache: bool = True) -> AccountAnswer:
    """The gate's answer for `username`; raises TempFail when it cannot answer.

    `store`: the login's open app-password database, used by the SQL backend when
    `[account.sql] dsn` is not set.
    """
    settings = config.account
    cache = _open_cache(config) if use_cache and settings.cache_seconds > 0 else None
    try:
        return _check(username, config, now, store, stderr, cache)
    finally:
        if cache is not None:
            cache.close()


def _check(username: str, config: Config, now: float, store: Store | None, stderr: TextIO | None,
           cache: Any) -> AccountAnswer:
    settings = config.account
    key = cache_key(username, settings)
    if cache is not None:
        hit = _cache_get(cache, key, now, stderr)
        if hit is not None:
            return AccountAnswer(ACTIVE, str(hit.get("detail", "")), settings.backend, cached=True)
    deadline = time.monotonic() + settings.timeout
    if settings.backend == "ldap":
        answer = _ask_ldap(username, config, deadline)
    elif settings.backend == "sql":
        answer = _ask_sql(username, config, store)
    else:
        raise TempFail(f"[account] backend {settings.backend!r} is not known")
    # Only an "active" answer is cached: a refusal is rare and re-enabling an account must
    # work at once. The cost is that a disabled account stays usable for cache_seconds.
    if cache is not None and answer.active:
        from .audit.cache import CacheUnavailable

        try:
            cache.put(CACHE_SOURCE, key, {"detail": answer.detail}, settings.cache_seconds, now)
        except CacheUnavailable as e:  # the answer stands; the next login asks again
            _say(stderr, f"account gate: cache not written: {e}")
    return answer


def gate_report(username: str, config: Config, *, use_cache: bool = True) -> dict[str, Any] | None:
    """The gate's answer for `explain` and `login-test`: None when the gate is off, else
    `{"state", "backend", "detail", "cached", "line"}`; "tempfail" when it cannot answer."""
    if not config.account.backend:
        return None
    try:
        answer = check_account(username, config, now=time.time(), use_cache=use_cache)
    except TempFail as e:
        detail = str(e)
        return {"state": "tempfail", "backend": config.account.backend, "detail": detail, "cached": False,
                "line": f"cannot answer, a login gets a temporary failure (111): {detail}"}
    verdict = "login allowed" if answer.active else "login refused (1)"
    return {"state": answer.state, "backend": answer.backend, "detail": answer.detail, "cached": answer.cached,
            "line": f"{answer.describe()}; {verdict}"}


def cache_key(username: str, settings: AccountConfig) -> str:
    """The user (lower-cased: Dovecot may normalise) and where the answer came from, so
    that a changed directory, filter, markers or query is asked anew. Never a secret: the
    bind password and the DSN are not part of it."""
    from .private_file import name_hash

    if settings.backend == "ldap":
        ldap = settings.ldap
        markers = ";".join(f"{a}={','.join(v)}" for a, v in sorted(ldap.disabled.items()))
        origin = f"ldap|{ldap.uri}|{ldap.basedn}|{ldap.filter}|{markers}"
    else:
        origin = f"sql|{settings.sql.query}"
    return f"{username.lower()}|{name_hash(origin)}"


def _open_cache(config: Config) -> Any:
    if not config.audit.cache.enabled:
        return None
    from .audit.cache import IpCache

    return IpCache(config.resolve(config.audit.cache.path))


def _cache_get(cache: Any, key: str, now: float, stderr: TextIO | None) -> dict | None:
    from .audit.cache import CacheUnavailable

    try:
        hit = cache.get(CACHE_SOURCE, key, now)
    except CacheUnavailable as e:
        _say(stderr, f"account gate: cache bypassed: {e}")
        return None
    return hit if isinstance(hit, dict) else None


# --- LDAP ----------------------------------------------------------------------------------


def bind_password(settings: LdapAccountConfig, config: Config) -> str | None:
    """The bind password from `bind_password_file` (first line) or the config; TempFail when unreadable."""
    if settings.bind_password_file:
        path = config.resolve(settings.bind_password_file)
        try:
            with open(path, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            raise TempFail(f"account gate: bind_password_file {path}: {e.strerror} (uid {os.getuid()})") from None
        except UnicodeDecodeError:
            raise TempFail(f"account gate: bind_password_file {path} is not UTF-8") from None
    return settings.bind_password


def ldap_filter(template: str, username: str) -> str:
    """`template` with %u, %n, %d replaced by the RFC 4515-escaped user, local part, domain."""
    local, _, domain = username.partition("@")
    values = {"u": username, "n": local, "d": domain, "%": "%"}
    out = []
    i = 0
    while i < len(template):
        c = template[i]
        if c == "%" and i + 1 < len(template) and template[i + 1] in values:
            value = values[template[i + 1]]
            out.append(value if value == "%" else escape_filter_value(value))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of an assertion value: `*`, `(`, `)`, `\\` and NUL as \\XX; so that a
    login name like `*` or `a)(uid=*` matches only itself (upstream pasted it in raw)."""
    return "".join(f"\\{ord(c):02x}" if c in "*()\\\x00" else c for c in value)


def _ask_ldap(username: str, config: Config, deadline: float) -> AccountAnswer:
    settings = config.account.ldap
    try:
        import ldap  # python-ldap: only on a cache miss with the LDAP gate on
    except ImportError:
        raise TempFail("account gate: python-ldap is not installed "
                       "(pip install 'dovecot-appauth[ldap]'); logins are refused until it is") from None

    password = bind_password(settings, config)
    search = ldap_filter(settings.filter, username)
    markers = {attr.lower(): (attr, set(values)) for attr, values in settings.disabled.items()}

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ldap.TIMEOUT({"desc": "deadline passed"})
        return remaining

    where = settings.uri
    try:
        conn = ldap.initialize(settings.uri or "")
        try:
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
            conn.set_option(ldap.OPT_REFERRALS, 0)  # a referral would go to a host nobody configured
            # connect (OPT_NETWORK_TIMEOUT) and every answer (OPT_TIMEOUT, conn.timeout) under the
            # deadline; libldap gives each URI of the list the whole connect time-out, so it is
            # shared among them (three unreachable servers took three deadlines)
            uris = max(1, len((settings.uri or "").split()))
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, left() / uris)
            conn.set_option(ldap.OPT_TIMEOUT, left())
            conn.timeout = left()
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
            if settings.ca_file:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, config.resolve(settings.ca_file))
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # applies the TLS options above; must come last
            if settings.starttls:
                conn.start_tls_s()
            if settings.bind_dn:
                conn.timeout = left()
                conn.simple_bind_s(settings.bind_dn, password or "")
            conn.timeout = left()
            entries = conn.search_ext_s(settings.basedn or "", ldap.SCOPE_SUBTREE, search,
                                        attrlist=[a for a, _ in markers.values()] or ["1.1"],
                                        timeout=left(), sizelimit=2)
        finally:
            try:
                conn.unbind_s()
            except ldap.LDAPError:
                pass
    except ldap.SIZELIMIT_EXCEEDED:
        return AccountAnswer(AMBIGUOUS, f"more than one entry matches {search} under {settings.basedn}", "ldap")
    except ldap.NO_SUCH_OBJECT:
        raise TempFail(f"account gate: LDAP {where}: basedn {settings.basedn} does not exist "
                       "or is not visible to this bind") from None
    except ldap.INVALID_CREDENTIALS:
        raise TempFail(f"account gate: LDAP {where}: bind as {settings.bind_dn} refused (invalid credentials)") \
            from None
    except ldap.LDAPError as e:
        raise TempFail(f"account gate: LDAP {where}: {_ldap_message(e)}") from None
    found = [(dn, attrs) for dn, attrs in entries if dn]  # search references have no dn
    if not found:
        return AccountAnswer(MISSING, f"no entry matches {search} under {settings.basedn}", "ldap")
    if len(found) > 1:
        return AccountAnswer(AMBIGUOUS, f"{len(found)} entries match {search} under {settings.basedn}", "ldap")
    dn, attrs = found[0]
    for name, raw in attrs.items():
        marker = markers.get(name.lower())
        if marker is None:
            continue
        for value in raw:
            text = value.decode("utf-8", "replace")
            if text in marker[1]:
                return AccountAnswer(DISABLED, f"{dn} has {marker[0]}={text}", "ldap")
    return AccountAnswer(ACTIVE, dn, "ldap")


def _ldap_message(error: Exception) -> str:
    """python-ldap's description of an error (its args[0] is a dict with desc and info)."""
    info = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    text = str(info.get("desc") or type(error).__name__)
    if info.get("info"):
        text += f" ({info['info']})"
    return " ".join(text.split())[:300]


# --- SQL -----------------------------------------------------------------------------------


def _ask_sql(username: str, config: Config, store: Store | None) -> AccountAnswer:
    """`[account.sql] query` with :user: no row means no such account; a row whose first
    column is 0, false, NULL, empty or a zero bit field means disabled (`sql_flag_active`);
    any other row means active."""
    settings = config.account.sql
    query = settings.query or ""
    own = None
    if settings.dsn:
        from .store import open_store

        try:
            own = open_store(settings.dsn, config.account.timeout, name="[account.sql] dsn")
        except TempFail as e:
            raise TempFail(f"account gate: {e}") from None
        target = own
    elif store is not None:
        target = store
    else:
        from .store import open_store

        own = target = open_store(config.database.dsn, config.database.connect_timeout)
    try:
        rows = target.account_rows(query, username)
    except TempFail as e:
        raise TempFail(f"account gate: {e}") from None
    finally:
        if own is not None:
            own.close()
    if not rows:
        return AccountAnswer(MISSING, "no row from [account.sql] query", "sql")
    first = rows[0][0] if rows[0] else 1
    if not sql_flag_active(first):
        shown = repr(bytes(first) if isinstance(first, (bytearray, memoryview)) else first)
        return AccountAnswer(DISABLED, f"[account.sql] query gave {shown[:40]}", "sql")
    return AccountAnswer(ACTIVE, "row from [account.sql] query", "sql")


_FALSE_WORDS = frozenset(("", "false", "no", "n"))


def _false_text(text: str) -> bool:
    """Text that says "disabled": empty, false, no, n (any case, white space around it
    ignored), or a number equal to zero (0, 00, 0.0, -0)."""
    word = text.strip().lower()
    if word in _FALSE_WORDS:
        return True
    digits = word[1:] if word[:1] in ("+", "-") else word
    return bool(digits) and digits != "." and digits.count(".") <= 1 and not digits.strip("0.")


def sql_flag_active(value: Any) -> bool:
    """Whether the first column of an `[account.sql]` row says the account is enabled.

    Disabled: NULL; false; a number equal to zero (int, float, Decimal) or NaN; text
    `_false_text` reads as false; bytes (a BIT(n) flag: PyMySQL returns bytes, b"\\x00"
    for 0) with every bit 0, empty, or ASCII letters and digits that spell such text
    (b"0", b"no"). Anything else of those types is enabled. A value of another type (a
    date, a set) says neither: TempFail, never a guess (fail closed)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value == value and value != 0  # value != value: NaN
    if isinstance(value, str):
        return not _false_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data.strip(b"\0"):  # every bit 0 (a BIT(n) flag), or empty
            return False
        # a word or number in a binary column (b"0", b"false"); other bytes are bits, some 1
        return not (data.isalnum() and _false_text(data.decode("ascii")))
    import sys  # built in, already loaded

    decimal = sys.modules.get("decimal")  # loaded by the driver that returns one (PyMySQL)
    if decimal is not None and isinstance(value, decimal.Decimal):
        return not value.is_nan() and value != 0
    raise TempFail(f"account gate: the first column of the [account.sql] query is of type "
                   f"{type(value).__name__}: it must be a number, a boolean, a bit field or text")
