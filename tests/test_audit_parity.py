"""Parity with upstream's audit: TTLs from the write, no registry lookups for local
sources, the origin-AS source over DNS, trailing comments in list files.

Real parts only: the local DNS and RDAP servers of tests/localservers.py on 127.0.0.1,
the committed test .mmdb files and the on-disk cache.
"""

from __future__ import annotations

import pytest

from dovecot_appauth.cache import IpCache, Negative
from dovecot_appauth.config import AuditConfig, CacheConfig, Config, MaxMindConfig
from dovecot_appauth.enrich import enrich
from dovecot_appauth.facts import IpFacts, SourceStatus
from dovecot_appauth.pipeline import assess
from tests.localservers import ASN_MMDB, CITY_MMDB

NOW = 1_700_000_000.0
S = SourceStatus
DOC_RANGES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")


def statuses(facts: IpFacts) -> dict[str, SourceStatus]:
    return {name: r.status for name, r in facts.sources.items()}


def local_config(tmp_path, dns_server, rdap_server, **audit: object) -> Config:
    """Every source on the local servers, documentation ranges judged as global, a LAN."""
    settings: dict[object, object] = {
        "global_networks": DOC_RANGES,
        "local_locationname": "Head office",
        "local_networks": {"10.9.0.0/16": "Office LAN", "192.0.2.0/28": "Public office range"},
        "log_local": True,
        "maxmind": MaxMindConfig(city=CITY_MMDB, asn=ASN_MMDB),
        "dns": dns_server.dns_config(),
        "rdap": rdap_server.rdap_config(),
        "cache": CacheConfig(path=str(tmp_path / "cache")),
        "syslog_socket": "",
        "journal": "no",
    }
    settings.update(audit)
    return Config(path=None, audit=AuditConfig(**settings))  # type: ignore[arg-type]


# -- item 3: TTLs count from when the entry is written --------------------------------


def test_negative_ttl_counts_from_the_write_not_the_login_start(audit_config, rdap_server, tmp_path):
    # the RDAP timeout ends 0.5 s into the login; a 0.3 s negative entry timed from the
    # login's start would already be expired when written
    cfg = audit_config(rdap=rdap_server.rdap_config("slow", timeout=0.5), deadline=1.0, negative_ttl=0.3)
    assert statuses(enrich("203.0.113.66", cfg, now=NOW))["rdap"] is S.TIMEOUT
    cache = IpCache(str(tmp_path / "cache"))
    hit = cache.get("rdap", "203.0.113.66", NOW + 0.6)
    assert isinstance(hit, Negative) and hit.status == "timeout" and hit.stored >= NOW + 0.5
    assert cache.get("rdap", "203.0.113.66", NOW + 0.5 + 1.0) is None  # and it still expires
    # a positive entry written in the same login is timed from its write as well
    assert cache.get("rdns", "203.0.113.66", NOW + 3600 + 0.4) is not None


# -- item 2: local sources are never sent to a registry ---------------------------------


@pytest.mark.parametrize(("ip", "name"), [("10.9.8.7", "Office LAN"), ("192.0.2.5", "Public office range")])
def test_local_source_is_not_sent_to_rdap_and_keeps_the_zz_whois_part(tmp_path, dns_server, rdap_server,
                                                                      ip, name):
    cfg = local_config(tmp_path, dns_server, rdap_server)
    before = len(rdap_server.requests)
    result = assess(user="alice", service="imap", ip=ip, config=cfg, now=NOW)
    assert rdap_server.requests[before:] == []
    assert result.facts is not None
    assert result.facts.sources["rdap"].status is S.SKIPPED
    assert result.facts.whois is None
    # upstream's synthesised whois part (MaxMind, a local file, is still read: an office
    # range that is globally routable keeps its place and AS organisation)
    assert ", as_cc=ZZ, as_desc=<Head office>, as_org=<" in result.line
    assert f">, net_name=<{name}>, net_cc=ZZ, entity=, " in result.line
    assert result.verdict.result == "allow"


def test_global_source_is_still_sent_to_rdap(tmp_path, dns_server, rdap_server):
    cfg = local_config(tmp_path, dns_server, rdap_server)
    before = len(rdap_server.requests)
    result = assess(user="alice", service="imap", ip="198.51.100.7", config=cfg, now=NOW)
    assert rdap_server.requests[before:] != []
    assert result.facts is not None and result.facts.sources["rdap"].status is S.FETCHED
