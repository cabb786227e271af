"""The audit of one login: classify the source, enrich it, judge it, log it.

Wires the pure parts (rules, audit.format_line) to the ones with I/O (enrich with its
cache and sources, list files, the syslog/journal/file emitters). `login.py` calls
`audit_login` after a correct app password (or, with --audit-chain, after another
passdb); `explain` calls `assess` for the same result without logging anything.
With a store, `audit_login` also checks the `[alerts]` (one query for the user's recent
places, alerts.py), writes the login's `audit_events` row and starts the notify command
(events.py); none of these can fail the login.
"""

from __future__ import annotations

import posix

from ..core import TempFail
from ..core import say as _say
from ..values import Value
from .facts import NO_PTR
from .rules import SourceKind, classify_source, evaluate

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import TextIO

    from ..config import Config
    from ..core import LoginRequest
    from ..store import Store
    from .alerts import Alert
    from .events import EventRow
    from .facts import IpFacts
    from .rules import SourceClass, Verdict

# `serve` sets this to count each audit's source outcomes in its metrics (metrics.py);
# None on the per-login path
on_assessment = None


class Assessment(Value):
    """What the audit concluded about one login, before anything is written."""

    __slots__ = ("alert_deny", "alerts", "facts", "line", "source", "verdict")

    def __init__(self, source: SourceClass, facts: IpFacts | None, verdict: Verdict, line: str,
                 alerts: tuple[Alert, ...] = (), alert_deny: bool = False):
        self.source = source
        self.facts = facts
        self.verdict = verdict
        self.line = line
        self.alerts = alerts  # new-place alerts of this login (alerts.py), most severe first
        self.alert_deny = alert_deny  # [alerts] action = "deny" and an alert fired

    @property
    def deny(self) -> bool:
        return self.verdict.effective_deny or self.alert_deny

    @property
    def reason(self) -> str:
        if self.alert_deny and not self.verdict.effective_deny:
            return f"alert {_kinds(self.alerts)} ({'; '.join(a.detail for a in self.alerts)})"
        return self.verdict.reason

    def denial(self, user: str, ip: str | None) -> str:
        """The stderr line of a denied login (Dovecot's log)."""
        if self.alert_deny and not self.verdict.effective_deny:
            return f"user {user}: login from {ip} refused: {self.reason}"
        return f"user {user}: login from {ip} denied by audit: {self.reason}"

    def log_columns(self) -> dict[str, str]:
        """`src_rdns`, `src_loc`, `src_isp` of the plugin's `log` table."""
        facts = self.facts
        rdns = (facts.rdns if facts else None) or NO_PTR
        if self.source.kind is SourceKind.LOCAL:
            place = self.source.name or self.source.location or ""
        else:
            place = (facts.maxmind.place() if facts and facts.maxmind else None) or ""
        isp = ""
        if facts and facts.maxmind and facts.maxmind.as_org:
            isp = facts.maxmind.as_org
        elif facts and facts.as_desc:
            isp = facts.as_desc  # RDAP's, else the origin-AS service's
        return {"src_rdns": rdns, "src_loc": place, "src_isp": isp}


def assess(
    *, user: str, service: str, ip: str | None, config: Config, now: float,
    stderr: TextIO | None = None, use_cache: bool = True, with_line: bool = True,
) -> Assessment:
    """Enrich and judge without writing the audit line (`explain` stops here).
    `with_line=False`: the audit line is left empty (`serve`'s policy `allow`, which
    writes none, saves formatting it)."""
    from .lists import enforce_readable, load_lists

    audit = config.audit
    source = classify_source(ip, audit)
    # the lists first: a login refused for a list that cannot be read costs no lookups
    lists = load_lists(config)
    if source.kind is SourceKind.GLOBAL:  # only a global source is judged by the lists
        enforce_readable(lists.unreadable, audit.unreadable_list, stderr)
    facts = None
    # Local sources are exempt; their facts (rDNS, mostly) only matter for the log line.
    wanted = source.kind is SourceKind.GLOBAL or (source.kind is SourceKind.LOCAL and audit.log_local)
    if ip and wanted:
        from .enrich import enrich

        facts = enrich(ip, config, now=now, stderr=stderr, use_cache=use_cache,
                       local=source.kind is SourceKind.LOCAL)
    verdict = evaluate(user, service, ip or "", facts, lists, audit, source)
    line = ""
    if with_line:
        from .line import format_line

        line = format_line(user, service, ip or "", facts, verdict)
    result = Assessment(source=source, facts=facts, verdict=verdict, line=line)
    if on_assessment is not None:
        on_assessment(result)
    return result


def audit_login(
    request: LoginRequest, config: Config, *, user: str, now: float, pwid: int | None,
    stderr: TextIO | None = None, store: Store | None = None,
) -> Assessment:
    """Assess the login, check the alerts, write the audit line (syslog/journal, and
    `log_file`) and the `audit_events` row (with a store)."""
    result = assess(user=user, service=request.service, ip=request.remote_ip, config=config, now=now,
                    stderr=stderr)
    record = (store is not None and config.audit.record_events and result.source.kind is not SourceKind.IGNORED
              and store.upgrade_note is None)
    if record and config.alerts.enabled and not result.deny and result.facts is not None:
        result = _check_alerts(result, store, config, user=user, now=now, stderr=stderr)  # type: ignore[arg-type]
    if store is not None:
        try:  # serve's event loop: the write lock before the line, or WouldWait (store.py)
            store.claim_writes()
        except TempFail:
            pass  # said by the write that fails below
    if result.verdict.log:
        write_audit_line(result, user=user, service=request.service, ip=request.remote_ip or "",
                         config=config, stderr=stderr)
    if result.alerts and not result.alert_deny:
        _say(stderr, f"user {user}: login alert {_kinds(result.alerts)} from {request.remote_ip}: "
                     f"{'; '.join(a.detail for a in result.alerts)}")
    if record:
        row = _event(result, request, user=user, pwid=pwid, now=now)
        try:
            store.record_event(row)  # type: ignore[union-attr]
        except TempFail as e:
            _say(stderr, f"audit event of {user} not recorded: {e}")
        if result.alerts and config.alerts.notify_command:
            from .events import notify

            payload = row.to_json()
            payload["alerts"] = [a.to_json() for a in result.alerts]
            payload["action"] = config.alerts.action
            notify(config.alerts.notify_command, payload, stderr)
    return result


def _kinds(alerts: tuple[Alert, ...]) -> str:
    return ",".join(a.kind for a in alerts)


def _check_alerts(result: Assessment, store: Store, config: Config, *, user: str, now: float,
                  stderr: TextIO | None) -> Assessment:
    """Compare the login with the user's recent successful ones (one query); never raises."""
    from .alerts import detect
    from .events import sightings

    mm = result.facts.maxmind if result.facts else None
    if mm is None and not (result.facts and result.facts.asns):
        return result  # nothing to compare
    settings = config.alerts
    lookback = settings.lookback_days * 86400
    try:
        history = sightings(store.recent_events(user, now - lookback))
    except TempFail as e:
        _say(stderr, f"alerts for {user} not checked: {e}")
        return result
    from .alerts import Sighting

    # as events.event_row: the trusted sources' AS first, so that RDAP's (its network holder's
    # word) cannot pass for the user's usual AS and keep an alert quiet
    asns = (result.facts.trusted_asns or result.facts.asns) if result.facts else ()
    current = Sighting(now, mm.country.code if mm else None, asns[0] if asns else None,
                       mm.latitude if mm else None, mm.longitude if mm else None,
                       None if mm is None or mm.accuracy_radius_km is None else float(mm.accuracy_radius_km))
    alerts = tuple(detect(current, history, max_speed_kmh=settings.max_speed_kmh, lookback_seconds=lookback))
    if not alerts:
        return result
    deny = settings.action == "deny"
    line = result.line + f", alert={_kinds(alerts)}" + (", alert_action=deny" if deny else "")
    return Assessment(result.source, result.facts, result.verdict, line, alerts, deny)


def _event(result: Assessment, request: LoginRequest, *, user: str, pwid: int | None, now: float) -> EventRow:
    from ..store import utc_timestamp
    from .events import REFUSED, event_row

    verdict = result.verdict
    if result.alert_deny and not verdict.effective_deny:
        outcome, rule = REFUSED, "alert"
    else:
        outcome, rule = verdict.result, (verdict.matched.rule if verdict.matched else None)
    place = result.log_columns()["src_loc"] or None
    return event_row(
        timestamp=utc_timestamp(now), user=user, pwid=pwid, service=request.service, ip=request.remote_ip,
        facts=result.facts, place=place, result=outcome, rule=rule, reason=result.reason,
        authenticated=not result.deny, alert=_kinds(result.alerts) or None,
    )


def write_audit_line(result: Assessment, *, user: str, service: str, ip: str, config: Config,
                     stderr: TextIO | None) -> None:
    from .line import emit, journal_fields

    audit = config.audit

    def fields() -> dict[str, str]:  # only when journald takes the line
        values = journal_fields(user, service, ip, result.facts, result.verdict)
        if result.alerts:
            values["AUDIT_ALERT"] = _kinds(result.alerts)
            if result.alert_deny:
                values["AUDIT_ALERT_ACTION"] = "deny"
        return values

    emit(result.line, fields, audit, stderr)
    if audit.log_file:
        path = config.resolve(audit.log_file)
        try:
            fd = posix.open(path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT, 0o640)
            try:
                posix.write(fd, (result.line + "\n").encode("utf-8", "replace"))
            finally:
                posix.close(fd)
        except OSError as e:
            from .line import _warn

            _warn(stderr, f"log_file {path}: {e.strerror}; audit line not written there")
