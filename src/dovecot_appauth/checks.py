"""`check-config`: every problem with the configuration, its files, sources and database."""

from __future__ import annotations

import os

from .config import Config, ConfigError, Problem, load


def check_all(path: str, *, check_database: bool = True) -> list[Problem]:
    try:
        config = load(path)
    except ConfigError as e:
        return list(e.problems)
    problems = list(config.problems)
    problems += check_permissions(path, config)
    from .lists import check_lists

    problems += check_lists(config)
    problems += check_audit_sources(config)
    problems += check_nextcloud(config)
    if check_database:
        problems += check_database_schema(config)
    return problems


def check_permissions(path: str, config: Config) -> list[Problem]:
    """A DSN with a password in a file others can read is a leak waiting to happen."""
    from .dsn import DsnError, parse_dsn

    try:
        dsn = parse_dsn(config.database.dsn)
    except DsnError:
        return []
    if not dsn.password:
        return []
    st = os.stat(path)
    if st.st_mode & 0o004:
        return [Problem(path, "holds a database password and is world-readable: chmod 0640, group dovecot",
                        "warning")]
    if st.st_mode & 0o040 and st.st_gid != _dovecot_gid():
        return [Problem(path, "holds a database password and is readable by a group other than dovecot's: "
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
    from .enrich import check_sources

    return [
        Problem(f"[audit] source {name}", message, "warning")
        for name, message in check_sources(config).items()
        if message
    ]


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


def check_database_schema(config: Config) -> list[Problem]:
    from .dsn import DsnError, parse_dsn

    where = "[database] dsn"
    try:
        dsn = parse_dsn(config.database.dsn)
    except DsnError as e:
        return [Problem(where, str(e))]
    if dsn.dialect == "sqlite" and dsn.path and not os.path.exists(dsn.path):
        # connecting would create an empty file: report instead
        return [Problem(f"{where} ({dsn.redacted()})", "database file does not exist: run 'dovecot-appauth init-db'")]
    where = f"{where} ({dsn.redacted()})"
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
    from .core import TempFail
    from .store import MAIL_HOST_GRANTS, MysqlStore, open_store

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
