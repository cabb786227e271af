"""Parity with upstream's audit: TTLs from the write, no registry lookups for local
sources, the origin-AS source over DNS, trailing comments in list files.

Real parts only: the local DNS and RDAP servers of tests/support/localservers.py on 127.0.0.1,
the committed test .mmdb files and the on-disk cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dovecot_appauth.audit.cache import IpCache, Negative
from dovecot_appauth.audit.enrich import enrich
from dovecot_appauth.audit.facts import IpFacts, OriginFacts, SourceStatus
from dovecot_appauth.audit.line import format_line
from dovecot_appauth.audit.lists import check_lists, parse_list
from dovecot_appauth.audit.pipeline import assess
from dovecot_appauth.audit.sources.origin_as import origin_name
from dovecot_appauth.cli import main as cli
from dovecot_appauth.config import AuditConfig, CacheConfig, Config, MaxMindConfig, OriginAsConfig, RdapConfig
from tests.conftest import run_cli
from tests.support.localservers import ASN_MMDB, CITY_MMDB
from tests.unit.test_migrate import LISTS as UPSTREAM_LISTS
from tests.unit.test_migrate import UPSTREAM

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
    assert cache.get("rdap", "203.0.113.66", NOW + 5) is None  # and it still expires
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


# -- item 1: the origin AS over DNS (Team Cymru's zones, on the local DNS server) ---------


def origin_config(tmp_path, dns_server, *, asn: str | None = None, order: str = "maxmind-first",
                  rdap: RdapConfig | None = None, timeout: float = 1.0, deadline: float = 1.0,
                  **audit: object) -> Config:
    """The origin-AS source on the local DNS server; MaxMind's ASN database only when given."""
    settings: dict[str, object] = {
        "deadline": deadline,
        "maxmind": MaxMindConfig(city=CITY_MMDB, asn=asn),
        "dns": dns_server.dns_config(),
        "rdap": rdap or RdapConfig(enabled=False),
        "origin_as": OriginAsConfig(enabled=True, order=order, timeout=timeout),
        "cache": CacheConfig(path=str(tmp_path / "cache")),
        "syslog_socket": "",
        "journal": "no",
    }
    settings.update(audit)
    return Config(path=None, audit=AuditConfig(**settings))  # type: ignore[arg-type]


def test_origin_name_reverses_octets_and_nibbles():
    assert origin_name("203.0.113.66") == "66.113.0.203.origin.asn.cymru.com."
    name = origin_name("2001:db8:8000::5")
    assert name.startswith("5.0.0.0.") and name.endswith(".8.b.d.0.1.0.0.2.origin6.asn.cymru.com.")
    assert len(name.split(".")) == 32 + 5


def test_origin_as_when_maxmind_has_no_asn(tmp_path, dns_server):
    f = enrich("203.0.113.66", origin_config(tmp_path, dns_server), now=NOW)
    assert statuses(f) == {"rdns": S.FETCHED, "maxmind": S.FETCHED, "rdap": S.UNAVAILABLE,
                           "origin_as": S.FETCHED}
    # two announced prefixes contain the address: the most specific one's AS, as ipwhois
    assert f.origin == OriginFacts(asn=64500, prefix="203.0.113.0/24", cc="RU", registry="ripencc",
                                   as_name="EXAMPLE-HOSTING-AS - Example Hosting, RU")
    assert f.asns == (64500,) and f.as_cc == "RU" and f.as_desc == "EXAMPLE-HOSTING-AS - Example Hosting, RU"
    assert "4.3.2.1" not in " ".join(dns_server.queries)
    assert "66.113.0.203.origin.asn.cymru.com." in dns_server.queries
    assert "as64500.asn.cymru.com." in dns_server.queries


def test_origin_as_over_ipv6_and_first_of_several_origins(tmp_path, dns_server):
    f = enrich("2001:db8:8000::5", origin_config(tmp_path, dns_server), now=NOW)
    assert f.origin is not None and (f.origin.asn, f.origin.cc) == (64503, "JP")
    f = enrich("192.0.2.200", origin_config(tmp_path, dns_server), now=NOW)  # "64497 64511 | ..."
    assert f.origin is not None and f.origin.asn == 64497
    assert f.origin.as_name == "EXAMPLE-DEFENCE - Example Defence Network, US"


def test_origin_as_not_asked_when_maxmind_knows_the_as(tmp_path, dns_server):
    before = len(dns_server.queries)
    f = enrich("203.0.113.66", origin_config(tmp_path, dns_server, asn=ASN_MMDB), now=NOW)
    assert f.sources["origin_as"].status is S.SKIPPED and f.origin is None
    assert f.asns == (64500,) and f.maxmind is not None and f.maxmind.asn == 64500
    assert not [q for q in dns_server.queries[before:] if "cymru" in q]
    # warm: MaxMind's cached answer still decides, and no thread or query is needed
    f = enrich("203.0.113.66", origin_config(tmp_path, dns_server, asn=ASN_MMDB), now=NOW + 1)
    assert f.sources["origin_as"].status is S.SKIPPED
    assert not [q for q in dns_server.queries[before:] if "cymru" in q]


def test_origin_first_order_prefers_the_origin_as(tmp_path, dns_server):
    # a more specific prefix announced by another AS than MaxMind's 64500
    dns_server.origin_txt["203.0.113.64/26"] = "64499 | 203.0.113.64/26 | NL | ripencc | 2020-01-01"
    try:
        cfg = origin_config(tmp_path, dns_server, asn=ASN_MMDB, order="origin-first")
        f = enrich("203.0.113.66", cfg, now=NOW)
    finally:
        del dns_server.origin_txt["203.0.113.64/26"]
    assert f.sources["origin_as"].status is S.FETCHED
    assert f.origin is not None and f.origin.asn == 64499 and f.maxmind is not None and f.maxmind.asn == 64500
    assert f.asns == (64499, 64500)  # both match as_numbers; the origin AS is the one shown
    assert "asn=AS64499, as_cc=NL, as_desc=<EXAMPLE-PARENT - Example Parent Net, NL>" in format_line(
        "alice", "imap", "203.0.113.66", f, None)


def test_origin_as_is_cached_and_served_warm(tmp_path, fresh_dns_server):
    cfg = origin_config(tmp_path, fresh_dns_server)
    first = enrich("198.51.100.7", cfg, now=NOW)
    assert first.sources["origin_as"].status is S.FETCHED
    fresh_dns_server.stop()
    second = enrich("198.51.100.7", cfg, now=NOW + 3600)
    assert second.sources["origin_as"].status is S.CACHED and second.origin == first.origin
    # the origin_as_ttl (a day by default) counts from the write
    assert IpCache(str(tmp_path / "cache")).get("origin_as", "198.51.100.7", NOW + 86400 + 1) is None


def test_origin_as_no_route_is_empty_not_a_failure(tmp_path, dns_server):
    f = enrich("192.0.2.10", origin_config(tmp_path, dns_server), now=NOW)
    assert f.sources["origin_as"].status is S.FETCHED and f.origin == OriginFacts()
    assert f.asns == ()


def test_origin_as_silent_server_times_out_within_the_deadline_and_is_negative_cached(tmp_path,
                                                                                     dns_server):
    cfg = origin_config(tmp_path, dns_server, timeout=5.0, deadline=0.5)
    f = enrich("203.0.113.99", cfg, now=NOW)  # the server drops this address's queries
    assert f.sources["origin_as"].status is S.TIMEOUT and f.origin is None
    assert f.sources["origin_as"].elapsed_ms < 2500  # the deadline ended it, not the 5 s timeout
    hit = IpCache(str(tmp_path / "cache")).get("origin_as", "203.0.113.99", NOW + 1)
    assert isinstance(hit, Negative)


def test_origin_as_servfail_is_failed(tmp_path, dns_server):
    f = enrich("198.51.100.250", origin_config(tmp_path, dns_server), now=NOW)
    assert f.sources["origin_as"].status is S.FAILED and "SERVFAIL" in f.sources["origin_as"].detail


def test_origin_as_feeds_rdap_autnum_lookup(tmp_path, dns_server, rdap_server):
    # RIPE-shaped RDAP network without an origin AS: the origin-AS service supplies it
    cfg = origin_config(tmp_path, dns_server, rdap=rdap_server.rdap_config())
    f = enrich("203.0.113.66", cfg, now=NOW)
    assert f.whois is not None and f.whois.asn == 64500
    assert f.whois.as_desc == "EXAMPLE-HOSTING-AS Example Hosting backbone, RU"


def test_origin_as_is_never_asked_for_a_local_source(tmp_path, dns_server, rdap_server):
    cfg = local_config(tmp_path, dns_server, rdap_server, origin_as=OriginAsConfig(enabled=True))
    before = len(dns_server.queries)
    result = assess(user="alice", service="imap", ip="10.9.8.7", config=cfg, now=NOW)
    assert result.facts is not None and result.facts.sources["origin_as"].status is S.SKIPPED
    assert not [q for q in dns_server.queries[before:] if "cymru" in q]


@pytest.mark.parametrize(("kind", "entry"), [("as_numbers", "AS64500"), ("as_cc", "RU"),
                                             ("as_names", "EXAMPLE-HOSTING-AS.*")])
def test_as_lists_match_the_origin_as(tmp_path, dns_server, kind, entry):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deny.lst").write_text(entry + "\n")
    cfg = origin_config(tmp_path, dns_server, global_networks=DOC_RANGES, lists={kind: str(lists / "deny.lst")})
    result = assess(user="alice", service="imap", ip="203.0.113.66", config=cfg, now=NOW)
    assert result.verdict.result == "deny" and result.verdict.matched is not None
    assert result.verdict.matched.kind == kind
    assert ", asn=AS64500, as_cc=RU, as_desc=<EXAMPLE-HOSTING-AS - Example Hosting, RU>, " in result.line
    assert ", entity=<>" in result.line  # no RDAP data: upstream's empty entity part


# -- item 4: trailing comments in list files ----------------------------------------------


@pytest.mark.parametrize(("kind", "line", "text", "value"), [
    ("network_cc", "RU # Russian Federation", "RU", "RU"),
    ("as_cc", "cn\t#China", "cn", "CN"),
    ("countries", "DE# Germany", "DE", "DE"),
    ("entities", "ORG-EH1-TEST   # Example Hosting", "ORG-EH1-TEST", "ORG-EH1-TEST"),
    ("geo_location_ids", "6254928 #Virginia, USA", "6254928", 6254928),
    ("coordinates", "38.8710323,-77.0566834,200,0.5  # Arlington", "38.8710323,-77.0566834,200,0.5",
     (38.8710323, -77.0566834, 200.0, 0.5)),
    ("ip_networks", "192.0.2.0/24# office", "192.0.2.0/24", (4, 0xC0000200, 24)),
    ("as_numbers", "AS64500#hosting", "AS64500", 64500),
])
def test_every_kind_without_hash_in_entries_takes_a_trailing_comment(kind, line, text, value):
    entries, problems = parse_list(kind, f"# header\n{line}\n", "x.lst")
    assert problems == []
    assert [(e.line, e.text, e.value) for e in entries] == [(2, text, value)]


@pytest.mark.parametrize("kind", ["reverse_hostname", "network_name", "as_names"])
def test_regex_kinds_keep_hash_literal_as_upstream(kind):
    entries, problems = parse_list(kind, "EXAMPLE #1.*\n", "x.lst")
    assert problems == [] and [e.value for e in entries] == ["EXAMPLE #1.*"]


def test_a_bad_entry_before_a_comment_is_still_an_error():
    entries, problems = parse_list("network_cc", "RUS # three letters\n", "x.lst")
    assert entries == [] and len(problems) == 1 and problems[0].where == "x.lst:1"


def test_upstream_style_commented_as_cc_list_denies_the_origin_as_country(tmp_path, dns_server):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "as_cc.deny.lst").write_text("# Comments after the entry are supported\nRU  # Russia\n")
    cfg = origin_config(tmp_path, dns_server, global_networks=DOC_RANGES,
                        lists={"as_cc": str(lists / "as_cc.deny.lst")})
    assert check_lists(cfg) == []
    result = assess(user="alice", service="imap", ip="203.0.113.66", config=cfg, now=NOW)
    assert result.verdict.result == "deny"
    assert result.verdict.reason == f"as_cc: {lists / 'as_cc.deny.lst'}:2 matched RU"


# -- item 4: import-upstream checks what it wrote and names the behaviour changes ---------


def _upstream_install(tmp_path, lists: dict[str, str]):
    root = tmp_path / "dovecot_web_auth"
    for name, text in {**UPSTREAM_LISTS, **lists}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    config = root / "config.toml"
    config.write_text(UPSTREAM.format(dsn=f"sqlite:///{tmp_path / 'mail.sqlite'}"))
    return config


def test_import_upstream_accepts_commented_lists_and_names_the_changes(tmp_path, capsys):
    upstream = _upstream_install(tmp_path, {
        "lists/net_cc.deny.lst": "# Comments after the entry  are supported\nKP # North Korea\n",
        "lists/as_cc.deny.list": "KP\t# North Korea\n",
        "lists/entity.deny.lst": "EXAMPLE-RIPE # abuse desk\n",
        "lists/maxmind/geo_loc.deny.lst": "#Virgina, USA\n6254928 # Virginia\n",
    })
    out = tmp_path / "config.toml"
    status = cli.main(["import-upstream", str(upstream), "--output", str(out)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "behaviour changes from upstream:" in err
    assert "coordinates" in err and "never applied it; here its circles deny logins" in err
    assert "parsed strictly" in err
    assert "check-config on the translated config:" in err and "check-config: 0 error(s)" in err
    assert "net_cc.deny.lst:2" not in err


def test_import_upstream_reports_list_lines_check_config_refuses(tmp_path, capsys):
    upstream = _upstream_install(tmp_path, {"lists/net_cc.deny.lst": "KP\nNorth Korea\n"})
    status = cli.main(["import-upstream", str(upstream)])
    captured = capsys.readouterr()
    assert status == 1
    assert tomllib.loads(captured.out)["audit"]["lists"]["network_cc"].endswith("net_cc.deny.lst")
    assert "net_cc.deny.lst:2: network_cc: not a two-letter ISO 3166 country code" in captured.err
    assert "check-config: 1 error(s)" in captured.err and "fix them before Dovecot uses this config" in captured.err


# -- explain and check-config show the origin-AS source like the others -------------------


def _cli_config(tmp_path, dns_server, origin_as: str) -> Path:
    (tmp_path / "as_cc.deny.lst").write_text("CN  # China\nRU  # Russia\n")
    config = tmp_path / "config.toml"
    config.write_text(f"""
[database]
dsn = "sqlite:///{tmp_path}/db.sqlite"

[audit]
global_networks = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]
syslog_socket = ""
journal = "no"

[audit.maxmind]
city = "{CITY_MMDB}"

[audit.dns]
resolvers = ["127.0.0.1"]
port = {dns_server.port}

[audit.origin_as]
{origin_as}

[audit.cache]
path = "{tmp_path}/cache"

[audit.lists]
as_cc = "as_cc.deny.lst"
""")
    return config


def test_explain_shows_the_origin_as_source(tmp_path, dns_server):
    config = _cli_config(tmp_path, dns_server, 'enabled = true\norder = "maxmind-first"\ntimeout = 0.8')
    out = run_cli(config, "explain", "203.0.113.66").stdout
    assert "    origin_as fetched" in out
    assert ("  AS (origin, Team Cymru): AS64500 EXAMPLE-HOSTING-AS - Example Hosting, RU (RU); "
            "prefix 203.0.113.0/24, registry ripencc") in out
    assert "deny       as_cc              match" in out and "as_cc.deny.lst:2 RU" in out
    assert "verdict: DENY: as_cc:" in out
    again = run_cli(config, "explain", "203.0.113.66").stdout
    assert "    origin_as cached" in again


def test_check_config_reads_and_reports_the_origin_as_keys(tmp_path, dns_server):
    good = _cli_config(tmp_path, dns_server, "enabled = true")
    res = run_cli(good, "check-config", "--no-database", check=False)
    assert res.returncode == 0, res.stdout
    bad = _cli_config(tmp_path, dns_server, 'enabled = true\norder = "cymru-first"\nzone = "x"')
    res = run_cli(bad, "check-config", "--no-database", check=False)
    assert res.returncode == 1
    assert "[audit.origin_as] order: is 'cymru-first', must be one of maxmind-first, origin-first" in res.stdout
    assert "[audit.origin_as] zone" in res.stdout


@pytest.mark.parametrize("records", [
    ["garbage"], ["AS | 203.0.113.0/24 | RU"], ["99999999999 | 203.0.113.0/24 | RU | x | y"],
    ["64500 | not-a-prefix | RU | ripencc | 2024-01-01"], ["x" * 255],
])
def test_origin_as_garbage_records_are_ignored_or_contained(tmp_path, fresh_dns_server, records):
    fresh_dns_server.origin_txt = {"203.0.113.0/24": r for r in records}
    f = enrich("203.0.113.66", origin_config(tmp_path, fresh_dns_server), now=NOW)
    assert f.sources["origin_as"].status is S.FETCHED
    origin = f.origin
    assert origin is not None
    if records[0].startswith("64500"):
        # a bad prefix is dropped, the AS kept (and its name found)
        assert (origin.asn, origin.prefix, origin.as_name) == (64500, None,
                                                               "EXAMPLE-HOSTING-AS - Example Hosting, RU")
    else:
        assert origin == OriginFacts()
    line = format_line("alice", "imap", "203.0.113.66", f, None)
    assert "\n" not in line


_WARM_ORIGIN = r"""
import json, sys
from dovecot_appauth.config import AuditConfig, CacheConfig, Config, DnsConfig, MaxMindConfig, OriginAsConfig
from dovecot_appauth.audit.enrich import enrich
p = json.loads(sys.argv[1])
audit = AuditConfig(
    maxmind=MaxMindConfig(city=p["city"], asn=p["asn"]),
    dns=DnsConfig(resolvers=("127.0.0.1",), port=p["dns_port"]),
    origin_as=OriginAsConfig(enabled=True),
    cache=CacheConfig(path=p["cache"]),
)
facts = enrich(p["ip"], Config(audit=audit), now=p["now"])
heavy = ["dns", "threading", "dovecot_appauth.audit.sources", "dovecot_appauth.audit.sources.origin_as"]
print(json.dumps({"statuses": {k: v.status.value for k, v in facts.sources.items()},
                  "loaded": [m for m in heavy if m in sys.modules], "asns": facts.asns}))
"""


@pytest.mark.parametrize("asn_db", [None, ASN_MMDB])  # the origin AS cached / skipped for MaxMind's
def test_warm_login_with_the_origin_as_source_imports_no_source_module(tmp_path, dns_server, asn_db):
    params = {"city": CITY_MMDB, "asn": asn_db, "dns_port": dns_server.port, "cache": str(tmp_path / "cache"),
              "ip": "203.0.113.66", "now": NOW}
    cold = subprocess.run([sys.executable, "-c", _WARM_ORIGIN, json.dumps(params)], capture_output=True,
                          text=True, timeout=30, check=True)
    assert json.loads(cold.stdout)["loaded"]  # the test can fail: a miss does import them
    warm = subprocess.run([sys.executable, "-c", _WARM_ORIGIN, json.dumps({**params, "now": NOW + 5})],
                          capture_output=True, text=True, timeout=30, check=True)
    out = json.loads(warm.stdout)
    assert out["statuses"]["origin_as"] == ("cached" if asn_db is None else "skipped")
    assert out["asns"] == [64500] and out["loaded"] == [] and warm.stderr == ""
