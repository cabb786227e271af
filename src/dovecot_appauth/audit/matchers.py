"""Compiled forms of list files, for a process that keeps its lists warm (`serve`).

What belongs here: data structures built once per version of a list file that answer
"which entry, first in file order, matches?" without scanning every entry, each giving
exactly the answer of the entry-by-entry scan in `rules.py`. What does not: parsing
(`lists.py`), the order of the rules and the verdict (`rules.py`).

Theory of operation:
- `CompiledList` is the tuple of a list's entries, in file order, carrying its compiled
  form as attributes. `rules.py` looks for those attributes (`networks`, `regexes`,
  `by_value`) and scans the plain tuple when they are absent, so the per-login program,
  which checks each list once, never pays for compiling (nor imports this module or `re`).
- ip_networks: one dict per prefix length present, network -> index of its first entry.
  An address is looked up once per length (a handful of dict lookups for 20,000 CIDRs);
  the smallest index found is the entry the scan would have found first. An IPv4-mapped
  IPv6 address is looked up as IPv4 and, like the scan does, in the IPv6 tables as itself.
  (`netindex.NetworkIndex`: the per-login program reads the same index from the list cache.)
- regex kinds: a conservative pre-filter. It answers "may some pattern match?" with the
  same string fast path `lists.regex_fullmatch` uses, and one combined alternation for the
  other patterns; only when it says yes does the scan run (so the entry and the verdict
  are the scan's). A pattern that cannot join the alternation (back-references, named
  groups, global flags) is tried on its own.
- equality kinds (ASNs, countries, entities, GeoNames ids): value -> index of its first entry.
- coordinates: the circles sorted by latitude. Two circles can only touch when their
  centres are at most the sum of the radii apart, and no great-circle distance is shorter
  than the difference in latitude, so only the circles in a latitude band (plus a margin
  far above rounding errors) are judged, in file order, by the same formula as the scan.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

from .netindex import NetworkIndex
from .patterns import REGEX_KINDS, _compile, _fast_form, quiet_re, regex_fullmatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from collections.abc import Iterable
    from typing import Any

    from .lists import Entry

# kinds matched by equality with a fact (rules._equal, match_as_numbers, match_entities, ...)
EQUAL_KINDS = ("network_cc", "as_cc", "countries", "entities", "as_numbers", "geo_location_ids")


class CompiledList(tuple):
    """A list's entries in file order, with the compiled form of its kind.

    No __slots__: a tuple subclass cannot have any, so the attributes live in __dict__.
    Equal to the plain tuple of the same entries.
    """

    networks: NetworkIndex | None
    regexes: RegexSet | None
    by_value: dict[Any, int] | None
    circles: CircleIndex | None

    def __new__(cls, kind: str, entries: Iterable[Entry]) -> CompiledList:
        self = tuple.__new__(cls, entries)
        self.networks = NetworkIndex(self) if kind == "ip_networks" else None
        self.regexes = RegexSet([e.value for e in self]) if kind in REGEX_KINDS else None
        self.by_value = first_by_value(self) if kind in EQUAL_KINDS else None
        self.circles = CircleIndex(self) if kind == "coordinates" else None
        return self


def first_by_value(entries: tuple[Entry, ...]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for i, e in enumerate(entries):
        out.setdefault(e.value, i)
    return out


class RegexSet:
    """Answers "may any of these patterns fully match `value`?"; never "no" when one does."""

    __slots__ = ("combined", "exact", "infixes", "prefixes", "singles", "suffixes")

    def __init__(self, patterns: list[str]):
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        infixes: list[str] = []
        joinable: list[str] = []
        singles: list[str] = []
        for pattern in dict.fromkeys(patterns):
            form = _fast_form(pattern)
            if form is not None:  # regex_fullmatch answers these with string operations
                lead, lit, trail = form
                if lead and trail:
                    infixes.append(lit)
                elif lead:
                    suffixes.append(lit)
                elif trail:
                    prefixes.append(lit)
                else:
                    exact.add(lit)
            elif _joinable(pattern):
                joinable.append(pattern)
            else:
                singles.append(pattern)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)
        self.infixes = tuple(infixes)
        self.combined: re.Pattern[str] | None = None
        if joinable:
            try:
                self.combined = _compile("|".join(f"(?:{p})" for p in joinable))
            except ValueError:
                singles += joinable  # each still matches on its own
        self.singles = tuple(singles)

    def may_match(self, value: str) -> bool:
        if "\n" in value:
            return True  # regex_fullmatch leaves these to the engine: let the scan decide
        if value in self.exact or value.startswith(self.prefixes) or value.endswith(self.suffixes):
            return True
        for lit in self.infixes:
            if lit in value:
                return True
        if self.combined is not None and self.combined.fullmatch(value) is not None:
            return True
        return any(regex_fullmatch(p, value) for p in self.singles)


def _joinable(pattern: str) -> bool:
    """Whether `(?:pattern)` can be one branch of an alternation with the same meaning:
    it compiles alone and wrapped, and has no back-reference or named group (whose
    numbers and names would clash) and no global flag (only allowed at the start)."""
    import re
    from re import _constants, _parser  # type: ignore[attr-defined]

    try:
        with quiet_re():
            _compile(pattern)
            re.compile(f"(?:{pattern})")
            parsed = _parser.parse(pattern)
    except Exception:  # a pattern that does not compile never matches; keep it out
        return False
    if parsed.state.flags & ~re.UNICODE.value or parsed.state.groupdict:
        return False
    refs = {_constants.GROUPREF, _constants.GROUPREF_EXISTS, _constants.GROUPREF_IGNORE,
            _constants.GROUPREF_LOC_IGNORE, _constants.GROUPREF_UNI_IGNORE}
    return not _uses(parsed, refs)


def _uses(node: Any, ops: set[Any]) -> bool:
    """Whether a parsed pattern (a SubPattern, or the nested tuples/lists of its
    arguments) contains one of `ops`."""
    from re import _parser  # type: ignore[attr-defined]

    if isinstance(node, _parser.SubPattern):
        return any(op in ops or _uses(av, ops) for op, av in node.data)
    if isinstance(node, (tuple, list)):
        return any(_uses(item, ops) for item in node)
    return False


# km per degree of latitude on the sphere rules.haversine_km uses (rules.EARTH_RADIUS_KM)
_KM_PER_DEGREE = 6371.0088 * math.pi / 180
_MARGIN_DEGREES = 0.01  # ~1 km: far above the rounding of haversine_km


class CircleIndex:
    """coordinates entries sorted by latitude, to judge only those that can reach a point."""

    __slots__ = ("latitudes", "order", "widest_km")

    def __init__(self, entries: tuple[Entry, ...]):
        ranked = sorted((e.value[0], i) for i, e in enumerate(entries))
        self.latitudes = [lat for lat, _ in ranked]
        self.order = [i for _, i in ranked]
        self.widest_km = max((e.value[2] for e in entries), default=0.0)

    def candidates(self, latitude: float, radius_km: float) -> list[int] | None:
        """Indexes, in file order, of the circles that may overlap the circle (`latitude`,
        `radius_km`) anywhere on its parallel; None: judge them all (a latitude that is
        not a finite number)."""
        if not math.isfinite(latitude) or not math.isfinite(radius_km):
            return None
        reach = (self.widest_km + max(radius_km, 0.0)) / _KM_PER_DEGREE + _MARGIN_DEGREES
        lo = bisect_left(self.latitudes, latitude - reach)
        hi = bisect_right(self.latitudes, latitude + reach)
        return sorted(self.order[lo:hi])
