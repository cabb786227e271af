"""What the enrichment sources know about a source IP: plain values, JSON round-trippable.

`IpFacts` is the record the rule engine, the audit line and the `log` row are built
from. Each source fills its own part (`rdns`, `maxmind`, `whois`) and reports how it
went in `sources`; a part that did not arrive stays None and counts as unknown.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class SourceStatus(enum.StrEnum):
    CACHED = "cached"  # served from the on-disk cache
    FETCHED = "fetched"  # asked the source during this login
    TIMEOUT = "timeout"  # the login's deadline ended the wait
    FAILED = "failed"  # the source answered with an error (kept briefly as a negative entry)
    UNAVAILABLE = "unavailable"  # not configured, file missing, library missing
    SKIPPED = "skipped"  # not needed (e.g. the address is local and not audited)


@dataclass(frozen=True)
class GeoName:
    """A MaxMind place: GeoNames id, English name and ISO code (any may be unknown)."""

    geoname_id: int | None = None
    name: str | None = None
    code: str | None = None

    def label(self) -> str:
        """`id/name` as in upstream's audit line (`None/None` when unknown)."""
        return f"{self.geoname_id}/{self.name}"


@dataclass(frozen=True)
class MaxMindFacts:
    city: GeoName = GeoName()
    subdivisions: tuple[GeoName, ...] = ()  # least specific first, as MaxMind orders them
    country: GeoName = GeoName()
    continent: GeoName = GeoName()
    registered_country: GeoName = GeoName()
    represented_country: GeoName = GeoName()
    latitude: float | None = None
    longitude: float | None = None
    accuracy_radius_km: int | None = None
    postal_code: str | None = None
    asn: int | None = None  # from the ASN database
    as_org: str | None = None  # autonomous_system_organization

    def place(self) -> str | None:
        """A readable place for the `log.src_loc` column: `City, Subdivision, Country`."""
        parts = [self.city.name]
        if self.subdivisions:
            parts.append(self.subdivisions[-1].name)
        parts.append(self.country.name)
        text = ", ".join(p for p in parts if p)
        return text or None


@dataclass(frozen=True)
class WhoisFacts:
    """RDAP (whois) network data, in upstream ipwhois terms."""

    asn: int | None = None
    as_cc: str | None = None
    as_desc: str | None = None
    net_name: str | None = None
    net_cc: str | None = None
    entities: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceReport:
    status: SourceStatus
    elapsed_ms: float = 0.0
    detail: str = ""  # why it failed, which file, ...: never a secret


# A PTR lookup that found no name is `NO_PTR`, matched by reverse_hostname lists as "<>".
NO_PTR = "<>"


@dataclass(frozen=True)
class IpFacts:
    ip: str
    rdns: str | None = None  # PTR without trailing dot, NO_PTR when none, None when unknown
    maxmind: MaxMindFacts | None = None
    whois: WhoisFacts | None = None
    sources: dict[str, SourceReport] = field(default_factory=dict)

    @property
    def asns(self) -> tuple[int, ...]:
        """Every AS number a source reported (whois and MaxMind may disagree)."""
        found = []
        if self.whois and self.whois.asn is not None:
            found.append(self.whois.asn)
        if self.maxmind and self.maxmind.asn is not None and self.maxmind.asn not in found:
            found.append(self.maxmind.asn)
        return tuple(found)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IpFacts:
        mm = data.get("maxmind")
        wh = data.get("whois")
        return cls(
            ip=data["ip"],
            rdns=data.get("rdns"),
            maxmind=maxmind_from_json(mm) if mm is not None else None,
            whois=whois_from_json(wh) if wh is not None else None,
            sources={
                name: SourceReport(SourceStatus(r["status"]), r.get("elapsed_ms", 0.0), r.get("detail", ""))
                for name, r in (data.get("sources") or {}).items()
            },
        )


def _geo(data: dict[str, Any] | None) -> GeoName:
    data = data or {}
    return GeoName(data.get("geoname_id"), data.get("name"), data.get("code"))


def maxmind_from_json(data: dict[str, Any]) -> MaxMindFacts:
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
        asn=data.get("asn"),
        as_org=data.get("as_org"),
    )


def whois_from_json(data: dict[str, Any]) -> WhoisFacts:
    return WhoisFacts(
        asn=data.get("asn"),
        as_cc=data.get("as_cc"),
        as_desc=data.get("as_desc"),
        net_name=data.get("net_name"),
        net_cc=data.get("net_cc"),
        entities=tuple(data.get("entities") or ()),
    )
