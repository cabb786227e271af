"""RDAP network data for an IP (upstream's "whois" facts) with a strict time budget.

What belongs here: finding the RDAP server (fixed `servers` or an IANA-style bootstrap),
one GET for `/ip/{ip}`, one for `/autnum/{asn}`, and turning the JSON into `WhoisFacts`.
Imported lazily by enrich.py on a cache miss only.

Why not ipwhois (what upstream uses): `IPWhois(ip).lookup_rdap()` retries, sleeps 120 s
on HTTP 429, first asks Team Cymru over DNS/whois for the ASN and talks to hard-coded
RIR servers, so neither the time nor the servers can be bounded or pointed at a test
server. A login has 1.5 s in total.

Why not whoisit (meeb/whoisit, maintained, read at its 4.x source): it imports both
`requests` and `httpx` at import time (hundreds of ms, two extra dependencies), mounts a
urllib3 `Retry(total=3, status_forcelist=[429], backoff_factor=1)` with Retry-After up to
60 s on its default session (utils.py: `http_max_retries`, `retry_after_max`), has a 10 s
default timeout, and takes its endpoints from IANA bootstrap data it fetches or from
built-in overrides. All of that can be worked around (own session, per-call timeout,
`load_bootstrap_data`), but what remains is a thin URL builder over our own HTTP code.

So: a small client on the stdlib. Every request gets the time left of one budget as its
socket timeout, there are no retries and no sleeps, 429/5xx raise at once (enrich.py
keeps that as a short negative entry), and no proxy from the environment is used. A
plain-HTTP server is asked with one GET on a socket (`_http_get`); only https:// (and the
bootstrap's file://) go through urllib, whose import brings http.client and ssl
(~1.5 MiB and ~15 ms of a cold login; docs/PERFORMANCE.md).

Semantics, compared with ipwhois as upstream used it:
- `net_name`, `net_cc`: the IP network object's `name` and `country`.
- `entities`: the `handle` of every entity of the network object, nested entities
  included (depth first, each handle once). ipwhois lists the top-level ones; the nested
  ones (an org's abuse contact, say) are a superset that lists can match too.
- `asn`: ipwhois gets it from Team Cymru's origin data. RDAP has no standard member for
  the origin AS of a network; ARIN's `arin_originas0_originautnums` is used where present
  (its first AS number, 0 < n < 2**32: `facts.as_number`), otherwise the caller's
  `asn_hint` (enrich.py passes MaxMind's ASN). The registrant writes that member: the
  rule engine lets deny lists match it, never allow lists (rules.py).
- `as_desc`: like Cymru's description that ipwhois returned, `"NAME description, CC"`
  built from the autnum object's `name`, first untitled/"description" remark line and
  `country`; `as_cc` is that `country` (RFC 9083 autnum member; unset by some RIRs).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import urllib.parse

from ...config import RdapConfig
from ..facts import WhoisFacts, as_number

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_BYTES = 1 << 20  # an RDAP answer is a few kB; never read an unbounded body
USER_AGENT = "dovecot-appauth (RDAP)"

ACCEPT = "application/rdap+json, application/json"
MAX_HEAD_BYTES = 65536  # status line and headers of a plain-HTTP answer
MAX_REDIRECTS = 5
_opener: Any = None


def _urllib_opener() -> Any:
    """urllib's opener, for https:// and file:// only: urllib.request imports http.client
    and ssl, which a login asking a plain-HTTP server does not need (docs/PERFORMANCE.md).
    No ProxyHandler from the environment: a login must not depend on http_proxy variables."""
    global _opener
    if _opener is None:
        import urllib.request

        _opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return _opener


class RdapError(Exception):
    """The RDAP server answered with an error (429, 5xx, bad JSON, ...)."""


class _Budget:
    """The time left of one lookup; every request gets what is left as its timeout."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"RDAP budget of {self.seconds:g}s used up")
        return left


def _read_body(resp: Any, budget: _Budget) -> bytes:
    """Read at most MAX_BYTES + 1 in chunks, checking the budget between them: the socket
    timeout alone bounds each read, so a server dripping a byte at a time could hold a
    lookup for many budgets."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BYTES:
        budget.left()  # raises TimeoutError when the lookup's time is up
        chunk = resp.read1(min(65536, MAX_BYTES + 1 - size)) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _fetch_with_urllib(url: str, budget: _Budget) -> bytes | None:
    """https:// (and the bootstrap's file://) through urllib; None on 404."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": ACCEPT,  # noqa: S310 (scheme checked by the caller)
                                               "User-Agent": USER_AGENT})
    try:
        with _urllib_opener().open(req, timeout=budget.left()) as resp:
            return _read_body(resp, budget)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 404:
            return None
        # 429 included: never sleep or retry inside a login; the caller caches the failure
        raise RdapError(f"HTTP {e.code} from {url}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise TimeoutError(f"no RDAP answer from {url} in time") from None
        raise RdapError(f"{url}: {e.reason}") from None
    except TimeoutError:
        raise TimeoutError(f"RDAP answer from {url} too slow") from None
    except OSError as e:
        raise RdapError(f"{url}: {e}") from None


class _Reader:
    """Reads a plain-HTTP answer from a socket, each recv bounded by the budget."""

    def __init__(self, sock: socket.socket, budget: _Budget):
        self.sock = sock
        self.budget = budget
        self.buffer = b""
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        self.sock.settimeout(self.budget.left())
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def line(self, limit: int) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > limit or not self.fill():
                raise ValueError("line too long or cut off")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self.fill():
                raise ValueError("answer cut off")
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def rest(self, limit: int) -> bytes:
        while len(self.buffer) <= limit and self.fill():
            pass
        return self.buffer


def _http_get(url: str, budget: _Budget) -> tuple[int, str | None, bytes]:
    """One GET over plain HTTP/1.1 on a socket (no urllib, so no http.client and ssl):
    (status, Location, body of at most MAX_BYTES + 1 bytes). Chunked and sized bodies;
    `Connection: close`, no proxy, no retries, every read within the budget."""
    parts = urllib.parse.urlsplit(url)
    try:
        host, port = parts.hostname, parts.port or 80
    except ValueError:
        raise RdapError(f"{url}: bad port") from None
    if not host:
        raise RdapError(f"{url}: no host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        head = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\nAccept: {ACCEPT}\r\n"
                f"User-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
                ).encode("ascii")
    except UnicodeEncodeError:
        raise RdapError(f"{url}: not an ASCII URL") from None
    if b"\0" in head or head.count(b"\r\n") != 7:  # no header smuggled in through the URL
        raise RdapError(f"{url}: bad characters in the URL")
    try:
        sock = socket.create_connection((host, port), timeout=budget.left())
    except TimeoutError:
        raise TimeoutError(f"no RDAP answer from {url} in time") from None
    except OSError as e:
        raise RdapError(f"{url}: {e}") from None
    try:
        with sock:
            sock.settimeout(budget.left())
            sock.sendall(head)
            reader = _Reader(sock, budget)
            status_line = reader.line(MAX_HEAD_BYTES).decode("latin-1")
            version, _, rest = status_line.partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit()):
                raise ValueError(f"bad status line {status_line[:60]!r}")
            headers: dict[str, str] = {}
            size = len(status_line)
            while True:
                line = reader.line(MAX_HEAD_BYTES).decode("latin-1")
                size += len(line) + 2
                if size > MAX_HEAD_BYTES:
                    raise ValueError("headers too long")
                if not line:
                    break
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            status = int(code)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = b""
                while True:
                    size_text = reader.line(1024).split(b";", 1)[0].strip()
                    length = int(size_text, 16)
                    if length < 0:
                        raise ValueError("bad chunk size")
                    if length == 0:
                        break
                    take = min(length, MAX_BYTES + 1 - len(body))
                    body += reader.exactly(take)
                    if len(body) > MAX_BYTES:
                        break  # too large: said by the caller, the rest never read
                    if reader.exactly(2) != b"\r\n":
                        raise ValueError("bad chunk end")
            elif "content-length" in headers:
                length = int(headers["content-length"])
                if length < 0:
                    raise ValueError("negative Content-Length")
                body = reader.exactly(min(length, MAX_BYTES + 1))
            else:
                body = reader.rest(MAX_BYTES)
    except TimeoutError:
        raise TimeoutError(f"RDAP answer from {url} too slow") from None
    except ValueError as e:
        raise RdapError(f"{url}: bad HTTP answer: {e}") from None
    except OSError as e:
        raise RdapError(f"{url}: {e}") from None
    return status, headers.get("location"), body[:MAX_BYTES + 1]


def _fetch_json(url: str, budget: _Budget, *, allow_file: bool = False) -> dict[str, Any] | None:
    """GET one JSON object; None on 404 (this server does not know the resource)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https") and not (allow_file and scheme == "file"):
        raise RdapError(f"unsupported URL scheme: {url}")
    for _ in range(MAX_REDIRECTS + 1):
        if urllib.parse.urlsplit(url).scheme != "http":
            body = _fetch_with_urllib(url, budget)
            break
        status, location, body = _http_get(url, budget)
        if status in (301, 302, 303, 307, 308) and location:
            url = urllib.parse.urljoin(url, location)  # as urllib's redirect handler does
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise RdapError(f"redirect to an unsupported URL scheme: {url}")
            continue
        if status == 404:
            return None
        if not 200 <= status < 300:
            # 429 included: never sleep or retry inside a login; the caller caches the failure
            raise RdapError(f"HTTP {status} from {url}")
        break
    else:
        raise RdapError(f"more than {MAX_REDIRECTS} redirects from {url}")
    if body is None:
        return None
    if len(body) > MAX_BYTES:
        raise RdapError(f"answer from {url} larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise RdapError(f"answer from {url} is not JSON") from None
    if not isinstance(data, dict):
        raise RdapError(f"answer from {url} is not a JSON object")
    return data


def _pick_urls(urls: list[Any]) -> list[str]:
    # IANA lists https and http variants of the same server: https first
    good = [u for u in urls if isinstance(u, str) and u.startswith(("https://", "http://"))]
    return sorted(good, key=lambda u: not u.startswith("https://"))


def bootstrap_bases(kind: str, value: str | int, doc: dict[str, Any]) -> list[str]:
    """Base URLs for an IP (kind ipv4/ipv6) or AS number (kind asn) from a bootstrap file."""
    best: list[str] = []
    best_len = -1
    if kind == "asn":
        number = int(value)
        for entry in doc.get("services") or ():
            ranges, urls = entry[0], entry[1]
            for r in ranges:
                lo, _, hi = str(r).partition("-")
                if int(lo) <= number <= int(hi or lo):
                    return _pick_urls(urls)
        return []
    addr = ipaddress.ip_address(value)
    for entry in doc.get("services") or ():
        prefixes, urls = entry[0], entry[1]
        for p in prefixes:
            try:
                net = ipaddress.ip_network(p, strict=False)
            except ValueError:
                continue
            # the most specific registration wins, as RFC 9224 asks
            if net.version == addr.version and addr in net and net.prefixlen > best_len:
                best, best_len = _pick_urls(urls), net.prefixlen
    return best


def _bases(cfg: RdapConfig, kind: str, value: str | int, budget: _Budget,
           bootstrap: dict[str, dict[str, Any]]) -> list[str]:
    if cfg.servers:
        return list(cfg.servers)
    doc = bootstrap.get(kind)
    if doc is None:
        url = cfg.bootstrap_url.rstrip("/") + f"/{kind}.json"
        doc = _fetch_json(url, budget, allow_file=True)
        if doc is None:
            raise RdapError(f"bootstrap file {url} not found")
        bootstrap[kind] = doc  # the caller may cache it
    return bootstrap_bases(kind, value, doc)


def _query(bases: list[str], path: str, budget: _Budget) -> dict[str, Any] | None:
    for base in bases:
        # only a 404 moves on to the next server; errors and timeouts end the lookup
        data = _fetch_json(base.rstrip("/") + "/" + path, budget)
        if data is not None:
            return data
    return None


def entity_handles(entities: Any) -> list[str]:
    """The `handle` of every entity, nested ones included: depth first, each handle once.

    Linear in the number of entities: a set for the handles seen (a list's `in` made a
    20,000-entity answer cost seconds of CPU) and a stack of iterators, not recursion.
    """
    out: list[str] = []
    seen: set[str] = set()
    stack = [iter(entities or ())]
    while stack:
        ent = next(stack[-1], _END)
        if ent is _END:
            stack.pop()
            continue
        if not isinstance(ent, dict):
            continue
        handle = ent.get("handle")
        if isinstance(handle, str) and handle not in seen:
            seen.add(handle)
            out.append(handle)
        nested = ent.get("entities")
        if nested:
            stack.append(iter(nested))
    return out


_END = object()


def _description(obj: dict[str, Any]) -> str | None:
    for remark in obj.get("remarks") or ():
        if not isinstance(remark, dict):
            continue
        # ARIN puts "Registration Comments" here; only untitled/description remarks are descr
        title = str(remark.get("title") or "description").lower()
        lines = [line for line in remark.get("description") or () if isinstance(line, str) and line.strip()]
        if title == "description" and lines:
            return lines[0].strip()
    return None


def as_description(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(as_desc, as_cc) from an autnum object: `NAME description, CC` like ipwhois had it."""
    name = obj.get("name") if isinstance(obj.get("name"), str) else None
    cc = obj.get("country") if isinstance(obj.get("country"), str) else None
    text = " ".join(p for p in (name, _description(obj)) if p)
    if cc:
        text = f"{text}, {cc}" if text else cc
    return text or None, cc


def _origin_asn(obj: dict[str, Any]) -> int | None:
    """The first AS number (0 < n < 2**32) of the network object's origin-AS member: what
    else is written there ("AS99999999999999999999", "-7") is skipped, never stored (the
    audit event's row takes no integer past 2**63 - 1; the facts are cached for days)."""
    for key in ("arin_originas0_originautnums", "originAutnums"):
        values = obj.get(key)
        if isinstance(values, list):
            for v in values:
                asn = as_number(v)
                if asn is not None:
                    return asn
    return None


def lookup(
    ip: str,
    cfg: RdapConfig,
    timeout: float,
    *,
    asn_hint: Callable[[], int | None] | int | None = None,
    bootstrap: dict[str, dict[str, Any]] | None = None,
) -> WhoisFacts:
    """RDAP facts for `ip` within `timeout` seconds in total (all requests together).

    `asn_hint` (a number or a function returning one) supplies the AS number when the
    network object names none. `bootstrap` maps "ipv4"/"ipv6"/"asn" to bootstrap
    documents already known; documents fetched here are added to it. An address no
    server knows gives empty facts. Raises TimeoutError or RdapError.
    """
    try:
        return _lookup(ip, cfg, _Budget(timeout), asn_hint, bootstrap if bootstrap is not None else {})
    except (TimeoutError, RdapError):
        raise
    except (TypeError, KeyError, IndexError, AttributeError, ValueError, RecursionError) as e:
        # an answer of the wrong shape (e.g. "remarks": 5, deep nesting): the server's fault
        raise RdapError(f"malformed RDAP data ({type(e).__name__})") from None


def _lookup(
    ip: str,
    cfg: RdapConfig,
    budget: _Budget,
    asn_hint: Callable[[], int | None] | int | None,
    boot: dict[str, dict[str, Any]],
) -> WhoisFacts:
    version = ipaddress.ip_address(ip).version
    net = _query(_bases(cfg, f"ipv{version}", ip, budget, boot), f"ip/{ip}", budget)
    if net is None:
        return WhoisFacts()
    asn = _origin_asn(net)
    if asn is None and asn_hint is not None:
        asn = as_number(asn_hint() if callable(asn_hint) else asn_hint)
    as_desc = as_cc = None
    if asn is not None:
        autnum = _query(_bases(cfg, "asn", asn, budget, boot), f"autnum/{asn}", budget)
        if autnum is not None:
            as_desc, as_cc = as_description(autnum)
    name, cc = net.get("name"), net.get("country")
    return WhoisFacts(
        asn=asn,
        as_cc=as_cc,
        as_desc=as_desc,
        net_name=name if isinstance(name, str) else None,
        net_cc=cc if isinstance(cc, str) else None,
        entities=tuple(entity_handles(net.get("entities"))),
    )
