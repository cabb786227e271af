"""`password create/set/list` with policies, `upgrade-db` and `prune` through `cli.main`."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from dovecot_appauth.cli import main as cli
from dovecot_appauth.policy import utc_text


@pytest.fixture
def conf(tmp_path, capsys):
    db = tmp_path / "db" / "appauth.sqlite"
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\ndsn = "sqlite:///{db}"\n\n[userdb]\nuid = "5000"\n\n[audit]\nenabled = false\n')
    assert cli.main(["--config", str(path), "init-db"]) == 0
    capsys.readouterr()
    return path


def run(capsys, conf, *args):
    status = cli.main(["--config", str(conf), *args])
    out, err = capsys.readouterr()
    return status, out, err


def _db(conf):
    return sqlite3.connect(conf.parent / "db" / "appauth.sqlite")


def test_password_create_with_policy(conf, capsys):
    before = time.time()
    status, out, err = run(capsys, conf, "password", "create", "alice@example.com", "--services", "imap,SMTP",
                           "--services", "sieve", "--expires", "90d", "--from", "198.51.100.7/24,2001:db8::/32",
                           "--from", "192.0.2.1", "--json")
    assert status == 0, err
    data = json.loads(out)
    assert data["services"] == ["imap", "sieve", "smtp"]
    assert data["networks"] == ["198.51.100.0/24", "2001:db8::/32", "192.0.2.1/32"]
    expected = utc_text(before + 90 * 86400)
    assert data["expires"][:15] == expected[:15]
    conn = _db(conf)
    (row,) = conn.execute("SELECT pwid, services, expires, networks FROM app_password_policy").fetchall()
    assert row[0] == data["id"] and row[1] == "imap,sieve,smtp"
    assert row[2].startswith(data["expires"])
    assert row[3] == "198.51.100.0/24,2001:db8::/32,192.0.2.1/32"

    status, out, _ = run(capsys, conf, "password", "create", "bob@example.com", "--expires", "2026-12-31")
    assert status == 0
    assert "policy: expires 2027-01-01 00:00" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--services", "imapx"], "unknown service 'imapx'"),
    (["--from", "198.51.100.300/24"], "not an IPv4/IPv6 network"),
    (["--expires", "soon"], "not a duration"),
])
def test_password_create_rejects_bad_policy(conf, capsys, args, message):
    status, out, err = run(capsys, conf, "password", "create", "alice@example.com", *args)
    assert status == 1 and message in err and out == ""
    assert _db(conf).execute("SELECT count(*) FROM app_passwords").fetchone()[0] == 0


def test_password_set_and_list(conf, capsys):
    status, out, _ = run(capsys, conf, "password", "create", "alice@example.com", "--comment", "phone", "--json")
    pwid = json.loads(out)["id"]
    status, out, _ = run(capsys, conf, "password", "set", str(pwid), "--services", "imap", "--from",
                         "198.51.100.0/24")
    assert status == 0
    assert out.strip() == f"app password #{pwid}: services imap; from 198.51.100.0/24"
    status, out, _ = run(capsys, conf, "password", "list")
    header, line = out.splitlines()
    assert "POLICY" in header and "services imap; from 198.51.100.0/24" in line and line.endswith("active")

    status, out, _ = run(capsys, conf, "password", "set", str(pwid), "--all-services", "--expires", "2020-01-01",
                         "--json")
    assert json.loads(out) == {"id": pwid, "services": None, "expires": "2020-01-02 00:00:00",
                               "networks": ["198.51.100.0/24"]}
    status, out, _ = run(capsys, conf, "password", "list", "alice@example.com")
    assert out.splitlines()[1].endswith("expired 2020-01-02 00:00")
    status, out, _ = run(capsys, conf, "password", "list", "--json")
    assert json.loads(out)[0]["expires"] == "2020-01-02 00:00:00"

    status, out, _ = run(capsys, conf, "password", "set", str(pwid), "--no-expiry", "--from-anywhere")
    assert out.strip() == f"app password #{pwid}: no limits"
    assert _db(conf).execute("SELECT count(*) FROM app_password_policy").fetchone()[0] == 0

    status, _, err = run(capsys, conf, "password", "set", str(pwid))
    assert status == 1 and "nothing to change" in err
    status, _, err = run(capsys, conf, "password", "set", "4242", "--services", "imap")
    assert status == 1 and "app password #4242 does not exist" in err


def test_upgrade_db_reports_what_it_added(conf, capsys):
    conn = _db(conf)
    conn.execute("DROP TABLE audit_events")
    conn.execute("DROP TABLE app_password_policy")
    conn.commit()
    conn.close()
    status, out, _ = run(capsys, conf, "check-config")
    assert "warning: [database] dsn" in out and "table audit_events is missing: run 'dovecot-appauth upgrade-db'" in out
    status, out, _ = run(capsys, conf, "upgrade-db")
    assert status == 0
    assert out.startswith("added table app_password_policy, table audit_events to sqlite:///")
    status, out, _ = run(capsys, conf, "upgrade-db")
    assert status == 0 and out.startswith("nothing to add: ")


def test_prune(conf, capsys):
    conn = _db(conf)
    now = time.time()
    for days in (100, 95, 10):
        stamp = utc_text(now - days * 86400) + ".000"
        conn.execute("INSERT INTO audit_events (timestamp, uid, result, authenticated) VALUES (?, 'u', 'allow', 1)",
                     (stamp,))
        conn.execute("INSERT INTO auth_failures (timestamp, uid) VALUES (?, 'u')", (stamp,))
    conn.execute("INSERT INTO auth_failures (timestamp, uid) VALUES (?, 'u')", (utc_text(now - 60) + ".000",))
    conn.commit()
    status, out, _ = run(capsys, conf, "prune", "--dry-run")
    assert status == 0
    assert out.strip() == ("would delete 2 audit event(s) older than 90 days and 3 failed-login record(s) "
                           "older than 1 days; 0 known client(s) not seen for 30 days")
    status, out, _ = run(capsys, conf, "prune", "--older-than", "96d")
    assert out.startswith("deleted 1 audit event(s) older than 96 days and 3 failed-login record(s)")
    assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM auth_failures").fetchone()[0] == 1
    status, _, err = run(capsys, conf, "prune", "--older-than", "forever")
    assert status == 1 and "--older-than" in err
