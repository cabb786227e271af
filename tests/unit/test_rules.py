"""The rule engine (rules.py): pure, no files, no sockets. Plus the sample files walker."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dovecot_appauth.audit.facts import (
    NO_PTR,
    GeoName,
    IpFacts,
    MaxMindFacts,
    OriginFacts,
    WhoisFacts,
    as_number,
    maxmind_from_json,
    origin_from_json,
    whois_from_json,
)
from dovecot_appauth.audit.lists import Lists, parse_list
from dovecot_appauth.audit.rules import (
    DENY_RULES,
    ChainResult,
    CheckResult,
    Outcome,
    SourceClass,
    SourceKind,
    chain_result,
    circle_overlap_area,
    circle_rule_matches,
    classify_source,
    covered_fraction,
    evaluate,
    haversine_km,
    is_globally_reachable,
    should_audit,
)
from dovecot_appauth.config import ALLOW_KINDS, LIST_KINDS, AuditConfig, UserAllow

SAMPLES = Path(__file__).parents[1] / "samples" / "rules"
GLOBAL = SourceClass(SourceKind.GLOBAL)


def make_lists(deny: dict[str, str] | None = None, allow: dict[str, str] | None = None) -> Lists:
    lists = Lists()
    for kind, text in (deny or {}).items():
        entries, problems = parse_list(kind, text, f"{kind}.deny.lst")
        assert not [p for p in problems if p.level == "error"], problems
        lists.deny[kind] = tuple(entries)
    for kind, text in (allow or {}).items():
        entries, problems = parse_list(kind, text, f"{kind}.allow.lst")
        lists.allow[kind] = tuple(entries)
    return lists


def judge(ip: str, facts: IpFacts | None, lists: Lists, audit: AuditConfig | None = None, **kw):
    return evaluate(
        kw.get("user", "alice"),
        kw.get("service", "imap"),
        ip,
        facts,
        lists,
        audit or AuditConfig(),
        kw.get("source", GLOBAL),
    )


# ---------------------------------------------------------------------------
# classify_source


@pytest.mark.parametrize(
    ("ip", "kind"),
    [
        ("8.8.8.8", SourceKind.GLOBAL),
        ("100.64.0.1", SourceKind.GLOBAL),  # RFC 6598 shared space counts as global
        ("100.127.255.254", SourceKind.GLOBAL),
        ("10.0.0.1", SourceKind.LOCAL),
        ("172.16.5.4", SourceKind.LOCAL),
        ("127.0.0.1", SourceKind.LOCAL),
        ("169.254.1.1", SourceKind.LOCAL),
        ("192.0.2.1", SourceKind.LOCAL),  # documentation: not globally reachable
        ("::1", SourceKind.LOCAL),
        ("fe80::1%eth0", SourceKind.LOCAL),
        ("fd00::1", SourceKind.LOCAL),
        ("2001:db8::1", SourceKind.LOCAL),
        ("2606:4700::1111", SourceKind.GLOBAL),
        ("::ffff:8.8.8.8", SourceKind.GLOBAL),  # IPv4-mapped: judged by the IPv4
        ("::ffff:10.0.0.1", SourceKind.LOCAL),
        ("::ffff:100.64.0.1", SourceKind.GLOBAL),
    ],
)
def test_classify_source_kinds(ip, kind):
    assert classify_source(ip, AuditConfig()).kind is kind
    assert is_globally_reachable(ip) is (kind is SourceKind.GLOBAL)


def test_classify_source_names_and_ignore():
    audit = AuditConfig(
        local_locationname="MPI PKS local network",
        local_networks={"172.17.0.0/16": "DHCP Network", "8.8.8.0/24": "our public range"},
        ignore_networks=("10.99.0.0/16", "2001:db8:99::/48"),
    )
    c = classify_source("172.17.1.204", audit)
    assert (c.kind, c.name, c.location) == (SourceKind.LOCAL, "DHCP Network", "MPI PKS local network")
    assert classify_source("10.0.0.1", audit).name == "MPI PKS local network"
    # a configured local network is local even when globally routable (upstream)
    assert classify_source("8.8.8.8", audit).name == "our public range"
    assert classify_source("10.99.3.4", audit).kind is SourceKind.IGNORED
    assert classify_source("::ffff:10.99.3.4", audit).kind is SourceKind.IGNORED
    assert classify_source("2001:db8:99::5", audit).kind is SourceKind.IGNORED
    assert classify_source(None, audit).kind is SourceKind.LOCAL
    assert classify_source("not-an-ip", audit).kind is SourceKind.GLOBAL


# ---------------------------------------------------------------------------
# order, allow beats deny, sources, audit-only


def test_evaluate_disabled_service_first():
    audit = AuditConfig(disabled_services=("pop3",))
    lists = make_lists(allow={"ip_networks": "0.0.0.0/0"})
    v = judge("203.0.113.1", None, lists, audit, service="POP3")
    assert v.outcome is Outcome.DENY and v.matched.rule == "service" and v.effective_deny
    local = classify_source("10.0.0.1", audit)
    assert judge("10.0.0.1", None, lists, audit, service="pop3", source=local).outcome is Outcome.DENY


def test_evaluate_allow_beats_every_deny():
    facts = IpFacts("198.51.100.7", rdns="x.bad.example", whois=WhoisFacts(asn=64500, net_cc="XX"),
                    maxmind=MaxMindFacts(country=GeoName(code="XX"), asn=64500))
    deny = {
        "ip_networks": "198.51.100.0/24",
        "reverse_hostname": r".*\.bad\.example",
        "as_numbers": "AS64500",
    }
    assert judge("198.51.100.7", facts, make_lists(deny)).outcome is Outcome.DENY
    for kind, entry in (("ip_networks", "198.51.100.0/28"), ("as_numbers", "64500"), ("countries", "xx")):
        v = judge("198.51.100.7", facts, make_lists(deny, {kind: entry}))
        assert v.outcome is Outcome.ALLOW, kind
        assert v.matched.rule == f"allow:{kind}"
        assert not v.effective_deny
        # every deny rule is listed as not reached
        assert all(c.result is CheckResult.NOT_REACHED for c in v.checks if c.list == "deny")



def test_allow_lists_never_trust_what_the_network_holder_writes():
    """The review's case: MaxMind says AS64500 (denied), the RDAP network object's
    registrant-editable origin AS says AS64501 (allow-listed): denied. Same for RDAP's
    network country against a country allow list."""
    lists = make_lists({"as_numbers": "AS64500", "as_names": ".*Hoster.*"},
                       {"as_numbers": "AS64501", "countries": "DE"})
    facts = IpFacts("203.0.113.9", maxmind=MaxMindFacts(asn=64500, as_org="Bad Hoster"),
                    whois=WhoisFacts(asn=64501, net_name="BAD-HOSTER-NET", net_cc="DE"))
    v = judge("203.0.113.9", facts, lists)
    assert v.outcome is Outcome.DENY and v.matched.rule == "as_numbers" and v.matched.value == "AS64500"
    allow = {c.kind: (c.result, c.detail) for c in v.checks if c.list == "allow"}
    assert allow["as_numbers"] == (CheckResult.NO_MATCH, "1 entries")  # MaxMind's AS64500 is not listed
    assert allow["countries"] == (CheckResult.UNKNOWN, "fact unknown")  # MaxMind has no country
    # RDAP alone: the allow lists cannot be judged ("fact unknown"), the deny lists still can
    facts = IpFacts("203.0.113.9", whois=WhoisFacts(asn=64501, as_desc="Bad Hoster", net_cc="DE"))
    v = judge("203.0.113.9", facts, lists)
    assert v.outcome is Outcome.DENY and v.matched.rule == "as_names"
    allow = {c.kind: c.result for c in v.checks if c.list == "allow"}
    assert allow == {"ip_networks": CheckResult.NO_LIST, "as_numbers": CheckResult.UNKNOWN,
                     "countries": CheckResult.UNKNOWN}
    # and a user's inline allow list trusts no more than the global one
    lists.user_allow["alice"] = make_lists(allow={"as_numbers": "AS64501", "countries": "DE"}).allow
    assert judge("203.0.113.9", facts, lists).outcome is Outcome.DENY
    # deny lists keep matching RDAP's values: more sources can only deny more
    v = judge("203.0.113.9", facts, make_lists({"as_numbers": "AS64501"}))
    assert v.outcome is Outcome.DENY and v.matched.value == "AS64501"


@pytest.mark.parametrize(("facts", "shown"), [
    (IpFacts("203.0.113.9", maxmind=MaxMindFacts(asn=64501)), "AS64501"),
    (IpFacts("203.0.113.9", origin=OriginFacts(asn=64501)), "AS64501"),
    # either trusted source is enough, whatever RDAP says
    (IpFacts("203.0.113.9", maxmind=MaxMindFacts(asn=64500), origin=OriginFacts(asn=64501),
             whois=WhoisFacts(asn=64500)), "AS64501"),
])
def test_allow_as_numbers_trusts_maxmind_and_the_origin_as_service(facts, shown):
    v = judge("203.0.113.9", facts, make_lists({"as_numbers": "AS64500"}, {"as_numbers": "AS64501"}))
    assert v.outcome is Outcome.ALLOW and v.matched.rule == "allow:as_numbers" and v.matched.value == shown


def test_allow_countries_trusts_maxmind_only():
    lists = make_lists({"network_cc": "XX"}, {"countries": "de"})
    mm = MaxMindFacts(country=GeoName(2921044, "Germany", "DE"))
    v = judge("203.0.113.9", IpFacts("203.0.113.9", maxmind=mm, whois=WhoisFacts(net_cc="XX")), lists)
    assert v.outcome is Outcome.ALLOW and v.matched.value == "DE"
    v = judge("203.0.113.9", IpFacts("203.0.113.9", maxmind=MaxMindFacts(), whois=WhoisFacts(net_cc="DE")), lists)
    assert v.outcome is Outcome.UNKNOWN
    assert [c.result for c in v.checks if c.kind == "countries" and c.list == "allow"] == [CheckResult.UNKNOWN]


def test_unreadable_maxmind_database_is_named_unknown_in_the_reason():
    """A damaged City (or ASN) file: MaxMind's facts exist but that part is unknown, and every
    verdict's reason says which (the audit line carries it)."""
    facts = IpFacts("203.0.113.9", rdns="h.example", whois=WhoisFacts(),
                    maxmind=MaxMindFacts(asn=64500, unavailable=("city",)))
    lists = make_lists({"geo_location_ids": "2017370", "coordinates": "43.2,46.5,100,0.5"}, {"countries": "RU"})
    v = judge("203.0.113.9", facts, lists)
    assert v.outcome is Outcome.UNKNOWN and v.unknown == ("maxmind city",)
    assert v.reason == "no list matched (unknown: maxmind city)"
    judged = {(c.list, c.kind): c.result for c in v.checks if c.result is not CheckResult.NO_LIST}
    assert judged == {("allow", "countries"): CheckResult.UNKNOWN, ("deny", "geo_location_ids"): CheckResult.UNKNOWN,
                      ("deny", "coordinates"): CheckResult.UNKNOWN}
    both = IpFacts("203.0.113.9", maxmind=MaxMindFacts(unavailable=("city", "asn")))
    assert judge("203.0.113.9", both, Lists()).reason == \
        "no list matched (unknown: rdns, maxmind city, maxmind asn, whois)"
    # an ASN database that could not be read leaves the allow list "fact unknown", never a match
    asn_gone = IpFacts("203.0.113.9", maxmind=MaxMindFacts(country=GeoName(code="DE"), unavailable=("asn",)),
                       whois=WhoisFacts(asn=64501))
    v = judge("203.0.113.9", asn_gone, make_lists(allow={"as_numbers": "AS64501"}))
    assert v.outcome is Outcome.UNKNOWN and v.reason == "no list matched (unknown: rdns, maxmind asn)"
    assert [c.result for c in v.checks if c.kind == "as_numbers" and c.list == "allow"] == [CheckResult.UNKNOWN]


def test_maxmind_unavailable_round_trips_and_old_entries_still_read():
    partial = MaxMindFacts(asn=64500, unavailable=("city",))
    data = partial.to_json()
    assert data["unavailable"] == ("city",)
    assert maxmind_from_json(json.loads(json.dumps(data))) == partial
    # a complete answer's JSON is as before (cache rows, explain --json), and rows written
    # before the field existed read as complete
    assert "unavailable" not in MaxMindFacts(asn=64500).to_json()
    assert maxmind_from_json({"asn": 64500}) == MaxMindFacts(asn=64500)
    for bad in ({"unavailable": ["town"]}, {"unavailable": "city"}):
        with pytest.raises(ValueError):
            maxmind_from_json(bad)


@pytest.mark.parametrize("asn", [99999999999999999999, 1 << 32, -7, 0, True, "64500", 64500.0])
def test_cached_facts_with_an_impossible_as_number_are_refused(asn):
    """A cache row written before the range check (RDAP facts live 7 days) is refused
    (enrich.py then asks again) instead of reaching the audit event's row."""
    for read in (whois_from_json, maxmind_from_json):
        with pytest.raises((TypeError, ValueError)):
            read({"asn": asn})
    if asn != 0:  # origin_as.py takes AS0
        with pytest.raises((TypeError, ValueError)):
            origin_from_json({"asn": asn})
    assert whois_from_json({"asn": 4294967295}).asn == 4294967295


@pytest.mark.parametrize(("text", "number"), [
    ("AS64500", 64500), ("as64500", 64500), ("64500", 64500), (64500, 64500), ("AS4294967295", 4294967295),
    ("AS4294967296", None), ("AS99999999999999999999", None), ("-7", None), ("AS-7", None), ("+7", None),
    ("6_4500", None), ("\uff16\uff14\uff15\uff10\uff10", None), ("AS0", None), (0, None), (-1, None),
    (1 << 32, None), (True, None), (64500.0, None), (None, None), ("", None), ("AS", None), ("9" * 5000, None),
])
def test_as_number_accepts_only_4_byte_as_numbers(text, number):
    assert as_number(text) == number

def test_evaluate_per_user_allow():
    audit = AuditConfig(allow_users={"alice": UserAllow(ip_networks=("198.51.100.0/25",))})
    lists = make_lists({"ip_networks": "198.51.100.0/24"})
    entries, _ = parse_list("ip_networks", "198.51.100.0/25", "[audit.allow.users.alice] ip_networks")
    lists.user_allow["alice"] = {"ip_networks": tuple(entries)}
    v = judge("198.51.100.9", None, lists, audit, user="ALICE")
    assert v.outcome is Outcome.ALLOW and v.matched.rule == "user-allow:ip_networks"
    assert v.reason == "user-allow ip_networks: [audit.allow.users.alice] ip_networks:1 matched 198.51.100.9"
    assert judge("198.51.100.9", None, lists, audit, user="bob").outcome is Outcome.DENY


def test_evaluate_local_and_ignored_sources():
    lists = make_lists({"ip_networks": "0.0.0.0/0"})
    audit = AuditConfig(log_local=False, ignore_networks=("10.99.0.0/16",))
    v = judge("10.0.0.1", None, lists, audit, source=classify_source("10.0.0.1", audit))
    assert (v.outcome, v.log, v.matched.rule) == (Outcome.ALLOW, False, "source")
    v = judge("10.0.0.1", None, lists, AuditConfig(), source=classify_source("10.0.0.1", AuditConfig()))
    assert v.log is True and "local" in v.reason
    v = judge("10.99.0.1", None, lists, audit, source=classify_source("10.99.0.1", audit))
    assert v.outcome is Outcome.ALLOW and v.log is False
    # a source class is computed when none is passed
    v = evaluate("u", "imap", "100.64.0.1", None, lists, AuditConfig())
    assert v.outcome is Outcome.DENY


def test_evaluate_audit_only_never_denies():
    audit = AuditConfig(audit_only=True, disabled_services=("smtp",))
    lists = make_lists({"as_numbers": "AS64500"})
    v = judge("203.0.113.1", IpFacts("203.0.113.1", whois=WhoisFacts(asn=64500)), lists, audit)
    assert v.outcome is Outcome.DENY and v.audit_only and not v.effective_deny
    assert v.result == "deny-audit-only" and v.reason.startswith("audit-only, not enforced: as_numbers:")
    assert not judge("203.0.113.1", None, lists, audit, service="smtp").effective_deny


def test_evaluate_reason_names_file_line_and_value():
    lists = make_lists({"as_numbers": "# comment\n\nAS64499\nAS64500  documentation\n"})
    v = judge("203.0.113.1", IpFacts("203.0.113.1", whois=WhoisFacts(asn=64500)), lists)
    assert v.reason == "as_numbers: as_numbers.deny.lst:4 matched AS64500"
    assert (v.matched.kind, v.matched.file, v.matched.line, v.matched.value) == (
        "as_numbers",
        "as_numbers.deny.lst",
        4,
        "AS64500",
    )
    assert v.matched.entry == "AS64500"


def test_evaluate_checks_list_every_rule_in_order():
    v = judge("203.0.113.1", None, make_lists({"as_numbers": "AS1"}))
    deny = [c for c in v.checks if c.list == "deny"]
    assert [c.kind for c in deny] == [k for k, _ in DENY_RULES] == list(LIST_KINDS)
    results = {c.kind: c.result for c in deny}
    assert results["as_numbers"] is CheckResult.UNKNOWN
    assert results["ip_networks"] is CheckResult.NO_LIST
    assert v.outcome is Outcome.UNKNOWN and v.reason == "no list matched (unknown: rdns, maxmind, whois)"


def test_evaluate_unknown_rdns_is_not_no_ptr():
    lists = make_lists({"reverse_hostname": "<>"})
    assert judge("203.0.113.1", IpFacts("203.0.113.1", rdns=None), lists).outcome is Outcome.UNKNOWN
    v = judge("203.0.113.1", IpFacts("203.0.113.1", rdns=NO_PTR), lists)
    assert v.outcome is Outcome.DENY and v.matched.value == "<>"


def test_evaluate_ipv4_list_never_matches_ipv6():
    lists = make_lists({"ip_networks": "0.0.0.0/0"})
    assert judge("2001:db8::1", None, lists).outcome is Outcome.UNKNOWN
    assert judge("::ffff:192.0.2.1", None, lists).outcome is Outcome.DENY
    # an IPv6 entry for the mapped range matches the mapped form too
    lists = make_lists({"ip_networks": "::ffff:0:0/96"})
    assert judge("::ffff:192.0.2.1", None, lists).outcome is Outcome.DENY
    assert judge("192.0.2.1", None, lists).outcome is Outcome.UNKNOWN


def test_evaluate_geo_ids_every_place():
    mm = MaxMindFacts(
        city=GeoName(1, "City"),
        subdivisions=(GeoName(2, "Region"), GeoName(3, "County")),
        country=GeoName(4, "Country"),
        continent=GeoName(5, "Continent"),
        registered_country=GeoName(6, "Reg"),
        represented_country=GeoName(7, "Rep"),
    )
    facts = IpFacts("203.0.113.1", maxmind=mm)
    for gid in range(1, 8):
        v = judge("203.0.113.1", facts, make_lists({"geo_location_ids": str(gid)}))
        assert v.outcome is Outcome.DENY, gid
    assert judge("203.0.113.1", facts, make_lists({"geo_location_ids": "8"})).outcome is Outcome.UNKNOWN


# ---------------------------------------------------------------------------
# coordinates


def test_haversine_known_distances():
    assert haversine_km(0, 0, 0, 0) == 0
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088)
    # Berlin - Paris, about 878 km
    assert haversine_km(52.5200, 13.4050, 48.8566, 2.3522) == pytest.approx(878, abs=3)


def test_circle_overlap_area_cases():
    # apart, touching, contained, identical
    assert circle_overlap_area(10, 3, 3) == 0
    assert circle_overlap_area(6, 3, 3) == 0
    assert circle_overlap_area(1, 5, 2) == pytest.approx(math.pi * 4)
    assert circle_overlap_area(0, 2, 2) == pytest.approx(math.pi * 4)
    # two unit circles one radius apart: lens area 2*pi/3 - sqrt(3)/2
    assert circle_overlap_area(1, 1, 1) == pytest.approx(2 * math.pi / 3 - math.sqrt(3) / 2)
    # equal circles at d: 2 r^2 acos(d/2r) - d/2 sqrt(4r^2 - d^2)
    r, d = 3.0, 2.5
    expected = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    assert circle_overlap_area(d, r, r) == pytest.approx(expected)
    # symmetric in the radii, monotonic in the distance
    assert circle_overlap_area(4, 3, 2) == pytest.approx(circle_overlap_area(4, 2, 3))
    areas = [circle_overlap_area(d / 10, 3, 2) for d in range(0, 60)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(areas))


def test_circle_overlap_numerically():
    """Compare the lens formula with a grid count."""
    d, r1, r2 = 2.0, 2.5, 1.5
    n, hits = 400, 0
    for i in range(n):
        for j in range(n):
            x = -r2 + 2 * r2 * (i + 0.5) / n
            y = -r2 + 2 * r2 * (j + 0.5) / n
            if x * x + y * y <= r2 * r2 and (x - d) ** 2 + y * y <= r1 * r1:
                hits += 1
    grid = hits * (2 * r2 / n) ** 2
    assert circle_overlap_area(d, r1, r2) == pytest.approx(grid, rel=0.01)


def test_coordinates_rule_semantics():
    # MaxMind 100 km east of our centre (on the equator, 1 degree = 111.2 km)
    lon = 100 / 111.195
    assert circle_rule_matches(0, 0, 150, 1, 0, lon, 1000)  # centre inside our circle
    assert not circle_rule_matches(0, 0, 90, 1, 0, lon, 10)  # centre outside
    # our 150 km circle covers all of a 20 km MaxMind circle 100 km away
    assert covered_fraction(100, 150, 20) == pytest.approx(1.0)
    assert circle_rule_matches(0, 0, 150, 0.99, 0, lon, 20)
    # a 1000 km MaxMind circle is barely covered by our 150 km circle
    frac = covered_fraction(100, 150, 1000)
    assert frac == pytest.approx(150**2 / 1000**2)
    assert circle_rule_matches(0, 0, 150, 0.01, 0, lon, 1000)
    assert not circle_rule_matches(0, 0, 150, 0.5, 0, lon, 1000)
    # unknown accuracy: a point
    assert covered_fraction(100, 150, 0) == 1.0 and covered_fraction(200, 150, 0) == 0.0


def test_coordinates_unknown_never_match():
    lists = make_lists({"coordinates": "0,0,20000"})
    assert (
        judge("203.0.113.1", IpFacts("203.0.113.1", maxmind=MaxMindFacts()), lists).outcome is Outcome.UNKNOWN
    )
    facts = IpFacts("203.0.113.1", maxmind=MaxMindFacts(latitude=1.0, longitude=1.0))
    assert judge("203.0.113.1", facts, lists).outcome is Outcome.DENY


# ---------------------------------------------------------------------------
# upstream's audit_result_success / audit_process_unknown


@pytest.mark.parametrize(
    ("mode", "authenticated", "expected"),
    [
        ("ok", True, ChainResult.OK),
        ("ok", False, ChainResult.UNKNOWN),
        ("unknown", True, ChainResult.UNKNOWN),
        ("next", True, ChainResult.NEXT),
    ],
)
def test_chain_result_mapping(mode, authenticated, expected):
    audit = AuditConfig(audit_result_success=mode)
    for v in (
        judge("203.0.113.1", None, Lists(), audit),
        judge("10.0.0.1", None, Lists(), audit, source=classify_source("10.0.0.1", audit)),
    ):
        assert chain_result(v, audit, authenticated=authenticated) is expected
    deny = judge(
        "203.0.113.1", None, Lists(), AuditConfig(audit_result_success=mode, disabled_services=("imap",))
    )
    assert chain_result(deny, audit, authenticated=authenticated) is ChainResult.DENY


def test_should_audit():
    assert should_audit(AuditConfig(), user_unknown_seen=False)
    assert not should_audit(AuditConfig(), user_unknown_seen=True)
    assert should_audit(AuditConfig(audit_process_unknown=True), user_unknown_seen=True)


def test_rules_module_is_pure():
    source = (Path(__file__).parents[2] / "src" / "dovecot_appauth" / "audit" / "rules.py").read_text()
    imports = set(re.findall(r"^(?:from|import) (\S+)", source, re.M))
    assert imports <= {
        "__future__",
        "enum",
        "math",
        "collections.abc",
        "dataclasses",
        "typing",
        "..config",
        ".facts",
        "..ipnum",  # addresses as integers: pure, only `_socket` (for IPv6 texts)
        ".lists", ".patterns",
        "..values",  # the pure record base class that replaced dataclasses
    }, imports


# ---------------------------------------------------------------------------
# the sample files (fail2ban style): every rule kind needs a sample


@dataclass
class Sample:
    file: str
    line: int
    expect: str
    ip: str
    user: str = "alice"
    service: str = "imap"
    source: str = "global"
    facts: dict = field(default_factory=dict)


DIRECTIVE = re.compile(r"#\s*(deny|allow|user-allow (\S+))\s+(\w+):\s?(.*)$")


def load_samples(path: Path) -> tuple[Lists, AuditConfig, list[Sample]]:
    lists, config, samples = Lists(), {}, []
    expect = None
    user_allow: dict[str, dict[str, list[str]]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = DIRECTIVE.match(line)
        if m:
            which, user, kind, entry = m.groups()
            entries, problems = parse_list(kind, entry, path.name, first_line=number)
            assert entries, f"{path.name}:{number}: {problems}"
            target = lists.deny if which == "deny" else lists.allow
            if user is not None:
                target = lists.user_allow.setdefault(user.lower(), {})
                user_allow.setdefault(user.lower(), {}).setdefault(kind, []).append(entry)
            target[kind] = (*target.get(kind, ()), *entries)
        elif line.startswith("# config:"):
            config.update(json.loads(line.split(":", 1)[1]))
        elif line.startswith("# expect:"):
            expect = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            assert expect, f"{path.name}:{number}: input line without '# expect:' above"
            head, _, facts = line.partition("{")
            words = head.split()
            sample = Sample(path.name, number, expect, words[0], facts=json.loads("{" + facts))
            for word in words[1:]:
                key, _, value = word.partition("=")
                setattr(sample, {"class": "source"}.get(key, key), value)
            samples.append(sample)
            expect = None
    for key in ("disabled_services", "ignore_networks"):
        if key in config:
            config[key] = tuple(config[key])
    config["allow_users"] = {
        u: UserAllow(**{k: tuple(v) for k, v in kinds.items()}) for u, kinds in user_allow.items()
    }
    return lists, AuditConfig(**config), samples


def all_samples():
    for path in sorted(SAMPLES.glob("*.txt")):
        if path.name == "README.txt":
            continue
        lists, audit, samples = load_samples(path)
        for s in samples:
            yield pytest.param(lists, audit, s, id=f"{s.file}:{s.line}")


def check_sample(lists: Lists, audit: AuditConfig, s: Sample):
    facts = IpFacts.from_json({"ip": s.ip, **s.facts})
    source = classify_source(s.ip, audit) if s.source == "auto" else GLOBAL
    v = evaluate(s.user, s.service, s.ip, facts, lists, audit, source)
    words = s.expect.split()
    where = f"{s.file}:{s.line}: {v.reason}"
    assert v.outcome is Outcome[words[0]], where
    for word in words[1:]:
        key, _, value = word.partition("=")
        if key == "rule":
            assert v.matched is not None and v.matched.rule == value, where
        elif key == "log":
            assert v.log is (value == "yes"), where
        elif key == "enforced":
            assert v.effective_deny is (value == "yes"), where
        else:
            raise AssertionError(f"{s.file}:{s.line}: unknown expectation {word}")
    return v


@pytest.mark.parametrize(("lists", "audit", "sample"), list(all_samples()))
def test_sample(lists, audit, sample):
    check_sample(lists, audit, sample)


def test_samples_cover_every_rule():
    """Like fail2ban's samples test: a rule kind without a sample fails."""
    denied, allowed = set(), set()
    for param in all_samples():
        lists, audit, s = param.values
        v = check_sample(lists, audit, s)
        if v.matched is not None and v.outcome is Outcome.DENY:
            denied.add(v.matched.rule)
        if v.matched is not None and v.outcome is Outcome.ALLOW:
            allowed.add(v.matched.rule)
    assert set(LIST_KINDS) - denied == set(), "deny kinds without a DENY sample"
    needed = {f"allow:{k}" for k in ALLOW_KINDS} | {f"user-allow:{k}" for k in ALLOW_KINDS} | {"source"}
    assert needed - allowed == set(), "allow kinds without an ALLOW sample"
    assert "service" in denied
