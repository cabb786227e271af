"""Report data: the queries over the events table and the one JSON-ready dict every format draws from."""

from __future__ import annotations

import calendar
import datetime
import sys
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine



BLOCKED_RESULTS = ("deny", "deny-audit-only", "refused")


TOP = 15  # rows per chart and per "top" table


# (name, seconds, label): the finest that gives at most 168 columns (a week of hours)
TIME_BUCKETS = (("hour", 3600, "%Y-%m-%d %H:00"), ("day", 86400, "%Y-%m-%d"), ("week", 7 * 86400, "%Y-%m-%d"),
                ("30 days", 30 * 86400, "%Y-%m-%d"))


class ReportError(Exception):
    """A problem to report as one line (bad --since, unreadable known-good file, sendmail failed)."""


class KnownGood:
    __slots__ = ("asns", "comments", "suffixes")

    def __init__(self, asns: set[int] | None = None, suffixes: tuple[str, ...] = (),
                 comments: dict[int, str] | None = None):
        self.asns = asns or set()
        self.suffixes = suffixes  # lower case, no leading/trailing dot
        self.comments = comments or {}

    def host_known(self, rdns: str | None) -> bool:
        if not rdns or rdns == "<>":
            return False
        name = rdns.lower().rstrip(".")
        return any(name == s or name.endswith("." + s) for s in self.suffixes)


def _asn(value: Any) -> int:
    text = str(value).strip().upper()
    if text.startswith("AS"):
        text = text[2:]
    try:
        return int(text)
    except ValueError:
        raise ReportError(f"not an AS number: {value!r}") from None


def load_known_good(path: str) -> KnownGood:
    try:
        with open(path, encoding="utf-8") as f:
            return load_known_good_text(f.read(), path)
    except OSError as e:
        raise ReportError(f"known-good file {path}: {e.strerror}") from None


def load_known_good_text(text: str, path: str = "<text>") -> KnownGood:
    try:
        import yaml
    except ImportError:
        raise ReportError("--known-good needs PyYAML: pip install 'dovecot-appauth[report]'") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ReportError(f"known-good file {path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ReportError(f"known-good file {path}: expected a mapping with KNOWN_GOOD_ASNS, KNOWN_DNS_SUFF, "
                          "AS_COMMENTS")
    keys = {str(k).upper(): v for k, v in data.items()}
    try:
        asns = {_asn(a) for a in keys.get("KNOWN_GOOD_ASNS") or ()}
        suffixes = tuple(str(s).strip().strip(".").lower() for s in keys.get("KNOWN_DNS_SUFF") or () if s)
        raw = keys.get("AS_COMMENTS") or {}
        comments: dict[int, str] = {}
        for item in raw if isinstance(raw, list) else [raw]:
            if not isinstance(item, dict):
                raise ReportError(f"known-good file {path}: AS_COMMENTS entries are `- AS64500: comment`")
            for asn, comment in item.items():
                comments[_asn(asn)] = str(comment)
    except ReportError as e:
        raise ReportError(f"known-good file {path}: {e}" if path not in str(e) else str(e)) from None
    return KnownGood(asns, suffixes, comments)


def parse_since(text: str, now: float) -> float:
    """`24h`, `7d` (back from now) or a UTC date/time."""
    from ..policy import PolicyError, parse_duration, parse_utc

    try:
        if text[:1].isdigit() and len(text) >= 10 and text[4:5] == "-":
            return parse_utc(text)
        return now - parse_duration(text)
    except PolicyError as e:
        raise ReportError(f"--since: {e}") from None


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return calendar.timegm(value.utctimetuple()) + value.microsecond / 1e6
    from ..policy import parse_utc

    return parse_utc(str(value))


def _utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _db_time(epoch: float) -> str:
    """A bound time as the stored text (`YYYY-MM-DD HH:MM:SS.fff`): SQLite compares text, and
    a datetime would bind with six decimals, which sorts after the same instant with three."""
    from ..store import utc_timestamp

    return utc_timestamp(epoch)


def domain_of(rdns: str) -> str:
    """A reverse name's domain, to group hosts: `a.b.example.net` -> `example.net`,
    `x.cable.example.co.uk` -> `example.co.uk` (a short second label under a country TLD)."""
    labels = rdns.lower().rstrip(".").split(".")
    if len(labels) <= 2:
        return ".".join(labels)
    if len(labels[-1]) == 2 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


class Progress:
    """A bar on a terminal (stderr), drawn only once the run has taken `after` seconds."""

    def __init__(self, label: str, total: int, stream: Any = None, after: float = 0.5, width: int = 30):
        self.label = label
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.after = after
        self.width = width
        self.start = time.monotonic()
        self.shown = False
        self.last = 0.0
        try:
            self.enabled = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.enabled = False

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.after or (self.shown and now - self.last < 0.1 and done < self.total):
            return
        self.shown = True
        self.last = now
        fraction = min(1.0, done / self.total)
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:3.0f}% {done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * (len(self.label) + self.width + 30) + "\r")
            self.stream.flush()


_EVENT_COLUMNS = ("timestamp", "uid", "pwid", "service", "src_ip", "src_rdns", "country", "asn", "as_org",
                  "place", "result", "rule", "reason", "authenticated", "alert")


def collect(engine: Engine, *, since: float, until: float, known: KnownGood | None = None, unused_days: int = 90,
            progress_stream: Any = None) -> dict[str, Any]:
    """Every number of the report, from `audit_events` (and `app_passwords`/`log` for unused ones)."""
    from sqlalchemy import func, select

    from ..cli.schema import _dialect_name, build_metadata

    known = known or KnownGood()
    md = build_metadata(_dialect_name(engine.dialect.name))
    events = md.tables["audit_events"]
    window = (events.c.timestamp >= _db_time(since)) & (events.c.timestamp < _db_time(until))
    cols = [events.c[name] for name in _EVENT_COLUMNS]
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(events).where(window)).scalar_one())
        progress = Progress("reading audit events", total, progress_stream)
        rows = []
        for i, row in enumerate(conn.execute(select(*cols).where(window).order_by(events.c.timestamp, events.c.id))):
            rows.append(dict(zip(_EVENT_COLUMNS, row, strict=True)))
            if i % 500 == 0:
                progress.update(i)
        progress.update(total)
        progress.close()
        users = sorted({r["uid"] for r in rows}, key=str.lower)
        earlier: dict[str, set[tuple[str | None, str | None]]] = defaultdict(set)
        if users:
            # the places each user logged in from before the window (as far as events are kept)
            query = (select(events.c.uid, events.c.country, events.c.place).distinct()
                     .where(events.c.timestamp < _db_time(since), events.c.authenticated.is_(True)))
            for uid, country, place in conn.execute(query):
                earlier[uid.lower()].add((country, place))
        unused = _unused_passwords(conn, md, until, unused_days) if unused_days > 0 else []
    return _summarise(rows, earlier, known, since=since, until=until, unused=unused, unused_days=unused_days)


def _unused_passwords(conn: Any, md: Any, now: float, days: int) -> list[dict[str, Any]]:
    from sqlalchemy import func, select

    from ..policy import from_row, is_expired

    passwords, log, policy = md.tables["app_passwords"], md.tables["log"], md.tables["app_password_policy"]
    last = select(log.c.pwid, func.max(log.c.timestamp).label("last")).group_by(log.c.pwid).subquery()
    query = (
        select(passwords.c.id, passwords.c.uid, passwords.c.created, passwords.c.comment, last.c.last,
               policy.c.services, policy.c.expires, policy.c.networks)
        .select_from(passwords.outerjoin(last, last.c.pwid == passwords.c.id)
                     .outerjoin(policy, policy.c.pwid == passwords.c.id))
        .where(passwords.c.deleted.is_(None))
        .order_by(passwords.c.uid, passwords.c.id)
    )
    cutoff = now - days * 86400
    found = []
    for pid, uid, created, comment, last_used, services, expires, networks in conn.execute(query):
        if is_expired(from_row(services, None if expires is None else _utc(_epoch(expires)), networks), now):
            continue  # refused anyway: not worth a reminder
        last_epoch = _epoch(last_used)
        reference = last_epoch if last_epoch is not None else _epoch(created)
        if reference is not None and reference < cutoff:
            found.append({
                "id": int(pid), "user": uid, "comment": comment, "created": _utc(_epoch(created)),
                "last_used": _utc(last_epoch), "idle_days": int((now - reference) // 86400),
            })
    return found


def _summarise(rows: list[dict[str, Any]], earlier: dict[str, set[tuple[str | None, str | None]]],
               known: KnownGood, *, since: float, until: float, unused: list[dict[str, Any]],
               unused_days: int) -> dict[str, Any]:
    logins = [r for r in rows if r["authenticated"]]
    blocked = [r for r in rows if r["result"] in BLOCKED_RESULTS]

    # users blocked and why
    # user names match case-insensitively (as at login); shown as first seen
    names: dict[str, str] = {}
    for r in rows:
        names.setdefault(r["uid"].lower(), r["uid"])
    by_user_block: dict[str, Counter] = defaultdict(Counter)
    for r in blocked:
        by_user_block[r["uid"].lower()][(r["result"], r["rule"] or "-", r["reason"] or "")] += 1
    blocked_users = [
        {"user": names[u], "count": sum(c.values()),
         "reasons": [{"result": res, "rule": rule, "reason": reason, "count": n}
                     for (res, rule, reason), n in sorted(c.items(), key=lambda x: (-x[1], x[0]))]}
        for u, c in sorted(by_user_block.items(), key=lambda x: (-sum(x[1].values()), x[0]))
    ]

    # logins per user, with new places and alerts
    per_user: dict[str, dict[str, Any]] = {}
    for r in logins:
        key = r["uid"].lower()
        u = per_user.setdefault(key, {"user": names[key], "logins": 0, "ips": set(), "places": Counter(),
                                      "first_seen": {}, "alerts": []})
        u["logins"] += 1
        u["ips"].add(r["src_ip"])
        key = (r["country"], r["place"])
        u["places"][key] += 1
        u["first_seen"].setdefault(key, r["timestamp"])
        if r["alert"]:
            u["alerts"].append({"time": _utc(_epoch(r["timestamp"])), "kinds": r["alert"].split(","),
                                "ip": r["src_ip"], "country": r["country"], "place": r["place"]})
    users = []
    for key, u in sorted(per_user.items(), key=lambda x: (-x[1]["logins"], x[0])):
        before = earlier.get(key, set())
        new_places = [
            {"country": c, "place": p, "logins": n, "first": _utc(_epoch(u["first_seen"][(c, p)]))}
            for (c, p), n in sorted(u["places"].items(), key=lambda x: (-x[1], str(x[0])))
            if (c, p) not in before and (c or p)
        ]
        users.append({
            "user": u["user"], "logins": u["logins"], "unique_ips": len(u["ips"]),
            "places": [{"country": c, "place": p, "logins": n}
                       for (c, p), n in sorted(u["places"].items(), key=lambda x: (-x[1], str(x[0])))],
            "new_places": new_places, "alerts": u["alerts"],
        })

    # unique IPs and ASNs over every event (successful or not), known or not
    ip_info: dict[str, dict[str, Any]] = {}
    asn_info: dict[int, dict[str, Any]] = {}
    for r in rows:
        ip = r["src_ip"] or "-"
        info = ip_info.setdefault(ip, {"ip": ip, "rdns": r["src_rdns"], "asn": r["asn"], "as_org": r["as_org"],
                                       "events": 0, "blocked": 0})
        info["events"] += 1
        info["blocked"] += r["result"] in BLOCKED_RESULTS
        if r["asn"] is not None:
            a = asn_info.setdefault(int(r["asn"]), {"asn": int(r["asn"]), "as_org": r["as_org"], "events": 0,
                                                     "blocked": 0, "ips": set()})
            a["events"] += 1
            a["blocked"] += r["result"] in BLOCKED_RESULTS
            a["ips"].add(ip)
            a["as_org"] = a["as_org"] or r["as_org"]
    for info in ip_info.values():
        info["known"] = (info["asn"] is not None and int(info["asn"]) in known.asns) or known.host_known(info["rdns"])
    asns = []
    for a in sorted(asn_info.values(), key=lambda a: (-a["events"], a["asn"])):
        asns.append({"asn": a["asn"], "as_org": a["as_org"], "events": a["events"], "blocked": a["blocked"],
                     "unique_ips": len(a["ips"]), "known": a["asn"] in known.asns,
                     "comment": known.comments.get(a["asn"])})
    ips = sorted(ip_info.values(), key=lambda i: (-i["events"], i["ip"]))
    suffixes: Counter = Counter()
    for info in ips:
        rdns = info["rdns"]
        if rdns and rdns != "<>" and not known.host_known(rdns):
            suffixes[domain_of(rdns)] += info["events"]

    # charts: successful logins over time (UTC; per hour up to a week, then coarser), per country, per AS
    bucket, size, label = next(((b, n, f) for b, n, f in TIME_BUCKETS if (until - since) / n <= 168),
                               TIME_BUCKETS[-1])
    first, last = int(since // size), int((until - 1e-6) // size)
    counts = Counter(int(_epoch(r["timestamp"]) // size) for r in logins)  # type: ignore[operator]
    over_time = [[time.strftime(label, time.gmtime(b * size)), counts.get(b, 0)] for b in range(first, last + 1)]
    per_country = Counter(r["country"] or "??" for r in logins)
    per_asn = Counter((f"AS{r['asn']} {r['as_org'] or ''}".strip() if r["asn"] is not None else "unknown AS")
                      for r in logins)

    alerts = Counter(kind for r in rows if r["alert"] for kind in r["alert"].split(","))
    # the right password of a revoked or expired app password (login.py): it has leaked
    from ..audit.events import LEAKED_ALERT

    leaked = [{"time": _utc(_epoch(r["timestamp"])), "user": r["uid"], "pwid": r["pwid"], "ip": r["src_ip"],
               "country": r["country"], "place": r["place"], "detail": r["reason"]}
              for r in rows if r["alert"] and LEAKED_ALERT in r["alert"].split(",")]
    return {
        "generated": _utc(time.time()),
        "since": _utc(since),
        "until": _utc(until),
        "totals": {
            "events": len(rows),
            "logins": len(logins),
            "blocked": len(blocked),
            "users": len({r["uid"].lower() for r in rows}),
            "unique_ips": len(ip_info),
            "unique_ips_unknown": sum(1 for i in ips if not i["known"]),
            "unique_asns": len(asns),
            "unique_asns_unknown": sum(1 for a in asns if not a["known"]),
            "alerts": sum(alerts.values()),
            "unused_passwords": len(unused),
            "leaked_passwords": len(leaked),
        },
        "leaked_passwords": leaked,
        "alerts_by_kind": dict(sorted(alerts.items())),
        "blocked_users": blocked_users,
        "users": users,
        "asns": asns,
        "ips": ips,
        "unknown_rdns_domains": [{"domain": d, "events": n}
                                 for d, n in sorted(suffixes.items(), key=lambda x: (-x[1], x[0]))],
        "unused_days": unused_days,
        "unused_passwords": unused,
        "charts": {
            "bucket": bucket,
            "logins_over_time": over_time,
            "logins_per_country": [[k, v] for k, v in sorted(per_country.items(), key=lambda x: (-x[1], x[0]))],
            "logins_per_asn": [[k, v] for k, v in sorted(per_asn.items(), key=lambda x: (-x[1], x[0]))],
        },
    }
