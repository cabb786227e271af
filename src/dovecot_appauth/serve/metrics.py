"""`serve`'s Prometheus metrics (GET /metrics), with the `prometheus_client` library.

What belongs here: the metric objects and what a request, an assessment or a reload adds
to them. Nothing on the per-login path imports this module (prometheus_client is in the
`serve` extra only).

With several worker processes (`serve --workers`), each process counts in its own files
under `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode; the supervisor
in server.py sets the variable before any worker imports prometheus_client), and
/metrics, answered by whichever worker takes the request, sums every process's files.
Without the variable (tests that build the app in-process) the counts live in a registry
of this `Metrics` object.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

# seconds; a login through serve is ~5-20 ms warm, the Lua script gives up at 5 s
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # multiprocess mode: values go to the per-process files, not to a registry
        registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.logins = Counter(
            "appauth_logins", "Answers of /verify and reports of /policy, by result and service",
            ["endpoint", "result", "service"], registry=registry)
        self.policy_checks = Counter(
            "appauth_policy_checks", "Answers of /policy?command=allow (allow, deny, tempfail)",
            ["result"], registry=registry)
        self.latency = Histogram(
            "appauth_request_seconds", "Time from a request's arrival to its answer",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.throttled = Counter(
            "appauth_throttled", "Requests refused by the brute-force limiter", ["service"], registry=registry)
        self.busy = Counter(
            "appauth_busy_rejections", "Requests answered 503 at once: --max-requests already in work",
            ["endpoint"], registry=registry)
        self.to_thread = Counter(
            "appauth_requests_to_thread", "Requests tried on the event loop that needed something that "
            "can wait (a lookup, a lock, a slow hash) and ran on an engine thread", ["endpoint"],
            registry=registry)
        self.enrichment = Counter(
            "appauth_enrichment", "Enrichment source outcomes (cached, fetched, timeout, failed, ...)",
            ["source", "status"], registry=registry)
        self.cache = Counter(
            "appauth_enrichment_cache", "Enrichment cache lookups, hit or miss (hit ratio: "
            "rate(..{result=\"hit\"}) / rate(..))", ["source", "result"], registry=registry)
        self.config_reloads = Counter(
            "appauth_config_reloads", "Configuration file reloads (result: ok, or failed: kept the old one)",
            ["result"], registry=registry)
        self.list_reloads = Counter(
            "appauth_list_reloads", "Deny/allow list files seen changed and read again", ["kind"],
            registry=registry)
        # (metric, label values) -> the labelled child: `labels()` takes a lock and checks
        # the values on every call; label values are bounded (server._label, fixed sources)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: the same child every time."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_assessment(self, assessment: Any) -> None:
        """An audit's source outcomes (pipeline.Assessment): outcome counts and cache hits."""
        facts = getattr(assessment, "facts", None)
        if facts is None:
            return
        child = self.child
        for source, report in facts.sources.items():
            status = str(report.status)
            child(self.enrichment, source, status).inc()
            if status == "cached":
                child(self.cache, source, "hit").inc()
            elif status in ("fetched", "timeout", "failed"):
                child(self.cache, source, "miss").inc()

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def worker_exited(pid: int) -> None:
    """A worker process ended (multiprocess mode): drop its live-gauge files."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
