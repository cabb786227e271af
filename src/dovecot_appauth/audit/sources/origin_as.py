"""The origin AS of an address over DNS, from Team Cymru's IP-to-ASN service.

This is where upstream's ipwhois got `asn`, `asn_cidr`, `asn_country_code`,
`asn_registry` and `asn_description` from (its `IPASN.lookup`, DNS method): two TXT
queries,

    <reversed address>.origin.asn.cymru.com   (IPv4: octets; IPv6: nibbles, origin6)
        "64500 | 203.0.113.0/24 | RU | ripencc | 2024-01-01"
    AS64500.asn.cymru.com
        "64500 | RU | ripencc | 2024-01-01 | EXAMPLE-HOSTING-AS - Example Hosting, RU"

When several origin records come back (more and less specific announced prefixes),
the one with the longest prefix is taken, as ipwhois does; of a record naming several
origin ASes ("64500 64501 | ..."), the first. `cc` is the origin record's country
(ipwhois' `asn_country_code`), else the AS record's; `as_name` is the AS record's last
field (ipwhois' `asn_description`).

Imported lazily by enrich.py on a cache miss only. The queries go to `[audit.dns]`'s
resolvers (the system's when none) with the same transport as sources/rdns.py
(dnspython's message code, UDP with TCP on truncation, no retries), all of them within
one budget. NXDOMAIN for the origin name means no route is known: empty facts, not a
failure. Raises TimeoutError when the budget is used up and OriginAsError when every
resolver failed, so neither is mistaken for "no AS".
"""

from __future__ import annotations

import ipaddress
import time

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from ..facts import OriginFacts
from .rdns import responses, system_nameservers

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from ...config import DnsConfig

ORIGIN_ZONE = "origin.asn.cymru.com"
ORIGIN6_ZONE = "origin6.asn.cymru.com"
AS_ZONE = "asn.cymru.com"
MAX_FIELD_CHARS = 256  # a TXT string is at most 255 bytes; nothing longer is kept


class OriginAsError(Exception):
    """Every resolver failed (SERVFAIL, REFUSED, garbage): not the same as "no route"."""


def origin_name(ip: str) -> str:
    """The origin query name of `ip`: reversed octets (IPv4) or nibbles (IPv6) in Cymru's zone."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ".".join(reversed(str(addr).split("."))) + "." + ORIGIN_ZONE + "."
    nibbles = addr.exploded.replace(":", "")
    return ".".join(reversed(nibbles)) + "." + ORIGIN6_ZONE + "."


def _fields(text: str) -> list[str]:
    return [f.strip()[:MAX_FIELD_CHARS] for f in text.split("|")]


def _txt_strings(response: dns.message.Message) -> list[str]:
    # the TXT RRset at the end of any CNAME chain, as Resolver.resolve(name, "TXT") gives it
    answer = response.resolve_chaining().answer
    # a TXT record may be split in several strings: they are one text
    return [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer or ()]


def _query_txt(name: str, servers: list[str], port: int, end: float, budget: float) -> list[str] | None:
    """The TXT strings at `name`; None for NXDOMAIN. The resolvers are tried in turn."""
    request = dns.message.make_query(dns.name.from_text(name), dns.rdatatype.TXT)  # RD set, no EDNS
    failures: list[str] = []
    for server, response in responses(request, servers, port, end, failures,
                                      f"no DNS answer for {name} within {budget:g}s"):
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return None
        if rcode == dns.rcode.NOERROR:
            try:
                return _txt_strings(response)
            except dns.exception.DNSException as e:
                failures.append(f"{server}: {type(e).__name__}: {e}")
                continue
        failures.append(f"{server} answered {dns.rcode.to_text(rcode)}")
    raise OriginAsError(f"DNS failure for {name}: {'; '.join(failures)}")


def _origin(records: list[str]) -> tuple[int, str | None, str | None, str | None] | None:
    """(asn, prefix, cc, registry) of the most specific origin record, None when none parses."""
    best: tuple[int, str | None, str | None, str | None] | None = None
    best_len = -1
    for text in records:
        fields = _fields(text)
        first = fields[0].split()
        try:
            asn = int(first[0].upper().removeprefix("AS"))
        except (IndexError, ValueError):
            continue  # not an origin record
        if not 0 <= asn < 1 << 32:
            continue
        prefix = fields[1] if len(fields) > 1 and fields[1] else None
        try:
            length = ipaddress.ip_network(prefix, strict=False).prefixlen if prefix else 0
        except ValueError:
            prefix, length = None, 0
        if length > best_len:
            cc = fields[2].upper() if len(fields) > 2 and fields[2] else None
            registry = fields[3] if len(fields) > 3 and fields[3] else None
            best, best_len = (asn, prefix, cc, registry), length
    return best


def _as_record(records: list[str], asn: int) -> tuple[str | None, str | None]:
    """(cc, name) from the AS record of `asn`."""
    for text in records:
        fields = _fields(text)
        if fields[0].upper().removeprefix("AS") != str(asn):
            continue
        cc = fields[1].upper() if len(fields) > 1 and fields[1] else None
        name = fields[4] if len(fields) > 4 and fields[4] else None
        return cc, name
    return None, None


def lookup(ip: str, cfg: DnsConfig, timeout: float) -> OriginFacts:
    """The origin AS of `ip` with its prefix, country, registry and AS name.

    Both queries together take at most `timeout` seconds. An address no route is known
    for gives empty facts. Raises TimeoutError or OriginAsError.
    """
    servers = list(cfg.resolvers) or system_nameservers()
    end = time.monotonic() + timeout
    records = _query_txt(origin_name(ip), servers, cfg.port, end, timeout)
    found = _origin(records or [])
    if found is None:
        return OriginFacts()
    asn, prefix, cc, registry = found
    as_records = _query_txt(f"AS{asn}.{AS_ZONE}.", servers, cfg.port, end, timeout)
    as_cc, as_name = _as_record(as_records or [], asn)
    return OriginFacts(asn=asn, prefix=prefix, cc=cc or as_cc, registry=registry, as_name=as_name)
