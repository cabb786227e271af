"""The per-login program's fast path (`[fast_path] socket`, fast_path.py): logins handed to
a real `dovecot-appauth serve --unix-socket`, and every way serve can fail to take one:
not running, another config, a token, busy, hung. Through the real Dovecot 2.3 too."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import _give_to_dovecot, run_cli
from tests.e2e.test_imports import FORBIDDEN, _heavy
from tests.support.common import dovecot_ids, wrong_password
from tests.support.dovecot import checkpassword_passdb
from tests.support.hardening import dovecot_env, request_bytes, run_checkpassword
from tests.support.serve import Service, UnixHTTPConnection

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")

DENIED_IP = "203.0.113.66"
ALLOWED_IP = "198.51.100.20"
ANSWERED = re.compile(r"debug: fast path: serve at \S+ answered 'ok'")
FALLBACK = "checking the login of"


def _site_toml(run_dir: Path, extra: str = "") -> str:
    return f"""
[audit.dns]
enabled = false

[audit.lists]
ip_networks = "ip.deny.lst"

[throttle]
max_per_user_ip = 3
delay = 0.4

[fast_path]
socket = "{run_dir / 'serve.sock'}"
timeout = 5
{extra}"""


@pytest.fixture(scope="module")
def site(appauth_config_factory):
    """Config, database and a run directory that user dovecot owns (serve runs as dovecot)."""
    cfg = appauth_config_factory(audit=True, extra_toml=_site_toml(Path("@RUN@")))
    run_dir = cfg.dir / "run"
    run_dir.mkdir()
    _give_to_dovecot(run_dir)
    cfg.path.write_text(cfg.path.read_text().replace("@RUN@", str(run_dir)).replace(
        "[audit]\n", '[audit]\nglobal_networks = ["203.0.113.0/24", "198.51.100.0/24"]\njournal = "no"\n'
                     f'syslog_socket = ""\nlog_file = "{cfg.dir / "audit.log"}"\n', 1))
    (cfg.dir / "ip.deny.lst").write_text("203.0.113.64/26\n")
    os.chmod(cfg.dir / "ip.deny.lst", 0o644)
    log = cfg.dir / "audit.log"
    log.touch()
    uid, gid = dovecot_ids()
    os.chown(log, uid, gid)
    cfg.run_dir = run_dir
    return cfg


@pytest.fixture(scope="module")
def served(site):
    """serve on the config's socket, as user dovecot with the default mode 660 (as the systemd unit runs it)."""
    service = Service(site.path, site.dir / "serve.log", "--workers", "1", unix_socket=site.run_dir / "serve.sock",
                      user="dovecot")
    yield service
    service.stop()


def other_config(site, name: str, fast_path: str) -> Path:
    """A copy of the site's config (same database and lists) with another [fast_path] section."""
    text = site.path.read_text()
    head = text[:text.index("[fast_path]")]
    path = site.dir / name
    path.write_text(head + "[fast_path]\n" + fast_path + "\n")
    os.chmod(path, 0o644)
    return path


def login(config: Path, user: str, password: str, ip: str = ALLOWED_IP, debug: bool = True,
          helper: tuple[str, ...] = (), **kw):
    """One login; with --debug it takes login.main's fast path (which says what serve answered),
    without it fast_path.login_via_serve's, as Dovecot runs it. `helper`: the reply helper's argv."""
    return run_checkpassword(config, request_bytes(user, password), env=dovecot_env(ip),
                             args=(("--debug",) if debug else ()) + helper, **kw)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    """The -IS launcher the README's install writes (python -m dovecot_appauth.entry install)."""
    import subprocess

    from tests.support.hardening import PROGRAM

    python = PROGRAM.parent / "python"
    target = tmp_path_factory.mktemp("bin") / "dovecot-appauth-checkpassword"
    subprocess.run([str(python), "-m", "dovecot_appauth.entry", "install", str(target)], check=True,
                   capture_output=True, timeout=120)
    return target


def failures(site, user: str) -> int:
    conn = sqlite3.connect(site.db_path)
    try:
        return conn.execute("SELECT COUNT(*) FROM auth_failures WHERE uid = ?", (user,)).fetchone()[0]
    finally:
        conn.close()


def log_rows(site, pwid: int) -> list[tuple]:
    conn = sqlite3.connect(site.db_path)
    try:
        return conn.execute("SELECT service, src_ip FROM log WHERE pwid = ?", (pwid,)).fetchall()
    finally:
        conn.close()


def metric(served, name: str, **labels: str) -> float:
    """A counter of serve's /metrics (the Unix socket needs no token), summed over its samples."""
    conn = UnixHTTPConnection(served.unix_socket)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        conn.close()
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and sorted(line[line.index("{") + 1:line.index("}")].split(",")) == want)


@pytest.mark.parametrize("debug", [True, False], ids=["login.main", "login_via_serve"])
def test_a_login_is_decided_by_serve_with_the_same_reply_as_in_process(site, served, debug):
    user = f"alice-{int(debug)}@example.com"
    created = site.create_password(user)
    before = metric(served, "appauth_logins_total", endpoint="verify", result="ok", service="imap")
    fast = login(site.path, user, created["password"], debug=debug)
    assert fast.status == 0, fast.stderr
    assert FALLBACK not in fast.stderr, fast.stderr
    if debug:
        assert ANSWERED.search(fast.stderr), fast.stderr
    else:
        assert fast.stderr == "", fast.stderr  # serve decided it: nothing to say
    assert metric(served, "appauth_logins_total", endpoint="verify", result="ok", service="imap") == before + 1
    # serve recorded the login (its `log` row, the audit line with the client's address)
    assert log_rows(site, created["id"]) == [("imap", ALLOWED_IP)]
    assert f"ip={ALLOWED_IP}" in (site.dir / "audit.log").read_text()
    # the reply Dovecot gets is the one the in-process path gives for the same login
    plain = other_config(site, "no-fast-path.toml", "")
    slow = login(plain, user, created["password"])
    assert slow.status == 0 and "fast path" not in slow.stderr, slow.stderr
    assert fast.reply == slow.reply and fast.reply.startswith(f"user={user}\t".encode())
    # and with Dovecot's reply helper given: what checkpassword-reply would write, both ways
    helper = ("/usr/lib/dovecot/checkpassword-reply",)
    with_helper = [login(config, user, created["password"], debug=debug, helper=helper)
                   for config in (site.path, plain)]
    assert with_helper[0].status == with_helper[1].status == 0, with_helper[0].stderr + with_helper[1].stderr
    assert with_helper[0].reply == with_helper[1].reply and b"\tuserdb_uid=" in with_helper[0].reply
    assert created["password"] not in fast.stderr + (site.dir / "serve.log").read_text()


def test_wrong_password_is_refused_and_counted_once(site, served):
    created = site.create_password("bob@example.com")
    result = login(site.path, "bob@example.com", wrong_password(created["password"]), ip="198.51.100.30")
    assert result.status == 1 and "fast path: serve at" in result.stderr, result.stderr
    assert FALLBACK not in result.stderr
    assert failures(site, "bob@example.com") == 1


def test_audit_denial_is_a_refusal(site, served):
    created = site.create_password("dora@example.com")
    result = login(site.path, "dora@example.com", created["password"], ip=DENIED_IP)
    assert result.status == 1, result.stderr
    assert FALLBACK not in result.stderr
    assert "denied" in (site.dir / "serve.log").read_text()  # serve logs why, as for any login it decides


def test_a_throttled_client_gets_a_temporary_failure_after_the_delay(site, served):
    created = site.create_password("erin@example.com")
    ip = "198.51.100.41"
    for _ in range(3):  # max_per_user_ip = 3
        assert login(site.path, "erin@example.com", wrong_password(created["password"]), ip=ip).status == 1
    held = login(site.path, "erin@example.com", created["password"], ip=ip, debug=False)
    assert held.status == 111, held.stderr
    assert "throttled" in held.stderr and FALLBACK not in held.stderr, held.stderr
    assert held.elapsed >= 0.4  # [throttle] delay, kept by the per-login program (serve never holds)
    assert failures(site, "erin@example.com") == 3  # a throttled attempt is not counted again


@pytest.mark.parametrize("debug", [True, False], ids=["login.main", "login_via_serve"])
def test_no_serve_on_the_socket_falls_back_to_checking_in_process(site, tmp_path, debug):
    user = f"fred-{int(debug)}@example.com"
    created = site.create_password(user)
    config = other_config(site, f"nobody-listens-{int(debug)}.toml", f'socket = "{tmp_path / "absent.sock"}"')
    for _ in range(2):  # the first login of a config fills its cache: the second is the one Dovecot sees
        result = login(config, user, created["password"], debug=debug)
        assert result.status == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if "fast path" in line]
        # said once, whichever path asked serve
        assert said == [f"dovecot-appauth: fast path: serve at {tmp_path / 'absent.sock'} cannot be reached "
                        f"(No such file or directory): {FALLBACK} {user} in-process"], result.stderr
    wrong = login(config, user, wrong_password(created["password"]), debug=debug)
    assert wrong.status == 1 and FALLBACK in wrong.stderr
    assert failures(site, user) == 1


def test_serve_running_another_config_does_not_decide(site, served):
    created = site.create_password("gina@example.com")
    config = other_config(site, "other.toml", f'socket = "{site.run_dir / "serve.sock"}"')
    result = login(config, "gina@example.com", created["password"])
    assert result.status == 0, result.stderr
    assert f"runs another configuration: serve runs {site.path}" in result.stderr and FALLBACK in result.stderr


def test_serve_with_a_token_needs_the_token_file(site):
    token_file = site.run_dir / "serve.token"
    token_file.write_text("fast-path-test-token-0123456789\n")
    os.chmod(token_file, 0o600)
    uid, gid = dovecot_ids()
    os.chown(token_file, uid, gid)
    sock = site.run_dir / "token.sock"
    config = other_config(site, "token.toml", f'socket = "{sock}"\ntoken_file = "{token_file}"')
    config_without = other_config(site, "token-missing.toml", f'socket = "{sock}"')
    service = Service(config, site.dir / "serve-token.log", "--workers", "1", "--token-file", str(token_file),
                      unix_socket=sock, user="dovecot")
    try:
        created = site.create_password("hank@example.com")
        with_token = login(config, "hank@example.com", created["password"])
        assert with_token.status == 0 and ANSWERED.search(with_token.stderr), with_token.stderr
        without = login(config_without, "hank@example.com", created["password"])
        assert without.status == 0, without.stderr
        assert "refused the request (HTTP 401)" in without.stderr and FALLBACK in without.stderr
        missing = other_config(site, "token-unreadable.toml",
                               f'socket = "{sock}"\ntoken_file = "{site.run_dir / "absent.token"}"')
        unread = login(missing, "hank@example.com", created["password"])
        assert unread.status == 0, unread.stderr
        assert f"fast path: [fast_path] token_file {site.run_dir / 'absent.token'}: No such file" in unread.stderr
        assert FALLBACK in unread.stderr
        assert "fast-path-test-token" not in with_token.stderr + without.stderr
    finally:
        service.stop()


class HungServe:
    """A Unix socket that accepts connections and never answers (a serve stuck on a dead resolver)."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        self.held.append(conn)  # never answered, never closed until close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_request_serve_took_but_never_answered_is_a_temporary_failure(site, tmp_path):
    created = site.create_password("ivan@example.com")
    hung = HungServe(tmp_path / "hung.sock")
    try:
        config = other_config(site, "hung.toml", f'socket = "{tmp_path / "hung.sock"}"\ntimeout = 0.5')
        started = time.monotonic()
        result = login(config, "ivan@example.com", created["password"], debug=False)
        took = time.monotonic() - started
    finally:
        hung.close()
    assert result.status == 111, result.stderr
    assert "did not answer within 0.5 s ([fast_path] timeout)" in result.stderr
    assert FALLBACK not in result.stderr and took < 30
    assert log_rows(site, created["id"]) == []  # not checked a second time in-process


def test_lookups_and_the_audit_chain_stay_in_process(site, served):
    created = site.create_password("jill@example.com")
    lookup = run_checkpassword(site.path, request_bytes("jill@example.com", ""),
                               env=dovecot_env(ALLOWED_IP, AUTHORIZED="1"), args=("--debug",))
    assert lookup.status == 2 and "fast path" not in lookup.stderr, lookup.stderr
    assert created["password"]


def test_a_fast_path_login_imports_neither_sqlite_nor_the_hash_nor_the_audit(site, served):
    created = site.create_password("kate@example.com")
    env = {**dovecot_env(ALLOWED_IP), "PYTHONPROFILEIMPORTTIME": "1"}
    for _ in range(2):  # the first fills the config cache
        result = run_checkpassword(site.path, request_bytes("kate@example.com", created["password"]), env=env)
        assert result.status == 0, result.stderr
    modules = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "dovecot_appauth.fast_path" in modules and "_socket" in modules  # the trace covers the fast path
    extra = ["_sqlite3", "dovecot_appauth.store", "dovecot_appauth.hashing", "_crypt", "dovecot_appauth.audit",
             "socket", "selectors", "functools", "collections"]
    assert _heavy(modules, [*FORBIDDEN, *extra]) == {}


def test_through_the_launcher_a_fast_path_login_loads_neither_os_nor_the_config_module(site, served, launcher):
    """As Dovecot runs it (the -IS launcher, no --debug): fast_path.login_via_serve answers
    from the config cache's record, so neither `os` (~1 ms) nor config.py and login.py
    (their classes and the config's parsing) are loaded; the same login with --debug, or
    with a config that has no current cache, is login.main's."""
    import sys

    created = site.create_password("kate-is@example.com")
    before = metric(served, "appauth_logins_total", endpoint="verify", result="ok", service="imap")
    python = launcher.read_text().splitlines()[0].removeprefix("#!").split()[0]
    traced = (python, "-I", "-S", "-X", "importtime", str(launcher))  # what the #! line runs, traced

    def modules_of(run) -> list[str]:
        assert run.status == 0, run.stderr
        return [line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")]

    assert "os" not in sys.builtin_module_names  # so a trace that lacks it means it was not loaded
    for _ in range(2):  # the first may fill the config cache
        modules = modules_of(login(site.path, "kate-is@example.com", created["password"], debug=False,
                                   program=traced))
    assert "dovecot_appauth.fast_path" in modules and "_socket" in modules
    assert _heavy(modules, ["os", "dovecot_appauth.config", "dovecot_appauth.login", "_sqlite3",
                            "dovecot_appauth.store", "dovecot_appauth.hashing", "dovecot_appauth.audit"]) == {}
    # the trace would see them: with --debug the same login is login.main's
    debug = modules_of(login(site.path, "kate-is@example.com", created["password"], debug=True, program=traced))
    assert "os" in debug and "dovecot_appauth.config" in debug and "dovecot_appauth.login" in debug
    assert metric(served, "appauth_logins_total", endpoint="verify", result="ok", service="imap") == before + 3
    assert log_rows(site, created["id"]) == [("imap", ALLOWED_IP)]  # serve decided all three


@pytest.mark.dovecot
def test_imap_logins_through_dovecot_take_the_fast_path(dovecot, site, served):
    created = site.create_password("lena@example.com")
    dovecot.reconfigure(passdb=checkpassword_passdb(site.path))
    before = metric(served, "appauth_logins_total", endpoint="verify", result="ok", service="imap")
    mark = dovecot.log_mark()
    ok = dovecot.imap_login("lena@example.com", created["password"], client_ip=ALLOWED_IP)
    assert ok.ok, ok.text + dovecot.log_since(mark)
    wrong = dovecot.imap_login("lena@example.com", wrong_password(created["password"]), client_ip=ALLOWED_IP)
    assert not wrong.ok and "AUTHENTICATIONFAILED" in wrong.text, wrong.text
    denied = dovecot.imap_login("lena@example.com", created["password"], client_ip=DENIED_IP)
    assert not denied.ok and "AUTHENTICATIONFAILED" in denied.text, denied.text
    log = dovecot.log_since(mark)
    assert FALLBACK not in log and created["password"] not in log, log
    assert metric(served, "appauth_logins_total", endpoint="verify", result="ok", service="imap") == before + 1
    assert log_rows(site, created["id"]) == [("imap", ALLOWED_IP)]


def test_check_config_says_whether_logins_take_the_fast_path(site, served):
    """Checked as the service user: the socket reachable and serving this config, or not."""
    out = run_cli(site.path, "check-config", "--service-user", "dovecot", "--no-dovecot").stdout
    assert "serve answers for this config: logins take the fast path" in out, out
    other = other_config(site, "check-other.toml", f'socket = "{site.run_dir / "serve.sock"}"')
    out = run_cli(other, "check-config", "--service-user", "dovecot", "--no-dovecot").stdout
    assert f"warning: [fast_path] socket {site.run_dir / 'serve.sock'}: as dovecot: serve runs {site.path}, " \
           "not this config" in out, out
    absent = other_config(site, "check-absent.toml", f'socket = "{site.run_dir / "absent.sock"}"')
    out = run_cli(absent, "check-config", "--service-user", "dovecot", "--no-dovecot").stdout
    assert "serve cannot be reached (No such file or directory): every login is checked in-process" in out, out


IMPOSTOR = r"""
import os, socket, sys
path, got = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(8)
srv.settimeout(20)
print("ready", flush=True)
try:
    while True:
        conn, _ = srv.accept()
        conn.settimeout(2)
        data = b""
        try:
            while chunk := conn.recv(4096):
                data += chunk
        except OSError:
            pass
        with open(got, "ab") as f:
            f.write(data)
        body = b'{"result":"ok","user":"nina@example.com","fields":{}}'
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        conn.close()
except OSError:
    pass
"""


def _impostor(directory: Path, user: str | None):
    import subprocess
    import sys

    sock, got = directory / "serve.sock", directory / "received"
    proc = subprocess.Popen([sys.executable, "-c", IMPOSTOR, str(sock), str(got)], stdout=subprocess.PIPE,
                            user=user, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, sock, got


def test_a_socket_of_another_user_gets_no_password(site, tmp_path):
    """Someone else's process on the socket (another user's, or in a directory others can
    write, where anyone could have put it first) is not trusted: the password is never sent
    and the login is checked in-process."""
    import pwd

    created = site.create_password("nina@example.com")
    nobody = pwd.getpwnam("nobody")
    directory = site.dir / "impostor"
    directory.mkdir()
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    proc, sock, got = _impostor(directory, "nobody")
    try:
        config = other_config(site, "impostor.toml", f'socket = "{sock}"')
        result = run_checkpassword(config, request_bytes("nina@example.com", created["password"]),
                                   env=dovecot_env(ALLOWED_IP), user="dovecot")
    finally:
        proc.kill()
        proc.wait()
    assert result.status == 0, result.stderr
    assert f"fast path: serve at {sock} is not trusted: it runs as uid {nobody.pw_uid}, neither root nor " \
           "this program's uid" in result.stderr and FALLBACK in result.stderr, result.stderr
    assert not got.exists() or got.read_bytes() == b""  # nothing was sent to it

    # a directory every user may write (as /tmp): even root's own process there is not
    # trusted, someone could have made the socket first
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    proc, sock, got = _impostor(shared, None)
    try:
        config = other_config(site, "shared.toml", f'socket = "{sock}"')
        result = login(config, "nina@example.com", created["password"])
    finally:
        proc.kill()
        proc.wait()
    assert result.status == 0, result.stderr
    assert f"is not trusted: its directory {shared} is writable by others (mode 1777)" in result.stderr
    assert not got.exists() or got.read_bytes() == b""
    assert created["password"] not in result.stderr


class FakeServe(HungServe):
    """A Unix socket (root's, in a 0700 directory: trusted) that answers every request with
    `body` (HTTP 200): a serve of another version, or a broken one."""

    def __init__(self, path: Path, body: bytes):
        self.body = body
        super().__init__(path)

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096) or b"\r\n\r\n"
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length and (chunk := conn.recv(4096)):
                    rest += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(self.body), self.body))
            except OSError:
                pass


def _serve_answers(tmp_path: Path, site, name: str, answer: dict) -> tuple[FakeServe, Path]:
    import json

    directory = tmp_path / name
    directory.mkdir(mode=0o700)
    fake = FakeServe(directory / "serve.sock", json.dumps(answer).encode())  # ASCII: a surrogate as \udc80
    return fake, other_config(site, f"{name}.toml", f'socket = "{directory / "serve.sock"}"')


@pytest.mark.parametrize(("user", "fields", "said"), [
    ("kim@example.com", {"userdb_a=b": "1"}, "answered field #1 with a name Dovecot's reply cannot carry"),
    ("kim@example.com", {"userdb_home": "/h", "": "1"}, "answered field #2 with a name Dovecot's reply cannot carry"),
    ("kim@example.com", {"userdb_x y": "1"}, "answered field #1 with a name Dovecot's reply cannot carry"),
    ("kim@example.com", {"userdb_\udc80": "1"}, "answered field #1 with a name Dovecot's reply cannot carry"),
    ("kim@example.com", {"userdb_home": "/h\ud800"}, "answered field 'userdb_home' that is not UTF-8"),
    ("kim\udc80@example.com", {}, "answered ok for a user name with a control character or that is not UTF-8"),
    ("kim\n@example.com", {}, "answered ok for a user name with a control character or that is not UTF-8"),
    ("kim\0@example.com", {}, "answered ok for a user name with a control character or that is not UTF-8"),
], ids=["equals-in-name", "empty-name", "space-in-name", "surrogate-in-name", "surrogate-in-value",
        "surrogate-in-user", "newline-in-user", "nul-in-user"])
@pytest.mark.parametrize("debug", [True, False], ids=["login.main", "login_via_serve"])
def test_an_ok_answer_dovecot_cannot_be_given_is_a_temporary_failure(site, tmp_path, user, fields, said, debug):
    """An answer whose user or field names the in-process login would never give: refused
    before anything reaches fd 4, one line, 111 (it was a traceback and exit 1, "wrong
    password", in login_via_serve)."""
    fake, config = _serve_answers(tmp_path, site, "odd", {"result": "ok", "user": user, "fields": fields})
    try:
        for _ in range(2):  # the first login of a config fills its cache: the second is the one Dovecot sees
            result = login(config, "kim@example.com", "Kim-0000-pass", debug=debug)
            assert result.status == 111, result.stderr
            lines = [line for line in result.stderr.splitlines() if "debug:" not in line]
            assert len(lines) == 1 and lines[0].endswith(": temporary failure"), result.stderr
            assert lines[0].startswith(f"dovecot-appauth: fast path: serve at {tmp_path / 'odd' / 'serve.sock'} "
                                       f"{said}"), result.stderr
            assert result.reply == b"" and "Traceback" not in result.stderr and "Kim-0000-pass" not in result.stderr
    finally:
        fake.close()


@pytest.mark.parametrize("debug", [True, False], ids=["login.main", "login_via_serve"])
def test_a_reply_that_cannot_be_written_after_serve_said_ok_is_a_temporary_failure(site, tmp_path, debug):
    """fd 4 not open and a reply helper given: the helper is run with the fields in its
    environment, where a NUL cannot go (execve raises ValueError): 111 and one line."""
    from tests.support.hardening import PROGRAM

    fake, config = _serve_answers(tmp_path, site, "nul", {"result": "ok", "user": "lea@example.com",
                                                          "fields": {"userdb_home": "/srv/a\0b"}})
    try:
        for _ in range(2):
            result = run_checkpassword(config, request_bytes("lea@example.com", "Lea-0000-pass"),
                                       env=dovecot_env(ALLOWED_IP),
                                       args=("--debug",) * debug + ("/usr/lib/dovecot/checkpassword-reply",),
                                       program=("/bin/bash", "-c", 'exec "$@" 4>&-', "bash", str(PROGRAM)))
            assert result.status == 111, result.stderr
            lines = [line for line in result.stderr.splitlines() if "debug:" not in line]
            assert len(lines) == 1 and lines[0].endswith("(ValueError): temporary failure"), result.stderr
            assert "Traceback" not in result.stderr and "Lea-0000-pass" not in result.stderr
    finally:
        fake.close()


@pytest.mark.parametrize("debug", [True, False], ids=["login.main", "login_via_serve"])
def test_a_fast_path_login_started_without_stdout_or_stderr_answers_as_always(site, tmp_path, debug):
    """sys.stderr is None with fd 2 closed: the line of serve's tempfail was an
    AttributeError, a traceback nobody saw and exit 1 ("wrong password")."""
    from tests.support.hardening import PROGRAM

    def run(config: Path, closing: str):
        return run_checkpassword(config, request_bytes("mia@example.com", "Mia-0000-pass"),
                                 env=dovecot_env(ALLOWED_IP), args=("--debug",) * debug,
                                 program=("/bin/bash", "-c", f'exec "$@" {closing}', "bash", str(PROGRAM)))

    held, config = _serve_answers(tmp_path, site, "held", {"result": "tempfail"})
    try:
        for _ in range(2):  # the first login of a config fills its cache: the second is the one Dovecot sees
            for closing in ("2>&-", "1>&- 2>&-"):
                assert run(config, closing).status == 111
    finally:
        held.close()
    taken, config = _serve_answers(tmp_path, site, "taken", {"result": "ok", "user": "mia@example.com",
                                                             "fields": {"userdb_home": "/srv/mia"}})
    try:
        for _ in range(2):
            for closing in ("1>&-", "2>&-", "1>&- 2>&-"):
                result = run(config, closing)
                assert result.status == 0 and result.reply == b"user=mia@example.com\tuserdb_home=/srv/mia\t", \
                    result.stderr
    finally:
        taken.close()
