"""Reverse DNS (PTR) lookups on the standard library, against configured resolvers or the system's.

Imported lazily by enrich.py on a cache miss only.

Why not dnspython here: `dns.name` (under every dnspython message) imports
`dns._features`, which imports `importlib.metadata` (email, zipfile, csv, pathlib...):
with the message code ~60 ms and several MiB on every cold login, for one question with
one kind of answer (docs/PERFORMANCE.md). So this module builds the PTR query and reads
the answer itself (RFC 1035 wire format: header, question, resource records with name
compression), and does what `Resolver.resolve(name, "PTR")` did with our settings
(timeout = lifetime, no EDNS, no search list: a reverse name is absolute): ask each
nameserver in turn over UDP (TCP when the answer is truncated), ignore datagrams that are
not an answer to our query (another id, not a response, another question, malformed),
take the first NOERROR or NXDOMAIN answer, follow CNAMEs within it (RFC 2317
delegations), move on after a server error. Names are returned as dnspython's
`to_text(omit_final_dot=True)` wrote them (special characters backslash-escaped, bytes
outside printable ASCII as \\DDD), and `<` and `>` escaped too, so that no name reads as
`facts.NO_PTR` ("<>", "no PTR"): a PTR record `<>.` comes out as `\\<\\>`. The system's
nameservers are the `nameserver` lines of /etc/resolv.conf, as dnspython reads them.

`_ask` (dnspython's message code, imported when it is called) remains for
sources/origin_as.py's TXT queries, an opt-in source.
"""

from __future__ import annotations

import os
import struct
import time
from _socket import AF_INET, AF_INET6, SOCK_DGRAM, SOCK_STREAM
from _socket import socket as _new_socket

from ... import ipnum
from ..facts import NO_PTR
from . import SourceUnavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TypeVar

    import dns.message

    from ...config import DnsConfig

    T = TypeVar("T")

TYPE_PTR = 12
TYPE_CNAME = 5
CLASS_IN = 1
RCODE_TEXT = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
              7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}

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
        if ipnum.address(tokens[1].split("%", 1)[0]) is None:
            continue  # dnspython skips what is not an address, too
        servers.append(tokens[1])
    if not servers:
        raise SourceUnavailable(f"no system resolver: no nameservers in {path}")
    return servers


def _left(end: float) -> float:
    """Seconds left until `end`; dns.exception.Timeout when none (origin_as.py's contract)."""
    left = end - time.monotonic()
    if left <= 0:
        import dns.exception

        raise dns.exception.Timeout
    return left


def _udp(request: dns.message.Message, wire: bytes, where: tuple[str, int], family: int,
         end: float) -> dns.message.Message:
    """dns.query.udp(raise_on_truncation=True, ignore_errors=True, ignore_unexpected=True)."""
    import dns.exception
    import dns.message

    def answer_to_us(data: bytes) -> dns.message.Message | None:
        try:
            response = dns.message.from_wire(data, raise_on_truncation=True)
        except dns.message.Truncated as e:
            if request.is_response(e.message()):
                raise  # a truncated answer to us: ask again over TCP
            return None
        except Exception:  # garbage is not an answer; keep waiting for one
            return None
        return response if request.is_response(response) else None

    return _udp_exchange(wire, where, family, end, _left, dns.exception.Timeout, answer_to_us)


def _udp_exchange(wire: bytes, where: tuple[str, int], family: int, end: float,
                  time_left: Callable[[float], float], timed_out: type[Exception],
                  accept: Callable[[bytes], T | None]) -> T:
    """Send `wire` to `where` over UDP and wait, until `end` (monotonic), for a datagram from
    that server that `accept` takes (returns not None); datagrams from elsewhere and those
    it does not take are ignored. `time_left` raises when the time is up; a socket that
    times out raises `timed_out`."""
    server = ipnum.address(where[0].split("%", 1)[0])
    if server is None:
        raise ValueError(f"{where[0]!r} does not appear to be an IPv4 or IPv6 address")
    sock = _new_socket(family, SOCK_DGRAM)
    try:
        sock.settimeout(time_left(end))
        sock.sendto(wire, where)
        while True:
            sock.settimeout(time_left(end))
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                raise timed_out from None
            if ipnum.address(source[0].split("%", 1)[0]) != server or source[1] != where[1]:
                continue  # not from the server we asked
            answer = accept(data)
            if answer is not None:
                return answer
    finally:
        sock.close()


def _recv_exactly(sock: _new_socket, count: int, end: float, time_left: Callable[[float], float] = _left) -> bytes:
    """`count` bytes from a TCP socket before `end`; `time_left` raises when the time is up
    (dnspython's Timeout for origin_as.py, _NoTime for the PTR lookup)."""
    data = b""
    while len(data) < count:
        sock.settimeout(time_left(end))
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("EOF")
        data += chunk
    return data


def _tcp(request: dns.message.Message, wire: bytes, where: tuple[str, int], family: int,
         end: float) -> dns.message.Message:
    """dns.query.tcp: two-byte length prefix each way."""
    import dns.exception
    import dns.message

    response = dns.message.from_wire(_tcp_exchange(wire, where, family, end, _left, dns.exception.Timeout))
    if not request.is_response(response):
        raise dns.exception.FormError("the TCP answer does not match the query")
    return response


def _tcp_exchange(wire: bytes, where: tuple[str, int], family: int, end: float,
                  time_left: Callable[[float], float], timed_out: type[Exception]) -> bytes:
    """One TCP exchange with `where` until `end`: two-byte length prefix each way; the
    answer's bytes. `time_left` raises when the time is up; a socket time-out raises `timed_out`."""
    sock = _new_socket(family, SOCK_STREAM)
    try:
        sock.settimeout(time_left(end))
        sock.connect(where)
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", _recv_exactly(sock, 2, end, time_left))
        return _recv_exactly(sock, length, end, time_left)
    except TimeoutError:
        raise timed_out from None
    finally:
        sock.close()


def _ask(request: dns.message.Message, server: str, port: int, end: float) -> dns.message.Message:
    """One exchange with one server until `end` (monotonic); TCP when UDP comes back truncated.
    dnspython messages: for origin_as.py (lookup() below uses the stdlib exchange)."""
    import dns.message

    family = AF_INET6 if ":" in server else AF_INET
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
    import dns.exception  # only the origin-AS source asks through dnspython

    for server in servers:
        try:
            response = _ask(request, server, port, end)
        except dns.exception.Timeout:
            raise TimeoutError(timeout_message) from None
        except (OSError, EOFError, ValueError, NotImplementedError, dns.exception.DNSException) as e:
            failures.append(f"{server}: {type(e).__name__}: {e}")  # this server is no good; try the next
            continue
        yield server, response


# --- the PTR query on the standard library ------------------------------------------------


class _NoTime(Exception):
    """The lookup's time is used up."""


def _time_left(end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise _NoTime
    return left


def _encode_name(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def ptr_question(ip: str) -> tuple[bytes, ...]:
    """The PTR name of `ip` as labels: `ipaddress`'s `reverse_pointer`, from the integer
    (ipnum) for a plain address; an address with a zone, or what is not an address (ValueError),
    as `ipaddress` has it."""
    addr = None if "%" in ip else ipnum.address(ip)
    if addr is None:
        import ipaddress

        return tuple(label.encode("ascii") for label in ipaddress.ip_address(ip).reverse_pointer.split("."))
    version, value = addr
    if version == 4:
        labels = [str((value >> shift) & 0xFF).encode("ascii") for shift in (0, 8, 16, 24)]
        return (*labels, b"in-addr", b"arpa")
    nibbles = [b"0123456789abcdef"[(value >> (4 * n)) & 0xF:][:1] for n in range(32)]
    return (*nibbles, b"ip6", b"arpa")


def ptr_query(qname: tuple[bytes, ...], query_id: int) -> bytes:
    """A PTR query, RD set, no EDNS (what dns.message.make_query sent)."""
    return (struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + _encode_name(qname)
            + struct.pack("!HH", TYPE_PTR, CLASS_IN))


def _read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """A (possibly compressed) name at `offset`: its labels and the offset after it.
    Pointers must point backwards (no loops); a name over 255 bytes is refused."""
    labels: list[bytes] = []
    after = -1
    size = 1
    while True:
        if offset >= len(data):
            raise ValueError("name runs past the message")
        length = data[offset]
        if length >= 0xC0:
            if offset + 1 >= len(data):
                raise ValueError("truncated name pointer")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if after < 0:
                after = offset + 2
            if target >= offset:
                raise ValueError("forward or looping name pointer")
            offset = target
            continue
        if length > 63:
            raise ValueError("unknown label type")
        offset += 1
        if length == 0:
            return tuple(labels), (after if after >= 0 else offset)
        label = data[offset:offset + length]
        if len(label) != length:
            raise ValueError("label runs past the message")
        size += length + 1
        if size > 255:
            raise ValueError("name longer than 255 bytes")
        labels.append(label)
        offset += length


# dnspython's escaped characters, and `<` `>`: the label "<>" must not print as NO_PTR
_ESCAPED = frozenset(b'"().;\\@$<>')


def name_text(labels: tuple[bytes, ...]) -> str:
    """dnspython's `Name.to_text(omit_final_dot=True)`: the root is "."; `"().;\\@$`
    backslash-escaped; bytes outside printable ASCII as \\DDD (so never a control character).
    Also `<` and `>` backslash-escaped (dnspython leaves them): the name `<>.` reads
    `\\<\\>`, never as NO_PTR ("<>")."""
    if not labels:
        return "."
    parts = []
    for label in labels:
        text = ""
        for c in label:
            if c in _ESCAPED:
                text += "\\" + chr(c)
            elif 0x20 < c < 0x7F:
                text += chr(c)
            else:
                text += f"\\{c:03d}"
        parts.append(text)
    return ".".join(parts)


def _lower(labels: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(label.lower() for label in labels)


class PtrAnswer:
    """What a PTR lookup needs of one DNS response."""

    __slots__ = ("rcode", "records", "truncated")

    def __init__(self, rcode: int, truncated: bool, records: list[tuple[tuple[bytes, ...], int, tuple[bytes, ...]]]):
        self.rcode = rcode
        self.truncated = truncated
        self.records = records  # the answer section: (owner, type, target name of a PTR or CNAME)

    def first_ptr(self, qname: tuple[bytes, ...]) -> tuple[bytes, ...] | None:
        """Follow CNAMEs from `qname` within the answer (RFC 2317 delegations), as dnspython's
        `resolve_chaining` does, and return the first PTR target of the name reached."""
        name = _lower(qname)
        for _ in range(16):
            for owner, rtype, target in self.records:
                if rtype == TYPE_PTR and _lower(owner) == name:
                    return target
            cname = next((t for owner, rtype, t in self.records if rtype == TYPE_CNAME and _lower(owner) == name),
                         None)
            if cname is None:
                return None
            name = _lower(cname)
        raise RdnsError("DNS error: CNAME chain too long")


def parse_response(data: bytes, query_id: int, qname: tuple[bytes, ...]) -> PtrAnswer | None:
    """The answer to our query in `data`, or None when it is none: another id, not a
    response, another question, or a message that does not parse (dnspython's is_response
    and from_wire). A truncated answer is returned as such, without its records."""
    if len(data) < 12:
        return None
    qid, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    if qid != query_id or not flags & 0x8000 or (flags >> 11) & 0xF:
        return None
    rcode = flags & 0xF
    truncated = bool(flags & 0x0200)
    try:
        if qdcount == 0:  # allowed for FORMERR, SERVFAIL, NOTIMP, REFUSED (dnspython's is_response)
            return PtrAnswer(rcode, truncated, []) if rcode in (1, 2, 4, 5) else None
        if qdcount != 1:
            return None
        asked, offset = _read_name(data, 12)
        if _lower(asked) != _lower(qname) or data[offset:offset + 4] != struct.pack("!HH", TYPE_PTR, CLASS_IN):
            return None
        offset += 4
        if truncated:
            return PtrAnswer(rcode, True, [])
        records = []
        for _ in range(ancount):
            owner, offset = _read_name(data, offset)
            if offset + 10 > len(data):
                raise ValueError("record header runs past the message")
            rtype, _rclass, _ttl, rdlength = struct.unpack("!HHIH", data[offset:offset + 10])
            offset += 10
            if offset + rdlength > len(data):
                raise ValueError("record data runs past the message")
            target: tuple[bytes, ...] = ()
            if rtype in (TYPE_PTR, TYPE_CNAME):
                target, after = _read_name(data, offset)
                if after != offset + rdlength:
                    raise ValueError("record data is not one name")
            records.append((owner, rtype, target))
            offset += rdlength
    except ValueError:
        return None
    return PtrAnswer(rcode, truncated, records)


def _udp_ptr(wire: bytes, query_id: int, qname: tuple[bytes, ...], where: tuple[str, int], family: int,
             end: float) -> PtrAnswer:
    """One UDP exchange: datagrams from elsewhere or not answering our query are ignored."""
    return _udp_exchange(wire, where, family, end, _time_left, _NoTime,
                         lambda data: parse_response(data, query_id, qname))


def _tcp_ptr(wire: bytes, query_id: int, qname: tuple[bytes, ...], where: tuple[str, int], family: int,
             end: float) -> PtrAnswer:
    """One TCP exchange: two-byte length prefix each way."""
    data = _tcp_exchange(wire, where, family, end, _time_left, _NoTime)
    answer = parse_response(data, query_id, qname)
    if answer is None or answer.truncated:
        raise ValueError("the TCP answer does not match the query")
    return answer


def lookup(ip: str, cfg: DnsConfig, timeout: float) -> str:
    """The PTR name of `ip` without the trailing dot, or NO_PTR when there is none.

    Raises TimeoutError when no answer came within `timeout` seconds (all tries together)
    and RdnsError on a server failure, so neither is mistaken for "no PTR".
    """
    servers = list(cfg.resolvers) or system_nameservers()
    end = time.monotonic() + timeout
    qname = ptr_question(ip)
    query_id = int.from_bytes(os.urandom(2), "big")  # unpredictable, as dnspython's
    wire = ptr_query(qname, query_id)
    failures: list[str] = []
    for server in servers:
        family = AF_INET6 if ":" in server else AF_INET
        where = (server, cfg.port)
        try:
            answer = _udp_ptr(wire, query_id, qname, where, family, end)
            if answer.truncated:
                answer = _tcp_ptr(wire, query_id, qname, where, family, end)
        except _NoTime:
            # the lifetime is the timeout: the first server that does not answer uses it all up
            raise TimeoutError(f"no DNS answer within {timeout:g}s") from None
        except (OSError, EOFError, ValueError) as e:
            failures.append(f"{server}: {type(e).__name__}: {e}")  # this server is no good; try the next
            continue
        if answer.rcode == 3:  # NXDOMAIN
            return NO_PTR
        if answer.rcode == 0:  # NOERROR
            target = answer.first_ptr(qname)
            # several PTRs are legal; the first one in the answer is what gethostbyaddr returns too
            return NO_PTR if target is None else name_text(target)
        if answer.rcode == 6:
            raise RdnsError(f"DNS error: {server} answered YXDOMAIN")
        failures.append(f"{server} answered {RCODE_TEXT.get(answer.rcode, answer.rcode)}")
    raise RdnsError(f"DNS server failure: {'; '.join(failures)}")
