"""Load and validate the TOML configuration.

One `parse()` serves the per-login program (through `load_cached`, which keeps the
parsed TOML in a private cache file, see below; any problem of level "error" becomes a
temporary failure) and `check-config` (through `load`; it prints every problem). Key names
follow the upstream web-auth app where they overlap, so its `config.toml` mostly
works as is; new options have new keys. Unknown keys are reported, never fatal.
Every key is one row of `FIELDS` below: its type, default, check and help, from which
the parsing, the config classes and the example `conf/config.toml` all come.
This module reads only the TOML file: list files are `lists.py`'s job.
"""

from __future__ import annotations

import posix

from . import paths
from .config_cache import CONFIG_ENV, DEFAULT_CONFIG_PATH, cache_key
from .values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from typing import Any


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


# ---------------------------------------------------------------------------
# The fields: one row per config key, the single description of each.
#
# FIELDS holds, section by section, (section, help, rows); a row is (key, kind, default,
# check, help, sample), and the section's help is what the example says under [section]
# ("" for nothing). The rows drive the parsing (`parse`: type, default, check, the problem
# messages, unknown keys), the section classes below (their fields and defaults) and the
# commented example `conf/config.toml` (`example_toml`, written by
# scripts/write-config-example.py; a test keeps the checked-in file equal to it).
# Adding a key is one row; its class gets the field by itself.
#   kind     BOOL, NUMBER (check: minimum, default 0), INT (check: minimum or
#            (minimum, maximum)), STR (an empty string means the default), TEXT (kept as
#            written, "" too), STRINGS (a list; one string is split at commas and spaces),
#            CHOICE (check: the choices, or (choices, ((alias, choice), ...))), ID (a string or
#            a number, as a string), COMMAND (a string or a list of strings),
#            STRING_TABLE ([section.key] of strings), STRINGS_TABLE ([section.key] of
#            lists), USER_TABLES ([section.key."user"] tables of section "section.key.*");
#            the default of these three: ((name, value), ...), a fresh dict for each use.
#   help     the comment above the key in the example ("\n" between lines; "" for none).
#   sample   text written after the key line in the example, as is (with its "# "); for a
#            key without a default (None) the only line written, e.g. '# uid = "vmail"'.
# Rows hold only literals (kinds as strings, no dicts), so that the compiler folds the whole
# tuple into one constant: a login builds nothing of it but the small per-section index below.

BOOL, NUMBER, INT, STR, TEXT, STRINGS, CHOICE = "bool", "number", "int", "str", "text", "strings", "choice"
ID, COMMAND, STRING_TABLE, STRINGS_TABLE, USER_TABLES = "id", "command", "string_table", "strings_table", "users"
TABLE_KINDS = (STRING_TABLE, STRINGS_TABLE, USER_TABLES)  # written as their own [section.key]

FIELDS: tuple[tuple[str, str, tuple[tuple[str, str, Any, Any, str, str], ...]], ...] = (
    ("database", "", (
        ("dsn", "str", "sqlite:////var/lib/dovecot-appauth/db.sqlite", None,
         "SQLAlchemy-style URL. SQLite (default, one mail host); it is a URL, so %XX is an\n"
         "escape: write a % in the file name as %25 (check-config opens the file as a login does):",
         "# MariaDB/MySQL (several mail hosts share the passwords); keep this file 0640 root:dovecot:\n"
         '# dsn = "mysql+pymysql://mailserver:secret@db.example.com/mail_auth"\n'
         '# dsn = "mysql+pymysql://mailserver:secret@localhost/mail_auth?unix_socket=/run/mysqld/mysqld.sock"'),
        ("connect_timeout", "number", 3.0, 0.1,
         "Seconds to connect (and for each query); also SQLite's busy timeout. A login that\n"
         "cannot reach the database within it is a temporary failure, never a wrong password.", ""),
    )),
    ("auth", "", (
        ("backend", "choice", "sql", ("sql", "nextcloud"),
         'Where app passwords live: "sql" (the app_passwords table of [database], managed by\n'
         '`dovecot-appauth password` or the Roundcube plugin) or "nextcloud" (Nextcloud app\n'
         "passwords, checked with a WebDAV PROPFIND; see [nextcloud]). With \"nextcloud\" the\n"
         "database still holds the throttling counters and audit_events (pwid NULL); there is\n"
         "no `log` row (no password row to log against), no per-password policy, and a userdb\n"
         'lookup answers "unknown user" (use another userdb for LMTP).', ""),
        ("disallow_passwords_from", "strings", (), None,
         "Networks (IPv4 and IPv6) from which app passwords are refused, e.g. the webmail\n"
         "host, which logs in with the real password through another passdb.",
         '# disallow_passwords_from = ["192.0.2.10/32", "2001:db8::10/128"]'),
        ("hash_scheme", "choice", "sha512-crypt", ("sha512-crypt", "bcrypt", "argon2id"),
         "Scheme for new passwords: sha512-crypt ({CRYPT}$6$, as the Roundcube plugin writes),\n"
         "bcrypt ({BLF-CRYPT}$2y$) or argon2id ({ARGON2ID}). Logins verify all three.", ""),
        ("sha512_rounds", "int", 5000, 1000,
         "SHA-crypt rounds for new passwords (5000 is the glibc/PHP default).", ""),
        ("hash_checks", "int", 10, 1,
         "A failed password check (wrong password, unknown user) costs this many hash\n"
         "verifications: the user's app passwords, padded with dummy checks of hash_scheme, so\n"
         "that its time does not tell how many passwords a user has, or whether the user exists.\n"
         "Users with more passwords than this cost one check per password. The price is paid by\n"
         "failed logins only (a right password stops at its row): about 10 x 1-4 ms of CPU each\n"
         'at 5000 rounds (docs/SECURITY.md, "Timing"). bcrypt (~50 ms) and argon2id (~50-100 ms,\n'
         "64 MiB) cost far more per hash: with those, weigh a lower value against how many app\n"
         "passwords your users hold.", ""),
        ("dedup_window", "number", 60.0, None,
         "A login with the same password, service and source IP as one logged less than this\n"
         "many seconds ago is not logged again.", ""),
        ("password_length", "int", 16, 12,
         "New passwords: this many random characters from [0-9A-Za-z], in groups of\n"
         "password_chunk joined by dashes (the dashes are part of the password).", ""),
        ("password_chunk", "int", 4, 0, "", ""),
    )),
    ("userdb",
     "Fields returned to Dovecot on success (prefetched into the userdb). Templates:\n"
     "%u user (as stored in the database), %n its local part, %d its domain, %% a percent.\n"
     "Leave out uid/gid to get those of Dovecot's checkpassword-reply (the dovecot user).",
     (
        ("uid", "id", None, None, "", '# uid = "vmail"'),
        ("gid", "id", None, None, "", '# gid = "vmail"'),
        ("home", "text", None, None, "", '# home = "/var/vmail/%d/%n"'),
        ("mail", "text", None, None, "",
         '# mail = "maildir:~/Maildir"      # Dovecot 2.3; 2.4 ignores `mail` without an error'),
        ("extra", "string_table", (), None,
         'Any other userdb field, literally (the userdb_ prefix is added when missing). A field\n'
         'name with white space, "=" or a control character is a config error (Dovecot\'s reply\n'
         'could not carry it); quote names with "/": "namespace/inbox/list" = "yes".',
         '# quota_rule = "*:storage=1G"\n'
         "# Dovecot 2.4 (with `serve`): the mail location as two fields instead of `mail` above\n"
         '# mail_driver = "maildir"\n'
         '# mail_path = "~/Maildir"'),
    )),
    ("audit", "", (
        ("enabled", "bool", True, None, "Run the audit pipeline after a successful app-password check.", ""),
        ("audit_only", "bool", False, None, "Log every verdict but never deny (try new lists safely).", ""),
        ("disabled_services", "strings", (), None,
         'Services that are always denied (upstream key), e.g. ["pop3"].', ""),
        ("audit_result_success", "choice", "ok", (("ok", "unknown", "next"), (("unkown", "unknown"),)),
         "With --audit-chain (audit after another passdb, see examples/dovecot/): what a login\n"
         'that no list denied returns: "ok", "unknown" or "next" (upstream key). The\n'
         "checkpassword interface can only say yes or no, so all three let the earlier\n"
         "passdb's success stand; denial always refuses. --audit-chain checks no password: it\n"
         "refuses every login unless the passdb before it set the extra field appauth_ok=yes\n"
         "(`override_fields = appauth_ok=yes` in Dovecot's config; not a key of this file).", ""),
        ("audit_process_unknown", "bool", False, None,
         'Upstream key: audit requests for which an earlier passdb already answered "user\n'
         'unknown". Dovecot does not tell a checkpassword program that, so this key is read\n'
         "for compatibility and has no effect here (every request that reaches us is audited).", ""),
        ("log_local", "bool", True, None,
         "Write the audit line for logins from non-global addresses too (upstream key).", ""),
        ("local_locationname", "str", "local network", None,
         "The place name logged for non-global addresses (upstream key).", ""),
        ("ignore_networks", "strings", (), None,
         "Networks never judged nor logged (monitoring probes, for example).", ""),
        ("global_networks", "strings", (), None,
         "Networks judged as global although IANA lists them as special-purpose (tests, demos).", ""),
        ("deadline", "number", 1.5, 0.05, "One deadline for all enrichment sources of a login, in seconds.", ""),
        ("syslog_identifier", "str", "mail-audit", None,
         "Syslog: identifier, facility and socket. The journal (with AUDIT_* fields) is used when\n"
         'systemd-journald\'s socket exists (journal = "auto"); "yes" also says on every login that\n'
         'it is missing; "no" never uses it. A stuck journald or syslog daemon costs a login at\n'
         "most 1 s each: then the line goes to syslog, or is reported as not logged.", ""),
        ("syslog_facility", "str", "mail", None, "", ""),
        ("syslog_socket", "text", "/dev/log", None, "", ""),
        ("journal", "choice", "auto", ("auto", "yes", "no"), "", ""),
        ("log_file", "str", None, None, "Also append each audit line to this file.",
         '# log_file = "/var/log/dovecot-appauth/audit.log"'),
        ("record_events", "bool", True, None,
         "Store every audited login as a row of the audit_events table too (for `report` and the\n"
         "alerts; shared by every host on the same database, no journald needed).", ""),
        ("events_retention_days", "number", 90.0, 1.0,
         "`dovecot-appauth prune` deletes audit_events rows older than this (run it daily).", ""),
        ("unreadable_list", "choice", "tempfail", ("tempfail", "skip"),
         "A list file named below ([audit.lists], [audit.allow]) that the login cannot read\n"
         '(missing, unreadable for user dovecot, a directory, larger than 16 MiB): "tempfail"\n'
         "refuses every audited login for now (Dovecot: UNAVAILABLE; --audit-chain refuses it,\n"
         "exit 1, as its passdb maps 111 to return-ok) with one line naming the list, the file\n"
         'and the reason; "skip" goes on without that list (an allow list then\n'
         "lets nothing through) and says so on every login. Never silent.", ""),
        ("local_networks", "string_table", (), None,
         "Names for local networks, logged as the place (upstream key).", '# "192.0.2.0/24" = "Office"'),
    )),
    ("audit.maxmind",
     "MaxMind GeoIP2/GeoLite2 databases (geoipupdate keeps them current). A missing file\n"
     "makes that source unavailable; logins go on.",
     (
        ("city", "text", None, None, "", '# city = "/var/lib/GeoIP/GeoLite2-City.mmdb"'),
        ("asn", "text", None, None, "", '# asn = "/var/lib/GeoIP/GeoLite2-ASN.mmdb"'),
    )),
    ("audit.dns",
     "Reverse DNS (PTR) of the client address.",
     (
        ("enabled", "bool", True, None, "", ""),
        ("resolvers", "strings", (), None, "Resolvers to ask; empty: the system's (/etc/resolv.conf).", ""),
        ("port", "int", 53, 1, "", ""),
        ("timeout", "number", 1.0, 0.01, "", ""),
    )),
    ("audit.rdap",
     "RDAP (whois) network data: network name and country, AS number, description and\n"
     "country, related entities. Off by default: it asks the registries for every new IP.",
     (
        ("enabled", "bool", False, None, "", ""),
        ("bootstrap_url", "str", "https://data.iana.org/rdap/", None,
         "Base URL of the IANA bootstrap files (ipv4.json, ipv6.json, asn.json).", ""),
        ("servers", "strings", (), None,
         'Fixed RDAP servers to ask instead of the bootstrap, e.g. ["https://rdap.db.ripe.net/"].', ""),
        ("timeout", "number", 1.2, 0.01, "", ""),
    )),
    ("audit.origin_as",
     "The origin AS of the address (number, country, name) from Team Cymru's DNS service\n"
     "(origin.asn.cymru.com / origin6 and AS<n>.asn.cymru.com TXT records), as upstream's\n"
     "ipwhois found it, so as_numbers, as_names and as_cc lists match networks the MaxMind\n"
     "ASN database lacks. Asks [audit.dns]'s resolvers. Never asked for local sources.\n"
     "Off by default: it leaves the host for every new IP (import-upstream turns it on).",
     (
        ("enabled", "bool", False, None, "", ""),
        ("order", "choice", "maxmind-first", ("maxmind-first", "origin-first"),
         "\"maxmind-first\": asked only when MaxMind's ASN database has no AS for the address;\n"
         "\"origin-first\": always asked, and its AS is preferred to MaxMind's (upstream's order).", ""),
        ("timeout", "number", 1.0, 0.01,
         "Both queries together; the login's [audit] deadline bounds it too.", ""),
    )),
    ("audit.cache",
     "On-disk cache of enrichment results (SQLite file, JSON values); 0700 directory owned\n"
     "by the user logins run as (dovecot). A directory group or others can write is not\n"
     "trusted (its entries feed the allow lists): logins then run uncached and say so. Its\n"
     'owner is also the user admin commands run as root act as (see docs/COMMANDS.md, "The service user").',
     (
        ("enabled", "bool", True, None, "", ""),
        ("path", "str", "/var/cache/dovecot-appauth", None, "", ""),
        ("rdns_ttl", "number", 3600.0, None, "", ""),
        ("rdap_ttl", "number", 7 * 86400.0, None, "", ""),
        ("origin_as_ttl", "number", 86400.0, None, "", ""),  # upstream kept ipwhois answers a day
        ("negative_ttl", "number", 300.0, None,
         "Failures and timeouts are remembered this long, so a dead source costs one wait.\n"
         "Every TTL counts from when the entry is written.", ""),
    )),
    ("audit.lists",
     'Deny lists, one entry per line (formats: docs/AUDIT.md, "List files"). Read fresh by every\n'
     "login, so a change applies at the next login. Upstream file names:",
     (
        # deny lists: no default; the example names upstream's files
        ("ip_networks", "str", None, None, "", 'ip_networks = "lists/ip_net.deny.lst"'),
        ("reverse_hostname", "str", None, None, "", 'reverse_hostname = "lists/rev_host.deny.lst"'),
        ("network_name", "str", None, None, "", 'network_name = "lists/net_name.deny.lst"'),
        ("network_cc", "str", None, None, "", 'network_cc = "lists/net_cc.deny.lst"'),
        ("entities", "str", None, None, "", 'entities = "lists/entity.deny.lst"'),
        ("as_numbers", "str", None, None, "", 'as_numbers = "lists/asn.deny.lst"'),
        ("as_names", "str", None, None, "", 'as_names = "lists/as_dscr.deny.lst"'),
        ("as_cc", "str", None, None, "", 'as_cc = "lists/as_cc.deny.lst"'),
        ("geo_location_ids", "str", None, None, "", 'geo_location_ids = "lists/maxmind/geo_loc.deny.lst"'),
        ("coordinates", "str", None, None, "", 'coordinates = "lists/maxmind/coords.deny.lst"'),
    )),
    ("audit.allow",
     "Allow lists win over every deny list, so a known site can never be locked out.",
     (
        ("ip_networks", "str", None, None, "", 'ip_networks = "lists/allow/ip_net.allow.lst"'),
        ("as_numbers", "str", None, None, "", 'as_numbers = "lists/allow/asn.allow.lst"'),
        ("countries", "str", None, None, "", 'countries = "lists/allow/cc.allow.lst"'),
        ("users", "users", (), None,
         "Per-user allow entries (inline), e.g. a user who travels with a known provider:",
         '# [audit.allow.users."alice@example.com"]\n'
         '# ip_networks = ["198.51.100.0/24"]\n'
         '# as_numbers = ["AS64501"]\n'
         '# countries = ["DE"]'),
    )),
    ("audit.allow.users.*", "", (
        ("ip_networks", "strings", (), None, "", ""),
        ("as_numbers", "strings", (), None, "", ""),
        ("countries", "strings", (), None, "", ""),
    )),
    ("alerts",
     "New-place alerts on successful logins, compared with the user's successful logins of\n"
     'the last lookback_days (from audit_events): "new-country", "new-asn", and\n'
     '"impossible-travel" (implied speed from the previous located login above\n'
     "max_speed_kmh, after taking off both MaxMind accuracy radii; 0 switches it off).\n"
     "A user's first login in the window raises nothing.",
     (
        ("enabled", "bool", False, None, "", ""),
        ("lookback_days", "number", 30.0, 0.01, "", ""),
        ("max_speed_kmh", "number", 1000.0, None, "", ""),  # faster than an airliner, with margin
        ("action", "choice", "log", ("log", "deny"),
         '"log": audit line (alert=...), journald AUDIT_ALERT, one line in Dovecot\'s log.\n'
         '"deny": the same, and the login is refused (AUTHENTICATIONFAILED).', ""),
        ("notify_command", "command", None, None,
         "Run for each alert, detached (it never delays the login), with the event and its\n"
         "alerts as JSON on stdin. A string runs through /bin/sh -c; a list runs as is.\n"
         'Also run for "leaked-password": the right password of a revoked or expired app\n'
         "password (refused anyway; the JSON adds password_state and password_state_since).",
         "# notify_command = \"mail -s 'dovecot-appauth: login alert' root\""),
    )),
    ("throttle",
     "Brute-force limiter: failed logins (wrong, unknown-user, revoked or expired passwords)\n"
     "are counted in the shared database per (user, IP), per IP and per user, within\n"
     "`window` seconds. A client at a limit is refused before any hash is computed, even\n"
     "with the right password. `dovecot-appauth throttle list|reset` shows and lifts it.",
     (
        ("enabled", "bool", True, None, "", ""),
        ("window", "number", 600.0, 1.0, "", ""),
        ("max_per_user_ip", "int", 10, None,
         "0 switches a counter off. The per-user limit is high: anyone can make a user's\n"
         "failures count, so it only stops slow guessing spread over many addresses.", ""),
        ("max_per_ip", "int", 30, None, "", ""),
        ("max_per_user", "int", 100, None, "", ""),
        ("verdict", "choice", "tempfail", ("tempfail", "deny"),
         '"tempfail": wait `delay` seconds, then answer "temporary failure" (the client sees\n'
         'UNAVAILABLE and retries later); "deny": answer like a wrong password.\n'
         "`dovecot-appauth serve` never waits `delay`: it answers at once (a held answer would\n"
         "hold one of Dovecot's auth workers) and Dovecot's auth_failure_delay slows the client.", ""),
        ("delay", "number", 2.0, None, "", ""),
        ("exempt_networks", "strings", (), None,
         "Never throttled, besides the networks of the [audit.allow] ip_networks list; e.g. the\n"
         'webmail host or an office NAT: exempt_networks = ["192.0.2.10/32"]', ""),
        ("ipv6_prefix", "int", 64, (16, 128),
         "IPv6 clients are counted per network of this many bits (a host usually holds a whole\n"
         "/64 and could take a new address for every guess); IPv4-mapped addresses\n"
         "(::ffff:192.0.2.69) always count as their IPv4 address. 16..128.", ""),
        ("known_client_days", "number", 30.0, None,
         "A client that logged in successfully as a user within this many days (the shared\n"
         "known_clients table) is exempt from max_per_user, so that guessing at a user's password\n"
         "from elsewhere cannot keep them out; max_per_user_ip and max_per_ip still apply. 0: off.", ""),
        ("unavailable", "choice", "tempfail", ("tempfail", "skip"),
         "When the limiter cannot read its counters (a missing MariaDB GRANT, a broken table):\n"
         '"tempfail" refuses the login for now (UNAVAILABLE) with one line naming the problem;\n'
         '"skip" goes on without the limiter and says so on every login. Never silent.', ""),
    )),
    ("fast_path",
     "Optional: hand each login of the per-login program to a running `dovecot-appauth serve\n"
     "--unix-socket PATH` started with this same config file, instead of checking it in this\n"
     "process: the same checks, rows and audit line, without importing and opening everything\n"
     "once per login (docs/SERVE.md, Fast path). When nothing answers on the socket (serve\n"
     "stopped, busy, another config), the login is checked in-process as without this\n"
     "section, with one line saying why on every such login. A request serve took but did not\n"
     "answer within `timeout` is a temporary failure (it may have been counted already).",
     (
        ("socket", "str", None, None, "",
         '# socket = "/run/dovecot-appauth/serve.sock"'),
        ("timeout", "number", 10.0, 0.5,
         "Seconds to wait for serve's answer once the request is sent; keep it above [audit]\n"
         "deadline and [database] connect_timeout.", ""),
        ("token_file", "str", None, None,
         "Only when that serve was started with --token-file: the same file, readable by the user\n"
         "Dovecot runs this program as.", '# token_file = "/etc/dovecot-appauth/serve.token"'),
    )),
    ("nextcloud",
     'Used with [auth] backend = "nextcloud" (required then: url). An app password is right\n'
     "when Nextcloud answers 207 to `PROPFIND url` with it (HTTP basic auth), wrong on 401;\n"
     "anything else, a refused connection or the timeout is a temporary failure (UNAVAILABLE).\n"
     "%u is the URL-quoted user name. Use https unless Nextcloud is on this host.",
     (
        ("url", "str", None, None, "",
         '# url = "https://cloud.example.com/remote.php/dav/files/%u/"'),
        ("timeout", "number", 3.0, 0.1, "Seconds for connect, TLS, request and status line together.", ""),
        ("cache_seconds", "number", 60.0, None,
         "After a 207 the same user+password is accepted for this many seconds without asking\n"
         "Nextcloud (a keyed hash in <[audit.cache] path>/nextcloud/; wrong passwords are never\n"
         "cached). A password revoked in Nextcloud keeps working that long. 0: always ask.", ""),
        ("ca_file", "str", None, None, "PEM CA bundle for https (default: the system's).",
         '# ca_file = "/etc/ssl/certs/my-ca.pem"'),
        ("forward_ip", "bool", True, None,
         "Send X-Forwarded-For: <client IP>, so Nextcloud's brute-force protection sees the client.", ""),
    )),
    ("account",
     "The account gate (off by default): after the app password matched, the account must\n"
     "exist and be enabled, in LDAP or by one SQL query. SMTP AUTH through Dovecot SASL does\n"
     "no userdb lookup, so without it a user deleted from the directory keeps sending mail\n"
     "with their app passwords. The directory down, slow or refusing our bind is a temporary\n"
     "failure (client: UNAVAILABLE), never a wrong password; a missing, disabled or\n"
     "ambiguous account is refused with one line in Dovecot's log and an audit event.",
     (
        ("backend", "choice", "", ("", "ldap", "sql"),
         '"ldap" ([account.ldap], needs pip install \'dovecot-appauth[ldap]\'), "sql" ([account.sql]),\n'
         'or "" (no gate). import-upstream writes "ldap" from upstream\'s [ldap].', ""),
        ("timeout", "number", 3.0, 0.1,
         "Seconds for the whole check: connect, TLS, bind and search (or the query).", ""),
        ("cache_seconds", "number", 60.0, None,
         'An "active" answer is reused for this many seconds, from <[audit.cache] path>/cache.sqlite\n'
         "(JSON, keyed by user and directory, no secret). A refusal is never cached; an account\n"
         "disabled in the directory keeps working at most this long. 0: ask every login.", ""),
    )),
    ("account.ldap", "", (
        ("uri", "str", None, None,
         "ldap://host[:port] or ldaps://host[:port]; several, space-separated, are tried in turn\n"
         "within the one [account] timeout (each gets its share to connect).",
         '# uri = "ldaps://ldap.example.com"'),
        ("basedn", "str", None, None, "", '# basedn = "ou=users,dc=example,dc=com"'),
        ("filter", "str", "(uid=%u)", None,  # upstream's search: uid = the login name
         "%u the login name, %n its local part, %d its domain, each escaped (RFC 4515); %% a %.\n"
         "Exactly one entry must match (upstream searched (uid=<login name>) like this).", ""),
        ("bind_dn", "str", None, None,
         "Bind as a service account (default: anonymous). The password from a file readable by\n"
         "the dovecot user (first line; 0640 root:dovecot), or bind_password in this file, which\n"
         "must then be 0640 root:dovecot too. Never on a command line, never logged.",
         '# bind_dn = "cn=dovecot,ou=services,dc=example,dc=com"'),
        ("bind_password_file", "str", None, None, "",
         '# bind_password_file = "/etc/dovecot-appauth/ldap.secret"'),
        ("bind_password", "str", None, None, "", ""),
        ("starttls", "bool", False, None,
         "StartTLS on an ldap:// URI (upstream's `tls`). The server certificate is always\n"
         "verified, against ca_file (PEM) or the system's CAs.", ""),
        ("ca_file", "str", None, None, "", '# ca_file = "/etc/ssl/certs/ldap-ca.pem"'),
        # upstream's markers of a disabled account (its main.py): either attribute with this value
        ("disabled", "strings_table",
         (("loginShell", ("/bin/false",)), ("homeDirectory", ("/dev/null",))), None,
         "An entry with any of these attribute values is a disabled account (upstream's markers).", ""),
    )),
    ("account.sql", "", (
        ("query", "str", None, None,
         "For sites whose accounts live in the mail database. :user is the login name. No row:\n"
         "no such account; a row whose first column is 0, false, NULL or empty: disabled; any\n"
         "other row: active.", '# query = "SELECT active FROM mailbox WHERE username = :user"'),
        ("dsn", "str", None, None,
         "Another database for the query (same DSN forms as [database] dsn); default: [database] dsn.",
         '# dsn = "mysql+pymysql://accounts:secret@db.example.com/postfix"'),
    )),
)

EXAMPLE_HEADER = """\
dovecot-appauth configuration (TOML).

Default location: /etc/dovecot-appauth/config.toml; override with --config FILE or
the DOVECOT_APPAUTH_CONFIG environment variable. Keys shared with the upstream
dovecot_web_auth app keep their names and meaning, so its config.toml mostly works.
Relative paths are relative to this file's directory.
Check this file with:  dovecot-appauth check-config --config FILE
This file is written from the table of fields in config.py by scripts/write-config-example.py."""

# The rows of each section, in table order.
_ROWS: dict[str, tuple[tuple[str, str, Any, Any, str, str], ...]] = {
    section: rows for section, _help, rows in FIELDS}

LIST_KINDS = next(zip(*_ROWS["audit.lists"], strict=True))  # the deny lists' kinds: kind -> file
ALLOW_KINDS = tuple(key for key, kind, *_ in _ROWS["audit.allow"] if kind == STR)  # the global allow lists'


def _keys(section: str) -> tuple[str, ...]:
    """The keys of a section's rows: its class's fields (`__slots__`, with any children)."""
    return next(zip(*_ROWS[section], strict=True))  # the first column, without a Python loop on a login


class Section(Value):
    """A config section: its fields and their defaults are its rows of `FIELDS`.

    Plain `Value`s, not dataclasses (see values.py): the per-login program builds them on
    every login (`parse` fills them directly). Constructed with keywords only; a field not
    given gets its row's default; a table or a subsection (in `_children`) not given or
    None gets a fresh dict or instance. Fields are never assigned after __init__.
    """

    __slots__ = ()
    _section = ""
    _children: tuple[tuple[str, Any], ...] = ()  # (field, its class or {}), after the rows

    def __init__(self, **values: Any) -> None:
        for key, kind, default, *_ in _ROWS[self._section]:
            value = values.pop(key, _MISSING)
            if kind in TABLE_KINDS:  # None too means "the default", as for a subsection
                setattr(self, key, dict(default) if value is _MISSING or value is None else value)
            else:
                setattr(self, key, default if value is _MISSING else value)
        for name, default in self._children:
            value = values.pop(name, None)
            setattr(self, name, (default() if type(default) is type else {}) if value is None else value)
        if values:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(values)}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__
                          if name not in self._repr_hidden)
        return f"{type(self).__name__}({shown})"


_MISSING = object()


class DatabaseConfig(Section):
    _section = "database"  # connect_timeout is also the SQLite busy timeout
    __slots__ = _keys(_section)


class AuthConfig(Section):
    # backend "sql": app_passwords table; "nextcloud": [nextcloud] (nextcloud.py). hash_checks:
    # a failed password check costs at least this many hash verifications (the user's rows,
    # padded with dummy ones): wrong password and unknown user cost the same
    _section = "auth"
    __slots__ = _keys(_section)


class NextcloudConfig(Section):
    """`[nextcloud]`, used when `[auth] backend = "nextcloud"` (nextcloud.py reads it)."""

    _section = "nextcloud"
    __slots__ = _keys(_section)


class LdapAccountConfig(Section):
    """`[account.ldap]`: where and how the account gate asks the directory (account.py)."""

    _section = "account.ldap"
    __slots__ = _keys(_section)
    _repr_hidden = ("bind_password",)  # never in a log or traceback


class SqlAccountConfig(Section):
    """`[account.sql]`: the account gate as one SQL query (account.py); dsn None: [database] dsn."""

    _section = "account.sql"
    __slots__ = _keys(_section)
    _repr_hidden = ("dsn",)  # may hold a password


class AccountConfig(Section):
    """`[account]`: the gate that a login's account exists and is enabled (account.py)."""

    _section = "account"
    _children = (("ldap", LdapAccountConfig), ("sql", SqlAccountConfig))
    __slots__ = (*_keys(_section), *(name for name, _ in _children))


class UserdbConfig(Section):
    """Fields returned on success; %u user, %n local part, %d domain, %% a percent."""

    _section = "userdb"
    __slots__ = _keys(_section)


class MaxMindConfig(Section):
    _section = "audit.maxmind"
    __slots__ = _keys(_section)


class DnsConfig(Section):
    _section = "audit.dns"  # resolvers empty: the system's (/etc/resolv.conf)
    __slots__ = _keys(_section)


class RdapConfig(Section):
    _section = "audit.rdap"
    __slots__ = _keys(_section)


class OriginAsConfig(Section):
    """`[audit.origin_as]`: the origin AS over DNS (Team Cymru), as upstream's ipwhois asked it."""

    _section = "audit.origin_as"
    __slots__ = _keys(_section)


class CacheConfig(Section):
    _section = "audit.cache"
    __slots__ = _keys(_section)


class UserAllow(Section):
    """`[audit.allow.users."user"]`: one user's own allow entries."""

    _section = "audit.allow.users.*"
    __slots__ = _keys(_section)


class AuditConfig(Section):
    # lists and allow: kind -> file (deny lists, global allow lists); allow_users: lower-cased
    # user -> UserAllow, from [audit.allow.users]
    _section = "audit"
    _children = (("maxmind", MaxMindConfig), ("dns", DnsConfig), ("rdap", RdapConfig), ("origin_as", OriginAsConfig),
                 ("cache", CacheConfig), ("lists", {}), ("allow", {}), ("allow_users", {}))
    __slots__ = (*_keys(_section), *(name for name, _ in _children))


class AlertsConfig(Section):
    """`[alerts]`: new-place alerts on successful logins (alerts.py)."""

    _section = "alerts"
    __slots__ = _keys(_section)


class FastPathConfig(Section):
    """`[fast_path]`: the per-login program asks a running serve over its Unix socket (fast_path.py)."""

    _section = "fast_path"
    __slots__ = _keys(_section)


class ThrottleSettings(Section):
    """`[throttle]`: the brute-force limiter's settings (throttle.py decides with them)."""

    _section = "throttle"
    __slots__ = _keys(_section)

    @property
    def known_client_window(self) -> float:
        return self.known_client_days * 86400.0


# The class of each section that is one; [audit.lists] and [audit.allow] are dicts of
# AuditConfig (`lists`, `allow`, `allow_users`).
_SECTION_CLASS: dict[str, type[Section]] = {cls._section: cls for cls in (
    DatabaseConfig, AuthConfig, UserdbConfig, AuditConfig, MaxMindConfig, DnsConfig, RdapConfig, OriginAsConfig,
    CacheConfig, UserAllow, AlertsConfig, ThrottleSettings, NextcloudConfig, AccountConfig, LdapAccountConfig,
    SqlAccountConfig, FastPathConfig)}
# subsections read from within their parent's table: "audit" -> [("maxmind", "audit.maxmind"), ...]
_CHILDREN: dict[str, list[tuple[str, str]]] = {}
for _section in _ROWS:
    _parent, _, _child = _section.rpartition(".")
    if _parent and _child != "*":
        _CHILDREN.setdefault(_parent, []).append((_child, _section))
del _section, _parent, _child
ROOT_SECTIONS = tuple(section for section in _ROWS if "." not in section)

class Config(Value):
    __slots__ = ("account", "alerts", "audit", "auth", "database", "fast_path", "nextcloud", "path", "problems",
                 "throttle", "userdb")

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
        fast_path: FastPathConfig | None = None,
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
        self.fast_path = FastPathConfig() if fast_path is None else fast_path
        self.problems = problems  # warnings that did not stop loading

    def resolve(self, path: str) -> str:
        """A path from the config, relative to the config file's directory."""
        if path.startswith("/") or not self.path:
            return path
        return paths.join(paths.dirname(paths.absolute(self.path)), path)


def config_path(explicit: str | None = None, env: dict[str, str] | None = None) -> str:
    """`--config` wins, then DOVECOT_APPAUTH_CONFIG, then the default path."""
    if explicit:
        return explicit
    environ = paths.environment() if env is None else env
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

    def int(self, key: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self._get(key, (int,), "a whole number")
        if value is None:
            return default
        if value < minimum:
            self.problems.append(Problem(f"{self.where} {key}", f"must be at least {minimum}"))
            return default
        if maximum is not None and value > maximum:
            self.problems.append(Problem(f"{self.where} {key}", f"must be at most {maximum}"))
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

    def subtable(self, key: str) -> _Reader:
        """A reader for the table `key` of this section: `[section.key]`."""
        return _Reader(self.table(key), f"{self.where[:-1]}.{key}]", self.problems)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.problems.append(Problem(f"{self.where} {key}", "unknown key (ignored)", "warning"))


def _field_name_ok(name: str) -> bool:
    """A Dovecot extra-field name that survives both ways of answering (reply.py); the
    fast path checks serve's answers with the same rule (core.field_name_ok)."""
    from .core import field_name_ok  # loaded already by every program that reads a config

    return field_name_ok(name)


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




def _read_rows(r: _Reader, section: str, put: Any) -> None:
    """Read a section's rows from its table, each checked as its row says; `put(key, value)`."""
    data = r.data
    for key, kind, default, check, _help, _sample in _ROWS[section]:
        if key not in data:  # most keys of a config are left out: their default, at once
            put(key, dict(default) if kind in TABLE_KINDS else default)
            continue
        if kind == STR:
            value = r.str(key, default) or default
        elif kind == BOOL:
            value = r.bool(key, default)
        elif kind == NUMBER:
            value = r.number(key, default, 0.0 if check is None else check)
        elif kind == STRINGS:
            value = r.strings(key)
        elif kind == CHOICE:
            aliases = dict(check[1]) if type(check[0]) is tuple else {}
            raw = data[key]
            if type(raw) is str and raw in aliases:
                # e.g. upstream's config.toml.dist spells "unknown" "unkown": accepted, with a warning
                r.seen.add(key)
                value = aliases[raw]
                r.problems.append(Problem(f"{r.where} {key}", f'"{raw}" read as "{value}"', "warning"))
            else:
                value = r.choice(key, default, check[0] if aliases else check)
        elif kind == INT:
            if type(check) is tuple:
                value = r.int(key, default, check[0], check[1])
            else:
                value = r.int(key, default, check or 0)
        elif kind == TEXT:
            value = r.str(key, default)
        elif kind == ID:
            raw = r._get(key, (str, int), "a string or number")
            value = default if raw is None else str(raw)
        elif kind == COMMAND:  # a string runs through /bin/sh -c, a list as is
            if isinstance(data[key], list):
                value = r.strings(key) or default
            else:
                value = r.str(key, default) or default
        elif kind == STRING_TABLE:
            value = r.string_table(key)
        elif kind == STRINGS_TABLE:
            sub = r.subtable(key)
            value = {name: sub.strings(name) for name in sub.data}
            sub.finish()
        elif kind == USER_TABLES:
            value = {}
            for user, table in r.table(key).items():
                if not isinstance(table, dict):
                    r.problems.append(Problem(f"{r.where[:-1]}.{key}] {user}", "must be a table"))
                    continue
                ur = _Reader(table, f"{r.where[:-1]}.{key}.{user}]", r.problems)
                value[user.lower()] = _read_section(ur, f"{section}.{key}.*")
        else:  # a row with a kind this function does not know: a bug in FIELDS, not in the config
            raise AssertionError(f"[{section}] {key}: unknown kind {kind!r}")
        put(key, value)


def _read_section(r: _Reader, section: str) -> Any:
    """A section's object (its class with its rows and subsections), or for [audit.lists]
    and [audit.allow] the dict of the lists it names; unknown keys are noted.

    Built field by field, without the generic `Section.__init__` and its keyword dict:
    a login parses its config every time (the cache keeps the TOML, not the objects).
    """
    cls = _SECTION_CLASS.get(section)
    if cls is None:
        target: Any = {}
        put = target.__setitem__
    else:
        target = object.__new__(cls)
        put = target.__setattr__
    _read_rows(r, section, put)
    for child, child_section in _CHILDREN.get(section, ()):
        put(child, _read_section(r.subtable(child), child_section))
    r.finish()
    if section == "audit":
        allow = target.allow
        target.allow_users = allow.pop("users")
        target.allow = {kind: file for kind, file in allow.items() if file}
        target.lists = {kind: file for kind, file in target.lists.items() if file}
        if target.disabled_services:
            target.disabled_services = tuple(s.lower() for s in target.disabled_services)
    elif section == "userdb" and target.extra:
        target.extra = _userdb_extra(r, target.extra)
    return target


def _userdb_extra(r: _Reader, extra: dict[str, str]) -> dict[str, str]:
    """[userdb.extra] with the userdb_ prefix; a name Dovecot's reply cannot carry is an error."""
    for key in list(extra):
        if not _field_name_ok(key):
            # the reply helper gets the names space-separated in EXTRA and as environment
            # variables: a space loses the field, a `=` makes every login fail
            extra.pop(key)
            r.problems.append(Problem(f"{r.where}.extra {key!r}", "a field name must not be empty or contain "
                                      "white space, '=' or a control character"))
        elif not key.startswith("userdb_"):
            extra[f"userdb_{key}"] = extra.pop(key)
    return extra


def parse(data: dict[str, Any], path: str | None = None) -> Config:
    """Build a `Config` from parsed TOML. Raises ConfigError on any error-level problem."""
    name = paths.basename(path) if path else "config"
    problems: list[Problem] = []
    top = _Reader(data, f"{name}:", problems)
    sections = {section.replace(".", "_"): _read_section(_Reader(top.table(section), f"{name}: [{section}]", problems),
                                                         section)
                for section in ROOT_SECTIONS}
    top.finish()
    _check_nextcloud(problems, name, sections["nextcloud"], sections["auth"].backend == "nextcloud")
    _check_account(problems, name, sections["account"])
    _check_networks(problems, name, sections["auth"], sections["audit"], sections["throttle"])
    if any(p.level == "error" for p in problems):
        raise ConfigError(problems)
    return Config(path=path, problems=tuple(problems), **sections)


def _check_nextcloud(problems: list[Problem], name: str, settings: NextcloudConfig, used: bool) -> None:
    url = settings.url
    if url is None:
        if used:
            problems.append(Problem(f"{name}: [nextcloud] url", 'is required with [auth] backend = "nextcloud"'))
        return
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if scheme not in ("http", "https") or not host or "@" in host or any(c.isspace() for c in url):
        problems.append(Problem(f"{name}: [nextcloud] url", "must be http(s)://host[:port]/path, without credentials"))


def _check_account(problems: list[Problem], name: str, account: AccountConfig) -> None:
    """The chosen backend's keys are required, and must fit together."""
    ldap, sql = account.ldap, account.sql
    where_ldap, where_sql = f"{name}: [account.ldap]", f"{name}: [account.sql]"
    if account.backend == "ldap":
        for key in ("uri", "basedn"):
            if getattr(ldap, key) is None:
                problems.append(Problem(f"{where_ldap} {key}", 'is required with [account] backend = "ldap"'))
        for uri in (ldap.uri or "").split():
            if not uri.startswith(("ldap://", "ldaps://")) or "@" in uri:
                problems.append(Problem(f"{where_ldap} uri", f"{uri!r} must be ldap://host[:port] or "
                                                              "ldaps://host[:port]"))
        if "%u" not in ldap.filter and "%n" not in ldap.filter:
            problems.append(Problem(f"{where_ldap} filter", "must contain %u or %n (the login name)"))
        if not (ldap.filter.startswith("(") and ldap.filter.endswith(")")):
            problems.append(Problem(f"{where_ldap} filter", "must be an LDAP filter in parentheses"))
        if ldap.bind_password and ldap.bind_password_file:
            problems.append(Problem(where_ldap, "give bind_password or bind_password_file, not both"))
        if (ldap.bind_password or ldap.bind_password_file) and not ldap.bind_dn:
            problems.append(Problem(f"{where_ldap} bind_dn", "is required with a bind password"))
        if ldap.starttls and any(u.startswith("ldaps://") for u in (ldap.uri or "").split()):
            problems.append(Problem(f"{where_ldap} starttls", "ldaps:// is TLS already: drop starttls"))
    elif account.backend == "sql":
        if sql.query is None:
            problems.append(Problem(f"{where_sql} query", 'is required with [account] backend = "sql"'))
        elif ":user" not in sql.query:
            problems.append(Problem(f"{where_sql} query", "must use :user (the login name)"))


def _read_toml(path: str) -> dict[str, Any]:
    """The file's TOML as a dict; every failure is a ConfigError naming the file."""
    import tomllib  # only here: a warm login gets the parsed form from the config cache

    try:
        with open(path, "rb") as f:
            data = f.read()
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:  # where, not the byte: it may be part of a password
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError([Problem(path, f"config file is not UTF-8 (line {line}): TOML must be UTF-8")]) from None
    except FileNotFoundError:
        raise ConfigError([Problem(path, "config file not found")]) from None
    except PermissionError:
        raise ConfigError([Problem(path, f"config file not readable by uid {posix.getuid()}")]) from None
    except OSError as e:
        raise ConfigError([Problem(path, f"cannot read config file: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(path, f"invalid TOML: {e}")]) from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError([Problem(path, "invalid TOML: arrays or tables nested too deeply")]) from None


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
# (The file's name and key: config_cache.py.)


def config_cache_file(path: str) -> str:
    """The cache file of the config at `path` (config_cache.py)."""
    from . import config_cache

    return config_cache.config_cache_file(paths.absolute(path))


def _cache_key(path: str, st: os.stat_result) -> tuple[int | str, ...]:
    return cache_key(paths.absolute(path), st)


def load_cached(path: str, cached: tuple | None = None) -> Config:
    """`load`, for the per-login program: the parsed TOML comes from the config cache when
    the file is unchanged (see above). Same Config, same problems, same errors.

    The cache also holds `ipnum.global_table()`, the standard library's is_global as integer
    intervals, derived from `ipaddress` when the file is written and handed to `ipnum` on
    a hit, so a warm login classifies addresses without importing `ipaddress`; and the
    fast path's record (`fast_path.record`), which lets a login be handed to serve
    without importing this module. `cached`: the cache file's content as already read in
    this process (entry.checkpassword), checked here against the file's key as if read now."""
    from . import ipnum, private_file

    try:
        st = posix.stat(path)
    except OSError:
        return load(path)  # reports the problem exactly as always
    file = config_cache_file(path)
    key = _cache_key(path, st)
    if cached is None:
        cached = private_file.load(file)
    if type(cached) is tuple and len(cached) == 4 and cached[0] == key and type(cached[1]) is dict:
        if cached[2] is not None:
            ipnum.use_global_table(cached[2])  # a damaged table is ignored: derived on first use
        return parse(cached[1], path)
    data = _read_toml(path)
    try:
        unchanged = _cache_key(path, posix.stat(path)) == key
    except OSError:
        unchanged = False
    table = ipnum.global_table() if unchanged else None  # None: derivation failed, ipaddress answers
    if table is not None:
        ipnum.use_global_table(table)  # this login need not derive it again
    config = None
    try:
        config = parse(data, path)
    finally:  # a config with errors is cached too: the next login reports them without tomllib
        if unchanged:
            from .fast_path import record

            fast = record(config) if config is not None else None
            if private_file.store(file, (key, data, table, fast)):  # a file changed while read is not cached
                _prune_config_cache(paths.dirname(file), keep=file)
    return config


CONFIG_CACHE_MAX_AGE = 86400.0  # seconds


def _prune_config_cache(directory: str, keep: str) -> None:
    """Remove other configs' cache files not written for a day (on a cache miss only).

    One config means one file; test runs and `--config` experiments would otherwise
    leave one per config path. A config still in use just gets its file written again.
    """
    import os
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


# ---------------------------------------------------------------------------
# The commented example, conf/config.toml, written from FIELDS (never by hand):
# scripts/write-config-example.py writes it and tests/unit/test_config.py checks it.


def _toml_value(value: Any) -> str:
    """A default as TOML: the few types FIELDS holds. Whole numbers are written without ".0"."""
    import json  # only here: the example is written by a script, never by a login

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes as JSON for these texts
    return str(value)


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.split("\n")] if text else []


def _example_rows(lines: list[str], rows: tuple[tuple[str, str, Any, Any, str, str], ...]) -> None:
    for n, (key, _kind, default, _check, help_text, sample) in enumerate(rows):
        if help_text and n:
            lines.append("")
        lines += _comment(help_text)
        if default is not None:
            lines.append(f"{key} = {_toml_value(default)}")
        if sample:
            lines += sample.split("\n")


def example_toml() -> str:
    """The example configuration file, with every key, its default and its help."""
    lines = _comment(EXAMPLE_HEADER)
    for section, section_help, rows in FIELDS:
        if "*" in section:  # described by the row that names it ([audit.allow] users)
            continue
        lines += ["", f"[{section}]", *_comment(section_help)]
        _example_rows(lines, tuple(row for row in rows if row[1] not in TABLE_KINDS))
        for key, kind, default, _check, help_text, sample in rows:
            if kind == USER_TABLES:  # a table per user: only an example, in comments
                lines += ["", *_comment(help_text), *sample.split("\n")]
            elif kind in TABLE_KINDS:
                lines += ["", f"[{section}.{key}]", *_comment(help_text)]
                lines += [f"{name} = {_toml_value(value)}" for name, value in default]
                lines += sample.split("\n") if sample else []
    return "\n".join(lines) + "\n"
