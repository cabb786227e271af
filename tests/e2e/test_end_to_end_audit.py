"""Issue 4 end to end: the audit through a real Dovecot 2.3, with the local DNS and RDAP
servers and the test MaxMind files.

Dovecot only sees loopback clients; it trusts 127.0.0.0/8 (``login_trusted_networks``), so
``imap_login(client_ip=...)`` passes the client address with IMAP ``ID ("x-originating-ip" ..)``
and ``doveadm auth test -x rip=...`` does the same for the SASL path. Documentation ranges are
judged as global through ``[audit] global_networks``.

One Dovecot and one config per module. The config file and the list files are read at every
login, so the tests that need another setting (audit-only, a black-holed resolver) rewrite
the config in place and restore it: no Dovecot restart.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dovecot_appauth.cli.dovecot_conf import parse_passdbs
from dovecot_appauth.hashing import generate_password, hash_password
from tests.conftest import AppauthConfig, _give_to_dovecot, run_cli
from tests.support.common import dovecot_ids
from tests.support.dovecot import (
    DEFAULT_USERDB,
    DovecotServer,
    audit_chain_passdbs,
    checkpassword_passdb,
    our_lines,
    passwd_file_passdb,
    settle_log,
    write_passwd_file,
)

pytestmark = [pytest.mark.dovecot,
              pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")]

SECRETS: set[str] = set()
WRONG = "Wrong-audit-pass-Kx42"
SECRETS.add(WRONG)

DEADLINE = 1.0
GLOBAL_NETWORKS = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]

LISTS = {
    "ip_net.deny.lst": "# documentation net used for the deny tests\n203.0.113.0/24\n",
    "rev_host.deny.lst": "host-\\d+\\.cloud\\.example\\.com\n",
    "net_name.deny.lst": "EXAMPLE-CLOUD-NET\n",
    "maxmind/geo_loc.deny.lst": "# Tokyo\n1850147  # a trailing comment, as upstream's headers allow\n",
    "allow/ip_net.allow.lst": "203.0.113.64/28\n",
}


# --- helpers ---------------------------------------------------------------------------
def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


@dataclass
class AuditSetup:
    cfg: AppauthConfig
    base_text: str  # the config as written, without the [audit] overrides
    audit_log: Path
    syslog: socket.socket
    lists: Path
    dns_port: int

    def set_audit(self, **keys) -> None:
        """Rewrite the config with these ``[audit]`` keys (TOML literals) on top of the defaults."""
        lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
        self.cfg.path.write_text(self.base_text.replace("[audit]\n", "[audit]\n" + lines, 1))

    @contextlib.contextmanager
    def changed(self, text_edit=None, **audit_keys) -> Iterator[None]:
        try:
            self.set_audit(**audit_keys)
            if text_edit is not None:
                self.cfg.path.write_text(text_edit(self.cfg.path.read_text()))
            yield
        finally:
            self.cfg.path.write_text(self.base_text)

    def audit_lines(self, since: int = 0) -> list[str]:
        with open(self.audit_log, "rb") as f:
            f.seek(since)
            return f.read().decode().splitlines()

    def audit_mark(self) -> int:
        return self.audit_log.stat().st_size

    def audit_line_for(self, since: int, ip: str) -> str:
        lines = [line for line in self.audit_lines(since) if f", ip={ip}," in line]
        assert len(lines) == 1, f"audit lines for {ip}: {lines}"
        return lines[0]

    def drain_syslog(self) -> None:
        self.syslog.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.syslog.recv(65536)


def seed_password(cfg: AppauthConfig, user: str) -> tuple[int, str]:
    """An app password inserted the plugin's way (plain SQL), in milliseconds."""
    password = generate_password()
    SECRETS.add(password)
    conn = sqlite3.connect(cfg.db_path)
    try:
        with conn:
            pwid = conn.execute("INSERT INTO app_passwords (uid, password, comment) VALUES (?, ?, 'e2e')",
                                (user, hash_password(password))).lastrowid
    finally:
        conn.close()
    _give_to_dovecot(cfg.db_path.parent)
    return int(pwid), password


def log_rows(cfg: AppauthConfig, pwid: int) -> list[tuple]:
    conn = sqlite3.connect(cfg.db_path)
    try:
        return conn.execute("SELECT service, src_ip, src_rdns, src_loc, src_isp FROM log WHERE pwid = ? "
                            "ORDER BY id", (pwid,)).fetchall()
    finally:
        conn.close()



# --- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(appauth_config_factory, dns_server, rdap_server, mmdb_paths) -> Iterator[AuditSetup]:
    city, asn = mmdb_paths
    extra = f"""
[audit.maxmind]
city = "{city}"
asn = "{asn}"

[audit.dns]
resolvers = ["127.0.0.1"]
port = {dns_server.port}
timeout = 1.0

[audit.rdap]
enabled = true
servers = ["{rdap_server.base('rdap')}"]
timeout = 0.8

[audit.lists]
ip_networks = "lists/ip_net.deny.lst"
reverse_hostname = "lists/rev_host.deny.lst"
network_name = "lists/net_name.deny.lst"
geo_location_ids = "lists/maxmind/geo_loc.deny.lst"

[audit.allow]
ip_networks = "lists/allow/ip_net.allow.lst"

[audit.allow.users."traveller@example.com"]
ip_networks = ["203.0.113.0/24"]
"""
    cfg = appauth_config_factory(audit=True, extra_toml=extra)
    lists = cfg.dir / "lists"
    for name, text in LISTS.items():
        path = lists / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in (lists, lists / "maxmind", lists / "allow"):
        os.chmod(d, 0o755)
    audit_log = cfg.dir / "audit.log"
    audit_log.touch()
    os.chown(audit_log, *dovecot_ids())
    sock_path = cfg.dir / "syslog.sock"
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(sock_path))
    os.chmod(sock_path, 0o666)  # user dovecot sends to it
    base = cfg.path.read_text().replace(
        "[audit]\n",
        "[audit]\n"
        f"global_networks = {toml_list(GLOBAL_NETWORKS)}\n"
        f'log_file = "{audit_log}"\n'
        f'syslog_socket = "{sock_path}"\n'
        'journal = "no"\n'
        f"deadline = {DEADLINE}\n",
        1,
    )
    cfg.path.write_text(base)
    try:
        yield AuditSetup(cfg=cfg, base_text=base, audit_log=audit_log, syslog=syslog, lists=lists,
                         dns_port=dns_server.port)
    finally:
        syslog.close()


@pytest.fixture
def server(dovecot: DovecotServer, setup: AuditSetup) -> DovecotServer:
    dovecot.reconfigure(passdb=checkpassword_passdb(setup.cfg.path))
    setup.cfg.path.write_text(setup.base_text)
    return dovecot


@pytest.fixture(autouse=True)
def no_secret_in_dovecot_output(dovecot: DovecotServer, setup: AuditSetup) -> Iterator[None]:
    # the test syslog socket queues only ~10 datagrams (net.unix.max_dgram_qlen): empty it
    setup.drain_syslog()
    log_mark = dovecot.log_mark()
    stdio_mark = dovecot.stdio_path.stat().st_size if dovecot.stdio_path.exists() else 0
    yield
    time.sleep(0.05)
    text = dovecot.log_since(log_mark)
    if dovecot.stdio_path.exists():
        with open(dovecot.stdio_path, "rb") as f:
            f.seek(stdio_mark)
            text += f.read().decode(errors="replace")
    leaked = sorted(s for s in SECRETS if s in text)
    assert not leaked, f"secrets in Dovecot's log/stderr: {leaked}"
    assert "$6$" not in text, "a password hash in Dovecot's log/stderr"
    assert "Traceback" not in text, text


# --- deny and allow through Dovecot -----------------------------------------------------
def test_denied_ip_refused_logged_and_not_recorded(server, setup):
    pwid, password = seed_password(setup.cfg, "alice@example.com")
    deny_file = setup.lists / "ip_net.deny.lst"
    mark, audit_mark = server.log_mark(), setup.audit_mark()
    setup.drain_syslog()
    ok, text = server.imap_login("alice@example.com", password, client_ip="203.0.113.9")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    reason = f"ip_networks: {deny_file}:2 matched 203.0.113.9"
    log = settle_log(server, mark, r"denied by audit")
    assert our_lines(log) == [line for line in log.splitlines() if "auth: Error: dovecot-appauth: " in line]
    [line] = our_lines(log)
    assert line.endswith(f"dovecot-appauth: user alice@example.com: login from 203.0.113.9 denied by audit: {reason}")
    audit = setup.audit_line_for(audit_mark, "203.0.113.9")
    assert audit.startswith("user=<alice@example.com>, service=imap, ip=203.0.113.9, host=<>, asn=AS64500, ")
    assert "net_name=<EXAMPLE-HOSTING-20240101>" in audit and "city=<550478/Khasavyurt>" in audit, audit
    assert audit.endswith(f", result=deny, reason=<{reason}>"), audit
    # the same line went to syslog: facility mail, severity info, identifier mail-audit
    setup.syslog.settimeout(2)
    datagram = setup.syslog.recv(65536).decode()
    assert re.match(r"<22>\w{3} [ \d]\d \d\d:\d\d:\d\d mail-audit\[\d+\]: ", datagram), datagram
    assert datagram.endswith(": " + audit), datagram
    assert log_rows(setup.cfg, pwid) == []


def test_allowed_ip_accepted_and_log_row_enriched(server, setup):
    pwid, password = seed_password(setup.cfg, "bob@example.com")
    audit_mark = setup.audit_mark()
    ok, text = server.imap_login("bob@example.com", password, client_ip="198.51.100.7")
    assert ok, text + "\n" + server.log_text()[-2000:]
    assert log_rows(setup.cfg, pwid) == [
        ("imap", "198.51.100.7", "dsl-7.pool.example.net", "Frankfurt am Main, Hesse, Germany", "Example Telecom GmbH"),
    ]
    audit = setup.audit_line_for(audit_mark, "198.51.100.7")
    for part in ("user=<bob@example.com>, service=imap, ip=198.51.100.7, host=dsl-7.pool.example.net, asn=AS64501",
                 "as_org=<Example Telecom GmbH>", "net_name=<DE-EXAMPLE-TELECOM-2024>", "net_cc=DE",
                 "city=<2925533/Frankfurt am Main>", "subdivision=<2905330/Hesse>", "country=<2921044/Germany>",
                 "lat=50.1188, lon=8.6843, rad=20km", ", result=unknown, reason=<no list matched>"):
        assert part in audit, (part, audit)
    # the CGNAT range counts as global: judged, enriched, recorded
    ok, text = server.imap_login("bob@example.com", password, client_ip="100.64.1.1")
    assert ok, text
    row = log_rows(setup.cfg, pwid)[-1]
    assert row[:3] == ("imap", "100.64.1.1", "cgnat-1.carrier.example") and row[4] == "Example CGNAT Carrier", row


@pytest.mark.parametrize("ip, kind, value", [
    ("192.0.2.10", "reverse_hostname", "host-10.cloud.example.com"),  # from DNS
    ("192.0.2.20", "network_name", "EXAMPLE-CLOUD-NET"),  # from RDAP
    ("2001:db8:8000::5", "geo_location_ids", "1850147"),  # from MaxMind, over IPv6
])
def test_each_source_can_deny_through_dovecot(server, setup, ip, kind, value):
    _, password = seed_password(setup.cfg, "carol@example.com")
    mark, audit_mark = server.log_mark(), setup.audit_mark()
    ok, text = server.imap_login("carol@example.com", password, client_ip=ip)
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    log = settle_log(server, mark, "denied by audit")
    [line] = our_lines(log)
    assert f"login from {ip} denied by audit: {kind}: " in line and value in line, line
    audit = setup.audit_line_for(audit_mark, ip)
    assert ", result=deny, reason=<" + kind in audit, audit


def test_allow_list_beats_deny_list(server, setup):
    pwid, password = seed_password(setup.cfg, "dave@example.com")
    audit_mark = setup.audit_mark()
    ok, text = server.imap_login("dave@example.com", password, client_ip="203.0.113.66")  # denied /24, allowed /28
    assert ok, text + "\n" + server.log_text()[-2000:]
    audit = setup.audit_line_for(audit_mark, "203.0.113.66")
    allow_file = setup.lists / "allow" / "ip_net.allow.lst"
    assert audit.endswith(f", result=allow, reason=<allow ip_networks: {allow_file}:1 matched 203.0.113.66>"), audit
    assert log_rows(setup.cfg, pwid) == [
        ("imap", "203.0.113.66", "vps66.hosting.example", "Khasavyurt, Dagestan, Russia", "Example Hosting"),
    ]
    # a per-user allow entry (inline in the config) lets only that user in from the denied net
    _, travel_pw = seed_password(setup.cfg, "traveller@example.com")
    assert server.imap_login("traveller@example.com", travel_pw, client_ip="203.0.113.10").ok
    assert not server.imap_login("dave@example.com", password, client_ip="203.0.113.10").ok
    assert "result=allow, reason=<user-allow ip_networks: " in setup.audit_lines(audit_mark)[-2]


def test_list_edit_applies_at_next_login(server, setup):
    _, password = seed_password(setup.cfg, "erin@example.com")
    deny_file = setup.lists / "ip_net.deny.lst"
    original = deny_file.read_text()
    assert server.imap_login("erin@example.com", password, client_ip="198.51.100.77").ok
    try:
        deny_file.write_text(original + "198.51.100.77/32  # added by the test\n")
        ok, text = server.imap_login("erin@example.com", password, client_ip="198.51.100.77")
        assert not ok and "AUTHENTICATIONFAILED" in text, text
    finally:
        deny_file.write_text(original)
    assert server.imap_login("erin@example.com", password, client_ip="198.51.100.77").ok


@pytest.mark.parametrize("how", ["moved", "chmod-000"])
def test_unreadable_deny_list_fails_closed_through_dovecot(server, setup, how):
    """Issue 15 item 1: a deny list the program (user dovecot) cannot read is no open gate."""
    _, password = seed_password(setup.cfg, "nina@example.com")
    deny_file = setup.lists / "ip_net.deny.lst"
    moved = deny_file.with_suffix(".away")
    audit_mark, mark = setup.audit_mark(), server.log_mark()
    try:
        if how == "moved":
            deny_file.rename(moved)
        else:
            os.chmod(deny_file, 0o600)  # root's only
        ok, text = server.imap_login("nina@example.com", password, client_ip="203.0.113.9")
        assert not ok and "UNAVAILABLE" in text, text
        reason = "file not found" if how == "moved" else "not readable by uid"
        log = settle_log(server, mark, "dovecot-appauth: deny list ip_networks")
        [line] = our_lines(log)
        assert f"dovecot-appauth: deny list ip_networks {deny_file}: {reason}" in line, line
        assert not [x for x in setup.audit_lines(audit_mark) if "ip=203.0.113.9," in x]
        with setup.changed(unreadable_list='"skip"'):
            mark = server.log_mark()
            ok, text = server.imap_login("nina@example.com", password, client_ip="198.51.100.78")
            assert ok, text
            log = settle_log(server, mark, "going on without it")
            assert f"deny list ip_networks {deny_file}: {reason}" in our_lines(log)[0], log
    finally:
        if moved.exists():
            moved.rename(deny_file)
        os.chmod(deny_file, 0o644)


def test_audit_only_logs_deny_but_lets_in(server, setup):
    pwid, password = seed_password(setup.cfg, "frank@example.com")
    audit_mark, mark = setup.audit_mark(), server.log_mark()
    with setup.changed(audit_only="true"):
        ok, text = server.imap_login("frank@example.com", password, client_ip="203.0.113.11")
    assert ok, text
    audit = setup.audit_line_for(audit_mark, "203.0.113.11")
    assert ", result=deny-audit-only, reason=<audit-only, not enforced: ip_networks: " in audit, audit
    assert [r[1] for r in log_rows(setup.cfg, pwid)] == ["203.0.113.11"]
    time.sleep(0.15)
    assert our_lines(server.log_since(mark)) == []


def test_local_client_is_exempt_and_logged(server, setup):
    pwid, password = seed_password(setup.cfg, "grace@example.com")
    audit_mark = setup.audit_mark()
    ok, text = server.imap_login("grace@example.com", password)  # from 127.0.0.1
    assert ok, text
    audit = setup.audit_line_for(audit_mark, "127.0.0.1")
    assert ", result=allow, reason=<source: 127.0.0.1 is local" in audit, audit
    assert log_rows(setup.cfg, pwid) == [("imap", "127.0.0.1", "<>", "local network", "")]


def test_local_network_client_is_not_sent_to_rdap_and_keeps_the_zz_whois_part(server, setup, rdap_server):
    _, password = seed_password(setup.cfg, "judy@example.com")
    audit_mark, before = setup.audit_mark(), len(rdap_server.requests)

    def office(text: str) -> str:
        return text + '\n[audit.local_networks]\n"10.9.0.0/16" = "Office LAN"\n'

    with setup.changed(office):
        ok, text = server.imap_login("judy@example.com", password, client_ip="10.9.8.7")
    assert ok, text
    assert rdap_server.requests[before:] == []  # upstream never asked a registry about it either
    audit = setup.audit_line_for(audit_mark, "10.9.8.7")
    assert (", asn=None, as_cc=ZZ, as_desc=<local network>, as_org=<None>, net_name=<Office LAN>, net_cc=ZZ, "
            "entity=, ") in audit, audit
    assert ", result=allow, reason=<source: 10.9.8.7 is local (Office LAN)>" in audit


def test_origin_as_name_denies_through_dovecot(server, setup, dns_server):
    """The origin-AS source (Team Cymru's TXT records on the local DNS server) feeds the
    as_names list, from a commented upstream-style list file."""
    _, password = seed_password(setup.cfg, "kim@example.com")
    names = setup.lists / "as_dscr.deny.lst"
    names.write_text("# the origin-AS service's format: NAME - description, CC\n"
                     "EXAMPLE-TELECOM - Example Telecom GmbH, DE\n")
    before = len(dns_server.queries)

    def origin_first(text: str) -> str:
        text = text.replace("[audit.lists]\n", f'[audit.lists]\nas_names = "{names}"\n', 1)
        return text + '\n[audit.origin_as]\nenabled = true\norder = "origin-first"\n'

    mark, audit_mark = server.log_mark(), setup.audit_mark()
    with setup.changed(origin_first):
        ok, text = server.imap_login("kim@example.com", password, client_ip="198.51.100.60")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    [line] = our_lines(settle_log(server, mark, "denied by audit"))
    assert f"denied by audit: as_names: {names}:2 matched EXAMPLE-TELECOM - Example Telecom GmbH, DE" in line
    assert "60.100.51.198.origin.asn.cymru.com." in dns_server.queries[before:]
    assert ", result=deny, reason=<as_names: " in setup.audit_line_for(audit_mark, "198.51.100.60")


def test_doveadm_auth_test_with_rip(server, setup):
    pwid, password = seed_password(setup.cfg, "heidi@example.com")
    audit_mark = setup.audit_mark()
    rc, out = server.doveadm_auth_test("heidi@example.com", password, service="smtp", rip="203.0.113.12")
    assert rc == 77, out
    rc, out = server.doveadm_auth_test("heidi@example.com", password, service="smtp", rip="198.51.100.8")
    assert rc == 0, out
    assert ", service=smtp, ip=203.0.113.12, " in setup.audit_line_for(audit_mark, "203.0.113.12")
    assert log_rows(setup.cfg, pwid) == [("smtp", "198.51.100.8", "<>", "Frankfurt am Main, Hesse, Germany",
                                          "Example Telecom GmbH")]


def test_blackholed_resolver_login_finishes_within_deadline(server, setup, blackhole_dns):
    """A resolver that never answers (and a DNS timeout longer than the deadline): the
    deadline ends the wait, the login goes on with what MaxMind and RDAP delivered."""
    pwid, password = seed_password(setup.cfg, "ivan@example.com")
    warm = time.monotonic()
    assert server.imap_login("ivan@example.com", password, client_ip="198.51.100.40").ok  # warm, cached
    baseline = time.monotonic() - warm

    def point_at_blackhole(text: str) -> str:
        return text.replace(f"port = {setup.dns_port}\ntimeout = 1.0", f"port = {blackhole_dns.port}\ntimeout = 5.0")

    audit_mark = setup.audit_mark()
    with setup.changed(point_at_blackhole):
        assert f"port = {blackhole_dns.port}" in setup.cfg.path.read_text()
        start = time.monotonic()
        ok, text = server.imap_login("ivan@example.com", password, client_ip="198.51.100.41")
        elapsed = time.monotonic() - start
    assert ok, text
    # margin: what a warm login costs here (process start, Dovecot), plus a second for a busy machine
    assert elapsed < DEADLINE + baseline + 1.0, (
        f"login took {elapsed:.2f}s (deadline {DEADLINE}s, warm login {baseline:.2f}s)")
    assert elapsed > DEADLINE * 0.9, f"login took {elapsed:.2f}s: the resolver was not asked?"
    audit = setup.audit_line_for(audit_mark, "198.51.100.41")
    assert "host=None" in audit and "(unknown: " in audit and "rdns" in audit, audit
    assert log_rows(setup.cfg, pwid)[-1] == ("imap", "198.51.100.41", "<>", "Frankfurt am Main, Hesse, Germany",
                                             "Example Telecom GmbH")


# --- the audit-only chain (examples/dovecot/auth-audit-chain.conf.ext) -------------------
CHAIN_USERS = {"chain-user": "Chain-pass-Tt71"}
SECRETS.update(CHAIN_USERS.values())
EXAMPLE_CHAIN = Path(__file__).parents[2] / "examples" / "dovecot" / "auth-audit-chain.conf.ext"


def _example_settings(number: int) -> str:
    """The settings of passdb `number` (1 or 2) of examples/dovecot/auth-audit-chain.conf.ext,
    without driver and args: the tests run exactly what the example says."""
    passdb = parse_passdbs(EXAMPLE_CHAIN.read_text())[number - 1]
    return "\n".join(f"{k} = {v}" for k, v in passdb.settings.items() if k not in ("driver", "args"))


EXAMPLE_FIRST = _example_settings(1)
EXAMPLE_SECOND = _example_settings(2)
assert EXAMPLE_FIRST == ("result_success = continue-ok\nresult_failure = return-fail\n"
                         "override_fields = appauth_ok=yes"), EXAMPLE_FIRST
assert EXAMPLE_SECOND == "skip = unauthenticated\nresult_failure = return-fail\nresult_internalfail = return-ok"


@pytest.fixture
def chain(dovecot: DovecotServer, setup: AuditSetup, appauth_config_factory) -> Iterator[AppauthConfig]:
    """A passwd-file passdb then our program with --audit-chain; the config shares the lists,
    audit log and sources of ``setup`` but has no [userdb] (the passwd-file supplies it)."""
    passwd = write_passwd_file(dovecot.basedir / "chain.passwd", CHAIN_USERS, dovecot.mail_root)
    cfg = appauth_config_factory(f"sqlite:///{setup.cfg.db_path}", userdb={}, init_db=False)
    text = setup.base_text
    userdb = text[text.index("[userdb]\n"):text.index("[audit]\n")]
    cfg.path.write_text(text.replace(userdb, "[userdb]\n\n").replace('"lists/', f'"{setup.lists}/'))
    dovecot.reconfigure(passdb=audit_chain_passdbs(passwd, cfg.path, first_settings=EXAMPLE_FIRST,
                                                   second_settings=EXAMPLE_SECOND))
    yield cfg


def test_audit_chain_allows_and_denies(chain, dovecot, setup):
    user, password = next(iter(CHAIN_USERS.items()))
    audit_mark, mark = setup.audit_mark(), dovecot.log_mark()
    ok, text = dovecot.imap_login(user, password, client_ip="198.51.100.50")
    assert ok, text + "\n" + dovecot.log_text()[-2000:]
    assert "SELECT OK" in text
    assert setup.audit_line_for(audit_mark, "198.51.100.50").startswith(f"user=<{user}>, service=imap, ")
    ok, text = dovecot.imap_login(user, password, client_ip="203.0.113.13")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    assert ", result=deny, reason=<ip_networks: " in setup.audit_line_for(audit_mark, "203.0.113.13")
    settle_log(dovecot, mark, rf"dovecot-appauth: user {user}: login from 203.0.113.13 denied by audit")
    # a wrong password ends in the passwd-file passdb: never audited
    ok, text = dovecot.imap_login(user, WRONG, client_ip="198.51.100.51")
    assert not ok and "AUTHENTICATIONFAILED" in text, text
    assert not [line for line in setup.audit_lines(audit_mark) if "ip=198.51.100.51," in line]
    # the SASL path
    assert dovecot.doveadm_auth_test(user, password, service="smtp", rip="198.51.100.52")[0] == 0
    assert dovecot.doveadm_auth_test(user, password, service="smtp", rip="203.0.113.14")[0] == 77


def test_audit_chain_refuses_what_a_list_it_cannot_read_should_judge(chain, dovecot, setup):
    """The example maps 111 to return-ok: a deny list the program cannot read must refuse
    (exit 1), or every login from a listed network would get in with the right password."""
    user, password = next(iter(CHAIN_USERS.items()))
    deny_file = setup.lists / "ip_net.deny.lst"
    moved = deny_file.with_suffix(".away")
    mark = dovecot.log_mark()
    deny_file.rename(moved)
    try:
        ok, text = dovecot.imap_login(user, password, client_ip="203.0.113.15")
        assert not ok and "AUTHENTICATIONFAILED" in text, text
        settle_log(dovecot, mark, rf"user {user}: --audit-chain refused the login: deny list ip_networks")
    finally:
        moved.rename(deny_file)


def dovecot_chain_warnings(cfg: AppauthConfig, dovecot: DovecotServer) -> list[str]:
    """check-config's lines about Dovecot's passdb chain (doveconf -n of the running config)."""
    res = run_cli(cfg.path, "check-config", "--no-database", "--dovecot-config", str(dovecot.conf_path),
                  check=False)
    return [line for line in res.stdout.splitlines() if "Dovecot" in line]


def test_audit_chain_example_setup_gives_no_check_config_warning(chain, dovecot):
    assert dovecot_chain_warnings(chain, dovecot) == []


# --audit-chain checks no password. Misplaced (first passdb, or without `skip = unauthenticated`
# after a passdb whose failure goes on) it used to answer 0 for any password; now it refuses
# whatever lacks the marker appauth_ok=yes that the passdb before it sets on success.
MISPLACED = {
    # ours first (Dovecot's default results), then the passwd-file that checks passwords
    "first": ("ours", "passwd"),
    # ours alone: nobody checks the password at all
    "alone": ("ours",),
    # the passwd-file with the marker but its failure goes on (the default), ours without skip
    "no-skip": ("passwd", "ours"),
}


@pytest.mark.parametrize("layout", sorted(MISPLACED))
def test_audit_chain_misplaced_never_lets_a_wrong_password_in(chain, dovecot, setup, layout):
    passwd = dovecot.basedir / "chain.passwd"
    blocks = {
        "ours": checkpassword_passdb(chain.path, "--audit-chain",
                                     settings="result_failure = return-fail" if layout == "no-skip" else ""),
        "passwd": passwd_file_passdb(passwd, "result_success = continue-ok\noverride_fields = appauth_ok=yes"
                                     if layout == "no-skip" else "override_fields = appauth_ok=yes"),
    }
    # a userdb of its own, as on most hosts: a login the passdbs accept then really logs in
    # (with prefetch alone, a login no passdb gave userdb fields ends as an internal error)
    uid, gid = dovecot_ids()
    userdb = DEFAULT_USERDB + (f"userdb {{\n  driver = static\n  args = uid={uid} gid={gid} "
                               f"home={dovecot.mail_root}/%u\n}}\n")
    dovecot.reconfigure(passdb="".join(blocks[name] for name in MISPLACED[layout]), userdb=userdb)
    try:
        _misplaced_chain_refuses(chain, dovecot, layout)
    finally:
        dovecot.reconfigure(userdb=DEFAULT_USERDB)


def _misplaced_chain_refuses(chain: AppauthConfig, dovecot: DovecotServer, layout: str) -> None:
    user, password = next(iter(CHAIN_USERS.items()))
    mark = dovecot.log_mark()
    wrong = dovecot.imap_login(user, WRONG, client_ip="198.51.100.60")
    assert not wrong.ok and "AUTHENTICATIONFAILED" in wrong.text, wrong.text
    assert dovecot.doveadm_auth_test(user, WRONG, rip="198.51.100.61")[0] == 77
    log = settle_log(dovecot, mark, "dovecot-appauth: user chain-user: --audit-chain refused the login: "
                                    "no earlier passdb set appauth_ok=yes")
    assert WRONG not in log
    right = dovecot.imap_login(user, password, client_ip="198.51.100.62")
    # the right password gets in where a passdb checks it; alone, nobody does
    assert right.ok is (layout != "alone"), right.text
    warnings = dovecot_chain_warnings(chain, dovecot)
    expected = {"first": "is the first passdb", "alone": "is the first passdb",
                "no-skip": "has no `skip = unauthenticated`"}[layout]
    assert len(warnings) == 1 and expected in warnings[0], warnings
    assert warnings[0].startswith("warning: Dovecot passdb #")


def test_audit_chain_without_the_marker_refuses_and_check_config_says_why(chain, dovecot, setup):
    """The example chain from before the marker (an upgrade without the new line): every login
    is refused with one line saying what is missing, and check-config says it beforehand."""
    user, password = next(iter(CHAIN_USERS.items()))
    passwd = dovecot.basedir / "chain.passwd"
    dovecot.reconfigure(passdb=audit_chain_passdbs(
        passwd, chain.path, first_settings=EXAMPLE_FIRST.replace("override_fields = appauth_ok=yes", ""),
        second_settings=EXAMPLE_SECOND))
    mark = dovecot.log_mark()
    refused = dovecot.imap_login(user, password, client_ip="198.51.100.63")
    assert not refused.ok and "AUTHENTICATIONFAILED" in refused.text, refused.text
    log = settle_log(dovecot, mark, "--audit-chain refused the login")
    assert len(our_lines(log)) == 1 and "override_fields = appauth_ok=yes" in our_lines(log)[0], log
    warnings = dovecot_chain_warnings(chain, dovecot)
    assert len(warnings) == 1 and "no passdb before it sets appauth_ok=yes" in warnings[0], warnings


def test_audit_chain_internal_failure_as_the_example_documents(chain, dovecot, setup):
    """The example sets `result_internalfail = return-ok`: when our program fails (exit 111)
    the login the first passdb accepted goes through; `return-fail` fails closed."""
    user, password = next(iter(CHAIN_USERS.items()))
    os.chmod(chain.path, 0o600)  # root-only: the program (user dovecot) exits 111
    try:
        mark = dovecot.log_mark()
        ok, text = dovecot.imap_login(user, password, client_ip="203.0.113.15")  # would be denied
        assert ok, text
        log = settle_log(dovecot, mark, "dovecot-appauth: configuration: ")
        assert "not readable by uid" in our_lines(log)[0], log
        passwd = dovecot.basedir / "chain.passwd"
        fail_closed = EXAMPLE_SECOND.replace("result_internalfail = return-ok", "result_internalfail = return-fail")
        os.chmod(chain.path, 0o644)
        dovecot.reconfigure(passdb=audit_chain_passdbs(passwd, chain.path, first_settings=EXAMPLE_FIRST,
                                                       second_settings=fail_closed))
        os.chmod(chain.path, 0o600)
        ok, text = dovecot.imap_login(user, password, client_ip="198.51.100.53")
        # refused; Dovecot reports the internal failure to the client as such
        assert not ok and "UNAVAILABLE" in text, text
    finally:
        os.chmod(chain.path, 0o644)
