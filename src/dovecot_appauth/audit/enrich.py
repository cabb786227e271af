"""Enrich one source IP: the cache first, then the missing sources concurrently, one deadline.

What belongs here: deciding which sources to ask, reading and writing their cache
entries (TTLs: rDNS `cache.rdns_ttl`, RDAP `cache.rdap_ttl`, origin AS
`cache.origin_as_ttl`, MaxMind until a .mmdb file changes, failures and timeouts
`cache.negative_ttl`, each counted from when the entry is written), running the misses
in daemon threads, and turning every outcome into a `SourceReport`. What does not:
talking to a source (sources/*), storage details (cache.py), judging the facts (rules.py).

Theory of operation. A warm login (every configured source cached) costs one SELECT and
imports nothing beyond the stdlib modules below: the source modules, dnspython,
maxminddb, urllib and threading are imported only on a miss, through the module-path
table `SOURCES` (the way pip's `commands_dict` keeps `pip --help` light). On a miss each
source runs in its own daemon thread; the caller waits at most `deadline` seconds from
the start of `enrich()` in total, and a thread still running then is abandoned (daemon:
it cannot keep the process alive) and reported as TIMEOUT. A broken cache never fails a
login: it is reported with one stderr line and skipped.
"""

from __future__ import annotations

import time

from .. import ipnum
from ..core import WouldWait, must_not_wait, say
from .cache import BUSY_TIMEOUT_MS, FILE_NAME, CacheUnavailable, IpCache, Negative, distrust, file_signature
from .facts import (
    IpFacts,
    MaxMindFacts,
    SourceReport,
    SourceStatus,
    maxmind_from_json,
    origin_from_json,
    whois_from_json,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any, TextIO

    from ..config import Config

    _Outcome = tuple[SourceStatus, Any, str, float]  # status, value, detail, elapsed ms

# name -> module with the source's lookup(); imported only when the cache misses
SOURCES: dict[str, str] = {
    "rdns": "dovecot_appauth.audit.sources.rdns",
    "maxmind": "dovecot_appauth.audit.sources.maxmind",
    "rdap": "dovecot_appauth.audit.sources.rdap",
    "origin_as": "dovecot_appauth.audit.sources.origin_as",
}
BOOTSTRAP_SOURCE = "rdap-bootstrap"  # cache rows holding IANA bootstrap documents


def normalize_ip(ip: str) -> str:
    """The canonical text of `ip`; an IPv4-mapped IPv6 address becomes its IPv4.

    Raises ValueError for something that is not an IP address.
    """
    text = ip.strip()
    addr = ipnum.address(text)  # ipaddress.ip_address's acceptance, without its import
    if addr is None:
        raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address")
    if ipnum.is_mapped(addr):
        return ipnum.text(ipnum.unmapped(addr))
    zone = text.partition("%")[2]
    return f"{ipnum.text(addr)}%{zone}" if zone else ipnum.text(addr)


def open_cache(config: Config) -> IpCache:
    """The configured cache (for `cache stats` / `cache purge`); opened lazily on first use.
    With `keep_cache_open()`, this thread's kept one."""
    directory = config.resolve(config.audit.cache.path)
    return IpCache(directory) if _kept_caches is None else _kept_cache(directory)


# `serve` (keep_cache_open): per thread, directory -> (pid, file identity, IpCache), open
# between requests. None: off; the per-login program opens the cache once and closes it.
_kept_caches: Any = None


def keep_cache_open(on: bool = True) -> None:
    """`serve`: each thread keeps its cache connection open between requests (opening one
    costs more than the query: SQLite reads the schema and maps the WAL index). A
    connection is never shared between threads nor used across a fork, and is reopened
    when the cache file is replaced or removed (`rm -r` of the cache directory)."""
    global _kept_caches
    if on:
        import _thread  # not threading: a login must not import it (tests/e2e/test_imports.py)

        _kept_caches = _thread._local()
    else:
        _kept_caches = None


def _kept_cache(directory: str) -> IpCache:
    import os  # serve only: no new module-level import on the login path

    from ..filestat import stat  # at most once per interval (serve --file-check-interval)

    kept: dict[str, tuple[int, tuple[int, int] | None, IpCache]] = _kept_caches.__dict__.setdefault("caches", {})
    pid = os.getpid()
    path = os.path.join(directory, FILE_NAME)
    try:
        st = stat(path)
        identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        identity = None  # made by the first query: kept from the next request on
    known = kept.get(directory)
    if known is not None and known[0] == pid and identity is not None and known[1] == identity:
        # the same file, but trusted only while its modes and owners are: a chmod or chown
        # after it was opened is judged as at opening (IpCache._prepare_directory)
        try:
            problem = distrust(directory, stat(directory), path, st)
        except OSError as e:
            problem = f"{directory}: {e.strerror or type(e).__name__}"
        if problem is None:
            return known[2]
        known[2].close()
        del kept[directory]
        raise CacheUnavailable(problem)
    if known is not None and known[0] == pid:
        known[2].close()  # the file was replaced or removed; never a parent's connection
    # serve's event loop never waits for another connection's lock (WouldWait instead:
    # without the cache, every source misses)
    cache = IpCache(directory, busy_timeout_ms=0 if must_not_wait() else BUSY_TIMEOUT_MS)
    kept[directory] = (pid, identity, cache)
    return cache


def _signature(path: str | None) -> str:
    if not path:
        return "-"
    try:
        if _kept_caches is not None:  # serve: at most once per interval
            from ..filestat import stat

            return file_signature(path, stat)
        return file_signature(path)
    except OSError:
        return "missing"  # when the file appears its signature differs, so it is read then


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)


def enrich(
    ip: str,
    config: Config,
    *,
    now: float,
    deadline: float | None = None,
    use_cache: bool = True,
    stderr: TextIO | None = None,
    local: bool = False,
) -> IpFacts:
    """Everything the configured sources know about `ip`, within `deadline` seconds.

    `now` is the wall-clock time used for cache expiry; `deadline` defaults to
    `[audit] deadline`. Each source's outcome is in `IpFacts.sources` (cached, fetched,
    timeout, failed, unavailable, skipped, with milliseconds). `local`: the source is
    local (`rules.classify_source`: not globally reachable, or in
    `[audit.local_networks]`) and is never sent to a remote registry: RDAP (and the
    origin-AS service) report SKIPPED. Never raises for a source or cache problem;
    raises ValueError when `ip` is not an IP address.
    """
    started = time.monotonic()
    audit = config.audit
    budget = audit.deadline if deadline is None else deadline
    ip = normalize_ip(ip)
    reports: dict[str, SourceReport] = {}
    wanted: list[str] = []

    if audit.dns.enabled:
        wanted.append("rdns")
    else:
        reports["rdns"] = SourceReport(SourceStatus.UNAVAILABLE, 0.0, "disabled in [audit.dns]")
    city = config.resolve(audit.maxmind.city) if audit.maxmind.city else None
    asn_db = config.resolve(audit.maxmind.asn) if audit.maxmind.asn else None
    mm_sig = ""
    if city or asn_db:
        wanted.append("maxmind")
        mm_sig = f"{_signature(city)}|{_signature(asn_db)}"
    else:
        reports["maxmind"] = SourceReport(SourceStatus.UNAVAILABLE, 0.0, "no database in [audit.maxmind]")
    rdap = audit.rdap
    boot_keys: dict[str, str] = {}  # bootstrap kind -> cache key (URL-specific)
    # upstream never looked local sources up: asking a registry about 10.9.8.7 leaks it,
    # and a local login (webmail on 127.0.0.1) would wait for a registry that is down
    if rdap.enabled and local:
        reports["rdap"] = SourceReport(SourceStatus.SKIPPED, 0.0, "local source: never sent to RDAP")
    elif rdap.enabled:
        wanted.append("rdap")
        if not rdap.servers:
            kinds = ("ipv4" if ":" not in ip else "ipv6", "asn")
            boot_keys = {k: f"{rdap.bootstrap_url}|{k}" for k in kinds}
    else:
        reports["rdap"] = SourceReport(SourceStatus.UNAVAILABLE, 0.0, "disabled in [audit.rdap]")
    # the origin-AS service is reported only when configured: it is an addition to the
    # three sources every installation has
    if audit.origin_as.enabled and local:
        reports["origin_as"] = SourceReport(SourceStatus.SKIPPED, 0.0,
                                            "local source: never sent to the origin-AS service")
    elif audit.origin_as.enabled:
        wanted.append("origin_as")

    cache: IpCache | None = None
    cached: dict[tuple[str, str], dict | Negative] = {}
    if use_cache and audit.cache.enabled and wanted:
        try:
            cache = open_cache(config)
            keys = [(name, ip) for name in wanted] + [(BOOTSTRAP_SOURCE, k) for k in boot_keys.values()]
            cached = cache.get_many(keys, now)
        except CacheUnavailable as e:
            say(stderr, f"enrichment cache bypassed: {e}")
            cache = None
    read_ms = _ms(started)

    values: dict[str, Any] = {}
    misses: list[str] = []
    for name in wanted:
        hit = cached.get((name, ip))
        if isinstance(hit, Negative):
            status = SourceStatus.TIMEOUT if hit.status == SourceStatus.TIMEOUT.value else SourceStatus.FAILED
            reports[name] = SourceReport(status, read_ms, f"cached: {hit.detail}")
        elif hit is not None and (name != "maxmind" or hit.get("sig") == mm_sig):
            try:
                values[name] = _from_cache(name, hit)
                reports[name] = SourceReport(SourceStatus.CACHED, read_ms)
            except (AttributeError, KeyError, TypeError, ValueError):
                misses.append(name)  # an entry of an older shape: ask again
        else:
            misses.append(name)

    if "origin_as" in misses and audit.origin_as.order == "maxmind-first" and \
            _maxmind_asn(values.get("maxmind")) is not None:
        # the usual warm login in that order: MaxMind (cached) has the AS, nothing to ask
        misses.remove("origin_as")
        reports["origin_as"] = SourceReport(SourceStatus.SKIPPED, read_ms, _MM_KNOWS)
    if misses and must_not_wait():
        # serve's event loop answers from the cache only: a lookup waits up to the deadline
        raise WouldWait(f"enrichment of {ip}: {', '.join(misses)} not cached")
    if misses:
        bootstrap = {kind: cached[(BOOTSTRAP_SOURCE, key)] for kind, key in boot_keys.items()
                     if isinstance(cached.get((BOOTSTRAP_SOURCE, key)), dict)}
        known_boot = set(bootstrap)
        outcomes = _run_sources(misses, ip, config, city, asn_db, values, bootstrap,
                                started + budget, budget)
        rows: list[tuple[str, str, dict, float | None, bool]] = []
        neg_ttl = audit.cache.negative_ttl
        for name in misses:
            status, value, detail, elapsed = outcomes[name]
            reports[name] = SourceReport(status, elapsed, detail)
            if status is SourceStatus.FETCHED:
                values[name] = value
                if name == "origin_as":
                    rows.append(("origin_as", ip, {"facts": value.to_json()}, audit.cache.origin_as_ttl, True))
                elif name == "rdns":
                    rows.append(("rdns", ip, {"ptr": value}, audit.cache.rdns_ttl, True))
                elif name == "maxmind":
                    # a partial answer (a database could not be read) is never kept: it would
                    # be served as a clean one until the file changes; MaxMind is local and
                    # cheap to read again, so each login reports (and is judged with) the gap
                    if not value.unavailable:
                        rows.append(("maxmind", ip, {"sig": mm_sig, "facts": value.to_json()}, None, True))
                else:
                    rows.append(("rdap", ip, {"facts": value.to_json()}, audit.cache.rdap_ttl, True))
                    rows.extend((BOOTSTRAP_SOURCE, boot_keys[k], doc, audit.cache.rdap_ttl, True)
                                for k, doc in bootstrap.items() if k not in known_boot and k in boot_keys)
            elif status in (SourceStatus.TIMEOUT, SourceStatus.FAILED) and name != "maxmind":
                # a short negative entry keeps a dead server from costing every login the deadline;
                # MaxMind is local and cheap to retry, so its failures are not kept
                rows.append((name, ip, {"status": status.value, "detail": detail}, neg_ttl, False))
        if cache is not None and rows:
            # TTLs count from now, when the entry is written, not from the start of the
            # login: a negative entry written after a deadline of 1.5 s with a negative_ttl
            # of 1 s would otherwise be expired before anyone could read it
            written = now + (time.monotonic() - started)
            try:
                cache.put_many(rows, written)
            except CacheUnavailable as e:
                say(stderr, f"enrichment cache not updated: {e}")
    if cache is not None and _kept_caches is None:
        from .. import per_login_process

        cache.close(exiting=per_login_process)
    if "origin_as" in values and _maxmind_asn(values.get("maxmind")) is not None and \
            audit.origin_as.order == "maxmind-first":
        # a cached origin AS from before the ASN database knew the address: MaxMind's wins
        del values["origin_as"]
        reports["origin_as"] = SourceReport(SourceStatus.SKIPPED, reports["origin_as"].elapsed_ms, _MM_KNOWS)

    return IpFacts(
        ip=ip,
        rdns=values.get("rdns"),
        maxmind=values.get("maxmind"),
        whois=values.get("rdap"),
        sources={name: reports[name] for name in SOURCES if name in reports},
        origin=values.get("origin_as"),
    )


_MM_KNOWS = "MaxMind's ASN database knows the AS ([audit.origin_as] order = maxmind-first)"


def _maxmind_asn(mm: Any) -> int | None:
    return mm.asn if isinstance(mm, MaxMindFacts) else None


def _from_cache(name: str, hit: dict) -> Any:
    if name == "rdns":
        ptr = hit["ptr"]
        if not isinstance(ptr, str):
            raise TypeError("ptr")
        return ptr
    if name == "maxmind":
        return maxmind_from_json(hit["facts"])
    if name == "origin_as":
        return origin_from_json(hit["facts"])
    return whois_from_json(hit["facts"])


def _run_sources(
    misses: list[str],
    ip: str,
    config: Config,
    city: str | None,
    asn_db: str | None,
    known: dict[str, Any],
    bootstrap: dict[str, dict],
    end: float,
    budget: float,
) -> dict[str, _Outcome]:
    """Run the missing sources in daemon threads until they finish or `end` (monotonic)."""
    # only here: a warm login never starts a thread
    import importlib
    import threading

    audit = config.audit
    results: dict[str, _Outcome] = {}
    finished = {name: threading.Event() for name in ("maxmind", "origin_as")}

    def answer(name: str) -> Any:
        """The value of a source: known, or waited for (until `end`) when it is running."""
        if name in known:
            return known[name]
        if name not in misses:
            return None
        finished[name].wait(max(0.0, end - time.monotonic()))
        outcome = results.get(name)
        return outcome[1] if outcome and outcome[0] is SourceStatus.FETCHED else None

    def asn_hint() -> int | None:
        # RDAP rarely names the origin AS; MaxMind's ASN database and the origin-AS service
        # do (see sources/rdap.py), in the configured order
        mm_asn = _maxmind_asn(answer("maxmind"))
        if mm_asn is not None and audit.origin_as.order == "maxmind-first":
            return mm_asn
        origin = answer("origin_as")
        origin_asn = origin.asn if origin is not None else None
        return origin_asn if origin_asn is not None else mm_asn

    def call(name: str, module: Any) -> tuple[Any, str]:
        left = max(0.01, end - time.monotonic())
        if name == "rdns":
            return module.lookup(ip, audit.dns, min(audit.dns.timeout, left)), ""
        if name == "origin_as":
            return module.lookup(ip, audit.dns, min(audit.origin_as.timeout, left)), ""
        if name == "maxmind":
            facts, problems = module.lookup_detailed(ip, city, asn_db, timeout=left)
            return facts, "; ".join(problems)
        facts = module.lookup(ip, audit.rdap, min(audit.rdap.timeout, left),
                              asn_hint=asn_hint, bootstrap=bootstrap)
        return facts, ""

    def worker(name: str) -> None:
        start = time.monotonic()
        try:
            if name == "origin_as" and audit.origin_as.order == "maxmind-first" and \
                    _maxmind_asn(answer("maxmind")) is not None:
                outcome: _Outcome = (SourceStatus.SKIPPED, None, _MM_KNOWS, _ms(start))
            else:
                module = importlib.import_module(SOURCES[name])
                value, detail = call(name, module)
                outcome = (SourceStatus.FETCHED, value, detail, _ms(start))
        except BaseException as e:  # a thread must report, never die silently
            outcome = (_classify(e), None, f"{type(e).__name__}: {e}", _ms(start))
        results[name] = outcome
        if name in finished:
            finished[name].set()

    threads = [threading.Thread(target=worker, args=(n,), name=f"enrich-{n}", daemon=True) for n in misses]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    done = dict(results)  # a copy: abandoned threads may still add to `results`
    for name in misses:
        if name not in done:
            done[name] = (SourceStatus.TIMEOUT, None, f"no answer within the {budget:g}s deadline",
                          _ms(end - budget))
    return done


def _classify(e: BaseException) -> SourceStatus:
    from .sources import SourceUnavailable

    if isinstance(e, (SourceUnavailable, ImportError)):
        return SourceStatus.UNAVAILABLE
    if isinstance(e, TimeoutError):
        return SourceStatus.TIMEOUT
    return SourceStatus.FAILED


def check_sources(config: Config) -> dict[str, str | None]:
    """For `check-config`: import every configured source module once and try the files.

    Returns source name -> problem text (None when fine). Lazy imports otherwise surface
    only in the middle of a login (pip keeps `_EAGER_IMPORTS` for the same reason).
    """
    import importlib

    audit = config.audit
    problems: dict[str, str | None] = {}
    enabled = {"rdns": audit.dns.enabled, "maxmind": bool(audit.maxmind.city or audit.maxmind.asn),
               "rdap": audit.rdap.enabled, "origin_as": audit.origin_as.enabled}
    for name, path in SOURCES.items():
        if not enabled[name]:
            continue
        try:
            module = importlib.import_module(path)
        except ImportError as e:
            problems[name] = f"cannot import {path}: {e}"
            continue
        problems[name] = None
        if name == "maxmind":
            for label, p in (("city", audit.maxmind.city), ("asn", audit.maxmind.asn)):
                if p:
                    path = config.resolve(p)
                    paths = (path, None) if label == "city" else (None, path)
                    try:
                        module.lookup("192.0.2.1", *paths)
                        # the per-login program reads with the C extension (a damaged file
                        # can crash it, in its child): say so here, where an admin looks
                        crash = module.check_per_login_reader(path)
                        if crash:
                            problems[name] = f"{label} database: {crash}"
                    except Exception as e:  # reported, not raised
                        problems[name] = f"{label} database: {e}"
    return problems

