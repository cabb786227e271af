"""Enrichment sources: the only code that touches the network or a .mmdb file.

Each module has one `lookup(ip, ...)` and is imported lazily by `enrich.py`, only when
the cache does not already hold its answer; nothing in this package is imported on a
warm login. A source raises `SourceUnavailable` when it cannot work at all (not
configured, file missing, library missing), `TimeoutError` when it ran out of time and
anything else when the remote side failed.
"""


class SourceUnavailable(Exception):
    """The source cannot be asked at all here (missing file, library, configuration)."""
