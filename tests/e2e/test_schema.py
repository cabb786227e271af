"""The schema: generated SQL files, init-db, admin operations, and the Roundcube plugin's view of it.

The plugin's statements below are copied from imap_apppasswd.php (bennet0496's
imap_apppasswd, the user-facing UI on the same database); they must keep working.
"""

from __future__ import annotations

import datetime
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from dovecot_appauth.cli import schema
from dovecot_appauth.store import LoginRecord, open_store

ROOT = Path(__file__).resolve().parents[2]
HASH = "{CRYPT}$6$saltsaltsaltsalt$some-hash-value"

APP_PASSWORDS_COLUMNS = ["id", "uid", "password", "created", "comment", "deleted"]
LOG_COLUMNS = ["id", "pwid", "service", "src_ip", "src_rdns", "src_loc", "src_isp", "timestamp"]
VIEW_COLUMNS = [
    "id", "uid", "password", "created", "comment", "last_used_timestamp", "last_used_src_ip",
    "last_used_src_rdns", "last_used_src_loc", "last_used_src_isp", "deleted",
]

# imap_apppasswd.php, verbatim
PLUGIN_LIST = "SELECT * FROM app_passwords_with_log WHERE uid = :uid AND deleted IS NULL;"
PLUGIN_OWNERSHIP = ("SELECT a.*, count(l.pwid) as total FROM app_passwords a LEFT JOIN log l on a.id = l.pwid "
                    "WHERE a.uid = :uid and a.id = :id;")
PLUGIN_HISTORY = ("SELECT * FROM log, (SELECT count(*) as total FROM log WHERE pwid = :id) c WHERE pwid = :id "
                  "ORDER BY timestamp DESC LIMIT 20 OFFSET :offset;")
PLUGIN_ADD = "INSERT INTO app_passwords (uid, password, created) VALUES (:uid, :password, UTC_TIMESTAMP());"
PLUGIN_RENAME = "UPDATE app_passwords SET comment = :comment WHERE id = :id AND uid = :uid;"
PLUGIN_SOFT_DELETE = "UPDATE app_passwords SET deleted = UTC_TIMESTAMP(3) WHERE id = :id AND uid = :uid;"
PLUGIN_HARD_DELETE = "DELETE FROM app_passwords WHERE id = :id AND uid = :uid;"


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = schema.make_engine(f"sqlite:///{tmp_path / 'appauth.sqlite'}")
    else:
        eng = schema.make_engine(request.getfixturevalue("mariadb_database").dsn)
    yield eng
    eng.dispose()


def _is_mysql(engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def _columns(engine, name: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(f"SELECT * FROM {name} WHERE 1 = 0")).keys())


def _rows(engine, sql: str, **params) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _execute(engine, sql: str, **params) -> int:
    with engine.begin() as conn:
        return conn.execute(text(sql), params).rowcount


# --- generated files ------------------------------------------------------------------


@pytest.mark.parametrize(("dialect", "path"), [("sqlite", "sql/sqlite.sql"), ("mysql", "sql/mariadb.sql")])
def test_sql_files_are_generated_from_schema(dialect, path):
    assert (ROOT / path).read_text() == schema.ddl(dialect), (
        f"{path} is stale: python -m dovecot_appauth.cli.schema {dialect} > {path}"
    )


def test_schema_main_prints_ddl():
    proc = subprocess.run([sys.executable, "-m", "dovecot_appauth.cli.schema", "sqlite"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout == schema.ddl("sqlite")
    bad = subprocess.run([sys.executable, "-m", "dovecot_appauth.cli.schema", "oracle"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("usage:")


def _sqlite_shape(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        names = conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                             "ORDER BY type, name").fetchall()
        shape: dict = {"objects": names}
        for kind, name in names:
            if kind == "table":
                shape[f"{name}.columns"] = conn.execute(f"PRAGMA table_info({name})").fetchall()
                shape[f"{name}.fks"] = conn.execute(f"PRAGMA foreign_key_list({name})").fetchall()
            elif kind == "index":
                shape[f"{name}.index"] = conn.execute(f"PRAGMA index_info({name})").fetchall()
            elif kind == "view":
                shape[f"{name}.columns"] = [d[0] for d in conn.execute(f"SELECT * FROM {name}").description]
        return shape
    finally:
        conn.close()


def test_sqlite_script_gives_the_same_schema_as_init_db(tmp_path):
    by_script = tmp_path / "script.sqlite"
    conn = sqlite3.connect(by_script)
    conn.executescript((ROOT / "sql" / "sqlite.sql").read_text())
    conn.close()
    by_init = tmp_path / "init.sqlite"
    engine = schema.make_engine(f"sqlite:///{by_init}")
    schema.init_db(engine)
    engine.dispose()
    assert _sqlite_shape(by_script) == _sqlite_shape(by_init)
    assert {n for _, n in _sqlite_shape(by_init)["objects"]} >= {
        "app_passwords", "log", schema.VIEW_NAME, "app_passwords_uid_index", "log_pwid_timestamp_index",
    }


@pytest.mark.mariadb
def test_mariadb_script_gives_the_same_schema_as_init_db(mariadb):
    def shape(database):
        conn = database.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, "
                    "COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                    "ORDER BY TABLE_NAME, ORDINAL_POSITION", (database.name,))
                columns = cur.fetchall()
                cur.execute("SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE "
                            "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s "
                            "ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX", (database.name,))
                indexes = cur.fetchall()
                cur.execute("SELECT CONSTRAINT_NAME, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS "
                            "WHERE CONSTRAINT_SCHEMA = %s", (database.name,))
                fks = cur.fetchall()
            return columns, indexes, fks
        finally:
            conn.close()

    by_script = mariadb.fresh_database("script")
    by_init = mariadb.fresh_database("init")
    try:
        conn = by_script.connect()
        try:
            with conn.cursor() as cur:
                for statement in (ROOT / "sql" / "mariadb.sql").read_text().split(";\n"):
                    if statement.strip() and not all(
                        line.startswith("--") or not line.strip() for line in statement.splitlines()
                    ):
                        cur.execute(statement)
        finally:
            conn.close()
        engine = schema.make_engine(by_init.dsn)
        schema.init_db(engine)
        engine.dispose()
        script_shape, init_shape = shape(by_script), shape(by_init)
        assert script_shape == init_shape
        assert ("log_app_passwords_id_fk", "CASCADE") in init_shape[2]
    finally:
        by_script.drop()
        by_init.drop()


# --- init-db and the plugin's tables ----------------------------------------------------


ALL_TABLES = ["app_passwords", "auth_failures", "known_clients", "app_password_policy", "audit_events", "log"]


def test_init_db_is_idempotent(engine):
    assert schema.init_db(engine) == [*ALL_TABLES, schema.VIEW_NAME]
    pwid = schema.create_password(engine, "alice@example.com", HASH)
    assert schema.init_db(engine) == []
    assert schema.check_schema(engine) == []
    assert [r["id"] for r in _rows(engine, "SELECT id FROM app_passwords")] == [pwid]  # data kept


def test_check_schema_reports_what_is_missing(engine):
    assert set(schema.check_schema(engine)) == {
        *(f"table {t} is missing" for t in ALL_TABLES), f"view {schema.VIEW_NAME} is missing",
    }
    schema.init_db(engine)
    _execute(engine, f"DROP VIEW {schema.VIEW_NAME}")
    assert schema.check_schema(engine) == [f"view {schema.VIEW_NAME} is missing"]


def test_plugin_columns(engine):
    schema.init_db(engine)
    assert _columns(engine, "app_passwords") == APP_PASSWORDS_COLUMNS
    assert _columns(engine, "log") == LOG_COLUMNS
    assert _columns(engine, schema.VIEW_NAME) == VIEW_COLUMNS


@pytest.mark.mariadb
def test_plugin_column_types_on_mariadb(mariadb_database):
    engine = schema.make_engine(mariadb_database.dsn)
    schema.init_db(engine)
    engine.dispose()
    conn = mariadb_database.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA "
                        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN "
                        "('app_passwords', 'log') ORDER BY TABLE_NAME, ORDINAL_POSITION", (mariadb_database.name,))
            got = [(t, c, typ.split("(")[0] if typ.startswith("bigint") else typ, n, e)
                   for t, c, typ, n, e in cur.fetchall()]
    finally:
        conn.close()
    # the plugin's DDL: bigint auto_increment ids, varchar(256) uid/password, datetime(3) timestamp
    assert got == [
        ("app_passwords", "id", "bigint", "NO", "auto_increment"),
        ("app_passwords", "uid", "varchar(256)", "NO", ""),
        ("app_passwords", "password", "varchar(256)", "NO", ""),
        ("app_passwords", "created", "datetime", "NO", ""),
        ("app_passwords", "comment", "text", "YES", ""),
        ("app_passwords", "deleted", "datetime", "YES", ""),
        ("log", "id", "bigint", "NO", "auto_increment"),
        ("log", "pwid", "bigint", "NO", ""),
        ("log", "service", "varchar(255)", "YES", ""),
        ("log", "src_ip", "text", "YES", ""),
        ("log", "src_rdns", "text", "YES", ""),
        ("log", "src_loc", "text", "YES", ""),
        ("log", "src_isp", "text", "YES", ""),
        ("log", "timestamp", "datetime(3)", "NO", ""),
    ]


def _plugin_sql(engine, sql: str) -> str:
    """The plugin runs on MySQL; on SQLite its UTC_TIMESTAMP() becomes the SQLite equivalent."""
    if _is_mysql(engine):
        return sql
    return (sql.replace("UTC_TIMESTAMP(3)", "strftime('%Y-%m-%d %H:%M:%f', 'now')")
            .replace("UTC_TIMESTAMP()", "datetime('now')"))


def test_plugin_statements_work(engine):
    schema.init_db(engine)
    assert _execute(engine, _plugin_sql(engine, PLUGIN_ADD), uid="alice@example.com", password=HASH + "1") == 1
    first = _rows(engine, "SELECT id FROM app_passwords WHERE password = :p", p=HASH + "1")[0]["id"]
    second = schema.create_password(engine, "alice@example.com", HASH + "2", "phone")
    third = schema.create_password(engine, "alice@example.com", HASH + "3", "old")
    other = schema.create_password(engine, "bob@example.com", HASH + "4")

    assert _execute(engine, PLUGIN_RENAME, comment="Thunderbird", id=first, uid="alice@example.com") == 1
    assert _execute(engine, _plugin_sql(engine, PLUGIN_SOFT_DELETE), id=third, uid="alice@example.com") == 1
    # ownership: bob cannot revoke alice's password
    assert _execute(engine, _plugin_sql(engine, PLUGIN_SOFT_DELETE), id=second, uid="bob@example.com") == 0

    store = open_store(str(engine.url.render_as_string(hide_password=False)), 3)
    try:
        store.record_login(LoginRecord(first, "imap", "192.0.2.1"), now=1_700_000_000.5, dedup_window=60)
        store.record_login(LoginRecord(first, "smtp", "192.0.2.2"), now=1_700_000_100.5, dedup_window=60)
    finally:
        store.close()

    listed = _rows(engine, PLUGIN_LIST, uid="alice@example.com")
    assert sorted(r["id"] for r in listed) == [first, second]
    by_id = {r["id"]: r for r in listed}
    assert by_id[first]["comment"] == "Thunderbird"
    assert by_id[first]["last_used_src_ip"] == "192.0.2.2"
    assert by_id[first]["last_used_src_rdns"] == "<>"
    assert by_id[second]["last_used_timestamp"] is None
    assert _rows(engine, PLUGIN_LIST, uid="bob@example.com")[0]["id"] == other

    owned = _rows(engine, PLUGIN_OWNERSHIP, uid="alice@example.com", id=first)
    assert len(owned) == 1 and owned[0]["total"] == 2
    history = _rows(engine, PLUGIN_HISTORY, id=first, offset=0)
    assert [(r["service"], r["total"]) for r in history] == [("smtp", 2), ("imap", 2)]

    assert _execute(engine, PLUGIN_HARD_DELETE, id=first, uid="alice@example.com") == 1
    assert _rows(engine, "SELECT count(*) AS n FROM log")[0]["n"] == 0  # cascaded


# --- admin operations -------------------------------------------------------------------


def test_create_list_revoke(engine):
    schema.init_db(engine)
    a = schema.create_password(engine, "Alice@Example.com", HASH + "a", "laptop")
    b = schema.create_password(engine, "alice@example.com", HASH + "b")
    c = schema.create_password(engine, "carol@example.com", HASH + "c")
    assert len({a, b, c}) == 3

    everyone = schema.list_passwords(engine)
    assert [(p.uid, p.id) for p in everyone] == sorted([("Alice@Example.com", a), ("alice@example.com", b),
                                                         ("carol@example.com", c)])
    for p in everyone:
        assert all(HASH not in str(v) for v in p.to_json().values())
        created = datetime.datetime.fromisoformat(p.created[:19])
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        assert abs((created - now).total_seconds()) < 120  # stored in UTC
        assert p.last_used is None and p.deleted is None

    assert sorted(p.id for p in schema.list_passwords(engine, "ALICE@example.com")) == [a, b]

    assert schema.revoke_password(engine, a) is True
    assert schema.revoke_password(engine, a) is False  # already revoked
    assert schema.revoke_password(engine, 999_999) is False
    alice = {p.id: p for p in schema.list_passwords(engine, "alice@example.com")}
    assert alice[a].deleted is not None and alice[b].deleted is None
    assert [p.id for p in schema.list_passwords(engine, "alice@example.com", include_revoked=False)] == [b]


def test_list_shows_latest_use_with_service(engine):
    schema.init_db(engine)
    pwid = schema.create_password(engine, "alice@example.com", HASH)
    store = open_store(engine.url.render_as_string(hide_password=False), 3)
    try:
        store.record_login(LoginRecord(pwid, "imap", "192.0.2.1"), now=1_700_000_000.5, dedup_window=60)
        store.record_login(LoginRecord(pwid, "submission", "2001:db8::1", src_rdns="host.example.net"),
                           now=1_700_000_100.25, dedup_window=60)
    finally:
        store.close()
    (info,) = schema.list_passwords(engine, "alice@example.com")
    assert (info.last_service, info.last_ip, info.last_rdns) == ("submission", "2001:db8::1", "host.example.net")
    assert info.last_used == "2023-11-14 22:15:00.250"


def test_create_password_duplicate_is_an_error(engine):
    schema.init_db(engine)
    schema.create_password(engine, "alice@example.com", HASH)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        schema.create_password(engine, "alice@example.com", HASH)


# --- side tables: policies, audit events, upgrade-db ------------------------------------


def test_upgrade_db_adds_side_tables_to_an_old_database(engine):
    """A database made by the plugin's own DDL (or an older version of ours) is brought up to date."""
    schema.init_db(engine)
    pwid = schema.create_password(engine, "alice@example.com", HASH)
    for name in ("audit_events", "app_password_policy"):
        _execute(engine, f"DROP TABLE {name}")
    _execute(engine, "DROP INDEX app_passwords_uid_index" + (" ON app_passwords" if _is_mysql(engine) else ""))
    assert set(schema.check_schema(engine)) == {"table audit_events is missing",
                                                "table app_password_policy is missing"}
    added = schema.upgrade_db(engine)
    assert added == ["table app_password_policy", "table audit_events", "index app_passwords_uid_index"]
    assert schema.upgrade_db(engine) == []
    assert schema.check_schema(engine) == []
    assert [r["id"] for r in _rows(engine, "SELECT id FROM app_passwords")] == [pwid]


def test_policy_create_set_list(engine):
    from dovecot_appauth.policy import Policy

    schema.init_db(engine)
    expires = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    a = schema.create_password(engine, "alice@example.com", HASH + "a",
                               policy=Policy(("imap", "smtp"), expires, ("198.51.100.0/24",)))
    b = schema.create_password(engine, "alice@example.com", HASH + "b", policy=Policy())
    assert schema.get_policy(engine, a) == Policy(("imap", "smtp"), expires, ("198.51.100.0/24",))
    assert schema.get_policy(engine, b) is None  # an empty policy is no row
    assert _rows(engine, "SELECT count(*) AS n FROM app_password_policy")[0]["n"] == 1

    assert schema.set_policy(engine, a, services=None) == Policy(None, expires, ("198.51.100.0/24",))
    assert schema.set_policy(engine, b, networks=("2001:db8::/32",)) == Policy(None, None, ("2001:db8::/32",))
    assert schema.set_policy(engine, a, expires=None, networks=None) is None
    assert schema.get_policy(engine, a) is None
    with pytest.raises(LookupError):
        schema.set_policy(engine, 999_999, services=("imap",))

    listed = {p.id: p for p in schema.list_passwords(engine)}
    assert listed[a].policy is None and listed[b].policy == Policy(None, None, ("2001:db8::/32",))
    assert listed[b].to_json()["networks"] == ["2001:db8::/32"]
    assert listed[a].to_json()["services"] is None


def test_policy_rows_follow_the_plugin_hard_delete(engine):
    from dovecot_appauth.policy import Policy

    schema.init_db(engine)
    pwid = schema.create_password(engine, "alice@example.com", HASH, policy=Policy(("imap",)))
    _execute(engine, "INSERT INTO audit_events (timestamp, uid, pwid, result, authenticated) "
                     "VALUES ('2026-01-01 00:00:00.000', 'alice@example.com', :p, 'allow', 1)", p=pwid)
    assert _execute(engine, PLUGIN_HARD_DELETE, id=pwid, uid="alice@example.com") == 1
    assert _rows(engine, "SELECT count(*) AS n FROM app_password_policy")[0]["n"] == 0  # cascaded
    # the audit event stays, without the password
    assert [(r["uid"], r["pwid"]) for r in _rows(engine, "SELECT uid, pwid FROM audit_events")] == [
        ("alice@example.com", None)]


def test_prune_deletes_only_old_rows(engine):
    schema.init_db(engine)
    for stamp in ("2026-01-01 00:00:00.000", "2026-02-01 00:00:00.000", "2026-03-01 00:00:00.000"):
        _execute(engine, "INSERT INTO audit_events (timestamp, uid, result, authenticated) "
                         "VALUES (:t, 'u', 'allow', 1)", t=stamp)
        _execute(engine, "INSERT INTO auth_failures (timestamp, uid) VALUES (:t, 'u')", t=stamp)
    cut = {"events_before": "2026-02-15 00:00:00.000", "failures_before": "2026-03-01 00:00:00.000"}
    assert schema.prune(engine, **cut, dry_run=True) == {"audit_events": 2, "auth_failures": 2}
    assert _rows(engine, "SELECT count(*) AS n FROM audit_events")[0]["n"] == 3
    assert schema.prune(engine, **cut) == {"audit_events": 2, "auth_failures": 2}
    assert schema.prune(engine, **cut) == {"audit_events": 0, "auth_failures": 0}
    assert [str(r["t"])[:10] for r in _rows(engine, "SELECT timestamp AS t FROM audit_events")] == ["2026-03-01"]


def test_prune_forgets_known_clients_not_seen_lately(engine):
    schema.init_db(engine)
    for n, stamp in enumerate(("2026-01-01 00:00:00.000", "2026-03-01 00:00:00.000")):
        _execute(engine, "INSERT INTO known_clients (uid, client, last_login) VALUES ('u', :c, :t)",
                 c=f"192.0.2.{n}", t=stamp)
    cut = {"events_before": None, "failures_before": None, "known_clients_before": "2026-02-01 00:00:00.000"}
    assert schema.prune(engine, **cut, dry_run=True) == {"known_clients": 1}
    assert schema.prune(engine, **cut) == {"known_clients": 1}
    assert [r["client"] for r in _rows(engine, "SELECT client FROM known_clients")] == ["192.0.2.1"]


def test_known_clients_is_unique_per_user_and_client(engine):
    """One row per (user, client): the login's upsert relies on it (SQLite: NOCASE user)."""
    schema.init_db(engine)
    _execute(engine, "INSERT INTO known_clients (uid, client, last_login) VALUES ('u@x', '192.0.2.1', "
                     "'2026-01-01 00:00:00.000')")
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        _execute(engine, "INSERT INTO known_clients (uid, client, last_login) VALUES ('U@X', '192.0.2.1', "
                         "'2026-01-02 00:00:00.000')")
