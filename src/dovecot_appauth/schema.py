"""The database schema (SQLAlchemy Core) and the admin operations on it.

The tables are the Roundcube plugin imap_apppasswd's (`app_passwords`, `log`, view
`app_passwords_with_log`), column for column, so the plugin keeps working as the
user-facing UI on the same database. Our additions never change those columns: an
index for the login's dedup query, and on SQLite a case-insensitive `uid` collation
(MariaDB's default `_ci` collation already is). `sql/sqlite.sql` and `sql/mariadb.sql`
are generated from here (`python -m dovecot_appauth.schema sqlite|mysql`) and a test
keeps them in sync.

Only the admin CLI imports this module: SQLAlchemy is too heavy for a login.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateIndex, CreateTable

VIEW_NAME = "app_passwords_with_log"

# Each password with its latest log row. ROW_NUMBER (not upstream's RANK + DISTINCT)
# so that two log rows with the same timestamp cannot list a password twice.
_VIEW_SELECT = """SELECT p.id AS id,
       p.uid AS uid,
       p.password AS password,
       p.created AS created,
       p.comment AS comment,
       l.timestamp AS last_used_timestamp,
       l.src_ip AS last_used_src_ip,
       l.src_rdns AS last_used_src_rdns,
       l.src_loc AS last_used_src_loc,
       l.src_isp AS last_used_src_isp,
       p.deleted AS deleted
FROM app_passwords p
LEFT JOIN (SELECT pwid, src_ip, src_rdns, src_loc, src_isp, timestamp,
                  ROW_NUMBER() OVER (PARTITION BY pwid ORDER BY timestamp DESC, id DESC) AS rn
           FROM log) l ON l.pwid = p.id AND l.rn = 1
ORDER BY p.created"""


def _dialect_name(name: str) -> str:
    return "mysql" if name in ("mysql", "mariadb") else "sqlite"


def build_metadata(dialect: str) -> MetaData:
    """The tables for one dialect ("sqlite" or "mysql")."""
    is_mysql = _dialect_name(dialect) == "mysql"
    md = MetaData()
    # SQLite only auto-increments an INTEGER PRIMARY KEY
    big_id = BigInteger().with_variant(Integer, "sqlite")
    now = text("(utc_timestamp())") if is_mysql else text("(datetime('now'))")
    # Upstream's DDL also has `ON UPDATE utc_timestamp(3)`, which MariaDB rejects (ON UPDATE
    # takes only CURRENT_TIMESTAMP, local time); log rows are never updated, so it is left out.
    now_ms = text("(utc_timestamp(3))") if is_mysql else text("(strftime('%Y-%m-%d %H:%M:%f', 'now'))")
    table_args: dict[str, Any] = (
        {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_general_ci"}
        if is_mysql
        else {"sqlite_autoincrement": True}
    )
    Table(
        "app_passwords",
        md,
        Column("id", big_id, primary_key=True, autoincrement=True),
        Column("uid", String(256, collation=None if is_mysql else "NOCASE"), nullable=False),
        Column("password", String(256), nullable=False),
        Column("created", DateTime, nullable=False, server_default=now),
        Column("comment", Text, nullable=True),
        Column("deleted", DateTime, nullable=True),
        UniqueConstraint("uid", "password", name="app_passwords_pk"),
        Index("app_passwords_uid_index", "uid"),
        **table_args,
    )
    Table(
        "log",
        md,
        Column("id", big_id, primary_key=True, autoincrement=True),
        Column(
            "pwid",
            BigInteger,
            ForeignKey("app_passwords.id", ondelete="CASCADE", name="log_app_passwords_id_fk"),
            nullable=False,
        ),
        Column("service", String(255), nullable=True),
        Column("src_ip", Text, nullable=True),
        Column("src_rdns", Text, nullable=True),
        Column("src_loc", Text, nullable=True),
        Column("src_isp", Text, nullable=True),
        Column("timestamp", mysql.DATETIME(fsp=3) if is_mysql else DateTime, nullable=False, server_default=now_ms),
        # ours: the dedup check and the view look up a password's newest rows
        Index("log_pwid_timestamp_index", "pwid", "timestamp"),
        **table_args,
    )
    return md


def view_ddl(dialect: str) -> str:
    if _dialect_name(dialect) == "mysql":
        return f"CREATE OR REPLACE VIEW {VIEW_NAME} AS\n{_VIEW_SELECT}"
    return f"CREATE VIEW IF NOT EXISTS {VIEW_NAME} AS\n{_VIEW_SELECT}"


def ddl(dialect: str) -> str:
    """The complete DDL as a SQL script (the content of sql/sqlite.sql, sql/mariadb.sql)."""
    name = _dialect_name(dialect)
    compiler_dialect = mysql.dialect() if name == "mysql" else sqlite.dialect()
    md = build_metadata(name)
    parts = [
        f"-- dovecot-appauth schema for {'MariaDB/MySQL' if name == 'mysql' else 'SQLite'}.",
        "-- Generated by `python -m dovecot_appauth.schema "
        f"{'mysql' if name == 'mysql' else 'sqlite'}`; compatible with the Roundcube plugin imap_apppasswd.",
    ]
    for table in md.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=compiler_dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(CreateIndex(index).compile(dialect=compiler_dialect)).strip() + ";")
    parts.append(view_ddl(name) + ";")
    return "\n\n".join(parts) + "\n"


def make_engine(dsn: str, timeout: float = 3.0) -> Engine:
    """An engine for admin work, with the same timeouts as a login."""
    if dsn.startswith("sqlite"):
        engine = create_engine(dsn, connect_args={"timeout": timeout})

        @event.listens_for(engine, "connect")
        def _fks(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys = ON")

        return engine
    return create_engine(
        dsn,
        connect_args={"connect_timeout": max(1, int(timeout)), "read_timeout": max(1, int(timeout * 10))},
        pool_pre_ping=True,
    )


def init_db(engine: Engine) -> list[str]:
    """Create what is missing (tables, indexes, view); returns the names it created."""
    from sqlalchemy import inspect

    name = _dialect_name(engine.dialect.name)
    md = build_metadata(name)
    existing = set(inspect(engine).get_table_names())
    views = set(inspect(engine).get_view_names())
    created = [t.name for t in md.sorted_tables if t.name not in existing]
    with engine.begin() as conn:
        md.create_all(conn, checkfirst=True)
        if VIEW_NAME not in views:
            conn.execute(text(view_ddl(name)))
            created.append(VIEW_NAME)
        if name == "sqlite":
            # WAL lets logins read while another login writes its log row
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")
    return created


def check_schema(engine: Engine) -> list[str]:
    """What is missing or different from the expected schema (empty when all is well)."""
    from sqlalchemy import inspect

    insp = inspect(engine)
    problems = []
    md = build_metadata(_dialect_name(engine.dialect.name))
    tables = set(insp.get_table_names())
    for table in md.sorted_tables:
        if table.name not in tables:
            problems.append(f"table {table.name} is missing")
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                problems.append(f"column {table.name}.{column.name} is missing")
    if VIEW_NAME not in set(insp.get_view_names()):
        problems.append(f"view {VIEW_NAME} is missing")
    return problems


def _tables(engine: Engine) -> tuple[Table, Table]:
    md = build_metadata(_dialect_name(engine.dialect.name))
    return md.tables["app_passwords"], md.tables["log"]


def _now(engine: Engine) -> Any:
    if _dialect_name(engine.dialect.name) == "mysql":
        return func.utc_timestamp(3)
    return func.strftime("%Y-%m-%d %H:%M:%f", "now")


def create_password(engine: Engine, uid: str, hashed: str, comment: str | None = None) -> int:
    passwords, _ = _tables(engine)
    with engine.begin() as conn:
        result = conn.execute(passwords.insert().values(uid=uid, password=hashed, comment=comment))
        return int(result.inserted_primary_key[0])


def revoke_password(engine: Engine, password_id: int) -> bool:
    """Soft-delete as the plugin does (`deleted` = now); False when unknown or already revoked."""
    passwords, _ = _tables(engine)
    with engine.begin() as conn:
        result = conn.execute(
            update(passwords)
            .where(passwords.c.id == password_id, passwords.c.deleted.is_(None))
            .values(deleted=_now(engine))
        )
        return result.rowcount == 1


@dataclass(frozen=True)
class PasswordInfo:
    """A password as `password list` shows it: never the hash."""

    id: int
    uid: str
    created: str
    comment: str | None
    deleted: str | None
    last_used: str | None
    last_service: str | None
    last_ip: str | None
    last_rdns: str | None
    last_loc: str | None
    last_isp: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ", timespec="milliseconds" if getattr(value, "microsecond", 0) else "seconds")
    return str(value)


def list_passwords(engine: Engine, user: str | None = None, include_revoked: bool = True) -> list[PasswordInfo]:
    """Every password (of one user), with its latest use; the view has no service, so join it."""
    passwords, log = _tables(engine)
    latest = (
        select(
            log.c.pwid,
            log.c.service,
            log.c.src_ip,
            log.c.src_rdns,
            log.c.src_loc,
            log.c.src_isp,
            log.c.timestamp,
            func.row_number().over(partition_by=log.c.pwid, order_by=(log.c.timestamp.desc(), log.c.id.desc())).label(
                "rn"
            ),
        )
    ).subquery()
    query = (
        select(
            passwords.c.id,
            passwords.c.uid,
            passwords.c.created,
            passwords.c.comment,
            passwords.c.deleted,
            latest.c.timestamp,
            latest.c.service,
            latest.c.src_ip,
            latest.c.src_rdns,
            latest.c.src_loc,
            latest.c.src_isp,
        )
        .select_from(passwords.outerjoin(latest, (latest.c.pwid == passwords.c.id) & (latest.c.rn == 1)))
        .order_by(passwords.c.uid, passwords.c.id)
    )
    if user is not None:
        query = query.where(func.lower(passwords.c.uid) == user.lower())
    if not include_revoked:
        query = query.where(passwords.c.deleted.is_(None))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        PasswordInfo(
            id=int(r[0]), uid=r[1], created=_text(r[2]) or "", comment=r[3], deleted=_text(r[4]),
            last_used=_text(r[5]), last_service=r[6], last_ip=r[7], last_rdns=r[8], last_loc=r[9], last_isp=r[10],
        )
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ("sqlite", "mysql", "mariadb"):
        print("usage: python -m dovecot_appauth.schema sqlite|mysql", file=sys.stderr)
        return 2
    sys.stdout.write(ddl(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
