"""Audit events: the `audit_events` row of one login, the user's recent places, the notify hook.

What belongs here: turning an audit result into the row (`event_row`, pure), the SQL that
`store.py` runs for it (one INSERT, one SELECT of the user's recent successful logins), the
conversion of those rows into `alerts.Sighting`s, and `notify()`, which starts the admin's
notify command fully detached (double fork) so it never delays the login or holds
Dovecot's pipes. What does not: deciding (alerts.py, rules.py) or talking to the driver
(store.py).

On the login path: no json, no subprocess, no datetime at import; `notify` imports json
only when an alert is to be sent.
"""

from __future__ import annotations

import os

from .values import Value

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
    asns = facts.asns if facts else ()
    as_org = (mm.as_org if mm else None) or (whois.as_desc if whois else None)
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
    from .alerts import Sighting
    from .policy import PolicyError, parse_utc

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


def notify(command: str | tuple[str, ...], payload: dict[str, Any], stderr: TextIO | None = None) -> bool:
    """Start `command` with `payload` as JSON on stdin, detached; returns at once.

    Double fork: the grandchild belongs to init, has its own session, /dev/null for
    stdout/stderr and no other descriptor of ours (Dovecot waits for the login's pipes to
    close), so neither the login nor Dovecot waits for it. The JSON is written into a pipe
    before the fork; it is a few KiB, far below the pipe's capacity, so that never blocks.
    A string command runs through /bin/sh -c; a list runs as is.
    """
    import json

    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    data = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8", "replace") + b"\n"
    try:
        read_end, write_end = os.pipe()
    except OSError as e:
        _warn(stderr, f"notify_command: {e.strerror}")
        return False
    try:
        if len(data) > 60000:
            data = data[:60000]
        os.write(write_end, data)
    finally:
        os.close(write_end)
    try:
        pid = os.fork()
    except OSError as e:
        os.close(read_end)
        _warn(stderr, f"notify_command: cannot fork: {e.strerror}")
        return False
    if pid == 0:  # pragma: no cover - child processes (the test checks the command's output)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(read_end, 0)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.closerange(3, 65536)
            os.execvp(argv[0], argv)  # noqa: S606 - the admin's configured command
        finally:
            os._exit(127)
    os.close(read_end)
    try:
        os.waitpid(pid, 0)  # the middle child exits at once
    except ChildProcessError:
        pass
    return True


def _warn(stderr: TextIO | None, message: str) -> None:
    if stderr is None:
        return
    try:
        stderr.write(f"dovecot-appauth: alerts: {message}\n")
        stderr.flush()
    except (OSError, ValueError):
        pass
