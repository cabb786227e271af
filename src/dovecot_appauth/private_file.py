"""Small private cache files of the per-login program (the config cache, the list cache).

They hold `marshal` data: loading marshal never runs code (unlike pickle), it is built
into the interpreter (no import), and it keeps tuples, which JSON cannot; `json` would
also import `re` and compile its patterns, a few ms on every login (docs/PERFORMANCE.md).
marshal is not meant for untrusted input, so a file is read only when it is private:
a regular file (not a symlink) owned by this process's user and writable by nobody else,
in a directory of the same kind. Anything else reads as "no cache", and the caller
parses the original file. Writers replace a file atomically, so concurrent logins see
the old version or the new one.

Reading uses only modules the interpreter has loaded at start-up (`posix`, the C module
behind `os`; `_stat`; `marshal`): the fast path reads the config cache without `os`
(config_cache.py). Writing, on a cache miss, imports `os`.
"""

from __future__ import annotations

import marshal
import posix
from _stat import S_IFDIR, S_IFMT, S_IFREG

from .paths import dirname

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any

MAX_BYTES = 64 * 1024 * 1024  # far above any real list; a bigger file is not ours


def name_hash(text: str) -> str:
    """64-bit FNV-1a of `text`, for file names (hash() is salted per process)."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8", "surrogateescape"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _private(st: Any, kind: int) -> bool:
    """Of the file type `kind`, owned by this user, and writable by nobody else (`st`: a stat)."""
    return S_IFMT(st.st_mode) == kind and st.st_uid == posix.geteuid() and not st.st_mode & 0o022


def load(path: str) -> Any:
    """The marshalled value in `path`, or None when it is missing, not private or damaged."""
    try:
        if not _private(posix.lstat(dirname(path) or "."), S_IFDIR):
            return None
        fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = posix.fstat(fd)
        if not _private(st, S_IFREG) or st.st_size > MAX_BYTES:
            return None
        chunks = []
        left = st.st_size + 1  # one byte more: a file that grew is read whole, then rejected below
        while left > 0:
            chunk = posix.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        raw = b"".join(chunks)
        if len(raw) != st.st_size:
            return None
        return marshal.loads(raw)  # noqa: S302 - a private file of our own, checked above
    except Exception:  # unreadable, truncated, not marshal data: no cache
        return None
    finally:
        posix.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def make_private_dirs(directory: str) -> None:
    """`os.makedirs(directory, 0o700, exist_ok=True)`, but every directory it makes is 0700,
    the parents too: `makedirs` gives missing parents the umask's mode (Python >= 3.7), so
    making `cache/lists` first left the enrichment cache directory 0755, or group-writable
    under umask 002, and then untrusted on every login."""
    import os

    parent = os.path.dirname(directory.rstrip("/"))
    if parent and parent != directory and not os.path.isdir(parent):
        make_private_dirs(parent)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass  # there already, or made meanwhile by another login


def store(path: str, value: Any) -> bool:
    """Write `value` to `path` (0600; the directory is made 0700). Best effort: False on failure.

    A value marshal cannot store (a TOML datetime, say) is not cached.
    """
    import os

    directory = os.path.dirname(path) or "."
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        data = marshal.dumps(value)
        make_private_dirs(directory)
        if not _private(os.lstat(directory), S_IFDIR):
            return False
        # O_TRUNC, not O_EXCL: the directory is ours alone, and a stale file of a crashed
        # login with the same pid must not block the cache
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return True
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
