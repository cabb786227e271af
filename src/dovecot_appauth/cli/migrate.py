"""`import-upstream`: translate the upstream dovecot_web_auth `config.toml` into ours.

Belongs here: the key mapping (a data table), resolving the upstream's relative paths
against its config's directory, a small TOML writer for the plain values a config holds,
and the list of what could not be translated. The database check reuses
`checks.check_database_schema`; the command line lives in `cli/import_upstream.py`.

Upstream keys (its `config.py`): [database] dsn; [ldap] ...; [cache] mode/host/port
(redis); [audit] disabled_services, ignore_networks, audit_result_success,
audit_process_unknown, log_local, local_locationname, local_networks, cache_ttl,
db_authlog_dd_hash_bucket, db_authlog_dd_per_login, [audit.maxmind] city/asn/country,
[audit.lists] ...; [auth] disallow_passwords_from; [log] (Python logging).
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tomllib
from typing import Any

from ..config import LIST_KINDS

# (upstream section, key) -> (our section, key, how). how: "copy", "path" (resolved
# against the upstream config's directory), "result" (fixes the "unkown" typo).
KEY_MAP: dict[tuple[str, str], tuple[str, str, str]] = {
    ("database", "dsn"): ("database", "dsn", "copy"),
    ("auth", "disallow_passwords_from"): ("auth", "disallow_passwords_from", "copy"),
    ("audit", "disabled_services"): ("audit", "disabled_services", "copy"),
    ("audit", "ignore_networks"): ("audit", "ignore_networks", "copy"),
    ("audit", "audit_result_success"): ("audit", "audit_result_success", "result"),
    ("audit", "audit_process_unknown"): ("audit", "audit_process_unknown", "copy"),
    ("audit", "log_local"): ("audit", "log_local", "copy"),
    ("audit", "local_locationname"): ("audit", "local_locationname", "copy"),
    ("audit", "local_networks"): ("audit.local_networks", "", "table"),
    # upstream's dedup bucket (seconds) is our dedup window
    ("audit", "db_authlog_dd_hash_bucket"): ("auth", "dedup_window", "copy"),
    ("audit.maxmind", "city"): ("audit.maxmind", "city", "path"),
    ("audit.maxmind", "asn"): ("audit.maxmind", "asn", "path"),
    **{("audit.lists", kind): ("audit.lists", kind, "path") for kind in LIST_KINDS},
}

# Known upstream keys with no equivalent here, and why (printed as the "not translated" list).
NOT_TRANSLATED: dict[tuple[str, str], str] = {
    ("audit", "cache_ttl"): "one TTL for every lookup in redis; here [audit.cache] rdns_ttl, rdap_ttl and "
                            "negative_ttl (MaxMind answers live until the .mmdb changes)",
    ("audit", "db_authlog_dd_per_login"): "dedup here is one row per password, service and IP within "
                                          "[auth] dedup_window",
    ("audit.maxmind", "country"): "the City database carries the country; no separate Country database",
}
WHOLE_SECTIONS: dict[str, str] = {
    "cache": "redis cache not needed: enrichment is cached on disk in [audit.cache] path",
    "log": "Python logging config: the audit line goes to syslog/journald ([audit] syslog_*, journal, log_file)",
}

HEADER = """# dovecot-appauth configuration, translated by `dovecot-appauth import-upstream`
# from {source} on {date}.
# Every key is documented in the project's conf/config.toml; check this file with
#   dovecot-appauth check-config --config THIS_FILE
"""


class MigrationError(Exception):
    """The upstream config cannot be read at all."""


class Migration:
    """The translated config (plain TOML data) and what was left behind."""

    def __init__(self, config: dict[str, Any], untranslated: list[str], notes: list[str]):
        self.config = config
        self.untranslated = untranslated
        self.notes = notes


def read_upstream(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise MigrationError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise MigrationError(f"{path}: not valid TOML: {e}") from None


def translate(data: dict[str, Any], source_dir: str) -> Migration:
    """Upstream TOML data -> our TOML data. Relative paths resolve against `source_dir`."""
    out: dict[str, Any] = {}
    untranslated: list[str] = []
    notes: list[str] = []

    def put(section: str, key: str, value: Any) -> None:
        table = out
        for part in section.split("."):
            table = table.setdefault(part, {})
        if key:
            table[key] = value
        else:
            table.update(value)

    def walk(table: dict[str, Any], section: str) -> None:
        for key, value in table.items():
            where = (section, key)
            name = f"[{section}] {key}" if section else key
            if not section and key == "ldap" and isinstance(value, dict):
                put("account", "", translate_ldap(value, source_dir, notes, untranslated))
            elif not section and key in WHOLE_SECTIONS:
                untranslated.append(f"[{key}]: {WHOLE_SECTIONS[key]}")
            elif where in KEY_MAP:
                our_section, our_key, how = KEY_MAP[where]
                put(our_section, our_key, _convert(how, value, source_dir, name, notes))
            elif where in NOT_TRANSLATED:
                untranslated.append(f"{name} = {_short(value, key)}: {NOT_TRANSLATED[where]}")
            elif isinstance(value, dict) and _is_section(section, key):
                walk(value, f"{section}.{key}" if section else key)
            else:
                untranslated.append(f"{name} = {_short(value, key)}: unknown upstream key")

    walk(data, "")
    if "dsn" not in out.get("database", {}):
        notes.append("no [database] dsn upstream: ours defaults to sqlite:////var/lib/dovecot-appauth/db.sqlite")
    return Migration(out, untranslated, notes)


def behaviour_changes(config: dict[str, Any]) -> list[str]:
    """What the translated config does differently from the same config upstream (printed
    by `import-upstream`; docs/MIGRATION.md, "Differences from upstream", has the whole list)."""
    audit = config.get("audit", {})
    lists = audit.get("lists", {})
    changes = []
    if "coordinates" in lists:
        changes.append(f"[audit.lists] coordinates ({lists['coordinates']}): upstream read this list but never "
                       "applied it; here its circles deny logins (try them with 'dovecot-appauth explain IP')")
    if lists:
        changes.append("list files are parsed strictly: a line upstream skipped or could never match (a bad "
                       "network, AS number, country code or GeoNames id, a handle with spaces) is a check-config "
                       "error here and is skipped at login; the check below names each one")
        changes.append("a trailing '# comment' is cut from every list entry except the regular expressions "
                       "(reverse_hostname, network_name, as_names), where '#' stays part of the pattern as "
                       "upstream had it")
    changes.append("upstream asked RDAP and Team Cymru's origin-AS service (ipwhois) about every new address; "
                   "both are off by default here: set [audit.rdap] enabled = true and [audit.origin_as] "
                   'enabled = true (order = "origin-first" prefers the origin AS as upstream did) for '
                   "network names, entities and AS data MaxMind lacks")
    return changes


# upstream's [ldap] keys (its config.py) and what they become in [account.ldap]
LDAP_KEYS = ("host", "port", "bind", "password", "tls", "tls_cert", "basedn")


def translate_ldap(ldap: dict[str, Any], source_dir: str, notes: list[str], untranslated: list[str]) -> dict[str, Any]:
    """Upstream's [ldap] -> our [account] gate with backend "ldap" (account.py).

    Upstream searched `(uid=<login>)` under basedn on every login and refused a missing,
    non-unique or disabled account (`homeDirectory` /dev/null or `loginShell` /bin/false):
    the same filter and markers are written out explicitly.
    """
    host = str(ldap.get("host") or "localhost")
    port = ldap.get("port")
    uri = host if "://" in host else f"ldap://{host}"
    if port and uri.count(":") < 2:
        uri += f":{port}"
    table: dict[str, Any] = {"uri": uri}
    if ldap.get("basedn"):
        table["basedn"] = ldap["basedn"]
    table["filter"] = "(uid=%u)"
    if ldap.get("bind"):
        table["bind_dn"] = ldap["bind"]
    if ldap.get("password"):
        table["bind_password"] = ldap["password"]
        notes.append("[ldap] password: now [account.ldap] bind_password in this file (written 0640: give it group "
                     "dovecot), or move it to a bind_password_file")
    if ldap.get("tls"):
        table["starttls"] = True
        if ldap.get("tls_cert"):
            table["ca_file"] = _convert("path", ldap["tls_cert"], source_dir, "[ldap] tls_cert", notes)
    table["disabled"] = {"loginShell": ["/bin/false"], "homeDirectory": ["/dev/null"]}
    for key, value in ldap.items():
        if key not in LDAP_KEYS:
            untranslated.append(f"[ldap] {key} = {_short(value, key)}: unknown upstream key")
    notes.append("[ldap]: now the [account] gate (backend ldap): asked after the password matched, not before; "
                 "directory down = temporary failure; python-ldap needed (pip install 'dovecot-appauth[ldap]')")
    return {"backend": "ldap", "ldap": table}


def _is_section(section: str, key: str) -> bool:
    return (not section and key in ("database", "auth", "audit")) or (
        section == "audit" and key in ("maxmind", "lists"))


def _convert(how: str, value: Any, source_dir: str, name: str, notes: list[str]) -> Any:
    if how == "path" and isinstance(value, str) and value:
        path = os.path.normpath(os.path.join(source_dir, os.path.expanduser(value)))
        if path != value:
            notes.append(f"{name}: {value} -> {path}")
        if not os.path.exists(path):
            notes.append(f"{name}: {path} does not exist (check-config will report it)")
        return path
    if how == "result" and value == "unkown":
        notes.append(f'{name}: "unkown" (upstream\'s spelling) written as "unknown"')
        return "unknown"
    if how == "table" and isinstance(value, dict):
        return value
    return value


# An untranslated key whose name says it holds a secret is listed without its value: the
# list goes to stderr (and an admin's terminal log), where no secret belongs.
_SECRET_NAME_PARTS = ("pass", "pw", "secret", "token", "key", "credential")


def _short(value: Any, key: str = "") -> str:
    if any(part in key.lower() for part in _SECRET_NAME_PARTS):
        return "<not shown>"
    text = dump_value(value) if not isinstance(value, dict) else "{...}"
    return text if len(text) <= 60 else text[:57] + "..."


# --- TOML writer ---------------------------------------------------------------------
# A config holds strings, numbers, booleans, lists of those and tables, which is all
# this writer knows; `dumps` re-reads its output and refuses to return a mismatch.

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def dump_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else dump_value(key)


def dump_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                             for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dump_value(v) for v in value) + "]"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dump_key(k)} = {dump_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps(data: dict[str, Any], header: str = "") -> str:
    lines: list[str] = [header.rstrip("\n")] if header else []

    def table(t: dict[str, Any], name: tuple[str, ...]) -> None:
        plain = [(k, v) for k, v in t.items() if not isinstance(v, dict)]
        subs = [(k, v) for k, v in t.items() if isinstance(v, dict)]
        if name and (plain or not subs):
            lines.append("")
            lines.append("[" + ".".join(dump_key(n) for n in name) + "]")
        for k, v in plain:
            lines.append(f"{dump_key(k)} = {dump_value(v)}")
        for k, v in subs:
            table(v, (*name, k))

    table(data, ())
    text = "\n".join(lines).lstrip("\n") + "\n"
    if tomllib.loads(text) != data:
        raise ValueError("TOML writer produced a file that reads back differently")
    return text


def render(migration: Migration, source: str, today: datetime.date | None = None) -> str:
    today = today or datetime.datetime.now(datetime.UTC).date()
    return dumps(migration.config, HEADER.format(source=source, date=today.isoformat()))


def write_private(path: str, text: str) -> None:
    """0640 (a DSN may hold a password): the dovecot group is set by the admin."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
