"""The per-prefix index of an ip_networks list: an address is looked up, not scanned for.

Built by `matchers.CompiledList` for `serve`, and stored in the list cache with the
entries of a long list (`lists.IndexedNetworks`), so the per-login program reads the same
index. A module of its own so that `lists` and `matchers` both import it and neither
imports the other at module level.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any

    from .lists import Entry


class NetworkIndex:
    """ip_networks entries as, per family and prefix length, {network >> host bits: first index}.

    Built by `matchers.CompiledList` for `serve`, and stored in the list cache with the
    entries of a long list, so a login looks an address up instead of scanning (see
    `IndexedNetworks`). Same answer as the scan in `rules.match_ip_networks`.
    """

    __slots__ = ("v4", "v6")

    def __init__(self, entries: tuple[Entry, ...] = ()):
        tables: dict[tuple[int, int], dict[int, int]] = {}
        for i, e in enumerate(entries):
            version, net, prefix = e.value
            shift = (32 if version == 4 else 128) - prefix
            tables.setdefault((version, shift), {}).setdefault(net >> shift, i)
        # longest prefixes first: no reason but a stable order
        self.v4 = tuple((shift, t) for (v, shift), t in sorted(tables.items()) if v == 4)
        self.v6 = tuple((shift, t) for (v, shift), t in sorted(tables.items()) if v == 6)

    def tables(self) -> tuple[Any, Any]:
        """Plain data for marshal (the list cache)."""
        return self.v4, self.v6

    @classmethod
    def from_tables(cls, tables: Any, count: int) -> NetworkIndex | None:
        """The index `tables()` gave, None if it is not one for `count` entries (damaged)."""
        self = cls()
        try:
            v4, v6 = tables
            for tuples, bits in ((v4, 32), (v6, 128)):
                if type(tuples) is not tuple:
                    return None
                for shift, table in tuples:
                    if (type(shift) is not int or not 0 <= shift <= bits or type(table) is not dict
                            or not all(type(i) is int and 0 <= i < count for i in table.values())):
                        return None
        except (TypeError, ValueError):
            return None
        self.v4, self.v6 = v4, v6
        return self

    def first(self, addr: tuple[int, int], addr6: tuple[int, int] | None = None) -> int | None:
        """Index of the first entry containing `addr` (or `addr6`, the mapped form), else None;
        addresses as `(version, int)` (ipnum.py)."""
        best = _first(self.v4 if addr[0] == 4 else self.v6, addr[1])
        if addr6 is not None:
            other = _first(self.v6, addr6[1])
            if other is not None and (best is None or other < best):
                best = other
        return best


def _first(tables: tuple[tuple[int, dict[int, int]], ...], value: int) -> int | None:
    best = None
    for shift, table in tables:
        i = table.get(value >> shift)
        if i is not None and (best is None or i < best):
            best = i
    return best
