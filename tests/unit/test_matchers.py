"""Compiled list forms (matchers.py): the same verdicts as the entry-by-entry scan, faster.

Property tests (hypothesis) compare the compiled ip_networks index with `ipaddress` for
IPv4, IPv6 and IPv4-mapped IPv6 addresses, the regex pre-filter, the circle index and the
equality index with the plain scan; the rule samples of tests/samples/rules give the
same verdicts (reason, matched line, every check) with compiled lists.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dovecot_appauth.audit.facts import GeoName, IpFacts, MaxMindFacts, WhoisFacts
from dovecot_appauth.audit.lists import Lists, parse_list
from dovecot_appauth.audit.matchers import CompiledList, RegexSet
from dovecot_appauth.audit.rules import (
    Subject,
    _first_regex,
    _subject,
    match_as_numbers,
    match_coordinates,
    match_entities,
    match_geo_location_ids,
    match_ip_networks,
    match_network_cc,
)
from tests.unit.test_rules import all_samples, check_sample

# --- ip_networks: compiled index vs ipaddress -----------------------------------------------

# addresses concentrated in a few small ranges, so that random networks and random
# addresses actually meet (uniform 32/128-bit values would almost never match)
V4_BASES = (0x0A000000, 0xC6336400, 0xCB007100, 0x00000000, 0xFFFFFF00)
V6_BASES = (0x20010DB8 << 96, 0, 0xFFFF << 32, 0xFE80 << 112)


@st.composite
def v4_ints(draw) -> int:
    return (draw(st.sampled_from(V4_BASES)) + draw(st.integers(0, 0x3FF))) & 0xFFFFFFFF


@st.composite
def v6_ints(draw) -> int:
    base = draw(st.sampled_from(V6_BASES))
    if base == 0xFFFF << 32:  # ::ffff:a.b.c.d, the mapped range
        return base | draw(v4_ints())
    return base + draw(st.integers(0, 0xFFFF))


@st.composite
def networks(draw) -> str:
    if draw(st.booleans()):
        return f"{ipaddress.IPv4Address(draw(v4_ints()))}/{draw(st.integers(0, 32))}"
    return f"{ipaddress.IPv6Address(draw(v6_ints()))}/{draw(st.integers(0, 128))}"


@st.composite
def addresses(draw) -> str:
    kind = draw(st.sampled_from(("v4", "v6", "mapped")))
    if kind == "v4":
        return str(ipaddress.IPv4Address(draw(v4_ints())))
    if kind == "mapped":
        return f"::ffff:{ipaddress.IPv4Address(draw(v4_ints()))}"
    return str(ipaddress.IPv6Address(draw(v6_ints())))


def reference_first(texts: list[str], ip: str) -> int | None:
    """The ipaddress-based verdict: the first network (file order) containing the address;
    an IPv4-mapped IPv6 address counts as its IPv4 and, in IPv6 networks, as itself."""
    addr = ipaddress.ip_address(ip)
    forms = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        forms.append(addr.ipv4_mapped)
    for i, text in enumerate(texts):
        network = ipaddress.ip_network(text, strict=False)
        if any(f.version == network.version and f in network for f in forms):
            return i
    return None


def entries_of(kind: str, lines: list[str]):
    entries, problems = parse_list(kind, "\n".join(lines), f"{kind}.lst")
    assert len(entries) == len(lines), problems
    return tuple(entries)


@settings(max_examples=400, deadline=None)
@given(st.lists(networks(), min_size=0, max_size=30), addresses())
@example(["0.0.0.0/0"], "::ffff:192.0.2.1")
@example(["::ffff:0:0/96", "192.0.2.0/24"], "::ffff:192.0.2.1")  # the IPv6 entry comes first
@example(["::/0"], "192.0.2.1")  # an IPv6 network never holds a plain IPv4 address
@example(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32"], "10.1.2.3")
def test_network_index_gives_the_verdict_of_ipaddress(texts, ip):
    entries = entries_of("ip_networks", texts)
    subject = _subject(ip, None)
    expected = reference_first(texts, ip)
    compiled = match_ip_networks(CompiledList("ip_networks", entries), subject)
    scanned = match_ip_networks(entries, subject)
    assert compiled == scanned  # entry and the address as shown
    assert (None if compiled is None else entries.index(compiled[0])) == expected


def test_network_index_on_20000_networks_finds_the_first_entry():
    texts = [f"10.{i // 256}.{i % 256}.0/24" for i in range(20000)] + ["10.0.0.0/8", "2001:db8::/32"]
    compiled = CompiledList("ip_networks", entries_of("ip_networks", texts))
    assert match_ip_networks(compiled, _subject("10.77.1.9", None))[0].line == 77 * 256 + 1 + 1
    assert match_ip_networks(compiled, _subject("10.200.0.1", None))[0].line == 20001
    mapped = match_ip_networks(compiled, _subject("::ffff:10.78.0.1", None))
    assert mapped[0].line == 78 * 256 + 1 and mapped[1] == str(ipaddress.ip_address("::ffff:10.78.0.1"))
    assert match_ip_networks(compiled, _subject("2001:db8::1", None))[0].line == 20002
    assert match_ip_networks(compiled, _subject("192.0.2.1", None)) is None


# --- regex kinds: the pre-filter never hides a match --------------------------------------

PIECES = ("a", "b", "ab", "-", r"\.", ".", ".*", ".+", "[ab]", "(a|b)", "(?:ab)+", "$", "^", r"\d", "x?",
          r"(a)\1", "(?P<n>a)", "(?i)", "(?i:A)", "\n", "[", "*")


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")  # `[` then `[ab]`: meant
@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=5).map("".join), max_size=8),
       st.lists(st.text(alphabet="ab-.1A\nx", max_size=8), min_size=1, max_size=3))
@example([r"(a)\1", "b"], ["aa"])
@example(["(?i)AB", "x"], ["ab"])
@example([".*a.*", "a.*", ".*b", "ab"], ["xab"])
def test_regex_set_gives_the_verdict_of_the_scan(patterns, values):
    entries, _problems = parse_list("reverse_hostname", "\n".join(p for p in patterns if p.strip() == p),
                                    "rev.lst")
    entries = tuple(entries)
    compiled = CompiledList("reverse_hostname", entries)
    assert _first_regex(compiled, values) == _first_regex(entries, values)


def test_regex_set_keeps_patterns_that_cannot_share_an_alternation_apart():
    rs = RegexSet([r"(a)\1", "(?P<n>b)x", "(?i)abc", "plain[0-9]+", ".*suffix", "prefix.*", ".*mid.*", "exact"])
    assert set(rs.singles) == {r"(a)\1", "(?P<n>b)x", "(?i)abc"}
    assert rs.combined is not None and rs.combined.pattern == "(?:plain[0-9]+)"
    assert (rs.suffixes, rs.prefixes, rs.infixes, rs.exact) == (("suffix",), ("prefix",), ("mid",), {"exact"})
    for value in ("aa", "bx", "ABC", "plain42", "a-suffix", "prefix-a", "amidb", "exact"):
        assert rs.may_match(value), value
    assert not rs.may_match("nothing-here")


# --- equality kinds and circles -----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(64496, 64505), max_size=12), st.none() | st.integers(64496, 64505),
       st.none() | st.integers(64496, 64505))
def test_value_index_gives_the_first_entry_like_the_scan(asns, whois_asn, maxmind_asn):
    entries = entries_of("as_numbers", [f"AS{a}" for a in asns])
    facts = IpFacts(ip="192.0.2.1", whois=WhoisFacts(asn=whois_asn), maxmind=MaxMindFacts(asn=maxmind_asn))
    subject = Subject(None, None, facts)
    assert match_as_numbers(CompiledList("as_numbers", entries), subject) == match_as_numbers(entries, subject)


def test_value_index_for_countries_entities_and_geonames():
    facts = IpFacts(ip="192.0.2.1", whois=WhoisFacts(net_cc="de", entities=("org-x", "ORG-Y")),
                    maxmind=MaxMindFacts(city=GeoName(2925533, "Frankfurt am Main"),
                                         country=GeoName(2921044, "Germany", "DE")))
    s = Subject(None, None, facts)
    for kind, matcher, lines in (
        ("network_cc", match_network_cc, ["FR", "DE", "de"]),
        ("entities", match_entities, ["ORG-Z", "ORG-Y", "org-x"]),
        ("geo_location_ids", match_geo_location_ids, ["1", "2921044", "2925533"]),
    ):
        entries = entries_of(kind, lines)
        found = matcher(CompiledList(kind, entries), s)
        assert found == matcher(entries, s) and found[0].line == 2, kind


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(-90, 90), st.floats(-180, 180), st.floats(0.5, 20038),
                          st.sampled_from((0.0, 0.3, 0.9, 1.0, 2.0))), max_size=10),
       st.floats(-90, 90), st.floats(-180, 180), st.sampled_from((None, 0, 1, 20, 500, 5000)))
@example([(89.9, 0.0, 50.0, 1.0)], 89.95, 179.0, 20)  # near the pole, across the meridian
@example([(0.0, 179.9, 30.0, 0.5)], 0.0, -179.9, 10)  # across the antimeridian
def test_circle_index_gives_the_verdict_of_the_scan(circles, lat, lon, radius):
    lines = [f"{a!r},{b!r},{r!r},{i!r}" for a, b, r, i in circles]
    entries, _problems = parse_list("coordinates", "\n".join(lines), "coords.lst")
    entries = tuple(entries)
    facts = IpFacts(ip="192.0.2.1", maxmind=MaxMindFacts(latitude=lat, longitude=lon, accuracy_radius_km=radius))
    s = Subject(None, None, facts)
    assert match_coordinates(CompiledList("coordinates", entries), s) == match_coordinates(entries, s)


# --- whole verdicts: the rule samples with compiled lists ----------------------------------


def compiled_lists(lists: Lists) -> Lists:
    return Lists(
        deny={k: CompiledList(k, v) for k, v in lists.deny.items()},
        allow={k: CompiledList(k, v) for k, v in lists.allow.items()},
        user_allow={u: {k: CompiledList(k, v) for k, v in kinds.items()} for u, kinds in lists.user_allow.items()},
        problems=list(lists.problems),
    )


@pytest.mark.parametrize(("lists", "audit", "sample"), list(all_samples()))
def test_sample_verdicts_are_the_same_with_compiled_lists(lists, audit, sample):
    scanned = check_sample(lists, audit, sample)
    compiled = check_sample(compiled_lists(lists), audit, sample)
    assert (compiled.outcome, compiled.reason, compiled.matched, compiled.checks) == \
        (scanned.outcome, scanned.reason, scanned.matched, scanned.checks)
