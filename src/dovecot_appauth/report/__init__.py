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

import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from sqlalchemy.engine import Engine

from .data import (
    BLOCKED_RESULTS,
    TIME_BUCKETS,
    TOP,
    KnownGood,
    Progress,
    ReportError,
    collect,
    domain_of,
    load_known_good,
    load_known_good_text,
    parse_since,
)
from .mail import build_mail, find_sendmail, send_mail
from .render import RENDERERS, render_html, render_json, render_markdown, render_text
from .svg import PALETTE, svg_bars, svg_columns

__all__ = [
    "BLOCKED_RESULTS", "PALETTE", "RENDERERS", "TIME_BUCKETS", "TOP", "KnownGood", "Progress", "ReportError",
    "build_mail", "collect", "domain_of", "find_sendmail", "load_known_good", "load_known_good_text", "parse_since",
    "render_html", "render_json", "render_markdown", "render_text", "run", "send_mail", "svg_bars", "svg_columns",
]


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
