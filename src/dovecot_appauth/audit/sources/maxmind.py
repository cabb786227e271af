"""MaxMind City and ASN lookups with `maxminddb`'s pure-Python reader (memory-mapped).

Not geoip2: it adds model classes and imports aiohttp/requests machinery we never use;
the raw records have the same keys. Each database is optional. A configured file that is
missing or unreadable makes its part unknown and is reported; when no configured file is
readable the whole source raises SourceUnavailable. Results are cached by enrich.py until
a file's `file_signature` changes.
"""

from __future__ import annotations

from typing import Any

from ..cache import file_signature
from ..facts import GeoName, MaxMindFacts
from . import SourceUnavailable

__all__ = ["MaxMindUnavailable", "file_signature", "lookup", "lookup_detailed"]


class MaxMindUnavailable(SourceUnavailable):
    """No configured MaxMind database could be read."""


def _import_reader() -> tuple[Any, Any, Any, Any]:
    """(Reader, Decoder, InvalidDatabaseError, MODE_MMAP) from maxminddb's own modules.

    The package's `__init__` imports `importlib.metadata` for its `__version__` (with it
    email, zipfile, csv and pathlib: about a third of a cold login's time) and only
    re-exports what its submodules define. So in the per-login program (`per_login_process`),
    which exits after its one login, the submodules are imported under a bare package
    module (the package's own path, no `__init__` run) that is dropped right after. If
    that fails (another maxminddb layout), and in every other process (serve, the CLI,
    where the import cost does not matter), the package is imported the usual way.
    """
    import sys

    from ... import per_login_process

    if "maxminddb" not in sys.modules and per_login_process:
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec("maxminddb")
        if spec is not None and spec.submodule_search_locations:
            shell = type(sys)("maxminddb")
            shell.__path__ = list(spec.submodule_search_locations)
            shell.__package__ = "maxminddb"
            sys.modules["maxminddb"] = shell
            try:
                from maxminddb.const import MODE_MMAP
                from maxminddb.decoder import Decoder
                from maxminddb.errors import InvalidDatabaseError
                from maxminddb.reader import Reader

                return Reader, Decoder, InvalidDatabaseError, MODE_MMAP
            except Exception:  # any surprise (another layout): the usual import below
                for name in [m for m in sys.modules if m.startswith("maxminddb.")]:
                    del sys.modules[name]
            finally:
                if sys.modules.get("maxminddb") is shell:
                    del sys.modules["maxminddb"]
    import maxminddb
    from maxminddb.decoder import Decoder

    return maxminddb.Reader, Decoder, maxminddb.InvalidDatabaseError, maxminddb.MODE_MMAP


# MODE_MMAP: the pure-Python reader over a memory map (see _reader)
Reader, Decoder, InvalidDatabaseError, MODE_MMAP = _import_reader()


def _name(rec: dict[str, Any] | None, code_key: str = "iso_code") -> GeoName:
    if not rec:
        return GeoName()
    return GeoName(rec.get("geoname_id"), (rec.get("names") or {}).get("en"), rec.get(code_key))


# path -> (file_signature, reader): `serve` keeps each database open between requests and
# reopens it when the file changes (geoipupdate renames a new file into place, so a reader
# of the old one stays valid until it is dropped). The per-login program does one lookup.
_readers: dict[str, tuple[str, Any]] = {}


def _reader(path: str) -> Any:
    signature = file_signature(path)
    known = _readers.get(path)
    if known is not None and known[0] == signature:
        return known[1]
    # MODE_MMAP: the pure-Python reader. maxminddb 3.2's C extension crashes the
    # process (SIGSEGV, no stderr line) on a .mmdb with one corrupt byte; this reader
    # raises InvalidDatabaseError instead, and one lookup per cache miss is cheap.
    reader = Reader(path, MODE_MMAP)
    _check_metadata_complete(path)
    # the replaced reader is not closed: another thread may be reading it; dropping the
    # last reference unmaps it
    _readers[path] = (signature, reader)
    return reader


# The MaxMind DB format (spec 2.0, "Database Metadata"): the file ends with the metadata
# section, found as the last b"\xab\xcd\xefMaxMind.com" within its last 128 KiB and running
# to the end of the file; search tree, 16-byte separator and data section all come before
# it. So a truncated download always loses the metadata's tail first, and nothing may be
# cut. libmaxminddb (the C extension) refuses a file whose metadata runs past its end; the
# pure-Python decoder slices past the end without a word and answers with a shortened
# value (a file 4 bytes short decodes build_epoch from 0 bytes). We check the bounds the
# same way, so both readers refuse the same truncated files.
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_MAX_SIZE = 128 * 1024


def _check_metadata_complete(path: str) -> None:
    """Raise InvalidDatabaseError when the metadata map does not end inside the file."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - _METADATA_MAX_SIZE))
        tail = f.read()
    start = tail.rfind(_METADATA_MARKER)
    if start == -1:
        raise InvalidDatabaseError("no metadata section (truncated file?)")
    start += len(_METADATA_MARKER)
    _, end = Decoder(tail, start).decode(start)  # raises InvalidDatabaseError on bad data
    if end > len(tail):
        raise InvalidDatabaseError(
            f"the metadata section is {end - len(tail)} byte(s) short: truncated file"
        )


def _read(path: str, ip: str) -> dict[str, Any] | None:
    try:
        rec = _reader(path).get(ip)
    except (OSError, ValueError, InvalidDatabaseError) as e:  # ValueError: mmap of an empty file
        _readers.pop(path, None)
        raise MaxMindUnavailable(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    return rec if isinstance(rec, dict) else None


def lookup_detailed(ip: str, city_path: str | None, asn_path: str | None) -> tuple[MaxMindFacts, list[str]]:
    """The facts from every readable database plus one problem line per unreadable one."""
    problems: list[str] = []
    city: dict[str, Any] = {}
    asn: dict[str, Any] = {}
    ok = 0
    for path, target in ((city_path, city), (asn_path, asn)):
        if not path:
            continue
        try:
            target.update(_read(path, ip) or {})
            ok += 1
        except MaxMindUnavailable as e:
            problems.append(str(e))
    if not ok:
        raise MaxMindUnavailable("; ".join(problems) or "no MaxMind database configured")
    loc = city.get("location") or {}
    facts = MaxMindFacts(
        city=_name(city.get("city")),
        subdivisions=tuple(_name(s) for s in city.get("subdivisions") or ()),
        country=_name(city.get("country")),
        continent=_name(city.get("continent"), "code"),
        registered_country=_name(city.get("registered_country")),
        represented_country=_name(city.get("represented_country")),
        latitude=loc.get("latitude"),
        longitude=loc.get("longitude"),
        accuracy_radius_km=loc.get("accuracy_radius"),
        postal_code=(city.get("postal") or {}).get("code"),
        asn=asn.get("autonomous_system_number"),
        as_org=asn.get("autonomous_system_organization"),
    )
    return facts, problems


def lookup(ip: str, city_path: str | None, asn_path: str | None) -> MaxMindFacts:
    """City and ASN facts for `ip`; an address in neither database gives empty facts."""
    return lookup_detailed(ip, city_path, asn_path)[0]
