"""`dovecot-appauth serve` behind a real Dovecot 2.3: the auth-policy protocol with a
passwd-file passdb, and the Lua passdb `examples/dovecot/appauth.lua` calling /verify."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CLI, _give_to_dovecot
from tests.fixtures_common import free_port
from tests.fixtures_dovecot import passwd_file_passdb, write_passwd_file

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = [pytest.mark.dovecot,
              pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")]

LUA_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "dovecot" / "appauth.lua"
LUA_MODULE = "/usr/lib/dovecot/modules/auth/libauthdb_lua.so"
DENIED_IP = "203.0.113.66"
ALLOWED_IP = "198.51.100.20"
PASSWD_USER, PASSWD_PW = "carol@example.com", "carol-secret-9"


class Service:
    """`dovecot-appauth serve --port PORT` as a subprocess (the real command line)."""

    def __init__(self, config: Path, log: Path):
        self.port = free_port()
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([str(CLI), "--config", str(config), "serve", "--port", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve did not start: {log.read_text()}")
            time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


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
def service(site):
    served = Service(site.path, site.dir / "serve.log")
    yield served
    served.stop()


def audit_events(cfg) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(cfg.db_path)
    try:
        return conn.execute("SELECT uid, pwid, src_ip, service, result FROM audit_events ORDER BY id").fetchall()
    finally:
        conn.close()


def test_auth_policy_denies_a_listed_client_with_a_passwd_file_passdb(dovecot, service, site):
    passwd = write_passwd_file(dovecot.basedir / "policy.passwd", {PASSWD_USER: PASSWD_PW}, dovecot.mail_root)
    dovecot.reconfigure(passdb=passwd_file_passdb(passwd), extra_conf=f"""
auth_policy_server_url = {service.url("/policy")}
auth_policy_hash_nonce = test-nonce-not-secret
""")
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


def lua_passdb(url: str) -> tuple[str, dict[str, str]]:
    if not os.path.exists(LUA_MODULE):
        pytest.skip("dovecot-auth-lua missing (apt-get install dovecot-auth-lua)")
    return (f"passdb {{\n  driver = lua\n  args = file={LUA_SCRIPT} blocking=yes\n}}\n",
            {"APPAUTH_VERIFY_URL": url})


def test_lua_passdb_verifies_app_passwords_through_serve(dovecot, service, site):
    _give_to_dovecot(site.db_path.parent)
    created = site.create_password("dave@example.com")
    passdb, env = lua_passdb(service.url("/verify"))
    dovecot.reconfigure(passdb=passdb, extra_conf="", import_environment=env)
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
    passdb, env = lua_passdb(f"http://127.0.0.1:{free_port()}/verify")
    dovecot.reconfigure(passdb=passdb, extra_conf="", import_environment=env)
    result = dovecot.imap_login("dave@example.com", "Any-Pass-Word-1111", client_ip=ALLOWED_IP)
    assert not result.ok and "UNAVAILABLE" in result.text, result.text
