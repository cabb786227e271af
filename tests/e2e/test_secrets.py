"""Issue 6, part 4: no secret anywhere.

Every path of the installed program (success, wrong, revoked, unknown, lookup, credentials
lookup, audit deny, each internal error) and the admin commands that touch passwords run
against one site; then stderr, the fd-4 replies, the syslog datagrams (a Unix datagram socket
bound by the test), the audit ``log_file``, the ``log`` table and every file under the config
and cache directories are searched for every password, its ``{CRYPT}$6$...`` hash, the hash
without prefix, its salt, and the MariaDB DSN password. Only ``app_passwords.password`` may
hold a hash. Also: check-config's permission warnings, and no pickle in the cache.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support.common import dovecot_ids, free_port, wrong_password
from tests.support.hardening import (
    GLOBAL_NETWORKS,
    dovecot_env,
    make_site,
    request_bytes,
    run_checkpassword,
    run_cli,
)

pytestmark = pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")

MMDB = Path(__file__).parents[1] / "data" / "mmdb"
DB_PASSWORD = "Db-Secret-Pw-7731"  # in a MariaDB DSN that points at a closed port
USER = "alice@example.com"
PICKLE_HEADERS = (b"\x80\x02", b"\x80\x03", b"\x80\x04\x95", b"\x80\x05\x95")


class Evidence:
    """Everything the program and the admin commands wrote, to be searched for secrets."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, bytes]] = []

    def add(self, where: str, data: bytes | str) -> None:
        self.texts.append((where, data.encode("utf-8", "replace") if isinstance(data, str) else data))

    def leaks(self, secrets: list[str]) -> list[tuple[str, str]]:
        found = []
        for where, data in self.texts:
            for secret in secrets:
                if secret.encode() in data:
                    found.append((where, secret[:12] + "..."))
        return found


@pytest.fixture
def secret_site(dns_server):
    site = make_site(prefix="appauth-secret-")
    site.add_password("a", USER)
    site.add_password("b", "bob@example.com")
    site.add_password("old", USER, revoked=True)
    lists = site.dir / "lists"
    (lists / "ip.lst").write_text("203.0.113.0/24\n")
    sock_path = site.dir / "syslog.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    os.chmod(sock_path, 0o666)
    receiver.setblocking(False)
    site.receiver = receiver
    site.write(
        audit={"enabled": True, "deadline": 1.0, "global_networks": GLOBAL_NETWORKS, "syslog_socket": str(sock_path),
               "journal": "no", "log_file": str(site.dir / "audit.log")},
        audit__dns={"enabled": True, "resolvers": ["127.0.0.1"], "port": dns_server.port, "timeout": 1.0},
        audit__maxmind={"city": str(MMDB / "AppAuth-Test-City.mmdb"), "asn": str(MMDB / "AppAuth-Test-ASN.mmdb")},
        audit__lists={"ip_networks": str(lists / "ip.lst")},
    )
    yield site
    receiver.close()
    site.remove()


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def _login(site, evidence, name, user, password, *, expect, config=None, env=None, run_as=None, args=()):
    run = run_checkpassword(config or site.path, request_bytes(user, password), env=env or dovecot_env(), user=run_as,
                            args=args)
    evidence.add(f"stderr of {name}", run.stderr)
    evidence.add(f"fd 4 of {name}", run.reply)
    assert run.status == expect, (name, run.status, run.stderr)
    assert "Traceback" not in run.stderr
    return run


def _files(directory: Path, skip: set[Path]):
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            if path in skip or path.is_socket():
                continue
            yield path


def test_no_secret_anywhere(secret_site):
    site = secret_site
    ev = Evidence()
    pw, bob_pw, old_pw = site.pw("a"), site.pw("b"), site.pw("old")
    assert len({pw, bob_pw, old_pw}) == 3  # random, so equal only by a chance of 62**-16; say so

    # the login paths
    _login(site, ev, "success", USER, pw, expect=0)
    _login(site, ev, "success-pop3", USER.upper(), pw, expect=0, env=dovecot_env(service="pop3"))
    _login(site, ev, "wrong", USER, wrong_password(pw), expect=1)
    _login(site, ev, "other user's password", USER, bob_pw, expect=1)
    _login(site, ev, "revoked", USER, old_pw, expect=1)
    _login(site, ev, "unknown", "nobody@example.com", pw, expect=1)
    _login(site, ev, "lookup", USER, "", expect=2, env=dovecot_env(AUTHORIZED="1"))
    _login(site, ev, "credentials lookup", USER, "", expect=111,
           env=dovecot_env(AUTHORIZED="1", CREDENTIALS_LOOKUP="1", SCHEME="CRAM-MD5"))
    deny = _login(site, ev, "audit deny", USER, pw, expect=1, env=dovecot_env(ip="203.0.113.9"))
    assert "denied by audit" in deny.stderr
    _login(site, ev, "malformed", USER, pw + "\0extra", expect=2)

    # internal errors, each with a config of its own
    bad = site.dir / "bad.toml"
    bad.write_text(site.path.read_text() + f"\n[database\ndsn = 'x{pw}'\n")
    _login(site, ev, "bad config", USER, pw, expect=111, config=bad)
    missing = site.write("missing.toml", database={"dsn": f"sqlite:///{site.dir}/missing.sqlite"})
    _login(site, ev, "missing db", USER, pw, expect=111, config=missing)
    maria = site.write("maria.toml", database={
        "dsn": f"mysql+pymysql://mailserver:{DB_PASSWORD}@127.0.0.1:{free_port()}/mail", "connect_timeout": 0.5})
    down = _login(site, ev, "mariadb down", USER, pw, expect=111, config=maria)
    assert "***" in down.stderr
    if os.geteuid() == 0:
        copy = site.dir / "unreadable.sqlite"
        shutil.copy(site.db_path, copy)
        os.chmod(copy, 0)
        unreadable = site.write("unreadable.toml", database={"dsn": f"sqlite:///{copy}"})
        _login(site, ev, "unreadable db", USER, pw, expect=111, config=unreadable, run_as="dovecot")

    # admin commands that handle passwords or the log
    for args in (["password", "list", "--json"], ["password", "list"], ["check-config"], ["cache", "stats"],
                 ["explain", "198.51.100.7", "--json"]):
        res = run_cli(site.path, *args, check=False)
        ev.add(f"dovecot-appauth {' '.join(args)}", res.stdout + res.stderr)
    for config in (site.path, maria):
        res = subprocess.run([str(Path(os.sys.executable).parent / "dovecot-appauth"), "--config", str(config),
                              "login-test", USER, "--ip", "198.51.100.7", "--json"], input=pw + "\n",
                             capture_output=True, text=True, timeout=60, check=False)
        ev.add(f"login-test with {config.name}", res.stdout + res.stderr)

    # everything written
    datagrams = _drain(site.receiver)
    assert len(datagrams) >= 2  # the audit lines reached syslog
    for d in datagrams:
        ev.add("syslog datagram", d)
    audit_log = (site.dir / "audit.log").read_bytes()
    assert audit_log.count(b"\n") >= 2
    for row in site.log_rows():
        ev.add("log table", repr(row))
    db_files = {Path(f"{db}{suffix}") for db in (site.db_path, site.dir / "unreadable.sqlite")
                for suffix in ("", "-wal", "-shm")}
    scanned = 0
    for path in _files(site.dir, db_files):
        ev.add(str(path), path.read_bytes())
        scanned += 1
    assert scanned >= 5 and any("cache" in str(p) for p in _files(site.cache, set()))

    # only the config files hold the DB password (maria.toml) or a password (bad.toml, on purpose)
    secrets = [*site.secrets, DB_PASSWORD]
    leaks = [(w, s) for w, s in ev.leaks(secrets) if not w.endswith(("maria.toml", "bad.toml"))]
    assert leaks == []


def test_debug_output_names_steps_but_no_secret(secret_site):
    site = secret_site
    ev = Evidence()
    pw, old_pw = site.pw("a"), site.pw("old")
    debug = ("--debug",)
    ok = _login(site, ev, "success", USER, pw, expect=0, args=debug)
    lines = [line for line in ok.stderr.splitlines() if "debug: " in line]
    assert "debug: request: user 'alice@example.com', service imap" in lines[0], ok.stderr
    assert lines[0].endswith("password given") and "loaded after" in lines[1], ok.stderr
    assert "passwords of 'alice@example.com'" in ok.stderr and "matched" in ok.stderr
    assert "audit: source global, verdict" in ok.stderr and "log row written" in ok.stderr
    assert "answer: status 0" in ok.stderr
    wrong = _login(site, ev, "wrong", USER, wrong_password(pw), expect=1, args=debug)
    assert "no active password matched" in wrong.stderr
    revoked = _login(site, ev, "revoked", USER, old_pw, expect=1, args=debug)
    assert "not active" in revoked.stderr
    _login(site, ev, "unknown", "nobody@example.com", pw, expect=1, args=debug)
    deny = _login(site, ev, "audit deny", USER, pw, expect=1, env=dovecot_env(ip="203.0.113.9"), args=debug)
    assert "(refused)" in deny.stderr
    maria = site.write("maria.toml", database={
        "dsn": f"mysql+pymysql://mailserver:{DB_PASSWORD}@127.0.0.1:{free_port()}/mail", "connect_timeout": 0.5})
    down = _login(site, ev, "mariadb down", USER, pw, expect=111, config=maria, args=debug)
    assert "answer: status 111" in down.stderr
    bad = site.dir / "bad.toml"
    bad.write_text(site.path.read_text() + f"\n[database\ndsn = 'x{pw}'\n")
    _login(site, ev, "bad config", USER, pw, expect=111, config=bad, args=debug)
    assert ev.leaks([*site.secrets, DB_PASSWORD]) == []


def test_hash_is_only_in_app_passwords(secret_site):
    site = secret_site
    run_checkpassword(site.path, request_bytes(USER, site.pw("a")), env=dovecot_env())
    conn = sqlite3.connect(site.db_path)
    try:
        # tables only: the plugin's view app_passwords_with_log shows app_passwords.password
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            cols = [d[0] for d in conn.execute(f'SELECT * FROM "{table}" LIMIT 0').description]
            for row in rows:
                for col, value in zip(cols, row, strict=True):
                    if table == "app_passwords" and col == "password":
                        continue
                    for secret in site.secrets:
                        assert secret not in str(value), (table, col)
    finally:
        conn.close()


# --- check-config and file modes ---------------------------------------------------------------


def _mysql_config(directory: Path, mode: int, group: int) -> Path:
    path = directory / "db.toml"
    path.write_text(f'[database]\ndsn = "mysql+pymysql://mailserver:{DB_PASSWORD}@127.0.0.1:1/mail"\n\n'
                    "[audit]\nenabled = false\n")
    os.chmod(path, mode)
    os.chown(path, 0, group)
    return path


def _permission_warnings(path: Path) -> list[str]:
    res = run_cli(path, "check-config", "--no-database", check=False)
    assert DB_PASSWORD not in res.stdout + res.stderr
    return [line for line in (res.stdout + res.stderr).splitlines() if "password" in line and "readable" in line]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@needs_root
def test_check_config_warns_world_readable_db_password(tmp_path):
    assert _permission_warnings(_mysql_config(tmp_path, 0o644, dovecot_ids()[1]))


@needs_root
def test_check_config_accepts_0640_root_dovecot(tmp_path):
    assert _permission_warnings(_mysql_config(tmp_path, 0o640, dovecot_ids()[1])) == []


@needs_root
def test_check_config_warns_group_readable_by_another_group(tmp_path):
    assert _permission_warnings(_mysql_config(tmp_path, 0o640, 0))  # root:root 0640: group root reads it


@needs_root
def test_check_config_warns_world_readable_account_gate_db_password(tmp_path):
    # [account.sql] dsn may name another database, with its own password in this file
    path = tmp_path / "gate.toml"
    path.write_text('[database]\ndsn = "sqlite:////nonexistent/appauth.sqlite"\n\n[audit]\nenabled = false\n\n'
                    '[account]\nbackend = "sql"\n\n[account.sql]\n'
                    'query = "SELECT active FROM mailbox WHERE username = :user"\n'
                    f'dsn = "mysql+pymysql://accounts:{DB_PASSWORD}@127.0.0.1:1/postfix"\n')
    os.chmod(path, 0o644)
    os.chown(path, 0, dovecot_ids()[1])
    assert _permission_warnings(path)
    os.chmod(path, 0o640)
    assert _permission_warnings(path) == []


# --- the cache ---------------------------------------------------------------------------------


def test_cache_modes_and_no_pickle(secret_site):
    site = secret_site
    for ip in ("198.51.100.7", "192.0.2.10", "2001:db8::25"):
        assert run_checkpassword(site.path, request_bytes(USER, site.pw("a")), env=dovecot_env(ip=ip)).status == 0
    assert (site.cache.stat().st_mode & 0o777) == 0o700
    files = list(_files(site.cache, set()))
    assert any(p.name == "cache.sqlite" for p in files)
    database = {"cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm"}
    for path in files:
        assert (path.stat().st_mode & 0o077) == 0, (path, oct(path.stat().st_mode))
        if path.name not in database:  # any other file: no pickle in it
            assert not any(h in path.read_bytes() for h in PICKLE_HEADERS), path
    # The database's values are read through SQLite (which sees the WAL too), not searched as
    # raw bytes: the database and WAL files hold random salts and checksums, where two given
    # bytes (b"\x80\x03", a pickle header) turned up by chance once
    conn = sqlite3.connect(site.cache / "cache.sqlite")
    try:
        rows = conn.execute("SELECT value, typeof(value) FROM entry").fetchall()
    finally:
        conn.close()
    assert rows and all(kind == "text" and isinstance(json.loads(value), dict) for value, kind in rows), rows


class _Planted:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_planted_pickle_in_cache_is_never_loaded(secret_site):
    site = secret_site
    assert run_checkpassword(site.path, request_bytes(USER, site.pw("a")), env=dovecot_env()).status == 0
    marker = site.dir / "pwned"
    payload = pickle.dumps(_Planted(str(marker)), protocol=4)
    conn = sqlite3.connect(site.cache / "cache.sqlite")
    try:
        with conn:
            conn.execute("UPDATE entry SET value = ?", (payload,))
            conn.execute("UPDATE entry SET value = ?", (payload.decode("latin-1"),))
    finally:
        conn.close()
    run = run_checkpassword(site.path, request_bytes(USER, site.pw("a")), env=dovecot_env(service="smtp"))
    assert run.status == 0 and len(run.lines) <= 1
    assert not marker.exists()
