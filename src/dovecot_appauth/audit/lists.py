"""Deny and allow list files: parse them, load them for one login, check them for admins.

What belongs here: the line formats of `shared/LISTS.md` (upstream's `lists.dist/` files,
read as is), problems located as `file:line`, and the optional parsed-form cache. What
does not: deciding anything (that is `rules.py`, which only reads the `Lists` built here).

Theory of operation:
- Every entry keeps its file, line number and text, so a verdict can name the line that
  decided it. A line that does not parse becomes a `Problem` and is skipped; the rest of
  the file applies. Nothing here raises at login time. A file that cannot be used at all
  (missing, unreadable, not a regular file) is never an empty list: `load_lists` records
  it in `Lists.unreadable` and the caller refuses the login or says it goes on without it.
- The per-login program reads each list once (a change applies at the next login, no reload).
  Parsing 2,000 CIDRs costs a few milliseconds, so when the cache directory is usable the
  parsed form of each file is kept there as a private marshal file (never pickle; see
  private_file.py: `json` would cost a login its import and `re`), keyed by path and the
  file's stat signature (device, inode, size, mtime, ctime: a same-size file renamed into
  place with the old mtime is read again), and not written for a file changed within
  `RACY_NS`. Compiled regexes cannot be stored; the cached form holds only patterns that
  compiled when the file was parsed, and `regex_fullmatch` compiles lazily, only for the
  values a login actually checks, with a string fast path for the common `.*literal` forms.
- `serve` calls `keep_warm()`: each file is then parsed once and kept in memory with its
  compiled form (`matchers.py`), and read again only when its stat changes (see
  `load_kept`), at most once per file check interval (filestat.py); within it, the same
  `Lists` is handed out again (`load_lists`).
- No regex is compiled at import time; only the stdlib is imported.
"""

from __future__ import annotations

import posix
from _stat import S_ISDIR, S_ISREG

from .. import ipnum, paths, private_file
from ..config import ALLOW_KINDS, LIST_KINDS, Problem
from ..values import Value
from .netindex import NetworkIndex
from .patterns import REGEX_KINDS, _compile, _fast_form, required_literal

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    import os
    from typing import Any, TextIO

    from ..config import Config

CC_KINDS = ("network_cc", "as_cc", "countries")
# Bump when the parsed form changes: older cache files are then ignored.
# 5: long ip_networks lists carry their NetworkIndex ("index")
# 6: keyed by the file's whole stat signature (device, inode, size, mtime, ctime), not
#    size and mtime alone; a file changed within RACY_NS is not cached
CACHE_FORMAT = 6
# Files larger than this are refused: a list is a few thousand lines, not a dump.
MAX_LIST_BYTES = 16 * 1024 * 1024


class Entry(tuple):
    """One list entry: where it was written and its parsed value.

    `value` is plain data: ip_networks `(version, network_int, prefixlen)`, as_numbers
    and geo_location_ids an int, regex kinds the pattern text, country codes upper case,
    entities upper case, coordinates `(lat, lon, radius_km, intersection)`.
    A tuple with named fields, as a NamedTuple would be but without importing `typing`
    or `collections` (see values.py): thousands are built per login.
    """

    __slots__ = ()

    def __new__(cls, file: str, line: int, text: str, value: Any, hint: str | None = None) -> Entry:
        return tuple.__new__(cls, (file, line, text, value, hint))

    @property
    def file(self) -> str:
        return self[0]

    @property
    def line(self) -> int:
        return self[1]

    @property
    def text(self) -> str:
        """The entry as written, without a trailing comment."""
        return self[2]

    @property
    def value(self) -> Any:
        return self[3]

    @property
    def hint(self) -> str | None:
        """Regex kinds: a literal every match contains (see `required_literal`)."""
        return self[4]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __repr__(self) -> str:
        return f"Entry(file={self[0]!r}, line={self[1]!r}, text={self[2]!r}, value={self[3]!r}, hint={self[4]!r})"


class Lists(Value):
    """Every list one login needs. A kind that is not configured is absent from the dicts;
    a configured file that cannot be used is in `unreadable` (and its kind absent)."""

    __slots__ = ("allow", "deny", "problems", "unreadable", "user_allow")
    __hash__ = None  # type: ignore[assignment]  # filled in place while loading

    def __init__(
        self,
        deny: dict[str, tuple[Entry, ...]] | None = None,
        allow: dict[str, tuple[Entry, ...]] | None = None,
        user_allow: dict[str, dict[str, tuple[Entry, ...]]] | None = None,
        problems: list[Problem] | None = None,
        unreadable: list[ListUnreadable] | None = None,
    ):
        self.deny = {} if deny is None else deny
        self.allow = {} if allow is None else allow
        self.user_allow = {} if user_allow is None else user_allow  # lower-cased user
        self.problems = [] if problems is None else problems
        self.unreadable = [] if unreadable is None else unreadable


class IndexedNetworks(tuple):
    """A long ip_networks list read from the list cache: its entries in file order, with
    their `NetworkIndex` as `networks` (the attribute `rules.match_ip_networks` looks for,
    as on `matchers.CompiledList`). Equal to the plain tuple of the same entries."""

    networks: NetworkIndex


# A list this long is stored with its index: scanning a few dozen entries costs no more
# than restoring the index would.
INDEX_MIN_ENTRIES = 32


# ---------------------------------------------------------------------------
# one parser per kind: (text without comment handling, filename, line) -> (entry text, value)
# each raises ValueError with a message for the admin; warnings go to `warn`


def _split_comment(line: str) -> tuple[str, str]:
    """`token   free text` -> (token, free text): ip_networks and as_numbers allow a comment."""
    parts = line.split(None, 1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def parse_network(text: str) -> tuple[tuple[int, int, int], str | None]:
    """`198.51.100.0/24` or `2001:db8::/32` (no prefix = one host) -> ((version, net, len), warning).

    Host bits are masked away (upstream compared masked addresses, so `176.112.170.0/21`
    meant `176.112.168.0/21`); the warning names the network actually used.
    """
    addr, slash, prefix_text = text.partition("/")
    v4 = ipnum.parse_ipv4(addr)
    if v4 is not None:
        version, bits, value = 4, 32, v4
    else:
        # what ipaddress.IPv6Address(addr) accepts (ipnum.py), zone included, to refuse it
        ip6 = ipnum.address(addr)
        if ip6 is None or ip6[0] != 6:
            raise ValueError(f"not an IPv4 or IPv6 network: {text!r}")
        if "%" in addr:
            raise ValueError(f"a scoped address is not a network: {text!r}")
        version, bits, value = 6, 128, ip6[1]
    if slash:
        if not prefix_text.isascii() or not prefix_text.isdigit() or int(prefix_text) > bits:
            raise ValueError(f"bad prefix length in {text!r} (0..{bits})")
        prefix = int(prefix_text)
    else:
        prefix = bits
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    network = value & mask
    warning = None
    if network != value:
        warning = f"{text} has host bits set; it is used as {ipnum.text((version, network))}/{prefix}"
    return (version, network, prefix), warning


def _ip_networks(line: str) -> tuple[str, Any, str | None]:
    token, _comment = _split_comment(line)
    value, warning = parse_network(token)
    return token, value, warning


def parse_asn(text: str) -> int:
    """`AS36492`, `as36492` or `36492` -> 36492."""
    digits = text[2:] if text[:2].upper() == "AS" else text
    if not digits.isascii() or not digits.isdigit() or int(digits) > 0xFFFFFFFF:
        raise ValueError(f"not an AS number: {text!r} (write AS64500 or 64500)")
    return int(digits)


def _as_numbers(line: str) -> tuple[str, Any, str | None]:
    token, _comment = _split_comment(line)
    return token, parse_asn(token), None


def _regex(line: str) -> tuple[str, Any, str | None]:
    # the whole line is the pattern (upstream compiled the raw line); surrounding
    # whitespace is never meant as part of a pattern
    return line, line, None


def _country(line: str) -> tuple[str, Any, str | None]:
    code = line.strip()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise ValueError(f"not a two-letter ISO 3166 country code: {code!r}")
    return code, code.upper(), None


def _entity(line: str) -> tuple[str, Any, str | None]:
    if any(c.isspace() for c in line):
        raise ValueError(f"an entity handle has no spaces: {line!r}")
    return line, line.upper(), None


def _geo_id(line: str) -> tuple[str, Any, str | None]:
    if not line.isascii() or not line.isdigit():
        raise ValueError(f"not a numeric GeoNames id: {line!r}")
    return line, int(line), None


def _coordinates(line: str) -> tuple[str, Any, str | None]:
    fields = [f.strip() for f in line.split(",")]
    if len(fields) not in (3, 4):
        raise ValueError(f"expected latitude,longitude,radius_km[,intersection]: {line!r}")
    try:
        lat, lon, radius = (float(f) for f in fields[:3])
        intersection = float(fields[3]) if len(fields) == 4 else 1.0
    except ValueError:
        raise ValueError(f"not a number in {line!r}") from None
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise ValueError(f"latitude must be -90..90 and longitude -180..180: {line!r}")
    if not radius > 0.0 or radius > 20038.0:  # also rejects NaN
        raise ValueError(f"radius must be 0 < km <= 20038: {line!r}")
    if not intersection >= 0.0:
        raise ValueError(f"intersection must be >= 0: {line!r}")
    return line, (lat, lon, radius, intersection), None


PARSERS = {
    "ip_networks": _ip_networks,
    "reverse_hostname": _regex,
    "network_name": _regex,
    "network_cc": _country,
    "entities": _entity,
    "as_numbers": _as_numbers,
    "as_names": _regex,
    "as_cc": _country,
    "geo_location_ids": _geo_id,
    "coordinates": _coordinates,
    "countries": _country,  # allow lists only
}


def parse_list(
    kind: str, text: str, filename: str, *, validate_regex: bool = True, first_line: int = 1
) -> tuple[list[Entry], list[Problem]]:
    """Parse one list file's text. Bad lines become problems (`file:line`) and are skipped.

    `validate_regex=False` skips compiling patterns (they are compiled lazily when used);
    `check-config` and the cache fill always validate.
    """
    parser = PARSERS[kind]
    entries: list[Entry] = []
    problems: list[Problem] = []
    # split on LF only: str.splitlines() also splits on form feed, NEL, U+2028 ... and
    # would shift every later file:line in the problems an admin is pointed at
    for number, raw in enumerate(text.split("\n"), first_line):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if kind not in REGEX_KINDS:
            # "Comments after the entry are supported" (upstream's list headers): no entry
            # of these kinds can contain "#". A pattern keeps it, as upstream's re did.
            line = line.split("#", 1)[0].rstrip()
        hint = None
        future: list[str] = []
        try:
            shown, value, warning = parser(line)
            if validate_regex and kind in REGEX_KINDS and _fast_form(value) is None:
                # a `.*literal` form always compiles (tests/unit/test_lists.py), and has no
                # hint: validating it would import `re` for nothing on a cache rebuild
                _compile(value, future)
                hint = required_literal(value)
        except ValueError as e:  # _compile turns re.error into "bad regular expression: ..."
            problems.append(Problem(f"{filename}:{number}", f"{kind}: {e}; line skipped"))
            continue
        if warning:
            problems.append(Problem(f"{filename}:{number}", f"{kind}: {warning}", "warning"))
        for message in future:
            problems.append(Problem(f"{filename}:{number}", f"{kind}: {message} (Python's FutureWarning: a later "
                                    "Python may read this pattern differently; escape the '[' or the doubled "
                                    "character to keep today's meaning)", "warning"))
        entries.append(Entry(filename, number, shown, value, hint))
    return entries, problems


# ---------------------------------------------------------------------------
# regex matching: lazy compile, string fast path


# ---------------------------------------------------------------------------
# files, cache, per-login loading


def _cache_file(cache_dir: str, kind: str, path: str) -> str:
    return paths.join(cache_dir, f"{kind}-{private_file.name_hash(path)}.marshal")


def _read_cache(
    cache_dir: str, kind: str, path: str, st: os.stat_result
) -> tuple[list[Entry] | IndexedNetworks, list[Problem]] | None:
    data = private_file.load(_cache_file(cache_dir, kind, path))
    try:
        if (
            type(data) is not dict
            or data.get("format") != CACHE_FORMAT
            or data.get("path") != path
            or data.get("kind") != kind
            or data.get("signature") != stat_signature(st)
        ):
            return None
        # marshal keeps tuples: the values come back as parsed (no list -> tuple pass)
        entries = [Entry(path, line, text, value, hint) for line, text, value, hint in data["entries"]]
        problems = [Problem(where, message, level) for where, message, level in data["problems"]]
        if data.get("index") is not None:
            index = NetworkIndex.from_tables(data["index"], len(entries))
            if index is None:
                return None  # damaged: parse the file instead
            indexed = IndexedNetworks(entries)
            indexed.networks = index
            return indexed, problems
        return entries, problems
    except (ValueError, KeyError, TypeError):
        return None  # stale or damaged: parse the file instead


def _write_cache(
    cache_dir: str, kind: str, path: str, st: os.stat_result, entries: list[Entry], problems: list[Problem]
) -> None:
    import time  # loaded already: only when a cache is written

    if max(st.st_mtime_ns, st.st_ctime_ns) >= time.time_ns() - RACY_NS:
        # changed within the file system's time granularity: a second write of the same size
        # in that tick would keep the signature, so this parse is not kept (as load_kept)
        return
    data = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "path": path,
        "signature": stat_signature(st),
        "entries": [(e.line, e.text, e.value, e.hint) for e in entries],
        "problems": [(p.where, p.message, p.level) for p in problems],
        "index": (NetworkIndex(tuple(entries)).tables()
                  if kind == "ip_networks" and len(entries) >= INDEX_MIN_ENTRIES else None),
    }
    private_file.store(_cache_file(cache_dir, kind, path), data)


class ListUnreadable(Exception):
    """A configured list file that cannot be used at all: missing, unreadable for this
    user, not a regular file, or too large. Never an empty list: `enforce_readable`
    refuses the login (or, with `[audit] unreadable_list = "skip"`, says so on every login)."""

    def __init__(self, kind: str, path: str, reason: str, role: str = "deny"):
        self.kind = kind
        self.path = path
        self.reason = reason
        self.role = role  # "deny" or "allow"
        super().__init__(f"{role} list {kind} {path}: {reason}")


def _unreadable_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, PermissionError):
        import pwd  # only on this error path

        try:
            name = pwd.getpwuid(posix.geteuid()).pw_name
        except KeyError:
            name = "?"
        return f"not readable by uid {posix.geteuid()} ({name})"
    return f"cannot read: {error.strerror or type(error).__name__}"


def read_file(
    kind: str, path: str, *, cache_dir: str | None = None, validate_regex: bool = False, role: str = "deny"
) -> tuple[list[Entry] | IndexedNetworks, list[Problem]]:
    """Read and parse one list file; raises ListUnreadable when the file cannot be used.
    A long ip_networks list read from the cache comes as `IndexedNetworks`.

    Opened non-blocking so that a FIFO in the list's place cannot hang the login; only a
    regular file is a list.
    """
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except OSError as e:
        raise ListUnreadable(kind, path, _unreadable_reason(e), role) from None
    try:
        st = posix.fstat(fd)
        if not S_ISREG(st.st_mode):
            what = "a directory" if S_ISDIR(st.st_mode) else "not a regular file"
            raise ListUnreadable(kind, path, what, role)
        if cache_dir is not None:
            cached = _read_cache(cache_dir, kind, path, st)
            if cached is not None:
                return cached
        if st.st_size > MAX_LIST_BYTES:
            raise ListUnreadable(kind, path, f"larger than {MAX_LIST_BYTES} bytes", role)
        chunks = []
        while chunk := posix.read(fd, 1 << 20):
            chunks.append(chunk)
        raw = b"".join(chunks)
    except OSError as e:
        raise ListUnreadable(kind, path, _unreadable_reason(e), role) from None
    finally:
        posix.close(fd)
    text = raw.decode("utf-8", "replace")
    # the cached form must hold only patterns that compile, so a cache fill validates
    entries, problems = parse_list(kind, text, path, validate_regex=validate_regex or cache_dir is not None)
    if cache_dir is not None:
        _write_cache(cache_dir, kind, path, st, entries, problems)
    return entries, problems


def load_file(
    kind: str, path: str, *, cache_dir: str | None = None, validate_regex: bool = False
) -> tuple[list[Entry], list[Problem]]:
    """`read_file` for `check-config`: a file that cannot be used is one error problem."""
    try:
        return read_file(kind, path, cache_dir=cache_dir, validate_regex=validate_regex)
    except ListUnreadable as e:
        return [], [Problem(path, f"{kind}: {e.reason}; audited logins fail until it is fixed "
                                  '(or set [audit] unreadable_list = "skip")')]


def enforce_readable(unreadable: list[ListUnreadable], action: str, stderr: TextIO | None) -> None:
    """What a login does about list files it could not read (`[audit] unreadable_list`).

    "tempfail": raise ListsUnreadable (a TempFail) naming every such list, file and reason
    (exit 111, one line). "skip": one line on `stderr` saying the login goes on without them. A list that
    cannot be read is never taken for an empty one without a word.
    """
    if not unreadable:
        return
    what = "; ".join(str(e) for e in unreadable)
    if action == "skip":
        from ..core import say

        say(stderr, f"{what}; going on without it ([audit] unreadable_list = skip)")
        return
    from ..core import ListsUnreadable

    raise ListsUnreadable(f"{what}; audited logins fail until it is fixed ([audit] unreadable_list = tempfail)")


def _cache_dir(config: Config) -> str | None:
    cache = config.audit.cache
    if not cache.enabled:
        return None
    return paths.join(config.resolve(cache.path), "lists")


def _parse_inline(kind: str, values: tuple[str, ...], where: str) -> tuple[list[Entry], list[Problem]]:
    return parse_list(kind, "\n".join(values), where, validate_regex=True)


# ---------------------------------------------------------------------------
# kept warm (`serve`): parsed once, compiled once, read again when the file changes

# (kind, path) -> (stat signature, entries, problems); None while off. The per-login program
# leaves it off: it reads each list once, and compiling a matcher it uses once would cost
# more than the scan it saves (and import `re`).
_kept: dict[tuple[str, str], tuple[tuple[int, ...], tuple[Entry, ...], tuple[Problem, ...]]] | None = None
_kept_inline: dict[tuple[str, tuple[str, ...], str], tuple[tuple[Entry, ...], tuple[Problem, ...]]] = {}
# serve: the last `Lists` that `load_lists` built from kept files only, and until when
# (filestat's clock) every stat it rests on is reused: (config, use_cache, filestat
# generation, until, lists).
# Until then a new build would look at the same stats and the same kept files and give
# the same lists, so it is handed out again (one build looks at every list file: about
# 0.1 ms per request). Its readers never change a `Lists`.
_snapshot: tuple[Any, bool, int, float, Lists] | None = None
# A file changed less than this long ago is not kept (read again on the next load): file
# times are coarse (a few ms), so a second write of the same size within that tick would
# leave the stat signature unchanged (git's "racily clean" problem).
RACY_NS = 1_000_000_000


def keep_warm(on: bool = True) -> None:
    """Keep lists parsed and compiled in this process from now on (`serve`); `False`
    forgets them and goes back to reading each file on every load."""
    global _kept, _snapshot
    _kept = {} if on else None
    _kept_inline.clear()
    _snapshot = None


def stat_signature(st: os.stat_result) -> tuple[int, ...]:
    # ctime and inode too: a chmod (readable or not) or a new file renamed into place
    # changes them even when size and mtime stay the same
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_kept(kind: str, path: str, *, cache_dir: str | None = None,
              role: str = "deny") -> tuple[tuple[Entry, ...], list[Problem]]:
    """`read_file`, through the copy kept in memory once `keep_warm()` is on: the file is
    read and parsed again only when its stat signature changes. A file changed within
    `RACY_NS` is not kept (read again on the next load); one that cannot be used raises
    ListUnreadable on every load, as `read_file` does, and is never kept."""
    entries, problems, _ = _load_kept(kind, path, cache_dir=cache_dir, role=role)
    return entries, problems


def _load_kept(kind: str, path: str, *, cache_dir: str | None,
               role: str) -> tuple[tuple[Entry, ...], list[Problem], float | None]:
    """`load_kept`, and for the kept copy until when (filestat's clock) the stat it was
    checked against stands; None when it is read for this load only, as every load of the
    per-login program is."""
    kept = _kept
    if kept is None:
        entries, problems = read_file(kind, path, cache_dir=cache_dir, role=role)
        return entries if isinstance(entries, tuple) else tuple(entries), problems, None  # keep an index
    from ..filestat import stat_until  # serve: a stat per file and interval, not per request

    st, until = stat_until(path)
    if st is None:
        entries, problems = read_file(kind, path, cache_dir=cache_dir, role=role)  # raises, saying why
        return tuple(entries), problems, None
    signature = stat_signature(st)
    known = kept.get((kind, path))
    if known is not None and known[0] == signature:
        return known[1], list(known[2]), until
    import time

    from .matchers import CompiledList

    kept.pop((kind, path), None)
    entries, problems = read_file(kind, path, cache_dir=cache_dir, validate_regex=True, role=role)
    compiled = CompiledList(kind, entries)
    if max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - RACY_NS:
        kept[(kind, path)] = (signature, compiled, tuple(problems))
        return compiled, problems, until
    return compiled, problems, None


def _inline_kept(kind: str, values: tuple[str, ...], where: str) -> tuple[tuple[Entry, ...], list[Problem]]:
    """`_parse_inline`, kept while warm (the values come from the config: its reload makes new keys)."""
    if _kept is None:
        entries, problems = _parse_inline(kind, values, where)
        return tuple(entries), problems
    key = (kind, tuple(values), where)
    known = _kept_inline.get(key)
    if known is None:
        from .matchers import CompiledList

        entries, problems = _parse_inline(kind, values, where)
        if len(_kept_inline) > 4096:  # configs with other users' lists replaced many times over
            _kept_inline.clear()
        known = _kept_inline[key] = (CompiledList(kind, entries), tuple(problems))
    return known[0], list(known[1])


def load_lists(config: Config, *, use_cache: bool = True) -> Lists:
    """Every configured deny and allow list, read now (or kept, see `keep_warm`). Never raises.

    While warm (`serve`), the same `Lists` is returned again as long as the file stats it
    was built on are reused (filestat: `serve --file-check-interval`), so a changed file
    takes effect as before, at the latest one interval after the change. Lists built
    with a file that is not kept (unreadable, or changed within `RACY_NS`) are not reused."""
    global _snapshot
    snapshot = _snapshot
    if snapshot is not None and snapshot[0] is config and snapshot[1] is use_cache:
        from ..filestat import stands

        if stands(snapshot[2], snapshot[3]):
            return snapshot[4]
    audit = config.audit
    cache_dir = _cache_dir(config) if use_cache else None
    lists = Lists()
    reusable = _kept is not None
    if reusable:
        from ..filestat import generation

        built_on = generation()  # taken before the stats: a newer one never passes for it
    until = float("inf")  # the earliest end of the stats the kept copies were checked against
    for role, files, kinds, into in (("deny", audit.lists, LIST_KINDS, lists.deny),
                                     ("allow", audit.allow, ALLOW_KINDS, lists.allow)):
        for kind in kinds:
            if kind in files:
                path = config.resolve(files[kind])
                try:
                    entries, problems, kept_until = _load_kept(kind, path, cache_dir=cache_dir, role=role)
                except ListUnreadable as e:
                    lists.unreadable.append(e)  # the caller decides: never read as an empty list
                    reusable = False
                    continue
                into[kind] = entries
                lists.problems.extend(problems)
                if kept_until is None:
                    reusable = False
                else:
                    until = min(until, kept_until)
    for user, allow in audit.allow_users.items():
        per_user: dict[str, tuple[Entry, ...]] = {}
        for kind in ALLOW_KINDS:
            values = getattr(allow, kind)
            if values:
                entries, problems = _inline_kept(kind, values, f"[audit.allow.users.{user}] {kind}")
                per_user[kind] = entries
                lists.problems.extend(problems)
        lists.user_allow[user.lower()] = per_user
    if reusable:
        from ..filestat import stands

        if stands(built_on, until):
            _snapshot = (config, use_cache, built_on, until, lists)
    return lists


def check_lists(config: Config) -> list[Problem]:
    """Everything `check-config` reports about list files and the networks in [audit]."""
    audit = config.audit
    problems: list[Problem] = []
    for kind in LIST_KINDS:
        if kind in audit.lists:
            problems += load_file(kind, config.resolve(audit.lists[kind]), validate_regex=True)[1]
    for kind in ALLOW_KINDS:
        if kind in audit.allow:
            problems += load_file(kind, config.resolve(audit.allow[kind]), validate_regex=True)[1]
    for user, allow in audit.allow_users.items():
        for kind in ALLOW_KINDS:
            problems += _parse_inline(kind, getattr(allow, kind), f"[audit.allow.users.{user}] {kind}")[1]
    problems += _parse_inline("ip_networks", audit.ignore_networks, "[audit] ignore_networks")[1]
    problems += _parse_inline("ip_networks", tuple(audit.local_networks), "[audit] local_networks")[1]
    return problems
