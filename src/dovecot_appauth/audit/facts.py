"""What the enrichment sources know about a source IP: plain values, JSON round-trippable.

`IpFacts` is the record the rule engine, the audit line and the `log` row are built
from. Each source fills its own part (`rdns`, `maxmind`, `whois`) and reports how it
went in `sources`; a part that did not arrive stays None and counts as unknown.
Nothing here does I/O.
"""

from __future__ import annotations

from ..values import StrChoice, Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any


class SourceStatus(StrChoice):
    CACHED = "cached"  # served from the on-disk cache
    FETCHED = "fetched"  # asked the source during this login
    TIMEOUT = "timeout"  # the login's deadline ended the wait
    FAILED = "failed"  # the source answered with an error (kept briefly as a negative entry)
    UNAVAILABLE = "unavailable"  # not configured, file missing, library missing
    SKIPPED = "skipped"  # not needed (e.g. the address is local and not audited)


# Plain `Value` classes, not dataclasses (see values.py); `to_json` gives what
# `dataclasses.asdict` gave (nested dicts, tuples kept as tuples).


class GeoName(Value):
    """A MaxMind place: GeoNames id, English name and ISO code (any may be unknown)."""

    __slots__ = ("code", "geoname_id", "name")

    def __init__(self, geoname_id: int | None = None, name: str | None = None, code: str | None = None):
        self.geoname_id = geoname_id
        self.name = name
        self.code = code

    def label(self) -> str:
        """`id/name` as in upstream's audit line (`None/None` when unknown)."""
        return f"{self.geoname_id}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"geoname_id": self.geoname_id, "name": self.name, "code": self.code}


_NO_PLACE = GeoName()


# The MaxMind databases a lookup can miss (MaxMindFacts.unavailable), in this order
MAXMIND_PARTS = ("city", "asn")


class MaxMindFacts(Value):
    """What MaxMind's City and ASN databases say of an address.

    `unavailable` names the configured databases that could not be read for this lookup
    ("city", "asn"): their fields are empty because the file is damaged or missing, not
    because the address is not in it. The rule engine counts them as unknown
    (rules._unknown_facts) and enrich.py never caches such a partial answer.
    """

    __slots__ = (
        "accuracy_radius_km",
        "as_org",
        "asn",
        "city",
        "continent",
        "country",
        "latitude",
        "longitude",
        "postal_code",
        "registered_country",
        "represented_country",
        "subdivisions",
        "unavailable",
    )

    def __init__(
        self,
        city: GeoName = _NO_PLACE,
        subdivisions: tuple[GeoName, ...] = (),
        country: GeoName = _NO_PLACE,
        continent: GeoName = _NO_PLACE,
        registered_country: GeoName = _NO_PLACE,
        represented_country: GeoName = _NO_PLACE,
        latitude: float | None = None,
        longitude: float | None = None,
        accuracy_radius_km: int | None = None,
        postal_code: str | None = None,
        asn: int | None = None,
        as_org: str | None = None,
        unavailable: tuple[str, ...] = (),
    ):
        self.city = city
        self.subdivisions = subdivisions  # least specific first, as MaxMind orders them
        self.country = country
        self.continent = continent
        self.registered_country = registered_country
        self.represented_country = represented_country
        self.latitude = latitude
        self.longitude = longitude
        self.accuracy_radius_km = accuracy_radius_km
        self.postal_code = postal_code
        self.asn = asn  # from the ASN database
        self.as_org = as_org  # autonomous_system_organization
        self.unavailable = unavailable  # of MAXMIND_PARTS: configured, but could not be read

    def place(self) -> str | None:
        """A readable place for the `log.src_loc` column: `City, Subdivision, Country`."""
        parts = [self.city.name]
        if self.subdivisions:
            parts.append(self.subdivisions[-1].name)
        parts.append(self.country.name)
        text = ", ".join(p for p in parts if p)
        return text or None

    def to_json(self) -> dict[str, Any]:
        data = {
            "city": self.city.to_json(),
            "subdivisions": tuple(s.to_json() for s in self.subdivisions),
            "country": self.country.to_json(),
            "continent": self.continent.to_json(),
            "registered_country": self.registered_country.to_json(),
            "represented_country": self.represented_country.to_json(),
            "latitude": self.latitude,
            "longitude": self.longitude,
            "accuracy_radius_km": self.accuracy_radius_km,
            "postal_code": self.postal_code,
            "asn": self.asn,
            "as_org": self.as_org,
        }
        if self.unavailable:  # only then: the JSON of a complete answer is as it always was
            data["unavailable"] = self.unavailable
        return data


class WhoisFacts(Value):
    """RDAP (whois) network data, in upstream ipwhois terms."""

    __slots__ = ("as_cc", "as_desc", "asn", "entities", "net_cc", "net_name")

    def __init__(
        self,
        asn: int | None = None,
        as_cc: str | None = None,
        as_desc: str | None = None,
        net_name: str | None = None,
        net_cc: str | None = None,
        entities: tuple[str, ...] = (),
    ):
        self.asn = asn
        self.as_cc = as_cc
        self.as_desc = as_desc
        self.net_name = net_name
        self.net_cc = net_cc
        self.entities = entities

    def to_json(self) -> dict[str, Any]:
        return {"asn": self.asn, "as_cc": self.as_cc, "as_desc": self.as_desc, "net_name": self.net_name,
                "net_cc": self.net_cc, "entities": self.entities}


class OriginFacts(Value):
    """The origin AS of the address's routed prefix, from Team Cymru's DNS service.

    What upstream's ipwhois reported as `asn`, `asn_cidr`, `asn_country_code`,
    `asn_registry` and `asn_description` (sources/origin_as.py). All None when the
    service knows no route for the address.
    """

    __slots__ = ("as_name", "asn", "cc", "prefix", "registry")

    def __init__(
        self,
        asn: int | None = None,
        prefix: str | None = None,
        cc: str | None = None,
        registry: str | None = None,
        as_name: str | None = None,
    ):
        self.asn = asn
        self.prefix = prefix  # the routed prefix the AS announces
        self.cc = cc  # country of the prefix's registration (ipwhois' asn_country_code)
        self.registry = registry  # arin, ripencc, apnic, lacnic, afrinic
        self.as_name = as_name  # "NAME - description, CC" (ipwhois' asn_description)

    def to_json(self) -> dict[str, Any]:
        return {"asn": self.asn, "prefix": self.prefix, "cc": self.cc, "registry": self.registry,
                "as_name": self.as_name}


class SourceReport(Value):
    __slots__ = ("detail", "elapsed_ms", "status")

    def __init__(self, status: SourceStatus, elapsed_ms: float = 0.0, detail: str = ""):
        self.status = status
        self.elapsed_ms = elapsed_ms
        self.detail = detail  # why it failed, which file, ...: never a secret

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "elapsed_ms": self.elapsed_ms, "detail": self.detail}


# A PTR lookup that found no name is `NO_PTR`, matched by reverse_hostname lists as "<>".
NO_PTR = "<>"


class IpFacts(Value):
    __slots__ = ("ip", "maxmind", "origin", "rdns", "sources", "whois")

    def __init__(
        self,
        ip: str,
        rdns: str | None = None,
        maxmind: MaxMindFacts | None = None,
        whois: WhoisFacts | None = None,
        sources: dict[str, SourceReport] | None = None,
        origin: OriginFacts | None = None,
    ):
        self.ip = ip
        self.rdns = rdns  # PTR without trailing dot, NO_PTR when none, None when unknown
        self.maxmind = maxmind
        self.whois = whois
        self.sources = {} if sources is None else sources
        # set only when asked for (enrich.py: MaxMind's ASN database had no AS, or
        # [audit.origin_as] order = "origin-first"), so it never contradicts MaxMind unasked
        self.origin = origin

    @property
    def asns(self) -> tuple[int, ...]:
        """Every AS number a source reported, the preferred first (whois, origin AS, MaxMind)."""
        return _distinct_asns(self.whois, self.origin, self.maxmind)

    @property
    def trusted_asns(self) -> tuple[int, ...]:
        """The AS numbers an allow list may trust: the origin-AS service's (BGP-derived) and
        MaxMind's ASN database's (the admin's file). Never RDAP's: its origin AS
        (`originAutnums`) is written by whoever registered the network, i.e. the client's
        address space holder (docs/SECURITY.md, "The client")."""
        return _distinct_asns(self.origin, self.maxmind)

    @property
    def as_cc(self) -> str | None:
        """The AS's country: RDAP's autnum country, else the origin-AS service's."""
        if self.whois is not None and self.whois.as_cc:
            return self.whois.as_cc
        return self.origin.cc if self.origin is not None else None

    @property
    def as_desc(self) -> str | None:
        """The AS's description: RDAP's, else the origin-AS service's AS name."""
        if self.whois is not None and self.whois.as_desc:
            return self.whois.as_desc
        return self.origin.as_name if self.origin is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "rdns": self.rdns,
            "maxmind": None if self.maxmind is None else self.maxmind.to_json(),
            "whois": None if self.whois is None else self.whois.to_json(),
            "origin": None if self.origin is None else self.origin.to_json(),
            "sources": {name: report.to_json() for name, report in self.sources.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IpFacts:
        mm = data.get("maxmind")
        wh = data.get("whois")
        origin = data.get("origin")
        return cls(
            ip=data["ip"],
            rdns=data.get("rdns"),
            maxmind=maxmind_from_json(mm) if mm is not None else None,
            whois=whois_from_json(wh) if wh is not None else None,
            origin=origin_from_json(origin) if origin is not None else None,
            sources={
                name: SourceReport(SourceStatus(r["status"]), r.get("elapsed_ms", 0.0), r.get("detail", ""))
                for name, r in (data.get("sources") or {}).items()
            },
        )


def _geo(data: dict[str, Any] | None) -> GeoName:
    data = data or {}
    return GeoName(data.get("geoname_id"), data.get("name"), data.get("code"))


def _distinct_asns(*sources: Any) -> tuple[int, ...]:
    """The AS number of each source that has one, in the sources' order, each once."""
    found: list[int] = []
    for source in sources:
        if source is not None and source.asn is not None and source.asn not in found:
            found.append(source.asn)
    return tuple(found)


def as_number(value: Any) -> int | None:
    """`value` (an int, or text like "64500" or "AS64500") as an AS number: 0 < n < 2**32,
    what a 4-byte AS number can be (AS0 means "not routed", RFC 7607); None when it is
    none. Keeps numbers from RDAP, a damaged file or a cache row out of the `audit_events`
    row, where SQLite takes no integer above 2**63 - 1 (OverflowError)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        digits = value.strip()
        if digits[:2].upper() == "AS":
            digits = digits[2:]
        # ASCII digits only: int() also takes "+7", " 7", "6_4500" and other scripts' digits
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 10:
            return None
        value = int(digits)
    if not isinstance(value, int):
        return None
    return value if 0 < value < 1 << 32 else None


def _cached_asn(data: dict[str, Any], lowest: int = 1) -> int | None:
    """The `asn` of a cache row's facts; TypeError when it is not one (enrich.py then asks
    the source again): a row written before the range check could hold any integer."""
    asn = data.get("asn")
    if asn is not None and (isinstance(asn, bool) or not isinstance(asn, int) or not lowest <= asn < 1 << 32):
        raise TypeError("asn")
    return asn


def maxmind_from_json(data: dict[str, Any]) -> MaxMindFacts:
    unavailable = tuple(data.get("unavailable") or ())
    if any(part not in MAXMIND_PARTS for part in unavailable):
        raise ValueError("unavailable")
    return MaxMindFacts(
        city=_geo(data.get("city")),
        subdivisions=tuple(_geo(s) for s in data.get("subdivisions") or ()),
        country=_geo(data.get("country")),
        continent=_geo(data.get("continent")),
        registered_country=_geo(data.get("registered_country")),
        represented_country=_geo(data.get("represented_country")),
        latitude=data.get("latitude"),
        longitude=data.get("longitude"),
        accuracy_radius_km=data.get("accuracy_radius_km"),
        postal_code=data.get("postal_code"),
        asn=_cached_asn(data),
        as_org=data.get("as_org"),
        unavailable=unavailable,
    )


def whois_from_json(data: dict[str, Any]) -> WhoisFacts:
    return WhoisFacts(
        asn=_cached_asn(data),
        as_cc=data.get("as_cc"),
        as_desc=data.get("as_desc"),
        net_name=data.get("net_name"),
        net_cc=data.get("net_cc"),
        entities=tuple(data.get("entities") or ()),
    )


def origin_from_json(data: dict[str, Any]) -> OriginFacts:
    # origin_as.py takes AS0 too (0 <= asn < 2**32): so does its cache row
    return OriginFacts(asn=_cached_asn(data, lowest=0), prefix=data.get("prefix"), cc=data.get("cc"),
                       registry=data.get("registry"), as_name=data.get("as_name"))
