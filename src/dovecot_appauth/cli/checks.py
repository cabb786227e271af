"""`check-config`: every problem with the configuration, its files, sources and database."""

from __future__ import annotations

import os

from ..config import Config, ConfigError, Problem, load


def check_all(path: str, *, check_database: bool = True, service_user: str | None = None,
              check_dovecot: bool = True, dovecot_config: str | None = None) -> list[Problem]:
    """Every problem of the config at `path`. Files are also checked as the service user
    (`service_user`, default: the cache directory's owner; see service_user.py);
    `check_dovecot`: also read `doveconf -n` (of `dovecot_config`) when Dovecot is installed here."""
    dovecot = check_dovecot_chain(dovecot_config) if check_dovecot else []
    try:
        config = load(path)
    except ConfigError as e:
        return list(e.problems) + dovecot
    problems = list(config.problems)
    problems += check_permissions(path, config)
    from ..audit.lists import check_lists

    problems += check_lists(config)
    problems += check_as_service_user(path, config, service_user, already=problems)
    problems += check_audit_sources(config)
    problems += check_allow_sources(config)
    problems += check_audit_log(config)
    problems += check_nextcloud(config)
    problems += check_account(config, check_database=check_database)
    if check_database:
        problems += check_database_schema(config)
    return problems + dovecot


def check_dovecot_chain(dovecot_config: str | None = None) -> list[Problem]:
    """Dovecot's passdb chain as `doveconf -n` shows it (dovecot_conf.py). Without Dovecot
    on this host nothing is checked, unless a Dovecot config was named."""
    from .dovecot_conf import DoveconfError, audit_chain_problems, find_doveconf, parse_passdbs, read_doveconf

    if dovecot_config is None and find_doveconf() is None:
        return []
    try:
        text = read_doveconf(dovecot_config)
    except DoveconfError as e:
        return [Problem("Dovecot config (doveconf -n)", f"not checked: {e}", "warning")]
    return [Problem(where, message, "warning") for where, message in audit_chain_problems(parse_passdbs(text))]


def check_as_service_user(path: str, config: Config, explicit: str | None, *,
                          already: list[Problem]) -> list[Problem]:
    """What the logins' user cannot open (lists, `.mmdb`, database, cache, log_file), and the
    cache directory's owner and mode. A file already reported as an error (missing, say)
    is not reported again."""
    from .service_user import ServiceUserError, access_problems, check_cache_directory, resolve, root_cache_warning

    try:
        user = resolve(config, explicit)
    except ServiceUserError as e:
        return [Problem("service user", str(e))]
    problems = [Problem("service user", f"files checked as {user.describe()}", "info")]
    warning = root_cache_warning(user, config)
    if warning:
        problems.append(Problem("service user", warning, "warning"))
    problems += check_cache_directory(config, user)
    reported = {p.where for p in already if p.level == "error"}
    for problem in access_problems(config, path, user):
        if not any(problem.where.endswith(" " + where) for where in reported):
            problems.append(problem)
    return problems


def check_permissions(path: str, config: Config) -> list[Problem]:
    """A DSN with a password in a file others can read is a leak waiting to happen."""
    from ..dsn import DsnError, parse_dsn

    try:
        dsn = parse_dsn(config.database.dsn)
    except DsnError:
        return []
    if not dsn.password:
        return []
    return _config_permissions(path, "a database password")


def _dsn_has_password(text: str) -> bool:
    from ..dsn import DsnError, parse_dsn

    try:
        return bool(parse_dsn(text).password)
    except DsnError:
        return False


def _config_permissions(path: str, what: str) -> list[Problem]:
    """A config holding `what` must be 0640 root:dovecot at most."""
    st = os.stat(path)
    if st.st_mode & 0o004:
        return [Problem(path, f"holds {what} and is world-readable: chmod 0640, group dovecot", "warning")]
    if st.st_mode & 0o040 and st.st_gid != _dovecot_gid():
        return [Problem(path, f"holds {what} and is readable by a group other than dovecot's: "
                              "chgrp dovecot, chmod 0640", "warning")]
    return []


def _dovecot_gid() -> int | None:
    import grp

    try:
        return grp.getgrnam("dovecot").gr_gid
    except KeyError:
        return None


def check_audit_sources(config: Config) -> list[Problem]:
    """Import every lazily loaded source once, so a missing module shows here, not mid-login."""
    if not config.audit.enabled:
        return []
    from ..audit.enrich import check_sources

    return [
        Problem(f"[audit] source {name}", message, "warning")
        for name, message in check_sources(config).items()
        if message
    ]


def check_audit_log(config: Config, journal_socket: str | None = None) -> list[Problem]:
    """Where the audit lines can go on this host (audit/line.py's emit): journald's socket,
    the syslog socket, `log_file`. What a login would otherwise say on every login (a
    missing socket), or never (lines that go nowhere), is said here before the first one.
    Whether the service user may send to a socket that is there: service_user.access_problems."""
    from .service_user import is_socket

    audit = config.audit
    if not audit.enabled:
        return []
    if journal_socket is None:
        from ..audit.line import JOURNAL_SOCKET as journal_socket

    problems = []
    journald = audit.journal != "no" and is_socket(journal_socket)
    if audit.journal == "yes" and not journald:
        problems.append(Problem("[audit] journal", f'"yes", but {journal_socket} is not a socket here (no '
                                "systemd-journald): every login will say so, and its line goes to syslog", "warning"))
    if journald:
        return problems
    if audit.syslog_socket and not is_socket(audit.syslog_socket):
        problems.append(Problem("[audit] syslog_socket", f"{audit.syslog_socket} is not a socket here (no syslog "
                                "daemon?): every login will say that its audit line was not logged there"
                                + (' (for log_file alone, set syslog_socket = "")' if audit.log_file else ""),
                                "warning"))
    elif not audit.syslog_socket and not audit.log_file:
        problems.append(Problem("[audit]", 'the audit lines go nowhere: no journald here, syslog_socket = "" and '
                                "no log_file", "warning"))
    return problems


def check_allow_sources(config: Config) -> list[Problem]:
    """An allow list matches only facts the admin can trust (rules.ALLOW_RULES): AS numbers
    from MaxMind's ASN database or the origin-AS service, MaxMind's country. Without the
    source that feeds it, it can never allow a login: said here, before such a login."""
    audit = config.audit
    if not audit.enabled:
        return []

    def where(kind: str) -> list[str]:
        found = [f"[audit.allow] {kind}"] if audit.allow.get(kind) else []
        return found + [f'[audit.allow.users."{user}"] {kind}'
                        for user, allow in sorted(audit.allow_users.items()) if getattr(allow, kind)]

    problems = []
    if not audit.maxmind.asn and not audit.origin_as.enabled:
        problems += [Problem(w, "matches only the AS number of MaxMind's ASN database ([audit.maxmind] asn) or "
                                "of the origin-AS service ([audit.origin_as]), and neither is configured: it can "
                                "never allow a login (RDAP's origin AS is written by the network's holder, so it "
                                "never allows)", "warning") for w in where("as_numbers")]
    if not audit.maxmind.city:
        problems += [Problem(w, "matches only MaxMind's country ([audit.maxmind] city), which is not configured: "
                                "it can never allow a login (RDAP's network country is written by the network's "
                                "holder, so it never allows)", "warning") for w in where("countries")]
    return problems


def check_nextcloud(config: Config) -> list[Problem]:
    """`[auth] backend = "nextcloud"`: what `parse` cannot see from the TOML alone."""
    if config.auth.backend != "nextcloud":
        return []
    from urllib.parse import urlsplit

    nc = config.nextcloud
    problems = []
    if nc.ca_file and not os.access(config.resolve(nc.ca_file), os.R_OK):
        problems.append(Problem("[nextcloud] ca_file", f"{config.resolve(nc.ca_file)} is not readable"))
    parts = urlsplit(nc.url or "")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        problems.append(Problem("[nextcloud] url", "plain http to another host sends app passwords in clear: "
                                                   "use https", "warning"))
    if nc.cache_seconds > 600:
        problems.append(Problem("[nextcloud] cache_seconds", f"{nc.cache_seconds:g}s: a password revoked in "
                                                             "Nextcloud keeps working that long", "warning"))
    return problems


def check_account(config: Config, *, check_database: bool = True) -> list[Problem]:
    """`[account]`: what `parse` cannot see from the TOML alone (files, library, the query)."""
    settings = config.account
    if not settings.backend:
        return []
    problems = []
    if settings.cache_seconds > 600:
        problems.append(Problem("[account] cache_seconds", f"{settings.cache_seconds:g}s: an account disabled in "
                                                           "the directory keeps working that long", "warning"))
    if settings.backend == "sql":
        if settings.sql.dsn and config.path and _dsn_has_password(settings.sql.dsn):
            problems += _config_permissions(config.path, "a database password ([account.sql] dsn)")
        if check_database:
            from ..account import AccountAnswer
            from ..account import check_account as ask
            from ..core import TempFail

            try:  # the query, once, for a name that cannot exist: a missing table shows here
                answer: AccountAnswer | str = ask("check-config@invalid", config, now=0.0, use_cache=False)
            except TempFail as e:
                answer = str(e)
            if isinstance(answer, str):
                problems.append(Problem("[account.sql] query", answer))
        return problems
    ldap_settings = settings.ldap
    try:
        import ldap  # noqa: F401 - the login imports it on a gate cache miss
    except ImportError:
        problems.append(Problem("[account] backend", "python-ldap is not installed: every login will be a "
                                                     "temporary failure (pip install 'dovecot-appauth[ldap]')"))
    if ldap_settings.bind_password and config.path:
        problems += _config_permissions(config.path, "an LDAP bind password")
    if ldap_settings.bind_password_file:
        path = config.resolve(ldap_settings.bind_password_file)
        try:
            st = os.stat(path)
            with open(path, "rb"):
                pass
        except OSError as e:
            problems.append(Problem("[account.ldap] bind_password_file", f"{path}: {e.strerror}"))
        else:
            if st.st_mode & 0o004:
                problems.append(Problem("[account.ldap] bind_password_file", f"{path} is world-readable: "
                                                                             "chmod 0640, group dovecot", "warning"))
    if ldap_settings.ca_file and not os.access(config.resolve(ldap_settings.ca_file), os.R_OK):
        problems.append(Problem("[account.ldap] ca_file", f"{config.resolve(ldap_settings.ca_file)} is not readable"))
    loopback = ("ldap://127.", "ldap://[::1]", "ldap://localhost")
    clear = [u for u in (ldap_settings.uri or "").split() if u.startswith("ldap://") and not u.startswith(loopback)]
    if clear and not ldap_settings.starttls and (ldap_settings.bind_password or ldap_settings.bind_password_file):
        problems.append(Problem("[account.ldap] uri", f"{clear[0]} without starttls sends the bind password in "
                                                      "clear: use ldaps:// or starttls = true", "warning"))
    return problems


def check_database_schema(config: Config) -> list[Problem]:
    from ..dsn import DsnError, parse_dsn

    where = "[database] dsn"
    try:
        dsn = parse_dsn(config.database.dsn)
    except DsnError as e:
        return [Problem(where, str(e))]
    where = f"{where} ({dsn.redacted()})"
    if dsn.dialect == "sqlite" and dsn.path and not os.path.exists(dsn.path):
        # connecting would create an empty file: report instead
        hint = "run 'dovecot-appauth init-db'"
        if "%" in config.database.dsn:
            hint += " (the dsn is a URL: %XX is an escape, write a % in the file name as %25)"
        return [Problem(where, f"database file does not exist: {hint}")]
    if dsn.dialect == "sqlite":
        # open it exactly as a login does (store.py's own URI), not only through SQLAlchemy
        from ..core import TempFail
        from ..store import open_store

        try:
            open_store(config.database.dsn, config.database.connect_timeout).close()
        except TempFail as e:
            return [Problem(where, f"a login cannot open it: {e}")]
    grant_problems: list[Problem] = []
    hidden: set[str] = set()
    if dsn.dialect != "sqlite":
        # A least-privilege account sees only the tables it was granted: probe what the
        # login needs first, so that a missing GRANT is reported as one, not as a missing table.
        grant_problems, hidden = check_grants(config, where)
    try:
        from .schema import check_schema, make_engine

        engine = make_engine(config.database.dsn, config.database.connect_timeout)
        missing = check_schema(engine)
    except Exception as e:
        message = str(getattr(e, "orig", None) or e).splitlines()[0][:300]
        return [*grant_problems, Problem(where, f"cannot check the database: {message}")]
    missing = [m for m in missing if m.split(" ")[1].split(".")[0] not in hidden]
    # The plugin's tables are needed for any login; the side tables of newer versions
    # (policies, audit events, failed logins) are optional until `upgrade-db` adds them.
    core = ("table app_passwords ", "table log ", "column app_passwords.", "column log.", "view ")
    return grant_problems + [
        Problem(where, f"{m}: run 'dovecot-appauth init-db'")
        if m.startswith(core) else
        Problem(where, f"{m}: run 'dovecot-appauth upgrade-db'", "warning")
        for m in missing
    ]


# One statement per privilege that the login uses, touching no row: MariaDB checks the
# privilege before it looks for rows (`WHERE 1 = 0`), and reports 1142/1143 when it is missing.
_PROBES = {
    "SELECT": "SELECT 1 FROM `{table}` WHERE 1 = 0",
    "INSERT": "INSERT INTO `{table}` ({column}) SELECT NULL FROM DUAL WHERE 1 = 0",
    "UPDATE": "UPDATE `{table}` SET {column} = {column} WHERE 1 = 0",
}
_PROBE_COLUMNS = {"log": "pwid", "known_clients": "uid", "audit_events": "uid", "auth_failures": "uid"}


def check_grants(config: Config, where: str) -> tuple[list[Problem], set[str]]:
    """MariaDB: the privileges of store.MAIL_HOST_GRANTS that this account lacks, each with
    the GRANT to run; and the tables and views it cannot see (so not reported as missing)."""
    from ..core import TempFail
    from ..store import MAIL_HOST_GRANTS, MysqlStore, open_store

    try:
        store = open_store(config.database.dsn, config.database.connect_timeout)
    except TempFail as e:
        return [Problem(where, str(e))], set()
    assert isinstance(store, MysqlStore)
    problems: list[Problem] = []
    hidden: set[str] = set()
    needed = _tables_in_use(config)
    try:
        for table, privileges in MAIL_HOST_GRANTS.items():
            denied = []
            for privilege in (p.strip() for p in privileges.split(",")):
                sql = _PROBES[privilege].format(table=table, column=_PROBE_COLUMNS.get(table, "uid"))
                code = _probe(store, sql)
                if code in (1142, 1143):
                    denied.append(privilege)
                    hidden.add(table)
            if denied:
                grant = store.grant_statement(table)
                level = "error" if table in needed else "warning"
                problems.append(Problem(where, f"no {', '.join(denied)} privilege on table {table} "
                                               f"({_USES[table]}): run {grant}", level))
        from .schema import VIEW_NAME

        if _probe(store, f"SELECT 1 FROM `{VIEW_NAME}` WHERE 1 = 0") in (1142, 1143):
            hidden.add(VIEW_NAME)  # the webmail's view; a login does not read it
    finally:
        store.close()
    return problems, hidden


_USES = {
    "app_passwords": "every login", "app_password_policy": "every login (per-password policies)",
    "log": "every successful login", "audit_events": "the audit events and alerts",
    "auth_failures": "the brute-force limiter", "known_clients": "the brute-force limiter's known clients",
}


def _tables_in_use(config: Config) -> set[str]:
    """The tables a login of this config cannot do without (a missing GRANT is an error)."""
    tables = {"app_passwords", "app_password_policy", "log"}
    if config.audit.enabled and config.audit.record_events:
        tables.add("audit_events")
    if config.throttle.enabled:
        tables.add("auth_failures")
        if config.throttle.known_client_days > 0:
            tables.add("known_clients")
    return tables


def _probe(store: object, sql: str) -> int | None:
    """The MariaDB error code of `sql` (None: it ran)."""
    cursor = store.conn.cursor()  # type: ignore[attr-defined]
    try:
        cursor.execute(sql)
    except store._errors as e:  # type: ignore[attr-defined]
        return e.args[0] if e.args else -1
    finally:
        cursor.close()
    return None
