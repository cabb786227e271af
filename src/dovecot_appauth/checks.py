"""`check-config`: every problem with the configuration, its files and its database."""

from __future__ import annotations

from .config import ConfigError, Problem, load


def check_all(path: str, *, check_database: bool = True) -> list[Problem]:
    try:
        config = load(path)
    except ConfigError as e:
        return list(e.problems)
    problems = list(config.problems)
    if check_database:
        problems += check_database_schema(config)
    return problems


def check_database_schema(config) -> list[Problem]:
    from .dsn import DsnError, parse_dsn

    where = "[database] dsn"
    try:
        dsn = parse_dsn(config.database.dsn)
    except DsnError as e:
        return [Problem(where, str(e))]
    try:
        from .schema import check_schema, make_engine

        engine = make_engine(config.database.dsn, config.database.connect_timeout)
        missing = check_schema(engine)
    except Exception as e:  # noqa: BLE001 - reported, with the password kept out
        message = str(getattr(e, "orig", None) or e).splitlines()[0][:300]
        return [Problem(f"{where} ({dsn.redacted()})", f"cannot check the database: {message}")]
    return [Problem(f"{where} ({dsn.redacted()})", f"{m}: run 'dovecot-appauth init-db'") for m in missing]
