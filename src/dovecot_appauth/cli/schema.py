"""The database schema (SQLAlchemy Core) and the admin operations on it.

The tables are the Roundcube plugin imap_apppasswd's (`app_passwords`, `log`, view
`app_passwords_with_log`), column for column, so the plugin keeps working as the
user-facing UI on the same database. Our additions never change those columns: an
index for the login's dedup query, and on SQLite a case-insensitive `uid` collation
(MariaDB's default `_ci` collation already is). `sql/sqlite.sql` and `sql/mariadb.sql`
are generated from here (`python -m dovecot_appauth.cli.schema sqlite|mysql`) and a test
keeps them in sync.

Only the admin CLI imports this module: SQLAlchemy is too heavy for a login.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
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

if TYPE_CHECKING:
    from ..policy import Policy

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
    # ours: failed logins for the brute-force limiter, in the shared database so that
    # every login process (and, on MariaDB, every mail host) counts the same attempts
    Table(
        "auth_failures",
        md,
        Column("id", big_id, primary_key=True, autoincrement=True),
        Column("timestamp", mysql.DATETIME(fsp=3) if is_mysql else DateTime, nullable=False, server_default=now_ms),
        Column("uid", String(256, collation=None if is_mysql else "NOCASE"), nullable=False),
        Column("src_ip", String(64), nullable=True),
        Column("service", String(64), nullable=True),
        Index("auth_failures_uid_index", "uid", "timestamp"),
        Index("auth_failures_ip_index", "src_ip", "timestamp"),
        Index("auth_failures_timestamp_index", "timestamp"),
        **table_args,
    )
    # ours: clients that logged in successfully as a user (the limiter's `client`: an IPv4
    # address or an IPv6 /64), exempt from the per-user limit for [throttle]
    # known_client_days; one row per pair, its time moved forward by each login
    Table(
        "known_clients",
        md,
        Column("id", big_id, primary_key=True, autoincrement=True),
        Column("uid", String(256, collation=None if is_mysql else "NOCASE"), nullable=False),
        Column("client", String(64), nullable=False),
        Column("last_login", mysql.DATETIME(fsp=3) if is_mysql else DateTime, nullable=False,
               server_default=now_ms),
        UniqueConstraint("uid", "client", name="known_clients_uid_client"),
        Index("known_clients_last_login_index", "last_login"),
        **table_args,
    )
    # ours: per-password policy, a side table so the plugin's `app_passwords` stays as it
    # is; no row (or NULL) means no limit. Formats: policy.py.
    Table(
        "app_password_policy",
        md,
        Column(
            "pwid",
            BigInteger,
            ForeignKey("app_passwords.id", ondelete="CASCADE", name="app_password_policy_pwid_fk"),
            primary_key=True,
            autoincrement=False,
        ),
        Column("services", String(255), nullable=True),  # "imap,smtp"
        Column("expires", DateTime, nullable=True),  # UTC
        Column("networks", Text, nullable=True),  # "198.51.100.0/24,2001:db8::/32"
        **table_args,
    )
    # ours: one row per audited login, for reports on every host sharing the database
    # (journald is per host) and for the new-place alerts; pruned by `prune`.
    Table(
        "audit_events",
        md,
        Column("id", big_id, primary_key=True, autoincrement=True),
        Column("timestamp", mysql.DATETIME(fsp=3) if is_mysql else DateTime, nullable=False, server_default=now_ms),
        Column("uid", String(256, collation=None if is_mysql else "NOCASE"), nullable=False),
        Column(
            "pwid",
            BigInteger,
            ForeignKey("app_passwords.id", ondelete="SET NULL", name="audit_events_pwid_fk"),
            nullable=True,
        ),
        Column("service", String(64), nullable=True),
        Column("src_ip", String(64), nullable=True),
        Column("src_rdns", String(255), nullable=True),
        Column("country", String(8), nullable=True),  # ISO code
        Column("asn", BigInteger, nullable=True),
        Column("as_org", String(255), nullable=True),
        Column("place", String(255), nullable=True),  # "City, Subdivision, Country"
        Column("latitude", Double, nullable=True),
        Column("longitude", Double, nullable=True),
        Column("accuracy_km", Integer, nullable=True),
        Column("result", String(32), nullable=False),  # allow, deny, unknown, deny-audit-only, refused
        Column("rule", String(64), nullable=True),  # the matched list or check, e.g. "ip_networks"
        Column("reason", Text, nullable=True),
        Column("authenticated", Boolean, nullable=False, server_default=text("0")),
        Column("alert", String(64), nullable=True),  # "new-country,new-asn"
        Index("audit_events_uid_index", "uid", "timestamp"),
        Index("audit_events_timestamp_index", "timestamp"),
        Index("audit_events_pwid_index", "pwid"),
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
        "-- Generated by `python -m dovecot_appauth.cli.schema "
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


def _create_missing(engine: Engine) -> tuple[list[str], list[str], bool]:
    """Create missing tables, indexes of existing tables and the view: (tables, indexes, view?)."""
    from sqlalchemy import inspect

    name = _dialect_name(engine.dialect.name)
    md = build_metadata(name)
    insp = inspect(engine)
    existing = set(insp.get_table_names())
    views = set(insp.get_view_names())
    tables = [t.name for t in md.sorted_tables if t.name not in existing]
    have = {t.name: {i["name"] for i in insp.get_indexes(t.name)} for t in md.sorted_tables if t.name in existing}
    indexes: list[str] = []
    with engine.begin() as conn:
        md.create_all(conn, checkfirst=True)
        for table in md.sorted_tables:
            if table.name not in existing:
                continue  # created above, with its indexes
            for index in sorted(table.indexes, key=lambda i: i.name or ""):
                if index.name not in have[table.name]:
                    index.create(conn)
                    indexes.append(str(index.name))
        made_view = VIEW_NAME not in views
        if made_view:
            conn.execute(text(view_ddl(name)))
        if name == "sqlite":
            # WAL lets logins read while another login writes its log row
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")
    return tables, indexes, made_view


def init_db(engine: Engine) -> list[str]:
    """Create what is missing (tables, indexes, view); returns the names it created."""
    tables, indexes, made_view = _create_missing(engine)
    return tables + indexes + ([VIEW_NAME] if made_view else [])


def upgrade_db(engine: Engine) -> list[str]:
    """Bring an older database up to date (idempotent): what it added, as `table X`, `index Y`, `view Z`.

    Only adds: new side tables (`app_password_policy`, `audit_events`, `auth_failures`,
    `known_clients`),
    missing indexes, the view. The plugin's tables and their rows are never altered.
    """
    tables, indexes, made_view = _create_missing(engine)
    return ([f"table {t}" for t in tables] + [f"index {i}" for i in indexes]
            + ([f"view {VIEW_NAME}"] if made_view else []))


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


def _all_tables(engine: Engine) -> tuple[Table, Table, Table]:
    md = build_metadata(_dialect_name(engine.dialect.name))
    return md.tables["app_passwords"], md.tables["log"], md.tables["auth_failures"]


def _tables(engine: Engine) -> tuple[Table, Table]:
    passwords, log, _ = _all_tables(engine)
    return passwords, log


def _now(engine: Engine) -> Any:
    if _dialect_name(engine.dialect.name) == "mysql":
        return func.utc_timestamp(3)
    return func.strftime("%Y-%m-%d %H:%M:%f", "now")


def _policy_table(engine: Engine) -> Table:
    return build_metadata(_dialect_name(engine.dialect.name)).tables["app_password_policy"]


def _policy_values(policy: Policy) -> dict[str, Any]:
    import datetime

    from ..policy import format_networks, format_services

    expires = None
    if policy.expires is not None:
        expires = datetime.datetime.fromtimestamp(int(policy.expires), datetime.UTC).replace(tzinfo=None)
    return {"services": format_services(policy.services), "expires": expires,
            "networks": format_networks(policy.networks)}


def canonical_user(name: str) -> str:
    """The user name `password create` stores: ASCII letters in lower case; raises ValueError
    for a name no login can arrive with.

    The stored name is what a login answers Dovecot with (`user=`), so it renames the
    session: `Alice@Example.org` would get a second mailbox next to `alice@example.org`.
    Dovecot lower-cases ASCII only (`auth_username_format = %Lu`), and the lookup compares
    ASCII case-insensitively (SQLite NOCASE, MariaDB's _ci collation), so that is the
    form kept. A control character (TAB, LF, DEL, ...) would break the reply to Dovecot.
    """
    if not name:
        raise ValueError("the user name is empty")
    bad = next((ch for ch in name if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F), None)
    if bad is not None:
        raise ValueError(f"the user name {name!r} contains the control character {bad!r}")
    if name != name.strip():
        raise ValueError(f"the user name {name!r} begins or ends with white space")
    return "".join(chr(ord(ch) + 32) if "A" <= ch <= "Z" else ch for ch in name)


def create_password(engine: Engine, uid: str, hashed: str, comment: str | None = None,
                    policy: Policy | None = None) -> int:
    """Insert a password (and its policy, in the same transaction); returns its id."""
    passwords, _ = _tables(engine)
    with engine.begin() as conn:
        result = conn.execute(passwords.insert().values(uid=uid, password=hashed, comment=comment))
        password_id = int(result.inserted_primary_key[0])
        if policy is not None and not policy.empty:
            conn.execute(_policy_table(engine).insert().values(pwid=password_id, **_policy_values(policy)))
        return password_id


_UNCHANGED: Any = object()


def get_policy(engine: Engine, password_id: int) -> Policy | None:
    from ..policy import from_row

    table = _policy_table(engine)
    with engine.connect() as conn:
        row = conn.execute(select(table.c.services, table.c.expires, table.c.networks)
                           .where(table.c.pwid == password_id)).first()
    return None if row is None else from_row(row[0], _text(row[1]), row[2])


def set_policy(engine: Engine, password_id: int, *, services: Any = _UNCHANGED, expires: Any = _UNCHANGED,
               networks: Any = _UNCHANGED) -> Policy | None:
    """Change some parts of a password's policy (None: no limit); returns the new policy.

    Raises LookupError when the password does not exist. A policy that limits nothing
    is stored as no row at all.
    """
    from ..policy import Policy

    passwords, _ = _tables(engine)
    table = _policy_table(engine)
    current = get_policy(engine, password_id) or Policy()
    new = Policy(
        current.services if services is _UNCHANGED else services,
        current.expires if expires is _UNCHANGED else expires,
        current.networks if networks is _UNCHANGED else networks,
    )
    with engine.begin() as conn:
        if conn.execute(select(passwords.c.id).where(passwords.c.id == password_id)).first() is None:
            raise LookupError(f"app password #{password_id} does not exist")
        conn.execute(table.delete().where(table.c.pwid == password_id))
        if not new.empty:
            conn.execute(table.insert().values(pwid=password_id, **_policy_values(new)))
    return None if new.empty else new


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
    policy: Policy | None = None

    def state(self, now: float) -> str:
        """`active`, `revoked` or `expired` (a revoked password that also expired is revoked)."""
        from ..policy import is_expired

        if self.deleted:
            return "revoked"
        return "expired" if is_expired(self.policy, now) else "active"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The fields, the policy's and `state` at `now` (default: the current time)."""
        import time

        data = {k: v for k, v in self.__dict__.items() if k != "policy"}
        empty = {"services": None, "expires": None, "networks": None}
        data.update(self.policy.to_json() if self.policy is not None else empty)
        data["state"] = self.state(time.time() if now is None else now)
        return data


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ", timespec="milliseconds" if getattr(value, "microsecond", 0) else "seconds")
    return str(value)


def list_passwords(engine: Engine, user: str | None = None, include_revoked: bool = True) -> list[PasswordInfo]:
    """Every password (of one user), with its latest use; the view has no service, so join it."""
    from ..policy import from_row

    passwords, log = _tables(engine)
    policy = _policy_table(engine)
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
            policy.c.services,
            policy.c.expires,
            policy.c.networks,
        )
        .select_from(
            passwords.outerjoin(latest, (latest.c.pwid == passwords.c.id) & (latest.c.rn == 1))
            .outerjoin(policy, policy.c.pwid == passwords.c.id)
        )
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
            policy=from_row(r[11], _text(r[12]), r[13]),
        )
        for r in rows
    ]


def throttle_counts(engine: Engine, since: str) -> dict[str, list[tuple[Any, ...]]]:
    """Failed logins since `since` (UTC text), per (user, IP), per IP and per user, most first."""
    _, _, failures = _all_tables(engine)
    recent = failures.c.timestamp >= since
    n = func.count().label("n")
    queries = {
        "user+ip": select(failures.c.uid, failures.c.src_ip, n).where(recent)
        .group_by(failures.c.uid, failures.c.src_ip),
        "ip": select(failures.c.src_ip, n).where(recent).group_by(failures.c.src_ip),
        "user": select(failures.c.uid, n).where(recent).group_by(failures.c.uid),
    }
    with engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(query)), key=lambda r: (-r[-1], str(r[:-1])))
            for name, query in queries.items()
        }


def throttle_reset(engine: Engine, *, user: str | None = None, ip: str | None = None,
                   ipv6_prefix: int = 64) -> int:
    """Forget failed logins (of one user and/or IP, or all); returns how many rows went.

    `ip` is named as the limiter counts it (throttle.client_key): an IPv4-mapped address
    is its IPv4 address, an IPv6 address its /`ipv6_prefix` network; rows written under
    the raw address (before the limiter normalised them) go too.
    """
    from ..throttle import client_key

    _, _, failures = _all_tables(engine)
    query = failures.delete()
    if user is not None:
        query = query.where(func.lower(failures.c.uid) == user.lower())
    if ip is not None:
        query = query.where(failures.c.src_ip.in_(sorted({ip, client_key(ip, ipv6_prefix)})))
    with engine.begin() as conn:
        return int(conn.execute(query).rowcount)


def prune(engine: Engine, *, events_before: str | None, failures_before: str | None,
          dry_run: bool = False, known_clients_before: str | None = None) -> dict[str, int]:
    """Delete `audit_events` / `auth_failures` / `known_clients` rows older than the given
    UTC texts; the counts.

    The plugin's `log` table is the users' own history (the webmail shows it) and is
    never pruned here. A table that does not exist yet (older database) counts 0.
    """
    from sqlalchemy import inspect

    md = build_metadata(_dialect_name(engine.dialect.name))
    present = set(inspect(engine).get_table_names())
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for name, before in (("audit_events", events_before), ("auth_failures", failures_before),
                             ("known_clients", known_clients_before)):
            if before is None:
                continue
            if name not in present:
                counts[name] = 0
                continue
            table = md.tables[name]
            old = (table.c.last_login if name == "known_clients" else table.c.timestamp) < before
            if dry_run:
                counts[name] = int(conn.execute(select(func.count()).select_from(table).where(old)).scalar_one())
            else:
                counts[name] = int(conn.execute(table.delete().where(old)).rowcount)
    return counts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ("sqlite", "mysql", "mariadb"):
        print("usage: python -m dovecot_appauth.cli.schema sqlite|mysql", file=sys.stderr)
        return 2
    sys.stdout.write(ddl(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
