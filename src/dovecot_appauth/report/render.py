"""Report renderers: text, Markdown, JSON and HTML from the dict that data.collect() returns."""

from __future__ import annotations

import json
from typing import Any

from .svg import _esc, svg_bars, svg_columns


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
