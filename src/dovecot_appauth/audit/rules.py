"""The rule engine: (user, service, source, facts, lists, audit config) -> `Verdict`. Pure.

What belongs here: classifying a source address, the order of the checks, how each list
kind matches, and the verdict with its reason. What does not: reading files (`lists.py`),
looking anything up (`enrich.py`), logging (`audit/line.py`), exit codes (`login.py`). No I/O,
no clock, stdlib only.

Theory of operation (order as upstream's `audit/line.py`, plus allow lists):
1. disabled services are denied, whatever the source;
2. ignored networks are neither judged nor logged; sources that are not globally
   reachable (IANA special registries, `ipaddress.is_global`, with 100.64.0.0/10 counted
   as global and IPv4-mapped IPv6 judged by its IPv4) are exempt, logged if `log_local`.
   Addresses are `(version, int)` pairs (`ipnum.py`): a login never imports `ipaddress`;
   the is_global table is derived from it when the config cache is written;
3. allow lists (global files, then the user's inline lists) win over every deny list;
   so they match only facts the admin can trust: the address itself, AS numbers from
   MaxMind's ASN database and the origin-AS service (BGP-derived), countries from
   MaxMind. Never RDAP's or DNS's: those are written by whoever holds the client's
   address space, who can make a lookup fail but must never make an allow list match
   (docs/SECURITY.md, "The client"). Deny lists match every source: more can only deny more;
4. the deny lists in `DENY_RULES` order; the first match denies;
5. nothing matched: `Outcome.UNKNOWN` (no objection; see `Outcome`).
A fact that is unknown (its source timed out, is not configured, or its MaxMind database
could not be read) never matches an allow or deny entry; when no list matched, the reason
names each such source ("unknown: whois, maxmind city"). `reverse_hostname` `<>` matches
only a real "no PTR" (`facts.NO_PTR`).

Outcome semantics (upstream `main.py` /audit endpoint and `dovecot/audit.lua`): upstream
has two results, 403 "forbidden" (a list or a disabled service matched) and 200
"success" (everything else, local sources included). In an audit-only passdb chain the
200 is then mapped by `audit_result_success`: "ok" -> PASSDB_RESULT_OK when a previous
passdb already authenticated (`skip_password_check`), else USER_UNKNOWN; "unknown" ->
USER_UNKNOWN; "next" -> PASSDB_RESULT_NEXT. `audit_process_unknown` decides whether a
request for which Dovecot has already seen "user unknown" is audited (and logged) at all;
upstream answers USER_UNKNOWN without auditing when it is false. Neither option changes
which rule matches, so `evaluate` does not read them; `chain_result` applies them.
"""

from __future__ import annotations

import math

from ..ipnum import address as ip_address
from ..ipnum import is_global, is_mapped, unmapped
from ..ipnum import network as ip_network
from ..ipnum import text as address_text
from ..values import Choice, Value
from .patterns import regex_fullmatch

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from ..config import AuditConfig
    from .facts import IpFacts
    from .lists import Entry, Lists

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius


class Outcome(Choice):
    """What the audit says about a login.

    ALLOW   explicitly fine: an allow list matched, or the source is local / ignored.
    DENY    a deny list or a disabled service matched.
    UNKNOWN no rule had an objection (upstream's plain "success"). A login with a verified
            app password goes ahead; an audit-only chain maps it by `audit_result_success`.
    ALLOW and UNKNOWN never deny; they differ only in what the log and `explain` say.
    """

    ALLOW = "allow"
    DENY = "deny"
    UNKNOWN = "unknown"


class SourceKind(Choice):
    IGNORED = "ignored"  # in ignore_networks: neither judged nor logged
    LOCAL = "local"  # not globally reachable: exempt from the lists
    GLOBAL = "global"  # judged by the lists


class SourceClass(Value):
    __slots__ = ("kind", "location", "name", "network")

    def __init__(self, kind: SourceKind, name: str | None = None, location: str | None = None,
                 network: str | None = None):
        self.kind = kind
        self.name = name  # LOCAL: the local_networks name, else local_locationname
        self.location = location  # LOCAL: local_locationname (upstream's as_desc for local sources)
        self.network = network  # the ignore/local network that matched, if any


class CheckResult(Choice):
    MATCH = "match"
    NO_MATCH = "no match"
    UNKNOWN = "unknown"  # the fact it needs is unknown: not matched
    NO_LIST = "no list"  # not configured (or empty for this user)
    NOT_REACHED = "not reached"  # an earlier rule decided


class Match(Value):
    __slots__ = ("entry", "file", "kind", "line", "list", "value")

    def __init__(self, kind: str, file: str | None, line: int | None, value: str, list: str = "deny",
                 entry: str | None = None) -> None:
        self.kind = kind  # list kind ("as_numbers"), or "service" / "source"
        self.file = file  # list file, or the config location of an inline list
        self.line = line
        self.value = value  # the fact that matched, as shown in the reason
        self.list = list  # "deny" | "allow" | "user-allow" | "service" | "source"
        self.entry = entry  # the entry as written

    @property
    def rule(self) -> str:
        """`as_numbers`, `allow:ip_networks`, `user-allow:countries`, `service`, `source`."""
        return self.kind if self.list in ("deny", "service", "source") else f"{self.list}:{self.kind}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file is not None else "config"


class Check(Value):
    __slots__ = ("detail", "kind", "list", "result")

    def __init__(self, list: str, kind: str, result: CheckResult, detail: str = ""):
        self.list = list  # "deny" | "allow" | "user-allow"
        self.kind = kind
        self.result = result
        self.detail = detail


class Verdict(Value):
    __slots__ = ("audit_only", "checks", "log", "matched", "outcome", "reason", "source", "unknown")

    def __init__(
        self,
        outcome: Outcome,
        reason: str,
        matched: Match | None,
        checks: tuple[Check, ...] = (),
        log: bool = True,
        audit_only: bool = False,
        source: SourceClass | None = None,
        unknown: tuple[str, ...] = (),
    ):
        self.outcome = outcome
        self.reason = reason
        self.matched = matched
        self.checks = checks
        self.log = log  # write the audit line
        self.audit_only = audit_only  # recorded, never enforced
        self.source = SourceClass(SourceKind.GLOBAL) if source is None else source
        self.unknown = unknown  # facts that were unknown while judging

    @property
    def effective_deny(self) -> bool:
        """Whether the login must be refused: a DENY outside audit-only mode."""
        return self.outcome is Outcome.DENY and not self.audit_only

    @property
    def result(self) -> str:
        """The `result=` word of the audit line."""
        if self.outcome is Outcome.DENY and self.audit_only:
            return "deny-audit-only"
        return self.outcome.value


# ---------------------------------------------------------------------------
# source classification


def _raw_address(ip: str) -> tuple[int, int] | None:
    # a zone index (fe80::1%eth0) says nothing about reachability; 3.11 trips over it
    return ip_address(ip.strip().split("%", 1)[0])


def _address(ip: str) -> tuple[int, int] | None:
    """`(version, int)` of `ip`, an IPv4-mapped IPv6 address as its IPv4; None if not an address."""
    addr = _raw_address(ip)
    return None if addr is None else unmapped(addr)


def _in_networks(addr: tuple[int, int], networks: Iterable[str]) -> str | None:
    """The first of `networks` ([audit] ignore/local/global_networks) holding `addr`. Read
    as the config check reads them (`ipnum.network`, i.e. `ip_network(strict=False)`: a
    prefix length, a netmask or a hostmask), so that what check-config accepts matches."""
    for text in networks:
        try:
            version, net, prefix = ip_network(text.strip())
        except ValueError:
            continue  # reported by check-config
        if _network_contains(version, net, prefix, addr):
            return text
    return None


def _network_contains(version: int, net: int, prefix: int, addr: tuple[int, int]) -> bool:
    if version != addr[0]:
        return False
    shift = (32 if version == 4 else 128) - prefix
    return (addr[1] >> shift) == (net >> shift)


def is_globally_reachable(ip: str) -> bool:
    """IANA special registries via `is_global`; 100.64.0.0/10 counts as global; mapped -> IPv4."""
    addr = _address(ip)
    if addr is None:
        return False
    return is_global(addr)


def classify_source(ip: str | None, audit: AuditConfig) -> SourceClass:
    """IGNORED, LOCAL(name) or GLOBAL. No address (a local process) counts as LOCAL."""
    location = audit.local_locationname
    if ip is None or not ip.strip():
        return SourceClass(SourceKind.LOCAL, location, location)
    addr = _address(ip)
    if addr is None:
        # Dovecot only passes valid addresses; judge it, nothing address-based can match
        return SourceClass(SourceKind.GLOBAL)
    ignored = _in_networks(addr, audit.ignore_networks)
    if ignored is not None:
        return SourceClass(SourceKind.IGNORED, network=ignored)
    local = _in_networks(addr, audit.local_networks)
    if local is not None:
        # upstream: a configured local network is local even if globally routable
        return SourceClass(SourceKind.LOCAL, audit.local_networks[local], location, local)
    if not (is_global(addr) or _in_networks(addr, audit.global_networks)):
        return SourceClass(SourceKind.LOCAL, location, location)
    return SourceClass(SourceKind.GLOBAL)


# ---------------------------------------------------------------------------
# matchers: (entries, subject) -> (entry, shown value) | None | UNKNOWN


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
if TYPE_CHECKING:
    Found = tuple[Entry, str] | None | _Unknown


class Subject(Value):
    """The facts in the shape the matchers need, computed once per evaluation."""

    __slots__ = ("addr", "addr6", "facts")

    def __init__(self, addr: tuple[int, int] | None, addr6: tuple[int, int] | None, facts: IpFacts | None):
        self.addr = addr  # (version, int) (ipnum.py), IPv4-mapped already unwrapped
        self.addr6 = addr6  # the mapped form too, for IPv6 entries like ::ffff:0:0/96
        self.facts = facts

    @property
    def whois(self) -> Any:
        return self.facts.whois if self.facts else None

    @property
    def maxmind(self) -> Any:
        return self.facts.maxmind if self.facts else None


def _subject(ip: str, facts: IpFacts | None) -> Subject:
    raw = _raw_address(ip)
    addr6 = raw if raw is not None and is_mapped(raw) else None
    return Subject(None if raw is None else unmapped(raw), addr6, facts)


def match_ip_networks(entries: tuple[Entry, ...], s: Subject) -> Found:
    if s.addr is None:
        return UNKNOWN
    index = getattr(entries, "networks", None)  # a kept list's compiled form (matchers.py)
    if index is not None:
        i = index.first(s.addr, s.addr6)
        return None if i is None else (entries[i], address_text(s.addr6 or s.addr))
    for e in entries:
        version, net, prefix = e.value
        if _network_contains(version, net, prefix, s.addr) or (
            s.addr6 is not None and _network_contains(version, net, prefix, s.addr6)
        ):
            return e, address_text(s.addr6 or s.addr)
    return None


def ip_in_list(entries: tuple[Entry, ...], ip: str) -> Entry | None:
    """The first `ip_networks` entry that contains `ip` (used by the throttle's exemption)."""
    found = match_ip_networks(entries, _subject(ip, None))
    return found[0] if isinstance(found, tuple) else None


def _first_regex(entries: tuple[Entry, ...], values: Iterable[str]) -> Found:
    prefilter = getattr(entries, "regexes", None)  # a kept list's compiled form (matchers.py)
    if prefilter is not None and not any(prefilter.may_match(v) for v in values):
        return None
    for e in entries:
        for value in values:
            if regex_fullmatch(e.value, value, e.hint):
                return e, value
    return None


def match_reverse_hostname(entries: tuple[Entry, ...], s: Subject) -> Found:
    rdns = s.facts.rdns if s.facts else None
    if rdns is None:
        return UNKNOWN  # unknown is not "no PTR": `<>` must not match it
    return _first_regex(entries, (rdns,))


def match_network_name(entries: tuple[Entry, ...], s: Subject) -> Found:
    name = s.whois.net_name if s.whois else None
    return UNKNOWN if name is None else _first_regex(entries, (name,))


def _first_in(entries: tuple[Entry, ...], values: Iterable[Any]) -> Entry | None:
    """The first entry, in file order, whose value is one of `values`."""
    by_value = getattr(entries, "by_value", None)  # a kept list's compiled form (matchers.py)
    if by_value is not None:
        found = [by_value[v] for v in values if v in by_value]
        return entries[min(found)] if found else None
    wanted = values if isinstance(values, (tuple, dict, set, frozenset)) else tuple(values)
    for e in entries:
        if e.value in wanted:
            return e
    return None


def _equal(entries: tuple[Entry, ...], value: Any, shown: str | None = None) -> Found:
    if value is None:
        return UNKNOWN
    e = _first_in(entries, (value,))
    return None if e is None else (e, shown if shown is not None else str(value))


def match_network_cc(entries: tuple[Entry, ...], s: Subject) -> Found:
    cc = s.whois.net_cc if s.whois else None
    return _equal(entries, cc.upper() if cc else None)


def match_as_cc(entries: tuple[Entry, ...], s: Subject) -> Found:
    cc = s.facts.as_cc if s.facts else None  # RDAP's autnum country, else the origin-AS service's
    return _equal(entries, cc.upper() if cc else None)


def match_entities(entries: tuple[Entry, ...], s: Subject) -> Found:
    if s.whois is None:
        return UNKNOWN
    handles = {h.upper(): h for h in s.whois.entities if h}
    e = _first_in(entries, handles)
    return None if e is None else (e, handles[e.value])


def match_as_numbers(entries: tuple[Entry, ...], s: Subject) -> Found:
    asns = s.facts.asns if s.facts else ()
    if not asns:
        return UNKNOWN
    e = _first_in(entries, asns)
    return None if e is None else (e, f"AS{e.value}")


def match_as_names(entries: tuple[Entry, ...], s: Subject) -> Found:
    origin = s.facts.origin if s.facts else None
    names = [n for n in (s.whois.as_desc if s.whois else None, s.maxmind.as_org if s.maxmind else None,
                         origin.as_name if origin else None) if n]
    return UNKNOWN if not names else _first_regex(entries, names)


def match_geo_location_ids(entries: tuple[Entry, ...], s: Subject) -> Found:
    mm = s.maxmind
    if mm is None:
        return UNKNOWN
    places = [mm.city, *mm.subdivisions, mm.country, mm.continent]
    places += [mm.registered_country, mm.represented_country]
    ids = {p.geoname_id: p for p in places if p.geoname_id is not None}
    if not ids:
        return UNKNOWN
    e = _first_in(entries, ids)
    if e is None:
        return None
    place = ids[e.value]
    return e, f"{place.geoname_id}/{place.name}"


def match_coordinates(entries: tuple[Entry, ...], s: Subject) -> Found:
    mm = s.maxmind
    if mm is None or mm.latitude is None or mm.longitude is None:
        return UNKNOWN
    radius = float(mm.accuracy_radius_km or 0)  # unknown accuracy: treat MaxMind's answer as a point
    index = getattr(entries, "circles", None)  # a kept list's compiled form (matchers.py)
    near = index.candidates(mm.latitude, radius) if index is not None else None
    for e in (entries if near is None else [entries[i] for i in near]):
        lat, lon, our_radius, intersection = e.value
        if circle_rule_matches(lat, lon, our_radius, intersection, mm.latitude, mm.longitude, radius):
            return e, f"{mm.latitude},{mm.longitude} ±{mm.accuracy_radius_km}km"
    return None


def match_trusted_as_numbers(entries: tuple[Entry, ...], s: Subject) -> Found:
    """Allow lists: the AS numbers of MaxMind's ASN database and the origin-AS service only
    (`IpFacts.trusted_asns`); RDAP's origin AS is the registrant's word. None of them known:
    UNKNOWN (not a match)."""
    asns = s.facts.trusted_asns if s.facts else ()
    if not asns:
        return UNKNOWN
    e = _first_in(entries, asns)
    return None if e is None else (e, f"AS{e.value}")


def match_countries(entries: tuple[Entry, ...], s: Subject) -> Found:
    """Allow lists only: MaxMind's country of the address (never RDAP's network country, which
    the registrant writes); UNKNOWN when MaxMind has none."""
    cc = s.maxmind.country.code if s.maxmind else None
    return _equal(entries, cc.upper() if cc else None)


# The deny lists, in upstream's order. A table, so `explain` and the docs can list it.
DENY_RULES: tuple[tuple[str, Callable[[tuple[Entry, ...], Subject], Found]], ...] = (
    ("ip_networks", match_ip_networks),
    ("reverse_hostname", match_reverse_hostname),
    ("network_name", match_network_name),
    ("network_cc", match_network_cc),
    ("entities", match_entities),
    ("as_numbers", match_as_numbers),
    ("as_names", match_as_names),  # whois as_desc, MaxMind as_org and the origin-AS service's AS name
    ("as_cc", match_as_cc),
    ("geo_location_ids", match_geo_location_ids),
    ("coordinates", match_coordinates),
)

# Allow lists (global files, then the user's inline lists), checked before every deny list.
# They win over every deny list, so they match only facts the client's network holder
# cannot write (see the module docstring, item 3).
ALLOW_RULES: tuple[tuple[str, Callable[[tuple[Entry, ...], Subject], Found]], ...] = (
    ("ip_networks", match_ip_networks),
    ("as_numbers", match_trusted_as_numbers),
    ("countries", match_countries),
)


# ---------------------------------------------------------------------------
# coordinates: great-circle distance and the overlap of two circles


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def circle_overlap_area(d: float, r1: float, r2: float) -> float:
    """Area of the lens where two circles (radii r1, r2, centres d apart) overlap.

    Planar geometry with the great-circle distance: the error is negligible for radii
    well below the Earth's radius, which is what accuracy radii and deny circles are.
    """
    if r1 <= 0 or r2 <= 0 or d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = math.acos(max(-1.0, min(1.0, (d * d + r1 * r1 - r2 * r2) / (2 * d * r1))))
    a2 = math.acos(max(-1.0, min(1.0, (d * d + r2 * r2 - r1 * r1) / (2 * d * r2))))
    k = (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)
    return r1 * r1 * a1 + r2 * r2 * a2 - 0.5 * math.sqrt(max(0.0, k))


def covered_fraction(d: float, ours: float, theirs: float) -> float:
    """Share of MaxMind's circle (radius `theirs`) covered by ours; a point is 1 or 0."""
    if theirs <= 0:
        return 1.0 if d <= ours else 0.0
    return circle_overlap_area(d, ours, theirs) / (math.pi * theirs * theirs)


def circle_rule_matches(
    lat: float, lon: float, radius: float, intersection: float, mm_lat: float, mm_lon: float, mm_radius: float
) -> bool:
    """A coordinates entry matches when our circle covers more than `intersection` of MaxMind's;
    with intersection >= 1, when MaxMind's centre lies inside our circle."""
    d = haversine_km(lat, lon, mm_lat, mm_lon)
    if intersection >= 1.0:
        return d <= radius
    return covered_fraction(d, radius, mm_radius) > intersection


# ---------------------------------------------------------------------------
# evaluation


def _unknown_facts(facts: IpFacts | None) -> tuple[str, ...]:
    """The facts the reason names as unknown: a source without an answer, and each MaxMind
    database that could not be read ("maxmind city", "maxmind asn")."""
    if facts is None:
        return ("rdns", "maxmind", "whois")
    unknown: list[str] = []
    for name in ("rdns", "maxmind", "whois"):
        value = getattr(facts, name)
        if value is None:
            unknown.append(name)
        elif name == "maxmind":
            unknown.extend(f"maxmind {part}" for part in value.unavailable)
    return tuple(unknown)


def evaluate(
    user: str,
    service: str,
    ip: str,
    facts: IpFacts | None,
    lists: Lists,
    audit: AuditConfig,
    source_class: SourceClass | None = None,
) -> Verdict:
    """Judge one login. Pure: the same inputs give the same verdict."""
    source = source_class if source_class is not None else classify_source(ip, audit)
    only = audit.audit_only
    unknown = _unknown_facts(facts) if source.kind is SourceKind.GLOBAL else ()

    def verdict(
        outcome: Outcome, reason: str, matched: Match | None, checks: list[Check], log: bool
    ) -> Verdict:
        if only and outcome is Outcome.DENY:
            reason = f"audit-only, not enforced: {reason}"
        return Verdict(outcome, reason, matched, tuple(checks), log, only, source, unknown)

    log_default = source.kind is not SourceKind.IGNORED
    if service.lower() in audit.disabled_services:
        m = Match("service", None, None, service, "service")
        return verdict(Outcome.DENY, f"service: {service} is disabled", m, [], log_default)
    if source.kind is SourceKind.IGNORED:
        m = Match("source", None, None, source.network or ip, "source")
        return verdict(Outcome.ALLOW, f"source: {ip} is in ignore_networks {source.network}", m, [], False)
    if source.kind is SourceKind.LOCAL:
        m = Match("source", None, None, source.name or "", "source")
        return verdict(Outcome.ALLOW, f"source: {ip} is local ({source.name})", m, [], audit.log_local)

    subject = _subject(ip, facts)
    checks: list[Check] = []
    stages = (
        ("allow", ALLOW_RULES, lists.allow, Outcome.ALLOW),
        ("user-allow", ALLOW_RULES, lists.user_allow.get(user.lower(), {}), Outcome.ALLOW),
        ("deny", DENY_RULES, lists.deny, Outcome.DENY),
    )
    decided: tuple[Outcome, str, Match] | None = None
    for stage, rules, configured, outcome in stages:
        for kind, matcher in rules:
            if decided is not None:
                checks.append(Check(stage, kind, CheckResult.NOT_REACHED))
                continue
            entries = configured.get(kind)
            if entries is None:
                checks.append(Check(stage, kind, CheckResult.NO_LIST))
                continue
            found = matcher(entries, subject)
            if isinstance(found, tuple):
                entry, value = found
                m = Match(kind, entry.file, entry.line, value, stage, entry.text)
                checks.append(Check(stage, kind, CheckResult.MATCH, f"{m.where} {entry.text}"))
                label = kind if stage == "deny" else f"{stage} {kind}"
                decided = (outcome, f"{label}: {m.where} matched {value}", m)
            elif found is None:
                checks.append(Check(stage, kind, CheckResult.NO_MATCH, f"{len(entries)} entries"))
            else:
                checks.append(Check(stage, kind, CheckResult.UNKNOWN, "fact unknown"))
    if decided is not None:
        return verdict(*decided, checks, True)
    reason = "no list matched"
    if unknown:
        reason += f" (unknown: {', '.join(unknown)})"
    return verdict(Outcome.UNKNOWN, reason, None, checks, True)


class ChainResult(Choice):
    """What an audit-only passdb answers (upstream's HTTP status -> PASSDB_RESULT_*)."""

    OK = "ok"  # 200: PASSDB_RESULT_OK
    DENY = "deny"  # 403: PASSDB_RESULT_USER_DISABLED
    UNKNOWN = "unknown"  # 404: PASSDB_RESULT_USER_UNKNOWN
    NEXT = "next"  # 307: PASSDB_RESULT_NEXT


def should_audit(audit: AuditConfig, *, user_unknown_seen: bool) -> bool:
    """Upstream skips (and does not log) requests Dovecot already found unknown, unless
    `audit_process_unknown`; it then answers ChainResult.UNKNOWN."""
    return audit.audit_process_unknown or not user_unknown_seen


def chain_result(verdict: Verdict, audit: AuditConfig, *, authenticated: bool) -> ChainResult:
    """Upstream's mapping for an audit-only passdb; `authenticated` = skip_password_check."""
    if verdict.effective_deny:
        return ChainResult.DENY
    mode = audit.audit_result_success
    if mode == "next":
        return ChainResult.NEXT
    if mode == "ok" and authenticated:
        return ChainResult.OK
    return ChainResult.UNKNOWN
