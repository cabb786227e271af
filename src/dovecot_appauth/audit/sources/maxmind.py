"""MaxMind City and ASN lookups with `maxminddb`.

Not geoip2: it adds model classes and imports aiohttp/requests machinery we never use;
the raw records have the same keys. Each database is optional. A configured file that is
missing or unreadable makes its part unknown and is reported: named in the problems and in
`MaxMindFacts.unavailable` (so the rule engine counts it as unknown, and enrich.py does not
cache that partial answer); when no configured file is readable the whole source raises
SourceUnavailable. Complete results are cached by enrich.py until a file's
`file_signature` changes.

Two readers of the same library:
- `serve`, the CLI and tests use maxminddb's pure-Python reader over a memory map
  (MODE_MMAP), kept open between requests. It raises InvalidDatabaseError on a damaged
  file, where maxminddb 3.2's C extension crashes the process (SIGSEGV, no stderr line).
- The per-login program (`per_login_process`), which exits after one login, asks the C
  extension in a forked child (`_lookup_in_child`). The pure reader's imports (typing,
  dataclasses with inspect, multiprocessing with socket and pickle) were most of a cold
  login; the extension needs only `ipaddress`. A child that a damaged file crashes takes
  only itself down: the lookup is then made again with the pure reader, in-process, and
  the crash is reported, so the outcome is the pure reader's, as in every other process.
"""

from __future__ import annotations

import os

from ..cache import file_signature
from ..facts import GeoName, MaxMindFacts, as_number
from . import SourceUnavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MaxMindUnavailable", "file_signature", "lookup", "lookup_detailed"]


class MaxMindUnavailable(SourceUnavailable):
    """No configured MaxMind database could be read."""


def _bare_package_import(names: tuple[str, ...]) -> list[Any] | None:
    """maxminddb's submodules `names`, imported without the package's `__init__`.

    The `__init__` imports `importlib.metadata` for its `__version__` (with it email,
    zipfile, csv and pathlib: about a third of a cold login's time) and only re-exports
    what its submodules define. So the submodules are imported under a bare package module
    (the package's own path, no `__init__` run) that is dropped right after. None when
    that fails (another maxminddb layout, no C extension): the caller takes the usual way.
    """
    import sys

    if "maxminddb" in sys.modules:
        return None
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("maxminddb")
    if spec is None or not spec.submodule_search_locations:
        return None
    shell = type(sys)("maxminddb")
    shell.__path__ = list(spec.submodule_search_locations)
    shell.__package__ = "maxminddb"
    sys.modules["maxminddb"] = shell
    try:
        from importlib import import_module

        return [import_module(f"maxminddb.{name}") for name in names]
    except Exception:  # any surprise (another layout): the usual import
        for name in [m for m in sys.modules if m.startswith("maxminddb.")]:
            del sys.modules[name]
        return None
    finally:
        if sys.modules.get("maxminddb") is shell:
            del sys.modules["maxminddb"]


_pure: tuple[Any, Any, Any, Any] | None = None


def _pure_reader() -> tuple[Any, Any, Any, Any]:
    """(Reader, Decoder, InvalidDatabaseError, MODE_MMAP) of the pure-Python reader.

    The per-login program imports its modules without the package's `__init__`
    (`_bare_package_import`); every other process (serve, the CLI, where the import cost
    does not matter) imports the package the usual way.
    """
    global _pure
    if _pure is None:
        from ... import per_login_process

        modules = _bare_package_import(("const", "decoder", "errors", "reader")) if per_login_process else None
        if modules is not None:
            const, decoder, errors, reader = modules
            _pure = (reader.Reader, decoder.Decoder, errors.InvalidDatabaseError, const.MODE_MMAP)
        else:
            import maxminddb
            from maxminddb.decoder import Decoder

            _pure = (maxminddb.Reader, Decoder, maxminddb.InvalidDatabaseError, maxminddb.MODE_MMAP)
    return _pure


def __getattr__(name: str) -> Any:
    # the pure reader's names, as this module had them, imported on first use
    names = ("Reader", "Decoder", "InvalidDatabaseError", "MODE_MMAP")
    if name in names:
        return _pure_reader()[names.index(name)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    reader_class, _, _, mode_mmap = _pure_reader()
    reader = reader_class(path, mode_mmap)
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
    _, decoder_class, invalid_database_error, _ = _pure_reader()
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - _METADATA_MAX_SIZE))
        tail = f.read()
    start = tail.rfind(_METADATA_MARKER)
    if start == -1:
        raise invalid_database_error("no metadata section (truncated file?)")
    start += len(_METADATA_MARKER)
    _, end = decoder_class(tail, start).decode(start)  # raises InvalidDatabaseError on bad data
    if end > len(tail):
        raise invalid_database_error(
            f"the metadata section is {end - len(tail)} byte(s) short: truncated file"
        )


def _read(path: str, ip: str) -> dict[str, Any] | None:
    try:
        rec = _reader(path).get(ip)
    except (OSError, ValueError, _pure_reader()[2]) as e:  # ValueError: mmap of an empty file
        _readers.pop(path, None)
        raise MaxMindUnavailable(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    return rec if isinstance(rec, dict) else None


# What the per-login program asks a child for when no timeout is given (enrich.py passes
# what is left of [audit] deadline)
_CHILD_TIMEOUT = 5.0
_extension_module: Any = None


def _extension() -> Any:
    """maxminddb's C extension module, or None (not built here, another layout)."""
    global _extension_module
    if _extension_module is None:
        import sys

        if "maxminddb" in sys.modules:  # imported already (not by the per-login program's own path)
            try:
                from maxminddb import extension
            except ImportError:
                extension = False
            _extension_module = extension
        else:
            modules = _bare_package_import(("extension",))
            _extension_module = modules[0] if modules else False
    return _extension_module or None


def _child_lookups(extension: Any, ip: str, paths: list[str], out: int) -> None:
    """In the child: b"S" before each file, then b"R" and the marshalled results."""
    import marshal

    results: list[tuple[bool, Any]] = []
    for path in paths:
        os.write(out, b"S")  # so the parent knows which file a crash happened in
        try:
            reader = extension.Reader(path)
            try:
                rec = reader.get(ip)
            finally:
                reader.close()
            results.append((True, rec if isinstance(rec, dict) else None))
        except (OSError, ValueError, RuntimeError) as e:  # InvalidDatabaseError is a RuntimeError
            results.append((False, f"{path}: {getattr(e, 'strerror', None) or e}"))
    data = b"R" + marshal.dumps(results)
    while data:
        data = data[os.write(out, data):]


def _child_alone(keep: int, timeout: float) -> int:
    """In the child, first: hold none of the login's descriptors and end on its own.

    Dovecot reads the reply pipe (fd 4) until every copy is closed: a child still holding
    it after the login exits would hold the login. So every descriptor but the result
    pipe is closed and 0-2 point at /dev/null (nothing from the child reaches Dovecot's
    log, a crash dump say: the parent reports). The alarm ends a child the parent could no
    longer kill (SIGALRM's default action; Python installs no handler for it). Returns the
    result pipe's descriptor (moved above 2 when the login was started without one of 0-2).
    """
    import _signal
    import sys

    if keep < 3:
        import fcntl

        keep = fcntl.fcntl(keep, fcntl.F_DUPFD, 3)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    os.closerange(3, keep)  # /dev/null's own descriptor too, when it is above 2
    os.closerange(keep + 1, 1 << 20)
    if "faulthandler" in sys.modules:  # enabled by a test runner, on its own copy of fd 2
        sys.modules["faulthandler"].disable()
    _signal.alarm(int(timeout) + 2)
    return keep


def _lookup_in_child(ip: str, paths: list[str], timeout: float) -> tuple[list[tuple[bool, Any]] | None, str]:
    """Each file's (True, record) or (False, problem) from the C extension in a forked child.

    (None, why) when there is no answer to use: no extension, no child, or the child died
    (a damaged file can crash the extension); the caller then reads with the pure reader.
    TimeoutError when the child does not finish within `timeout` (it is killed).
    """
    extension = _extension()
    if extension is None:
        return None, ""
    import select
    import time

    end = time.monotonic() + timeout
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(read_end)
        os.close(write_end)
        return None, f"cannot start the C reader's process ({e.strerror or e}): read with the pure-Python reader"
    if pid == 0:  # the child: only the extension, then _exit (no atexit, no buffers of the parent)
        code = 1
        try:
            _child_lookups(extension, ip, paths, _child_alone(write_end, timeout))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, 9)  # SIGKILL (the signal module would import enum)
                os.waitpid(pid, 0)
                raise TimeoutError(f"the MaxMind lookup did not finish within {timeout:.2g}s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    started = len(data) - len(data.lstrip(b"S"))
    if data[started:started + 1] == b"R" and status == 0:
        import marshal

        # written by our own child through a pipe only this process holds, never by another user
        return marshal.loads(data[started + 1:]), ""  # noqa: S302
    where = paths[started - 1] if 0 < started <= len(paths) else ", ".join(paths)
    how = f"died of signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
        f"failed (exit {os.waitstatus_to_exitcode(status)})"
    return None, f"{where}: maxminddb's C reader {how} (a damaged file?): read with the pure-Python reader"


def check_per_login_reader(path: str, ip: str = "192.0.2.1", timeout: float = _CHILD_TIMEOUT) -> str | None:
    """For `check-config`: what the per-login program's reader (the C extension, in a forked
    child) says of `path`, None when it reads it; also None when there is no extension
    (the per-login program then uses the pure reader, which check_sources tries)."""
    try:
        answers, problem = _lookup_in_child(ip, [path], timeout)
    except TimeoutError as e:
        return str(e)
    if answers is None:
        return problem or None
    found, value = answers[0]
    return None if found else value


def lookup_detailed(ip: str, city_path: str | None, asn_path: str | None, *,
                    timeout: float | None = None) -> tuple[MaxMindFacts, list[str]]:
    """The facts from every readable database plus one problem line per unreadable one.

    A configured database that cannot be read is named in the facts' `unavailable`.
    `timeout` bounds the per-login program's child (TimeoutError past it).
    """
    from ... import per_login_process

    problems: list[str] = []
    paths = [p for p in (city_path, asn_path) if p]
    answers: list[tuple[bool, Any]] | None = None
    if per_login_process and paths:
        answers, problem = _lookup_in_child(ip, paths, _CHILD_TIMEOUT if timeout is None else timeout)
        if problem:
            problems.append(problem)
    if answers is None:
        answers = []
        for path in paths:
            try:
                answers.append((True, _read(path, ip)))
            except MaxMindUnavailable as e:
                answers.append((False, str(e)))
    records = dict(zip(paths, answers, strict=True))
    city: dict[str, Any] = {}
    asn: dict[str, Any] = {}
    unavailable: list[str] = []
    for part, path, target in (("city", city_path, city), ("asn", asn_path, asn)):
        if not path:
            continue
        found, value = records[path]
        number = (value or {}).get("autonomous_system_number") if found and part == "asn" else None
        if number is not None and (not isinstance(number, int) or as_number(number) is None):
            # a genuine ASN database holds a uint32 there: anything else comes from damage
            found, value = False, f"{path}: autonomous_system_number {str(number)[:40]!r} is no AS number " \
                                  "(a damaged file?)"
        if found:
            target.update(value or {})
        else:
            problems.append(value)
            unavailable.append(part)
    if not paths or len(unavailable) == len(paths):
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
        unavailable=tuple(unavailable),
    )
    return facts, problems


def lookup(ip: str, city_path: str | None, asn_path: str | None) -> MaxMindFacts:
    """City and ASN facts for `ip`; an address in neither database gives empty facts."""
    return lookup_detailed(ip, city_path, asn_path)[0]
