"""Build the tiny MaxMind test databases in tests/data/mmdb/ (committed; rerun to change them).

Only documentation / shared address space is covered (RFC 5737, RFC 3849, RFC 6598), so
nothing here is a claim about a real network. Records follow the GeoIP2-City and
GeoLite2-ASN structure, so `maxminddb` (and geoip2) read them as they read the real files.
The table of addresses is documented in tests/data/README.md: keep both in step.

    /opt/dovecot-appauth-test/venv/bin/python tests/data/make_mmdb.py [OUTDIR]

Needs the maintained `mmdb-writer` package (test extra); the demo only reads the output.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mmdb_writer import MmdbF64, MmdbU16, MmdbU32, MMDBWriter
from netaddr import IPSet

HERE = os.path.dirname(os.path.abspath(__file__))
CITY_FILE = "AppAuth-Test-City.mmdb"
ASN_FILE = "AppAuth-Test-ASN.mmdb"


def names(en: str) -> dict[str, str]:
    return {"en": en}


def place(geoname_id: int, name: str, **extra: Any) -> dict[str, Any]:
    return {"geoname_id": MmdbU32(geoname_id), "names": names(name), **extra}


CONTINENTS = {
    "EU": place(6255148, "Europe", code="EU"),
    "NA": place(6255149, "North America", code="NA"),
    "AS": place(6255147, "Asia", code="AS"),
}
COUNTRIES = {
    "DE": place(2921044, "Germany", iso_code="DE"),
    "US": place(6252001, "United States", iso_code="US"),
    "RU": place(2017370, "Russia", iso_code="RU"),
    "NL": place(2750405, "The Netherlands", iso_code="NL"),
    "JP": place(1861060, "Japan", iso_code="JP"),
}


def city_record(
    *,
    country: str,
    continent: str,
    lat: float,
    lon: float,
    radius: int,
    time_zone: str,
    city: tuple[int, str] | None = None,
    subdivisions: tuple[tuple[int, str, str], ...] = (),
    postal: str | None = None,
    registered: str | None = None,
    represented: tuple[str, str] | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "continent": CONTINENTS[continent],
        "country": COUNTRIES[country],
        "registered_country": COUNTRIES[registered or country],
        "location": {
            "latitude": MmdbF64(lat),
            "longitude": MmdbF64(lon),
            "accuracy_radius": MmdbU16(radius),
            "time_zone": time_zone,
        },
    }
    if city:
        rec["city"] = place(*city)
    if subdivisions:
        # least specific first, as MaxMind orders them
        rec["subdivisions"] = [place(gid, name, iso_code=code) for gid, name, code in subdivisions]
    if postal:
        rec["postal"] = {"code": postal}
    if represented:
        code, kind = represented
        rec["represented_country"] = {**COUNTRIES[code], "type": kind}
    return rec


# network -> (city record, (asn, organisation))
NETWORKS: dict[str, tuple[dict[str, Any], tuple[int, str]]] = {
    "192.0.2.0/25": (
        city_record(
            country="US", continent="NA", lat=39.0437, lon=-77.4875, radius=50,
            time_zone="America/New_York", city=(4744870, "Ashburn"),
            subdivisions=((6254928, "Virginia", "VA"),), postal="20147",
        ),
        (64496, "Example Cloud Inc."),
    ),
    # the one range with a represented country (a US military site in Germany)
    "192.0.2.128/25": (
        city_record(
            country="DE", continent="EU", lat=49.4369, lon=7.6003, radius=10,
            time_zone="Europe/Berlin", city=(2848846, "Ramstein-Miesenbach"),
            subdivisions=((2847618, "Rheinland-Pfalz", "RP"),), postal="66877",
            registered="US", represented=("US", "military"),
        ),
        (64497, "Example Defence Network"),
    ),
    "198.51.100.0/24": (
        city_record(
            country="DE", continent="EU", lat=50.1188, lon=8.6843, radius=20,
            time_zone="Europe/Berlin", city=(2925533, "Frankfurt am Main"),
            subdivisions=((2905330, "Hesse", "HE"),), postal="60311",
        ),
        (64501, "Example Telecom GmbH"),
    ),
    # far away, registered elsewhere: the deny-test network
    "203.0.113.0/24": (
        city_record(
            country="RU", continent="EU", lat=43.2465, lon=46.59, radius=20,
            time_zone="Europe/Moscow", city=(550478, "Khasavyurt"),
            subdivisions=((567293, "Dagestan", "DA"),), postal="368000", registered="NL",
        ),
        (64500, "Example Hosting"),
    ),
    # country-level only (no city, no subdivision), as MaxMind answers for many cloud ranges
    "100.64.0.0/10": (
        city_record(country="US", continent="NA", lat=37.751, lon=-97.822, radius=1000,
                    time_zone="America/Chicago"),
        (64510, "Example CGNAT Carrier"),
    ),
    "2001:db8::/33": (
        city_record(
            country="NL", continent="EU", lat=52.3759, lon=4.8975, radius=5,
            time_zone="Europe/Amsterdam", city=(2759794, "Amsterdam"),
            subdivisions=((2749879, "North Holland", "NH"),), postal="1012",
        ),
        (64502, "Example IPv6 Net B.V."),
    ),
    "2001:db8:8000::/33": (
        city_record(
            country="JP", continent="AS", lat=35.6895, lon=139.6917, radius=50,
            time_zone="Asia/Tokyo", city=(1850147, "Tokyo"),
            subdivisions=((1850144, "Tokyo", "13"),), postal="100-0001",
        ),
        (64503, "Example Far East Hosting"),
    ),
}


def build(outdir: str) -> tuple[str, str]:
    os.makedirs(outdir, exist_ok=True)
    # ipv4_compatible: IPv4 lives at ::/96 like in MaxMind's own files, so one IPv6 tree
    # answers both families
    city = MMDBWriter(ip_version=6, database_type="GeoIP2-City", languages=["en"],
                      description="dovecot-appauth test data: documentation ranges only",
                      ipv4_compatible=True)
    asn = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", languages=["en"],
                     description="dovecot-appauth test data: documentation ASNs only",
                     ipv4_compatible=True)
    for net, (rec, (number, org)) in NETWORKS.items():
        city.insert_network(IPSet([net]), rec)
        asn.insert_network(IPSet([net]), {
            "autonomous_system_number": MmdbU32(number),
            "autonomous_system_organization": org,
        })
    paths = (os.path.join(outdir, CITY_FILE), os.path.join(outdir, ASN_FILE))
    city.to_db_file(paths[0])
    asn.to_db_file(paths[1])
    return paths


if __name__ == "__main__":
    for path in build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "mmdb")):
        print(path)
