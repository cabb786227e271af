"""IP addresses and networks as integers, for the per-login path (no `ipaddress`).

What belongs here: turning address and network texts into `(version, int)` and
`(version, network int, prefix length)` with exactly the acceptance of the `ipaddress`
call each caller used before, containment on integers, the text `str(ipaddress.ip_address)`
gives, and whether an address is globally reachable. What does not: lists (`lists.py`),
the rules that use these (`rules.py`, `policy.py`, `login.py`).

Theory of operation:
- Importing `ipaddress` cost a warm login about 5 M instructions (of ~100 M). Here an
  IPv4 text (the common case) is parsed in Python (strict dotted quad, no leading zeros,
  as `ipaddress`); a text with a `:` by `_socket.inet_pton` (the C module, imported only
  then: `socket.py` would import `enum` and more, and `_socket` alone costs ~0.7 M),
  which accepts what `ipaddress` accepts (RFC 4291, an embedded dotted quad without
  leading zeros). `tests/unit/test_ipnum.py` checks both against `ipaddress` with generated texts.
- `is_global` (IANA special-purpose registries) stays the standard library's decision:
  `global_table()` derives sorted integer intervals from `ipaddress` itself, once, when the
  config cache is written (config.py stores them next to the parsed TOML, keyed by the
  interpreter's version) and `use_global_table` hands them to a warm login. Without a
  table (no config cache, `serve`, the admin CLI) it is derived on first use, which
  imports `ipaddress`: same answers, slower.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Iterable

# Bump when the form of `global_table()` changes (it is stored in the config cache).
TABLE_FORMAT = 1
_BITS = {4: 32, 6: 128}
_MAPPED_PREFIX = 0xFFFF << 32  # ::ffff:0:0/96


def address(text: str) -> tuple[int, int] | None:
    """`ipaddress.ip_address(text)` as `(version, int)`, None where it raises ValueError.

    Like `ipaddress`, an IPv6 text may carry a zone (`fe80::1%eth0`, not empty, one `%`),
    which is ignored; an IPv4 text may not.
    """
    if "%" in text:
        text, _, zone = text.partition("%")
        if not zone or "%" in zone or "/" in zone:  # IPv6Address refuses a "/" anywhere
            return None
    elif ":" not in text:  # no IPv6 text lacks a colon
        value = parse_ipv4(text)
        return None if value is None else (4, value)
    value = _ipv6(text)
    return None if value is None else (6, value)


def parse_ipv4(text: str) -> int | None:
    """A strict dotted quad as `ipaddress.IPv4Address` takes it (no leading zeros), else None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not part.isascii() or not part.isdigit() or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = (value << 8) | octet
    return value


def _ipv6(text: str) -> int | None:
    if not text.isascii():  # inet_pton would see UTF-8 bytes; ipaddress refuses these too
        return None
    from _socket import AF_INET6, inet_pton  # the C module, only for IPv6 texts

    try:
        return int.from_bytes(inet_pton(AF_INET6, text), "big")
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def unmapped(addr: tuple[int, int]) -> tuple[int, int]:
    """An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as its IPv4 address (`ipv4_mapped`)."""
    version, value = addr
    if version == 6 and value >> 32 == 0xFFFF:
        return 4, value & 0xFFFFFFFF
    return addr


def is_mapped(addr: tuple[int, int]) -> bool:
    return addr[0] == 6 and addr[1] >> 32 == 0xFFFF


def network(text: str) -> tuple[int, int, int]:
    """`ipaddress.ip_network(text, strict=False)` as `(version, network int, prefix)`.

    Raises ValueError where `ipaddress` does. IPv4 takes a prefix length, a netmask or a
    hostmask after the `/`; IPv6 a prefix length (and, as `ipaddress`, a zone, ignored).
    """
    addr_text, slash, mask_text = text.partition("/")
    if "/" in mask_text:
        raise ValueError(f"not an IP network: {text!r}")
    if "%" not in addr_text:
        value = parse_ipv4(addr_text)
        if value is not None:
            prefix = _v4_prefix(mask_text) if slash else 32
            if prefix is not None:
                return _masked(4, value, prefix)
    addr = address(addr_text)
    if addr is None or addr[0] != 6:
        raise ValueError(f"not an IP network: {text!r}")
    prefix = _prefix_number(mask_text, 128) if slash else 128
    if prefix is None:
        raise ValueError(f"not an IP network: {text!r}")
    return _masked(6, addr[1], prefix)


def _prefix_number(text: str, bits: int) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    prefix = int(text)
    return prefix if prefix <= bits else None


def _v4_prefix(text: str) -> int | None:
    """An IPv4 network's `/` part: a prefix length, else a netmask, else a hostmask."""
    prefix = _prefix_number(text, 32)
    if prefix is not None:
        return prefix
    mask = parse_ipv4(text)
    if mask is None:
        return None
    for candidate in (mask, mask ^ 0xFFFFFFFF):
        ones = 32 - _trailing_zeros(candidate, 32)
        if candidate >> (32 - ones) == (1 << ones) - 1:
            return ones
    return None


def _trailing_zeros(value: int, bits: int) -> int:
    return bits if value == 0 else (value & -value).bit_length() - 1


def _masked(version: int, value: int, prefix: int) -> tuple[int, int, int]:
    shift = _BITS[version] - prefix
    return version, (value >> shift) << shift, prefix


def contains(net: tuple[int, int, int], addr: tuple[int, int]) -> bool:
    """Whether the network `(version, network int, prefix)` holds `addr` (same family only)."""
    version, value, prefix = net
    if version != addr[0]:
        return False
    shift = _BITS[version] - prefix
    return addr[1] >> shift == value >> shift


def first_containing(nets: Iterable[tuple[int, int, int] | None], addr: tuple[int, int]) -> int | None:
    """Index of the first network holding `addr` (None entries never do), else None."""
    for i, net in enumerate(nets):
        if net is not None and contains(net, addr):
            return i
    return None


def text(addr: tuple[int, int]) -> str:
    """`str(ipaddress.ip_address(...))` of `addr` (without a zone)."""
    version, value = addr
    if version == 4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    if value >> 32 == 0xFFFF:  # how a mapped address is written changed in Python 3.13
        import ipaddress

        return str(ipaddress.IPv6Address(value))
    hextets = [f"{(value >> shift) & 0xFFFF:x}" for shift in range(112, -16, -16)]
    # ipaddress._compress_hextets: the longest run of two or more zero groups, the first on a tie
    best_start, best_len, start, length = -1, 0, -1, 0
    for i, h in enumerate(hextets):
        if h == "0":
            length += 1
            if start == -1:
                start = i
            if length > best_len:
                best_start, best_len = start, length
        else:
            start, length = -1, 0
    if best_len > 1:
        end = best_start + best_len
        if end == 8:
            hextets.append("")
        hextets[best_start:end] = [""]
        if best_start == 0:
            hextets.insert(0, "")
    return ":".join(hextets)


# --- is_global -----------------------------------------------------------------------------

# (version -> (interval starts, verdict of each interval)); None until used or handed over
_table: dict[int, tuple[tuple[int, ...], tuple[bool, ...]]] | None = None


def global_table() -> dict[int, tuple[tuple[int, ...], tuple[bool, ...]]] | None:
    """`is_global or in 100.64.0.0/10` (what rules.py calls globally reachable) per family, as
    sorted intervals, derived from this interpreter's `ipaddress`; None if the derivation
    does not check out (then `is_global` asks `ipaddress` itself).

    The interval edges are those of every network `ipaddress` keeps in its constants; the
    verdict of each interval is `ipaddress`'s at its first address, and is checked at its
    last one too. Plain data, for marshal.
    """
    import ipaddress

    shared = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598: counted as global here
    out: dict[int, tuple[tuple[int, ...], tuple[bool, ...]]] = {}
    for version, constants, cls in ((4, ipaddress._IPv4Constants, ipaddress.IPv4Address),  # type: ignore[attr-defined]
                                    (6, ipaddress._IPv6Constants, ipaddress.IPv6Address)):  # type: ignore[attr-defined]
        edges = {0}
        for value in vars(constants).values():
            for net in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and net.version == version:
                    edges.add(int(net.network_address))
                    edges.add(int(net.broadcast_address) + 1)
        if version == 4:
            edges.update((int(shared.network_address), int(shared.broadcast_address) + 1))
        top = 1 << _BITS[version]
        starts = sorted(e for e in edges if e < top)
        starts_out: list[int] = []
        verdicts: list[bool] = []

        def reachable(value: int, cls: type = cls) -> bool:
            addr = cls(value)
            return addr.is_global or (addr.version == 4 and addr in shared)

        for i, start in enumerate(starts):
            last = (starts[i + 1] if i + 1 < len(starts) else top) - 1
            verdict = reachable(start)
            if reachable(last) != verdict:
                return None  # an edge we do not know of: let ipaddress answer
            if not verdicts or verdicts[-1] != verdict:
                starts_out.append(start)
                verdicts.append(verdict)
        out[version] = (tuple(starts_out), tuple(verdicts))
    return out


def use_global_table(table: object) -> bool:
    """Take a table stored by the config cache; False (and nothing changes) if it is not one."""
    global _table
    try:
        checked = {}
        for version in (4, 6):
            starts, verdicts = table[version]  # type: ignore[index]
            if (type(starts) is not tuple or type(verdicts) is not tuple or len(starts) != len(verdicts)
                    or not starts or starts[0] != 0 or not all(type(v) is bool for v in verdicts)
                    or not all(type(a) is int and a < b for a, b in zip(starts, (*starts[1:], 1 << 128),
                                                                         strict=True))):
                return False
            checked[version] = (starts, verdicts)
    except (KeyError, TypeError, ValueError):
        return False
    _table = checked
    return True


_fallback = False  # the derivation did not check out: ask ipaddress each time


def is_global(addr: tuple[int, int]) -> bool:
    """Globally reachable as rules.py judges it: `ipaddress`'s `is_global`, with
    100.64.0.0/10 counted as global. Pass an IPv4-mapped address unmapped."""
    global _table, _fallback
    if _table is None and not _fallback:
        table = global_table()
        if table is None:
            _fallback = True
        else:
            _table = table
    if _table is None:
        import ipaddress

        a = ipaddress.ip_address(addr[1]) if addr[0] == 4 else ipaddress.IPv6Address(addr[1])
        return a.is_global or (addr[0] == 4 and a in ipaddress.IPv4Network("100.64.0.0/10"))
    starts, verdicts = _table[addr[0]]
    value = addr[1]
    lo, hi = 0, len(starts)  # bisect_right, without importing _bisect for ~30 intervals
    while lo < hi:
        mid = (lo + hi) // 2
        if value < starts[mid]:
            hi = mid
        else:
            lo = mid + 1
    return verdicts[lo - 1]
