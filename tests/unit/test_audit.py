"""The audit line (audit/line.py): upstream's exact format, sanitising, journald fields, emit()."""

from __future__ import annotations

import io
import os
import re
import socket
import sys
import tempfile
import threading

import pytest

from dovecot_appauth.audit import line as audit_mod
from dovecot_appauth.audit.facts import NO_PTR, GeoName, IpFacts, MaxMindFacts, WhoisFacts
from dovecot_appauth.audit.line import (
    MAX_LINE_CHARS,
    emit,
    format_line,
    journal_datagram,
    journal_fields,
    syslog_datagram,
)
from dovecot_appauth.audit.lists import Lists, parse_list
from dovecot_appauth.audit.rules import SourceClass, SourceKind, classify_source, evaluate
from dovecot_appauth.config import AuditConfig
from tests.support.common import fill_datagram_queue

# The README's example lines (shared/seeds/004), without the syslog prefix.
VK_LINE = (
    "user=<honey-craig>, service=imap, ip=176.112.169.218, host=rimap26.i.mail.ru, asn=AS47764, as_cc=RU, "
    "as_desc=<VK-AS, RU>, as_org=<LLC VK>, net_name=<VK-FRONT>, net_cc=RU, entity=EY1327-RIPE, "
    "entity=ORG-LLCn4-RIPE, entity=RIPE-NCC-END-MNT, entity=VKCOMPANY-MNT, entity=VKNC, entity=MAIL-RU, "
    "city=<550478/Khasavyurt>, subdivision=<567293/Dagestan>, country=<2017370/Russia>, "
    "represented_country=<None/None>, registered_country=<2017370/Russia>, lat=43.2465, lon=46.59, rad=20km"
)
GOOGLE_LINE = (
    "user=<honey-gmail-smtp>, service=smtp, ip=209.85.218.53, host=mail-ej1-f53.google.com, asn=AS15169, "
    "as_cc=US, as_desc=<GOOGLE, US>, as_org=<GOOGLE>, net_name=<GOOGLE>, net_cc=None, entity=GOGL, "
    "city=<None/None>, country=<6252001/United States>, represented_country=<None/None>, "
    "registered_country=<6252001/United States>, lat=37.751, lon=-97.822, rad=1000km"
)
LOCAL_LINE = (
    "user=<honey>, service=imap, ip=172.17.1.204, host=dhcp204.internal, asn=None, as_cc=ZZ, "
    "as_desc=<MPI PKS local network>, as_org=<None>, net_name=<DHCP Network>, net_cc=ZZ, entity="
)

RUSSIA = GeoName(2017370, "Russia", "RU")
VK_FACTS = IpFacts(
    ip="176.112.169.218",
    rdns="rimap26.i.mail.ru",
    whois=WhoisFacts(
        asn=47764,
        as_cc="RU",
        as_desc="VK-AS, RU",
        net_name="VK-FRONT",
        net_cc="RU",
        entities=("EY1327-RIPE", "ORG-LLCn4-RIPE", "RIPE-NCC-END-MNT", "VKCOMPANY-MNT", "VKNC", "MAIL-RU"),
    ),
    maxmind=MaxMindFacts(
        city=GeoName(550478, "Khasavyurt"),
        subdivisions=(GeoName(567293, "Dagestan", "DA"),),
        country=RUSSIA,
        continent=GeoName(6255148, "Europe", "EU"),
        registered_country=RUSSIA,
        latitude=43.2465,
        longitude=46.59,
        accuracy_radius_km=20,
        asn=47764,
        as_org="LLC VK",
    ),
)
US = GeoName(6252001, "United States", "US")
GOOGLE_FACTS = IpFacts(
    ip="209.85.218.53",
    rdns="mail-ej1-f53.google.com",
    whois=WhoisFacts(
        asn=15169, as_cc="US", as_desc="GOOGLE, US", net_name="GOOGLE", net_cc=None, entities=("GOGL",)
    ),
    maxmind=MaxMindFacts(
        country=US,
        continent=GeoName(6255149, "North America", "NA"),
        registered_country=US,
        latitude=37.751,
        longitude=-97.822,
        accuracy_radius_km=1000,
        asn=15169,
        as_org="GOOGLE",
    ),
)


def global_verdict(facts: IpFacts, deny: dict[str, str] | None = None, **audit):
    lists = Lists()
    for kind, text in (deny or {}).items():
        lists.deny[kind] = tuple(parse_list(kind, text, f"conf/lists/{kind}.lst")[0])
    return evaluate("u", "imap", facts.ip, facts, lists, AuditConfig(**audit), SourceClass(SourceKind.GLOBAL))


# ---------------------------------------------------------------------------
# format_line


def test_format_line_reproduces_upstream_vk_example():
    assert format_line("honey-craig", "imap", "176.112.169.218", VK_FACTS, None) == VK_LINE


def test_format_line_reproduces_upstream_google_example():
    assert format_line("honey-gmail-smtp", "smtp", "209.85.218.53", GOOGLE_FACTS, None) == GOOGLE_LINE


def test_format_line_local_source_as_upstream():
    audit = AuditConfig(
        local_locationname="MPI PKS local network", local_networks={"172.17.0.0/16": "DHCP Network"}
    )
    source = classify_source("172.17.1.204", audit)
    facts = IpFacts("172.17.1.204", rdns="dhcp204.internal")
    verdict = evaluate("honey", "imap", "172.17.1.204", facts, Lists(), audit, source)
    line = format_line("honey", "imap", "172.17.1.204", facts, verdict)
    assert line == LOCAL_LINE + ", result=allow, reason=<source: 172.17.1.204 is local (DHCP Network)>"


def test_format_line_result_and_reason():
    verdict = global_verdict(VK_FACTS, {"as_numbers": "# x\n\nAS47764\n"})
    line = format_line("honey-craig", "imap", "176.112.169.218", VK_FACTS, verdict)
    assert line == VK_LINE + ", result=deny, reason=<as_numbers: conf/lists/as_numbers.lst:3 matched AS47764>"
    verdict = global_verdict(VK_FACTS, {"as_numbers": "AS47764"}, audit_only=True)
    assert ", result=deny-audit-only, reason=<audit-only, not enforced: as_numbers:" in format_line(
        "honey-craig", "imap", "176.112.169.218", VK_FACTS, verdict
    )
    verdict = global_verdict(VK_FACTS)
    assert format_line("u", "imap", "176.112.169.218", VK_FACTS, verdict).endswith(
        ", result=unknown, reason=<no list matched>"
    )


def test_format_line_unknown_values_print_none():
    line = format_line("u", "imap", "203.0.113.5", IpFacts("203.0.113.5"), None)
    assert line == (
        "user=<u>, service=imap, ip=203.0.113.5, host=None, asn=None, as_cc=None, as_desc=<None>, "
        "as_org=<None>, net_name=<None>, net_cc=None, entity=<>"
    )
    assert format_line("u", "imap", "203.0.113.5", None, None) == line
    # no PTR record is "<>"; whois known with no entities is an empty entity=
    facts = IpFacts("203.0.113.5", rdns=NO_PTR, whois=WhoisFacts())
    assert "host=<>, " in format_line("u", "imap", "203.0.113.5", facts, None)
    assert format_line("u", "imap", "203.0.113.5", facts, None).endswith("net_cc=None, entity=")


def test_a_real_name_never_prints_or_matches_as_no_ptr():
    """A PTR record `<>.` arrives escaped (sources/rdns.py): the line shows it escaped, not as
    `host=<>` ("no PTR"), and a reverse_hostname `<>` entry does not take it for "no PTR"."""
    from dovecot_appauth.audit.sources.rdns import name_text

    rdns = name_text((b"<>",))
    facts = IpFacts("203.0.113.5", rdns=rdns, whois=WhoisFacts())
    verdict = global_verdict(facts, {"reverse_hostname": "<>"})
    assert verdict.outcome.value == "unknown" and verdict.matched is None
    line = format_line("u", "imap", "203.0.113.5", facts, verdict)
    assert "host=<>" not in line and ", host=\\x5c\\x3c\\x5c\\x3e, " in line
    # the real "no PTR" still matches
    no_ptr = IpFacts("203.0.113.5", rdns=NO_PTR, whois=WhoisFacts())
    assert global_verdict(no_ptr, {"reverse_hostname": "<>"}).outcome.value == "deny"


def test_format_line_names_an_unreadable_maxmind_database_in_the_reason():
    facts = IpFacts("203.0.113.5", rdns=NO_PTR, whois=WhoisFacts(),
                    maxmind=MaxMindFacts(asn=64500, unavailable=("city",)))
    line = format_line("u", "imap", "203.0.113.5", facts, global_verdict(facts, {"geo_location_ids": "2017370"}))
    assert line.endswith(", result=unknown, reason=<no list matched (unknown: maxmind city)>"), line


def test_format_line_asn_falls_back_to_maxmind():
    facts = IpFacts("203.0.113.5", maxmind=MaxMindFacts(asn=64500, as_org="Example"))
    assert "asn=AS64500, " in format_line("u", "imap", "203.0.113.5", facts, None)


def test_format_line_every_subdivision():
    mm = MaxMindFacts(subdivisions=(GeoName(6269131, "England", "ENG"), GeoName(3333217, "Bristol", "BST")))
    line = format_line("u", "imap", "203.0.113.5", IpFacts("203.0.113.5", maxmind=mm), None)
    assert "city=<None/None>, subdivision=<6269131/England>, subdivision=<3333217/Bristol>, country=" in line


@pytest.mark.parametrize("evil", ["\n", "\r", "\x00", "\r\n", "\x1b[2J", "\u2028", "\x85", "\x7f"])
def test_format_line_sanitises_control_characters(evil):
    facts = IpFacts(
        "203.0.113.5",
        rdns=f"a{evil}Mai 01 04:06:34 honeypot mail-audit[1]: user=<root>",
        whois=WhoisFacts(as_desc=f"x{evil}y", net_name=f"n{evil}", entities=(f"E{evil}1",)),
        maxmind=MaxMindFacts(as_org=f"org{evil}", city=GeoName(1, f"c{evil}")),
    )
    line = format_line(f"us{evil}er", "imap", "203.0.113.5", facts, global_verdict(facts))
    assert line.isprintable()
    assert "\\x" in line or "\\u" in line
    assert line.count("user=") == 1 and line.count("mail-audit") == 1
    if evil == "\n":
        assert "host=a\\x0aMai\\x2001" in line and "as_desc=<x\\x0ay>" in line


def test_format_line_cannot_forge_fields():
    facts = IpFacts(
        "203.0.113.5",
        rdns="evil.example, asn=AS1, result=allow",
        whois=WhoisFacts(as_desc="x>, as_org=<forged", entities=("A, entity=B",)),
    )
    line = format_line("u>, service=<x", "imap", "203.0.113.5", facts, None)
    fields = re.findall(r"(?:^|, )(\w+)=", re.sub(r"<[^<>]*>", "<>", line))
    assert fields == [
        "user",
        "service",
        "ip",
        "host",
        "asn",
        "as_cc",
        "as_desc",
        "as_org",
        "net_name",
        "net_cc",
        "entity",
    ]
    assert "host=evil.example\\x2c\\x20asn\\x3dAS1" in line
    assert "as_desc=<x\\x3e, as_org=\\x3cforged>" in line
    assert "\\x5c" not in line
    assert format_line("a\\b", "imap", None, None, None).startswith("user=<a\\x5cb>")


def test_format_line_length_cap():
    facts = IpFacts(
        "203.0.113.5", rdns="a" * 5000, whois=WhoisFacts(as_desc="d" * 5000, entities=("E",) * 500)
    )
    verdict = global_verdict(facts)
    line = format_line("u" * 5000, "imap", "203.0.113.5", facts, verdict)
    assert len(line) <= MAX_LINE_CHARS
    assert "host=" + "a" * 256 + "..., " in line
    assert "entity=...+468" in line
    assert line.endswith(", result=unknown, reason=<no list matched (unknown: maxmind)>")


# ---------------------------------------------------------------------------
# journal_fields


def test_journal_fields_as_seed():
    fields = journal_fields("bbecker", "smtp", "209.85.218.53", GOOGLE_FACTS, global_verdict(GOOGLE_FACTS))
    expected = {
        "AUDIT_USER": "bbecker",
        "AUDIT_SERVICE": "smtp",
        "AUDIT_IP": "209.85.218.53",
        "AUDIT_REV_HOST": "mail-ej1-f53.google.com",
        "AUDIT_ASN": "AS15169",
        "AUDIT_AS_CC": "US",
        "AUDIT_AS_DESC": "GOOGLE, US",
        "AUDIT_NET_NAME": "GOOGLE",
        "AUDIT_NET_CC": "None",
        "AUDIT_ENTITIES": "['GOGL']",
        "AUDIT_BLOCKED": "False",
        "AUDIT_MATCHED": "None",
        "AUDIT_LOG": "True",
        "AUDIT_RESERVED": "False",
        "AUDIT_MAXMIND_CITY": "{'name': None, 'geoname_id': None, 'code': None}",
        "AUDIT_MAXMIND_COUNTRY": "{'name': 'United States', 'geoname_id': 6252001, 'code': 'US'}",
        "AUDIT_MAXMIND_REGISTERED_COUNTRY": "{'name': 'United States', 'geoname_id': 6252001, 'code': 'US'}",
        "AUDIT_MAXMIND_REPRESENTED_COUNTRY": "{'name': None, 'geoname_id': None, 'code': None}",
        "AUDIT_MAXMIND_CONTINENT": "{'name': 'North America', 'geoname_id': 6255149, 'code': 'NA'}",
        "AUDIT_MAXMIND_SUBDIVISIONS": "()",
        "AUDIT_MAXMIND_POSTAL_CODE": "None",
        "AUDIT_MAXMIND_LOCATION": "{'accuracy_radius': 1000, 'latitude': 37.751, 'longitude': -97.822, "
        "'time_zone': None}",
    }
    for key, value in expected.items():
        assert fields[key] == value, key
    assert fields["AUDIT_RESULT"] == "unknown" and fields["AUDIT_REASON"] == "no list matched"
    assert fields["AUDIT_AS_ORG"] == "GOOGLE"
    assert all(k.startswith("AUDIT_") for k in fields)


def test_journal_fields_deny_and_sanitised():
    facts = IpFacts("203.0.113.5", rdns="a\nb", whois=WhoisFacts(asn=64500))
    fields = journal_fields(
        "u", "imap", "203.0.113.5", facts, global_verdict(facts, {"as_numbers": "AS64500"})
    )
    assert fields["AUDIT_BLOCKED"] == "True" and fields["AUDIT_MATCHED"] == "as_numbers"
    assert fields["AUDIT_REV_HOST"] == "a\\x0ab"
    assert "AUDIT_MAXMIND_CITY" not in fields  # no MaxMind data, as upstream
    fields = journal_fields(
        "u", "imap", "203.0.113.5", facts, global_verdict(facts, {"as_numbers": "AS64500"}, audit_only=True)
    )
    assert fields["AUDIT_BLOCKED"] == "False" and fields["AUDIT_RESULT"] == "deny-audit-only"


# ---------------------------------------------------------------------------
# emit


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="aa-", dir="/tmp")  # AF_UNIX paths are limited to ~107 bytes
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def test_syslog_datagram_format():
    audit = AuditConfig(syslog_identifier="mail-audit", syslog_facility="mail")
    data = syslog_datagram("user=<u>", audit, 0.0, 1234).decode()
    assert re.fullmatch(r"<22>(Jan|Dec) [ 0-9]\d \d\d:\d\d:\d\d mail-audit\[1234\]: user=<u>", data), data
    audit = AuditConfig(syslog_identifier="x y:z", syslog_facility="local3")
    assert syslog_datagram("l", audit, 0.0, 1).decode().startswith("<158>")
    assert " x\\x20y\\x3az[1]: l" in syslog_datagram("l", audit, 0.0, 1).decode()


def test_emit_to_a_real_syslog_socket(sock_dir):
    path = os.path.join(sock_dir, "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    try:
        audit = AuditConfig(syslog_socket=path, journal="no", syslog_facility="auth")
        line = format_line("honey-craig", "imap", "176.112.169.218", VK_FACTS, None)
        err = io.StringIO()
        emit(line, journal_fields("u", "imap", "176.112.169.218", VK_FACTS, None), audit, err)
        data = server.recv(65536).decode()
    finally:
        server.close()
    assert err.getvalue() == ""
    assert re.fullmatch(
        r"<38>\w{3} [ 0-9]\d \d\d:\d\d:\d\d mail-audit\[\d+\]: " + re.escape(VK_LINE), data
    ), data
    assert f"[{os.getpid()}]" in data


def test_emit_to_a_stream_socket(sock_dir):
    path = os.path.join(sock_dir, "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(5)
    received = []

    def serve():
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(65536))

    t = threading.Thread(target=serve)
    t.start()
    try:
        emit("hello", {}, AuditConfig(syslog_socket=path, journal="no"), io.StringIO())
        t.join(5)
    finally:
        server.close()
    assert received and received[0].endswith(b"mail-audit[%d]: hello\0" % os.getpid())


def test_emit_never_raises(sock_dir):
    err = io.StringIO()
    emit("line", {}, AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="no"), err)
    assert err.getvalue().count("\n") == 1 and "audit line not logged" in err.getvalue()
    emit("line", {}, AuditConfig(syslog_socket="/dev/null", journal="no"), None)  # no stderr at all

    class Broken(io.StringIO):
        def write(self, s):
            raise OSError("stderr closed")

    emit("line", {}, AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="no"), Broken())


def _journal_socket(monkeypatch, sock_dir: str) -> socket.socket:
    """A datagram socket where journald's would be (JOURNAL_SOCKET points at it): what a
    journald would receive arrives there."""
    path = os.path.join(sock_dir, "journal")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    monkeypatch.setattr(audit_mod, "JOURNAL_SOCKET", path)
    return server


def parse_journal_datagram(data: bytes) -> list[tuple[str, str]]:
    """journald's native protocol, read as journald reads it (a test of our writer by an
    independent reader): `KEY=value\\n`, or `KEY\\n` + 64-bit little-endian length + value + `\\n`."""
    fields, pos = [], 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        head = data[pos:end]
        if b"=" in head:
            key, _, value = head.partition(b"=")
            pos = end + 1
        else:
            key, size = head, int.from_bytes(data[end + 1:end + 9], "little")
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n"
            pos = end + 10 + size
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", key), key
        fields.append((key.decode(), value.decode()))
    return fields


def test_journal_datagram_is_journalds_native_protocol():
    data = journal_datagram("the line", {"AUDIT_USER": "u", "AUDIT_NOTE": "two\nlines"},
                            identifier="mail-audit", facility=2)
    assert data.startswith(b"MESSAGE=the line\nPRIORITY=6\nSYSLOG_IDENTIFIER=mail-audit\nSYSLOG_FACILITY=2\n")
    # a value with a newline: length-prefixed, never a second field
    assert b"AUDIT_NOTE\n" + (9).to_bytes(8, "little") + b"two\nlines\n" in data
    assert parse_journal_datagram(data) == [("MESSAGE", "the line"), ("PRIORITY", "6"),
                                            ("SYSLOG_IDENTIFIER", "mail-audit"), ("SYSLOG_FACILITY", "2"),
                                            ("AUDIT_USER", "u"), ("AUDIT_NOTE", "two\nlines")]


def test_emit_uses_journald_when_available(sock_dir, monkeypatch):
    server = _journal_socket(monkeypatch, sock_dir)
    audit = AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="auto")
    err = io.StringIO()
    try:
        emit(VK_LINE, journal_fields("u", "imap", "176.112.169.218", VK_FACTS, None), audit, err)
        entry = dict(parse_journal_datagram(server.recv(65536)))
        # journal = "no" skips it
        emit("x", {}, AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="no"), err)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recv(65536)
    finally:
        server.close()
    assert err.getvalue().count("\n") == 1 and "audit line not logged" in err.getvalue()  # the "no" one
    assert entry["MESSAGE"] == VK_LINE
    assert (entry["PRIORITY"], entry["SYSLOG_IDENTIFIER"], entry["SYSLOG_FACILITY"]) == ("6", "mail-audit", "2")
    assert entry["AUDIT_USER"] == "u" and entry["AUDIT_IP"] == "176.112.169.218"
    assert entry == {"MESSAGE": VK_LINE, "PRIORITY": "6", "SYSLOG_IDENTIFIER": "mail-audit", "SYSLOG_FACILITY": "2",
                     **journal_fields("u", "imap", "176.112.169.218", VK_FACTS, None)}


def test_emit_makes_the_journald_fields_only_for_journald(sock_dir, monkeypatch):
    # write_audit_line passes a function: without journald nobody pays for the fields
    made = []

    def fields():
        made.append(1)
        return {"AUDIT_USER": "u"}

    server = _journal_socket(monkeypatch, sock_dir)
    try:
        emit("x", fields, AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="no"),
             io.StringIO())
        assert made == []
        emit("the line", fields, AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="auto"),
             io.StringIO())
        assert made == [1]
        assert parse_journal_datagram(server.recv(65536))[-1] == ("AUDIT_USER", "u")
    finally:
        server.close()


def _syslog_server(sock_dir: str) -> tuple[str, socket.socket]:
    path = os.path.join(sock_dir, "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    return path, server


def test_emit_journald_failure_falls_back_to_syslog(sock_dir, monkeypatch):
    # a journald socket file that nobody listens on
    journal_socket = os.path.join(sock_dir, "journal")
    open(journal_socket, "w").close()
    monkeypatch.setattr(audit_mod, "JOURNAL_SOCKET", journal_socket)
    path, server = _syslog_server(sock_dir)
    err = io.StringIO()
    try:
        emit("fallback line", {}, AuditConfig(syslog_socket=path, journal="yes"), err)
        assert server.recv(4096).endswith(b": fallback line")
    finally:
        server.close()
    assert "journald: ConnectionRefusedError" in err.getvalue() and "using syslog" in err.getvalue()


def _fill(server: socket.socket, path: str) -> None:
    """Fill the queue of `server` (nobody reads it) until a send would wait: a stuck daemon."""
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fill_datagram_queue(path)


def test_emit_a_stuck_journald_costs_the_login_one_timeout_then_syslog(sock_dir, monkeypatch):
    """sd_journal_send() would wait for a stuck journald for ever (holding the login and
    Dovecot's auth worker); emit() waits LOG_SOCKET_TIMEOUT, says so and uses syslog."""
    import time

    stuck = _journal_socket(monkeypatch, sock_dir)
    monkeypatch.setattr(audit_mod, "LOG_SOCKET_TIMEOUT", 0.3)
    path, server = _syslog_server(sock_dir)
    err = io.StringIO()
    try:
        _fill(stuck, audit_mod.JOURNAL_SOCKET)
        started = time.monotonic()
        emit("the line", {"AUDIT_USER": "u"}, AuditConfig(syslog_socket=path, journal="auto"), err)
        took = time.monotonic() - started
        assert server.recv(4096).endswith(b": the line")
    finally:
        stuck.close()
        server.close()
    assert 0.25 <= took < 3.0, took
    assert "journald: TimeoutError" in err.getvalue() and "using syslog" in err.getvalue()


def test_emit_a_stuck_syslog_costs_the_login_one_timeout(sock_dir, monkeypatch):
    import time

    monkeypatch.setattr(audit_mod, "LOG_SOCKET_TIMEOUT", 0.3)
    path, server = _syslog_server(sock_dir)
    err = io.StringIO()
    try:
        _fill(server, path)
        started = time.monotonic()
        emit("the line", {}, AuditConfig(syslog_socket=path, journal="no"), err)
        took = time.monotonic() - started
    finally:
        server.close()
    assert 0.25 <= took < 3.0, took
    assert "TimeoutError" in err.getvalue() and "audit line not logged" in err.getvalue()


def test_emit_on_serves_loop_never_waits_for_a_stuck_journald(sock_dir, monkeypatch):
    """On serve's event loop a full journald queue is WouldWait at once (the request runs
    again on a thread, which waits the timeout): the loop never waits."""
    import time

    from dovecot_appauth.core import WouldWait, run_on_loop

    stuck = _journal_socket(monkeypatch, sock_dir)
    monkeypatch.setattr(audit_mod, "LOG_SOCKET_TIMEOUT", 30.0)  # a wait for room would show
    try:
        _fill(stuck, audit_mod.JOURNAL_SOCKET)
        started = time.monotonic()
        with pytest.raises(WouldWait, match="journald's socket is full"):
            run_on_loop(emit, "the line", {}, AuditConfig(syslog_socket="", journal="auto"), io.StringIO())
        assert time.monotonic() - started < 10
    finally:
        stuck.close()


def test_emit_journal_yes_without_journald(sock_dir, monkeypatch):
    monkeypatch.setattr(audit_mod, "JOURNAL_SOCKET", os.path.join(sock_dir, "no-journal"))
    err = io.StringIO()
    emit("x", {}, AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="yes"), err)
    lines = err.getvalue().splitlines()
    # "yes": said on every login; then syslog (missing here too: said as well)
    assert len(lines) == 2 and "journald: FileNotFoundError" in lines[0] and "not logged" in lines[1]
    err = io.StringIO()
    emit("x", {}, AuditConfig(syslog_socket=os.path.join(sock_dir, "missing"), journal="auto"), err)
    assert "journald" not in err.getvalue()  # auto: quietly syslog


def test_audit_import_is_cheap():
    import subprocess

    code = (
        "import sys\nimport dovecot_appauth.audit.line\n"
        "bad = {'socket', 'logging', 'systemd', 'syslog'} & set(sys.modules)\nassert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
