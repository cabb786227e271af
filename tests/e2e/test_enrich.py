"""enrich(): cache first, concurrent sources under one deadline, every outcome reported."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from dovecot_appauth.audit.cache import FILE_NAME, IpCache, Negative
from dovecot_appauth.audit.enrich import enrich, normalize_ip
from dovecot_appauth.audit.facts import NO_PTR, IpFacts, SourceStatus
from tests.support.localservers import make_config

# the local-server fixtures; conftest.py registers the same plugin (a plugin loads once)

NOW = 1_700_000_000.0
S = SourceStatus


def statuses(facts: IpFacts) -> dict[str, SourceStatus]:
    return {name: r.status for name, r in facts.sources.items()}


def test_normalize_ip():
    assert normalize_ip("::ffff:203.0.113.5") == "203.0.113.5"
    assert normalize_ip("2001:DB8:0::1") == "2001:db8::1"
    with pytest.raises(ValueError):
        normalize_ip("not-an-ip")


def test_enrich_fetches_all_sources(audit_config):
    err = io.StringIO()
    f = enrich("203.0.113.66", audit_config(), now=NOW, stderr=err)
    assert statuses(f) == {"rdns": S.FETCHED, "maxmind": S.FETCHED, "rdap": S.FETCHED}
    assert f.rdns == "vps66.hosting.example"
    assert f.maxmind.country.code == "RU" and f.maxmind.as_org == "Example Hosting"
    # RDAP names no origin AS for this RIPE-shaped network: MaxMind's ASN is used
    assert f.whois.asn == 64500 and f.whois.as_desc == "EXAMPLE-HOSTING-AS Example Hosting backbone, RU"
    assert f.asns == (64500,)
    assert all(r.elapsed_ms > 0 for r in f.sources.values())
    assert err.getvalue() == ""


def test_enrich_second_call_is_served_from_cache_without_servers(tmp_path, fresh_dns_server,
                                                                 fresh_rdap_server):
    cfg = make_config(str(tmp_path / "c"), dns=fresh_dns_server.dns_config(),
                      rdap=fresh_rdap_server.rdap_config())
    first = enrich("198.51.100.7", cfg, now=NOW)
    assert statuses(first) == {"rdns": S.FETCHED, "maxmind": S.FETCHED, "rdap": S.FETCHED}
    fresh_dns_server.stop()
    fresh_rdap_server.stop()
    second = enrich("198.51.100.7", cfg, now=NOW + 60)
    assert statuses(second) == {"rdns": S.CACHED, "maxmind": S.CACHED, "rdap": S.CACHED}
    assert (second.rdns, second.maxmind, second.whois) == (first.rdns, first.maxmind, first.whois)


def test_enrich_ttl_expiry_refetches(tmp_path, fresh_dns_server, fresh_rdap_server):
    cfg = make_config(str(tmp_path / "c"), dns=fresh_dns_server.dns_config(),
                      rdap=fresh_rdap_server.rdap_config(), rdns_ttl=100, rdap_ttl=1000)
    enrich("192.0.2.10", cfg, now=NOW)
    dns_before, rdap_before = len(fresh_dns_server.queries), len(fresh_rdap_server.requests)
    assert statuses(enrich("192.0.2.10", cfg, now=NOW + 99))["rdns"] is S.CACHED
    f = enrich("192.0.2.10", cfg, now=NOW + 101)
    assert statuses(f) == {"rdns": S.FETCHED, "maxmind": S.CACHED, "rdap": S.CACHED}
    assert len(fresh_dns_server.queries) == dns_before + 1
    assert len(fresh_rdap_server.requests) == rdap_before
    assert statuses(enrich("192.0.2.10", cfg, now=NOW + 1001))["rdap"] is S.FETCHED


def test_enrich_ipv4_mapped_is_looked_up_as_ipv4(audit_config):
    f = enrich("::ffff:198.51.100.7", audit_config(), now=NOW)
    assert f.ip == "198.51.100.7"
    assert f.rdns == "dsl-7.pool.example.net" and f.maxmind.country.code == "DE" and f.whois.asn == 64501


def test_enrich_nxdomain_is_no_ptr(audit_config):
    assert enrich("192.0.2.99", audit_config(), now=NOW).rdns == NO_PTR


def test_enrich_black_hole_dns_times_out_within_deadline(audit_config, blackhole_dns):
    cfg = audit_config(dns=blackhole_dns.dns_config(timeout=5.0), deadline=0.5)
    start = time.monotonic()
    f = enrich("203.0.113.66", cfg, now=NOW)
    assert time.monotonic() - start < 0.5 + 1.5  # not the 5 s DNS timeout
    assert statuses(f) == {"rdns": S.TIMEOUT, "maxmind": S.FETCHED, "rdap": S.FETCHED}
    assert f.rdns is None  # unknown, not "<>"
    assert 400 < f.sources["rdns"].elapsed_ms < 2500


def test_enrich_slow_rdap_times_out_at_deadline(audit_config, rdap_server):
    cfg = audit_config(rdap=rdap_server.rdap_config("slow", timeout=3.0), deadline=0.5)
    start = time.monotonic()
    f = enrich("203.0.113.66", cfg, now=NOW)
    assert time.monotonic() - start < 0.5 + 1.5  # not the 3 s RDAP timeout
    assert statuses(f) == {"rdns": S.FETCHED, "maxmind": S.FETCHED, "rdap": S.TIMEOUT}
    assert f.whois is None


def test_enrich_rdap_timeout_is_negative_cached(audit_config, fresh_rdap_server, tmp_path):
    cfg = audit_config(rdap=fresh_rdap_server.rdap_config("slow", timeout=0.3), deadline=1.0, negative_ttl=60)
    assert statuses(enrich("203.0.113.66", cfg, now=NOW))["rdap"] is S.TIMEOUT
    asked = len(fresh_rdap_server.requests)
    assert asked >= 1
    f = enrich("203.0.113.66", cfg, now=NOW + 1)
    assert len(fresh_rdap_server.requests) == asked  # the slow server was not asked (nor waited for) again
    assert f.sources["rdap"].status is S.TIMEOUT and f.sources["rdap"].detail.startswith("cached: ")
    hit = IpCache(str(tmp_path / "cache")).get("rdap", "203.0.113.66", NOW + 1)
    assert isinstance(hit, Negative) and hit.status == "timeout"


def test_enrich_429_fails_fast_and_is_negative_cached(tmp_path, fresh_rdap_server, dns_server):
    cfg = make_config(str(tmp_path / "c"), dns=dns_server.dns_config(),
                      rdap=fresh_rdap_server.rdap_config("limited", timeout=5.0), negative_ttl=300,
                      deadline=5.0)
    start = time.monotonic()
    f = enrich("203.0.113.66", cfg, now=NOW)
    assert time.monotonic() - start < 3  # not the 5 s deadline, nor Retry-After: 120
    assert f.sources["rdap"].status is S.FAILED and "429" in f.sources["rdap"].detail
    asked = len(fresh_rdap_server.requests)
    f = enrich("203.0.113.66", cfg, now=NOW + 299)
    assert f.sources["rdap"].status is S.FAILED and len(fresh_rdap_server.requests) == asked
    f = enrich("203.0.113.66", cfg, now=NOW + 301)  # negative entry expired: ask again
    assert len(fresh_rdap_server.requests) == asked + 1


def test_enrich_rdap_bootstrap_is_cached(tmp_path, fresh_rdap_server):
    cfg = make_config(str(tmp_path / "c"), rdap=fresh_rdap_server.rdap_config(mode=None))
    assert enrich("192.0.2.10", cfg, now=NOW).whois.as_cc == "US"
    boots = [p for p in fresh_rdap_server.requests if p.startswith("/bootstrap/")]
    assert sorted(boots) == ["/bootstrap/asn.json", "/bootstrap/ipv4.json"]
    f = enrich("198.51.100.7", cfg, now=NOW + 10)
    assert f.sources["rdap"].status is S.FETCHED and f.whois.asn == 64501
    assert [p for p in fresh_rdap_server.requests if p.startswith("/bootstrap/")] == boots


def test_enrich_unconfigured_sources_are_unavailable(tmp_path):
    cfg = make_config(str(tmp_path / "c"), city=None, asn=None)
    f = enrich("192.0.2.10", cfg, now=NOW)
    assert statuses(f) == {"rdns": S.UNAVAILABLE, "maxmind": S.UNAVAILABLE, "rdap": S.UNAVAILABLE}
    assert not os.path.exists(tmp_path / "c")  # nothing to cache: the file is not even made


def test_enrich_missing_mmdb_is_unavailable_and_not_fatal(tmp_path, dns_server):
    cfg = make_config(str(tmp_path / "c"), dns=dns_server.dns_config(), city=str(tmp_path / "gone.mmdb"),
                      asn=str(tmp_path / "gone-asn.mmdb"))
    f = enrich("192.0.2.10", cfg, now=NOW)
    assert statuses(f) == {"rdns": S.FETCHED, "maxmind": S.UNAVAILABLE, "rdap": S.UNAVAILABLE}
    assert "gone.mmdb" in f.sources["maxmind"].detail and f.maxmind is None


def test_enrich_maxmind_cached_until_the_file_changes(tmp_path):
    city = tmp_path / "city.mmdb"
    asn = tmp_path / "asn.mmdb"
    from tests.support.localservers import ASN_MMDB, CITY_MMDB

    shutil.copy(CITY_MMDB, city)
    shutil.copy(ASN_MMDB, asn)
    cfg = make_config(str(tmp_path / "c"), city=str(city), asn=str(asn))
    assert enrich("2001:db8::25", cfg, now=NOW).sources["maxmind"].status is S.FETCHED
    assert enrich("2001:db8::25", cfg, now=NOW + 10 * 86400).sources["maxmind"].status is S.CACHED
    st = os.stat(asn)
    os.utime(asn, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    f = enrich("2001:db8::25", cfg, now=NOW + 10 * 86400)
    assert f.sources["maxmind"].status is S.FETCHED and f.maxmind.asn == 64502


@pytest.mark.parametrize("damaged", ["city", "asn"])
def test_enrich_damaged_maxmind_database_is_never_cached_and_always_named(tmp_path, damaged):
    """One database of two damaged (a truncated download): every login reads it again, says so
    in the source's detail, and the verdict's reason names the part as unknown. It was cached
    as a clean answer, served back as `cached` without a word, and the geo or AS deny lists
    silently saw nothing from the second login on."""
    from dovecot_appauth.audit.lists import Lists, parse_list
    from dovecot_appauth.audit.rules import SourceClass, SourceKind, evaluate
    from tests.support.localservers import ASN_MMDB, CITY_MMDB

    paths = {"city": tmp_path / "city.mmdb", "asn": tmp_path / "asn.mmdb"}
    shutil.copy(CITY_MMDB, paths["city"])
    shutil.copy(ASN_MMDB, paths["asn"])
    intact = paths[damaged].read_bytes()
    paths[damaged].write_bytes(intact[:-200])
    cfg = make_config(str(tmp_path / "c"), city=str(paths["city"]), asn=str(paths["asn"]))
    lists = {kind: Lists(deny={kind: tuple(parse_list(kind, text, f"{kind}.lst")[0])})
             for kind, text in (("geo_location_ids", "2017370\n"), ("as_numbers", "AS64500\n"))}  # Russia, AS64500
    gone, kept = ("geo_location_ids", "as_numbers") if damaged == "city" else ("as_numbers", "geo_location_ids")
    for n in range(3):
        err = io.StringIO()
        f = enrich("203.0.113.66", cfg, now=NOW + n, stderr=err)
        report = f.sources["maxmind"]
        assert report.status is S.FETCHED, n
        assert f"{damaged}.mmdb" in report.detail, report.detail
        assert f.maxmind.unavailable == (damaged,)
        assert (f.maxmind.country.code, f.maxmind.asn) == (("RU", None) if damaged == "asn" else (None, 64500))
        assert IpCache(str(tmp_path / "c")).get("maxmind", "203.0.113.66", NOW + n) is None
        assert err.getvalue() == ""
        # the damaged part's list cannot be judged, and the reason says why, on every login
        v = evaluate("alice", "imap", "203.0.113.66", f, lists[gone], cfg.audit, SourceClass(SourceKind.GLOBAL))
        assert v.reason == f"no list matched (unknown: rdns, maxmind {damaged}, whois)"
        assert [c.result.value for c in v.checks if c.kind == gone and c.list == "deny"] == ["unknown"]
        # the intact part still denies
        v = evaluate("alice", "imap", "203.0.113.66", f, lists[kept], cfg.audit, SourceClass(SourceKind.GLOBAL))
        assert v.outcome.value == "deny" and v.matched.kind == kept
    # the file repaired (a new download: its signature changes): complete, and cached again
    paths[damaged].write_bytes(intact)
    f = enrich("203.0.113.66", cfg, now=NOW + 10)
    assert f.sources["maxmind"].status is S.FETCHED and f.sources["maxmind"].detail == ""
    assert f.maxmind.unavailable == () and (f.maxmind.country.code, f.maxmind.asn) == ("RU", 64500)
    again = enrich("203.0.113.66", cfg, now=NOW + 11)
    assert again.sources["maxmind"].status is S.CACHED and again.maxmind == f.maxmind


def test_enrich_rdap_origin_as_out_of_range_never_reaches_the_event_row(tmp_path, fresh_rdap_server):
    """An RDAP network object naming AS99999999999999999999 as its origin: MaxMind's AS takes
    its place, and the audit event is recorded (SQLite raised OverflowError, which made the
    right password a temporary failure). A cache row with such a number, written before the
    check, is asked again instead of served for its remaining days."""
    from dovecot_appauth.audit.events import event_row
    from dovecot_appauth.cli import schema
    from dovecot_appauth.store import open_store

    fresh_rdap_server.networks["203.0.113.0/25"] = {
        "objectClassName": "ip network", "handle": "203.0.113.0 - 203.0.113.127", "name": "HUGE-ORIGIN",
        "country": "NL", "arin_originas0_originautnums": ["AS99999999999999999999"]}
    cfg = make_config(str(tmp_path / "c"), rdap=fresh_rdap_server.rdap_config())
    dsn = f"sqlite:///{tmp_path / 'events.sqlite'}"
    schema.init_db(schema.make_engine(dsn))
    store = open_store(dsn, 3.0)

    def record(facts: IpFacts) -> None:
        store.record_event(event_row(timestamp="2024-01-01 00:00:00.000", user="alice", pwid=None, service="imap",
                                     ip=facts.ip, facts=facts, result="unknown", reason="", authenticated=True))
        store.commit()

    f = enrich("203.0.113.66", cfg, now=NOW)
    assert f.sources["rdap"].status is S.FETCHED and f.whois.net_name == "HUGE-ORIGIN"
    assert f.whois.asn == 64500 and f.asns == (64500,)  # MaxMind's, the hint
    record(f)
    # a row cached by the old parser: refused, asked again
    IpCache(str(tmp_path / "c")).put("rdap", "198.51.100.7", {"facts": {"asn": 99999999999999999999,
                                                                       "net_name": "OLD"}}, 7 * 86400, NOW)
    f = enrich("198.51.100.7", cfg, now=NOW + 1)
    assert f.sources["rdap"].status is S.FETCHED and f.whois.asn == 64501 and f.whois.net_name != "OLD"
    record(f)
    with contextlib.closing(sqlite3.connect(tmp_path / "events.sqlite")) as conn:
        assert conn.execute("SELECT src_ip, asn FROM audit_events ORDER BY src_ip").fetchall() == [
            ("198.51.100.7", 64501), ("203.0.113.66", 64500)]
    store.close()


def test_enrich_corrupt_cache_is_survived_with_one_stderr_line(audit_config, tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    (d / FILE_NAME).write_bytes(b"garbage, not SQLite " * 500)
    err = io.StringIO()
    f = enrich("198.51.100.7", audit_config(), now=NOW, stderr=err)
    assert statuses(f) == {"rdns": S.FETCHED, "maxmind": S.FETCHED, "rdap": S.FETCHED}
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "cache" in lines[0] and "not a database" in lines[0]


def test_enrich_unusable_cache_dir_is_survived(audit_config, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a directory")
    err = io.StringIO()
    f = enrich("198.51.100.7", audit_config(), now=NOW, stderr=err)
    assert f.maxmind.country.code == "DE"
    assert len(err.getvalue().splitlines()) == 1


def test_enrich_use_cache_false_writes_nothing(audit_config, tmp_path):
    f = enrich("192.0.2.10", audit_config(), now=NOW, use_cache=False)
    assert f.sources["rdns"].status is S.FETCHED
    assert not os.path.exists(tmp_path / "cache")


# ------------------------------------------------------------ warm path import cost

_WARM = r"""
import json, sys
from dovecot_appauth.config import AuditConfig, CacheConfig, Config, DnsConfig, MaxMindConfig, RdapConfig
from dovecot_appauth.audit.enrich import enrich
p = json.loads(sys.argv[1])
audit = AuditConfig(
    maxmind=MaxMindConfig(city=p["city"], asn=p["asn"]),
    dns=DnsConfig(resolvers=("127.0.0.1",), port=p["dns_port"]),
    rdap=RdapConfig(enabled=True, servers=(p["rdap"],)),
    cache=CacheConfig(path=p["cache"]),
)
facts = enrich(p["ip"], Config(audit=audit), now=p["now"])
heavy = ["dns", "dns.resolver", "maxminddb", "urllib.request", "http.client", "threading",
         "dovecot_appauth.audit.sources", "dovecot_appauth.audit.sources.rdns", "dovecot_appauth.audit.sources.maxmind",
         "dovecot_appauth.audit.sources.rdap", "importlib.util"]
print(json.dumps({"statuses": {k: v.status.value for k, v in facts.sources.items()},
                  "loaded": [m for m in heavy if m in sys.modules], "rdns": facts.rdns}))
"""


def test_enrich_warm_path_imports_no_source_module(tmp_path, dns_server, rdap_server):
    from tests.support.localservers import ASN_MMDB, CITY_MMDB

    params = {"city": CITY_MMDB, "asn": ASN_MMDB, "dns_port": dns_server.port, "rdap": rdap_server.base(),
              "cache": str(tmp_path / "cache"), "ip": "203.0.113.66", "now": NOW}
    cold = subprocess.run([sys.executable, "-c", _WARM, json.dumps(params)], capture_output=True, text=True,
                          timeout=30, check=True)
    assert json.loads(cold.stdout)["loaded"]  # the test can fail: a miss does import them
    warm = subprocess.run([sys.executable, "-c", _WARM, json.dumps({**params, "now": NOW + 5})],
                          capture_output=True, text=True, timeout=30, check=True)
    out = json.loads(warm.stdout)
    assert out["statuses"] == {"rdns": "cached", "maxmind": "cached", "rdap": "cached"}
    assert out["rdns"] == "vps66.hosting.example"
    assert out["loaded"] == []
    assert warm.stderr == ""


# ------------------------------------------------------------ concurrency

_LOGIN = r"""
import json, sys, time
from dovecot_appauth.config import AuditConfig, CacheConfig, Config, DnsConfig, MaxMindConfig, RdapConfig
from dovecot_appauth.audit.enrich import enrich
p = json.loads(sys.argv[1])
audit = AuditConfig(
    deadline=10.0,  # about the cache, not the deadline: a loaded machine must not time a source out
    maxmind=MaxMindConfig(city=p["city"], asn=p["asn"]),
    dns=DnsConfig(resolvers=("127.0.0.1",), port=p["dns_port"]),
    rdap=RdapConfig(enabled=True, servers=(p["rdap"],)),
    cache=CacheConfig(path=p["cache"]),
)
out = []
for i, ip in enumerate(p["ips"] * 3):
    f = enrich(ip, Config(audit=audit), now=p["now"] + i)
    out.append({k: v.status.value for k, v in f.sources.items()})
print(json.dumps(out))
"""


# Every fsync made 100 ms slow (a busy disk), injected by strace: creating the file and
# checkpointing it hold locks across fsyncs, and no login may wait past its busy timeout.
SLOW_FSYNC = ["strace", "-f", "--seccomp-bpf", "-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
              "-e", "inject=fsync,fdatasync:delay_exit=100000"]


@pytest.mark.parametrize("disk", ["fast", "slow-fsync"])
def test_enrich_concurrent_processes_share_the_cache(tmp_path, dns_server, rdap_server, disk):
    from tests.support.common import missing_dependency
    from tests.support.localservers import ASN_MMDB, CITY_MMDB

    prefix: list[str] = []
    if disk == "slow-fsync":
        if shutil.which("strace") is None:
            missing_dependency("strace is not installed (Debian package strace)")
        if subprocess.run(["strace", "-qq", "-o", "/dev/null", "true"], capture_output=True).returncode != 0:
            pytest.skip("this machine does not allow ptrace, so strace cannot inject slow fsyncs")
        prefix = SLOW_FSYNC
    ips = ["192.0.2.10", "198.51.100.7", "203.0.113.66", "2001:db8::25", "100.64.1.1"]
    params = {"city": CITY_MMDB, "asn": ASN_MMDB, "dns_port": dns_server.port, "rdap": rdap_server.base(),
              "cache": str(tmp_path / "cache"), "ips": ips, "now": NOW}
    procs = [subprocess.Popen([*prefix, sys.executable, "-c", _LOGIN, json.dumps(params)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert err == ""  # no "cache bypassed" line: concurrent logins do not lock each other out
        for st in json.loads(out):
            assert set(st.values()) <= {"fetched", "cached"}, st
    stats = IpCache(str(tmp_path / "cache")).stats(NOW)
    assert stats["sources"]["rdns"]["entries"] == len(ips)
    assert sorted(os.listdir(tmp_path / "cache"))[0] == FILE_NAME  # no file left under a private name
    assert not [n for n in os.listdir(tmp_path / "cache") if ".new-" in n]


def test_kept_cache_connection_is_dropped_when_others_may_write_the_cache(audit_config):
    """`serve` keeps its cache connection open: a chmod that lets group or others write the
    cache after it was opened is judged as at opening (uncached, said on every request),
    not only when the file is replaced."""
    import io

    from dovecot_appauth.audit import enrich as enrich_module

    cfg = audit_config()
    directory = cfg.audit.cache.path
    enrich_module.keep_cache_open()
    try:
        enrich("198.51.100.7", cfg, now=NOW)
        assert statuses(enrich("198.51.100.7", cfg, now=NOW))["rdns"] is S.CACHED
        for mode, what in ((0o777, f"directory {directory} is group- or world-writable (mode 0777)"),
                           (0o666, f"{directory}/{FILE_NAME} is group- or world-writable (mode 0666)")):
            target = directory if mode == 0o777 else os.path.join(directory, FILE_NAME)
            os.chmod(target, mode)
            for _ in range(2):
                said = io.StringIO()
                assert statuses(enrich("198.51.100.7", cfg, now=NOW, stderr=said))["rdns"] is S.FETCHED
                assert f"enrichment cache bypassed: {what}" in said.getvalue(), said.getvalue()
            os.chmod(target, 0o700 if mode == 0o777 else 0o600)
            said = io.StringIO()
            assert statuses(enrich("198.51.100.7", cfg, now=NOW, stderr=said))["rdns"] is S.CACHED
            assert said.getvalue() == ""
    finally:
        enrich_module.keep_cache_open(False)


def test_kept_cache_connection_is_reused_per_thread_and_reopened_when_the_file_goes(audit_config, monkeypatch):
    """`serve` (keep_cache_open): one open cache per thread between requests, not one per
    request; a removed cache directory is made again, not written into a deleted file."""
    import threading

    from dovecot_appauth.audit import enrich as enrich_module

    opened: list[int] = []

    class CountingCache(IpCache):
        def __init__(self, directory: str, **options):
            opened.append(threading.get_ident())
            super().__init__(directory, **options)

    monkeypatch.setattr(enrich_module, "IpCache", CountingCache)
    cfg = audit_config()
    enrich_module.keep_cache_open()
    try:
        enrich("198.51.100.7", cfg, now=NOW)  # creates the file: kept from the next call on
        for _ in range(3):
            assert statuses(enrich("198.51.100.7", cfg, now=NOW)) == {"rdns": S.CACHED, "maxmind": S.CACHED,
                                                                      "rdap": S.CACHED}
        assert len(opened) == 2
        other = threading.Thread(target=enrich, args=("198.51.100.7", cfg), kwargs={"now": NOW})
        other.start()
        other.join()
        assert len(opened) == 3 and opened[-1] != opened[0]  # its own connection
        shutil.rmtree(cfg.audit.cache.path)
        assert statuses(enrich("198.51.100.7", cfg, now=NOW))["rdns"] is S.FETCHED  # a new, empty cache
        assert os.path.exists(os.path.join(cfg.audit.cache.path, FILE_NAME))
        assert statuses(enrich("198.51.100.7", cfg, now=NOW))["rdns"] is S.CACHED
    finally:
        enrich_module.keep_cache_open(False)
    enrich("198.51.100.7", cfg, now=NOW)
    enrich("198.51.100.7", cfg, now=NOW)
    assert len(opened) == 7  # off again: one per call, as the per-login program does
