"""pool.py: the database connections `serve` keeps between requests, on SQLite and MariaDB."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dovecot_appauth.config import load
from dovecot_appauth.core import ExitCode, LoginRequest, Mode, TempFail
from dovecot_appauth.login import decide
from dovecot_appauth.serve.pool import StorePool

NOW = 1_700_000_000.0


def verify(pool: StorePool, config, user: str, password: str, ip: str = "198.51.100.7",
           now: float = NOW) -> ExitCode:
    request = LoginRequest(user, password, Mode.VERIFY, "imap", remote_ip=ip)
    with pool.store(config.database.dsn, config.database.connect_timeout) as store:
        return decide(request, config, now=now, store=store).exit_code


def log_rows(cfg) -> list[tuple]:
    if cfg.db_path is not None:
        conn = sqlite3.connect(cfg.db_path)
    else:
        conn = cfg.database.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT pwid, service, src_ip FROM log ORDER BY id")
        return [tuple(r) for r in cursor.fetchall()]
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "mariadb"])
def site(request, appauth_config_factory):
    if request.param == "sqlite":
        return appauth_config_factory()
    db = request.getfixturevalue("mariadb_database")
    return appauth_config_factory(db.dsn, database=db)


def test_pool_reuses_one_store_and_each_request_is_committed(site):
    created = site.create_password("alice@example.com")
    config = load(str(site.path))
    pool = StorePool()
    try:
        assert verify(pool, config, "alice@example.com", created["password"], "198.51.100.7") is ExitCode.OK
        # the log row is visible to another connection while the pooled store stays open
        assert log_rows(site) == [(created["id"], "imap", "198.51.100.7")]
        assert verify(pool, config, "alice@example.com", "Wrong-Pass-Word-0000") is ExitCode.FAIL
        assert verify(pool, config, "alice@example.com", created["password"], "198.51.100.8") is ExitCode.OK
        assert len(log_rows(site)) == 2
        assert pool.opened == 1
    finally:
        pool.close()


def test_pool_serves_threads_one_store_each(site):
    created = site.create_password("alice@example.com")
    config = load(str(site.path))
    pool = StorePool(max_idle=4)
    try:
        with ThreadPoolExecutor(4) as workers:
            results = list(workers.map(
                lambda i: verify(pool, config, "alice@example.com", created["password"], f"198.51.100.{i}"),
                range(1, 41)))
        assert results == [ExitCode.OK] * 40
        assert len(log_rows(site)) == 40
        assert 1 <= pool.opened <= 4
    finally:
        pool.close()


def test_pool_drops_a_store_whose_request_failed(sqlite_config):
    config = load(str(sqlite_config.path))
    pool = StorePool()
    try:
        with pytest.raises(RuntimeError), pool.store(config.database.dsn, 5.0):
            raise RuntimeError("the request broke")
        with pool.store(config.database.dsn, 5.0):
            pass
        assert pool.opened == 2
    finally:
        pool.close()


def _two_databases(appauth_config_factory):
    """(the config of a database with alice, bob's password in another one, a function that
    restores the other database over the first's path, as an admin's restore would: a
    rename)."""
    old = appauth_config_factory()
    old.create_password("alice@example.com")
    restored = appauth_config_factory()
    bob = restored.create_password("bob@example.com")

    def restore() -> None:
        staged = old.db_path.with_name("restore.sqlite")
        shutil.copy(restored.db_path, staged)
        os.replace(staged, old.db_path)

    return load(str(old.path)), bob, restore


def test_pool_reopens_a_replaced_sqlite_file(appauth_config_factory):
    config, bob, restore = _two_databases(appauth_config_factory)
    pool = StorePool()
    try:
        assert verify(pool, config, "bob@example.com", bob["password"]) is ExitCode.FAIL
        restore()
        assert verify(pool, config, "bob@example.com", bob["password"]) is ExitCode.OK
        assert pool.opened == 2
    finally:
        pool.close()


def test_pool_sees_a_replaced_sqlite_file_within_the_file_check_interval(appauth_config_factory, file_clock):
    """In serve (filestat's interval on) the file is looked at once per interval: a restore
    applies after it, not on the very next request, and never later."""
    from dovecot_appauth import filestat

    filestat.set_interval(1.0)
    config, bob, restore = _two_databases(appauth_config_factory)
    pool = StorePool()
    try:
        for _ in range(2):  # the second reuses the store: its file is looked at (and the look kept)
            assert verify(pool, config, "bob@example.com", bob["password"]) is ExitCode.FAIL
        restore()
        assert verify(pool, config, "bob@example.com", bob["password"]) is ExitCode.FAIL  # within the interval
        file_clock.advance()
        assert verify(pool, config, "bob@example.com", bob["password"]) is ExitCode.OK
        assert pool.opened == 2
    finally:
        pool.close()


def test_pool_empties_when_the_dsn_changes(appauth_config_factory):
    first, second = appauth_config_factory(), appauth_config_factory()
    pool = StorePool()
    try:
        with pool.store(first.dsn, 5.0) as a:
            pass
        with pool.store(second.dsn, 5.0) as b:
            assert b is not a
        with pytest.raises(Exception, match="closed"):
            a.find_passwords("alice@example.com")  # closed when the DSN changed
        with pool.store(second.dsn, 5.0) as c:
            assert c is b
    finally:
        pool.close()


def test_pool_reconnects_after_mariadb_drops_the_connection(mariadb_config):
    created = mariadb_config.create_password("alice@example.com")
    config = load(str(mariadb_config.path))
    pool = StorePool()
    try:
        with pool.store(config.database.dsn, config.database.connect_timeout) as store:
            (connection_id,) = store._run("SELECT CONNECTION_ID()", ()).fetchone()
        # what wait_timeout or a server restart does to an idle pooled connection
        mariadb_config.database.server.execute_root(f"KILL CONNECTION {int(connection_id)}")
        assert verify(pool, config, "alice@example.com", created["password"]) is ExitCode.OK
        assert pool.opened == 2
    finally:
        pool.close()


def test_pool_database_down_is_tempfail_and_nothing_is_kept(tmp_path):
    pool = StorePool()
    with pytest.raises(TempFail):
        with pool.store(f"sqlite:///{tmp_path / 'missing.sqlite'}", 1.0):
            pass
    assert pool.opened == 0


def test_pooled_sqlite_store_is_usable_from_another_thread(sqlite_config):
    pool = StorePool()
    try:
        with pool.store(sqlite_config.dsn, 5.0):
            pass
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                with pool.store(sqlite_config.dsn, 5.0) as store:
                    store.find_passwords("alice@example.com")
            except BaseException as e:  # reported by the assert below
                errors.append(e)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert errors == [] and pool.opened == 1
    finally:
        pool.close()
