"""serve answers a request on its event loop when nothing in it can wait, and runs it again
from the start on an engine thread when something can (core.WouldWait): a lookup the
enrichment cache does not answer, a write lock another connection holds, a bcrypt hash,
a leaked password's alert, a config with MariaDB or a notify command. Whatever the first
try did is not left behind: no second audit line, no second row, no metric counted twice.
"""

from __future__ import annotations

import io
import os
import socket
import sqlite3
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from dovecot_appauth import hashing
from dovecot_appauth.audit import line
from dovecot_appauth.audit.enrich import keep_cache_open
from dovecot_appauth.audit.lists import keep_warm
from dovecot_appauth.cli import schema
from dovecot_appauth.core import WouldWait, must_not_wait, run_on_loop
from dovecot_appauth.serve.server import Engine, build_app
from tests.support.common import fill_datagram_queue, wrong_password
from tests.support.localservers import MMDB_DIR
from tests.unit.test_server import ALLOWED_IP, PASSWORD, TOKEN, Served, _site

OTHER_IP = "198.51.100.8"


def _serve(path, extra: str = ""):
    if extra:
        with open(path, "a") as f:
            f.write(extra)
    log = io.StringIO()
    engine = Engine(str(path), stderr=log)
    served = Served(build_app(engine, TOKEN), TOKEN)
    served.engine, served.log = engine, log
    return served


@pytest.fixture
def served(tmp_path):
    path, db = _site(tmp_path)
    site = _serve(path)
    site.db, site.dir = db, tmp_path
    yield site
    site.close()
    keep_warm(False)
    keep_cache_open(False)


def _to_thread(site, endpoint: str) -> float:
    return site.engine.metrics.registry.get_sample_value("appauth_requests_to_thread_total",
                                                         {"endpoint": endpoint}) or 0.0


def _audit_lines(site) -> list[str]:
    path = site.dir / "audit.log"
    return path.read_text().splitlines() if path.exists() else []


def _count(site, table: str) -> int:
    with sqlite3.connect(site.db) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_must_not_wait_only_on_the_thread_that_runs_a_request_on_the_loop():
    assert not must_not_wait()
    seen: list[bool] = []

    def elsewhere() -> None:
        seen.append(must_not_wait())

    def on_the_loop() -> bool:
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()
        return must_not_wait()

    assert run_on_loop(on_the_loop) is True
    assert seen == [False] and not must_not_wait()


def test_a_warm_login_runs_on_the_loop(served):
    for _ in range(3):
        assert served.post("/verify", {"user": "alice@example.com", "password": PASSWORD,
                                       "remote_ip": ALLOWED_IP})[1]["result"] == "ok"
    assert _to_thread(served, "verify") == 0
    assert (served.engine.loop_pool.opened, served.engine.pool.opened) == (1, 0)


def test_a_lookup_the_cache_does_not_answer_goes_to_a_thread_once(tmp_path):
    path, _db = _site(tmp_path)
    site = _serve(path, f'\n[audit.maxmind]\ncity = "{MMDB_DIR}/AppAuth-Test-City.mmdb"\n'
                        f'asn = "{MMDB_DIR}/AppAuth-Test-ASN.mmdb"\n')
    site.dir = tmp_path
    try:
        body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": OTHER_IP}
        assert site.post("/verify", body)[1]["result"] == "ok"
        assert _to_thread(site, "verify") == 1  # MaxMind looked up on a thread, then cached
        assert site.post("/verify", body)[1]["result"] == "ok"
        assert site.post("/policy?command=allow", {"login": "alice@example.com", "remote": OTHER_IP})[1] == \
            {"status": 0, "msg": ""}
        assert _to_thread(site, "verify") == 1 and _to_thread(site, "policy") == 0
        # the first try on the loop is not counted: one lookup, then two cache hits
        registry = site.engine.metrics.registry
        assert registry.get_sample_value("appauth_enrichment_total", {"source": "maxmind", "status": "fetched"}) == 1
        assert registry.get_sample_value("appauth_enrichment_total", {"source": "maxmind", "status": "cached"}) == 2
        assert len(_audit_lines(site)) == 2
    finally:
        site.close()
        keep_warm(False)
        keep_cache_open(False)


def test_a_write_lock_held_elsewhere_sends_the_login_to_a_thread_that_waits_for_it(served):
    body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
    assert served.post("/verify", body)[1]["result"] == "ok"  # warm: the loop's store is open
    lines, logged, events = len(_audit_lines(served)), _count(served, "log"), _count(served, "audit_events")
    holder = sqlite3.connect(served.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing (the admin CLI, Roundcube)
    answers: list = []
    login = threading.Thread(target=lambda: answers.append(served.post("/verify", {**body, "remote_ip": OTHER_IP})))
    login.start()
    try:
        time.sleep(0.5)
        assert answers == [] and _to_thread(served, "verify") == 1  # waiting on a thread, not the loop
        # the loop is free meanwhile: another endpoint answers at once
        assert served.post("/policy?command=allow", {"login": "alice@example.com", "remote": ALLOWED_IP})[0] == 200
        # the thread's run wrote its line before it waited for the lock; the try on the
        # loop wrote none
        assert len(_audit_lines(served)) <= lines + 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    login.join(10)
    assert answers and answers[0][1]["result"] == "ok"
    # exactly one audit line, one log row and one audit event for it
    assert len(_audit_lines(served)) == lines + 1
    assert (_count(served, "log"), _count(served, "audit_events")) == (logged + 1, events + 1)


def _locked_exclusively(path) -> sqlite3.Connection:
    """A connection that keeps even readers out of the SQLite file at `path` (WAL readers
    otherwise never wait), until it is closed."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_an_enrichment_cache_the_loop_cannot_read_is_said_once_not_skipped(tmp_path):
    path, _db = _site(tmp_path)
    site = _serve(path, f'\n[audit.maxmind]\ncity = "{MMDB_DIR}/AppAuth-Test-City.mmdb"\n')
    site.dir = tmp_path
    body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": OTHER_IP}
    try:
        assert site.post("/verify", body)[1]["result"] == "ok"  # the cache file exists now
        holder = _locked_exclusively(tmp_path / "cache" / "cache.sqlite")
        try:
            assert site.post("/verify", body)[1]["result"] == "ok"
        finally:
            holder.close()
        # the loop could not read it: the request went to a thread, which waited its busy
        # timeout and ran without the cache, saying so once (the loop's try said nothing)
        assert _to_thread(site, "verify") == 2
        assert site.log.getvalue().count("enrichment cache bypassed") == 1
        assert len(_audit_lines(site)) == 2
    finally:
        site.close()
        keep_warm(False)
        keep_cache_open(False)


def test_a_database_the_loop_cannot_read_fails_closed_on_a_thread_and_says_so_once(served):
    body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
    holder = _locked_exclusively(served.db)  # before serve opens it (its connections share it)
    try:
        # the thread waits [database] connect_timeout (3 s) for the lock, then: a temporary
        # failure, never a login without the password check and the limiter
        assert served.post("/verify", body)[1] == {"result": "tempfail"}
    finally:
        holder.close()
    assert _to_thread(served, "verify") == 1
    assert [line for line in served.log.getvalue().splitlines() if "locked" in line] == [
        f"dovecot-appauth serve: SQLite database {served.db} is locked (database is locked)"]
    assert served.post("/verify", body)[1]["result"] == "ok"  # and on the loop again


def test_a_report_with_the_write_lock_held_elsewhere_is_audited_once_on_a_thread(served):
    report = {"login": "alice@example.com", "remote": OTHER_IP, "protocol": "imap", "success": True}
    holder = sqlite3.connect(served.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    answers: list = []
    worker = threading.Thread(target=lambda: answers.append(served.post("/?command=report", report)))
    worker.start()
    try:
        time.sleep(0.5)
        assert answers == [] and len(_audit_lines(served)) <= 1  # the thread's, if any yet
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    worker.join(10)
    assert answers == [(200, {"status": 0, "msg": ""})]
    assert _to_thread(served, "policy") == 1
    assert len(_audit_lines(served)) == 1 and _count(served, "audit_events") == 1
    assert served.engine.metrics.registry.get_sample_value(
        "appauth_logins_total", {"endpoint": "policy_report", "result": "ok", "service": "imap"}) == 1


def test_a_database_in_rollback_journal_mode_is_written_on_a_thread(served):
    # there a commit waits for the readers, which the loop's connection cannot do: the
    # request goes to a thread before any work (no hash spent on the loop)
    with sqlite3.connect(served.db) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    assert served.post("/verify", {"user": "alice@example.com", "password": PASSWORD,
                                   "remote_ip": ALLOWED_IP})[1]["result"] == "ok"
    report = {"login": "alice@example.com", "remote": OTHER_IP, "protocol": "imap", "success": True}
    assert served.post("/?command=report", report)[0] == 200
    assert (_to_thread(served, "verify"), _to_thread(served, "policy")) == (1, 1)
    assert (_count(served, "log"), _count(served, "audit_events")) == (1, 2)
    assert len(_audit_lines(served)) == 2


def test_a_bcrypt_password_is_checked_on_a_thread(served):
    pytest.importorskip("bcrypt")
    engine = schema.make_engine(f"sqlite:///{served.db}")
    try:
        schema.create_password(engine, "bob@example.com", hashing.hash_password(PASSWORD, "bcrypt"))
    finally:
        engine.dispose()
    assert served.post("/verify", {"user": "bob@example.com", "password": PASSWORD,
                                   "remote_ip": ALLOWED_IP})[1]["result"] == "ok"
    assert _to_thread(served, "verify") == 1
    assert served.post("/verify", {"user": "alice@example.com", "password": PASSWORD,
                                   "remote_ip": ALLOWED_IP})[1]["result"] == "ok"
    assert _to_thread(served, "verify") == 1  # SHA-crypt: on the loop


def test_a_user_with_more_app_passwords_than_the_loop_hashes_is_checked_on_a_thread(served):
    engine = schema.make_engine(f"sqlite:///{served.db}")
    try:
        for n in range(11):  # more than login._LOOP_MAX_HASHES
            schema.create_password(engine, "carol@example.com", hashing.hash_password(f"{PASSWORD}-{n}"))
    finally:
        engine.dispose()
    assert served.post("/verify", {"user": "carol@example.com", "password": f"{PASSWORD}-10",
                                   "remote_ip": ALLOWED_IP})[1]["result"] == "ok"
    assert _to_thread(served, "verify") == 1
    assert served.post("/verify", {"user": "alice@example.com", "password": wrong_password(PASSWORD),
                                   "remote_ip": ALLOWED_IP})[1] == {"result": "fail"}
    assert _to_thread(served, "verify") == 1  # a wrong password: [auth] hash_checks (10) on the loop


def test_a_leaked_password_is_refused_on_a_thread_and_counted_once(served):
    engine = schema.make_engine(f"sqlite:///{served.db}")
    try:
        (old,) = [p.id for p in schema.list_passwords(engine, "alice@example.com")]
        schema.revoke_password(engine, old)
    finally:
        engine.dispose()
    answer = served.post("/verify", {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP})
    assert answer[1] == {"result": "fail"}
    assert _to_thread(served, "verify") == 1
    # the failure row the loop's try wrote was rolled back: one row, one event
    assert _count(served, "auth_failures") == 1
    with sqlite3.connect(served.db) as conn:
        assert conn.execute("SELECT alert FROM audit_events").fetchall() == [("leaked-password",)]
    assert served.log.getvalue().count("refused revoked app password") == 1


def test_a_config_with_a_notify_command_never_tries_the_loop(tmp_path):
    path, _db = _site(tmp_path)
    site = _serve(path, '\n[alerts]\nenabled = true\nnotify_command = "/bin/true"\n')
    try:
        for _ in range(2):
            assert site.post("/verify", {"user": "alice@example.com", "password": PASSWORD,
                                         "remote_ip": ALLOWED_IP})[1]["result"] == "ok"
        assert (site.engine.loop_pool.opened, site.engine.pool.opened) == (0, 1)
        assert _to_thread(site, "verify") == 0  # never tried there, so never sent from there
    finally:
        site.close()
        keep_warm(False)
        keep_cache_open(False)


def test_syslog_with_a_full_socket_is_wouldwait_on_the_loop_and_a_timeout_elsewhere(tmp_path):
    path = str(tmp_path / "log.sock")
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a syslog daemon that never reads
    daemon.bind(path)
    try:
        fill_datagram_queue(path, b"x" * 1024)
        with pytest.raises(WouldWait):
            run_on_loop(line._send_syslog, b"<22>an audit line", path)
        started = time.monotonic()
        with pytest.raises(OSError):  # socket.timeout: the login goes on without the line
            line._send_syslog(b"<22>an audit line", path)
        assert time.monotonic() - started >= 0.9
    finally:
        daemon.close()
        os.unlink(path)
