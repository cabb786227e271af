"""Audit commands of the admin CLI: `explain IP`, `cache stats`, `cache purge`.

`explain` runs the same `pipeline.assess` as a login (same cache, sources, lists and
rules) and prints what it found and why, without logging in, writing the audit line
or touching the `log` table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from ..audit.facts import GeoName, IpFacts
from .base import service_user_option


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("explain", cmd_explain,
                "show the enrichment of an IP, every rule checked and the verdict (no login, no logging)",
                "dovecot-appauth explain 203.0.113.9 --user alice@example.com --service imap")
    p.add_argument("ip", help="client address (IPv4 or IPv6)")
    p.add_argument("--user", default="-", help="user name, for per-user allow lists (default: -)")
    p.add_argument("--service", default="imap", help="service, for disabled_services (default: imap)")
    p.add_argument("--no-cache", action="store_true", help="ask the sources even when the cache has an answer")
    p.add_argument("--json", action="store_true", help="print JSON")
    service_user_option(p)

    cache = sub.add_parser("cache", help="inspect or clear the enrichment cache",
                           description="inspect or clear the enrichment cache")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    cache_sub.required = True
    p = command("stats", cmd_cache_stats, "entries per source, negative and expired entries, size on disk",
                "dovecot-appauth cache stats --json", cache_sub)
    p.add_argument("--json", action="store_true", help="print JSON")
    service_user_option(p)
    p = command("purge", cmd_cache_purge,
                "remove cached answers: all of them, one IP's, or only expired ones",
                "dovecot-appauth cache purge --ip 203.0.113.9", cache_sub)
    p.add_argument("--ip", help="only this address")
    p.add_argument("--expired", action="store_true", help="only entries past their lifetime")
    service_user_option(p)


def _config(args: argparse.Namespace):
    """The config, with this process turned into the service user when run as root: these
    commands read and write the cache, which must stay usable for the logins."""
    from .base import act_as_service_user, load_config

    return act_as_service_user(args, load_config(args))


def _geo(g: GeoName) -> str:
    if g.geoname_id is None and g.name is None:
        return "-"
    code = f" ({g.code})" if g.code else ""
    return f"{g.name}{code} [{g.geoname_id}]"


def describe_facts(facts: IpFacts | None) -> list[str]:
    if facts is None:
        return ["  (not enriched: the source is local or ignored)"]
    lines = ["  sources:"]
    for name, report in facts.sources.items():
        detail = f" - {report.detail}" if report.detail else ""
        lines.append(f"    {name:9} {report.status.value:11} {report.elapsed_ms:7.1f} ms{detail}")
    lines.append(f"  reverse DNS: {facts.rdns if facts.rdns is not None else 'unknown'}")
    mm = facts.maxmind
    if mm is not None:
        subdivisions = ", ".join(_geo(s) for s in mm.subdivisions) or "-"
        lines += [
            f"  city: {_geo(mm.city)}; subdivisions: {subdivisions}",
            f"  country: {_geo(mm.country)}; continent: {_geo(mm.continent)}",
            f"  registered country: {_geo(mm.registered_country)}; represented: {_geo(mm.represented_country)}",
            f"  location: {mm.latitude}, {mm.longitude} (radius {mm.accuracy_radius_km} km), "
            f"postal code {mm.postal_code or '-'}",
            f"  AS (MaxMind): {('AS' + str(mm.asn)) if mm.asn else '-'} {mm.as_org or ''}".rstrip(),
        ]
    else:
        lines.append("  MaxMind: unknown")
    wh = facts.whois
    if wh is not None:
        lines += [
            f"  network (RDAP): {wh.net_name or '-'} ({wh.net_cc or '-'}); "
            f"AS{wh.asn if wh.asn else ' -'} {wh.as_desc or ''} ({wh.as_cc or '-'})",
            f"  entities: {', '.join(wh.entities) or '-'}",
        ]
    else:
        lines.append("  RDAP: unknown")
    origin = facts.origin
    if origin is not None:
        lines.append(f"  AS (origin, Team Cymru): {('AS' + str(origin.asn)) if origin.asn else '-'} "
                     f"{origin.as_name or ''} ({origin.cc or '-'}); prefix {origin.prefix or '-'}, "
                     f"registry {origin.registry or '-'}")
    elif "origin_as" in facts.sources:
        lines.append("  AS (origin, Team Cymru): unknown")
    return lines


def cmd_explain(args: argparse.Namespace) -> int:
    import ipaddress

    from ..audit.pipeline import assess
    from .base import CliError

    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise CliError(f"{args.ip!r} is not an IP address") from None
    config = _config(args)
    result = assess(user=args.user, service=args.service, ip=args.ip, config=config, now=time.time(),
                    stderr=sys.stderr, use_cache=not args.no_cache)
    verdict = result.verdict
    gate = None
    if args.user != "-":
        from ..account import gate_report

        gate = gate_report(args.user, config, use_cache=not args.no_cache)
    if args.json:
        json.dump({
            "ip": args.ip,
            "user": args.user,
            "service": args.service,
            "source": {"kind": result.source.kind.value, "name": result.source.name},
            "facts": result.facts.to_json() if result.facts else None,
            "checks": [
                {"list": c.list, "kind": c.kind, "result": c.result.value, "detail": c.detail}
                for c in verdict.checks
            ],
            "verdict": verdict.result,
            "reason": verdict.reason,
            "would_log": verdict.log,
            "audit_line": result.line,
            "account_gate": gate,
        }, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    out = [f"{args.ip}: source is {result.source.kind.value}"
           + (f" ({result.source.name})" if result.source.name else ""), "enrichment:"]
    out += describe_facts(result.facts)
    out.append("rules, in order:")
    for check in verdict.checks:
        detail = f"  {check.detail}" if check.detail else ""
        out.append(f"  {check.list:10} {check.kind:18} {check.result.value:11}{detail}")
    out.append(f"verdict: {verdict.result.upper()}: {verdict.reason}")
    out.append("audit line:" + ("" if verdict.log else " (not logged for this source)"))
    out.append(f"  {result.line}")
    if gate is not None:
        out.append(f"account gate ({args.user}): {gate['line']}")
    print("\n".join(out))
    return 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    from ..audit.enrich import open_cache

    stats = open_cache(_config(args)).stats(time.time())
    if args.json:
        json.dump(stats, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"cache: {stats.get('path')} ({stats.get('bytes', 0)} bytes)")
    for source, counts in sorted((stats.get("sources") or {}).items()):
        print(f"  {source:15} {counts.get('entries', 0):6} entries, {counts.get('negative', 0):5} negative")
    print(f"  expired: {stats.get('expired', 0)}")
    return 0


def cmd_cache_purge(args: argparse.Namespace) -> int:
    from ..audit.enrich import normalize_ip, open_cache

    cache = open_cache(_config(args))
    if args.expired:
        removed = cache.purge(expired_before=time.time())
        print(f"removed {removed} expired entries")
    elif args.ip:
        removed = cache.purge(ip=normalize_ip(args.ip))
        print(f"removed {removed} entries for {args.ip}")
    else:
        removed = cache.purge()
        print("removed the cache file" + (f" ({removed} entries)" if removed >= 0 else " (it was unreadable)"))
    return 0
