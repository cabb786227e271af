"""`serve`: the auth-policy and verify endpoints, through a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from dovecot_appauth import hashing  # noqa: E402
from dovecot_appauth.audit.enrich import keep_cache_open  # noqa: E402
from dovecot_appauth.audit.lists import keep_warm  # noqa: E402
from dovecot_appauth.cli import schema  # noqa: E402
from dovecot_appauth.core import WouldWait, must_not_wait  # noqa: E402
from dovecot_appauth.serve.server import Engine, build_app  # noqa: E402
from tests.support.common import wrong_password  # noqa: E402

PASSWORD = "Serv-eTes-tPas-sw0r"
DENIED_IP = "203.0.113.9"
ALLOWED_IP = "198.51.100.7"


def _site(tmp_path):
    db = tmp_path / "db.sqlite"
    engine = schema.make_engine(f"sqlite:///{db}")
    schema.init_db(engine)
    schema.create_password(engine, "alice@example.com", hashing.hash_password(PASSWORD))
    engine.dispose()
    (tmp_path / "ip.deny.lst").write_text("203.0.113.0/24\n")
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\ndsn = "sqlite:///{db}"\n\n[userdb]\nuid = "5000"\nhome = "/srv/%u"\n\n'
        f'[audit]\nenabled = true\nglobal_networks = ["203.0.113.0/24", "198.51.100.0/24"]\n'
        f'syslog_socket = ""\njournal = "no"\nlog_file = "{tmp_path / "audit.log"}"\n\n'
        f'[audit.dns]\nenabled = false\n\n[audit.cache]\npath = "{tmp_path / "cache"}"\n\n'
        f'[audit.lists]\nip_networks = "ip.deny.lst"\n'
    )
    return path, db


TOKEN = "test-token-not-secret"


class Served:
    """`app` on uvicorn in a thread; ``post`` sends `token` (the site's) unless told otherwise."""

    def __init__(self, app, token: str | None = None):
        self.token = token
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(100):
            if self.server.started:
                break
            time.sleep(0.05)

    def post(self, path: str, body, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self):
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def site(tmp_path):
    path, db = _site(tmp_path)
    log = io.StringIO()
    engine = Engine(str(path), stderr=log)
    served = Served(build_app(engine, TOKEN), TOKEN)
    served.engine = engine
    served.log = log
    served.db = db
    served.dir = tmp_path
    yield served
    served.close()
    keep_warm(False)  # the Engine turned these on for this process
    keep_cache_open(False)


def test_verify_right_wrong_and_denied(site):
    status, body = site.post("/verify", {"user": "Alice@example.com", "password": PASSWORD, "service": "imap",
                                         "remote_ip": ALLOWED_IP})
    assert status == 200 and body["result"] == "ok" and body["user"] == "alice@example.com"
    assert body["fields"]["userdb_uid"] == "5000"
    assert site.post("/verify", {"user": "alice@example.com", "password": "nope", "remote_ip": ALLOWED_IP})[1] == \
        {"result": "fail"}
    status, body = site.post("/verify", {"user": "alice@example.com", "password": PASSWORD, "remote_ip": DENIED_IP})
    assert body == {"result": "fail"}
    assert "denied by audit" in site.log.getvalue()
    import sqlite3

    rows = sqlite3.connect(site.db).execute("SELECT service, src_ip FROM log").fetchall()
    assert rows == [("imap", ALLOWED_IP)]
    assert "result=deny" in (site.dir / "audit.log").read_text()


def test_verify_from_the_fast_path_names_its_config_and_the_ports(site, tmp_path):
    """The per-login fast path sends its config file: another one is answered 409 (the
    caller checks the login itself); the same one, by any name, is decided."""
    body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP, "remote_port": 50123,
            "local_port": 993}
    other = tmp_path / "other.toml"
    other.write_text("")
    status, answer = site.post("/verify", {**body, "config": str(other)})
    assert status == 409 and answer["reason"] == f"serve runs {site.engine.path}"
    assert site.post("/verify", {**body, "config": 5})[0] == 409
    link = tmp_path / "link.toml"
    link.symlink_to(site.engine.path)
    status, answer = site.post("/verify", {**body, "config": str(link)})
    assert status == 200 and answer["result"] == "ok"
    rows = sqlite3.connect(site.db).execute("SELECT service, src_ip FROM log").fetchall()
    assert rows == [("imap", ALLOWED_IP)]  # one login: the refused request was not decided


def test_health_names_the_config_only_to_an_authenticated_caller(site):
    def health(token: str | None) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{site.port}/health", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    assert "config" not in health(None) and health(None)["ok"] is True
    assert health(TOKEN)["config"] == site.engine.real_path  # what check-config compares


def test_ports_are_taken_only_when_they_are_ports():
    from dovecot_appauth.serve.server import _port

    assert [_port(v) for v in (1, 65535, 0, 65536, -1, "143", 143.0, True, None)] == \
        [1, 65535, None, None, None, None, None, None, None]


def test_client_addresses_are_read_the_same_when_kept():
    """`_ip` keeps the addresses it read (a /verify reads its client's three times): the
    second reading of each value is the first's, and a JSON value that is not a string
    (a list, a dict: not hashable, so never kept) is no address, not an internal error."""
    from dovecot_appauth.serve.server import _ip

    values = ["198.51.100.7", "2001:DB8:0::1", "::ffff:198.51.100.7", "198.51.100.7:143", "1.2.3.4/24",
              "", " 198.51.100.7", None, 5, ["198.51.100.7"], {"ip": "198.51.100.7"}]
    first = [_ip(v) for v in values]
    assert first == ["198.51.100.7", "2001:db8::1", "::ffff:c633:6407", None, None, None, None, None, None,
                     None, None]
    assert [_ip(v) for v in values] == first


def test_verify_bad_requests(site):
    assert site.post("/verify", b"not json")[0] == 400
    assert site.post("/verify", {"user": 1, "password": None})[1]["result"] == "fail"


def test_nested_json_and_an_unusable_config_name_are_refused_cleanly(site, capfd):
    """JSON nested past Python's recursion limit is a bad request like any other bad JSON,
    and a config name with a NUL (which os.path.realpath refuses) is another config: clean
    answers, nothing decided, no traceback (uvicorn's is on the process's stderr)."""
    for deep in (b"[" * 60000, b'{"user":' * 8000, b"[" * 30000 + b"]" * 30000):  # under MAX_BODY
        assert site.post("/verify", deep) == (400, {"result": "fail", "reason": "bad request"})
        assert site.post("/policy?command=allow", deep) == (400, {"status": 0, "msg": "bad request"})
    body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
    for name in ("\0", site.engine.path + "\0", "/etc/\0/config.toml", "\udcff" * 5000):
        status, answer = site.post("/verify", {**body, "config": name})
        assert status == 409 and answer["result"] == "tempfail", name[:20]
    assert sqlite3.connect(site.db).execute("SELECT count(*) FROM log").fetchone() == (0,)
    assert site.post("/verify", {**body, "config": site.engine.path})[1]["result"] == "ok"
    assert "Traceback" not in capfd.readouterr().err + site.log.getvalue()


def test_an_error_outside_the_engine_is_a_tempfail_without_traceback(site, capfd):
    def broken(body):
        raise KeyError("a bug")

    site.engine.throttled_answer = broken  # on the event loop, before the engine runs
    body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
    assert site.post("/verify", body) == (200, {"result": "tempfail"})
    site.engine.same_config = broken
    assert site.post("/verify", {**body, "config": "x"}) == (200, {"result": "tempfail"})
    assert site.log.getvalue().count("internal error in verify: KeyError") == 2
    assert "Traceback" not in capfd.readouterr().err + site.log.getvalue()


def test_a_client_address_that_is_not_an_address_is_refused_not_taken_for_a_local_one(site):
    # the right password from a denied network, with a port stuck to the address: read as
    # "no client", it passed for a local process that no list or limit judges
    for bad in (f"{DENIED_IP}:4711", "not-an-address", 203):
        status, body = site.post("/verify", {"user": "alice@example.com", "password": PASSWORD, "remote_ip": bad})
        assert (status, body["result"]) == (200, "fail")
        req = {"login": "alice@example.com", "remote": bad, "protocol": "imap"}
        assert site.post("/policy?command=allow", req) == (200, {"status": -1, "msg": "Authentication failed"})
    assert "client address '203.0.113.9:4711' is not an IP address" in site.log.getvalue()
    # no address at all is still a local caller's request (as without TCPREMOTEIP)
    assert site.post("/verify", {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ""})[1][
        "result"] == "ok"


def test_verify_password_that_is_not_utf8_is_a_wrong_password(site):
    # Dovecot's Lua passes the client's bytes on; JSON text with such bytes is not a bad request
    body = b'{"user": "alice@example.com", "password": "\xff\xfeabc", "remote_ip": "198.51.100.7"}'
    assert site.post("/verify", body) == (200, {"result": "fail"})
    body = b'{"user": "al\xffice@example.com", "password": "x", "remote_ip": "198.51.100.7"}'
    assert site.post("/verify", body) == (200, {"result": "fail"})
    assert "Traceback" not in site.log.getvalue()


def test_requests_share_one_database_connection(site):
    for ip in ("198.51.100.7", "198.51.100.8", "198.51.100.9"):
        assert site.post("/verify", {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ip})[1][
            "result"] == "ok"
    assert site.post("/verify", {"user": "alice@example.com", "password": "nope"})[1] == {"result": "fail"}
    report = {"login": "alice@example.com", "remote": ALLOWED_IP, "protocol": "imap", "success": True}
    assert site.post("/?command=report", report)[0] == 200
    # nothing to look up and no lock held elsewhere: every request ran on the event loop,
    # with the loop's one store; none needed an engine thread's
    assert (site.engine.loop_pool.opened, site.engine.pool.opened) == (1, 0)


def test_threads_only_runs_every_request_on_an_engine_thread(site):
    site.engine.threads_only = True  # serve --threads-only
    for ip in ("198.51.100.7", "198.51.100.8"):
        assert site.post("/verify", {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ip})[1][
            "result"] == "ok"
    report = {"login": "alice@example.com", "remote": ALLOWED_IP, "protocol": "imap", "success": True}
    assert site.post("/?command=report", report)[0] == 200
    assert (site.engine.loop_pool.opened, site.engine.pool.opened) == (0, 1)


def test_verify_database_down_is_tempfail(site):
    # a pooled connection to a database that has since gone is not used
    assert site.post("/verify", {"user": "alice@example.com", "password": PASSWORD})[1]["result"] == "ok"
    site.db.unlink()
    site.db.parent.chmod(0o500)
    try:
        assert site.post("/verify", {"user": "alice@example.com", "password": PASSWORD})[1] == {"result": "tempfail"}
    finally:
        site.db.parent.chmod(0o700)


def test_lists_stay_parsed_between_requests_and_are_read_again_when_changed(site, monkeypatch, file_clock):
    from dovecot_appauth.audit import lists as lists_module

    read: list[str] = []  # file reads: its on-disk parsed form, or its text parsed

    def counting(real):
        def wrapper(*args, **kwargs):
            read.append(real.__name__)
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(lists_module, "_read_cache", counting(lists_module._read_cache))
    monkeypatch.setattr(lists_module, "parse_list", counting(lists_module.parse_list))
    monkeypatch.setattr(lists_module, "RACY_NS", 0)  # the list was written just now
    stats: list[str] = []  # every file the process stat'ed
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    req = {"login": "alice@example.com", "remote": DENIED_IP, "protocol": "imap"}
    assert site.post("/policy?command=allow", req)[1]["status"] == -1
    assert read == ["_read_cache", "parse_list"]  # no parsed form on disk yet: parsed
    looked_at = len(stats)
    for _ in range(3):
        assert site.post("/policy?command=allow", req)[1]["status"] == -1
    assert len(read) == 2  # kept in memory: no read
    assert len(stats) == looked_at  # and within the file check interval not even a stat
    (site.dir / "ip.deny.lst").write_text("192.0.2.0/24\n")
    # within the file check interval the file is not looked at again (no stat, no read)
    assert site.post("/policy?command=allow", req)[1]["status"] == -1
    assert len(read) == 2
    file_clock.advance()  # the interval is over: the change applies on the next request
    assert site.post("/policy?command=allow", req)[1]["status"] == 0
    assert read[2:] == ["_read_cache", "parse_list"]


def test_list_reloads_count_what_the_lists_read_again(site, monkeypatch, file_clock):
    """The list watch of the metrics judges a change as the lists do: a chmod (a new ctime)
    makes the lists read the file again, and is counted as one reload; nothing is counted
    while the file check interval lasts or when nothing changed."""
    from dovecot_appauth.audit import lists as lists_module

    monkeypatch.setattr(lists_module, "RACY_NS", 0)  # the list was written just now
    read: list[str] = []  # the list file read (its parsed form on disk, or its text)
    real = lists_module.read_file
    monkeypatch.setattr(lists_module, "read_file", lambda *a, **k: read.append(a[0]) or real(*a, **k))

    def reloads() -> float:
        return site.engine.metrics.list_reloads.labels("ip_networks")._value.get()

    req = {"login": "alice@example.com", "remote": DENIED_IP, "protocol": "imap"}
    assert site.post("/policy?command=allow", req)[1]["status"] == -1
    file_clock.advance()
    assert site.post("/policy?command=allow", req)[1]["status"] == -1
    assert reloads() == 0 and len(read) == 1
    list_file = site.dir / "ip.deny.lst"
    mode = list_file.stat().st_mode & 0o777
    list_file.chmod(mode ^ 0o004)  # the same size, mtime and inode; a new ctime
    assert site.post("/policy?command=allow", req)[1]["status"] == -1
    assert reloads() == 0  # within the interval: not looked at yet
    file_clock.advance()
    assert site.post("/policy?command=allow", req)[1]["status"] == -1
    assert reloads() == 1 and len(read) == 2  # read again, and counted once
    file_clock.advance()
    assert site.post("/policy?command=allow", req)[1]["status"] == -1
    assert reloads() == 1 and len(read) == 2


def test_policy_allow_rejects_denied_addresses(site):
    req = {"login": "alice@example.com", "remote": DENIED_IP, "protocol": "imap", "pwhash": "ab", "session_id": "x"}
    assert site.post("/policy?command=allow", req) == (200, {"status": -1, "msg": "Authentication failed"})
    req["remote"] = ALLOWED_IP
    assert site.post("/?command=allow", req) == (200, {"status": 0, "msg": ""})
    # no audit line for a check; one for a successful report
    assert not (site.dir / "audit.log").exists()
    report = {**req, "success": True, "policy_reject": False, "tls": False}
    assert site.post("/?command=report", report) == (200, {"status": 0, "msg": ""})
    assert "user=<alice@example.com>, service=imap, ip=198.51.100.7" in (site.dir / "audit.log").read_text()
    # and the audit event is committed (the store is closed after the report)
    conn = sqlite3.connect(site.db)
    try:
        events = conn.execute("SELECT uid, pwid, src_ip, service FROM audit_events").fetchall()
    finally:
        conn.close()
    assert events == [("alice@example.com", None, ALLOWED_IP, "imap")]
    assert site.post("/?command=bogus", req)[0] == 400


def test_token_is_required_when_configured(tmp_path):
    path, _ = _site(tmp_path)
    served = Served(build_app(Engine(str(path), stderr=io.StringIO()), token="s3cret"))
    try:
        req = {"login": "alice@example.com", "remote": ALLOWED_IP, "protocol": "imap"}
        assert served.post("/policy?command=allow", req)[0] == 401
        basic = base64.b64encode(b"dovecot:s3cret").decode()
        assert served.post("/policy?command=allow", req, {"Authorization": f"Basic {basic}"})[0] == 200
        assert served.post("/policy?command=allow", req, {"Authorization": "Bearer s3cret"})[0] == 200
        assert served.post("/policy?command=allow", req, {"Authorization": "Bearer wrong"})[0] == 401
    finally:
        served.close()


def test_engine_reloads_the_config_on_change(tmp_path, file_clock):
    path, _ = _site(tmp_path)
    engine = Engine(str(path), stderr=io.StringIO())
    assert engine.config().audit.enabled
    path.write_text(path.read_text().replace("enabled = true", "enabled = false", 1) + "\n")
    assert engine.config().audit.enabled  # not looked at again within the file check interval
    file_clock.advance()
    assert not engine.config().audit.enabled
    good = path.read_text()
    path.write_text("[database\n")
    file_clock.advance()
    assert not engine.config().audit.enabled  # a broken edit keeps the previous config
    assert "not reloaded" in engine.reload_failed  # said by every request (the next test)
    path.write_text(good)
    file_clock.advance()
    assert not engine.config().audit.enabled and engine.reload_failed is None


def test_a_failed_reload_is_said_with_every_request_on_the_previous_config(site, file_clock):
    path = site.dir / "config.toml"
    good = path.read_text()
    verify = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
    assert site.post("/verify", verify)[1]["result"] == "ok"
    path.write_text(good.replace("[database]", "[database", 1))
    file_clock.advance()
    assert site.post("/verify", verify)[1]["result"] == "ok"  # the previous config answers
    assert site.post("/verify", {**verify, "password": "nope"})[1] == {"result": "fail"}
    assert site.post("/policy?command=allow", {"login": "alice@example.com", "remote": DENIED_IP,
                                               "protocol": "imap"})[1]["status"] == -1
    said = [line for line in site.log.getvalue().splitlines() if "not reloaded" in line]
    assert len(said) == 3, site.log.getvalue()  # one line with each request, not once
    assert all(line.startswith(f"dovecot-appauth serve: configuration {path} not reloaded (keeping the "
                               "previous one): ") for line in said)
    path.write_text(good)
    file_clock.advance()
    assert site.post("/verify", verify)[1]["result"] == "ok"
    assert site.log.getvalue().count("not reloaded") == 3  # mended: said no more


def test_a_worker_started_after_the_config_broke_fails_closed_and_says_why(tmp_path):
    path, _ = _site(tmp_path)
    path.write_text(path.read_text().replace("[database]", "[database", 1))
    log = io.StringIO()
    served = Served(build_app(Engine(str(path), stderr=log), TOKEN), TOKEN)
    try:
        verify = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
        assert [served.post("/verify", verify) for _ in range(2)] == [(200, {"result": "tempfail"})] * 2
        policy = {"login": "alice@example.com", "remote": ALLOWED_IP, "protocol": "imap"}
        assert served.post("/policy?command=allow", policy)[0] == 503
    finally:
        served.close()
        keep_warm(False)
        keep_cache_open(False)
    said = [line for line in log.getvalue().splitlines() if line.startswith(f"dovecot-appauth serve: configuration "
                                                                              f"{path}: ")]
    assert len(said) == 3, log.getvalue()


def test_a_config_renamed_into_place_with_the_same_size_and_mtime_is_loaded(tmp_path, file_clock):
    """The stat a change is seen by includes the inode (and ctime): a config replaced by a
    rename with the same size and mtime (rsync -t, a deployment tool) is loaded."""
    path, _ = _site(tmp_path)
    engine = Engine(str(path), stderr=io.StringIO())
    assert engine.config().audit.enabled
    text = path.read_text()
    assert engine.config().userdb.uid == "5000"
    new = text.replace('uid = "5000"', 'uid = "6000"', 1)
    assert len(new) == len(text)
    before = os.stat(path)
    temp = tmp_path / "config.toml.new"
    temp.write_text(new)
    os.utime(temp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.rename(temp, path)
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    file_clock.advance()
    assert engine.config().userdb.uid == "6000"


# --- serve's Unix socket and token file ---------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_unix_listener_has_its_mode_from_the_start(tmp_path, umask):
    import os
    import stat

    from dovecot_appauth.serve.server import unix_listener

    path = str(tmp_path / "s.sock")
    old = os.umask(umask)
    try:
        sock = unix_listener(path, 0o660)
    finally:
        os.umask(old)
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o660
        # a second service on the same path is refused while this one listens
        with pytest.raises(OSError, match="another service"):
            unix_listener(path, 0o660)
    finally:
        sock.close()
    # closed without removing the file (as uvicorn does when stopped by a signal): replaced
    again = unix_listener(path, 0o600)
    again.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_unix_listener_never_replaces_a_file(tmp_path):
    from dovecot_appauth.serve.server import unix_listener

    path = tmp_path / "config.toml"
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        unix_listener(str(path), 0o660)
    assert path.read_text() == "not a socket"


def test_serve_refuses_an_empty_token_file(tmp_path):
    from tests.conftest import run_cli

    path, _ = _site(tmp_path)
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = run_cli(path, "serve", "--port", "1", "--token-file", str(empty), check=False)
    assert result.returncode != 0 and "is empty" in result.stderr
    result = run_cli(path, "serve", "--unix-socket", str(tmp_path / "s"), "--socket-mode", "999", check=False)
    assert result.returncode != 0 and "octal mode" in result.stderr


# --- throttled clients: answered at once, then from memory --------------------------------------


def _throttled_site(tmp_path, delay: float):
    path, _ = _site(tmp_path)
    path.write_text(path.read_text() + f"\n[throttle]\nmax_per_user_ip = 2\ndelay = {delay}\n")
    engine = Engine(str(path), stderr=io.StringIO())
    for _ in range(2):
        assert engine.verify({"user": "alice@example.com", "password": "nope", "remote_ip": ALLOWED_IP}) == \
            {"result": "fail"}
    return path, engine


def test_decide_holds_a_throttled_client_only_when_asked(tmp_path):
    from dovecot_appauth.config import load
    from dovecot_appauth.core import LoginRequest, Mode, TempFail
    from dovecot_appauth.login import decide

    # held: the per-login program keeps its delay (it slows the client; Dovecot waits for it);
    # not held (serve): a 30 s delay that is not waited for, so any bound far below it will do
    for hold, delay in ((True, 0.5), (False, 30)):
        site_dir = tmp_path / f"hold-{hold}"
        site_dir.mkdir()
        path, _ = _throttled_site(site_dir, delay=delay)
        request = LoginRequest("alice@example.com", PASSWORD, Mode.VERIFY, "imap", remote_ip=ALLOWED_IP)
        config = load(str(path))
        started = time.monotonic()
        with pytest.raises(TempFail, match="throttled"):
            decide(request, config, now=time.time(), stderr=io.StringIO(), hold_throttled=hold)
        elapsed = time.monotonic() - started
        assert elapsed >= 0.5 if hold else elapsed < 10, (hold, elapsed)


def test_serve_answers_a_throttled_client_at_once_and_then_from_memory(tmp_path, monkeypatch):
    from dovecot_appauth.serve import server

    _, engine = _throttled_site(tmp_path, delay=30)
    body = {"user": "Alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
    started = time.monotonic()
    assert engine.verify(body) == {"result": "tempfail", "throttled": True}  # the fast path then keeps the delay
    assert time.monotonic() - started < 10  # not the 30 s [throttle] delay
    assert "throttled" in engine.stderr.getvalue()
    # the same user (any case) from the same client: the same answer without the engine
    assert engine.throttled_answer({**body, "user": "alice@EXAMPLE.com"}) == {"result": "tempfail", "throttled": True}
    assert engine.throttled_answer({**body, "remote_ip": "198.51.100.8"}) is None
    monkeypatch.setattr(server, "THROTTLE_MEMO_SECONDS", -1.0)  # remembered answers expire
    assert engine.verify(body) == {"result": "tempfail", "throttled": True}
    assert engine.throttled_answer(body) is None


def test_an_unreadable_allow_list_skipped_by_the_limiter_is_said_in_the_service_log(tmp_path, capfd, file_clock):
    # the limiter's exemption check reads the allow list itself; its "going on without it"
    # line went to the process's stderr, past the service's log (and its prefix)
    path, engine = _throttled_site(tmp_path, delay=0)
    text = path.read_text().replace("[audit]\n", '[audit]\nunreadable_list = "skip"\n', 1)
    path.write_text(text + '\n[audit.allow]\nip_networks = "missing.allow.lst"\n')
    file_clock.advance()
    assert engine.verify({"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}) == \
        {"result": "tempfail", "throttled": True}  # the list that could exempt the client is not there
    assert "allow list ip_networks" in engine.stderr.getvalue()
    assert "serve: allow list ip_networks" in engine.stderr.getvalue()
    assert "allow list" not in capfd.readouterr().err


def test_untrusted_callers_name_no_client_and_report_nothing(tmp_path):
    path, db = _site(tmp_path)
    served = Served(build_app(Engine(str(path), stderr=io.StringIO())))  # no token, not trusted
    try:
        # the listed address the caller names is not used: its own (127.0.0.1) is
        assert served.post("/verify", {"user": "alice@example.com", "password": PASSWORD,
                                       "remote_ip": DENIED_IP})[1]["result"] == "ok"
        req = {"login": "alice@example.com", "remote": DENIED_IP, "protocol": "imap"}
        assert served.post("/policy?command=allow", req) == (200, {"status": 0, "msg": ""})
        assert served.post("/?command=report", {**req, "remote": ALLOWED_IP, "success": True})[0] == 200
    finally:
        served.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT src_ip FROM log").fetchall() == [("127.0.0.1",)]
        assert conn.execute("SELECT count(*) FROM audit_events WHERE pwid IS NULL").fetchone() == (0,)
    finally:
        conn.close()


def test_body_over_the_limit_is_413(site):
    assert site.post("/verify", b"{" + b" " * (70 * 1024) + b"}")[0] == 413
    assert site.post("/policy?command=allow", b"{" + b" " * (70 * 1024) + b"}")[0] == 413


def test_more_requests_than_max_requests_are_answered_503_at_once(tmp_path):
    path, _ = _site(tmp_path)
    engine = Engine(str(path), stderr=io.StringIO())
    release = threading.Event()
    real_verify = engine.verify

    def held(body):  # needs to wait (as for a dead resolver): on a thread, its one place
        if must_not_wait():
            raise WouldWait("held")
        return release.wait(30) and real_verify(body)

    engine.verify = held
    served = Served(build_app(engine, TOKEN, max_requests=1), TOKEN)
    try:
        body = {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}
        held = threading.Thread(target=lambda: served.post("/verify", body))
        held.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert served.post("/verify", body) == (503, {"result": "tempfail", "reason": "busy"})
        assert time.monotonic() - started < 5
        release.set()
        held.join(10)
        assert served.post("/verify", body)[1]["result"] == "ok"
    finally:
        release.set()
        served.close()


def test_one_clients_flood_waits_for_its_answer_instead_of_filling_max_requests(tmp_path):
    """Requests of a (user, client) already in the engine wait for that answer without a
    place among max_requests: a flood of one client cannot leave an innocent login "busy"
    before the first throttled answer is known (it did: the flood took every place)."""
    path, db = _site(tmp_path)
    engine_db = schema.make_engine(f"sqlite:///{db}")
    try:
        schema.create_password(engine_db, "bob@example.com", hashing.hash_password(PASSWORD))
    finally:
        engine_db.dispose()
    engine = Engine(str(path), stderr=io.StringIO())
    release = threading.Event()
    real_verify = engine.verify

    def held_for_mallory(body):
        if body["user"] == "mallory@example.com":
            if must_not_wait():
                raise WouldWait("held")  # to a thread, where it waits
            release.wait(30)
        return real_verify(body)

    engine.verify = held_for_mallory
    served = Served(build_app(engine, TOKEN, max_requests=2), TOKEN)
    flood_answers: list = []
    try:
        guess = {"user": "mallory@example.com", "password": wrong_password(PASSWORD), "remote_ip": ALLOWED_IP}
        flood = [threading.Thread(target=lambda: flood_answers.append(served.post("/verify", guess)))
                 for _ in range(8)]
        for thread in flood:
            thread.start()
        time.sleep(0.3)  # the first of them is in the engine, the others wait for its answer
        innocent = {"user": "bob@example.com", "password": PASSWORD, "remote_ip": "198.51.100.8"}
        assert served.post("/verify", innocent) == (200, {"result": "ok", "user": "bob@example.com",
                                                          "fields": {"userdb_uid": "5000",
                                                                     "userdb_home": "/srv/bob@example.com"}})
        release.set()
        for thread in flood:
            thread.join(20)
        assert len(flood_answers) == 8 and all(answer[1]["result"] in ("fail", "tempfail") for answer in flood_answers)
    finally:
        release.set()
        served.close()


def test_an_internal_error_is_a_tempfail_without_traceback(site):
    def broken(body):
        raise KeyError("a bug")

    site.engine.verify = broken
    assert site.post("/verify", {"user": "alice@example.com", "password": PASSWORD}) == (200, {"result": "tempfail"})
    assert "internal error in verify: KeyError" in site.log.getvalue()
    assert "Traceback" not in site.log.getvalue()


def _raw(served: Served, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body bytes): the exact HTTP answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_hot_endpoints_answer_byte_for_byte_as_starlettes_json_response(site):
    """POST /verify and /policy skip Starlette's objects: the answers keep JSONResponse's
    form (compact JSON, Content-Length, Content-Type) and the other methods and paths keep
    Starlette's answers."""
    status, headers, body = _raw(site, "POST", "/verify", json.dumps(
        {"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}).encode())
    assert status == 200 and headers["content-type"] == "application/json"
    assert body == b'{"result":"ok","user":"alice@example.com","fields":{"userdb_uid":"5000",' \
                   b'"userdb_home":"/srv/alice@example.com"}}'
    assert headers["content-length"] == str(len(body))
    policy = json.dumps({"login": "alice@example.com", "remote": DENIED_IP, "protocol": "imap"}).encode()
    for path in ("/policy?command=allow", "/?command=allow", "/policy", "/policy?command=report&command=allow"):
        assert _raw(site, "POST", path, policy)[::2] == (200, b'{"status":-1,"msg":"Authentication failed"}'), path
    assert _raw(site, "POST", "/policy?command=nothing", policy)[::2] == (400, b'{"status":0,"msg":"bad request"}')
    assert _raw(site, "POST", "/verify", b"{}", {"Authorization": "Bearer wrong"})[::2] == \
        (401, b'{"result":"tempfail"}')
    status, headers, _ = _raw(site, "GET", "/verify")
    assert status == 405 and headers["allow"] == "POST"
    assert _raw(site, "POST", "/nowhere", b"{}")[0] == 404


def _asgi_call(path: str, body: bytes, token: str = TOKEN) -> tuple[dict, list]:
    """An ASGI scope for a POST with `body`, and the list its answer's messages go to."""
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "client": ("127.0.0.1", 5),
             "headers": [(b"authorization", f"Bearer {token}".encode()),
                         (b"content-length", str(len(body)).encode())]}
    return scope, []


def test_a_cancelled_request_keeps_its_place_until_its_thread_ends(tmp_path):
    """A request whose task is cancelled (uvicorn's shutdown after its grace period) while
    the engine runs it on a thread: the thread cannot be stopped, so its place among
    max_requests stays taken until the thread ends; the next request is busy (503) until
    then, and gets in after."""
    import asyncio

    path, _ = _site(tmp_path)
    engine = Engine(str(path), stderr=io.StringIO())
    release = threading.Event()
    entered = threading.Event()
    real_verify = engine.verify

    def held(body):
        if must_not_wait():
            raise WouldWait("held")
        entered.set()
        release.wait(10)
        return real_verify(body)

    engine.verify = held
    app = build_app(engine, TOKEN, max_requests=1)
    body = json.dumps({"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}).encode()

    async def request(sent: list) -> None:
        scope, _ = _asgi_call("/verify", body)
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)

    async def scenario() -> tuple[list, list, list]:
        first: list = []
        task = asyncio.create_task(request(first))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        second: list = []
        await request(second)  # the cancelled one's thread still runs: no place
        release.set()
        for _ in range(500):  # its place comes back when its thread ends
            third: list = []
            await request(third)
            if third[0]["status"] != 503:
                break
            await asyncio.sleep(0.01)
        return first, second, third

    try:
        first, second, third = asyncio.run(scenario())
    finally:
        release.set()
    assert first == []
    assert second[0]["status"] == 503 and second[1]["body"] == b'{"result":"tempfail","reason":"busy"}'
    assert third[0]["status"] == 200 and json.loads(third[1]["body"])["result"] == "ok"


def test_a_client_gone_before_its_body_arrived_is_not_answered(tmp_path):
    """http.disconnect while the body is read: nothing is sent, nothing is decided. And a
    Content-Length that is not ASCII digits ("\u00b2", which str.isdigit takes and int()
    refuses) is a 413 before any read, never an internal error."""
    import asyncio

    path, db = _site(tmp_path)
    app = build_app(Engine(str(path), stderr=io.StringIO()), TOKEN)

    def answer(scope: dict, messages: list) -> list:
        sent: list = []

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(app(scope, receive, send))
        return sent

    body = json.dumps({"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}).encode()
    scope, _ = _asgi_call("/verify", body)
    assert answer(scope, [{"type": "http.request", "body": body[:10], "more_body": True}]) == []
    assert sqlite3.connect(db).execute("SELECT count(*) FROM log").fetchone() == (0,)
    scope["headers"] = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-length", "\u00b2".encode("latin-1"))]
    sent = answer(scope, [{"type": "http.request", "body": body, "more_body": False}])
    assert sent[0]["status"] == 413 and sqlite3.connect(db).execute("SELECT count(*) FROM log").fetchone() == (0,)
    scope, _ = _asgi_call("/verify", body)  # the same request, whole: decided
    sent = answer(scope, [{"type": "http.request", "body": body, "more_body": False}])
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["result"] == "ok"


SUPERVISOR_SCRIPT = """
import os, signal, sys, time
from dovecot_appauth.serve.server import Supervisor
import socket

real_fork = os.fork


def slow_fork():  # the child is slow to get going: SIGTERM reaches it before its own handling
    pid = real_fork()
    if pid == 0:
        time.sleep(0.5)
    return pid


os.fork = slow_fork
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()


def target():
    while True:
        time.sleep(1)


class Stopped(Supervisor):
    def _start(self):
        super()._start()
        if len(self.children) == 1:  # systemctl stop while the workers are started
            os.kill(os.getpid(), signal.SIGTERM)


supervisor = Stopped(listener, target, 3)
print("started", supervisor.run(), flush=True)
"""


def test_sigterm_while_the_workers_start_stops_them_all(tmp_path):
    """A SIGTERM that arrives while the workers are being started: no more are started,
    and the one forked just before, which had not yet put its own signal handling in
    place, ends too (the signal waits, blocked, until it has): run() returns."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        out, err = "(no answer within 60 s)", ""
    finally:
        try:  # whatever is left of it, workers included
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert out == "started 0\n", out + err
