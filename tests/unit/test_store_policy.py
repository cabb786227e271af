"""The login's store and the side tables: policies in the password query, audit events,
history, and an old database without the side tables (SQLite and MariaDB)."""

from __future__ import annotations

import calendar

import pytest

from dovecot_appauth.audit.events import event_row, sightings
from dovecot_appauth.cli import schema
from dovecot_appauth.policy import Policy
from dovecot_appauth.store import UPGRADE_NOTE, LoginRecord, utc_timestamp
from tests.e2e.test_store import HASH_A, HASH_B, HASH_C, backend  # noqa: F401 - the fixture

NOW = float(calendar.timegm((2026, 3, 1, 12, 0, 0)))


def test_find_passwords_brings_the_policy(backend):  # noqa: F811
    limited = schema.create_password(backend.engine, "alice@example.com", HASH_A,
                                     policy=Policy(("imap",), NOW, ("198.51.100.0/24",)))
    free = schema.create_password(backend.engine, "alice@example.com", HASH_B)
    store = backend.store()
    try:
        rows = {r.id: r for r in store.find_passwords("ALICE@example.com")}
        assert store.upgrade_note is None
    finally:
        store.close()
    assert rows[limited].policy == Policy(("imap",), NOW, ("198.51.100.0/24",))
    assert rows[free].policy is None
    assert HASH_A not in repr(rows[limited])


def test_old_database_without_side_tables(backend):  # noqa: F811
    pwid = schema.create_password(backend.engine, "alice@example.com", HASH_A, policy=Policy(("imap",)))
    backend.execute("DROP TABLE app_password_policy")
    backend.execute("DROP TABLE audit_events")
    store = backend.store()
    try:
        [row] = store.find_passwords("alice@example.com")
        assert (row.id, row.policy) == (pwid, None)
        assert store.upgrade_note == UPGRADE_NOTE
        with pytest.raises(Exception, match="run 'dovecot-appauth upgrade-db'"):
            store.record_event(event_row(timestamp=utc_timestamp(NOW), user="alice@example.com", pwid=pwid,
                                         service="imap", ip="192.0.2.1", facts=None, result="allow"))
        # the login's own row still goes in
        assert store.record_login(LoginRecord(pwid, "imap", "192.0.2.1"), now=NOW, dedup_window=60)
    finally:
        store.close()
    assert backend.rows("SELECT pwid FROM log") == [(pwid,)]


def test_event_and_log_row_in_one_transaction_and_history(backend):  # noqa: F811
    pwid = schema.create_password(backend.engine, "carol@example.com", HASH_C)
    store = backend.store()
    try:
        for minutes in (120, 60):
            store.record_event(event_row(timestamp=utc_timestamp(NOW - minutes * 60), user="carol@example.com",
                                         pwid=pwid, service="imap", ip="192.0.2.1", facts=None, result="unknown"))
        store.record_event(event_row(timestamp=utc_timestamp(NOW - 30), user="carol@example.com", pwid=pwid,
                                     service="imap", ip="192.0.2.9", facts=None, result="deny",
                                     authenticated=False))
        store.record_login(LoginRecord(pwid, "imap", "192.0.2.1"), now=NOW, dedup_window=60)
        history = sightings(store.recent_events("CAROL@example.com", NOW - 90 * 60))
    finally:
        store.close()
    assert [h.time for h in history] == [NOW - 3600]  # newest first, accepted logins only, in the window
    assert backend.rows("SELECT count(*) FROM audit_events") == [(3,)]


def test_denied_login_event_is_committed_on_close(backend):  # noqa: F811
    store = backend.store()
    try:
        store.record_event(event_row(timestamp=utc_timestamp(NOW), user="dave@example.com", pwid=None,
                                     service="imap", ip="192.0.2.1", facts=None, result="deny",
                                     authenticated=False))
    finally:
        store.close()
    assert backend.rows("SELECT uid, result, authenticated FROM audit_events") == [("dave@example.com", "deny", 0)]
