"""The account gate end to end: a real Dovecot 2.3 (SASL as SMTP AUTH uses it, through
`doveadm auth test -x service=smtp`, and IMAP) and `dovecot-appauth serve` /verify, both
against a real slapd (tests/support/ldap.py) and the installed program."""

from __future__ import annotations

import os
import secrets
import shutil

import pytest

from tests.support.common import dovecot_ids, free_port
from tests.support.dovecot import checkpassword_passdb, our_lines
from tests.support.ldap import BIND_PW

pytestmark = [pytest.mark.dovecot,
              pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")]

CLIENT = "198.51.100.30"


def gate_toml(uri: str, secret_file: str, cache_seconds: float = 0, timeout: float = 2.0) -> str:
    from tests.support.ldap import BIND_DN, USERS_DN

    return f"""
[account]
backend = "ldap"
timeout = {timeout}
cache_seconds = {cache_seconds}

[account.ldap]
uri = "{uri}"
basedn = "{USERS_DN}"
bind_dn = "{BIND_DN}"
bind_password_file = "{secret_file}"
"""


@pytest.fixture(scope="module")
def gate_site(appauth_config_factory, slapd):
    cfg = appauth_config_factory()
    secret = cfg.dir / "ldap.secret"
    secret.write_text(BIND_PW + "\n")
    os.chown(secret, 0, dovecot_ids()[1])  # root:dovecot 0640, as docs/ACCOUNT-GATE.md says
    os.chmod(secret, 0o640)
    base = cfg.path.read_text()
    cfg.path.write_text(base + gate_toml(slapd.uri, str(secret)))
    cfg.base_toml = base  # type: ignore[attr-defined]
    cfg.secret = secret  # type: ignore[attr-defined]
    cfg.pw = {user: cfg.create_password(f"{user}@example.com")["password"]  # type: ignore[attr-defined]
              for user in ("alice", "bob", "carol", "dave", "erin")}
    return cfg


def test_dovecot_sasl_smtp_and_imap_through_the_gate(dovecot_factory, gate_site, slapd):
    server = dovecot_factory(passdb=checkpassword_passdb(gate_site.path))
    pw = gate_site.pw
    rc, out = server.doveadm_auth_test("alice@example.com", pw["alice"], service="smtp", rip=CLIENT)
    assert rc == 0, out + server.log_text()[-3000:]
    mark = server.log_mark()
    for user, state in (("bob", "disabled"), ("carol", "disabled"), ("dave", "missing")):
        rc, out = server.doveadm_auth_test(f"{user}@example.com", pw[user], service="smtp", rip=CLIENT)
        assert rc == 77, out
    server.wait_for_log("dave@example.com: refused by the account gate", since=mark)
    lines = our_lines(server.log_since(mark))
    assert any("user bob@example.com: refused by the account gate: account disabled in ldap: "
               "uid=bob@example.com,ou=users,dc=example,dc=com has loginShell=/bin/false" in line for line in lines)
    assert any("user carol@example.com: refused by the account gate: account disabled in ldap" in line
               for line in lines)
    # a user disabled in the directory is refused at the next login (cache_seconds = 0 here)
    assert server.doveadm_auth_test("erin@example.com", pw["erin"], service="smtp", rip=CLIENT)[0] == 0
    slapd.modify("erin@example.com", "loginShell", "/bin/false")
    try:
        assert server.doveadm_auth_test("erin@example.com", pw["erin"], service="smtp", rip=CLIENT)[0] == 77
        assert not server.imap_login("erin@example.com", pw["erin"], client_ip=CLIENT).ok
    finally:
        slapd.modify("erin@example.com", "loginShell", "/bin/bash")
    assert server.imap_login("alice@example.com", pw["alice"], client_ip=CLIENT).ok
    assert BIND_PW not in server.log_text()


def test_dovecot_directory_down_is_a_temporary_failure(dovecot_factory, appauth_config_factory, slapd):
    cfg = appauth_config_factory()
    secret = cfg.dir / "ldap.secret"
    secret.write_text(BIND_PW + "\n")
    os.chown(secret, *dovecot_ids())
    os.chmod(secret, 0o600)
    cfg.path.write_text(cfg.path.read_text() + gate_toml(f"ldap://127.0.0.1:{free_port()}", str(secret), timeout=1))
    password = cfg.create_password("alice@example.com")["password"]
    server = dovecot_factory(passdb=checkpassword_passdb(cfg.path))
    mark = server.log_mark()
    rc, out = server.doveadm_auth_test("alice@example.com", password, service="smtp", rip=CLIENT)
    assert rc != 0, out
    assert "Can't contact LDAP server" in server.wait_for_log("account gate: LDAP", since=mark)
    result = server.imap_login("alice@example.com", password, client_ip=CLIENT)
    assert not result.ok and "UNAVAILABLE" in result.text  # retry later, not a wrong password
    assert BIND_PW not in server.log_text()


def test_serve_verify_through_the_gate(gate_site, slapd):
    pytest.importorskip("starlette")
    from tests.support.serve import Service

    token = secrets.token_hex(24)  # serve on TCP runs with a token, as Dovecot calls it
    token_file = gate_site.dir / "serve.token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    # every request sees the config as the test just wrote it (the interval: test_serve_operation.py)
    served = Service(gate_site.path, gate_site.dir / "serve.log", "--token-file", str(token_file),
                     "--file-check-interval", "0")
    try:
        def verify(user: str) -> dict:
            status, answer = served.request("POST", "/verify", {"user": f"{user}@example.com",
                                                                "password": gate_site.pw[user],
                                                                "service": "smtp", "remote_ip": CLIENT},
                                            token=token)
            assert status == 200
            return answer

        assert verify("alice")["result"] == "ok"
        assert verify("bob")["result"] == "fail"
        assert verify("dave")["result"] == "fail"
        # the directory goes away: a temporary failure, never "fail"
        moved = gate_site.dir / "moved.toml"
        moved.write_text(gate_site.base_toml + gate_toml(f"ldap://127.0.0.1:{free_port()}", str(gate_site.secret),
                                                         timeout=1))
        shutil.copy(moved, gate_site.path)
        assert verify("alice")["result"] == "tempfail"
    finally:
        served.stop()
        gate_site.path.write_text(gate_site.base_toml + gate_toml(slapd.uri, str(gate_site.secret)))
    log = (gate_site.dir / "serve.log").read_text()
    assert "refused by the account gate" in log and BIND_PW not in log
