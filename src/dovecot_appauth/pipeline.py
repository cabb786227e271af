"""The audit of one login: classify the source, enrich it, judge it, log it.

Wires the pure parts (rules, audit.format_line) to the ones with I/O (enrich with its
cache and sources, list files, the syslog/journal/file emitters). `login.py` calls
`audit_login` after a correct app password (or, with --audit-chain, after another
passdb); `explain` calls `assess` for the same result without logging anything.
"""

from __future__ import annotations

import os

from .facts import NO_PTR
from .rules import SourceKind, classify_source, evaluate
from .values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import TextIO

    from .config import Config
    from .core import LoginRequest
    from .facts import IpFacts
    from .rules import SourceClass, Verdict


class Assessment(Value):
    """What the audit concluded about one login, before anything is written."""

    __slots__ = ("facts", "line", "source", "verdict")

    def __init__(self, source: SourceClass, facts: IpFacts | None, verdict: Verdict, line: str):
        self.source = source
        self.facts = facts
        self.verdict = verdict
        self.line = line

    @property
    def deny(self) -> bool:
        return self.verdict.effective_deny

    @property
    def reason(self) -> str:
        return self.verdict.reason

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
        elif facts and facts.whois and facts.whois.as_desc:
            isp = facts.whois.as_desc
        return {"src_rdns": rdns, "src_loc": place, "src_isp": isp}


def assess(
    *, user: str, service: str, ip: str | None, config: Config, now: float,
    stderr: TextIO | None = None, use_cache: bool = True,
) -> Assessment:
    """Enrich and judge without writing the audit line (`explain` stops here)."""
    from .audit import format_line
    from .lists import load_lists

    audit = config.audit
    source = classify_source(ip, audit)
    facts = None
    # Local sources are exempt; their facts (rDNS, mostly) only matter for the log line.
    wanted = source.kind is SourceKind.GLOBAL or (source.kind is SourceKind.LOCAL and audit.log_local)
    if ip and wanted:
        from .enrich import enrich

        facts = enrich(ip, config, now=now, stderr=stderr, use_cache=use_cache)
    lists = load_lists(config)
    verdict = evaluate(user, service, ip or "", facts, lists, audit, source)
    line = format_line(user, service, ip or "", facts, verdict)
    return Assessment(source=source, facts=facts, verdict=verdict, line=line)


def audit_login(
    request: LoginRequest, config: Config, *, user: str, now: float, pwid: int | None,
    stderr: TextIO | None = None,
) -> Assessment:
    """Assess the login and write the audit line (syslog/journal, and `log_file`)."""
    result = assess(user=user, service=request.service, ip=request.remote_ip, config=config, now=now,
                    stderr=stderr)
    if result.verdict.log:
        write_audit_line(result, user=user, service=request.service, ip=request.remote_ip or "",
                         config=config, stderr=stderr)
    return result


def write_audit_line(result: Assessment, *, user: str, service: str, ip: str, config: Config,
                     stderr: TextIO | None) -> None:
    from .audit import emit, journal_fields

    audit = config.audit
    emit(result.line, journal_fields(user, service, ip, result.facts, result.verdict), audit, stderr)
    if audit.log_file:
        path = config.resolve(audit.log_file)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, (result.line + "\n").encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except OSError as e:
            from .audit import _warn

            _warn(stderr, f"log_file {path}: {e.strerror}; audit line not written there")
