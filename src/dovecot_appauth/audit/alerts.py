"""Login alerts: a successful login from somewhere the user has not logged in from lately.

Pure: `detect(event, history, ...)` takes the new login and the user's earlier
successful logins (from `audit_events`, which the pipeline reads in one query) and
returns the alerts, most severe first. No I/O, no clock, cheap to import (it runs on the
login path when `[alerts] enabled`).

- `impossible-travel`: the implied speed between this login and the user's previous
  located login is above `max_speed_kmh`. The distance is the haversine distance between
  the two MaxMind points less both accuracy radii, so two circles that overlap (the user
  may not have moved at all) never alert, and a coarse answer is judged generously.
- `new-country`: a country none of the history's logins came from.
- `new-asn`: an AS number none of the history's logins came from.

With no comparable history (the first login in the window, or no earlier login with a
known country / AS / location) nothing is new: an alert needs something to differ from.
"""

from __future__ import annotations

import math

from ..values import Value

IMPOSSIBLE_TRAVEL = "impossible-travel"
NEW_COUNTRY = "new-country"
NEW_ASN = "new-asn"
KINDS = (IMPOSSIBLE_TRAVEL, NEW_COUNTRY, NEW_ASN)  # most severe first
EARTH_RADIUS_KM = 6371.0088


class Sighting(Value):
    """Where one login came from, as far as the enrichment knew (any field may be None)."""

    __slots__ = ("asn", "country", "latitude", "longitude", "radius_km", "time")

    def __init__(self, time: float, country: str | None = None, asn: int | None = None,
                 latitude: float | None = None, longitude: float | None = None, radius_km: float | None = None):
        self.time = time  # epoch seconds
        self.country = country  # ISO code
        self.asn = asn
        self.latitude = latitude
        self.longitude = longitude
        self.radius_km = radius_km  # MaxMind's accuracy radius

    @property
    def located(self) -> bool:
        return self.latitude is not None and self.longitude is not None


class Alert(Value):
    __slots__ = ("detail", "kind")

    def __init__(self, kind: str, detail: str):
        self.kind = kind  # one of KINDS
        self.detail = detail  # for the admin: what was new, or the distance and speed

    def to_json(self) -> dict:
        return {"kind": self.kind, "detail": self.detail}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def travel(previous: Sighting, current: Sighting) -> tuple[float, float, float]:
    """(distance between the points, distance beyond both accuracy circles, hours between)."""
    d = haversine_km(previous.latitude, previous.longitude, current.latitude, current.longitude)  # type: ignore[arg-type]
    beyond = max(0.0, d - float(previous.radius_km or 0) - float(current.radius_km or 0))
    hours = (current.time - previous.time) / 3600.0
    return d, beyond, hours


def detect(current: Sighting, history: list[Sighting] | tuple[Sighting, ...], *, max_speed_kmh: float,
           lookback_seconds: float | None = None) -> list[Alert]:
    """The alerts for `current`, given the user's earlier successful logins (any order).

    Entries at or after `current.time`, or older than `lookback_seconds`, are ignored, so
    the caller may pass a slightly wider set than the window.
    """
    since = current.time - lookback_seconds if lookback_seconds is not None else -math.inf
    past = sorted((s for s in history if since <= s.time < current.time), key=lambda s: s.time)
    alerts: list[Alert] = []
    if current.located and max_speed_kmh > 0:
        previous = next((s for s in reversed(past) if s.located), None)
        if previous is not None:
            d, beyond, hours = travel(previous, current)
            if beyond > 0:
                speed = math.inf if hours <= 0 else beyond / hours
                if speed > max_speed_kmh:
                    shown = "instantly" if hours <= 0 else f"in {_duration(hours)}"
                    alerts.append(Alert(IMPOSSIBLE_TRAVEL, (
                        f"{d:.0f} km from the previous login ({_where(previous)}) {shown}: "
                        f"over {max_speed_kmh:g} km/h"
                    )))
    if current.country:
        seen = {s.country.upper() for s in past if s.country}
        if seen and current.country.upper() not in seen:
            alerts.append(Alert(NEW_COUNTRY, f"country {current.country} (before: {', '.join(sorted(seen))})"))
    if current.asn is not None:
        asns = {int(s.asn) for s in past if s.asn is not None}
        if asns and int(current.asn) not in asns:
            shown = ", ".join(f"AS{a}" for a in sorted(asns)[:5]) + (", ..." if len(asns) > 5 else "")
            alerts.append(Alert(NEW_ASN, f"AS{current.asn} (before: {shown})"))
    return alerts


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h"


def _where(s: Sighting) -> str:
    return f"{s.country or '?'} {s.latitude:.2f},{s.longitude:.2f}"


def kinds(alerts: list[Alert]) -> str | None:
    """The stored / logged form: `new-country,new-asn` (None without alerts)."""
    return ",".join(a.kind for a in alerts) or None
