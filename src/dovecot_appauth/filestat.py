"""`os.stat` for `serve`'s change checks, at most once per `interval` seconds per path.

`serve` keeps the config, the lists, the enrichment cache connection, the database
connections and the MaxMind files' signatures between requests, and notices a changed
file by its stat. Stat'ing every file on every request cost about 30 system calls per
`/verify`; each one lets go of the GIL, and with concurrent requests each release can be
a thread switch: with 8 connections at once, a policy `allow` took 58 switches and 913 µs
of CPU, 13 and 418 µs with this module (benchmarks/serve_cpu.py --clients 8; see
docs/PERFORMANCE.md, sixth round). So within `interval` (`serve --file-check-interval`,
default 1 s) the last answer for a path is reused: a change takes effect at the latest
`interval` seconds later, in every worker. 0 stats on every call.

The per-login program never imports this module: it reads each file once anyway.
"""

from __future__ import annotations

import os
import time

DEFAULT_INTERVAL = 1.0
MAX_PATHS = 4096  # beyond that the memory is forgotten (paths from many configs replaced over time)

_interval = 0.0  # off until serve sets it
_clock = time.monotonic  # tests replace it
# path -> (when it was stat'ed, its stat result, or the (errno, strerror) of the OSError)
_seen: dict[str, tuple[float, os.stat_result | tuple[int, str]]] = {}
_generation = 0  # set_interval makes a new one: what was built on older stats is not reused


def set_interval(seconds: float) -> None:
    """Reuse a path's stat for `seconds` from now on (0: never); forgets what was seen."""
    global _interval, _generation
    if seconds < 0:
        raise ValueError("the interval cannot be negative")
    _interval = seconds
    _generation += 1
    _seen.clear()


def interval() -> float:
    return _interval


def generation() -> int:
    """Changes with every `set_interval`: what was built on the stats seen before is stale."""
    return _generation


def stands(generation: int, until: float) -> bool:
    """Does what was built on stats of `generation` (`generation()` when they were taken)
    that stand until `until` (`stat_until`, the earliest of them) still hold now?"""
    return generation == _generation and _clock() < until


def stat_until(path: str) -> tuple[os.stat_result | None, float]:
    """`stat(path)` (None where it raises) and until when (this module's monotonic clock)
    that same answer is given again: what is built on it holds until then, and what is
    built on several answers until the earliest of them, in the same `generation()`
    (`stands` says whether it still does). 0.0 with no interval."""
    if _interval <= 0:
        try:
            return os.stat(path), 0.0
        except OSError:
            return None, 0.0
    seen_at, result = _look(path)
    return (result if isinstance(result, os.stat_result) else None), seen_at + _interval


def stat(path: str) -> os.stat_result:
    """`os.stat(path)`, or its result from less than `interval` seconds ago; raises an
    OSError like os.stat's (a new one each time, with the same errno and message)."""
    if _interval <= 0:
        return os.stat(path)
    result = _look(path)[1]
    if isinstance(result, os.stat_result):  # (a tuple too: this test first)
        return result
    raise OSError(result[0], result[1], path)  # FileNotFoundError etc., as os.stat raises


def _look(path: str) -> tuple[float, os.stat_result | tuple[int, str]]:
    """When `path` was stat'ed, and what it gave (a stat result, or an OSError's errno and
    message): the last answer while it is less than `interval` old, else a new one."""
    now = _clock()
    seen = _seen.get(path)
    if seen is None or now - seen[0] >= _interval:
        try:
            result: os.stat_result | tuple[int, str] = os.stat(path)
        except OSError as e:
            result = (e.errno or 0, e.strerror or str(e))
        if len(_seen) >= MAX_PATHS and path not in _seen:
            _seen.clear()
        seen = _seen[path] = (now, result)
    return seen
