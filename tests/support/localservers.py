"""Real DNS and RDAP servers on 127.0.0.1 for tests, end-to-end runs and the benchmark.

Everything here listens on loopback only and answers from the tables below, which cover
documentation addresses only (see tests/data/README.md). Each server is a context
manager (`with LocalDns() as dns: ...`) that starts on a free port and stops cleanly;
tests/support/servers.py wraps them as pytest fixtures. No pytest import here, so the
benchmark and the demo can use the servers without pytest.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dnslib import PTR, QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from dovecot_appauth.config import (
    AuditConfig,
    CacheConfig,
    Config,
    DnsConfig,
    MaxMindConfig,
    OriginAsConfig,
    RdapConfig,
)

MMDB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "mmdb")
CITY_MMDB = os.path.join(MMDB_DIR, "AppAuth-Test-City.mmdb")
ASN_MMDB = os.path.join(MMDB_DIR, "AppAuth-Test-ASN.mmdb")

# ---------------------------------------------------------------------------- DNS

PTR_NAMES: dict[str, str] = {
    "192.0.2.10": "host-10.cloud.example.com",
    "192.0.2.200": "gw.base.example.mil",
    "198.51.100.7": "dsl-7.pool.example.net",
    "203.0.113.66": "vps66.hosting.example",
    "100.64.1.1": "cgnat-1.carrier.example",
    "2001:db8::25": "mail.v6.example.org",
    "2001:db8:8000::5": "tokyo-5.example.jp",
}
DNS_DROP = {"203.0.113.99"}  # the server reads the query and never answers
DNS_SERVFAIL = {"198.51.100.250"}

# Team Cymru's IP-to-ASN zones (sources/origin_as.py): origin records by announced prefix
# (an address gets the records of every prefix containing it, less specific first) and
# AS records by number. The drop and SERVFAIL addresses above behave the same here.
ORIGIN_TXT: dict[str, str] = {
    "203.0.112.0/23": "64499 | 203.0.112.0/23 | NL | ripencc | 2020-01-01",
    "203.0.113.0/24": "64500 | 203.0.113.0/24 | RU | ripencc | 2024-01-01",
    "198.51.100.0/24": "64501 | 198.51.100.0/24 | DE | ripencc | 2010-05-05",
    "192.0.2.128/25": "64497 64511 | 192.0.2.128/25 | US | arin | 1998-09-25",
    "2001:db8:8000::/33": "64503 | 2001:db8:8000::/33 | JP | apnic | 2012-12-12",
}
AS_TXT: dict[int, str] = {
    64499: "64499 | NL | ripencc | 2020-01-01 | EXAMPLE-PARENT - Example Parent Net, NL",
    64500: "64500 | RU | ripencc | 2024-01-01 | EXAMPLE-HOSTING-AS - Example Hosting, RU",
    64501: "64501 | DE | ripencc | 2010-05-05 | EXAMPLE-TELECOM - Example Telecom GmbH, DE",
    64497: "64497 | US | arin | 1998-09-25 | EXAMPLE-DEFENCE - Example Defence Network, US",
    64503: "64503 | JP | apnic | 2012-12-12 | EXAMPLE-FAR-EAST - Example Far East Hosting, JP",
}
CYMRU_ZONE = ".asn.cymru.com."


def _origin_address(qname: str) -> str | None:
    """The address an origin/origin6 query name asks about, None for other names."""
    labels = qname.removesuffix(".").split(".")
    try:
        if qname.endswith(".origin.asn.cymru.com.") and len(labels) == 8:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        if qname.endswith(".origin6.asn.cymru.com.") and len(labels) == 36:
            nibbles = "".join(reversed(labels[:32]))
            return str(ipaddress.IPv6Address(":".join(nibbles[i:i + 4] for i in range(0, 32, 4))))
    except ValueError:
        return None
    return None


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


class _Drop(Exception):
    pass


class _Resolver(BaseResolver):
    def __init__(self, server: LocalDns):
        self.server = server

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        qname = str(request.q.qname).lower()
        self.server.queries.append(qname)
        if qname.endswith(CYMRU_ZONE):
            return self._cymru(request, qname)
        ip = self.server.by_reverse.get(qname)
        if qname in self.server.drop_reverse:
            raise _Drop
        reply = request.reply()
        if qname in self.server.servfail_reverse:
            reply.header.rcode = RCODE.SERVFAIL
        elif ip is not None and request.q.qtype == QTYPE.PTR:
            reply.add_answer(RR(request.q.qname, QTYPE.PTR, rdata=PTR(self.server.ptr[ip] + "."), ttl=60))
        elif ip is None:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


    def _cymru(self, request: DNSRecord, qname: str) -> DNSRecord:
        reply = request.reply()
        ip = _origin_address(qname)
        records: list[str] = []
        if ip is not None:
            if reverse_name(ip) in self.server.drop_reverse:
                raise _Drop
            if reverse_name(ip) in self.server.servfail_reverse:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            addr = ipaddress.ip_address(ip)
            records = [txt for net, txt in self.server.origin_txt.items()
                       if addr.version == ipaddress.ip_network(net).version and addr in ipaddress.ip_network(net)]
        elif qname.startswith("as") and qname[2:].split(".", 1)[0].isdigit():
            number = int(qname[2:].split(".", 1)[0])
            records = [self.server.as_txt[number]] if number in self.server.as_txt else []
        if not records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for txt in records:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(txt), ttl=60))
        return reply


class _Handler(DNSHandler):
    def handle(self) -> None:
        try:
            super().handle()
        except _Drop:
            pass  # the "slow server" case: the client must give up on its own


class LocalDns:
    """A DNS server on 127.0.0.1 (UDP, free port) answering PTR queries from a table, and
    Team Cymru's origin/AS TXT queries from `origin_txt` and `as_txt`.

    Names not in the tables get NXDOMAIN; addresses in `drop` get no answer at all and
    those in `servfail` get SERVFAIL. `queries` records every query name received.
    """

    def __init__(self, ptr: dict[str, str] | None = None, drop: set[str] | None = None,
                 servfail: set[str] | None = None):
        self.ptr = dict(PTR_NAMES if ptr is None else ptr)
        self.by_reverse = {reverse_name(ip): ip for ip in self.ptr}
        self.drop_reverse = {reverse_name(ip) for ip in (DNS_DROP if drop is None else drop)}
        self.servfail_reverse = {reverse_name(ip) for ip in (DNS_SERVFAIL if servfail is None else servfail)}
        self.origin_txt = dict(ORIGIN_TXT)
        self.as_txt = dict(AS_TXT)
        self.queries: list[str] = []
        self._server: DNSServer | None = None
        self.port = 0

    def start(self) -> LocalDns:
        logger = DNSLogger(log="-request,-reply,-truncated,-error", logf=lambda *a: None)
        self._server = DNSServer(_Resolver(self), port=0, address="127.0.0.1", handler=_Handler,
                                 logger=logger)
        self.port = self._server.server.server_address[1]
        self._server.start_thread()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server.server.server_close()
            self._server = None

    def dns_config(self, timeout: float = 1.0) -> DnsConfig:
        return DnsConfig(enabled=True, resolvers=("127.0.0.1",), port=self.port, timeout=timeout)

    def __enter__(self) -> LocalDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BlackHoleDns:
    """A UDP port on 127.0.0.1 that accepts queries and never answers (a dead resolver)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.port = 0

    def start(self) -> BlackHoleDns:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        return self

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def dns_config(self, timeout: float = 1.0) -> DnsConfig:
        return DnsConfig(enabled=True, resolvers=("127.0.0.1",), port=self.port, timeout=timeout)

    def __enter__(self) -> BlackHoleDns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- RDAP

def _entity(handle: str, roles: list[str], name: str, *,
            entities: list[dict] | None = None) -> dict[str, Any]:
    ent: dict[str, Any] = {
        "objectClassName": "entity",
        "handle": handle,
        "roles": roles,
        "vcardArray": ["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", name],
                                 ["kind", {}, "text", "org" if "registrant" in roles else "individual"]]],
    }
    if entities:
        ent["entities"] = entities
    return ent


def _network(cidr: str, name: str, country: str | None, entities: list[dict], *,
             origin: list[int] | None = None, style: str = "ripe") -> dict[str, Any]:
    net = ipaddress.ip_network(cidr)
    obj: dict[str, Any] = {
        "rdapConformance": ["rdap_level_0", "cidr0", "nro_rdap_profile_0"],
        "objectClassName": "ip network",
        "handle": f"{net[0]} - {net[-1]}" if style == "ripe" else f"NET-{str(net[0]).replace('.', '-')}-1",
        "startAddress": str(net[0]),
        "endAddress": str(net[-1]),
        "ipVersion": f"v{net.version}",
        "name": name,
        "type": "ASSIGNED PA",
        "cidr0_cidrs": [{f"v{net.version}prefix": str(net.network_address), "length": net.prefixlen}],
        "entities": entities,
        "events": [{"eventAction": "registration", "eventDate": "2020-01-01T00:00:00Z"}],
        "links": [{"rel": "self", "href": f"https://rdap.example/ip/{cidr}",
                   "type": "application/rdap+json"}],
        "port43": "whois.example",
        "notices": [{"title": "Terms and Conditions", "description": ["Documentation data only."]}],
    }
    if country:
        obj["country"] = country
    if origin is not None:
        obj["arin_originas0_originautnums"] = origin  # ARIN's extension naming the origin AS
        obj["rdapConformance"].append("arin_originas0")
    return obj


def _autnum(number: int, name: str, country: str | None, remarks: list[dict]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "rdapConformance": ["rdap_level_0", "nro_rdap_profile_0"],
        "objectClassName": "autnum",
        "handle": f"AS{number}",
        "startAutnum": number,
        "endAutnum": number,
        "name": name,
        "remarks": remarks,
        "entities": [_entity(f"ORG-AS{number}-TEST", ["registrant"], name)],
    }
    if country:
        obj["country"] = country
    return obj


# network -> RDAP object, recorded-shape (RIPE style with nested entities, ARIN style with
# arin_originas0_originautnums and "Registration Comments" remarks)
RDAP_NETWORKS: dict[str, dict[str, Any]] = {
    "192.0.2.0/24": _network("192.0.2.0/24", "EXAMPLE-CLOUD-NET", "US", [
        _entity("EXC-1-TEST", ["registrant"], "Example Cloud Inc.",
                entities=[_entity("EXC-ABUSE-TEST", ["abuse"], "Abuse desk")]),
    ], origin=[64496], style="arin"),
    "198.51.100.0/24": _network("198.51.100.0/24", "DE-EXAMPLE-TELECOM-2024", "DE", [
        _entity("ORG-ETG1-TEST", ["registrant"], "Example Telecom GmbH"),
        _entity("ETG1-TEST", ["administrative", "technical"], "Example Telecom NOC"),
        _entity("EXAMPLE-TELECOM-MNT", ["registrant"], "Example Telecom maintainer"),
    ], origin=[64501], style="arin"),
    "203.0.113.0/24": _network("203.0.113.0/24", "EXAMPLE-HOSTING-20240101", "NL", [
        _entity("ORG-EH1-TEST", ["registrant"], "Example Hosting",
                entities=[_entity("EHA1-TEST", ["abuse"], "Example Hosting abuse")]),
        _entity("EH1-TEST", ["administrative", "technical"], "Example Hosting admin"),
        _entity("EXAMPLE-HOSTING-MNT", ["registrant"], "Example Hosting maintainer"),
    ]),
    "100.64.0.0/10": _network("100.64.0.0/10", "SHARED-ADDRESS-SPACE", None, [
        _entity("IANA", ["registrant"], "Internet Assigned Numbers Authority"),
    ], style="arin"),
    "2001:db8::/32": _network("2001:db8::/32", "EXAMPLE-V6-NET", "NL", [
        _entity("ORG-EV6-TEST", ["registrant"], "Example IPv6 Net B.V."),
    ]),
}
RDAP_AUTNUMS: dict[int, dict[str, Any]] = {
    64496: _autnum(64496, "EXAMPLE-CLOUD", "US", [{"description": ["Example Cloud backbone", "Ashburn"]}]),
    64500: _autnum(64500, "EXAMPLE-HOSTING-AS", "RU", [{"description": ["Example Hosting backbone"]}]),
    64501: _autnum(64501, "EXAMPLE-TELECOM", "DE",
                   [{"title": "Registration Comments", "description": ["Not the description"]}]),
    64502: _autnum(64502, "EXAMPLE-V6", "NL", [{"description": ["Example IPv6 Net"]}]),
    64503: _autnum(64503, "EXAMPLE-FAR-EAST", "JP", []),
    64510: _autnum(64510, "EXAMPLE-CGNAT", None, []),
}


class _RdapHandler(BaseHTTPRequestHandler):
    server: _RdapHttpServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/rdap+json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (deadline tests)

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        owner.requests.append(path)
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self._send(404, {"errorCode": 404})
        mode, rest = parts[0], parts[1:]
        if mode == "bootstrap" and len(rest) == 1:
            doc = owner.bootstrap_doc(rest[0])
            return self._send(200, doc) if doc else self._send(404, {"errorCode": 404})
        if mode == "slow":
            time.sleep(owner.slow_seconds)
        elif mode == "limited":
            # what made ipwhois sleep 120 s; the client must fail at once
            return self._send(429, {"errorCode": 429, "title": "Too Many Requests"}, {"Retry-After": "120"})
        elif mode == "broken":
            return self._send(503, {"errorCode": 503})
        elif mode != "rdap":
            return self._send(404, {"errorCode": 404})
        obj = owner.find(rest)
        if obj is None:
            return self._send(404, {"errorCode": 404, "title": "Not Found"})
        return self._send(200, obj)


class _RdapHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalRdap


class LocalRdap:
    """An RDAP server on http://127.0.0.1:PORT with recorded-shape answers.

    Paths: `/rdap/ip/{ip}`, `/rdap/autnum/{n}`; the same under `/slow/` (answers after
    `slow_seconds`), `/limited/` (HTTP 429 with Retry-After: 120) and `/broken/` (503);
    `/bootstrap/{ipv4,ipv6,asn}.json` in IANA format pointing at `/rdap/`.
    `requests` records every path asked for.
    """

    def __init__(self, slow_seconds: float = 5.0):
        self.slow_seconds = slow_seconds
        self.networks: dict[str, dict[str, Any]] = {}  # a test's own answers, before RDAP_NETWORKS
        self.requests: list[str] = []
        self._httpd: _RdapHttpServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def base(self, mode: str = "rdap") -> str:
        return f"{self.url}/{mode}/"

    @property
    def bootstrap_url(self) -> str:
        return f"{self.url}/bootstrap/"

    def rdap_config(self, mode: str | None = "rdap", timeout: float = 1.0) -> RdapConfig:
        """Fixed servers (`mode` rdap/slow/limited/broken) or, with mode None, the bootstrap."""
        if mode is None:
            return RdapConfig(enabled=True, bootstrap_url=self.bootstrap_url, servers=(), timeout=timeout)
        return RdapConfig(enabled=True, servers=(self.base(mode),), timeout=timeout)

    def find(self, parts: list[str]) -> dict[str, Any] | None:
        if len(parts) < 2:
            return None
        kind, value = parts[0], "/".join(parts[1:])
        if kind == "ip":
            try:
                addr = ipaddress.ip_address(value)
            except ValueError:
                return None
            for cidr, obj in (*self.networks.items(), *RDAP_NETWORKS.items()):
                if addr in ipaddress.ip_network(cidr):
                    return obj
        elif kind == "autnum" and value.isdigit():
            return RDAP_AUTNUMS.get(int(value))
        return None

    def bootstrap_doc(self, name: str) -> dict[str, Any] | None:
        urls = [self.base("rdap")]
        if name == "ipv4.json":
            prefixes = [c for c in RDAP_NETWORKS if ":" not in c]
        elif name == "ipv6.json":
            prefixes = [c for c in RDAP_NETWORKS if ":" in c]
        elif name == "asn.json":
            return {"version": "1.0", "publication": "2024-01-01T00:00:00Z", "description": "test",
                    "services": [[["64496-64511"], urls]]}
        else:
            return None
        return {"version": "1.0", "publication": "2024-01-01T00:00:00Z", "description": "test",
                "services": [[prefixes, urls]]}

    def start(self) -> LocalRdap:
        self._httpd = _RdapHttpServer(("127.0.0.1", 0), _RdapHandler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-rdap", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> LocalRdap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- config

def make_config(
    cache_dir: str,
    *,
    dns: DnsConfig | None = None,
    rdap: RdapConfig | None = None,
    city: str | None = CITY_MMDB,
    asn: str | None = ASN_MMDB,
    deadline: float = 1.0,
    cache_enabled: bool = True,
    rdns_ttl: float = 3600.0,
    rdap_ttl: float = 7 * 86400.0,
    negative_ttl: float = 300.0,
    origin_as: OriginAsConfig | None = None,
) -> Config:
    """A Config whose audit section uses the given local servers and the test .mmdb files.

    A source passed as None is disabled (DNS, RDAP, origin AS) or not configured
    (MaxMind). The origin-AS source asks `dns`'s resolvers.
    """
    audit = AuditConfig(
        deadline=deadline,
        maxmind=MaxMindConfig(city=city, asn=asn),
        dns=dns or DnsConfig(enabled=False),
        rdap=rdap or RdapConfig(enabled=False),
        cache=CacheConfig(path=cache_dir, enabled=cache_enabled, rdns_ttl=rdns_ttl, rdap_ttl=rdap_ttl,
                          negative_ttl=negative_ttl),
        origin_as=origin_as,
    )
    return Config(path=None, audit=audit)
