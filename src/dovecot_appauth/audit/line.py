"""The audit log: one line per audited login, in upstream's format, to syslog or journald.

What belongs here: `format_line` and `journal_fields` (pure), and `emit`, the one side
effect, which never raises. What does not: deciding (`rules.py`) or enriching.

The line is exactly upstream's (`models.py` `LookupResult.__str__` of
bennet0496/dovecot_web_auth, as in the README's examples):

    user=<U>, service=S, ip=IP, host=PTR, asn=ASn, as_cc=CC, as_desc=<..>, as_org=<..>,
    net_name=<..>, net_cc=CC, entity=E1, entity=E2, city=<id/name>,
    subdivision=<id/name> (one per subdivision, least specific first, none when none),
    country=<id/name>, represented_country=<id/name>, registered_country=<id/name>,
    lat=.., lon=.., rad=..km

Unknown values print as upstream prints them: `None` (`host=<>` is "no PTR"). Without
whois data the entities print as `entity=<>`; with whois data and no entities as
`entity=`. Without MaxMind data the line ends after the entities (as upstream's lines for
local sources do). `asn` falls back to the origin-AS service's and then MaxMind's AS number
when whois did not answer (in the configured order); `as_cc` and `as_desc` to the
origin-AS service's when whois has none.
For a local source upstream synthesised the whois part (as_cc=ZZ, as_desc=<location
name>, net_name=<network name>, net_cc=ZZ, no entities); so do we.

Our addition, replacing upstream's `, blocked=True, matched=..`: `, result=R, reason=<..>`
with R one of allow, deny, unknown, deny-audit-only (see `rules.Outcome`).

Values from DNS, whois, MaxMind and the client (user name) are sanitised so they cannot
forge a line or a field: control characters (C0, DEL, C1, Unicode line and paragraph
separators) and the backslash print as `\\xNN`/`\\uNNNN`; inside `<..>` also `<` and `>`;
in bare fields also space, `,`, `<`, `>` and `=`. Each value is capped at
`MAX_VALUE_CHARS`, the line at `MAX_LINE_CHARS`.
"""

from __future__ import annotations

import posix
import time

from .. import paths
from ..core import WouldWait, must_not_wait
from .facts import NO_PTR
from .rules import SourceKind

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    from ..config import AuditConfig
    from .facts import GeoName, IpFacts
    from .rules import Verdict

MAX_VALUE_CHARS = 256
MAX_LINE_CHARS = 4096
MAX_ENTITIES = 32
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# The longest a login waits for journald or syslog to take its line (each): a daemon that
# is stuck (its socket's queue full) must not hold the login, nor Dovecot's auth worker
LOG_SOCKET_TIMEOUT = 1.0

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITY_INFO = 6
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_BRACKET_EXTRA = frozenset("<>")
_BARE_EXTRA = frozenset("<> ,=")


def _escape_char(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _is_control(c: str) -> bool:
    n = ord(c)
    return n < 0x20 or 0x7F <= n < 0xA0 or c in "\u2028\u2029\\"


def clean(value: object, extra: frozenset[str] = frozenset(), limit: int = MAX_VALUE_CHARS) -> str:
    """`str(value)` with control characters (and `extra`) escaped visibly, capped at `limit`."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    # isdisjoint: one C loop over the text (a generator with `any` cost a login ~2 µs per field)
    if text.isprintable() and "\\" not in text and extra.isdisjoint(text):
        return text
    escape = _escape_char
    return "".join(escape(c) if _is_control(c) or c in extra or not c.isprintable() else c for c in text)


def _bracket(value: object) -> str:
    return f"<{clean(value, _BRACKET_EXTRA)}>"


def _bare(value: object) -> str:
    return clean(value, _BARE_EXTRA)


def _geo(place: GeoName) -> str:
    return f"<{clean(place.geoname_id, _BRACKET_EXTRA)}/{clean(place.name, _BRACKET_EXTRA)}>"


def _is_local(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.source.kind is SourceKind.LOCAL


def _whois_part(facts: IpFacts | None, verdict: Verdict | None) -> dict[str, Any] | None:
    """The whois values to show; synthesised for local sources as upstream did."""
    whois = facts.whois if facts else None
    if facts is not None and whois is not None:
        return {
            "asn": whois.asn, "as_cc": facts.as_cc, "as_desc": facts.as_desc,
            "net_name": whois.net_name, "net_cc": whois.net_cc, "entities": list(whois.entities),
        }
    if _is_local(verdict):
        assert verdict is not None
        return {
            "asn": None, "as_cc": "ZZ", "as_desc": verdict.source.location,
            "net_name": verdict.source.name, "net_cc": "ZZ", "entities": [],
        }
    return None


def _origin_part(facts: IpFacts | None) -> dict[str, Any]:
    """Without whois data, the AS country and name from the origin-AS service (as upstream,
    whose ipwhois took them from the same service)."""
    if facts is None or facts.origin is None:
        return {}
    return {"as_cc": facts.origin.cc, "as_desc": facts.origin.as_name}


def _asn(facts: IpFacts | None, whois: dict[str, Any] | None) -> int | None:
    if whois is not None and whois["asn"] is not None:
        return whois["asn"]
    asns = facts.asns if facts is not None else ()  # the origin-AS service's, then MaxMind's
    return asns[0] if asns else None


def format_line(
    user: str, service: str, ip: str | None, facts: IpFacts | None, verdict: Verdict | None
) -> str:
    """Upstream's audit line, plus `, result=.., reason=<..>` when a verdict is given. Pure."""
    whois = _whois_part(facts, verdict)
    asn = _asn(facts, whois)
    rdns = facts.rdns if facts else None
    mm = facts.maxmind if facts else None
    w = whois or _origin_part(facts)
    parts = [
        f"user={_bracket(user)}",
        f"service={_bare(service)}",
        f"ip={_bare(ip)}",
        f"host={NO_PTR if rdns == NO_PTR else _bare(rdns)}",
        f"asn={'AS' + str(asn) if asn is not None else 'None'}",
        f"as_cc={_bare(w.get('as_cc'))}",
        f"as_desc={_bracket(w.get('as_desc'))}",
        f"as_org={_bracket(mm.as_org if mm else None)}",
        f"net_name={_bracket(w.get('net_name'))}",
        f"net_cc={_bare(w.get('net_cc'))}",
    ]
    if whois is None:
        parts.append("entity=<>")
    else:
        entities = whois["entities"]
        shown = [_bare(e) for e in entities[:MAX_ENTITIES]]
        if len(entities) > MAX_ENTITIES:
            shown.append(f"...+{len(entities) - MAX_ENTITIES}")
        parts.append("entity=" + ", entity=".join(shown))
    if mm is not None:
        parts.append(f"city={_geo(mm.city)}")
        parts.extend(f"subdivision={_geo(s)}" for s in mm.subdivisions)
        parts.append(f"country={_geo(mm.country)}")
        parts.append(f"represented_country={_geo(mm.represented_country)}")
        parts.append(f"registered_country={_geo(mm.registered_country)}")
        parts.append(
            f"lat={_bare(mm.latitude)}, lon={_bare(mm.longitude)}, rad={_bare(mm.accuracy_radius_km)}km"
        )
    line = ", ".join(parts)
    if verdict is not None:
        tail = f", result={verdict.result}, reason={_bracket(verdict.reason)}"
        line = line[: MAX_LINE_CHARS - len(tail)] + tail
    return line[:MAX_LINE_CHARS]


def _record(place: GeoName) -> str:
    return repr({"name": place.name, "geoname_id": place.geoname_id, "code": place.code})


def journal_fields(
    user: str, service: str, ip: str | None, facts: IpFacts | None, verdict: Verdict | None
) -> dict[str, str]:
    """Upstream's structured journald fields (AUDIT_*, values as Python prints them), plus
    AUDIT_AS_ORG, AUDIT_RESULT and AUDIT_REASON. MESSAGE is added by `emit`."""
    whois = _whois_part(facts, verdict)
    w = whois or _origin_part(facts)
    asn = _asn(facts, whois)
    mm = facts.maxmind if facts else None
    fields: dict[str, Any] = {
        "AUDIT_USER": user,
        "AUDIT_SERVICE": service,
        "AUDIT_IP": ip,
        "AUDIT_REV_HOST": facts.rdns if facts else None,
        "AUDIT_ASN": f"AS{asn}" if asn is not None else None,
        "AUDIT_AS_CC": w.get("as_cc"),
        "AUDIT_AS_DESC": w.get("as_desc"),
        "AUDIT_AS_ORG": mm.as_org if mm else None,
        "AUDIT_NET_NAME": w.get("net_name"),
        "AUDIT_NET_CC": w.get("net_cc"),
        "AUDIT_ENTITIES": repr(whois["entities"]) if whois is not None else None,
        "AUDIT_BLOCKED": verdict.effective_deny if verdict else False,
        "AUDIT_MATCHED": verdict.matched.rule if verdict and verdict.matched else None,
        "AUDIT_LOG": verdict.log if verdict else True,
        "AUDIT_RESERVED": _is_local(verdict),
    }
    if verdict is not None:
        fields["AUDIT_RESULT"] = verdict.result
        fields["AUDIT_REASON"] = verdict.reason
    if mm is not None:
        fields.update(
            AUDIT_MAXMIND_CITY=_record(mm.city),
            AUDIT_MAXMIND_SUBDIVISIONS=repr(
                tuple({"name": s.name, "geoname_id": s.geoname_id, "code": s.code} for s in mm.subdivisions)
            ),
            AUDIT_MAXMIND_CONTINENT=_record(mm.continent),
            AUDIT_MAXMIND_COUNTRY=_record(mm.country),
            AUDIT_MAXMIND_REGISTERED_COUNTRY=_record(mm.registered_country),
            AUDIT_MAXMIND_REPRESENTED_COUNTRY=_record(mm.represented_country),
            AUDIT_MAXMIND_LOCATION=repr(
                {
                    "accuracy_radius": mm.accuracy_radius_km,
                    "latitude": mm.latitude,
                    "longitude": mm.longitude,
                    "time_zone": None,  # not kept in IpFacts
                }
            ),
            AUDIT_MAXMIND_POSTAL_CODE=mm.postal_code,
        )
    # journald stores values length-prefixed, so only control characters are escaped
    return {k: clean(v, limit=MAX_LINE_CHARS) for k, v in fields.items()}


def syslog_datagram(line: str, audit: AuditConfig, now: float, pid: int) -> bytes:
    """`<PRI>Mmm dd hh:mm:ss identifier[pid]: line` (RFC 3164, as glibc's syslog() sends it)."""
    pri = FACILITIES.get(audit.syslog_facility.lower(), FACILITIES["mail"]) * 8 + SEVERITY_INFO
    t = time.localtime(now)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    ident = clean(audit.syslog_identifier, _BARE_EXTRA | frozenset(":[]"), 48)
    return f"<{pri}>{stamp} {ident}[{pid}]: {line}".encode("utf-8", "backslashreplace")


def journal_datagram(message: str, fields: dict[str, str], *, identifier: str, facility: int,
                     priority: int = SEVERITY_INFO) -> bytes:
    """One journal entry in journald's native protocol (systemd's JOURNAL_NATIVE_PROTOCOL,
    what sd_journal_send() sends): `KEY=value` and a newline per field; a value that holds
    a newline as `KEY`, a newline, its length in bytes (64 bits, little-endian), the value
    and a newline. `fields` are journal_fields(): upper-case names, no control characters."""
    out = bytearray()
    for key, value in (("MESSAGE", message), ("PRIORITY", str(priority)), ("SYSLOG_IDENTIFIER", identifier),
                       ("SYSLOG_FACILITY", str(facility)), *fields.items()):
        data = value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            out += key.encode("ascii") + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode("ascii") + b"=" + data + b"\n"
    return bytes(out)


def _send_datagram(data: bytes, path: str, what: str) -> None:
    """`data` as one datagram to the Unix socket at `path` (journald's, or syslog's), within
    LOG_SOCKET_TIMEOUT. Connected first: only then does the wait for room see the reader's
    queue (a stuck daemon), so the timeout holds instead of a busy retry. On serve's event
    loop nothing may wait: a full queue is WouldWait (the request runs again on a thread)."""
    import socket  # only when logging: keeps the module's import cheap

    on_loop = must_not_wait()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.0 if on_loop else LOG_SOCKET_TIMEOUT)
        sock.connect(path)
        try:
            sock.send(data)
        except BlockingIOError:
            if on_loop:
                raise WouldWait(f"{what}'s socket is full") from None
            raise


def _send_syslog(data: bytes, path: str) -> None:
    try:
        _send_datagram(data, path, "syslog")
    except OSError as e:
        import errno

        if e.errno != errno.EPROTOTYPE:
            raise
        if must_not_wait():
            raise WouldWait("syslog on a stream socket") from None
        import socket

        # a stream socket (some syslog daemons): glibc frames the message with a NUL
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
            stream.settimeout(LOG_SOCKET_TIMEOUT)
            stream.connect(path)
            stream.sendall(data + b"\0")


def _send_journal(line: str, fields: dict[str, str] | Callable[[], dict[str, str]], audit: AuditConfig) -> bool:
    """True when journald took the entry; False when the journal is not used here (`journal
    = "no"`, or "auto" without journald's socket). Raises when it is to be used and cannot
    be (`journal = "yes"` without the socket; a stuck journald, after LOG_SOCKET_TIMEOUT):
    emit() then says so and uses syslog.

    Sent in journald's native protocol by this module, not by the systemd Python module:
    sd_journal_send() waits for a stuck journald without a deadline (and the module is a C
    extension that pip builds against libsystemd's headers)."""
    if audit.journal == "no":
        return False
    if not paths.exists(JOURNAL_SOCKET):
        if audit.journal == "yes":
            raise FileNotFoundError(f'{JOURNAL_SOCKET} does not exist (journal = "yes")')
        return False
    facility = FACILITIES.get(audit.syslog_facility.lower(), FACILITIES["mail"])
    if callable(fields):
        fields = fields()
    data = journal_datagram(line, fields, identifier=audit.syslog_identifier, facility=facility)
    _send_datagram(data, JOURNAL_SOCKET, "journald")
    return True


def emit(line: str, fields: dict[str, str] | Callable[[], dict[str, str]], audit: AuditConfig,
         stderr: IO[str] | None = None) -> None:
    """Send the line to journald (with the fields) or else syslog. Never raises, but for
    WouldWait on serve's event loop when journald's or syslog's socket is full (nothing was
    sent). Each waits at most LOG_SOCKET_TIMEOUT.
    `fields` may be a function that makes them: called only when journald takes the line.

    A journald failure falls back to syslog so the line is not lost; a syslog failure is
    one line on `stderr` (Dovecot puts the program's stderr into its log).
    """
    try:
        if _send_journal(line, fields, audit):
            return
    except WouldWait:
        raise
    except Exception as e:  # the audit line must never fail a login
        _warn(stderr, f"journald: {type(e).__name__}: {e}; using syslog")
    if not audit.syslog_socket:  # syslog switched off (log_file only)
        return
    try:
        _send_syslog(syslog_datagram(line, audit, time.time(), posix.getpid()), audit.syslog_socket)
    except WouldWait:
        raise  # nothing was sent: serve runs the request again on a thread
    except Exception as e:
        _warn(stderr, f"syslog {audit.syslog_socket}: {type(e).__name__}: {e}; audit line not logged")


def _warn(stderr: IO[str] | None, message: str) -> None:
    if stderr is None:
        return
    try:
        stderr.write(f"dovecot-appauth: audit log: {clean(message, limit=512)}\n")
        stderr.flush()
    except Exception:  # noqa: S110 - nothing left to report to
        pass
