"""Audit events: the `audit_events` row of one login, the user's recent places, the notify hook.

What belongs here: turning an audit result into the row (`event_row`, pure), the SQL that
`store.py` runs for it (one INSERT, one SELECT of the user's recent successful logins), the
conversion of those rows into `alerts.Sighting`s, and `notify()`, which starts the admin's
notify command detached (own session, none of our descriptors) so it never delays the
login or holds Dovecot's pipes. What does not: deciding (alerts.py, rules.py) or talking
to the driver (store.py).

On the login path: no json, no subprocess, no datetime at import; `notify` imports json
and subprocess only when an alert is to be sent.
"""

from __future__ import annotations

import posix

from ..values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any, TextIO

    from .alerts import Sighting
    from .facts import IpFacts

# Stored results besides the audit's allow / deny / unknown / deny-audit-only
REFUSED = "refused"  # a policy (service, network, expiry) or an alert with action = "deny" refused it
# rule and alert of the right password of a revoked or expired app password (login.py): it has leaked
LEAKED_ALERT = "leaked-password"

COLUMNS = ("timestamp", "uid", "pwid", "service", "src_ip", "src_rdns", "country", "asn", "as_org", "place",
           "latitude", "longitude", "accuracy_km", "result", "rule", "reason", "authenticated", "alert")
INSERT_EVENT = (f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ("
                + ", ".join("{p}" for _ in COLUMNS) + ")")
# The user's recent successful logins, newest first; capped (a busy user needs no more to compare).
SELECT_HISTORY = ("SELECT timestamp, country, asn, latitude, longitude, accuracy_km FROM audit_events "
                  "WHERE uid = {p}{collate} AND authenticated = 1 AND timestamp >= {p} "
                  "ORDER BY timestamp DESC LIMIT 500")
MAX_TEXT = 250  # the VARCHAR(255) columns


class EventRow(Value):
    __slots__ = COLUMNS

    def __init__(self, timestamp: str, uid: str, pwid: int | None, service: str | None, src_ip: str | None,
                 src_rdns: str | None = None, country: str | None = None, asn: int | None = None,
                 as_org: str | None = None, place: str | None = None, latitude: float | None = None,
                 longitude: float | None = None, accuracy_km: int | None = None, result: str = "unknown",
                 rule: str | None = None, reason: str | None = None, authenticated: bool = True,
                 alert: str | None = None):
        self.timestamp = timestamp  # UTC text, store.utc_timestamp
        self.uid = uid
        self.pwid = pwid
        self.service = service
        self.src_ip = src_ip
        self.src_rdns = src_rdns
        self.country = country
        self.asn = asn
        self.as_org = as_org
        self.place = place
        self.latitude = latitude
        self.longitude = longitude
        self.accuracy_km = accuracy_km
        self.result = result
        self.rule = rule
        self.reason = reason
        self.authenticated = authenticated
        self.alert = alert

    def params(self) -> tuple[Any, ...]:
        return tuple(int(v) if type(v) is bool else v for v in (getattr(self, c) for c in COLUMNS))

    def to_json(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


def _cut(text: str | None, limit: int = MAX_TEXT) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit]


def event_row(*, timestamp: str, user: str, pwid: int | None, service: str | None, ip: str | None,
              facts: IpFacts | None, place: str | None = None, result: str, rule: str | None = None,
              reason: str | None = None, authenticated: bool = True, alert: str | None = None) -> EventRow:
    """The row for one login from what the enrichment found (pure)."""
    mm = facts.maxmind if facts else None
    whois = facts.whois if facts else None
    # the trusted sources' AS first (MaxMind, the origin-AS service), RDAP's only without
    # them: the network's holder writes RDAP's, and the alerts compare this row's AS
    asns = (facts.trusted_asns or facts.asns) if facts else ()
    as_org = (mm.as_org if mm else None) or (facts.as_desc if facts else None)
    country = (mm.country.code if mm else None) or (whois.net_cc if whois else None)
    if place is None and mm is not None:
        place = mm.place()
    return EventRow(
        timestamp=timestamp, uid=_cut(user) or "", pwid=pwid, service=_cut(service, 60), src_ip=_cut(ip, 60),
        src_rdns=_cut(facts.rdns if facts else None), country=_cut(country, 8), asn=asns[0] if asns else None,
        as_org=_cut(as_org), place=_cut(place), latitude=mm.latitude if mm else None,
        longitude=mm.longitude if mm else None,
        accuracy_km=int(mm.accuracy_radius_km) if mm and mm.accuracy_radius_km is not None else None,
        result=result, rule=_cut(rule, 60), reason=reason, authenticated=authenticated, alert=_cut(alert, 60),
    )


def sighting_of(row: EventRow, now: float) -> Sighting:
    from .alerts import Sighting

    return Sighting(now, row.country, row.asn, row.latitude, row.longitude, row.accuracy_km)


def sightings(rows: list[tuple[Any, ...]]) -> list[Sighting]:
    """`SELECT_HISTORY` rows (text or datetime timestamps) -> `Sighting`s; unreadable rows are skipped."""
    from ..policy import PolicyError, parse_utc
    from .alerts import Sighting

    found = []
    for stamp, country, asn, lat, lon, radius in rows:
        try:
            when = parse_utc(str(stamp))
        except PolicyError:
            continue
        found.append(Sighting(when, country, None if asn is None else int(asn),
                              None if lat is None else float(lat), None if lon is None else float(lon),
                              None if radius is None else float(radius)))
    return found


# --- notify ------------------------------------------------------------------------------


# The JSON is written into the pipe before the command starts: below the pipe's 64 KiB,
# so that never blocks. A bigger payload has its texts shortened before encoding.
MAX_PAYLOAD = 60000


def encode_payload(payload: dict[str, Any], limit: int = MAX_PAYLOAD) -> bytes:
    """The payload as one line of JSON of at most `limit` bytes, always complete JSON.

    Too big: every text is cut to fewer and fewer characters, and lists to fewer items,
    *before* encoding (cutting the encoded bytes gave the command invalid JSON), and
    `"truncated": true` says so.
    """
    import json

    def dump(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "replace") + b"\n"

    data = dump(payload)
    chars = 4096
    while len(data) > limit and chars >= 16:
        data = dump({**_shortened(payload, chars, max(1, chars // 16)), "truncated": True})
        chars //= 4
    if len(data) > limit:  # thousands of keys: nothing useful is left to send
        data = dump({"truncated": True})
    return data


def _shortened(value: Any, chars: int, items: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + "..."
    if isinstance(value, dict):
        return {str(k)[:chars]: _shortened(v, chars, items) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shortened(v, chars, items) for v in list(value)[:items]]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _shortened(str(value), chars, items)


_running: list[Any] = []  # notify commands started by this process (subprocess.Popen)


def notify(command: str | tuple[str, ...], payload: dict[str, Any], stderr: TextIO | None = None) -> bool:
    """Start `command` with `payload` as JSON on stdin, detached; returns at once.

    The command gets its own session, /dev/null for stdout/stderr and no other descriptor
    of ours (Dovecot waits for the login's pipes to close), so neither the login nor
    Dovecot waits for it. It is started by `subprocess` (vfork + exec in C), never by
    os.fork(): the login has enrichment threads by then, and a forked copy of a threaded
    Python may deadlock on a lock another thread held. A string command runs through
    /bin/sh -c; a list runs as is. False (with one line on `stderr`) when it cannot start.
    """
    import subprocess

    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    data = encode_payload(payload)
    try:
        read_end, write_end = posix.pipe()
    except OSError as e:
        _warn(stderr, f"notify_command: {e.strerror}")
        return False
    try:
        posix.write(write_end, data)
    finally:
        posix.close(write_end)
    # Not waited for: the per-login process exits at once (init reaps the command); a
    # long-running `serve` reaps the finished ones here, at the next alert.
    _running[:] = [child for child in _running if child.poll() is None]
    try:
        _running.append(subprocess.Popen(argv, stdin=read_end, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True))
    except (OSError, ValueError) as e:
        _warn(stderr, f"notify_command: cannot start {argv[0]}: {getattr(e, 'strerror', None) or e}")
        return False
    finally:
        posix.close(read_end)
    return True


def _warn(stderr: TextIO | None, message: str) -> None:
    if stderr is None:
        return
    try:
        stderr.write(f"dovecot-appauth: alerts: {message}\n")
        stderr.flush()
    except (OSError, ValueError):
        pass
