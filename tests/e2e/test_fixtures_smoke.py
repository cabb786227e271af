"""The real-server fixtures work on their own, without our program."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.common import DOVECOT_USER, missing_dependency, run_as, wrong_password
from tests.support.dovecot import (
    FIXTURE_USERS,
    DovecotServer,
    dovecot_ids,
    passwd_file_passdb,
    write_passwd_file,
)

USER, PASSWORD = next(iter(FIXTURE_USERS.items()))

# A checkpassword program in the spirit of ours: records what Dovecot hands it, accepts
# password "right", and lets the reply helper (the last argument) answer.
RECORDER = textwrap.dedent("""\
    #!/usr/bin/python3
    import json, os, sys
    data = b""
    with os.fdopen(3, "rb") as f:
        data = f.read(513)
    user, password = data.split(b"\\0")[:2]
    with open(sys.argv[1], "a") as out:
        out.write(json.dumps({"user": user.decode(), "env": dict(os.environ), "argv": sys.argv}) + "\\n")
    if os.environ.get("AUTHORIZED") == "1":
        os.environ["AUTHORIZED"] = "2"
    elif password != b"right":
        sys.exit(1)
    os.environ["USER"] = user.decode()
    os.execv(sys.argv[-1], [sys.argv[-1]])
""")


@pytest.mark.skipif(os.environ.get("APPAUTH_TEST_NETNS") != "1",
                    reason="scripts/test.sh runs pytest in a network namespace (APPAUTH_TEST_NETNS=1); this run is not")
def test_suite_runs_without_a_route_out():
    """scripts/test.sh runs pytest under `unshare --net` with only `lo` up: a test (or a config
    that falls back to the system resolver) that tries to leave loopback fails at once with
    ENETUNREACH instead of sending anything out. Only documentation addresses are tried."""
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    for family, kind, address in ((socket.AF_INET, socket.SOCK_STREAM, ("192.0.2.1", 443)),
                                  (socket.AF_INET, socket.SOCK_DGRAM, ("192.0.2.53", 53)),
                                  (socket.AF_INET6, socket.SOCK_STREAM, ("2001:db8::1", 443))):
        with socket.socket(family, kind) as s:
            s.settimeout(10)  # a route out would make this a timeout or a connection, not ENETUNREACH
            with pytest.raises(OSError) as info:
                if kind == socket.SOCK_DGRAM:
                    s.sendto(b"\0" * 12, address)  # what a resolver would send
                else:
                    s.connect(address)
            assert info.value.errno == errno.ENETUNREACH, (address, info.value)
    # loopback works
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_wrong_password_differs_by_construction():
    for right in ("Ab12-Cd34-Ef56-Gh7x", "Ab12-Cd34-Ef56-Gh7y", "x", "", "pässwörd-ü"):
        wrong = wrong_password(right)
        assert wrong != right and len(wrong) == max(len(right), 1)
    assert wrong_password(b"Real-Pass-1234-abcx") == b"Real-Pass-1234-abcy"
    # also different from every other password named: same length, another last character
    others = [f"Ab12-Cd34-Ef56-Gh7{c}" for c in "xyzXYZ012"]
    wrong = wrong_password(others[0], *others[1:])
    assert wrong not in others and len(wrong) == len(others[0])


# `pw[:-1] + "x"` is the right password whenever it already ends in "x" (one run in 62)
FRAGILE_WRONG_PASSWORD = re.compile(r"""\[:-1\]\s*\+\s*b?["']""")


def test_no_wrong_password_is_built_by_setting_the_last_character():
    root = Path(__file__).resolve().parents[2]
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}"
             for path in sorted([*root.glob("tests/*.py"), *root.glob("benchmarks/*.py")])
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if FRAGILE_WRONG_PASSWORD.search(line) and "`" not in line]  # quoted in a comment: fine
    assert not found, "use tests.support.common.wrong_password:\n" + "\n".join(found)


@pytest.mark.mariadb
def test_mariadb_server(mariadb, mariadb_database):
    conn = mariadb_database.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(50), "
                        "ts DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))")
            cur.execute("INSERT INTO t (v) VALUES (%s), (%s)", ("a", "ü"))
            cur.execute("SELECT v, ts FROM t ORDER BY id")
            rows = cur.fetchall()
            cur.execute("SELECT DATABASE(), CURRENT_USER()")
            db, user = cur.fetchone()
    finally:
        conn.close()
    assert [r[0] for r in rows] == ["a", "ü"]
    assert rows[0][1].microsecond % 1000 == 0
    assert db == mariadb_database.name and user.startswith(mariadb.user + "@")
    # each test gets its own empty database
    other = mariadb.fresh_database()
    try:
        conn = other.connect()
        with conn.cursor() as cur:
            assert cur.execute("SHOW TABLES") == 0
        conn.close()
    finally:
        other.drop()


@pytest.mark.mariadb
def test_mariadb_dsns(mariadb, mariadb_database):
    import pymysql

    assert mariadb_database.dsn.startswith(f"mysql+pymysql://{mariadb.user}:")
    assert f"@127.0.0.1:{mariadb.port}/{mariadb_database.name}" in mariadb_database.dsn
    assert "?unix_socket=" in mariadb_database.socket_dsn
    # the socket works with the test user's password, and is reachable by user dovecot
    conn = pymysql.connect(unix_socket=mariadb.socket, user=mariadb.user, password=mariadb.password,
                           database=mariadb_database.name)
    conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=mariadb.port, user=mariadb.user, password="wrong",
                        connect_timeout=5)
    assert os.stat(os.path.dirname(mariadb.socket)).st_mode & 0o005 == 0o005
    # user dovecot (which runs our program) reaches the server over the socket and TCP
    probe = ("import pymysql, sys; a = dict(user=sys.argv[1], password=sys.argv[2], connect_timeout=5); "
             "pymysql.connect(unix_socket=sys.argv[3], **a).close(); "
             "pymysql.connect(host='127.0.0.1', port=int(sys.argv[4]), **a).close()")
    res = run_as(DOVECOT_USER, sys.executable, "-c", probe, mariadb.user, mariadb.password, mariadb.socket,
                 str(mariadb.port))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_server_skips_locally_fails_in_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="no such server"):
        missing_dependency("no such server")


@pytest.mark.dovecot
def test_dovecot_passwd_file_auth(dovecot: DovecotServer):
    dovecot.reset()
    rc, out = dovecot_auth = dovecot.doveadm_auth_test(USER, PASSWORD)
    assert rc == 0, dovecot_auth
    rc, out = dovecot.doveadm_auth_test(USER, "wrong")
    assert rc == 77, out
    rc, out = dovecot.doveadm_auth_test(USER, PASSWORD, service="smtp", rip="203.0.113.9")
    assert rc == 0, out


@pytest.mark.dovecot
def test_dovecot_imap_and_pop3(dovecot: DovecotServer):
    dovecot.reset()
    ok, text = dovecot.imap_login(USER, PASSWORD)
    assert ok, text
    assert "SELECT OK" in text
    ok, text = dovecot.imap_login(USER, "wrong")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    ok, text = dovecot.pop3_login(USER, PASSWORD)
    assert ok, text
    ok, text = dovecot.pop3_login(USER, "wrong", client_ip="203.0.113.5")
    assert not ok and "[AUTH]" in text, text
    assert (dovecot.mail_root / USER / "Maildir").is_dir()


@pytest.mark.dovecot
def test_dovecot_failures_are_fast(dovecot: DovecotServer):
    """auth_failure_delay = 0 and no per-IP penalty: repeated failures stay quick."""
    dovecot.reset()
    start = time.monotonic()
    for _ in range(4):
        ok, text = dovecot.imap_login(USER, "wrong")
        assert not ok, text
    ok, text = dovecot.imap_login(USER, PASSWORD)
    assert ok, text
    assert time.monotonic() - start < 6


def _install_recorder(server: DovecotServer):
    """Write the RECORDER program into the server's dir; return (script, passdb args, records())."""
    record = server.basedir / "record.jsonl"
    record.touch()
    uid, gid = dovecot_ids()
    os.chown(record, uid, gid)
    script = server.basedir / "recorder.py"
    script.write_text(RECORDER)
    os.chmod(script, 0o755)

    def records():
        return [json.loads(line) for line in record.read_text().splitlines()]

    return script, f"{script} {record}", records


@pytest.mark.dovecot
def test_dovecot_checkpassword_sees_client_ip(dovecot: DovecotServer):
    """A checkpassword program (running as user dovecot) gets the IP the client claimed."""
    script, args, records = _install_recorder(dovecot)
    passdb = f"passdb {{\n  driver = checkpassword\n  args = {args}\n}}\n"
    assert dovecot.reconfigure(passdb=passdb)
    assert not dovecot.reconfigure(passdb=passdb)  # unchanged: no restart

    ok, text = dovecot.imap_login("carol", "right", client_ip="203.0.113.77")
    assert ok, text + "\n" + dovecot.log_text()
    first = records()[-1]
    assert first["user"] == "carol"
    assert first["env"]["TCPREMOTEIP"] == "203.0.113.77"
    assert first["env"]["SERVICE"] == "imap"
    assert "PATH" not in first["env"]
    assert first["argv"][-1] == "/usr/lib/dovecot/checkpassword-reply"

    mark = dovecot.log_mark()
    ok, text = dovecot.imap_login("carol", "wrong", client_ip="198.51.100.1")
    assert not ok and "AUTHENTICATIONFAILED" in text
    assert records()[-1]["env"]["TCPREMOTEIP"] == "198.51.100.1"
    dovecot.wait_for_log(r"auth: .*carol", since=mark)

    ok, text = dovecot.pop3_login("carol", "right", client_ip="203.0.113.78")
    assert ok, text
    assert records()[-1]["env"]["TCPREMOTEIP"] == "203.0.113.78"
    assert records()[-1]["env"]["SERVICE"] == "pop3"

    rc, out = dovecot.doveadm_auth_test("carol", "right", service="smtp", rip="192.0.2.44")
    assert rc == 0, out
    assert records()[-1]["env"]["SERVICE"] == "smtp"
    assert records()[-1]["env"]["TCPREMOTEIP"] == "192.0.2.44"

    rc, out = dovecot.doveadm_auth_lookup("carol")
    assert rc == 0, out
    lookup_env = records()[-1]["env"]
    # `doveadm auth lookup` is a passdb lookup: checkpassword sees it as a credentials lookup
    # with an empty SCHEME (a non-plaintext SASL mechanism would name one)
    assert lookup_env["AUTHORIZED"] == "1"
    assert lookup_env.get("CREDENTIALS_LOOKUP") == "1" and lookup_env.get("SCHEME") == ""
    assert lookup_env["SERVICE"] == "doveadm"

    # stderr of the program becomes "auth: Error:" lines
    script.write_text("#!/bin/sh\necho 'boom from the program' >&2\nexit 111\n")
    mark = dovecot.log_mark()
    ok, text = dovecot.imap_login("carol", "right")
    assert not ok and "UNAVAILABLE" in text, text
    dovecot.wait_for_log("auth: Error: .*boom from the program", since=mark)
    assert any("boom" in line for line in dovecot.auth_errors(mark))


@pytest.mark.dovecot
def test_dovecot_hands_on_the_fields_of_a_successful_passdb_only(dovecot_factory):
    """What --audit-chain's marker relies on (Dovecot 2.3.19): the extra fields of a passdb that
    succeeded reach a later checkpassword program upper-cased (appauth_ok=yes -> APPAUTH_OK=yes);
    those of a passdb that failed are dropped, and a client cannot set them (`-x` of doveadm)."""
    server = dovecot_factory()
    _, args, records = _install_recorder(server)
    users = write_passwd_file(server.basedir / "marker.passwd", {"dave": "right"}, server.mail_root)
    # no `skip`, and the first passdb's failure goes on (Dovecot's default): the recorder sees both
    server.reconfigure(passdb=passwd_file_passdb(users, "result_success = continue-ok\n"
                                                        "override_fields = appauth_ok=yes")
                       + f"passdb {{\n  driver = checkpassword\n  args = {args}\n}}\n")
    assert server.doveadm_auth_test("dave", "right")[0] == 0
    assert records()[-1]["env"]["APPAUTH_OK"] == "yes"
    ok, text = server.imap_login("dave", "right")
    assert ok and records()[-1]["env"]["APPAUTH_OK"] == "yes", text
    before = len(records())
    assert server.doveadm_auth_test("dave", "wrong", extra={"appauth_ok": "yes"})[0] == 77
    ok, text = server.imap_login("dave", "wrong")
    assert not ok, text
    after = records()[before:]
    assert len(after) == 2  # the recorder ran for both failed logins, without the marker:
    assert not [env for env in (r["env"] for r in after) if "APPAUTH_OK" in env or "appauth_ok" in env]


@pytest.mark.dovecot
def test_dovecot_second_server_and_audit_chain(dovecot_factory):
    """A second server next to the module's; the audit-only chain given as a passdb string:
    passwd-file (continue-ok), then a checkpassword program with skip = unauthenticated."""
    server = dovecot_factory()
    _, args, records = _install_recorder(server)
    users = write_passwd_file(server.basedir / "users.passwd", {"dave": "right", "erin": "other"},
                              server.mail_root)
    first = passwd_file_passdb(users, "result_success = continue-ok")

    def chain(settings: str) -> str:
        return first + f"passdb {{\n  driver = checkpassword\n  args = {args}\n  {settings}\n}}\n"

    server.reconfigure(passdb=chain("skip = unauthenticated"))
    assert server.doveadm_auth_test("dave", "right")[0] == 0
    assert records()[-1]["user"] == "dave"
    before = len(records())
    assert server.doveadm_auth_test("dave", "nope")[0] == 77
    assert len(records()) == before  # skipped: the first passdb failed
    # the program refuses erin's (passwd-file-valid) password: by default that does not deny ...
    ok, text = server.imap_login("erin", "other")
    assert ok, text
    assert records()[-1]["user"] == "erin"
    # ... with result_failure = return-fail it does
    server.reconfigure(passdb=chain("skip = unauthenticated\n  result_failure = return-fail"))
    assert server.doveadm_auth_test("erin", "other")[0] == 77
    ok, text = server.imap_login("erin", "other")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    assert server.imap_login("dave", "right").ok
