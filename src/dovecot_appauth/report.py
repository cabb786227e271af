"""`dovecot-appauth report`: what happened in the audit, for the admin to read (admin only).

The successor of upstream's audit_mail.py (which read journald on one host). This one
reads the `audit_events` table, so it covers every host that shares the database and
needs no journald: users blocked and why, logins per user with the places that are new
for them, unique source IPs and ASNs, the ASNs and reverse-DNS names that are not in the
admin's known-good file, and app passwords nobody used for N days.

Layers: `collect()` turns the rows into one JSON-ready dict (every number the formats
show is computed there, once); `render_*()` turn that dict into text, Markdown, HTML (with
inline SVG charts drawn here: no JavaScript, nothing fetched) or JSON; `send_mail()`
hands a rendered report to the local `sendmail -t`. `run()` is what the CLI calls.

The known-good file is upstream's YAML: `KNOWN_GOOD_ASNS` (a list of "AS680" or 680),
`KNOWN_DNS_SUFF` (a list of DNS suffixes) and `AS_COMMENTS` (a list of one-entry
mappings `- AS136787: Commercial VPN`, or one mapping). Lower-case keys are accepted too.
An IP counts as known when its AS is known-good or its reverse name ends in a known suffix.
"""

from __future__ import annotations

import calendar
import datetime
import html
import json
import os
import sys
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from sqlalchemy.engine import Engine

BLOCKED_RESULTS = ("deny", "deny-audit-only", "refused")
TOP = 15  # rows per chart and per "top" table
# (name, seconds, label): the finest that gives at most 168 columns (a week of hours)
TIME_BUCKETS = (("hour", 3600, "%Y-%m-%d %H:00"), ("day", 86400, "%Y-%m-%d"), ("week", 7 * 86400, "%Y-%m-%d"),
                ("30 days", 30 * 86400, "%Y-%m-%d"))
PALETTE = ("#2f6db5", "#e07b39", "#3a9a5b", "#c0392b", "#8e5bb5", "#7f8c8d", "#d4a017", "#16a0a0")


class ReportError(Exception):
    """A problem to report as one line (bad --since, unreadable known-good file, sendmail failed)."""


# --- input ---------------------------------------------------------------------------------


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
    from .policy import PolicyError, parse_duration, parse_utc

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
    from .policy import parse_utc

    return parse_utc(str(value))


def _utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _db_time(epoch: float) -> str:
    """A bound time as the stored text (`YYYY-MM-DD HH:MM:SS.fff`): SQLite compares text, and
    a datetime would bind with six decimals, which sorts after the same instant with three."""
    from .store import utc_timestamp

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


# --- progress ------------------------------------------------------------------------------


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


# --- collecting ----------------------------------------------------------------------------

_EVENT_COLUMNS = ("timestamp", "uid", "pwid", "service", "src_ip", "src_rdns", "country", "asn", "as_org",
                  "place", "result", "rule", "reason", "authenticated", "alert")


def collect(engine: Engine, *, since: float, until: float, known: KnownGood | None = None, unused_days: int = 90,
            progress_stream: Any = None) -> dict[str, Any]:
    """Every number of the report, from `audit_events` (and `app_passwords`/`log` for unused ones)."""
    from sqlalchemy import func, select

    from .schema import _dialect_name, build_metadata

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

    from .policy import from_row, is_expired

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
    from .events import LEAKED_ALERT

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


# --- rendering: text and Markdown ------------------------------------------------------------


def _asn_label(a: dict[str, Any]) -> str:
    text = f"AS{a['asn']} {a['as_org'] or ''}".rstrip()
    return text + (f" ({a['comment']})" if a.get("comment") else "")


def _host_label(i: dict[str, Any]) -> str:
    if i["rdns"] and i["rdns"] != "<>":
        return i["rdns"]
    org = i["as_org"] or (f"AS{i['asn']}" if i["asn"] is not None else "?")
    return f"<{org[:30]}{'..' if len(org) > 30 else ''}>"


def _place(c: str | None, p: str | None) -> str:
    if p and c:
        return f"{p} ({c})"
    return p or c or "?"


def _sections(data: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, headers, rows) tables: shared by text and Markdown."""
    t = data["totals"]
    sections: list[tuple[str, list[str], list[list[str]]]] = []
    sections.append(("Summary", ["", ""], [
        ["events", str(t["events"])], ["successful logins", str(t["logins"])], ["blocked", str(t["blocked"])],
        ["users", str(t["users"])],
        ["unique ASNs", f"{t['unique_asns']} ({t['unique_asns_unknown']} unknown)"],
        ["unique IPs", f"{t['unique_ips']} ({t['unique_ips_unknown']} unknown)"],
        ["alerts", str(t["alerts"]) + (" (" + ", ".join(f"{k} {v}" for k, v in data["alerts_by_kind"].items())
                                       + ")" if data["alerts_by_kind"] else "")],
    ]))
    sections.append(("Leaked app passwords (right password of a revoked or expired one)",
                     ["TIME (UTC)", "USER", "ID", "IP", "PLACE", "DETAIL"], [
        [(x["time"] or "")[:16], x["user"], str(x["pwid"] if x["pwid"] is not None else "-"), x["ip"] or "-",
         _place(x["country"], x["place"]), x["detail"] or ""]
        for x in data.get("leaked_passwords", [])
    ]))
    sections.append(("Blocked users", ["USER", "COUNT", "RESULT", "RULE", "REASON"], [
        [b["user"] if i == 0 else "", str(r["count"]), r["result"], r["rule"], r["reason"]]
        for b in data["blocked_users"] for i, r in enumerate(b["reasons"])
    ]))
    sections.append(("Logins per user", ["USER", "LOGINS", "IPS", "NEW PLACES", "ALERTS"], [
        [u["user"], str(u["logins"]), str(u["unique_ips"]),
         ", ".join(f"{_place(p['country'], p['place'])} x{p['logins']}" for p in u["new_places"]) or "-",
         ", ".join(f"{'+'.join(a['kinds'])} {a['time'][:16]} {a['ip']}" for a in u["alerts"]) or "-"]
        for u in data["users"]
    ]))
    for title, want in (("Unknown ASNs", False), ("Known ASNs", True)):
        sections.append((title, ["EVENTS", "ASN", "IPS", "BLOCKED"], [
            [str(a["events"]), _asn_label(a), str(a["unique_ips"]), str(a["blocked"] or "")]
            for a in data["asns"] if a["known"] is want
        ]))
    for title, want in (("Unknown IPs and hosts", False), ("Known IPs and hosts", True)):
        sections.append((title, ["EVENTS", "IP", "HOST", "BLOCKED"], [
            [str(i["events"]), i["ip"], _host_label(i), str(i["blocked"] or "")]
            for i in data["ips"] if i["known"] is want
        ]))
    sections.append(("Reverse-DNS domains not known", ["EVENTS", "DOMAIN"], [
        [str(d["events"]), d["domain"]] for d in data["unknown_rdns_domains"]
    ]))
    if data["unused_days"]:
        sections.append((f"App passwords unused for {data['unused_days']} days",
                         ["ID", "USER", "COMMENT", "CREATED", "LAST USED", "IDLE DAYS"], [
            [str(p["id"]), p["user"], p["comment"] or "", (p["created"] or "")[:10], (p["last_used"] or "never")[:10],
             str(p["idle_days"])] for p in data["unused_passwords"]
        ]))
    return sections


def _title(data: dict[str, Any]) -> str:
    return f"dovecot-appauth audit report {data['since'][:16]} - {data['until'][:16]} UTC"


def render_text(data: dict[str, Any]) -> str:
    out = [_title(data), ""]
    for title, headers, rows in _sections(data):
        out.append(title)
        if not rows:
            out += ["  (none)", ""]
            continue
        if title == "Summary":
            width = max(len(r[0]) for r in rows)
            out += [f"  {r[0].ljust(width)}  {r[1]}" for r in rows] + [""]
            continue
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        out.append("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        out.append("")
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def render_markdown(data: dict[str, Any]) -> str:
    out = [f"# {_title(data)}", ""]
    for title, headers, rows in _sections(data):
        out += [f"## {title}", ""]
        if not rows:
            out += ["(none)", ""]
            continue
        if title == "Summary":
            out += [f"- **{r[0]}**: {_md_cell(r[1])}" for r in rows] + [""]
            continue
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---:" if h in ("EVENTS", "COUNT", "LOGINS", "IPS", "BLOCKED", "ID",
                                                   "IDLE DAYS") else "---" for h in headers) + "|")
        out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def render_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


# --- rendering: HTML with SVG charts -------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def svg_columns(title: str, points: list[list[Any]], width: int = 1000, height: int = 240) -> str:
    """A column chart (one column per point, e.g. per hour) as an inline SVG."""
    left, right, top, bottom = 44, 10, 28, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((p[1] for p in points), default=0) or 1
    n = max(len(points), 1)
    step = plot_w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" font-family="sans-serif">',
             f"<title>{_esc(title)}</title>",
             f'<text x="{left}" y="18" font-size="14" font-weight="bold" fill="#222">{_esc(title)}</text>']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#555">'
                     f"{_fmt_num(peak * frac)}</text>")
    label_every = max(1, round(n / 12))
    for i, (label, value) in enumerate(points):
        h = plot_h * value / peak
        x = left + i * step
        parts.append(f'<rect x="{x + step * 0.1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step * 0.8, 1):.1f}" '
                     f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{_esc(label)}: {value}</title></rect>')
        if i % label_every == 0:
            short = str(label)[-5:] if len(str(label)) > 5 else str(label)
            parts.append(f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 16}" font-size="10" '
                         f'text-anchor="middle" fill="#555">{_esc(short)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#888"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(title: str, points: list[list[Any]], width: int = 1000, bar: int = 22) -> str:
    """Horizontal bars, largest first (at most TOP; the rest summed as "other")."""
    shown = [list(p) for p in points[:TOP]]
    rest = sum(p[1] for p in points[TOP:])
    if rest:
        shown.append([f"other ({len(points) - TOP})", rest])
    left, top = 260, 30
    height = top + max(len(shown), 1) * (bar + 6) + 10
    peak = max((p[1] for p in shown), default=0) or 1
    plot_w = width - left - 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" font-family="sans-serif">',
             f"<title>{_esc(title)}</title>",
             f'<text x="10" y="18" font-size="14" font-weight="bold" fill="#222">{_esc(title)}</text>']
    if not shown:
        parts.append(f'<text x="10" y="{top + 16}" font-size="12" fill="#555">no logins</text>')
    for i, (label, value) in enumerate(shown):
        y = top + i * (bar + 6)
        w = max(plot_w * value / peak, 1)
        text = str(label) if len(str(label)) <= 38 else str(label)[:36] + ".."
        parts.append(f'<text x="{left - 8}" y="{y + bar * 0.7:.1f}" font-size="12" text-anchor="end" '
                     f'fill="#222">{_esc(text)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" '
                     f'fill="{PALETTE[(i + 1) % len(PALETTE)]}"><title>{_esc(label)}: {value}</title></rect>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + bar * 0.7:.1f}" font-size="12" fill="#222">'
                     f"{value}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _fmt_num(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


_CSS = """
body { font-family: sans-serif; color: #222; margin: 24px; max-width: 1040px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f7; } td.n { text-align: right; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px 14px; background: #f7f9fc; min-width: 110px; }
.card b { display: block; font-size: 22px; } .card.bad b { color: #c0392b; }
.none { color: #777; } .chart { margin: 8px 0 18px; }
"""


def render_html(data: dict[str, Any]) -> str:
    t = data["totals"]
    cards = [("events", t["events"], False), ("successful logins", t["logins"], False),
             ("blocked", t["blocked"], t["blocked"] > 0), ("users", t["users"], False),
             ("unique IPs", t["unique_ips"], False), ("unknown IPs", t["unique_ips_unknown"], False),
             ("unique ASNs", t["unique_asns"], False), ("unknown ASNs", t["unique_asns_unknown"], False),
             ("alerts", t["alerts"], t["alerts"] > 0), ("unused passwords", t["unused_passwords"], False),
             ("leaked passwords", t.get("leaked_passwords", 0), t.get("leaked_passwords", 0) > 0)]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_esc(_title(data))}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_esc(_title(data))}</h1>",
           f'<p class="none">generated {_esc(data["generated"])} UTC</p>', '<div class="cards">']
    out += [f'<div class="card{" bad" if bad else ""}"><b>{value}</b>{_esc(label)}</div>'
            for label, value, bad in cards]
    out.append("</div>")
    charts = data["charts"]
    out.append("<h2>Charts</h2>")
    title = f"Successful logins per {charts['bucket']} (UTC)"
    out.append(f'<div class="chart">{svg_columns(title, charts["logins_over_time"])}</div>')
    out.append(f'<div class="chart">{svg_bars("Successful logins per country", charts["logins_per_country"])}</div>')
    out.append(f'<div class="chart">{svg_bars("Successful logins per AS", charts["logins_per_asn"])}</div>')
    numeric = {"EVENTS", "COUNT", "LOGINS", "IPS", "BLOCKED", "ID", "IDLE DAYS"}
    for title, headers, rows in _sections(data)[1:]:
        out.append(f"<h2>{_esc(title)}</h2>")
        if not rows:
            out.append('<p class="none">(none)</p>')
            continue
        out.append("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr>")
        for r in rows:
            out.append("<tr>" + "".join(
                f'<td class="n">{_esc(c)}</td>' if h in numeric else f"<td>{_esc(c)}</td>"
                for h, c in zip(headers, r, strict=True)) + "</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


RENDERERS = {"text": render_text, "markdown": render_markdown, "html": render_html, "json": render_json}


# --- mail ---------------------------------------------------------------------------------------


def find_sendmail() -> str:
    import shutil

    found = shutil.which("sendmail")
    if found:
        return found
    for path in ("/usr/sbin/sendmail", "/usr/lib/sendmail"):
        if os.access(path, os.X_OK):
            return path
    raise ReportError("--mail-to: no sendmail found (install an MTA such as postfix, or use --output)")


def build_mail(data: dict[str, Any], body: str, fmt: str, to: list[str], sender: str | None) -> bytes:
    from email.message import EmailMessage
    from email.policy import SMTP

    msg = EmailMessage()
    t = data["totals"]
    msg["Subject"] = (f"dovecot-appauth report: {t['logins']} logins, {t['blocked']} blocked, "
                      f"{t['alerts']} alerts since {data['since'][:16]} UTC")
    msg["To"] = ", ".join(to)
    if sender:
        msg["From"] = sender
    if fmt == "html":
        msg.set_content(render_text(data))
        msg.add_alternative(body, subtype="html")
    elif fmt == "json":
        msg.set_content(body, subtype="plain")
        msg.add_attachment(body.encode("utf-8"), maintype="application", subtype="json", filename="report.json")
    else:
        msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


def send_mail(message: bytes, timeout: float = 60) -> None:
    import subprocess

    sendmail = find_sendmail()
    try:
        proc = subprocess.run([sendmail, "-t", "-oi"], input=message, capture_output=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ReportError(f"--mail-to: {sendmail}: {e}") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ReportError(f"--mail-to: {sendmail} exited {proc.returncode}"
                          + (f": {detail[-1][:200]}" if detail else ""))


# --- entry ---------------------------------------------------------------------------------------


def run(engine: Engine, args: argparse.Namespace, *, database: str = "", now: float | None = None) -> str:
    """The CLI's `report`: collect, render in `args.format`, mail when asked; returns the rendering."""
    now = time.time() if now is None else now
    since = parse_since(args.since, now)
    if since >= now:
        raise ReportError("--since lies in the future")
    if args.unused_days < 0:
        raise ReportError("--unused-days must be 0 or more")
    known = load_known_good(args.known_good) if args.known_good else None
    from sqlalchemy import inspect

    if "audit_events" not in inspect(engine).get_table_names():
        raise ReportError("the database has no audit_events table: run 'dovecot-appauth upgrade-db'")
    data = collect(engine, since=since, until=now, known=known, unused_days=args.unused_days)
    body = RENDERERS[args.format](data)
    if args.mail_to:
        send_mail(build_mail(data, body, args.format, args.mail_to, args.mail_from))
        print(f"report mailed to {', '.join(args.mail_to)}", file=sys.stderr)
    return body
