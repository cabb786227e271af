"""serve's HTTP/1.1 connections: uvicorn's httptools protocol with the bounds uvicorn lacks.

uvicorn times out only an idle keep-alive connection, and only once a response was sent:
a request's head and body could take forever, and httptools has no bound on the size of
the head (every header is kept until the last one arrives). Without the token, any local
process could then hold connections, and the worker's file descriptors, for good (until
a real /verify met a full descriptor table), or grow a worker's memory by sending headers
without end. `guarded_protocol` makes the protocol class `serve` runs, with three bounds:

- REQUEST_TIMEOUT: a request must have arrived whole (request line, headers and body)
  this many seconds after its first byte, or after the connection was made for the first
  one. Past it the connection is answered 408 (unless an answer to an earlier request on it
  is still due) and closed. Between requests uvicorn's keep-alive timeout (5 s) holds, and
  the time the engine takes to answer is bounded by the engine's own deadlines.
- MAX_HEAD: the request line and headers together; a head not ended within that many
  bytes is answered 431 and the connection closed, and nothing past the limit is parsed.
- max_connections: connections open at once in a worker (connections_allowed: at most
  MAX_CONNECTIONS, fewer when the open-file limit is lower). One more closes the oldest
  connection that waits for a request (idle between requests, or still sending one)
  instead, as nginx reuses idle connections; if every one has a request being answered,
  the new one is closed. A flood of connections can then never take the descriptors the
  engine needs (the database, DNS, the enrichment cache).

Each refusal is one line in serve's log. The cost per request is one timer handle (made
when its first byte arrives, cancelled when its last one does) and a few attribute
updates. Relies on uvicorn's HttpToolsProtocol (uvicorn >= 0.29): its parser callbacks,
`cycle` and `transport`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REQUEST_TIMEOUT = 10.0  # seconds for a whole request, head and body (see above)
MAX_HEAD = 16 * 1024  # bytes of request line and headers (uvicorn's h11 protocol's default bound)
MAX_CONNECTIONS = 4096  # per worker
FD_RESERVE = 512  # descriptors per worker kept for the engine (pool, caches, DNS, RDAP, logs)
WANTED_NOFILE = 65536  # serve raises its soft open-file limit to this (at most the hard limit)


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"dovecot-appauth serve: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def connections_allowed(soft_limit: int) -> int:
    """The connections a worker keeps open under an open-file limit of `soft_limit`
    (RLIM_INFINITY: negative), leaving descriptors for the engine."""
    if soft_limit < 0:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft_limit - min(FD_RESERVE, soft_limit // 2)))


def raise_open_file_limit(wanted: int = WANTED_NOFILE) -> int:
    """Raise the soft RLIMIT_NOFILE to `wanted`, at most the hard limit (never lower it);
    returns the soft limit then in force (negative: unlimited). The workers inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return -1 if soft == resource.RLIM_INFINITY else soft


def guarded_protocol(*, request_timeout: float = REQUEST_TIMEOUT, max_head: int = MAX_HEAD,
                     max_connections: int = MAX_CONNECTIONS,
                     say: Callable[[str], None] | None = None) -> type[HttpToolsProtocol]:
    """A protocol class for uvicorn.Config(http=...), with its own table of open
    connections (one class per server)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "request_timeout": request_timeout, "max_head": max_head, "max_connections": max_connections,
        "say": staticmethod(say or _say), "connections_open": {}})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a deadline per request, a bound on the head and a bound on
    the connections open at once (module docstring). Use guarded_protocol()."""

    request_timeout: float = REQUEST_TIMEOUT
    max_head: int = MAX_HEAD
    max_connections: int = MAX_CONNECTIONS
    say: Callable[[str], None] = staticmethod(_say)
    # the open connections of one server, oldest first (a dict keeps its insertion order)
    connections_open: dict[GuardedHttpToolsProtocol, None] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: Any = None  # the deadline of the request being received
        self._head_left = self.max_head  # bytes the head may still take; -1: its end was read

    # --- the connection -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.request_timeout, self._timed_out)
        self.connections_open[self] = None
        if len(self.connections_open) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections_open.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _make_room(self) -> None:
        for other in self.connections_open:
            if other is not self and other._waiting():
                del self.connections_open[other]
                other.transport.close()
                self.say(f"{self.max_connections} connections open (the most a worker keeps): closed the "
                         f"oldest one waiting for a request, from {other._peer()}")
                return
        del self.connections_open[self]
        self.transport.close()
        self.say(f"{self.max_connections} connections open (the most a worker keeps), each with a request "
                 f"in work: refused a new one from {self._peer()}")

    def _waiting(self) -> bool:
        """Is this connection waiting for (the rest of) a request, with no answer due on it?"""
        if self.transport.is_closing():
            return False
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True  # idle, or receiving a head
        # receiving a body the app waits for: nothing is decided before it is whole
        return self._head_left < 0 and self._timer is not None and not cycle.response_started

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "the Unix socket"

    # --- a request ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._timer is None:  # the first byte of another request on this connection
            self._timer = self.loop.call_later(self.request_timeout, self._timed_out)
        left = self._head_left
        if left < 0 or len(data) <= left:
            if left >= 0:
                self._head_left = left - len(data)
            super().data_received(data)
            return
        # this piece would take the head past max_head: parse what fits, then see
        self._head_left = 0
        super().data_received(data[:left])
        if self.transport.is_closing():
            return
        if self._head_left == 0:  # the same head, still not ended
            self._refuse(431, f"request head over {self.max_head} bytes")
            return
        self.data_received(data[left:])  # the head ended (or a request did): the rest as usual

    def on_message_begin(self) -> None:
        if self._timer is None:  # a request that came in the same piece as the end of the last one
            self._timer = self.loop.call_later(self.request_timeout, self._timed_out)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_left = -1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._head_left = self.max_head  # the next request's
        super().on_message_complete()

    def _timed_out(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self._refuse(408, f"request not received within {self.request_timeout:g} s")

    def _refuse(self, status: int, why: str) -> None:
        """Answer `status` (unless an answer to an earlier request is still due, or this one
        was answered already) and close the connection; one line in the log."""
        cycle = self.cycle
        if self._head_left >= 0:
            answer = cycle is None or cycle.response_complete
        else:
            answer = not cycle.response_started
        if answer:
            phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % (status, phrase))
        self.transport.close()
        self.say(f"connection from {self._peer()} closed: {why}")
