"""`dovecot-appauth serve` behind a real Dovecot 2.3: the auth-policy protocol with a
passwd-file passdb, and the Lua passdb `examples/dovecot/appauth.lua` calling /verify; with
`--token-file` (policy api header, the script's APPAUTH_TOKEN), on `--unix-socket` (which
Dovecot 2.3 cannot reach: checked without it), passwords that are not UTF-8, a hung service."""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import _give_to_dovecot
from tests.support.common import free_port, wrong_password
from tests.support.dovecot import passwd_file_passdb, write_passwd_file
from tests.support.hardening import HangingTcp
from tests.support.serve import Service

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = [pytest.mark.dovecot,
              pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")]

LUA_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "dovecot" / "appauth.lua"
LUA_MODULE = "/usr/lib/dovecot/modules/auth/libauthdb_lua.so"
DENIED_IP = "203.0.113.66"
ALLOWED_IP = "198.51.100.20"
PASSWD_USER, PASSWD_PW = "carol@example.com", "carol-secret-9"


@pytest.fixture(scope="module")
def site(appauth_config_factory):
    cfg = appauth_config_factory(audit=True, extra_toml="""
[audit.dns]
enabled = false

[audit.lists]
ip_networks = "ip.deny.lst"
""")
    (cfg.dir / "ip.deny.lst").write_text("203.0.113.64/26\n")
    os.chmod(cfg.dir / "ip.deny.lst", 0o644)
    cfg.path.write_text(cfg.path.read_text().replace(
        "[audit]\n", '[audit]\nglobal_networks = ["203.0.113.0/24", "198.51.100.0/24"]\njournal = "no"\n'
                     f'syslog_socket = ""\nlog_file = "{cfg.dir / "audit.log"}"\n', 1))
    return cfg


@pytest.fixture(scope="module")
def service(site, token):
    """serve on TCP, as it must run there: with a token (Dovecot sends it)."""
    served = Service(site.path, site.dir / "serve.log", "--token-file", str(site.dir / "serve.token"))
    yield served
    served.stop()


def audit_events(cfg) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(cfg.db_path)
    try:
        return conn.execute("SELECT uid, pwid, src_ip, service, result FROM audit_events ORDER BY id").fetchall()
    finally:
        conn.close()


def test_auth_policy_denies_a_listed_client_with_a_passwd_file_passdb(dovecot, service, site, token):
    passwd = write_passwd_file(dovecot.basedir / "policy.passwd", {PASSWD_USER: PASSWD_PW}, dovecot.mail_root)
    dovecot.reconfigure(passdb=passwd_file_passdb(passwd), extra_conf=policy_conf(service.url("/policy"), token))
    mark = dovecot.log_mark()
    denied = dovecot.imap_login(PASSWD_USER, PASSWD_PW, client_ip=DENIED_IP)
    # a policy refusal (status -1) reaches the client as an ALERT with the policy's msg
    assert not denied.ok and "LOGIN NO [ALERT] Authentication failed" in denied.text, denied.text
    allowed = dovecot.imap_login(PASSWD_USER, PASSWD_PW, client_ip=ALLOWED_IP)
    assert allowed.ok, allowed.text + dovecot.log_since(mark)
    wrong = dovecot.imap_login(PASSWD_USER, "wrong-password", client_ip=ALLOWED_IP)
    assert not wrong.ok and "AUTHENTICATIONFAILED" in wrong.text
    # the report of the successful login is audited: an event without pwid
    deadline = time.monotonic() + 5
    while (PASSWD_USER, None, ALLOWED_IP, "imap") not in [e[:4] for e in audit_events(site)]:
        assert time.monotonic() < deadline, audit_events(site)
        time.sleep(0.1)
    assert PASSWD_PW not in dovecot.log_since(mark)
    assert "dovecot-appauth serve:" in (site.dir / "serve.log").read_text()  # the denial, logged by serve


def test_auth_policy_server_down_does_not_lock_users_out(dovecot, site):
    passwd = write_passwd_file(dovecot.basedir / "policy.passwd", {PASSWD_USER: PASSWD_PW}, dovecot.mail_root)
    dovecot.reconfigure(passdb=passwd_file_passdb(passwd), extra_conf=f"""
auth_policy_server_url = http://127.0.0.1:{free_port()}/policy
auth_policy_hash_nonce = test-nonce-not-secret
auth_policy_server_timeout_msecs = 1000
""")
    # auth_policy_reject_on_fail = no (the default): the policy check is skipped
    assert dovecot.imap_login(PASSWD_USER, PASSWD_PW, client_ip=ALLOWED_IP).ok


def use_lua_passdb(dovecot, url: str, token: str | None = None) -> None:
    """Reconfigure Dovecot with examples/dovecot/appauth.lua as its passdb, calling `url`."""
    if not os.path.exists(LUA_MODULE):
        pytest.skip("dovecot-auth-lua missing (apt-get install dovecot-auth-lua)")
    env = {"APPAUTH_VERIFY_URL": url, **({"APPAUTH_TOKEN": token} if token is not None else {})}
    dovecot.reconfigure(passdb=f"passdb {{\n  driver = lua\n  args = file={LUA_SCRIPT} blocking=yes\n}}\n",
                        extra_conf="", import_environment=env)


def test_lua_passdb_verifies_app_passwords_through_serve(dovecot, service, site, token):
    _give_to_dovecot(site.db_path.parent)
    created = site.create_password("dave@example.com")
    use_lua_passdb(dovecot, service.url("/verify"), token)
    mark = dovecot.log_mark()
    ok = dovecot.imap_login("dave@example.com", created["password"], client_ip=ALLOWED_IP)
    assert ok.ok, ok.text + dovecot.log_since(mark)
    wrong = dovecot.imap_login("dave@example.com", "Wrong-Pass-Word-0000", client_ip=ALLOWED_IP)
    assert not wrong.ok and "AUTHENTICATIONFAILED" in wrong.text, wrong.text
    denied = dovecot.imap_login("dave@example.com", created["password"], client_ip=DENIED_IP)
    assert not denied.ok and "AUTHENTICATIONFAILED" in denied.text, denied.text
    # the client IP and the service reached the engine: audit events, as with checkpassword
    events = [e for e in audit_events(site) if e[0] == "dave@example.com"]
    assert (("dave@example.com", created["id"], ALLOWED_IP, "imap") in [e[:4] for e in events]), events
    assert any(e[2] == DENIED_IP and e[4] == "deny" for e in events), events
    assert created["password"] not in dovecot.log_since(mark)


def test_lua_passdb_service_down_is_unavailable(dovecot):
    use_lua_passdb(dovecot, f"http://127.0.0.1:{free_port()}/verify")
    result = dovecot.imap_login("dave@example.com", "Any-Pass-Word-1111", client_ip=ALLOWED_IP)
    assert not result.ok and "UNAVAILABLE" in result.text, result.text


# --- serve --token-file -------------------------------------------------------------------
@pytest.fixture(scope="module")
def token(site) -> str:
    value = secrets.token_hex(24)
    path = site.dir / "serve.token"
    path.write_text(value + "\n")
    os.chmod(path, 0o600)
    return value


@pytest.fixture(scope="module")
def token_service(site, token):
    served = Service(site.path, site.dir / "serve-token.log", "--token-file", str(site.dir / "serve.token"))
    yield served
    served.stop()


def policy_conf(url: str, token: str) -> str:
    return f"""
auth_policy_server_url = {url}
auth_policy_server_api_header = Authorization: Bearer {token}
auth_policy_hash_nonce = test-nonce-not-secret
"""


def test_token_file_auth_policy_with_a_bearer_api_header(dovecot, token_service, token):
    # without the secret, the policy endpoint answers nothing but 401
    assert token_service.request("POST", "/policy?command=allow", {"remote": DENIED_IP})[0] == 401
    passwd = write_passwd_file(dovecot.basedir / "policy.passwd", {PASSWD_USER: PASSWD_PW}, dovecot.mail_root)
    dovecot.reconfigure(passdb=passwd_file_passdb(passwd), extra_conf=policy_conf(token_service.url("/policy"), token))
    mark = dovecot.log_mark()
    denied = dovecot.imap_login(PASSWD_USER, PASSWD_PW, client_ip=DENIED_IP)
    assert not denied.ok and "LOGIN NO [ALERT] Authentication failed" in denied.text, \
        denied.text + dovecot.log_since(mark)
    allowed = dovecot.imap_login(PASSWD_USER, PASSWD_PW, client_ip=ALLOWED_IP)
    assert allowed.ok, allowed.text + dovecot.log_since(mark)
    time.sleep(0.2)  # the report after the login
    assert "Policy server HTTP error" not in dovecot.log_since(mark)

    # a wrong secret: serve answers 401; Dovecot logs it and, with auth_policy_reject_on_fail = no
    # (the default), goes on without the policy: the listed client gets in
    wrong = wrong_password(token)
    dovecot.reconfigure(extra_conf=policy_conf(token_service.url("/policy"), wrong))
    mark = dovecot.log_mark()
    through = dovecot.imap_login(PASSWD_USER, PASSWD_PW, client_ip=DENIED_IP)
    assert through.ok, through.text + dovecot.log_since(mark)
    dovecot.wait_for_log(r"policy\(.*\): Policy server HTTP error: 401 Unauthorized", since=mark)
    # ... and with auth_policy_reject_on_fail = yes nobody gets in
    dovecot.reconfigure(extra_conf=policy_conf(token_service.url("/policy"), wrong)
                        + "auth_policy_reject_on_fail = yes\n")
    mark = dovecot.log_mark()
    refused = dovecot.imap_login(PASSWD_USER, PASSWD_PW, client_ip=ALLOWED_IP)
    assert not refused.ok and "AUTHENTICATIONFAILED" in refused.text, refused.text
    dovecot.wait_for_log(r"policy\(.*\): Policy check action is drop connection", since=mark)
    log = dovecot.log_text()
    assert token not in log and wrong not in log


def test_token_file_lua_passdb_sends_the_token_from_its_environment(dovecot, token_service, token, site):
    _give_to_dovecot(site.db_path.parent)
    created = site.create_password("erin@example.com")
    use_lua_passdb(dovecot, token_service.url("/verify"), token=token)
    mark = dovecot.log_mark()
    ok = dovecot.imap_login("erin@example.com", created["password"], client_ip=ALLOWED_IP)
    assert ok.ok, ok.text + dovecot.log_since(mark)
    wrong_pw = dovecot.imap_login("erin@example.com", "Wrong-Pass-Word-0000", client_ip=ALLOWED_IP)
    assert not wrong_pw.ok and "AUTHENTICATIONFAILED" in wrong_pw.text, wrong_pw.text

    # a wrong token, or none: serve answers 401, the script INTERNAL_FAILURE -> [UNAVAILABLE],
    # for the right password as for a wrong one (never "wrong password", never OK)
    wrong = wrong_password(token)
    for given in (wrong, None):
        use_lua_passdb(dovecot, token_service.url("/verify"), token=given)
        mark = dovecot.log_mark()
        for password in (created["password"], "Wrong-Pass-Word-0000"):
            result = dovecot.imap_login("erin@example.com", password, client_ip=ALLOWED_IP)
            assert not result.ok and "UNAVAILABLE" in result.text, result.text
            assert "AUTHENTICATIONFAILED" not in result.text, result.text
        dovecot.wait_for_log(r"passdb-lua: appauth: http://127\.0\.0\.1:\d+/verify: HTTP 401 Unauthorized", since=mark)
    log = dovecot.log_text()
    assert token not in log and wrong not in log and created["password"] not in log


# --- serve --unix-socket ------------------------------------------------------------------
# Dovecot 2.3.19 cannot reach an HTTP server on a Unix socket, neither from auth_policy_server_url
# nor from the Lua dovecot.http.client: its HTTP URLs are http(s)://host[:port] only, and the
# http-client's Unix-socket path (proxy_socket_path) is set by neither. The socket is for a
# reverse proxy in front of serve; this checks the real command answers on it.
def test_serve_on_a_unix_socket_answers_verify_and_policy(site):
    _give_to_dovecot(site.db_path.parent)
    created = site.create_password("frank@example.com")
    path = site.dir / "serve.sock"
    served = Service(site.path, site.dir / "serve-unix.log", unix_socket=path)

    def verify(password: str, ip: str, service: Service = served) -> tuple[int, dict]:
        return service.request("POST", "/verify", {"user": "frank@example.com", "password": password,
                                                   "service": "imap", "remote_ip": ip})

    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660  # not uvicorn's 0666: local users stay out

        status, answer = verify(created["password"], ALLOWED_IP)
        assert status == 200 and answer["result"] == "ok" and answer["user"] == "frank@example.com", answer
        assert answer["fields"]["userdb_home"].endswith("/frank@example.com"), answer
        assert verify("Wrong-Pass-Word-0000", ALLOWED_IP) == (200, {"result": "fail"})
        assert verify(created["password"], DENIED_IP) == (200, {"result": "fail"})
        assert served.request("POST", "/policy?command=allow", {"login": "frank@example.com", "remote": DENIED_IP,
                                                                "protocol": "imap"}) \
            == (200, {"status": -1, "msg": "Authentication failed"})
        assert served.request("POST", "/policy?command=allow", {"login": "frank@example.com", "remote": ALLOWED_IP,
                                                                "protocol": "imap"}) == (200, {"status": 0, "msg": ""})
    finally:
        served.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the socket file stays behind:
    # a restart on the same path must still work
    again = Service(site.path, site.dir / "serve-unix.log", unix_socket=path)
    try:
        assert verify(created["password"], ALLOWED_IP, again)[1]["result"] == "ok"
    finally:
        again.stop()
    events = [e for e in audit_events(site) if e[0] == "frank@example.com"]
    # the engine behind the socket audited and recorded both right-password logins and the refusal
    assert [e[2] for e in events if e[:2] == ("frank@example.com", created["id"]) and e[4] != "deny"] \
        == [ALLOWED_IP, ALLOWED_IP], events
    assert any(e[2] == DENIED_IP and e[4] == "deny" for e in events), events


# --- passwords that are not UTF-8 ---------------------------------------------------------
def test_lua_passdb_non_utf8_password_is_a_wrong_password(dovecot, service, site, token):
    _give_to_dovecot(site.db_path.parent)
    created = site.create_password("grace@example.com")
    use_lua_passdb(dovecot, service.url("/verify"), token)
    mark = dovecot.log_mark()
    # the same path (AUTHENTICATE PLAIN with raw bytes) logs in with the right password
    ok = dovecot.imap_login("grace@example.com", created["password"].encode(), client_ip=ALLOWED_IP)
    assert ok.ok, ok.text + dovecot.log_since(mark)
    for raw in (b"\xff\xfe", created["password"].encode() + b"\xff", b"Wrong-\xc3\x28-Pass"):
        result = dovecot.imap_login("grace@example.com", raw, client_ip=ALLOWED_IP)
        assert not result.ok and "AUTHENTICATIONFAILED" in result.text, result.text + dovecot.log_since(mark)
        assert "UNAVAILABLE" not in result.text, result.text
    time.sleep(0.2)
    assert not [line for line in dovecot.log_since(mark).splitlines() if "passdb-lua" in line and "Error" in line]


# --- the script's own timeout ---------------------------------------------------------------
def test_lua_passdb_hung_service_is_unavailable_after_the_script_timeout(dovecot):
    with HangingTcp() as silent:
        use_lua_passdb(dovecot, f"http://127.0.0.1:{silent.port}/verify")
        mark = dovecot.log_mark()
        started = time.monotonic()
        result = dovecot.imap_login("dave@example.com", "Any-Pass-Word-1111", client_ip=ALLOWED_IP, timeout=90)
        elapsed = time.monotonic() - started
        held = list(silent.conns)
    assert held, "the script never connected"
    assert not result.ok and "UNAVAILABLE" in result.text, result.text
    # the script's 5 s, not the http-client's 60 s default (Dovecot 2.3 ignores unknown setting names)
    assert elapsed < 15, f"{elapsed:.1f} s: {result.text}\n{dovecot.log_since(mark)}"
    dovecot.wait_for_log(r"passdb-lua: appauth: .*HTTP 9008 .*timeout expired", since=mark)
