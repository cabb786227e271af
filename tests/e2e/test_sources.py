"""The enrichment sources against real local servers and the committed test .mmdb files."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dovecot_appauth.audit.facts import NO_PTR, GeoName, WhoisFacts
from dovecot_appauth.audit.sources import SourceUnavailable, maxmind, rdap, rdns
from dovecot_appauth.config import DnsConfig, RdapConfig
from tests.support.common import missing_dependency
from tests.support.localservers import ASN_MMDB, CITY_MMDB

# the local-server fixtures; conftest.py registers the same plugin (a plugin loads once)

# ---------------------------------------------------------------------------- rDNS


@pytest.mark.parametrize(("ip", "name"), [
    ("192.0.2.10", "host-10.cloud.example.com"),
    ("203.0.113.66", "vps66.hosting.example"),
    ("2001:db8::25", "mail.v6.example.org"),
])
def test_rdns_lookup_found(dns_server, ip, name):
    assert rdns.lookup(ip, dns_server.dns_config(), 1.0) == name


def test_rdns_lookup_nxdomain_is_no_ptr(dns_server):
    assert rdns.lookup("192.0.2.99", dns_server.dns_config(), 1.0) == NO_PTR == "<>"


@pytest.mark.parametrize(("ptr", "text"), [
    ("<>", "\\<\\>"),
    ("<>.example", "\\<\\>.example"),
    ("a<b>c.example", "a\\<b\\>c.example"),
])
def test_rdns_name_that_looks_like_no_ptr_is_escaped(ptr, text):
    """A real PTR `<>.` (whoever holds the address's reverse zone writes it) never reads as
    NO_PTR ("<>", matched by a reverse_hostname `<>` entry as "no PTR"): `<` and `>` are
    backslash-escaped like dnspython's other special characters, through the local DNS server."""
    from tests.support.localservers import LocalDns

    with LocalDns(ptr={"192.0.2.77": ptr}) as server:
        name = rdns.lookup("192.0.2.77", server.dns_config(), 1.0)
    assert name == text and name != NO_PTR
    assert rdns.name_text(tuple(label.encode() for label in ptr.split("."))) == text


def test_rdns_lookup_servfail_raises(dns_server):
    with pytest.raises(rdns.RdnsError):
        rdns.lookup("198.51.100.250", dns_server.dns_config(), 1.0)


def test_rdns_lookup_black_hole_times_out_in_time(blackhole_dns):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        rdns.lookup("192.0.2.10", blackhole_dns.dns_config(), 0.4)
    assert time.monotonic() - start < 0.4 + 1.5  # a black hole never answers


def test_rdns_lookup_dropped_query_times_out(dns_server):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        rdns.lookup("203.0.113.99", dns_server.dns_config(), 0.3)
    assert time.monotonic() - start < 0.3 + 1.5  # the dropped query is never answered


# ---------------------------------------------------------------------------- MaxMind


def test_maxmind_lookup_city_fields(mmdb_paths):
    f = maxmind.lookup("198.51.100.7", *mmdb_paths)
    assert f.city == GeoName(2925533, "Frankfurt am Main", None)
    assert f.subdivisions == (GeoName(2905330, "Hesse", "HE"),)
    assert f.country == GeoName(2921044, "Germany", "DE")
    assert f.continent == GeoName(6255148, "Europe", "EU")
    assert f.registered_country == GeoName(2921044, "Germany", "DE")
    assert f.represented_country == GeoName()
    assert (f.latitude, f.longitude, f.accuracy_radius_km) == (50.1188, 8.6843, 20)
    assert f.postal_code == "60311"
    assert (f.asn, f.as_org) == (64501, "Example Telecom GmbH")
    assert f.place() == "Frankfurt am Main, Hesse, Germany"


@pytest.mark.parametrize(("ip", "country", "city", "asn", "org"), [
    ("192.0.2.10", "US", "Ashburn", 64496, "Example Cloud Inc."),
    ("192.0.2.200", "DE", "Ramstein-Miesenbach", 64497, "Example Defence Network"),
    ("203.0.113.66", "RU", "Khasavyurt", 64500, "Example Hosting"),
    ("100.64.1.1", "US", None, 64510, "Example CGNAT Carrier"),
    ("2001:db8::25", "NL", "Amsterdam", 64502, "Example IPv6 Net B.V."),
    ("2001:db8:8000::5", "JP", "Tokyo", 64503, "Example Far East Hosting"),
])
def test_maxmind_lookup_each_test_range(mmdb_paths, ip, country, city, asn, org):
    f = maxmind.lookup(ip, *mmdb_paths)
    assert (f.country.code, f.city.name, f.asn, f.as_org) == (country, city, asn, org)
    assert f.continent.code in ("EU", "NA", "AS")


def test_maxmind_lookup_represented_and_registered_country(mmdb_paths):
    f = maxmind.lookup("192.0.2.200", *mmdb_paths)
    assert f.represented_country == GeoName(6252001, "United States", "US")
    assert f.registered_country.code == "US"
    assert f.country.code == "DE"
    far = maxmind.lookup("203.0.113.66", *mmdb_paths)
    assert far.registered_country == GeoName(2750405, "The Netherlands", "NL")


def test_maxmind_lookup_country_only_range_has_no_city(mmdb_paths):
    f = maxmind.lookup("100.64.1.1", *mmdb_paths)
    assert f.city == GeoName() and f.subdivisions == () and f.postal_code is None
    assert f.accuracy_radius_km == 1000


def test_maxmind_lookup_address_not_in_database_is_empty(mmdb_paths):
    f = maxmind.lookup("10.1.2.3", *mmdb_paths)
    assert f.country == GeoName() and f.asn is None


def test_maxmind_lookup_missing_files_unavailable(tmp_path):
    with pytest.raises(maxmind.MaxMindUnavailable) as e:
        maxmind.lookup("192.0.2.10", str(tmp_path / "nope-city.mmdb"), str(tmp_path / "nope-asn.mmdb"))
    assert isinstance(e.value, SourceUnavailable)
    assert "nope-city.mmdb" in str(e.value)


def test_maxmind_lookup_garbage_file_unavailable(tmp_path):
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(maxmind.MaxMindUnavailable):
        maxmind.lookup("192.0.2.10", str(bad), None)


def test_maxmind_lookup_detailed_one_file_missing_keeps_the_other(mmdb_paths, tmp_path):
    facts, problems = maxmind.lookup_detailed("203.0.113.66", mmdb_paths[0], str(tmp_path / "asn.mmdb"))
    assert facts.country.code == "RU" and facts.asn is None
    assert facts.unavailable == ("asn",)  # unknown, not "this address has no AS"
    assert len(problems) == 1 and "asn.mmdb" in problems[0]
    facts, problems = maxmind.lookup_detailed("203.0.113.66", *mmdb_paths)
    assert facts.unavailable == () and problems == []


@pytest.mark.parametrize("child", [False, True])
def test_maxmind_truncated_city_file_is_named_unavailable_by_both_readers(tmp_path, child):
    """A truncated download of the City file next to an intact ASN file: the ASN facts, and
    the City part named as unavailable (its empty fields are not "no city"), by the pure
    reader and by the per-login program's C extension in its child."""
    if child and maxmind._extension() is None:
        missing_dependency("maxminddb's C extension is not built here")
    city = tmp_path / "city.mmdb"
    city.write_bytes(Path(CITY_MMDB).read_bytes()[:-200])
    facts, problems = _outcome("203.0.113.66", str(city), ASN_MMDB, child=child)
    assert facts.unavailable == ("city",) and facts.country == GeoName() and facts.latitude is None
    assert (facts.asn, facts.as_org) == (64500, "Example Hosting")
    assert [p for p in problems if str(city) in p and "C reader" not in p], problems


@pytest.mark.parametrize("number", ["AS64500", 1 << 40, 0])
@pytest.mark.parametrize("child", [False, True])
def test_maxmind_asn_record_without_an_as_number_is_a_damaged_file(tmp_path, number, child):
    """A readable ASN database whose record holds no 4-byte AS number (a genuine one always
    does): its AS part is unavailable and named, never stored (the audit event's row takes
    no integer past 2**63 - 1)."""
    if child and maxmind._extension() is None:
        missing_dependency("maxminddb's C extension is not built here")
    from mmdb_writer import MmdbU128, MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", languages=["en"], description="damaged",
                        ipv4_compatible=True)
    writer.insert_network(IPSet(["203.0.113.0/24"]), {
        "autonomous_system_number": number if isinstance(number, str) else MmdbU128(number),
        "autonomous_system_organization": "Example Hosting"})
    asn = tmp_path / "asn.mmdb"
    writer.to_db_file(str(asn))
    facts, problems = _outcome("203.0.113.66", CITY_MMDB, str(asn), child=child)
    assert facts.unavailable == ("asn",) and (facts.asn, facts.as_org) == (None, None)
    assert facts.country.code == "RU"
    assert problems == [f"{asn}: autonomous_system_number {str(number)!r} is no AS number (a damaged file?)"]
    # configured alone, no database is usable: the whole source is unavailable
    assert _outcome("203.0.113.66", None, str(asn), child=child) == ("unavailable", problems[0])


def test_maxmind_file_signature_changes_with_the_file(mmdb_paths, tmp_path):
    copy = tmp_path / "city.mmdb"
    shutil.copy(mmdb_paths[0], copy)
    before = maxmind.file_signature(str(copy))
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert maxmind.file_signature(str(copy)) != before


def test_maxmind_reader_is_kept_until_the_file_is_replaced(mmdb_paths, tmp_path):
    # what `serve` relies on: one open reader per file, a new one after geoipupdate's rename
    path = tmp_path / "geo.mmdb"
    shutil.copy(mmdb_paths[0], path)
    assert maxmind.lookup("198.51.100.7", str(path), None).country.code == "DE"
    first = maxmind._readers[str(path)][1]
    assert maxmind.lookup("198.51.100.7", str(path), None).country.code == "DE"
    assert maxmind._readers[str(path)][1] is first
    staged = tmp_path / "geo.mmdb.new"
    shutil.copy(mmdb_paths[1], staged)  # the ASN database: no country
    os.replace(staged, path)
    facts = maxmind.lookup("198.51.100.7", str(path), None)
    assert facts.country == GeoName()
    assert maxmind._readers[str(path)][1] is not first
    assert first.get("198.51.100.7")["country"]["iso_code"] == "DE"  # a request still using it is fine


def test_maxmind_reader_of_a_broken_file_is_dropped(mmdb_paths, tmp_path):
    path = tmp_path / "geo.mmdb"
    shutil.copy(mmdb_paths[0], path)
    maxmind.lookup("198.51.100.7", str(path), None)
    path.write_bytes(b"")  # truncated in place
    with pytest.raises(maxmind.MaxMindUnavailable):
        maxmind.lookup("198.51.100.7", str(path), None)
    assert str(path) not in maxmind._readers


# --- the per-login program's reader: maxminddb's C extension in a forked child ---------------

@contextlib.contextmanager
def per_login_process(on: bool = True):
    """What entry.checkpassword sets: maxmind.py then asks the C extension in a child."""
    import dovecot_appauth

    before = dovecot_appauth.per_login_process
    dovecot_appauth.per_login_process = on
    try:
        yield
    finally:
        dovecot_appauth.per_login_process = before


def _outcome(ip: str, city: str | None, asn: str | None, *, child: bool) -> tuple:
    with per_login_process(child):
        try:
            return maxmind.lookup_detailed(ip, city, asn)
        except maxmind.MaxMindUnavailable as e:
            return ("unavailable", str(e))


IN_TEST_DATABASES = ["192.0.2.10", "192.0.2.200", "198.51.100.7", "203.0.113.66", "100.64.1.2", "2001:db8::25",
                     "2001:db8:8000::1", "::ffff:198.51.100.7", "10.1.2.3"]


@settings(max_examples=120, deadline=None)
@given(ip=st.one_of(st.sampled_from(IN_TEST_DATABASES), st.ip_addresses(v=4).map(str),
                    st.ip_addresses(v=6).map(str)))
@example(ip="198.51.100.7")
def test_per_login_child_answers_as_the_pure_reader(ip):
    """The C extension in a forked child gives the facts (and problems) the pure-Python
    reader gives, for addresses in the test databases and any other."""
    if maxmind._extension() is None:
        missing_dependency("maxminddb's C extension is not built here")
    for city, asn in ((CITY_MMDB, ASN_MMDB), (CITY_MMDB, None), (None, ASN_MMDB)):
        assert _outcome(ip, city, asn, child=True) == _outcome(ip, city, asn, child=False), (ip, city, asn)


def test_per_login_child_reports_files_as_the_pure_reader(tmp_path, mmdb_paths):
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"not a maxmind database" * 10)
    empty = tmp_path / "empty.mmdb"
    empty.write_bytes(b"")
    missing = str(tmp_path / "missing.mmdb")
    files = (missing, str(garbage), str(empty))

    def shape(outcome: tuple) -> tuple:
        # the facts, and the files each problem names (the two readers word some errors differently)
        def named(text: str) -> list[str]:
            return [f for f in files if f in text]
        if outcome[0] == "unavailable":
            return "unavailable", named(outcome[1])
        return outcome[0], [named(p) for p in outcome[1]]

    for city, asn in ((missing, mmdb_paths[1]), (mmdb_paths[0], str(garbage)), (str(empty), None),
                      (missing, str(garbage))):
        child = _outcome("203.0.113.66", city, asn, child=True)
        assert shape(child) == shape(_outcome("203.0.113.66", city, asn, child=False)), (city, asn, child)


def test_per_login_child_crash_falls_back_to_the_pure_reader(tmp_path):
    """One corrupt byte crashes maxminddb 3.2's C extension (SIGSEGV): only the child dies;
    the lookup is made again with the pure-Python reader, and the crash is reported."""
    data = bytearray(Path(CITY_MMDB).read_bytes())
    data[1251] = 0xC2  # found by fuzzing (docs/SECURITY.md)
    city = tmp_path / "city.mmdb"
    city.write_bytes(bytes(data))
    facts, problems = _outcome("198.51.100.7", str(city), ASN_MMDB, child=True)
    assert (facts, problems[1:]) == _outcome("198.51.100.7", str(city), ASN_MMDB, child=False)
    assert problems[0].startswith(f"{city}: maxminddb's C reader died of signal {signal.SIGSEGV.value} "), problems


def test_per_login_child_is_killed_at_the_timeout(tmp_path):
    """A FIFO in place of the .mmdb: the child blocks opening it; at the timeout it is
    killed (nothing holds the FIFO open any more) and the source times out."""
    import threading

    fifo = tmp_path / "city.mmdb"
    os.mkfifo(fifo)

    def unblock() -> None:  # if the timeout did not work: end the child's wait so the test fails, not hangs
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Timer(20, unblock)
    watchdog.start()
    try:
        with per_login_process(), pytest.raises(TimeoutError):
            maxmind.lookup_detailed("198.51.100.7", str(fifo), None, timeout=0.5)
        with pytest.raises(OSError) as no_reader:
            os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        assert no_reader.value.errno == errno.ENXIO  # no process has it open (or is opening it) for reading
    finally:
        watchdog.cancel()


def test_per_login_child_holds_none_of_the_logins_descriptors():
    """Dovecot reads the reply pipe until every copy is closed: the child keeps only its
    result pipe, with 0-2 on /dev/null, and an alarm that ends it on its own."""
    import json as json_module

    login_pipe = os.pipe()  # stands for the login's fd 3/4 and Dovecot's stdout/stderr pipes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            keep = maxmind._child_alone(write_end, 5.0)
            import _signal

            fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
            state = {"keep": keep, "fds": fds, "std": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
                     "alarm": _signal.alarm(0)}
            os.write(keep, json_module.dumps(state).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        state = json_module.loads(f.read())
    _, status = os.waitpid(pid, 0)
    for fd in login_pipe:
        os.close(fd)
    assert status == 0
    # 0-2, the result pipe, and the descriptor listdir had open while it listed
    assert state["keep"] == write_end and {0, 1, 2, write_end} <= set(state["fds"]), state
    assert len(set(state["fds"]) - {0, 1, 2, write_end}) == 1, state  # login_pipe is gone
    assert state["std"] == ["/dev/null"] * 3 and 5 <= state["alarm"] <= 7, state


def test_maxmind_test_databases_read_like_geoip2(mmdb_paths):
    # the record layout geoip2's City/ASN models expect, read with the raw reader
    import maxminddb

    with maxminddb.open_database(mmdb_paths[0]) as r:
        assert r.metadata().database_type == "GeoIP2-City"
        rec = r.get("203.0.113.66")
    assert set(rec) >= {"city", "subdivisions", "country", "continent", "registered_country",
                        "location", "postal"}
    assert set(rec["location"]) == {"latitude", "longitude", "accuracy_radius", "time_zone"}
    with maxminddb.open_database(mmdb_paths[1]) as r:
        assert r.metadata().database_type == "GeoLite2-ASN"
        assert r.get("203.0.113.66") == {"autonomous_system_number": 64500,
                                         "autonomous_system_organization": "Example Hosting"}


# ---------------------------------------------------------------------------- RDAP


def test_rdap_lookup_ripe_shape_with_asn_hint(rdap_server):
    f = rdap.lookup("203.0.113.66", rdap_server.rdap_config(), 1.0, asn_hint=64500)
    assert f == WhoisFacts(
        asn=64500, as_cc="RU", as_desc="EXAMPLE-HOSTING-AS Example Hosting backbone, RU",
        net_name="EXAMPLE-HOSTING-20240101", net_cc="NL",
        entities=("ORG-EH1-TEST", "EHA1-TEST", "EH1-TEST", "EXAMPLE-HOSTING-MNT"),
    )


def test_rdap_lookup_arin_origin_autnum_wins_over_hint(rdap_server):
    f = rdap.lookup("198.51.100.7", rdap_server.rdap_config(), 1.0, asn_hint=1)
    assert f.asn == 64501
    # a "Registration Comments" remark is not a description
    assert f.as_desc == "EXAMPLE-TELECOM, DE" and f.as_cc == "DE"
    assert f.net_name == "DE-EXAMPLE-TELECOM-2024"


def test_rdap_lookup_without_asn_has_no_as_fields(rdap_server):
    f = rdap.lookup("2001:db8::25", rdap_server.rdap_config(), 1.0)
    assert (f.asn, f.as_desc, f.as_cc) == (None, None, None)
    assert (f.net_name, f.net_cc, f.entities) == ("EXAMPLE-V6-NET", "NL", ("ORG-EV6-TEST",))


def test_rdap_lookup_hint_function_is_called(rdap_server):
    f = rdap.lookup("2001:db8::25", rdap_server.rdap_config(), 1.0, asn_hint=lambda: 64502)
    assert f.as_desc == "EXAMPLE-V6 Example IPv6 Net, NL"


@pytest.mark.parametrize(("member", "origin", "expected"), [
    ("arin_originas0_originautnums", ["AS99999999999999999999"], 64500),
    ("arin_originas0_originautnums", [-7, "AS-7", "+64501", "AS0", 4294967296], 64500),
    ("arin_originas0_originautnums", ["AS99999999999999999999", "AS64501"], 64501),
    ("originAutnums", [99999999999999999999, "AS4294967295"], 4294967295),
    ("originAutnums", ["as64501"], 64501),
])
def test_rdap_origin_as_out_of_range_is_skipped(fresh_rdap_server, member, origin, expected):
    """Whoever registers the network writes its origin AS: a number that is no 4-byte AS
    number is skipped (the hint, MaxMind's AS, takes its place), never stored; it made
    SQLite raise OverflowError writing the audit event (a right password then failed
    temporarily), and the RDAP facts are cached for days."""
    fresh_rdap_server.networks["198.18.0.0/24"] = {
        "objectClassName": "ip network", "handle": "198.18.0.0 - 198.18.0.255", "name": "BIG-ORIGIN-NET",
        "country": "NL", member: origin}
    f = rdap.lookup("198.18.0.9", fresh_rdap_server.rdap_config(), 1.0, asn_hint=lambda: 64500)
    assert f.asn == expected and f.net_name == "BIG-ORIGIN-NET"
    asked = [r for r in fresh_rdap_server.requests if r.startswith("/rdap/autnum/")]
    assert asked == [f"/rdap/autnum/{expected}"]
    if expected == 64500:
        assert f.as_desc == "EXAMPLE-HOSTING-AS Example Hosting backbone, RU"
    # an impossible hint is no AS number either
    f = rdap.lookup("198.18.0.9", fresh_rdap_server.rdap_config(), 1.0, asn_hint=1 << 64)
    assert f.asn == (None if expected == 64500 else expected)


def test_rdap_lookup_unknown_address_gives_empty_facts(rdap_server):
    assert rdap.lookup("10.1.2.3", rdap_server.rdap_config(), 1.0) == WhoisFacts()


def test_rdap_lookup_through_http_bootstrap(rdap_server):
    boot: dict = {}
    f = rdap.lookup("192.0.2.10", rdap_server.rdap_config(mode=None), 1.0, bootstrap=boot)
    assert f.asn == 64496 and f.as_desc == "EXAMPLE-CLOUD Example Cloud backbone, US"
    assert f.entities == ("EXC-1-TEST", "EXC-ABUSE-TEST")
    assert set(boot) == {"ipv4", "asn"}


def test_rdap_lookup_through_file_bootstrap(rdap_server, tmp_path):
    for name in ("ipv4.json", "ipv6.json", "asn.json"):
        (tmp_path / name).write_text(json.dumps(rdap_server.bootstrap_doc(name)))
    cfg = RdapConfig(enabled=True, bootstrap_url=tmp_path.as_uri() + "/", timeout=1.0)
    f = rdap.lookup("2001:db8::25", cfg, 1.0, asn_hint=64502)
    assert f.net_name == "EXAMPLE-V6-NET" and f.as_cc == "NL"


def test_rdap_bootstrap_bases_most_specific_and_https_first():
    doc = {"services": [
        [["192.0.0.0/8"], ["http://wide.example/"]],
        [["192.0.2.0/24"], ["http://narrow.example/", "https://narrow.example/"]],
    ]}
    assert rdap.bootstrap_bases("ipv4", "192.0.2.1", doc) == ["https://narrow.example/", "http://narrow.example/"]
    assert rdap.bootstrap_bases("ipv4", "192.9.9.9", doc) == ["http://wide.example/"]
    assert rdap.bootstrap_bases("ipv4", "10.0.0.1", doc) == []
    asn = {"services": [[["1-100", "64496-64511"], ["https://as.example/"]]]}
    assert rdap.bootstrap_bases("asn", 64500, asn) == ["https://as.example/"]
    assert rdap.bootstrap_bases("asn", 200, asn) == []


def test_rdap_lookup_slow_server_times_out_at_timeout(rdap_server):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        rdap.lookup("203.0.113.66", rdap_server.rdap_config("slow"), 0.4)
    assert time.monotonic() - start < 0.4 + 1.5  # the slow server answers after 5 s


def test_rdap_lookup_429_fails_at_once_without_sleeping(rdap_server):
    start = time.monotonic()
    with pytest.raises(rdap.RdapError, match="429"):
        rdap.lookup("203.0.113.66", rdap_server.rdap_config("limited"), 5.0)
    assert time.monotonic() - start < 3  # not the 5 s timeout, nor Retry-After: 120


def test_rdap_lookup_server_error_fails(rdap_server):
    with pytest.raises(rdap.RdapError, match="503"):
        rdap.lookup("203.0.113.66", rdap_server.rdap_config("broken"), 1.0)


def test_rdap_lookup_connection_refused_fails_fast():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = RdapConfig(enabled=True, servers=(f"http://127.0.0.1:{port}/",), timeout=1.0)
    with pytest.raises(rdap.RdapError):
        rdap.lookup("203.0.113.66", cfg, 1.0)


def test_rdns_lookup_config_port_is_used(dns_server):
    # the same server on a wrong port must not answer: proves cfg.port is honoured
    wrong = DnsConfig(enabled=True, resolvers=("127.0.0.1",), port=dns_server.port + 1 or 1, timeout=0.2)
    with pytest.raises((TimeoutError, rdns.RdnsError)):
        rdns.lookup("192.0.2.10", wrong, 0.2)


class _Comparisons(Exception):
    pass


class _CountedHandle(str):
    """A handle that counts how often it is compared for equality (a set compares only on
    a hash match; a list's `in` compares with every handle kept so far)."""

    budget = 0
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        _CountedHandle.budget -= 1
        if _CountedHandle.budget < 0:
            raise _Comparisons("more equality tests than entities: the walk is not linear")
        return str.__eq__(self, other)


def _many_entities(tops: int, per_top: int) -> list[dict]:
    """`tops` registrants, each with `per_top` contacts, one of them shared by all (a duplicate)."""
    return [{"handle": f"ORG-{i}", "entities": [{"handle": f"C-{i}-{j}"} for j in range(per_top - 1)]
             + [{"handle": "ABUSE-SHARED"}]} for i in range(tops)]


def _counted(entities: list[dict]) -> list[dict]:
    return [{"handle": _CountedHandle(e["handle"]), "entities": _counted(e.get("entities", []))} for e in entities]


def test_rdap_entity_walk_of_20000_entities_is_linear(fresh_rdap_server):
    """20,200 entities (under MAX_BYTES) through the local RDAP server: every handle once, in
    walk order; and the walk compares handles at most once per entity (it compared each new
    handle with all earlier ones: 1.4-2.9 s of CPU for such an answer)."""
    entities = _many_entities(200, 100)
    fresh_rdap_server.networks["2001:db8:e::/48"] = {
        "objectClassName": "ip network", "handle": "2001:db8:e::/48", "name": "MANY-ENTITIES", "country": "NL",
        "entities": entities}
    facts = rdap.lookup("2001:db8:e::1", fresh_rdap_server.rdap_config(timeout=10.0), 10.0)
    expected = []
    for i in range(200):
        expected += [f"ORG-{i}"] + [f"C-{i}-{j}" for j in range(99)] + (["ABUSE-SHARED"] if i == 0 else [])
    assert facts.net_name == "MANY-ENTITIES"
    assert facts.entities == tuple(expected)

    counted = _counted(entities)
    _CountedHandle.budget = 20_200  # one per entity
    walked = rdap.entity_handles(counted)
    assert _CountedHandle.budget == 20_200 - 199  # only the 199 repeats of ABUSE-SHARED were compared
    _CountedHandle.budget = 10**9  # the comparison below counts too
    assert [str(h) for h in walked] == expected


def test_rdap_entity_walk_keeps_depth_first_order_and_skips_junk():
    entities = [{"handle": "A", "entities": [{"handle": "B", "entities": [{"handle": "C"}]}, "junk", 5,
                                            {"handle": "A"}, {"handle": 7}]},
                None, {"entities": [{"handle": "D"}]}, {"handle": "B"}]
    assert rdap.entity_handles(entities) == ["A", "B", "C", "D"]
    assert rdap.entity_handles(None) == []


# --- RDAP over plain HTTP without urllib (sources/rdap.py _http_get) ---------------------------


class _RawHttp:
    """A loopback HTTP server answering each path with canned raw bytes (what urllib
    would have parsed for us): chunked bodies, redirects, no Content-Length, garbage."""

    def __init__(self, answers: dict[str, bytes]):
        import socket
        import threading

        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                path = data.split(b" ", 2)[1].decode() if data.count(b" ") >= 2 else ""
                conn.sendall(self.answers.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.sock.close()


def _json_chunked(obj: dict, pieces: int = 3) -> bytes:
    body = json.dumps(obj).encode()
    step = max(1, len(body) // pieces)
    chunks = b"".join(f"{len(body[i:i + step]):x}\r\n".encode() + body[i:i + step] + b"\r\n"
                      for i in range(0, len(body), step))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def test_rdap_plain_http_chunked_redirect_and_limits():
    """What urllib did for plain-HTTP servers, now on a socket: chunked and unsized bodies,
    relative redirects followed (404 after one is "unknown"), errors and oversized or
    garbled answers refused as RdapError, the request carrying Accept and User-Agent."""
    network = {"name": "NET-EXAMPLE", "country": "DE"}
    big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (
        f"{rdap.MAX_BYTES + 10:x}\r\n".encode() + b"x" * (rdap.MAX_BYTES + 10) + b"\r\n0\r\n\r\n")
    server = _RawHttp({
        "/chunked": _json_chunked(network),
        "/unsized": b"HTTP/1.0 200 OK\r\nContent-Type: application/rdap+json\r\n\r\n" + json.dumps(network).encode(),
        "/moved": b"HTTP/1.1 301 Moved\r\nLocation: /chunked\r\nContent-Length: 0\r\n\r\n",
        "/moved-away": b"HTTP/1.1 302 Found\r\nLocation: /nothing-here\r\nContent-Length: 0\r\n\r\n",
        "/loop": b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n",
        "/ftp": b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/x\r\nContent-Length: 0\r\n\r\n",
        "/limited": b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
        "/big": big,
        "/garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
        "/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"name\"",
        "/badchunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    })
    try:
        budget = rdap._Budget(2.0)
        assert rdap._fetch_json(server.url("/chunked"), budget) == network
        assert rdap._fetch_json(server.url("/unsized"), budget) == network
        assert rdap._fetch_json(server.url("/moved"), budget) == network
        assert rdap._fetch_json(server.url("/moved-away"), budget) is None
        for path, text in (("/loop", "redirects"), ("/ftp", "unsupported URL scheme"), ("/limited", "HTTP 429"),
                           ("/big", "larger than"), ("/garbage", "bad HTTP answer"), ("/cut", "bad HTTP answer"),
                           ("/badchunk", "bad HTTP answer")):
            with pytest.raises(rdap.RdapError, match=text):
                rdap._fetch_json(server.url(path), budget)
        with pytest.raises(rdap.RdapError, match="bad characters"):  # (urlsplit drops CR and LF itself)
            rdap._http_get(server.url("/x\x00y"), budget)
        first = server.requests[0]
        assert first.startswith(b"GET /chunked HTTP/1.1\r\n")
        assert b"\r\nAccept: application/rdap+json, application/json\r\n" in first
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in first
        assert b"\r\nUser-Agent: dovecot-appauth (RDAP)\r\n" in first
    finally:
        server.close()
