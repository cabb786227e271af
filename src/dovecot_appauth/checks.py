"""`check-config`: every problem with the configuration, its files, sources and database."""

from __future__ import annotations

import os

from .config import Config, ConfigError, Problem, load


def check_all(path: str, *, check_database: bool = True, check_dovecot: bool = True,
              dovecot_config: str | None = None) -> list[Problem]:
    """Every problem; `check_dovecot`: also read `doveconf -n` (of `dovecot_config`) when
    Dovecot is installed here."""
    dovecot = check_dovecot_chain(dovecot_config) if check_dovecot else []
    try:
        config = load(path)
    except ConfigError as e:
        return list(e.problems) + dovecot
    problems = list(config.problems)
    problems += check_permissions(path, config)
    from .lists import check_lists

    problems += check_lists(config)
    problems += check_audit_sources(config)
    problems += check_nextcloud(config)
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
    try:
        from .schema import check_schema, make_engine

        engine = make_engine(config.database.dsn, config.database.connect_timeout)
        missing = check_schema(engine)
    except Exception as e:
        message = str(getattr(e, "orig", None) or e).splitlines()[0][:300]
        return [Problem(f"{where} ({dsn.redacted()})", f"cannot check the database: {message}")]
    # The plugin's tables are needed for any login; the side tables of newer versions
    # (policies, audit events, failed logins) are optional until `upgrade-db` adds them.
    core = ("table app_passwords ", "table log ", "column app_passwords.", "column log.", "view ")
    return [
        Problem(f"{where} ({dsn.redacted()})", f"{m}: run 'dovecot-appauth init-db'")
        if m.startswith(core) else
        Problem(f"{where} ({dsn.redacted()})", f"{m}: run 'dovecot-appauth upgrade-db'", "warning")
        for m in missing
    ]
