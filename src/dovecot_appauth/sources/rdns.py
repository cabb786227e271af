"""Reverse DNS (PTR) lookups with dnspython, against configured resolvers or the system's.

Imported lazily by enrich.py on a cache miss only: dnspython costs tens of milliseconds
to import, which a warm login must not pay.

Why not `dns.resolver` (or `dns.query`): their imports pull in every transport dnspython
has (DoH, DoT, DoQ, zone transfers, DDR and their ssl/http machinery): ~35 ms and
1.5 MiB more on every cold login than the DNS message code one PTR query needs
(docs/PERFORMANCE.md). dnspython still builds and parses every message; this module
only moves the bytes, the way `dns.query.udp`/`dns.query.tcp` do, and follows what
`Resolver.resolve(name, "PTR")` does with our settings (timeout = lifetime, no EDNS, no
search list: a reverse name is absolute): ask each nameserver in turn over UDP (TCP when
the answer is truncated), ignore datagrams that are not an answer to our query, take the
first NOERROR or NXDOMAIN answer, follow CNAMEs within it (RFC 2317 delegations), move on
after a server error. The system's nameservers are the `nameserver` lines of
/etc/resolv.conf, as dnspython reads them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename

from ..facts import NO_PTR
from . import SourceUnavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..config import DnsConfig

RESOLV_CONF = "/etc/resolv.conf"


class RdnsError(Exception):
    """The resolver answered with an error (SERVFAIL, REFUSED, ...): not the same as no name."""


def system_nameservers(path: str = RESOLV_CONF) -> list[str]:
    """The `nameserver` addresses of resolv.conf, in order (dnspython's reading of the file)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SourceUnavailable(f"no system resolver: cannot read {path}: {e.strerror}") from None
    servers = []
    for line in lines:
        tokens = line.split()
        if len(tokens) < 2 or tokens[0][0] in "#;" or tokens[0] != "nameserver":
            continue
        try:
            ipaddress.ip_address(tokens[1].split("%", 1)[0])
        except ValueError:
            continue  # dnspython skips what is not an address, too
        servers.append(tokens[1])
    if not servers:
        raise SourceUnavailable(f"no system resolver: no nameservers in {path}")
    return servers


def _left(end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise dns.exception.Timeout
    return left


def _udp(request: dns.message.Message, wire: bytes, where: tuple[str, int], family: int,
         end: float) -> dns.message.Message:
    """dns.query.udp(raise_on_truncation=True, ignore_errors=True, ignore_unexpected=True)."""
    server = ipaddress.ip_address(where[0].split("%", 1)[0])
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_left(end))
        sock.sendto(wire, where)
        while True:
            sock.settimeout(_left(end))
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                raise dns.exception.Timeout from None
            try:
                if ipaddress.ip_address(source[0].split("%", 1)[0]) != server or source[1] != where[1]:
                    continue  # not from the server we asked
                response = dns.message.from_wire(data, raise_on_truncation=True)
            except dns.message.Truncated as e:
                if request.is_response(e.message()):
                    raise  # a truncated answer to us: ask again over TCP
                continue
            except Exception:  # noqa: S112 - garbage is not an answer; keep waiting for one
                continue
            if request.is_response(response):
                return response


def _recv_exactly(sock: socket.socket, count: int, end: float) -> bytes:
    data = b""
    while len(data) < count:
        sock.settimeout(_left(end))
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("EOF")
        data += chunk
    return data


def _tcp(request: dns.message.Message, wire: bytes, where: tuple[str, int], family: int,
         end: float) -> dns.message.Message:
    """dns.query.tcp: two-byte length prefix each way."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(_left(end))
            sock.connect(where)
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", _recv_exactly(sock, 2, end))
            response = dns.message.from_wire(_recv_exactly(sock, length, end))
        except TimeoutError:
            raise dns.exception.Timeout from None
    if not request.is_response(response):
        raise dns.exception.FormError("the TCP answer does not match the query")
    return response


def _ask(request: dns.message.Message, server: str, port: int, end: float) -> dns.message.Message:
    """One exchange with one server until `end` (monotonic); TCP when UDP comes back truncated."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    where = (server, port)
    wire = request.to_wire()
    try:
        return _udp(request, wire, where, family, end)
    except dns.message.Truncated:
        return _tcp(request, wire, where, family, end)


def responses(request: dns.message.Message, servers: list[str], port: int, end: float, failures: list[str],
              timeout_message: str) -> Iterator[tuple[str, dns.message.Message]]:
    """Each server's response to `request`, one server after the other, for as long as the
    caller asks (it stops at the first answer it can use). A server that fails is noted in
    `failures` and skipped; a server that does not answer before `end` (monotonic) raises
    TimeoutError(`timeout_message`): the lifetime is the timeout, it has used it all up."""
    for server in servers:
        try:
            response = _ask(request, server, port, end)
        except dns.exception.Timeout:
            raise TimeoutError(timeout_message) from None
        except (OSError, EOFError, ValueError, NotImplementedError, dns.exception.DNSException) as e:
            failures.append(f"{server}: {type(e).__name__}: {e}")  # this server is no good; try the next
            continue
        yield server, response


def lookup(ip: str, cfg: DnsConfig, timeout: float) -> str:
    """The PTR name of `ip` without the trailing dot, or NO_PTR when there is none.

    Raises TimeoutError when no answer came within `timeout` seconds (all tries together)
    and RdnsError on a server failure, so neither is mistaken for "no PTR".
    """
    servers = list(cfg.resolvers) or system_nameservers()
    end = time.monotonic() + timeout
    request = dns.message.make_query(dns.reversename.from_address(ip), dns.rdatatype.PTR)  # RD set, no EDNS
    failures: list[str] = []
    for server, response in responses(request, servers, cfg.port, end, failures,
                                      f"no DNS answer within {timeout:g}s"):
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return NO_PTR
        if rcode == dns.rcode.NOERROR:
            try:
                answer = response.resolve_chaining().answer  # follows CNAMEs, as Resolver does
            except dns.exception.DNSException as e:
                failures.append(f"{server}: {type(e).__name__}: {e}")
                continue
            # several PTRs are legal; the first one in the answer is what gethostbyaddr returns too
            for rr in answer or ():
                return rr.target.to_text(omit_final_dot=True)
            return NO_PTR  # NOERROR without a PTR (dnspython's NoAnswer)
        if rcode == dns.rcode.YXDOMAIN:
            raise RdnsError(f"DNS error: {server} answered YXDOMAIN")
        failures.append(f"{server} answered {dns.rcode.to_text(rcode)}")
    raise RdnsError(f"DNS server failure: {'; '.join(failures)}")
