"""Addresses as integers (`ipnum.py`) give the verdicts `ipaddress` gave.

Property tests against the `ipaddress` implementation they replace on the login path:
acceptance and value of addresses (IPv4, IPv6, IPv4-mapped, zones) and networks (/0, /32,
/128, host bits set, netmasks), the text of an address, `is_global`, and, end to end, the
source classification, the ip_networks matcher and the policy network check, each
compared with the former `ipaddress`-based code kept here as the reference.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dovecot_appauth import ipnum
from dovecot_appauth.audit.lists import Entry, parse_network
from dovecot_appauth.audit.rules import SourceKind, classify_source, ip_in_list, is_globally_reachable
from dovecot_appauth.config import AuditConfig
from dovecot_appauth.policy import in_networks

SHARED = ipaddress.IPv4Network("100.64.0.0/10")


def _ref_address(text: str):
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    return a.version, int(a)


def _ref_network(text: str):
    try:
        n = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return n.version, int(n.network_address), n.prefixlen


def _edges() -> list[int]:
    """Every first/last address of the networks ipaddress's tables hold, and their neighbours."""
    out = []
    for constants in (ipaddress._IPv4Constants, ipaddress._IPv6Constants):
        for value in vars(constants).values():
            for net in value if isinstance(value, list) else [value]:
                if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                    top = (1 << net.max_prefixlen) - 1
                    for v in (int(net.network_address), int(net.broadcast_address)):
                        out += [(net.version, max(0, min(top, v + d))) for d in (-1, 0, 1)]
    out += [(4, int(SHARED.network_address) - 1), (4, int(SHARED.broadcast_address) + 1)]
    return out


v4_int = st.integers(0, 2**32 - 1)
v6_int = st.integers(0, 2**128 - 1)
edge = st.sampled_from(_edges())
any_addr = st.one_of(v4_int.map(lambda v: (4, v)), v6_int.map(lambda v: (6, v)),
                     v4_int.map(lambda v: (6, 0xFFFF << 32 | v)), edge)


def _texts(addr: tuple[int, int]) -> st.SearchStrategy[str]:
    version, value = addr
    if version == 4:
        return st.just(str(ipaddress.IPv4Address(value)))
    a = ipaddress.IPv6Address(value)
    forms = [a.compressed, a.exploded, a.exploded.upper(), a.compressed.upper()]
    if value >> 32 == 0xFFFF or value >> 32 == 0:
        forms.append(f"::{'ffff:' if value >> 32 else ''}{ipaddress.IPv4Address(value & 0xFFFFFFFF)}")
    return st.sampled_from(forms)


address_text = any_addr.flatmap(_texts)
# near-misses: the characters addresses are made of, in any order
junk = st.text(st.sampled_from("0123456789abcdefABCDEFxg:.%/ \x00\u0661+-"), max_size=45)
zone = st.sampled_from(["", "%eth0", "%", "%a%b", "%1"])


@settings(max_examples=2000)
@given(st.one_of(address_text, junk, st.tuples(address_text, zone).map("".join)))
@example("1.2.3.04")
@example("::ffff:01.2.3.4")
@example("1:2:3:4:5:6:7:8::")
@example("1:2:3:4:5:6:7::")
@example("::1.2.3.4")
@example("1.2.3.4%eth0")
@example("fe80::1%")
@example("fe80::1%eth0")
@example("\u0661.2.3.4")
@example(" 1.2.3.4")
@example("1.2.3.4\x00")
@example("")
@example("::")
@example("1::2::3")
@example("12345::")
@example("1:2:3:4:5:6:1.2.3.4")
@example("1:2:3:4:5:6:7:1.2.3.4")
@example("::%/")  # a "/" in the zone: refused by IPv6Address (found by hypothesis in a CI rehearsal)
@example("fe80::1%eth0/64")
def test_address_accepts_what_ipaddress_accepts(text):
    assert ipnum.address(text) == _ref_address(text)


@settings(max_examples=2000)
@given(st.one_of(
    st.tuples(address_text, st.sampled_from(["", "/"]), st.integers(0, 130).map(str) | junk).map("".join),
    st.tuples(address_text, st.just("/"), v4_int.map(lambda v: str(ipaddress.IPv4Address(v)))).map("".join),
    st.tuples(address_text, st.just("/"), st.integers(0, 32).map(
        lambda p: str(ipaddress.IPv4Network(f"0.0.0.0/{p}").netmask))).map("".join),
    st.tuples(address_text, st.just("/"), st.integers(0, 32).map(
        lambda p: str(ipaddress.IPv4Network(f"0.0.0.0/{p}").hostmask))).map("".join),
    st.tuples(address_text, zone, st.just("/64")).map("".join),
    junk,
))
@example("0.0.0.0/0")
@example("1.2.3.4/32")
@example("1.2.3.4/33")
@example("::/0")
@example("::1/128")
@example("::1/129")
@example("10.1.2.3/8")  # host bits set: masked (strict=False)
@example("10.0.0.0/255.0.0.0")
@example("10.0.0.0/0.255.255.255")
@example("10.0.0.0/255.0.255.0")  # not contiguous
@example("10.0.0.0/0.0.0.0")
@example("10.0.0.0/255.255.255.255")
@example("fe80::%eth0/64")
@example("fe80::/64%eth0")
@example("1.2.3.4/")
@example("1.2.3.4/+8")
@example("1.2.3.4/ 8")
@example("1.2.3.4/8/8")
@example("2001:db8::/032")
def test_network_is_ip_network_not_strict(text):
    try:
        got = ipnum.network(text)
    except ValueError:
        got = None
    assert got == _ref_network(text)


def _ref_parse_network(text: str):
    """lists.parse_network as it was, on ipaddress (the reference)."""
    addr, slash, prefix_text = text.partition("/")
    try:
        a = ipaddress.IPv4Address(addr)
        version, bits, value = 4, 32, int(a)
    except ValueError:
        try:
            ip6 = ipaddress.IPv6Address(addr)
        except ValueError:
            return "not a network"
        if ip6.scope_id:
            return "scoped"
        version, bits, value = 6, 128, int(ip6)
    if slash:
        if not prefix_text.isascii() or not prefix_text.isdigit() or int(prefix_text) > bits:
            return "bad prefix"
        prefix = int(prefix_text)
    else:
        prefix = bits
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    net = cls((value, prefix), strict=False)
    warning = None if int(net.network_address) == value else f"{text} has host bits set; it is used as {net}"
    return (version, int(net.network_address), prefix), warning


@settings(max_examples=1500)
@given(st.one_of(
    st.tuples(address_text, st.sampled_from(["", "/"]), st.integers(0, 130).map(str) | junk).map("".join),
    st.tuples(address_text, zone, st.sampled_from(["", "/64"])).map("".join),
    junk,
))
@example("fe80::1%eth0")
@example("fe80::1%")
@example("10.1.2.3/8")
@example("2001:db8::1/32")
@example("::ffff:10.1.2.3/120")
def test_list_networks_parse_as_before(text):
    ref = _ref_parse_network(text)
    try:
        got = parse_network(text)
    except ValueError as e:
        message = str(e)
        kind = ("scoped" if "scoped" in message else "bad prefix" if "prefix" in message else "not a network")
        assert kind == ref
        return
    assert got == ref


@settings(max_examples=2000)
@given(any_addr)
@example((6, 0))
@example((6, 1))
@example((6, 2 << 16 | 3))  # ::2:3, which inet_ntop would write as ::0.2.0.3
@example((6, 0x20010DB8_00000000_00000000_00000001))
@example((6, 0x00010000_00000000_00010000_00000000))  # two runs of equal length: the first
def test_text_is_str_of_ipaddress(addr):
    version, value = addr
    ref = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
    assert ipnum.text(addr) == str(ref)


def test_the_is_global_table_is_derived_and_checks_out():
    table = ipnum.global_table()
    assert table is not None and set(table) == {4, 6}
    assert not ipnum.use_global_table({4: ((1,), (True,)), 6: ((0,), (True,))})  # not from 0
    assert not ipnum.use_global_table({4: ((0,), ("yes",)), 6: ((0,), (True,))})
    assert not ipnum.use_global_table("garbage")
    assert not ipnum.use_global_table({4: ((0, 9, 5), (True, False, True)), 6: ((0,), (True,))})  # unsorted
    assert ipnum.use_global_table(table)


@settings(max_examples=3000)
@given(any_addr)
def test_is_global_is_ipaddress_is_global(addr):
    version, value = addr
    a = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
    if version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped  # rules judges a mapped address by its IPv4
    assert ipnum.is_global(ipnum.unmapped(addr)) == (a.is_global or a in SHARED)
    assert is_globally_reachable(str(addr_text(addr))) == (a.is_global or a in SHARED)


def addr_text(addr):
    version, value = addr
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


# --- end to end: the former ipaddress-based checks as references ------------------------


def _ref_address_unmapped(ip: str):
    try:
        a = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return None
    return a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a


def _ref_in(addr, networks):
    """[audit] ignore/local/global_networks: what the config check accepts
    (`ip_network(strict=False)`: a prefix length, a netmask or a hostmask) is what matches."""
    for text in networks:
        try:
            network = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        if network.version == addr.version and addr in network:
            return text
    return None


def _ref_classify(ip, audit):
    if not ip.strip():
        return SourceKind.LOCAL, None  # no address: a local process
    addr = _ref_address_unmapped(ip)
    if addr is None:
        return SourceKind.GLOBAL, None
    ignored = _ref_in(addr, audit.ignore_networks)
    if ignored is not None:
        return SourceKind.IGNORED, ignored
    local = _ref_in(addr, audit.local_networks)
    if local is not None:
        return SourceKind.LOCAL, local
    if not (addr.is_global or addr in SHARED or _ref_in(addr, audit.global_networks)):
        return SourceKind.LOCAL, None
    return SourceKind.GLOBAL, None


network_text = st.one_of(
    st.tuples(any_addr.flatmap(_texts), st.just("/"), st.integers(0, 128).map(str)).map("".join),
    any_addr.flatmap(_texts),
    st.sampled_from(["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "::ffff:0:0/96", "0.0.0.0/0", "::/0",
                     "fe80::1%eth0/64", "bogus", "10.0.0.0/255.0.0.0", "198.51.100.0/0.0.0.255",
                     "198.51.100.0/255.255.255.0"]),
)
networks = st.lists(network_text, max_size=4)
client = st.one_of(address_text, st.tuples(address_text, zone).map("".join), junk)


@settings(max_examples=1500)
@given(client, networks, networks, networks)
@example("::ffff:10.1.2.3", ["10.0.0.0/8"], [], [])
@example("10.1.2.3", [], [], ["::ffff:0:0/96"])
@example("fe80::1%eth0", [], ["fe80::/10"], [])
@example("100.64.1.1", [], [], [])
@example("192.0.0.9", [], [], [])
@example("198.51.100.7", [], [], ["198.51.100.0/255.255.255.0"])  # a netmask: global (was: never matched)
@example("198.51.100.7", ["198.51.100.0/0.0.0.255"], [], [])  # a hostmask
def test_classify_source_as_before(ip, ignore, local, global_):
    audit = AuditConfig(ignore_networks=tuple(ignore), local_networks={n: f"name{i}" for i, n in enumerate(local)},
                        global_networks=tuple(global_))
    got = classify_source(ip, audit)
    kind, network = _ref_classify(ip, audit)
    assert got.kind is kind
    assert got.network == network


@settings(max_examples=1500)
@given(client, st.lists(network_text, max_size=6))
@example("::ffff:10.1.2.3", ["::ffff:0:0/96", "10.0.0.0/8"])
@example("::ffff:10.1.2.3", ["10.0.0.0/8"])
def test_ip_networks_matcher_as_before(ip, texts):
    entries = []
    for i, text in enumerate(texts):
        ref = _ref_parse_network(text)
        if not isinstance(ref, str):
            entries.append(Entry("f", i + 1, text, ref[0]))
    got = ip_in_list(tuple(entries), ip)
    try:
        raw = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        raw = None
    want = None
    if raw is not None:
        candidates = [_ref_address_unmapped(ip)]
        if isinstance(raw, ipaddress.IPv6Address) and raw.ipv4_mapped is not None:
            candidates.append(raw)
        for e in entries:
            if any(_ref_in(a, [e.text]) for a in candidates):
                want = e
                break
    assert got == want


def _ref_in_networks(ip, networks):
    if not ip or not networks:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for text in networks:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.version == address.version and address in network:
            return text
    return None


@settings(max_examples=1500)
@given(client, st.lists(network_text, max_size=4))
@example("::ffff:192.0.2.5", ["192.0.2.0/24"])
@example("fe80::1%eth0", ["fe80::%lo/64"])
@example("198.51.100.7", ["198.51.100.0/255.255.255.0"])
def test_policy_in_networks_as_before(ip, texts):
    assert in_networks(ip, tuple(texts)) == _ref_in_networks(ip, tuple(texts))


@pytest.mark.parametrize("ip", ["::ffff:203.0.113.9", "2001:db8:0:1::5", "192.0.2.1"])
def test_normalize_ip_as_before(ip):
    from dovecot_appauth.audit.enrich import normalize_ip

    a = ipaddress.ip_address(ip)
    assert normalize_ip(f" {ip} ") == str(getattr(a, "ipv4_mapped", None) or a)


@given(st.one_of(address_text, st.tuples(address_text, zone).map("".join), junk))
def test_normalize_ip_property(ip):
    from dovecot_appauth.audit.enrich import normalize_ip

    try:
        a = ipaddress.ip_address(ip.strip())
        want = str(getattr(a, "ipv4_mapped", None) or a)
    except ValueError:
        with pytest.raises(ValueError):
            normalize_ip(ip)
        return
    assert normalize_ip(ip) == want
