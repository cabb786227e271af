"""Load and validate the TOML configuration.

One `load()` serves the per-login program (which turns any problem of level "error"
into a temporary failure) and `check-config` (which prints every problem). Key names
follow the upstream web-auth app where they overlap, so its `config.toml` mostly
works as is; new options have new keys. Unknown keys are reported, never fatal.
This module reads only the TOML file: list files are `lists.py`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Problem:
    """One configuration problem, located as precisely as we can."""

    where: str  # "config.toml: [audit] deadline", "lists/asn.deny.lst:12"
    message: str
    level: str = "error"  # "error" stops logins (tempfail); "warning" does not

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str = "sqlite:////var/lib/dovecot-appauth/db.sqlite"
    connect_timeout: float = 3.0  # seconds, also the SQLite busy timeout


@dataclass(frozen=True)
class AuthConfig:
    disallow_passwords_from: tuple[str, ...] = ()
    hash_scheme: str = "sha512-crypt"
    sha512_rounds: int = 5000  # glibc/PHP default; written as rounds= only when changed
    dedup_window: float = 60.0  # seconds in which the same password+service+IP logs once
    password_length: int = 16
    password_chunk: int = 4


@dataclass(frozen=True)
class UserdbConfig:
    """Fields returned on success; %u user, %n local part, %d domain, %% a percent."""

    uid: str | None = None
    gid: str | None = None
    home: str | None = None
    mail: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # any other userdb_* literal


@dataclass(frozen=True)
class MaxMindConfig:
    city: str | None = None
    asn: str | None = None


@dataclass(frozen=True)
class DnsConfig:
    enabled: bool = True
    resolvers: tuple[str, ...] = ()  # empty: the system's (/etc/resolv.conf)
    port: int = 53
    timeout: float = 1.0


@dataclass(frozen=True)
class RdapConfig:
    enabled: bool = False  # off by default: it leaves the host for every uncached IP
    bootstrap_url: str = "https://data.iana.org/rdap/"  # base of ipv4.json / ipv6.json / asn.json
    servers: tuple[str, ...] = ()  # fixed RDAP base URLs, tried instead of the bootstrap
    timeout: float = 1.2


@dataclass(frozen=True)
class CacheConfig:
    path: str = "/var/cache/dovecot-appauth"
    enabled: bool = True
    rdns_ttl: float = 3600.0
    rdap_ttl: float = 7 * 86400.0
    negative_ttl: float = 300.0  # failures and timeouts


@dataclass(frozen=True)
class UserAllow:
    ip_networks: tuple[str, ...] = ()
    as_numbers: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditConfig:
    enabled: bool = True
    audit_only: bool = False  # log the verdict, never deny
    disabled_services: tuple[str, ...] = ()
    audit_result_success: str = "ok"
    audit_process_unknown: bool = False
    log_local: bool = True
    local_locationname: str = "local network"
    local_networks: dict[str, str] = field(default_factory=dict)
    ignore_networks: tuple[str, ...] = ()
    # judged as global although IANA lists them as special-purpose (tests, demos)
    global_networks: tuple[str, ...] = ()
    deadline: float = 1.5
    syslog_identifier: str = "mail-audit"
    syslog_facility: str = "mail"
    syslog_socket: str = "/dev/log"
    journal: str = "auto"  # auto | yes | no
    log_file: str | None = None  # also append each audit line to this file
    maxmind: MaxMindConfig = MaxMindConfig()
    dns: DnsConfig = DnsConfig()
    rdap: RdapConfig = RdapConfig()
    cache: CacheConfig = CacheConfig()
    lists: dict[str, str] = field(default_factory=dict)  # kind -> file
    allow: dict[str, str] = field(default_factory=dict)  # kind -> file (global allow lists)
    allow_users: dict[str, UserAllow] = field(default_factory=dict)  # lower-cased user


@dataclass(frozen=True)
class Config:
    path: str | None = None
    database: DatabaseConfig = DatabaseConfig()
    auth: AuthConfig = AuthConfig()
    userdb: UserdbConfig = UserdbConfig()
    audit: AuditConfig = AuditConfig()
    problems: tuple[Problem, ...] = ()  # warnings that did not stop loading

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


def _check_networks(problems: list[Problem], name: str, auth: AuthConfig, audit: AuditConfig) -> None:
    """A network that does not parse would fail every login later: report it here."""
    import ipaddress

    groups = [
        ("auth", "disallow_passwords_from", auth.disallow_passwords_from),
        ("audit", "ignore_networks", audit.ignore_networks),
        ("audit", "global_networks", audit.global_networks),
        ("audit.local_networks", "", tuple(audit.local_networks)),
    ]
    for user, allow in audit.allow_users.items():
        groups.append((f"audit.allow.users.{user}", "ip_networks", allow.ip_networks))
    for section, key, networks in groups:
        for text in networks:
            try:
                ipaddress.ip_network(text.strip(), strict=False)
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
        dsn=r.str("dsn", DatabaseConfig.dsn) or DatabaseConfig.dsn,
        connect_timeout=r.number("connect_timeout", DatabaseConfig.connect_timeout, 0.1),
    )
    r.finish()

    r = reader(top.table("auth"), "auth")
    auth = AuthConfig(
        disallow_passwords_from=r.strings("disallow_passwords_from"),
        hash_scheme=r.choice("hash_scheme", AuthConfig.hash_scheme, HASH_SCHEMES),
        sha512_rounds=r.int("sha512_rounds", AuthConfig.sha512_rounds, 1000),
        dedup_window=r.number("dedup_window", AuthConfig.dedup_window),
        password_length=r.int("password_length", AuthConfig.password_length, 12),
        password_chunk=r.int("password_chunk", AuthConfig.password_chunk, 0),
    )
    r.finish()

    r = reader(top.table("userdb"), "userdb")
    uid, gid = r._get("uid", (str, int), "a string or number"), r._get("gid", (str, int), "a string or number")
    extra = r.string_table("extra")
    for key in list(extra):
        if not key.startswith("userdb_"):
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
    sub = {k: reader(r.table(k), f"audit.{k}") for k in ("maxmind", "dns", "rdap", "cache")}
    maxmind = MaxMindConfig(city=sub["maxmind"].str("city", None), asn=sub["maxmind"].str("asn", None))
    d = sub["dns"]
    dns = DnsConfig(
        enabled=d.bool("enabled", True),
        resolvers=d.strings("resolvers"),
        port=d.int("port", 53, 1),
        timeout=d.number("timeout", DnsConfig.timeout, 0.01),
    )
    rd = sub["rdap"]
    rdap = RdapConfig(
        enabled=rd.bool("enabled", False),
        bootstrap_url=rd.str("bootstrap_url", RdapConfig.bootstrap_url) or RdapConfig.bootstrap_url,
        servers=rd.strings("servers"),
        timeout=rd.number("timeout", RdapConfig.timeout, 0.01),
    )
    c = sub["cache"]
    cache = CacheConfig(
        path=c.str("path", CacheConfig.path) or CacheConfig.path,
        enabled=c.bool("enabled", True),
        rdns_ttl=c.number("rdns_ttl", CacheConfig.rdns_ttl),
        rdap_ttl=c.number("rdap_ttl", CacheConfig.rdap_ttl),
        negative_ttl=c.number("negative_ttl", CacheConfig.negative_ttl),
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
        deadline=r.number("deadline", AuditConfig.deadline, 0.05),
        syslog_identifier=r.str("syslog_identifier", "mail-audit") or "mail-audit",
        syslog_facility=r.str("syslog_facility", "mail") or "mail",
        syslog_socket=r.str("syslog_socket", "/dev/log") or "",
        journal=r.choice("journal", "auto", ("auto", "yes", "no")),
        log_file=r.str("log_file", None) or None,
        maxmind=maxmind,
        dns=dns,
        rdap=rdap,
        cache=cache,
        lists=lists,
        allow=allow,
        allow_users=allow_users,
    )
    r.finish()
    top.finish()

    _check_networks(problems, name, auth, audit)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise ConfigError(problems)
    return Config(path=path, database=database, auth=auth, userdb=userdb, audit=audit, problems=tuple(problems))


def load(path: str) -> Config:
    """Read and parse the config file; every failure is a ConfigError naming the file."""
    import tomllib  # only here: the parser is not needed when the caller has a Config

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([Problem(path, "config file not found")]) from None
    except PermissionError:
        raise ConfigError([Problem(path, f"config file not readable by uid {os.getuid()}")]) from None
    except OSError as e:
        raise ConfigError([Problem(path, f"cannot read config file: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(path, f"invalid TOML: {e}")]) from None
    return parse(data, path)
