"""The admin CLI through `cli.main([...])`, and the installed `dovecot-appauth` script."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dovecot_appauth import hashing
from dovecot_appauth.cli import main as cli

SCRIPT = Path(sys.executable).parent / "dovecot-appauth"
PASSWORD_RE = re.compile(r"[0-9A-Za-z]{4}(?:-[0-9A-Za-z]{4}){3}")
SUBCOMMANDS = [
    ["init-db"], ["password"], ["password", "create"], ["password", "list"], ["password", "revoke"],
    ["login-test"], ["check-config"], ["upgrade-db"], ["password", "set"], ["prune"], ["report"],
]


@pytest.fixture
def conf(tmp_path):
    """A config with audit disabled and a SQLite path; the database is not created yet."""
    db = tmp_path / "db" / "appauth.sqlite"
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\ndsn = "sqlite:///{db}"\n\n[userdb]\nuid = "5000"\ngid = "5000"\n'
        f'home = "/srv/mail/%d/%n"\n\n[audit]\nenabled = false\n'
    )
    return path


def run(capsys, conf: Path | None, *args: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    argv = (["--config", str(conf)] if conf is not None else []) + list(args)
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def _db(conf: Path) -> Path:
    return conf.parent / "db" / "appauth.sqlite"


@pytest.fixture
def ready(conf, capsys):
    assert run(capsys, conf, "init-db")[0] == 0
    return conf


def _create(capsys, conf, user, comment=None) -> dict:
    extra = ["--comment", comment] if comment else []
    status, out, err = run(capsys, conf, "password", "create", user, *extra, "--json")
    assert status == 0, err
    return json.loads(out)


def _hashes(conf) -> list[str]:
    conn = sqlite3.connect(_db(conf))
    try:
        return [r[0] for r in conn.execute("SELECT password FROM app_passwords")]
    finally:
        conn.close()


# --- init-db ------------------------------------------------------------------------------


def test_init_db_creates_then_reports_complete(conf, capsys):
    status, out, _ = run(capsys, conf, "init-db")
    assert status == 0
    assert out.strip() == ("created app_passwords, auth_failures, known_clients, app_password_policy, audit_events, "
                           f"log, app_passwords_with_log in sqlite:///{_db(conf)}")
    assert _db(conf).exists()
    status, out, _ = run(capsys, conf, "init-db")
    assert status == 0 and "schema already complete" in out


def test_missing_config_is_one_line(tmp_path, capsys):
    status, out, err = run(capsys, tmp_path / "nope.toml", "password", "list")
    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1 and "not found" in err


# --- password -----------------------------------------------------------------------------


def test_password_create_prints_it_once(ready, capsys):
    status, out, _ = run(capsys, ready, "password", "create", "alice@example.com", "--comment", "laptop")
    assert status == 0
    match = re.match(r"app password #(\d+) for alice@example\.com: (\S+)\n", out)
    assert match, out
    password = match.group(2)
    assert PASSWORD_RE.fullmatch(password)
    (stored,) = _hashes(ready)
    assert stored.startswith("{CRYPT}$6$") and "rounds=" not in stored
    assert hashing.verify(password, stored)


def test_password_create_json(ready, capsys):
    data = _create(capsys, ready, "bob@example.com", "phone")
    assert set(data) == {"id", "uid", "comment", "password", "services", "expires", "networks"}
    assert (data["uid"], data["comment"]) == ("bob@example.com", "phone")
    assert PASSWORD_RE.fullmatch(data["password"])


def test_password_create_stores_the_user_name_in_lower_case(ready, capsys):
    """A login answers Dovecot with the stored name: `Alice@Example.org` would rename the
    IMAP user and make a second mailbox."""
    status, out, err = run(capsys, ready, "password", "create", "Alice@Example.ORG", "--json")
    assert status == 0
    assert json.loads(out)["uid"] == "alice@example.org"
    assert err == "dovecot-appauth: user name 'Alice@Example.ORG' stored in lower case as 'alice@example.org'\n"
    conn = sqlite3.connect(_db(ready))
    try:
        assert conn.execute("SELECT uid FROM app_passwords").fetchall() == [("alice@example.org",)]
    finally:
        conn.close()
    # the lookup is case-insensitive: the login from any spelling answers with the stored name
    status, out, _ = run(capsys, ready, "login-test", "ALICE@example.org", "--lookup", "--json")
    assert (status, json.loads(out)["fields"][0]) == (0, ["user", "alice@example.org"])


@pytest.mark.parametrize("user", ["alice\t@example.org", "alice@example.org\n", "al\x7fice@example.org",
                                  "al\x85ice@example.org", " alice@example.org", ""])
def test_password_create_refuses_a_user_name_no_login_can_have(ready, capsys, user):
    status, out, err = run(capsys, ready, "password", "create", user)
    assert status == 1 and out == ""
    assert err.startswith("dovecot-appauth: the user name ") and err.endswith(": no password created\n")
    assert len(err.splitlines()) == 1
    assert _hashes(ready) == []


def test_password_list_json_has_the_state(ready, capsys):
    active = _create(capsys, ready, "alice@example.com")
    revoked = _create(capsys, ready, "alice@example.com")
    expired = _create(capsys, ready, "alice@example.com")
    assert run(capsys, ready, "password", "revoke", str(revoked["id"]))[0] == 0
    assert run(capsys, ready, "password", "set", str(expired["id"]), "--expires", "2020-01-01")[0] == 0
    status, out, _ = run(capsys, ready, "password", "list", "--json")
    assert status == 0
    assert {i["id"]: i["state"] for i in json.loads(out)} == {
        active["id"]: "active", revoked["id"]: "revoked", expired["id"]: "expired"}


@pytest.mark.parametrize("action", ["create", "set"])
def test_password_help_lists_every_service_it_accepts(capsys, action):
    from dovecot_appauth.policy import KNOWN_SERVICES

    with pytest.raises(SystemExit):
        cli.main(["password", action, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"({','.join(KNOWN_SERVICES)};" in text
    assert "lmtp" in text and "doveadm" in text


def test_password_list_never_prints_a_hash(ready, capsys):
    a = _create(capsys, ready, "alice@example.com", "laptop")
    b = _create(capsys, ready, "bob@example.com")
    status, out, _ = run(capsys, ready, "password", "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "USER", "CREATED", "(UTC)", "COMMENT", "LAST", "USE", "(UTC)", "POLICY",
                                "STATE"]
    assert len(lines) == 3
    assert lines[1].split()[:2] == [str(a["id"]), "alice@example.com"]
    assert "laptop" in lines[1] and "never used" in lines[1] and lines[1].endswith("active")
    assert lines[2].split()[:2] == [str(b["id"]), "bob@example.com"]
    status, json_out, _ = run(capsys, ready, "password", "list", "--json")
    items = json.loads(json_out)
    assert [i["id"] for i in items] == [a["id"], b["id"]]
    for text in (out, json_out):
        assert "$6$" not in text and "{CRYPT}" not in text
        for stored in _hashes(ready):
            assert stored not in text
        assert a["password"] not in text and b["password"] not in text


def test_password_list_filters(ready, capsys):
    a = _create(capsys, ready, "alice@example.com")
    a2 = _create(capsys, ready, "alice@example.com")
    _create(capsys, ready, "bob@example.com")
    status, out, _ = run(capsys, ready, "password", "list", "ALICE@example.COM", "--json")
    assert status == 0
    assert [i["id"] for i in json.loads(out)] == [a["id"], a2["id"]]
    assert run(capsys, ready, "password", "revoke", str(a["id"]))[0] == 0
    _, out, _ = run(capsys, ready, "password", "list", "alice@example.com", "--active", "--json")
    assert [i["id"] for i in json.loads(out)] == [a2["id"]]
    _, out, _ = run(capsys, ready, "password", "list", "alice@example.com")
    assert "revoked " in out.splitlines()[1]
    _, out, _ = run(capsys, ready, "password", "list", "carol@example.com")
    assert out.strip() == "no app passwords for carol@example.com"


def test_password_revoke(ready, capsys):
    a = _create(capsys, ready, "alice@example.com")
    status, out, _ = run(capsys, ready, "password", "revoke", str(a["id"]))
    assert status == 0 and out.strip() == f"revoked app password #{a['id']}"
    status, out, err = run(capsys, ready, "password", "revoke", str(a["id"]))
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and "already revoked" in err


# --- login-test ------------------------------------------------------------------------------


def test_login_test_success_then_listed(ready, capsys, monkeypatch):
    a = _create(capsys, ready, "alice@example.com", "laptop")
    status, out, _ = run(capsys, ready, "login-test", "Alice@Example.com", "--service", "pop3", "--ip",
                         "198.51.100.7", stdin=a["password"] + "\n", monkeypatch=monkeypatch)
    assert status == 0, out
    assert "verdict:     AUTHENTICATED" in out
    assert "exit status: 0 (authenticated" in out
    assert "  user=alice@example.com" in out and "  userdb_home=/srv/mail/example.com/alice" in out
    assert a["password"] not in out
    _, listed, _ = run(capsys, ready, "password", "list", "--json")
    (item,) = json.loads(listed)
    assert (item["last_service"], item["last_ip"]) == ("pop3", "198.51.100.7")
    _, table, _ = run(capsys, ready, "password", "list")
    assert "pop3 198.51.100.7" in table


def test_login_test_json(ready, capsys, monkeypatch):
    a = _create(capsys, ready, "alice@example.com")
    status, out, _ = run(capsys, ready, "login-test", "alice@example.com", "--json", stdin=a["password"] + "\n",
                         monkeypatch=monkeypatch)
    data = json.loads(out)
    assert status == 0
    assert (data["verdict"], data["exit_code"]) == ("AUTHENTICATED", 0)
    assert ["user", "alice@example.com"] in data["fields"]
    assert ["userdb_uid", "5000"] in data["fields"]
    assert data["stderr"] == []


def test_login_test_wrong_password(ready, capsys, monkeypatch):
    _create(capsys, ready, "alice@example.com")
    status, out, _ = run(capsys, ready, "login-test", "alice@example.com", "--json", stdin="wrong\n",
                         monkeypatch=monkeypatch)
    data = json.loads(out)
    assert status == 1
    assert (data["verdict"], data["exit_code"], data["fields"]) == ("REFUSED", 1, [])


def test_login_test_revoked_shows_dovecot_log_line(ready, capsys, monkeypatch):
    a = _create(capsys, ready, "alice@example.com")
    run(capsys, ready, "password", "revoke", str(a["id"]))
    status, out, _ = run(capsys, ready, "login-test", "alice@example.com", stdin=a["password"] + "\n",
                         monkeypatch=monkeypatch)
    assert status == 1
    assert "verdict:     REFUSED" in out
    assert "auth: Error: dovecot-appauth:" in out and "revoked" in out
    assert a["password"] not in out


def test_login_test_lookup(ready, capsys, monkeypatch):
    _create(capsys, ready, "alice@example.com")
    status, out, _ = run(capsys, ready, "login-test", "alice@example.com", "--lookup", "--json")
    data = json.loads(out)
    assert status == 0
    assert (data["verdict"], data["exit_code"]) == ("USER EXISTS", 2)
    status, out, _ = run(capsys, ready, "login-test", "nobody@example.com", "--lookup", "--json")
    assert status == 1 and json.loads(out)["verdict"] == "UNKNOWN USER"


def test_login_test_audit_chain_passes_the_marker_of_the_earlier_passdb(ready, capsys, monkeypatch):
    """login-test --audit-chain stands for the passdb before ours: it sets APPAUTH_OK=yes, as
    Dovecot does after that passdb's success (else the program refuses every login)."""
    status, out, _ = run(capsys, ready, "login-test", "someone@example.com", "--audit-chain", "--json",
                         stdin="checked-by-the-earlier-passdb\n", monkeypatch=monkeypatch)
    data = json.loads(out)
    assert status == 0, data
    assert (data["verdict"], data["exit_code"]) == ("AUTHENTICATED", 0)
    assert not [line for line in data["stderr"] if "refused" in line], data["stderr"]


def test_login_test_database_missing_is_tempfail(conf, capsys, monkeypatch):
    status, out, _ = run(capsys, conf, "login-test", "alice@example.com", "--json", stdin="x\n",
                         monkeypatch=monkeypatch)
    data = json.loads(out)
    assert status == 1
    assert (data["verdict"], data["exit_code"]) == ("TEMPORARY FAILURE", 111)
    assert len(data["stderr"]) == 1 and "cannot open" in data["stderr"][0]


# --- check-config ---------------------------------------------------------------------------


def test_check_config_clean(ready, capsys):
    status, out, _ = run(capsys, ready, "check-config")
    assert status == 0
    info, summary = out.strip().splitlines()
    assert info.startswith("info: service user: files checked as "), info
    assert summary == f"{ready}: 0 error(s), 0 warning(s)"


def test_check_config_reports_problems_with_location(ready, capsys):
    ready.write_text(ready.read_text() + "\n[auth]\ndedup_window = 'soon'\ntypo = 1\n")
    status, out, _ = run(capsys, ready, "check-config", "--no-database")
    assert status == 1
    assert "error: config.toml: [auth] dedup_window: must be a number" in out
    assert "warning: config.toml: [auth] typo: unknown key (ignored)" in out
    assert out.splitlines()[-1] == f"{ready}: 1 error(s), 1 warning(s)"


def test_check_config_reports_missing_schema(conf, capsys):
    _db(conf).parent.mkdir()
    sqlite3.connect(_db(conf)).close()
    status, out, _ = run(capsys, conf, "check-config")
    assert status == 1
    assert "table app_passwords is missing: run 'dovecot-appauth init-db'" in out


def test_check_config_refuses_userdb_extra_names_with_space_or_equals(ready, capsys):
    ready.write_text(ready.read_text() + '\n[userdb.extra]\n"quota rule" = "*:storage=1G"\n"a=b" = "c"\n')
    status, out, _ = run(capsys, ready, "check-config", "--no-database")
    assert status == 1
    assert "error: config.toml: [userdb].extra 'quota rule': a field name must not be empty or contain" in out
    assert "error: config.toml: [userdb].extra 'a=b': a field name must not be empty or contain" in out


def _percent_conf(tmp_path: Path, dsn_name: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\ndsn = "sqlite:///{tmp_path}/{dsn_name}"\n\n[userdb]\nuid = "5000"\n\n'
                    '[audit]\nenabled = false\n')
    return path


def test_percent_in_sqlite_file_name_check_config_and_login_agree(tmp_path, capsys, monkeypatch):
    """`a%2541.sqlite` in the URL is the file `a%41.sqlite`: init-db, check-config and a login
    all use that file (the login used to open `aA.sqlite` and fail while check-config passed)."""
    conf = _percent_conf(tmp_path, "a%2541.sqlite")
    assert run(capsys, conf, "init-db")[0] == 0
    assert (tmp_path / "a%41.sqlite").exists()
    a = _create(capsys, conf, "alice@example.com")
    status, out, _ = run(capsys, conf, "check-config")
    assert (status, out.splitlines()[-1]) == (0, f"{conf}: 0 error(s), 0 warning(s)")
    status, out, _ = run(capsys, conf, "login-test", "alice@example.com", "--json", stdin=a["password"] + "\n",
                         monkeypatch=monkeypatch)
    assert (status, json.loads(out)["verdict"]) == (0, "AUTHENTICATED")
    # written unescaped, %41 means "A" to both: check-config says so and how to write a %
    unescaped = _percent_conf(tmp_path, "a%41.sqlite")
    status, out, _ = run(capsys, unescaped, "check-config")
    assert status == 1
    assert "database file does not exist" in out and "write a % in the file name as %25" in out


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=[" ".join(w) for w in SUBCOMMANDS])
def test_every_subcommand_help_has_an_example(words, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*words, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dovecot-appauth " + " ".join(words))
    assert "example" in out


def test_installed_script_help():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    for name in ("init-db", "password", "login-test", "check-config"):
        assert name in proc.stdout


def test_check_config_says_where_audit_lines_cannot_go(tmp_path):
    """check-config says what every login would otherwise say (a socket that is missing) or
    never say (lines that go nowhere), judged on this host's sockets."""
    import socket

    from dovecot_appauth.cli.checks import check_audit_log
    from dovecot_appauth.config import load

    listening = []

    def unix_socket(name: str) -> str:
        path = str(tmp_path / name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        listening.append(sock)
        return path

    def problems(journal_socket: str, **audit: str) -> list[str]:
        path = tmp_path / "config.toml"
        lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in audit.items())
        path.write_text(f'[database]\ndsn = "sqlite:///{tmp_path}/db.sqlite"\n\n[audit]\nenabled = true\n{lines}')
        return [str(p) for p in check_audit_log(load(str(path)), journal_socket=journal_socket)]

    journald, syslog = unix_socket("journal"), unix_socket("log")
    missing = str(tmp_path / "missing")
    try:
        # journald here: nothing to say, whatever syslog is
        assert problems(journald, journal="auto", syslog_socket=missing) == []
        assert problems(journald, journal="yes") == []
        # "yes" without journald: said, then syslog is judged as the line's way
        found = problems(missing, journal="yes", syslog_socket=syslog)
        assert len(found) == 1 and found[0].startswith('warning: [audit] journal: "yes", but '), found
        # syslog: a socket is fine; a missing one is said, with the hint when log_file is set
        assert problems(missing, journal="auto", syslog_socket=syslog) == []
        assert problems(journald, journal="no", syslog_socket=syslog) == []
        found = problems(missing, journal="no", syslog_socket=missing)
        assert len(found) == 1 and f"{missing} is not a socket here" in found[0] and "log_file" not in found[0]
        found = problems(missing, journal="no", syslog_socket=missing, log_file=str(tmp_path / "audit.log"))
        assert len(found) == 1 and 'for log_file alone, set syslog_socket = ""' in found[0]
        # a regular file is not a socket
        (tmp_path / "plain").write_text("")
        assert len(problems(missing, journal="no", syslog_socket=str(tmp_path / "plain"))) == 1
        # nowhere at all; log_file alone is somewhere
        assert problems(missing, journal="no", syslog_socket="") == [
            'warning: [audit]: the audit lines go nowhere: no journald here, syslog_socket = "" and no log_file']
        assert problems(missing, journal="no", syslog_socket="", log_file=str(tmp_path / "audit.log")) == []
    finally:
        for sock in listening:
            sock.close()
    # no audit, nothing to say
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\ndsn = "sqlite:///{tmp_path}/db.sqlite"\n\n[audit]\nenabled = false\n'
                    f'syslog_socket = "{missing}"\n')
    assert check_audit_log(load(str(path)), journal_socket=missing) == []


def test_check_config_says_an_allow_list_without_its_trusted_source_never_allows(tmp_path):
    """Allow lists match only facts the admin can trust (MaxMind, the origin-AS service),
    never RDAP's, which the network's holder writes: an `as_numbers` or `countries` allow
    list without the source that feeds it can never allow, and check-config says so."""
    from dovecot_appauth.cli.checks import check_allow_sources
    from dovecot_appauth.config import load

    (tmp_path / "asn.allow").write_text("AS64500\n")
    (tmp_path / "cc.allow").write_text("DE\n")

    def found(extra: str) -> list[str]:
        path = tmp_path / "config.toml"
        path.write_text(f'[database]\ndsn = "sqlite:///{tmp_path}/db.sqlite"\n\n[audit]\nenabled = true\n\n'
                        f'[audit.allow]\nas_numbers = "{tmp_path}/asn.allow"\ncountries = "{tmp_path}/cc.allow"\n\n'
                        '[audit.allow.users."bob@example.com"]\nas_numbers = ["AS64501"]\n\n' + extra)
        return [f"{p.level} {p.where}" for p in check_allow_sources(load(str(path)))]

    assert found("") == ["warning [audit.allow] as_numbers", 'warning [audit.allow.users."bob@example.com"] as_numbers',
                         "warning [audit.allow] countries"]
    assert found('[audit.maxmind]\ncity = "/x/City.mmdb"\nasn = "/x/ASN.mmdb"\n') == []
    assert found('[audit.origin_as]\nenabled = true\n') == ["warning [audit.allow] countries"]
    assert found('[audit.maxmind]\ncity = "/x/City.mmdb"\n') == [
        "warning [audit.allow] as_numbers", 'warning [audit.allow.users."bob@example.com"] as_numbers']
