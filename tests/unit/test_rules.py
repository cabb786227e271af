"""The rule engine (rules.py): pure, no files, no sockets. Plus the sample files walker."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dovecot_appauth.audit.facts import NO_PTR, GeoName, IpFacts, MaxMindFacts, WhoisFacts
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
    facts = IpFacts("198.51.100.7", rdns="x.bad.example", whois=WhoisFacts(asn=64500, net_cc="XX"))
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
