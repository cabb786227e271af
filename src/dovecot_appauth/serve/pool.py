"""Open database connections kept between the requests of `dovecot-appauth serve`.

The per-login program opens one store and exits; a service that did the same would pay a
connect (a MariaDB handshake, or opening the SQLite file and its WAL index) on every login.
The pool keeps the stores that requests gave back and hands each to one request at a time.

A store is reused only if its request ended without an internal error and it is still
usable: for MariaDB the server still answers (it drops idle connections after its
`wait_timeout`, and restarts); for SQLite the file at the path is still the one that was
opened (an admin may have replaced it). A changed DSN in a reloaded config empties the
pool. At most `max_idle` stores wait; more concurrent requests open more and close the
surplus when they end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..core import TempFail, WouldWait
from ..store import open_store

if TYPE_CHECKING:
    from ..store import Store


class StorePool:
    """`on_loop`: the pool of serve's event loop (server.py, run_on_loop). Its stores never
    wait: opened with a busy timeout of 0 and `inline` (store.py: a lock held elsewhere is
    WouldWait). A store it cannot open, or an SQLite database not in WAL mode, raises
    WouldWait: the request goes to a thread, which waits for the database as long as the
    config allows and says why it failed."""

    def __init__(self, max_idle: int = 8, *, on_loop: bool = False):
        self.max_idle = max_idle
        self.on_loop = on_loop
        self.opened = 0  # stores opened so far (tests read it)
        self._lock = threading.Lock()
        self._key: tuple[str, float] | None = None
        self._idle: list[Store] = []
        self._lent: dict[int, tuple[str, float]] = {}  # id(store) -> the key it was opened for

    @contextmanager
    def store(self, dsn: str, timeout: float) -> Iterator[Store]:
        """A store for one request; raises TempFail when the database cannot be reached."""
        store = self.acquire(dsn, timeout)
        healthy = False
        try:
            yield store
            healthy = True
        except WouldWait:
            healthy = True  # the request goes to a thread; its writes were rolled back
            raise
        finally:
            self.release(store, healthy)

    def acquire(self, dsn: str, timeout: float) -> Store:
        """An idle store for this DSN, or a new one (TempFail when it cannot connect;
        WouldWait on the loop's pool, see the class)."""
        if self.on_loop:
            timeout = 0.0
        key = (dsn, timeout)
        store = self._take(key)
        if store is None:
            try:
                store = open_store(dsn, timeout, shared=True)
            except TempFail as e:
                if self.on_loop:
                    raise WouldWait(f"the database: {e}") from None
                raise
            if self.on_loop:
                store.inline = True  # type: ignore[union-attr]
            with self._lock:
                self.opened += 1
        with self._lock:
            self._lent[id(store)] = key
        if self.on_loop and not store.in_wal():  # type: ignore[union-attr]
            # a rollback-journal commit waits for the readers: before any of the request's work
            self.release(store)
            raise WouldWait("SQLite database not in WAL mode")
        return store

    def release(self, store: Store, healthy: bool = True) -> None:
        """Give a store back after its request; one whose request failed is closed."""
        with self._lock:
            key = self._lent.pop(id(store), None)
        if not healthy:
            store.close()
            return
        store.finish()
        with self._lock:
            if key == self._key and len(self._idle) < self.max_idle:
                self._idle.append(store)
                return
        store.close()

    def _take(self, key: tuple[str, float]) -> Store | None:
        stale: list[Store] = []
        with self._lock:
            if key != self._key:  # the config names another database now
                stale, self._idle, self._key = self._idle, [], key
        for store in stale:
            store.close()
        while True:
            with self._lock:
                if not self._idle or key != self._key:
                    return None
                store = self._idle.pop()
            if store.usable():  # outside the lock: a ping can take up to the timeout
                return store
            store.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for store in idle:
            store.close()
