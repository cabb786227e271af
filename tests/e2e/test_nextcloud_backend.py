"""`[auth] backend = "nextcloud"`: config, `login.decide`, and a real Dovecot login against a fake Nextcloud."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dovecot_appauth.cli import checks
from dovecot_appauth.config import ConfigError, load, parse
from dovecot_appauth.core import ExitCode, LoginRequest, Mode, TempFail
from dovecot_appauth.login import decide
from tests.support.dovecot import checkpassword_passdb
from tests.support.fake_nextcloud import FakeNextcloud

ALICE, ALICE_PW = "alice@example.com", "abcd-efgh-ijkl-mnop"
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def nc():
    server = FakeNextcloud()
    yield server
    server.close()


def nextcloud_toml(url: str, *, timeout: float = 1.0, cache_seconds: float = 0, audit: str = "") -> str:
    return f"""
[auth]
backend = "nextcloud"

[nextcloud]
url = "{url}"
timeout = {timeout}
cache_seconds = {cache_seconds}
{audit}"""


def rows(cfg, sql: str) -> list[tuple]:
    conn = sqlite3.connect(cfg.db_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def request(password: str, ip: str = "203.0.113.7", mode: Mode = Mode.VERIFY) -> LoginRequest:
    return LoginRequest(ALICE, password, mode, "imap", remote_ip=ip)


# --- config ------------------------------------------------------------------------------
def test_config_defaults_and_validation():
    config = parse({"auth": {"backend": "nextcloud"}, "nextcloud": {"url": "https://cloud.example/remote.php/dav/"}})
    assert config.auth.backend == "nextcloud"
    nc = config.nextcloud
    assert (nc.timeout, nc.cache_seconds, nc.ca_file, nc.forward_ip) == (3.0, 60.0, None, True)
    assert parse({}).auth.backend == "sql"
    with pytest.raises(ConfigError, match=r"\[nextcloud\] url: is required"):
        parse({"auth": {"backend": "nextcloud"}})
    with pytest.raises(ConfigError, match=r"backend: is 'ldap'"):
        parse({"auth": {"backend": "ldap"}})
    for url in ("ftp://x/", "https://user:pw@cloud.example/", "cloud.example"):
        with pytest.raises(ConfigError, match=r"\[nextcloud\] url: must be http"):
            parse({"nextcloud": {"url": url}})
    with pytest.raises(ConfigError, match=r"\[nextcloud\] timeout: must be at least"):
        parse({"nextcloud": {"url": "https://c/", "timeout": 0}})
    config = parse({"nextcloud": {"url": "https://c/", "colour": "blue"}})
    assert [str(p) for p in config.problems] == ["warning: config: [nextcloud] colour: unknown key (ignored)"]


def test_check_config_problems(tmp_path):
    config = parse({"auth": {"backend": "nextcloud"},
                    "nextcloud": {"url": "http://cloud.example/", "ca_file": str(tmp_path / "none.pem"),
                                  "cache_seconds": 3600}})
    found = {(p.where, p.level) for p in checks.check_nextcloud(config)}
    assert found == {("[nextcloud] ca_file", "error"), ("[nextcloud] url", "warning"),
                     ("[nextcloud] cache_seconds", "warning")}
    assert checks.check_nextcloud(parse({"nextcloud": {"url": "http://cloud.example/"}})) == []  # backend sql


# --- decide ------------------------------------------------------------------------------
def test_decide_ok_wrong_and_temporary_failures(appauth_config_factory, nc):
    cfg = appauth_config_factory(extra_toml=nextcloud_toml(nc.url()))
    config = load(str(cfg.path))
    before = len(nc.requests)
    outcome = decide(request(ALICE_PW), config, now=NOW)
    assert outcome.exit_code is ExitCode.OK and outcome.user == ALICE
    assert ("userdb_mail", "maildir:~/Maildir") in outcome.fields
    assert nc.requests[before][3]["X-Forwarded-For"] == "203.0.113.7"
    assert rows(cfg, "SELECT COUNT(*) FROM log") == [(0,)]  # no password row: nothing to record against

    assert decide(request("wrong"), config, now=NOW).exit_code is ExitCode.FAIL
    assert rows(cfg, "SELECT uid, src_ip FROM auth_failures") == [(ALICE, "203.0.113.7")]
    assert decide(request(ALICE_PW, mode=Mode.LOOKUP), config, now=NOW).exit_code is ExitCode.LOOKUP_UNKNOWN

    for path in ("/error/", "/slow/"):
        cfg.path.write_text(cfg.path.read_text().replace(nc.url(), nc.url(path)))
        with pytest.raises(TempFail, match="nextcloud"):
            decide(request(ALICE_PW), load(str(cfg.path)), now=NOW)
        cfg.path.write_text(cfg.path.read_text().replace(nc.url(path), nc.url()))


def test_decide_throttles_before_asking_nextcloud(appauth_config_factory, nc):
    cfg = appauth_config_factory(extra_toml=nextcloud_toml(nc.url()) + "\n[throttle]\nmax_per_user_ip = 2\n"
                                                                      'verdict = "deny"\n')
    config = load(str(cfg.path))
    for _ in range(2):
        assert decide(request("wrong", ip="203.0.113.9"), config, now=NOW).exit_code is ExitCode.FAIL
    before = len(nc.requests)
    outcome = decide(request(ALICE_PW, ip="203.0.113.9"), config, now=NOW + 1)
    assert outcome.exit_code is ExitCode.FAIL and "throttled" in outcome.message
    assert len(nc.requests) == before


def test_decide_cache_answers_a_burst(appauth_config_factory, nc):
    cfg = appauth_config_factory(extra_toml=nextcloud_toml(nc.url(), cache_seconds=60))
    config = load(str(cfg.path))
    before = len(nc.requests)
    for i in range(3):
        assert decide(request(ALICE_PW), config, now=NOW + i).exit_code is ExitCode.OK
    assert len(nc.requests) == before + 1
    assert (Path(cfg.dir) / "cache" / "nextcloud.key").exists()


def test_decide_audit_denies_and_records_events_without_pwid(appauth_config_factory, nc):
    cfg = appauth_config_factory(audit=True, extra_toml=nextcloud_toml(nc.url()) + """
[audit.dns]
enabled = false

[audit.lists]
ip_networks = "deny.lst"
""")
    (cfg.dir / "deny.lst").write_text("198.51.100.0/24\n")
    cfg.path.write_text(cfg.path.read_text().replace(
        "[audit]\n", '[audit]\nglobal_networks = ["198.51.100.0/24", "203.0.113.0/24"]\njournal = "no"\n'
                     'syslog_socket = ""\n', 1))
    config = load(str(cfg.path))
    assert decide(request(ALICE_PW, ip="203.0.113.7"), config, now=NOW).exit_code is ExitCode.OK
    denied = decide(request(ALICE_PW, ip="198.51.100.7"), config, now=NOW)
    assert denied.exit_code is ExitCode.FAIL and "ip_networks" in denied.message
    assert rows(cfg, "SELECT uid, pwid, src_ip, result, authenticated FROM audit_events ORDER BY id") == [
        (ALICE, None, "203.0.113.7", "unknown", 1), (ALICE, None, "198.51.100.7", "deny", 0)]


# --- a real Dovecot ------------------------------------------------------------------------
@pytest.mark.dovecot
def test_dovecot_login_through_nextcloud(appauth_config_factory, dovecot, nc):
    ok = appauth_config_factory(extra_toml=nextcloud_toml(nc.url()))
    dovecot.reconfigure(passdb=checkpassword_passdb(ok.path))
    assert dovecot.imap_login(ALICE, ALICE_PW, client_ip="203.0.113.20").ok
    assert nc.requests[-1][3]["X-Forwarded-For"] == "203.0.113.20"
    wrong = dovecot.imap_login(ALICE, "not-the-password", client_ip="203.0.113.21")
    assert not wrong.ok and "AUTHENTICATIONFAILED" in wrong.text

    for path, timeout in (("/error/", 1.0), ("/slow/", 0.5)):
        broken = appauth_config_factory(extra_toml=nextcloud_toml(nc.url(path), timeout=timeout))
        dovecot.reconfigure(passdb=checkpassword_passdb(broken.path))
        mark = dovecot.log_mark()
        result = dovecot.imap_login(ALICE, ALICE_PW, client_ip="203.0.113.22")
        assert not result.ok and "UNAVAILABLE" in result.text, result.text
        line = dovecot.wait_for_log(r"dovecot-appauth: nextcloud: ", since=mark)
        assert ALICE_PW not in dovecot.log_since(mark), line
