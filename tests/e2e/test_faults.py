"""Issue 6, part 2: injected faults. Each test runs the installed program as Dovecot does and
checks the documented verdict and a time bound.

Verdicts (docs/BEHAVIOUR.md): the password check cannot run (database down,
locked for reading, corrupt) -> 111 with one stderr line within connect_timeout + margin,
never 1; the password was right but the log row cannot be written -> 0 and one
"not recorded" line; enrichment sources, cache or syslog broken -> the login is still
decided (0 for a right password) within the audit deadline + margin.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.common import fill_datagram_queue
from tests.support.hardening import (
    GLOBAL_NETWORKS,
    HangingTcp,
    HttpResponder,
    MysqlProxy,
    UdpResponder,
    dovecot_env,
    http_response,
    make_site,
    run_cli,
)

pytestmark = pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")

TIMEOUT = 1.0  # [database] connect_timeout in these tests
DEADLINE = 0.5  # [audit] deadline
MARGIN = 2.0  # interpreter start-up and imports on a loaded 2-core machine
MMDB = Path(__file__).parents[1] / "data" / "mmdb"
USER = "alice@example.com"


@pytest.fixture
def site():
    s = make_site(prefix="appauth-fault-")
    s.add_password("a", USER)
    s.add_password("old", USER, revoked=True)
    yield s
    s.remove()


def assert_tempfail(run, *words: str, bound: float = TIMEOUT + MARGIN) -> None:
    assert run.status == 111, (run.status, run.stderr)
    assert len(run.lines) == 1 and run.lines[0].startswith("dovecot-appauth: "), run.stderr
    assert "Traceback" not in run.stderr
    for w in words:
        assert w in run.lines[0], run.lines[0]
    assert run.elapsed < bound, run.elapsed
    assert run.reply == b""


def assert_ok_not_recorded(run, *words: str, bound: float = TIMEOUT + MARGIN) -> None:
    assert run.status == 0, (run.status, run.stderr)
    assert len(run.lines) == 1 and "not recorded" in run.lines[0], run.stderr
    for w in words:
        assert w in run.lines[0], run.lines[0]
    assert run.elapsed < bound, run.elapsed
    assert run.reply.startswith(f"user={USER}\t".encode())


def assert_secrets_absent(site, run) -> None:
    for secret in site.secrets:
        assert secret not in run.stderr


# --- MariaDB -----------------------------------------------------------------------------------


def _mysql_dsn(port: int, database: str = "appauth") -> str:
    from urllib.parse import quote

    from tests.support.mariadb import DB_PASSWORD, DB_USER

    return f"mysql+pymysql://{quote(DB_USER, safe='')}:{quote(DB_PASSWORD, safe='')}@127.0.0.1:{port}/{database}"


def _no_db_password(run) -> None:
    from tests.support.mariadb import DB_PASSWORD

    assert DB_PASSWORD not in run.stderr and "T3st" not in run.stderr


def test_mariadb_closed_port(site):
    from tests.support.common import free_port

    site.write(database={"dsn": _mysql_dsn(free_port())})
    run = site.login("a")
    assert_tempfail(run, "cannot connect", "***")
    _no_db_password(run)


def test_mariadb_accepts_and_never_answers(site):
    with HangingTcp() as server:
        site.write(database={"dsn": _mysql_dsn(server.port)})
        run = site.login("a")
        wrong = site.login("a", "wrong-password")
    assert_tempfail(run, "cannot connect")
    assert_tempfail(wrong, "cannot connect")  # never 1: the password was not checked
    assert run.elapsed >= TIMEOUT * 0.8  # it really waited for connect_timeout, no longer
    _no_db_password(run)


@pytest.fixture
def maria_site(mariadb_database):
    s = make_site(mariadb_database.dsn, prefix="appauth-fault-mdb-")
    s.add_password("a", USER)
    s.database = mariadb_database
    yield s
    s.remove()


@pytest.mark.mariadb
def test_mariadb_stopped_mid_run(maria_site, mariadb):
    """Through a proxy that can stop answering, reset, or refuse: the server dies mid-run."""
    with MysqlProxy(mariadb.port) as proxy:
        maria_site.write(database={"dsn": _mysql_dsn(proxy.port, maria_site.database.name)})
        assert maria_site.login("a").status == 0
        for mode in ("hang", "reset", "refuse"):
            proxy.mode = mode
            run = maria_site.login("a")
            assert_tempfail(run)
            _no_db_password(run)
            wrong = maria_site.login("a", "wrong-password")
            assert wrong.status == 111, (mode, wrong.stderr)
        proxy.mode = "pass"
        assert maria_site.login("a", env=dovecot_env(ip="198.51.100.99")).status == 0  # back again


@pytest.mark.mariadb
def test_mariadb_slow_table_lock_on_passwords(maria_site):
    maria_site.write(database={"connect_timeout": TIMEOUT})
    locker = maria_site.database.connect()
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLES app_passwords WRITE")
        run = maria_site.login("a")
        wrong = maria_site.login("a", "wrong-password")
    finally:
        locker.close()
    assert_tempfail(run)
    assert wrong.status == 111
    _no_db_password(run)
    assert maria_site.login("a").status == 0  # and back


@pytest.mark.mariadb
def test_mariadb_slow_table_lock_on_log(maria_site):
    locker = maria_site.database.connect()
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLES log WRITE")
        run = maria_site.login("a")
    finally:
        locker.close()
    assert_ok_not_recorded(run)
    _no_db_password(run)


@pytest.mark.mariadb
def test_mariadb_log_insert_fails(maria_site):
    conn = maria_site.database.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TRIGGER full BEFORE INSERT ON log FOR EACH ROW "
                        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'disk full'")
    finally:
        conn.close()
    assert_ok_not_recorded(maria_site.login("a"), "disk full")
    assert maria_site.log_rows() == []


# --- SQLite ------------------------------------------------------------------------------------


def test_sqlite_write_locked(site):
    """BEGIN EXCLUSIVE in WAL mode blocks writers only: the password is checked, the row waits."""
    other = sqlite3.connect(site.db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        run = site.login("a")
        wrong = site.login("a", "wrong-password")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert_ok_not_recorded(run, "locked")
    assert run.elapsed >= TIMEOUT * 0.8
    # a wrong password is still a plain refusal; the failure it could not count for the
    # throttle is the one line Dovecot logs
    assert wrong.status == 1
    lines = wrong.stderr.splitlines()
    assert len(lines) == 1 and "not counted for throttling" in lines[0] and "locked" in lines[0], wrong.stderr


def test_sqlite_write_locked_waits_one_timeout_in_all(site):
    """Audit event and log row both blocked: one busy timeout for the login, not one per row
    (with connect_timeout = 3 it took 6 s and more)."""
    timeout = 3.0
    site.write(database={"connect_timeout": timeout}, **audit_sections(site))
    other = sqlite3.connect(site.db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        run = site.login("a")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert run.status == 0, run.stderr
    assert run.reply.startswith(f"user={USER}\t".encode())
    assert [line.split(":")[1].strip() for line in run.lines] == [f"audit event of {USER} not recorded",
                                                                 f"login of {USER} not recorded"]
    assert "not waited for again" in run.lines[1]
    assert run.elapsed >= timeout * 0.8  # it did wait for the lock once
    assert run.elapsed < timeout + MARGIN, run.elapsed


def test_sqlite_locked_for_readers(site):
    other = sqlite3.connect(site.db_path, isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO log (pwid, service, src_ip, timestamp) VALUES (1, 'x', 'y', '2000-01-01')")
        runs = [site.login("a"), site.login("a", "wrong-password"), site.login("nobody@example.com", "x")]
    finally:
        other.execute("ROLLBACK")
        other.close()
    for run in runs:
        assert_tempfail(run, "is locked")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the program as user dovecot")
@pytest.mark.parametrize("scope", ["file", "directory"])
def test_sqlite_read_only(site, scope):
    """``file``: only the database file is read-only for dovecot: the password is checked, the row
    is reported lost (0). ``directory``: its -wal/-shm too, so even reading fails (WAL): 111."""
    if scope == "file":
        subprocess.run(["chown", "root:root", str(site.db_path)], check=True)
    else:
        subprocess.run(["chown", "-R", "root:root", str(site.db_path.parent)], check=True)
    os.chmod(site.db_path, 0o644)
    run = site.login("a", user="dovecot")
    wrong = site.login("a", "wrong-password", user="dovecot")
    if scope == "file":
        assert_ok_not_recorded(run, "read-only")
        # still a plain refusal; the one line says the failure could not be counted
        assert wrong.status == 1
        lines = wrong.stderr.splitlines()
        assert len(lines) == 1 and "not counted for throttling" in lines[0] and "read-only" in lines[0], wrong.stderr
    else:
        assert_tempfail(run, "read-only")
        assert_tempfail(wrong, "read-only")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the program as user dovecot")
def test_sqlite_unreadable(site):
    os.chmod(site.db_path, 0)
    subprocess.run(["chown", "root:root", str(site.db_path)], check=True)
    for run in (site.login("a", user="dovecot"), site.login("a", "wrong", user="dovecot")):
        assert_tempfail(run, str(site.db_path))


@pytest.mark.parametrize("damage", ["garbage", "header-kept", "truncated"])
def test_sqlite_corrupt(site, damage):
    conn = sqlite3.connect(site.db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = site.db_path.read_bytes()
    if damage == "garbage":
        new = os.urandom(len(data))
    elif damage == "header-kept":  # a valid header, the pages behind it overwritten
        new = data[:100] + b"\xa5" * (len(data) - 100)
    else:
        new = data[: len(data) // 3]
    for suffix in ("-wal", "-shm"):
        Path(str(site.db_path) + suffix).unlink(missing_ok=True)
    site.db_path.write_bytes(new)
    for run in (site.login("a"), site.login("a", "wrong-password")):
        assert_tempfail(run, str(site.db_path))


def test_sqlite_disk_full_for_log_insert(site):
    conn = sqlite3.connect(site.db_path)
    conn.execute("CREATE TRIGGER full BEFORE INSERT ON log BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    conn.commit()
    conn.close()
    run = site.login("a")
    assert_ok_not_recorded(run, "disk full")
    assert site.login("a", "wrong-password").status == 1
    assert site.log_rows() == []


# --- the audit: sources, cache, syslog ------------------------------------------------------------


def audit_sections(site, *, dns_port: int | None = None, rdap_url: str | None = None, city: str | None = None,
                   asn: str | None = None, syslog: str = "", **audit) -> dict:
    sections = {
        "audit": {"enabled": True, "deadline": DEADLINE, "global_networks": GLOBAL_NETWORKS, "syslog_socket": syslog,
                  "journal": "no", "log_file": str(site.dir / "audit.log"), **audit},
        "audit__dns": {"enabled": dns_port is not None, "resolvers": ["127.0.0.1"], "port": dns_port or 53,
                       "timeout": DEADLINE},
        "audit__rdap": {"enabled": rdap_url is not None, "servers": [rdap_url or "http://127.0.0.1:1/"],
                        "timeout": DEADLINE},
        "audit__maxmind": {k: v for k, v in (("city", city), ("asn", asn)) if v},
    }
    return sections


def _huge_dns(query: bytes) -> bytes:
    """A well-formed answer with 300 PTR records (about 60 kB, far over 512 bytes)."""
    from dnslib import PTR, QTYPE, RR, DNSRecord

    req = DNSRecord.parse(query)
    reply = req.reply()
    for i in range(300):
        reply.add_answer(RR(req.q.qname, QTYPE.PTR, rdata=PTR(f"h{i}." + "x" * 150 + ".example."), ttl=60))
    return reply.pack()


def _truncated_dns(query: bytes) -> bytes:
    return query[:2] + b"\x83\x80" + query[4:]  # TC set: the client retries over TCP, where nobody listens


DNS_KINDS = {
    "blackhole": lambda q: None,
    "garbage": lambda q: os.urandom(64),
    "garbage-with-id": lambda q: q[:2] + os.urandom(200),
    "huge": _huge_dns,
    "truncated": _truncated_dns,
}
HUGE_BODY = b'{"name": "' + b"N" * (3 << 20) + b'"}'
RDAP_KINDS = {
    "blackhole": (None, 0.0),
    "garbage": (http_response(b"\x00\xff garbage"), 0.0),
    "wrong-types": (http_response(b'{"name": 5, "entities": 7, "remarks": 3, "arin_originas0_originautnums": [{}]}'),
                    0.0),
    "huge": (http_response(HUGE_BODY), 0.0),
    "huge-header": (b"HTTP/1.0 200 OK\r\nX: " + b"h" * (1 << 20) + b"\r\n\r\n{}", 0.0),
    "slow-drip": (http_response(b'{"name": "' + b"N" * 1000 + b'"}'), 0.05),
}


SOURCE_FAULTS = sorted({(d, "blackhole") for d in DNS_KINDS} | {("garbage-with-id", r) for r in RDAP_KINDS})


@pytest.mark.parametrize(("dns_kind", "rdap_kind"), SOURCE_FAULTS)
def test_broken_dns_and_rdap_still_decide(site, dns_kind, rdap_kind):
    body, drip = RDAP_KINDS[rdap_kind]
    hang = HangingTcp() if body is None else None
    http = HttpResponder(lambda path: body, drip=drip, drip_for=10) if body is not None else None
    url = f"http://127.0.0.1:{hang.port}/" if hang else http.url
    try:
        with UdpResponder(DNS_KINDS[dns_kind]) as dns:
            site.write(**audit_sections(site, dns_port=dns.port, rdap_url=url,
                                        city=str(MMDB / "AppAuth-Test-City.mmdb")))
            run = site.login("a", env_kw={"ip": "198.51.100.7"})
            wrong = site.login("a", "wrong-password", env_kw={"ip": "198.51.100.8"})
    finally:
        for server in (hang, http):
            if server is not None:
                server.close()
    assert run.status == 0, run.stderr
    assert run.lines == [] and "Traceback" not in run.stderr
    assert run.elapsed < DEADLINE + MARGIN, run.elapsed
    assert wrong.status == 1 and wrong.stderr == ""
    line = (site.dir / "audit.log").read_text()
    assert line.count("\n") == 1 and "ip=198.51.100.7," in line and "result=unknown" in line


def test_rdap_slow_drip_respects_the_lookup_timeout():
    from dovecot_appauth import config as cfgmod
    from dovecot_appauth.audit.sources import rdap

    body = http_response(b'{"name": "' + b"N" * 150 + b'"}')
    with HttpResponder(lambda path: body, drip=0.01, drip_for=3) as server:
        cfg = cfgmod.parse({"audit": {"rdap": {"enabled": True, "servers": [server.url]}}}).audit.rdap
        start = time.monotonic()
        try:
            rdap.lookup("198.51.100.7", cfg, DEADLINE)
        except (TimeoutError, rdap.RdapError):
            pass
        elapsed = time.monotonic() - start
    assert elapsed < DEADLINE + 1.5, elapsed  # the drip would last 3 s


def test_broken_sources_are_cached_as_failures(site):
    """A dead resolver costs one deadline, then the negative cache answers at once."""
    with UdpResponder(lambda q: None) as dns:
        site.write(**audit_sections(site, dns_port=dns.port))
        first = site.login("a")
        time.sleep(0.2)  # the responder thread has counted every query the first login sent
        asked = dns.queries
        second = site.login("a")
        assert asked >= 1
        assert dns.queries == asked  # the negative cache answered: the dead resolver was not asked again
    assert first.status == second.status == 0
    assert first.elapsed >= DEADLINE * 0.8


def _explain(site, ip="198.51.100.7") -> dict:
    res = run_cli(site.path, "explain", ip, "--json", "--no-cache")
    return json.loads(res.stdout)


def _find_source(report, name):
    """The maxmind source entry of `explain --json`, whatever its nesting."""
    if isinstance(report, dict):
        for k, v in report.items():
            if k == name and isinstance(v, dict) and "status" in v:
                return v
            found = _find_source(v, name)
            if found:
                return found
    elif isinstance(report, list):
        for v in report:
            found = _find_source(v, name)
            if found:
                return found
    return None


@pytest.mark.parametrize("cut", [0, 100, 1500, -1])
def test_maxmind_truncated(site, cut):
    city = site.dir / "city.mmdb"
    data = (MMDB / "AppAuth-Test-City.mmdb").read_bytes()
    city.write_bytes(data[:cut] if cut >= 0 else data[:-200])
    site.write(**audit_sections(site, city=str(city), asn=str(MMDB / "AppAuth-Test-ASN.mmdb")))
    run = site.login("a")
    assert run.status == 0 and run.lines == [], run.stderr
    assert run.elapsed < DEADLINE + MARGIN
    report = _find_source(_explain(site), "maxmind")
    assert report is not None
    assert "city.mmdb" in json.dumps(report)  # the unreadable file is named


def test_maxmind_truncated_city_is_named_on_every_login(site):
    """The per-login program with a truncated City file and an intact ASN file: every login's
    audit line says MaxMind's city part is unknown, and nothing of it is cached (it was
    cached as a clean answer: from the second login on, the geo deny list saw nothing and
    no line said so). `explain` names the file and the unknown part."""
    city = site.dir / "city.mmdb"
    city.write_bytes((MMDB / "AppAuth-Test-City.mmdb").read_bytes()[:-200])
    geo = site.dir / "lists" / "geo.deny.lst"
    geo.write_text("2921044\n")  # Germany: 198.51.100.7 with an intact City file
    nxdomain = lambda q: q[:2] + b"\x81\x83" + q[4:]  # noqa: E731 (a cached "no PTR": the cache file exists)
    with UdpResponder(nxdomain) as dns:
        site.write(**audit_sections(site, dns_port=dns.port, city=str(city), asn=str(MMDB / "AppAuth-Test-ASN.mmdb")),
                   audit__lists={"geo_location_ids": str(geo)})
        for n in range(2):
            run = site.login("a")
            assert run.status == 0 and run.lines == [], (n, run.stderr)
            lines = (site.dir / "audit.log").read_text().splitlines()
            assert len(lines) == n + 1
            assert ", host=<>, " in lines[n]
            assert lines[n].endswith(", result=unknown, reason=<no list matched (unknown: maxmind city, whois)>"), \
                lines[n]
        with contextlib.closing(sqlite3.connect(f"file:{site.cache / 'cache.sqlite'}?mode=ro", uri=True)) as conn:
            assert conn.execute("SELECT source FROM entry").fetchall() == [("rdns",)]
        report = json.loads(run_cli(site.path, "explain", "198.51.100.7", "--json").stdout)
        text = run_cli(site.path, "explain", "198.51.100.7").stdout
    assert report["facts"]["sources"]["maxmind"]["status"] == "fetched"
    assert str(city) in report["facts"]["sources"]["maxmind"]["detail"]
    assert report["facts"]["maxmind"]["unavailable"] == ["city"]
    assert report["reason"] == "no list matched (unknown: maxmind city, whois)"
    assert "maxmind   fetched" in text and str(city) in text, text


def test_maxmind_all_files_truncated(site):
    city = site.dir / "city.mmdb"
    city.write_bytes((MMDB / "AppAuth-Test-City.mmdb").read_bytes()[:500])
    site.write(**audit_sections(site, city=str(city)))
    assert site.login("a").status == 0
    report = _find_source(_explain(site), "maxmind")
    assert report is not None and report["status"] == "unavailable" and "city.mmdb" in report.get("detail", "")


def test_maxmind_corrupt_byte_does_not_crash_the_login(site):
    data = bytearray((MMDB / "AppAuth-Test-City.mmdb").read_bytes())
    data[1251] = 0xC2  # found by fuzzing (see docs/SECURITY.md)
    city = site.dir / "city.mmdb"
    city.write_bytes(bytes(data))
    site.write(**audit_sections(site, city=str(city)))
    run = site.login("a")
    assert run.status == 0, (run.status, run.stderr)
    assert run.stderr == ""  # the crashed child wrote nothing to Dovecot's log
    # --debug (an admin testing by hand) names the crash; the pure reader's facts were used
    shutil.rmtree(site.cache, ignore_errors=True)
    run = site.login("a", args=("--debug",))
    assert run.status == 0, (run.status, run.stderr)
    assert "maxmind fetched" in run.stderr and f"({city}: maxminddb's C reader died of signal " in run.stderr, \
        run.stderr
    # the login read it with the pure reader after the C extension's child died; check-config says so
    res = run_cli(site.path, "check-config", check=False)
    assert f"warning: [audit] source maxmind: city database: {city}: maxminddb's C reader died of signal " \
        in res.stdout + res.stderr, res.stdout + res.stderr


def test_maxmind_intact_file_is_no_check_config_warning(site):
    site.write(**audit_sections(site, city=str(MMDB / "AppAuth-Test-City.mmdb")))
    res = run_cli(site.path, "check-config", check=False)
    assert "source maxmind" not in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the program as user dovecot")
def test_cache_directory_unwritable(site):
    cache = site.dir / "rootcache"
    cache.mkdir(mode=0o755)  # owned by root: dovecot cannot create the cache file
    with UdpResponder(lambda q: None) as dns:
        site.write(**audit_sections(site, dns_port=dns.port, city=str(MMDB / "AppAuth-Test-City.mmdb")),
                   audit__cache={"path": str(cache)})
        (site.dir / "audit.log").touch()
        os.chmod(site.dir / "audit.log", 0o666)
        run = site.login("a", user="dovecot")
    assert run.status == 0, run.stderr
    assert len(run.lines) <= 1 and "Traceback" not in run.stderr
    assert run.elapsed < DEADLINE + MARGIN
    assert os.listdir(cache) == []


@pytest.mark.parametrize("damage", ["garbage-file", "bad-json-value", "wrong-shape"])
def test_cache_corrupt(site, damage):
    site.write(**audit_sections(site, city=str(MMDB / "AppAuth-Test-City.mmdb")))
    assert site.login("a").status == 0  # fills the cache
    cache_file = site.cache / "cache.sqlite"
    assert cache_file.exists()
    if damage == "garbage-file":
        for suffix in ("-wal", "-shm"):
            Path(str(cache_file) + suffix).unlink(missing_ok=True)
        cache_file.write_bytes(b"\x80\x04\x95not a database" * 500)
    else:
        value = "{not json" if damage == "bad-json-value" else json.dumps({"sig": "x", "facts": [1, 2]})
        conn = sqlite3.connect(cache_file)
        conn.execute("UPDATE entry SET value = ?", (value,))
        conn.commit()
        conn.close()
    run = site.login("a", env_kw={"ip": "198.51.100.7", "service": "pop3"})
    assert run.status == 0, run.stderr
    assert len(run.lines) <= 1 and "Traceback" not in run.stderr
    assert run.elapsed < DEADLINE + MARGIN


def test_syslog_socket_missing(site):
    site.write(**audit_sections(site, syslog=str(site.dir / "no-such-socket")))
    run = site.login("a")
    assert run.status == 0
    assert len(run.lines) == 1 and "syslog" in run.lines[0] and "audit line not logged" in run.lines[0]
    assert (site.dir / "audit.log").read_text().count("\n") == 1  # the log_file still has it


def test_syslog_receiver_that_never_reads(site):
    path = site.dir / "syslog.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        fill_datagram_queue(path, b"x" * 1024)  # the next send blocks
        site.write(**audit_sections(site, syslog=str(path)))
        run = site.login("a")
    finally:
        receiver.close()
    assert run.status == 0
    assert len(run.lines) <= 1 and "Traceback" not in run.stderr
    assert run.elapsed < DEADLINE + 1.0 + MARGIN  # the syslog send has its own 1 s timeout


def test_uncompilable_regex_line_is_skipped_at_login(site):
    (site.dir / "lists" / "rev.lst").write_text("host-\\d{4294967296}\n")
    with UdpResponder(DNS_KINDS["huge"]) as dns:
        site.write(**audit_sections(site, dns_port=dns.port), audit__lists={"reverse_hostname": str(
            site.dir / "lists" / "rev.lst")})
        run = site.login("a")
    assert run.status == 0, run.stderr


def test_deadline_bounds_internal_failure_of_the_audit(site):
    """An audit that cannot start (a list file that is a directory, a cache path that is a
    file) never turns a right password into 1 and never hangs."""
    (site.dir / "lists" / "dir.lst").mkdir()
    (site.dir / "notadir").write_text("x")
    site.write(**audit_sections(site), audit__lists={"ip_networks": str(site.dir / "lists" / "dir.lst")},
               audit__cache={"path": str(site.dir / "notadir")})
    run = site.login("a")
    assert run.status in (0, 111) and "Traceback" not in run.stderr
    assert run.elapsed < DEADLINE + MARGIN
    assert site.login("a", "wrong-password").status == 1


def test_many_faults_at_once_never_fail_open(site):
    """Everything broken together: still a decided login, in time, with few stderr lines."""
    with UdpResponder(lambda q: None) as dns, HangingTcp() as hang:
        site.write(**audit_sections(site, dns_port=dns.port, rdap_url=f"http://127.0.0.1:{hang.port}/",
                                    city=str(site.dir / "missing.mmdb"), syslog=str(site.dir / "nosock")))
        run = site.login("a")
        wrong = site.login("a", "wrong-password")
        revoked = site.login("old")
    assert run.status == 0 and run.elapsed < DEADLINE + 1.0 + MARGIN
    assert wrong.status == 1 and revoked.status == 1
    assert len(run.lines) <= 2
