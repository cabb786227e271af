"""Load and validate the TOML configuration.

One `parse()` serves the per-login program (through `load_cached`, which keeps the
parsed TOML in a private cache file, see below; any problem of level "error" becomes a
temporary failure) and `check-config` (through `load`; it prints every problem). Key names
follow the upstream web-auth app where they overlap, so its `config.toml` mostly
works as is; new options have new keys. Unknown keys are reported, never fatal.
This module reads only the TOML file: list files are `lists.py`'s job.
"""

from __future__ import annotations

import os

from .throttle import THROTTLE_VERDICTS, UNAVAILABLE_ACTIONS, ThrottleSettings
from .values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONFIG_PATH = "/etc/dovecot-appauth/config.toml"
CONFIG_ENV = "DOVECOT_APPAUTH_CONFIG"

LIST_KINDS = (
    "ip_networks", "reverse_hostname", "network_name", "network_cc", "entities",
    "as_numbers", "as_names", "as_cc", "geo_location_ids", "coordinates",
)
ALLOW_KINDS = ("ip_networks", "as_numbers", "countries")
HASH_SCHEMES = ("sha512-crypt", "bcrypt", "argon2id")
RESULT_SUCCESS_VALUES = ("ok", "unknown", "next")
BACKENDS = ("sql", "nextcloud")
ACCOUNT_BACKENDS = ("", "ldap", "sql")
UNREADABLE_LIST_ACTIONS = ("tempfail", "skip")  # [audit] unreadable_list


class Problem(Value):
    """One configuration problem, located as precisely as we can."""

    __slots__ = ("level", "message", "where")

    def __init__(self, where: str, message: str, level: str = "error"):
        self.where = where  # "config.toml: [audit] deadline", "lists/asn.deny.lst:12"
        self.message = message
        self.level = level  # "error" stops logins (tempfail); "warning" does not

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# Defaults, named once: the constructors below and `parse` both use them.
DEFAULT_DSN = "sqlite:////var/lib/dovecot-appauth/db.sqlite"
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_HASH_SCHEME = "sha512-crypt"
DEFAULT_SHA512_ROUNDS = 5000
DEFAULT_HASH_CHECKS = 10  # [auth] hash_checks: users with up to 10 app passwords look alike
DEFAULT_DEDUP_WINDOW = 60.0
DEFAULT_PASSWORD_LENGTH = 16
DEFAULT_PASSWORD_CHUNK = 4
DEFAULT_DNS_TIMEOUT = 1.0
DEFAULT_RDAP_BOOTSTRAP = "https://data.iana.org/rdap/"
DEFAULT_RDAP_TIMEOUT = 1.2
DEFAULT_CACHE_PATH = "/var/cache/dovecot-appauth"
DEFAULT_RDNS_TTL = 3600.0
DEFAULT_RDAP_TTL = 7 * 86400.0
DEFAULT_NEGATIVE_TTL = 300.0
DEFAULT_ORIGIN_AS_TTL = 86400.0  # upstream kept ipwhois answers a day in redis
ORIGIN_AS_ORDERS = ("maxmind-first", "origin-first")
DEFAULT_DEADLINE = 1.5
DEFAULT_EVENTS_RETENTION_DAYS = 90.0
DEFAULT_ALERT_LOOKBACK_DAYS = 30.0
DEFAULT_MAX_SPEED_KMH = 1000.0  # faster than an airliner, with margin
DEFAULT_NEXTCLOUD_TIMEOUT = 3.0
DEFAULT_NEXTCLOUD_CACHE_SECONDS = 60.0
ALERT_ACTIONS = ("log", "deny")
DEFAULT_ACCOUNT_TIMEOUT = 3.0
DEFAULT_ACCOUNT_CACHE_SECONDS = 60.0
DEFAULT_LDAP_FILTER = "(uid=%u)"  # upstream's search: uid = the login name
# upstream's markers of a disabled account (its main.py): either attribute with this value
DEFAULT_LDAP_DISABLED = {"loginShell": ("/bin/false",), "homeDirectory": ("/dev/null",)}

# The config classes are plain `Value`s, not dataclasses (see values.py): the per-login
# program builds them on every login. Fields are never assigned after __init__.


class DatabaseConfig(Value):
    __slots__ = ("connect_timeout", "dsn")

    def __init__(self, dsn: str = DEFAULT_DSN, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self.dsn = dsn
        self.connect_timeout = connect_timeout  # seconds, also the SQLite busy timeout


class AuthConfig(Value):
    __slots__ = (
        "backend",
        "dedup_window",
        "disallow_passwords_from",
        "hash_checks",
        "hash_scheme",
        "password_chunk",
        "password_length",
        "sha512_rounds",
    )

    def __init__(
        self,
        disallow_passwords_from: tuple[str, ...] = (),
        hash_scheme: str = DEFAULT_HASH_SCHEME,
        sha512_rounds: int = DEFAULT_SHA512_ROUNDS,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        password_length: int = DEFAULT_PASSWORD_LENGTH,
        password_chunk: int = DEFAULT_PASSWORD_CHUNK,
        backend: str = "sql",
        hash_checks: int = DEFAULT_HASH_CHECKS,
    ):
        self.backend = backend  # "sql": app_passwords table; "nextcloud": [nextcloud] (nextcloud.py)
        self.disallow_passwords_from = disallow_passwords_from
        self.hash_scheme = hash_scheme
        self.sha512_rounds = sha512_rounds  # glibc/PHP default; written as rounds= only when changed
        self.dedup_window = dedup_window  # seconds in which the same password+service+IP logs once
        self.password_length = password_length
        self.password_chunk = password_chunk
        # a failed password check costs at least this many hash verifications (the user's
        # rows, padded with dummy ones): wrong password and unknown user cost the same
        self.hash_checks = hash_checks


class NextcloudConfig(Value):
    """`[nextcloud]`, used when `[auth] backend = "nextcloud"` (nextcloud.py reads it)."""

    __slots__ = ("ca_file", "cache_seconds", "forward_ip", "timeout", "url")

    def __init__(self, url: str | None = None, timeout: float = DEFAULT_NEXTCLOUD_TIMEOUT,
                 cache_seconds: float = DEFAULT_NEXTCLOUD_CACHE_SECONDS, ca_file: str | None = None,
                 forward_ip: bool = True):
        self.url = url  # WebDAV URL answering PROPFIND; %u is the URL-quoted user
        self.timeout = timeout  # one deadline for connect, TLS, request and status line
        self.cache_seconds = cache_seconds  # positive cache; 0 asks Nextcloud every time
        self.ca_file = ca_file  # PEM bundle for https (default: the system's)
        self.forward_ip = forward_ip  # send X-Forwarded-For: client IP


class LdapAccountConfig(Value):
    """`[account.ldap]`: where and how the account gate asks the directory (account.py)."""

    __slots__ = ("basedn", "bind_dn", "bind_password", "bind_password_file", "ca_file", "disabled", "filter",
                 "starttls", "uri")
    _repr_hidden = ("bind_password",)  # never in a log or traceback

    def __init__(self, uri: str | None = None, basedn: str | None = None, filter: str = DEFAULT_LDAP_FILTER,
                 bind_dn: str | None = None, bind_password: str | None = None,
                 bind_password_file: str | None = None, starttls: bool = False, ca_file: str | None = None,
                 disabled: dict[str, tuple[str, ...]] | None = None):
        self.uri = uri  # ldap://host[:port] or ldaps://host[:port]; several, space-separated
        self.basedn = basedn
        self.filter = filter  # %u user, %n local part, %d domain (each RFC 4515-escaped), %% a percent
        self.bind_dn = bind_dn  # None: anonymous search
        self.bind_password = bind_password  # in the 0640 config; bind_password_file is preferred
        self.bind_password_file = bind_password_file
        self.starttls = starttls  # StartTLS on an ldap:// connection (upstream's `tls`)
        self.ca_file = ca_file  # PEM bundle to verify the server (default: the system's)
        self.disabled = dict(DEFAULT_LDAP_DISABLED) if disabled is None else disabled  # attribute -> values


class SqlAccountConfig(Value):
    """`[account.sql]`: the account gate as one SQL query (account.py)."""

    __slots__ = ("dsn", "query")
    _repr_hidden = ("dsn",)  # may hold a password

    def __init__(self, query: str | None = None, dsn: str | None = None):
        self.query = query  # :user is the login name; a row means the account exists
        self.dsn = dsn  # None: the app-password database ([database] dsn)


class AccountConfig(Value):
    """`[account]`: the gate that a login's account exists and is enabled (account.py)."""

    __slots__ = ("backend", "cache_seconds", "ldap", "sql", "timeout")

    def __init__(self, backend: str = "", timeout: float = DEFAULT_ACCOUNT_TIMEOUT,
                 cache_seconds: float = DEFAULT_ACCOUNT_CACHE_SECONDS, ldap: LdapAccountConfig | None = None,
                 sql: SqlAccountConfig | None = None):
        self.backend = backend  # "": no gate; "ldap"; "sql"
        self.timeout = timeout  # one deadline for the whole check (connect, TLS, bind, search)
        self.cache_seconds = cache_seconds  # an "active" answer is reused this long; 0: ask every time
        self.ldap = LdapAccountConfig() if ldap is None else ldap
        self.sql = SqlAccountConfig() if sql is None else sql


class UserdbConfig(Value):
    """Fields returned on success; %u user, %n local part, %d domain, %% a percent."""

    __slots__ = ("extra", "gid", "home", "mail", "uid")

    def __init__(
        self,
        uid: str | None = None,
        gid: str | None = None,
        home: str | None = None,
        mail: str | None = None,
        extra: dict[str, str] | None = None,
    ):
        self.uid = uid
        self.gid = gid
        self.home = home
        self.mail = mail
        self.extra = {} if extra is None else extra  # any other userdb_* literal


class MaxMindConfig(Value):
    __slots__ = ("asn", "city")

    def __init__(self, city: str | None = None, asn: str | None = None):
        self.city = city
        self.asn = asn


class DnsConfig(Value):
    __slots__ = ("enabled", "port", "resolvers", "timeout")

    def __init__(self, enabled: bool = True, resolvers: tuple[str, ...] = (), port: int = 53,
                 timeout: float = DEFAULT_DNS_TIMEOUT):
        self.enabled = enabled
        self.resolvers = resolvers  # empty: the system's (/etc/resolv.conf)
        self.port = port
        self.timeout = timeout


class RdapConfig(Value):
    __slots__ = ("bootstrap_url", "enabled", "servers", "timeout")

    def __init__(self, enabled: bool = False, bootstrap_url: str = DEFAULT_RDAP_BOOTSTRAP,
                 servers: tuple[str, ...] = (), timeout: float = DEFAULT_RDAP_TIMEOUT):
        self.enabled = enabled  # off by default: it leaves the host for every uncached IP
        self.bootstrap_url = bootstrap_url  # base of ipv4.json / ipv6.json / asn.json
        self.servers = servers  # fixed RDAP base URLs, tried instead of the bootstrap
        self.timeout = timeout


class OriginAsConfig(Value):
    """`[audit.origin_as]`: the origin AS over DNS (Team Cymru), as upstream's ipwhois asked it."""

    __slots__ = ("enabled", "order", "timeout")

    def __init__(self, enabled: bool = False, order: str = "maxmind-first",
                 timeout: float = DEFAULT_DNS_TIMEOUT):
        self.enabled = enabled  # off by default: it leaves the host for every uncached IP
        # maxmind-first: asked only when MaxMind's ASN database has no AS for the address;
        # origin-first: always asked, and its AS is preferred to MaxMind's (upstream's choice)
        self.order = order
        self.timeout = timeout  # all queries together; resolvers and port are [audit.dns]'s


class CacheConfig(Value):
    __slots__ = ("enabled", "negative_ttl", "origin_as_ttl", "path", "rdap_ttl", "rdns_ttl")

    def __init__(
        self,
        path: str = DEFAULT_CACHE_PATH,
        enabled: bool = True,
        rdns_ttl: float = DEFAULT_RDNS_TTL,
        rdap_ttl: float = DEFAULT_RDAP_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        origin_as_ttl: float = DEFAULT_ORIGIN_AS_TTL,
    ):
        self.path = path
        self.enabled = enabled
        self.rdns_ttl = rdns_ttl
        self.rdap_ttl = rdap_ttl
        self.negative_ttl = negative_ttl  # failures and timeouts
        self.origin_as_ttl = origin_as_ttl


class UserAllow(Value):
    __slots__ = ("as_numbers", "countries", "ip_networks")

    def __init__(self, ip_networks: tuple[str, ...] = (), as_numbers: tuple[str, ...] = (),
                 countries: tuple[str, ...] = ()):
        self.ip_networks = ip_networks
        self.as_numbers = as_numbers
        self.countries = countries


class AuditConfig(Value):
    __slots__ = (
        "allow",
        "allow_users",
        "audit_only",
        "audit_process_unknown",
        "audit_result_success",
        "cache",
        "deadline",
        "disabled_services",
        "dns",
        "enabled",
        "events_retention_days",
        "global_networks",
        "ignore_networks",
        "journal",
        "lists",
        "local_locationname",
        "local_networks",
        "log_file",
        "log_local",
        "maxmind",
        "origin_as",
        "rdap",
        "record_events",
        "syslog_facility",
        "syslog_identifier",
        "syslog_socket",
        "unreadable_list",
    )

    def __init__(
        self,
        enabled: bool = True,
        audit_only: bool = False,
        disabled_services: tuple[str, ...] = (),
        audit_result_success: str = "ok",
        audit_process_unknown: bool = False,
        log_local: bool = True,
        local_locationname: str = "local network",
        local_networks: dict[str, str] | None = None,
        ignore_networks: tuple[str, ...] = (),
        global_networks: tuple[str, ...] = (),
        deadline: float = DEFAULT_DEADLINE,
        syslog_identifier: str = "mail-audit",
        syslog_facility: str = "mail",
        syslog_socket: str = "/dev/log",
        journal: str = "auto",
        log_file: str | None = None,
        maxmind: MaxMindConfig | None = None,
        dns: DnsConfig | None = None,
        rdap: RdapConfig | None = None,
        cache: CacheConfig | None = None,
        lists: dict[str, str] | None = None,
        allow: dict[str, str] | None = None,
        allow_users: dict[str, UserAllow] | None = None,
        record_events: bool = True,
        events_retention_days: float = DEFAULT_EVENTS_RETENTION_DAYS,
        origin_as: OriginAsConfig | None = None,
        unreadable_list: str = "tempfail",
    ):
        self.enabled = enabled
        self.audit_only = audit_only  # log the verdict, never deny
        self.disabled_services = disabled_services
        self.audit_result_success = audit_result_success
        self.audit_process_unknown = audit_process_unknown
        self.log_local = log_local
        self.local_locationname = local_locationname
        self.local_networks = {} if local_networks is None else local_networks
        self.ignore_networks = ignore_networks
        # judged as global although IANA lists them as special-purpose (tests, demos)
        self.global_networks = global_networks
        self.deadline = deadline
        self.syslog_identifier = syslog_identifier
        self.syslog_facility = syslog_facility
        self.syslog_socket = syslog_socket
        self.journal = journal  # auto | yes | no
        self.log_file = log_file  # also append each audit line to this file
        self.maxmind = MaxMindConfig() if maxmind is None else maxmind
        self.dns = DnsConfig() if dns is None else dns
        self.rdap = RdapConfig() if rdap is None else rdap
        self.cache = CacheConfig() if cache is None else cache
        self.lists = {} if lists is None else lists  # kind -> file
        self.allow = {} if allow is None else allow  # kind -> file (global allow lists)
        self.allow_users = {} if allow_users is None else allow_users  # lower-cased user
        self.record_events = record_events  # one audit_events row per audited login
        self.events_retention_days = events_retention_days  # `prune` deletes older audit_events rows
        self.origin_as = OriginAsConfig() if origin_as is None else origin_as
        # a configured list file that cannot be read (missing, unreadable, not a regular file):
        # "tempfail" refuses the login for now (111), "skip" goes on without that list; both say so
        self.unreadable_list = unreadable_list


class AlertsConfig(Value):
    """`[alerts]`: new-place alerts on successful logins (alerts.py)."""

    __slots__ = ("action", "enabled", "lookback_days", "max_speed_kmh", "notify_command")

    def __init__(self, enabled: bool = False, lookback_days: float = DEFAULT_ALERT_LOOKBACK_DAYS,
                 max_speed_kmh: float = DEFAULT_MAX_SPEED_KMH, action: str = "log",
                 notify_command: str | tuple[str, ...] | None = None):
        self.enabled = enabled
        self.lookback_days = lookback_days  # the history a login is compared with
        self.max_speed_kmh = max_speed_kmh  # impossible travel above this; 0 switches it off
        self.action = action  # "log" or "deny"
        self.notify_command = notify_command  # shell text or argv; gets the event as JSON on stdin


class Config(Value):
    __slots__ = ("account", "alerts", "audit", "auth", "database", "nextcloud", "path", "problems", "throttle",
                 "userdb")

    def __init__(
        self,
        path: str | None = None,
        database: DatabaseConfig | None = None,
        auth: AuthConfig | None = None,
        userdb: UserdbConfig | None = None,
        audit: AuditConfig | None = None,
        problems: tuple[Problem, ...] = (),
        alerts: AlertsConfig | None = None,
        throttle: ThrottleSettings | None = None,
        nextcloud: NextcloudConfig | None = None,
        account: AccountConfig | None = None,
    ):
        self.path = path
        self.database = DatabaseConfig() if database is None else database
        self.auth = AuthConfig() if auth is None else auth
        self.userdb = UserdbConfig() if userdb is None else userdb
        self.audit = AuditConfig() if audit is None else audit
        self.alerts = AlertsConfig() if alerts is None else alerts
        self.throttle = ThrottleSettings() if throttle is None else throttle
        self.nextcloud = NextcloudConfig() if nextcloud is None else nextcloud
        self.account = AccountConfig() if account is None else account
        self.problems = problems  # warnings that did not stop loading

    def resolve(self, path: str) -> str:
        """A path from the config, relative to the config file's directory."""
        if os.path.isabs(path) or not self.path:
            return path
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), path)


def config_path(explicit: str | None = None, env: dict[str, str] | None = None) -> str:
    """`--config` wins, then DOVECOT_APPAUTH_CONFIG, then the default path."""
    if explicit:
        return explicit
    environ = os.environ if env is None else env
    return environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


class _Reader:
    """Walks one TOML table, type-checking values and noting unknown keys."""

    def __init__(self, data: dict[str, Any], where: str, problems: list[Problem]):
        self.data = data
        self.where = where
        self.problems = problems
        self.seen: set[str] = set()

    def _get(self, key: str, types: tuple[type, ...], what: str) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return None
        value = self.data[key]
        # bool is an int in Python: never accept it as a number
        if isinstance(value, bool) and bool not in types:
            value = object()
        if not isinstance(value, types):
            self.problems.append(Problem(f"{self.where} {key}", f"must be {what}"))
            return None
        return value

    def str(self, key: str, default: str | None) -> str | None:
        value = self._get(key, (str,), "a string")
        return default if value is None else value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self._get(key, (int, float), "a number")
        if value is None:
            return default
        if value != value or value in (float("inf"), float("-inf")):  # TOML allows nan and inf
            self.problems.append(Problem(f"{self.where} {key}", "must be a finite number"))
            return default
        if value < minimum:
            self.problems.append(Problem(f"{self.where} {key}", f"must be at least {minimum}"))
            return default
        return float(value)

    def int(self, key: str, default: int, minimum: int = 0) -> int:
        value = self._get(key, (int,), "a whole number")
        if value is None:
            return default
        if value < minimum:
            self.problems.append(Problem(f"{self.where} {key}", f"must be at least {minimum}"))
            return default
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false")
        return default if value is None else value

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings; a single string is accepted too (upstream wrote both)."""
        value = self._get(key, (list, str), "a list of strings")
        if value is None:
            return ()
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not all(isinstance(v, str) for v in value):
            self.problems.append(Problem(f"{self.where} {key}", "must be a list of strings"))
            return ()
        return tuple(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(key, None)
        if value is None:
            return default
        if value not in choices:
            self.problems.append(
                Problem(f"{self.where} {key}", f"is {value!r}, must be one of {', '.join(choices)}")
            )
            return default
        return value

    def table(self, key: str) -> dict[str, Any]:
        value = self._get(key, (dict,), "a table")
        return value or {}

    def string_table(self, key: str) -> dict[str, str]:
        table = self.table(key)
        out = {}
        for k, v in table.items():
            if isinstance(v, (str, int, float)) and not isinstance(v, bool):
                out[k] = str(v)
            else:
                self.problems.append(Problem(f"{self.where}.{key} {k}", "must be a string"))
        return out

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.problems.append(Problem(f"{self.where} {key}", "unknown key (ignored)", "warning"))


def _field_name_ok(name: str) -> bool:
    """A Dovecot extra-field name that survives both ways of answering (reply.py)."""
    return bool(name) and not any(ch.isspace() or ch == "=" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)


def _check_networks(
    problems: list[Problem], name: str, auth: AuthConfig, audit: AuditConfig, throttle: ThrottleSettings
) -> None:
    """A network that does not parse would fail every login later: report it here."""
    groups = [
        ("auth", "disallow_passwords_from", auth.disallow_passwords_from),
        ("audit", "ignore_networks", audit.ignore_networks),
        ("audit", "global_networks", audit.global_networks),
        ("audit.local_networks", "", tuple(audit.local_networks)),
        ("throttle", "exempt_networks", throttle.exempt_networks),
    ]
    for user, allow in audit.allow_users.items():
        groups.append((f"audit.allow.users.{user}", "ip_networks", allow.ip_networks))
    if not any(networks for _section, _key, networks in groups):
        return
    from .ipnum import network  # ipaddress.ip_network(strict=False) on integers, without its import

    for section, key, networks in groups:
        for text in networks:
            try:
                network(text.strip())
            except ValueError:
                where = f"{name}: [{section}] {key}".rstrip()
                problems.append(Problem(where, f"{text!r} is not an IP network"))


def _result_success(r: _Reader) -> str:
    # upstream's config.toml.dist spells it "unkown": accept that, with a warning
    if r.data.get("audit_result_success") == "unkown":
        r.seen.add("audit_result_success")
        r.problems.append(Problem(f"{r.where} audit_result_success", '"unkown" read as "unknown"', "warning"))
        return "unknown"
    return r.choice("audit_result_success", "ok", RESULT_SUCCESS_VALUES)


def parse(data: dict[str, Any], path: str | None = None) -> Config:
    """Build a `Config` from parsed TOML. Raises ConfigError on any error-level problem."""
    name = os.path.basename(path) if path else "config"
    problems: list[Problem] = []

    def reader(table: dict[str, Any], section: str) -> _Reader:
        return _Reader(table, f"{name}: [{section}]", problems)

    top = _Reader(data, f"{name}:", problems)

    r = reader(top.table("database"), "database")
    database = DatabaseConfig(
        dsn=r.str("dsn", DEFAULT_DSN) or DEFAULT_DSN,
        connect_timeout=r.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0.1),
    )
    r.finish()

    r = reader(top.table("auth"), "auth")
    auth = AuthConfig(
        disallow_passwords_from=r.strings("disallow_passwords_from"),
        hash_scheme=r.choice("hash_scheme", DEFAULT_HASH_SCHEME, HASH_SCHEMES),
        sha512_rounds=r.int("sha512_rounds", DEFAULT_SHA512_ROUNDS, 1000),
        dedup_window=r.number("dedup_window", DEFAULT_DEDUP_WINDOW),
        password_length=r.int("password_length", DEFAULT_PASSWORD_LENGTH, 12),
        password_chunk=r.int("password_chunk", DEFAULT_PASSWORD_CHUNK, 0),
        backend=r.choice("backend", "sql", BACKENDS),
        hash_checks=r.int("hash_checks", DEFAULT_HASH_CHECKS, 1),
    )
    r.finish()

    r = reader(top.table("userdb"), "userdb")
    uid, gid = r._get("uid", (str, int), "a string or number"), r._get("gid", (str, int), "a string or number")
    extra = r.string_table("extra")
    for key in list(extra):
        if not _field_name_ok(key):
            # the reply helper gets the names space-separated in EXTRA and as environment
            # variables: a space loses the field, a `=` makes every login fail
            extra.pop(key)
            r.problems.append(Problem(f"{r.where}.extra {key!r}", "a field name must not be empty or contain "
                                      "white space, '=' or a control character"))
        elif not key.startswith("userdb_"):
            extra[f"userdb_{key}"] = extra.pop(key)
    userdb = UserdbConfig(
        uid=None if uid is None else str(uid),
        gid=None if gid is None else str(gid),
        home=r.str("home", None),
        mail=r.str("mail", None),
        extra=extra,
    )
    r.finish()

    audit_table = top.table("audit")
    r = reader(audit_table, "audit")
    sub = {k: reader(r.table(k), f"audit.{k}") for k in ("maxmind", "dns", "rdap", "origin_as", "cache")}
    maxmind = MaxMindConfig(city=sub["maxmind"].str("city", None), asn=sub["maxmind"].str("asn", None))
    d = sub["dns"]
    dns = DnsConfig(
        enabled=d.bool("enabled", True),
        resolvers=d.strings("resolvers"),
        port=d.int("port", 53, 1),
        timeout=d.number("timeout", DEFAULT_DNS_TIMEOUT, 0.01),
    )
    rd = sub["rdap"]
    rdap = RdapConfig(
        enabled=rd.bool("enabled", False),
        bootstrap_url=rd.str("bootstrap_url", DEFAULT_RDAP_BOOTSTRAP) or DEFAULT_RDAP_BOOTSTRAP,
        servers=rd.strings("servers"),
        timeout=rd.number("timeout", DEFAULT_RDAP_TIMEOUT, 0.01),
    )
    o = sub["origin_as"]
    origin_as = OriginAsConfig(
        enabled=o.bool("enabled", False),
        order=o.choice("order", "maxmind-first", ORIGIN_AS_ORDERS),
        timeout=o.number("timeout", DEFAULT_DNS_TIMEOUT, 0.01),
    )
    c = sub["cache"]
    cache = CacheConfig(
        path=c.str("path", DEFAULT_CACHE_PATH) or DEFAULT_CACHE_PATH,
        enabled=c.bool("enabled", True),
        rdns_ttl=c.number("rdns_ttl", DEFAULT_RDNS_TTL),
        rdap_ttl=c.number("rdap_ttl", DEFAULT_RDAP_TTL),
        negative_ttl=c.number("negative_ttl", DEFAULT_NEGATIVE_TTL),
        origin_as_ttl=c.number("origin_as_ttl", DEFAULT_ORIGIN_AS_TTL),
    )
    for s in sub.values():
        s.finish()

    lists_reader = reader(r.table("lists"), "audit.lists")
    lists = {}
    for kind in LIST_KINDS:
        value = lists_reader.str(kind, None)
        if value:
            lists[kind] = value
    lists_reader.finish()

    allow_table = r.table("allow")
    allow_reader = reader(allow_table, "audit.allow")
    allow = {}
    for kind in ALLOW_KINDS:
        value = allow_reader.str(kind, None)
        if value:
            allow[kind] = value
    allow_users = {}
    for user, table in allow_reader.table("users").items():
        if not isinstance(table, dict):
            problems.append(Problem(f"{name}: [audit.allow.users] {user}", "must be a table"))
            continue
        ur = reader(table, f"audit.allow.users.{user}")
        allow_users[user.lower()] = UserAllow(
            ip_networks=ur.strings("ip_networks"),
            as_numbers=ur.strings("as_numbers"),
            countries=ur.strings("countries"),
        )
        ur.finish()
    allow_reader.finish()

    audit = AuditConfig(
        enabled=r.bool("enabled", True),
        audit_only=r.bool("audit_only", False),
        disabled_services=tuple(s.lower() for s in r.strings("disabled_services")),
        audit_result_success=_result_success(r),
        audit_process_unknown=r.bool("audit_process_unknown", False),
        log_local=r.bool("log_local", True),
        local_locationname=r.str("local_locationname", "local network") or "local network",
        local_networks=r.string_table("local_networks"),
        ignore_networks=r.strings("ignore_networks"),
        global_networks=r.strings("global_networks"),
        deadline=r.number("deadline", DEFAULT_DEADLINE, 0.05),
        syslog_identifier=r.str("syslog_identifier", "mail-audit") or "mail-audit",
        syslog_facility=r.str("syslog_facility", "mail") or "mail",
        syslog_socket=r.str("syslog_socket", "/dev/log") or "",
        journal=r.choice("journal", "auto", ("auto", "yes", "no")),
        log_file=r.str("log_file", None) or None,
        record_events=r.bool("record_events", True),
        events_retention_days=r.number("events_retention_days", DEFAULT_EVENTS_RETENTION_DAYS, 1.0),
        unreadable_list=r.choice("unreadable_list", "tempfail", UNREADABLE_LIST_ACTIONS),
        maxmind=maxmind,
        dns=dns,
        rdap=rdap,
        origin_as=origin_as,
        cache=cache,
        lists=lists,
        allow=allow,
        allow_users=allow_users,
    )
    r.finish()
    alerts = _alerts(reader(top.table("alerts"), "alerts"))
    throttle = _throttle(reader(top.table("throttle"), "throttle"))
    nextcloud = _nextcloud(reader(top.table("nextcloud"), "nextcloud"), auth.backend == "nextcloud")
    account = _account(reader(top.table("account"), "account"), reader)
    top.finish()

    _check_networks(problems, name, auth, audit, throttle)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise ConfigError(problems)
    return Config(path=path, database=database, auth=auth, userdb=userdb, audit=audit, problems=tuple(problems),
                  alerts=alerts, throttle=throttle, nextcloud=nextcloud, account=account)


def _nextcloud(r: _Reader, used: bool) -> NextcloudConfig:
    settings = NextcloudConfig(
        url=r.str("url", None) or None,
        timeout=r.number("timeout", DEFAULT_NEXTCLOUD_TIMEOUT, 0.1),
        cache_seconds=r.number("cache_seconds", DEFAULT_NEXTCLOUD_CACHE_SECONDS),
        ca_file=r.str("ca_file", None) or None,
        forward_ip=r.bool("forward_ip", True),
    )
    r.finish()
    url = settings.url
    if url is None:
        if used:
            r.problems.append(Problem(f"{r.where} url", 'is required with [auth] backend = "nextcloud"'))
        return settings
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if scheme not in ("http", "https") or not host or "@" in host or any(c.isspace() for c in url):
        r.problems.append(Problem(f"{r.where} url", "must be http(s)://host[:port]/path, without credentials"))
    return settings


def _account(r: _Reader, reader: Any) -> AccountConfig:
    """`[account]`, `[account.ldap]` (with `.disabled`), `[account.sql]`; the chosen backend's keys are required."""
    backend = r.choice("backend", "", ACCOUNT_BACKENDS)
    timeout = r.number("timeout", DEFAULT_ACCOUNT_TIMEOUT, 0.1)
    cache_seconds = r.number("cache_seconds", DEFAULT_ACCOUNT_CACHE_SECONDS)
    lr = reader(r.table("ldap"), "account.ldap")
    dr = reader(lr.table("disabled"), "account.ldap.disabled")
    disabled = {attr: dr.strings(attr) for attr in dr.data} if "disabled" in lr.data else None
    dr.finish()
    ldap = LdapAccountConfig(
        uri=lr.str("uri", None) or None,
        basedn=lr.str("basedn", None) or None,
        filter=lr.str("filter", DEFAULT_LDAP_FILTER) or DEFAULT_LDAP_FILTER,
        bind_dn=lr.str("bind_dn", None) or None,
        bind_password=lr.str("bind_password", None) or None,
        bind_password_file=lr.str("bind_password_file", None) or None,
        starttls=lr.bool("starttls", False),
        ca_file=lr.str("ca_file", None) or None,
        disabled=disabled,
    )
    lr.finish()
    sr = reader(r.table("sql"), "account.sql")
    sql = SqlAccountConfig(query=sr.str("query", None) or None, dsn=sr.str("dsn", None) or None)
    sr.finish()
    r.finish()
    where_ldap, where_sql = lr.where, sr.where
    if backend == "ldap":
        for key in ("uri", "basedn"):
            if getattr(ldap, key) is None:
                r.problems.append(Problem(f"{where_ldap} {key}", 'is required with [account] backend = "ldap"'))
        for uri in (ldap.uri or "").split():
            if not uri.startswith(("ldap://", "ldaps://")) or "@" in uri:
                r.problems.append(Problem(f"{where_ldap} uri", f"{uri!r} must be ldap://host[:port] or "
                                                                 "ldaps://host[:port]"))
        if "%u" not in ldap.filter and "%n" not in ldap.filter:
            r.problems.append(Problem(f"{where_ldap} filter", "must contain %u or %n (the login name)"))
        if not (ldap.filter.startswith("(") and ldap.filter.endswith(")")):
            r.problems.append(Problem(f"{where_ldap} filter", "must be an LDAP filter in parentheses"))
        if ldap.bind_password and ldap.bind_password_file:
            r.problems.append(Problem(where_ldap, "give bind_password or bind_password_file, not both"))
        if (ldap.bind_password or ldap.bind_password_file) and not ldap.bind_dn:
            r.problems.append(Problem(f"{where_ldap} bind_dn", "is required with a bind password"))
        if ldap.starttls and any(u.startswith("ldaps://") for u in (ldap.uri or "").split()):
            r.problems.append(Problem(f"{where_ldap} starttls", "ldaps:// is TLS already: drop starttls"))
    elif backend == "sql":
        if sql.query is None:
            r.problems.append(Problem(f"{where_sql} query", 'is required with [account] backend = "sql"'))
        elif ":user" not in sql.query:
            r.problems.append(Problem(f"{where_sql} query", "must use :user (the login name)"))
    return AccountConfig(backend=backend, timeout=timeout, cache_seconds=cache_seconds, ldap=ldap, sql=sql)


def _throttle(r: _Reader) -> ThrottleSettings:
    d = ThrottleSettings()
    settings = ThrottleSettings(
        enabled=r.bool("enabled", d.enabled),
        window=r.number("window", d.window, 1.0),
        max_per_user_ip=r.int("max_per_user_ip", d.max_per_user_ip),
        max_per_ip=r.int("max_per_ip", d.max_per_ip),
        max_per_user=r.int("max_per_user", d.max_per_user),
        verdict=r.choice("verdict", d.verdict, THROTTLE_VERDICTS),
        delay=r.number("delay", d.delay),
        exempt_networks=r.strings("exempt_networks"),
        ipv6_prefix=r.int("ipv6_prefix", d.ipv6_prefix, 16),
        known_client_days=r.number("known_client_days", d.known_client_days),
        unavailable=r.choice("unavailable", d.unavailable, UNAVAILABLE_ACTIONS),
    )
    if settings.ipv6_prefix > 128:
        r.problems.append(Problem(f"{r.where} ipv6_prefix", "must be at most 128"))
        settings.ipv6_prefix = d.ipv6_prefix
    r.finish()
    return settings


def _alerts(r: _Reader) -> AlertsConfig:
    command: str | tuple[str, ...] | None = None
    raw = r.data.get("notify_command")
    if isinstance(raw, list):
        command = r.strings("notify_command") or None
    else:
        command = r.str("notify_command", None) or None
    alerts = AlertsConfig(
        enabled=r.bool("enabled", False),
        lookback_days=r.number("lookback_days", DEFAULT_ALERT_LOOKBACK_DAYS, 0.01),
        max_speed_kmh=r.number("max_speed_kmh", DEFAULT_MAX_SPEED_KMH),
        action=r.choice("action", "log", ALERT_ACTIONS),
        notify_command=command,
    )
    r.finish()
    return alerts


def _read_toml(path: str) -> dict[str, Any]:
    """The file's TOML as a dict; every failure is a ConfigError naming the file."""
    import tomllib  # only here: a warm login gets the parsed form from the config cache

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([Problem(path, "config file not found")]) from None
    except PermissionError:
        raise ConfigError([Problem(path, f"config file not readable by uid {os.getuid()}")]) from None
    except OSError as e:
        raise ConfigError([Problem(path, f"cannot read config file: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(path, f"invalid TOML: {e}")]) from None


def load(path: str) -> Config:
    """Read and parse the config file; every failure is a ConfigError naming the file."""
    return parse(_read_toml(path), path)


# ---------------------------------------------------------------------------
# The per-login program's config cache.
#
# Importing tomllib and parsing the file costs a warm login 5-14 ms (tomllib compiles
# its regexes at import; the shipped, fully commented config.toml is the 14).
# `load_cached` keeps the parsed TOML dict (not the Config: `parse` still validates it
# on every login, so problems are reported exactly as `load` reports them) in a private
# marshal file (private_file.py), keyed by the config file's path, device, inode, size,
# mtime and ctime (chmod, chown and every write change ctime, which nobody can set back).
#
# Where: the config names the cache directory, so that cannot be the place, and the
# config's own directory belongs to root. The file is
# `/tmp/dovecot-appauth-<euid>/config-<hash of the path>.marshal`: one private directory
# per user (logins run as `dovecot`; one run by hand as root gets its own directory).
# /tmp is sticky, so only the owner can replace that directory, and private_file.py
# reads it only when it is owned by this user and writable by nobody else. Someone
# else's directory, a symlink, a stale or a damaged file all mean: parse the TOML.

# 2: the is_global table (ipnum.global_table) is stored with the TOML, and the key names the
# interpreter whose `ipaddress` it was derived from
CONFIG_CACHE_FORMAT = 2
CONFIG_CACHE_ROOT = "/tmp"  # noqa: S108 - a private per-uid directory, checked by private_file.py


def config_cache_file(path: str) -> str:
    from .private_file import name_hash

    directory = os.path.join(CONFIG_CACHE_ROOT, f"dovecot-appauth-{os.geteuid()}")
    return os.path.join(directory, f"config-{name_hash(os.path.abspath(path))}.marshal")


def _cache_key(path: str, st: os.stat_result) -> tuple[int | str, ...]:
    import sys  # built in: no import cost

    return (CONFIG_CACHE_FORMAT, sys.version, os.path.abspath(path), st.st_dev, st.st_ino, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns)


def load_cached(path: str) -> Config:
    """`load`, for the per-login program: the parsed TOML comes from the config cache when
    the file is unchanged (see above). Same Config, same problems, same errors.

    The cache also holds `ipnum.global_table()`, the standard library's is_global as integer
    intervals, derived from `ipaddress` when the file is written and handed to `ipnum` on
    a hit, so a warm login classifies addresses without importing `ipaddress`."""
    from . import ipnum, private_file

    try:
        st = os.stat(path)
    except OSError:
        return load(path)  # reports the problem exactly as always
    file = config_cache_file(path)
    key = _cache_key(path, st)
    cached = private_file.load(file)
    if type(cached) is tuple and len(cached) == 3 and cached[0] == key and type(cached[1]) is dict:
        if cached[2] is not None:
            ipnum.use_global_table(cached[2])  # a damaged table is ignored: derived on first use
        return parse(cached[1], path)
    data = _read_toml(path)
    try:
        unchanged = _cache_key(path, os.stat(path)) == key
    except OSError:
        unchanged = False
    table = ipnum.global_table() if unchanged else None  # None: derivation failed, ipaddress answers
    if table is not None:
        ipnum.use_global_table(table)  # this login need not derive it again
    if unchanged and private_file.store(file, (key, data, table)):  # a file changed while read is not cached
        _prune_config_cache(os.path.dirname(file), keep=file)
    return parse(data, path)


CONFIG_CACHE_MAX_AGE = 86400.0  # seconds


def _prune_config_cache(directory: str, keep: str) -> None:
    """Remove other configs' cache files not written for a day (on a cache miss only).

    One config means one file; test runs and `--config` experiments would otherwise
    leave one per config path. A config still in use just gets its file written again.
    """
    import time

    old = time.time() - CONFIG_CACHE_MAX_AGE
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if (entry.name.startswith("config-") and entry.path != keep
                        and entry.stat(follow_symlinks=False).st_mtime < old):
                    os.unlink(entry.path)
    except OSError:
        pass
