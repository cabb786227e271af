"""Paths and the environment for the per-login path, on `posix` instead of `os`.

`import os` is about 1 ms of every login (5 M instructions: `os` imports
`_collections_abc`, `posixpath` and `stat`, which `python -I -S` does not load), so the
modules a login runs use `posix`, the C module whose functions `os` re-exports, and these
few helpers. Each gives what `os.path`'s function of the same job gives (tests/unit/
test_paths.py compares them on generated paths), and hands what it does not handle itself
to `os.path`.
"""

from __future__ import annotations

import posix
from _stat import S_ISDIR


def join(directory: str, name: str) -> str:
    """`os.path.join(directory, name)`."""
    if name.startswith("/"):
        return name
    if not directory or directory.endswith("/"):
        return directory + name
    return f"{directory}/{name}"


def dirname(path: str) -> str:
    """`os.path.dirname(path)`."""
    head = path[:path.rfind("/") + 1]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head


def is_normal_absolute(path: str) -> bool:
    """True when `os.path.abspath(path)` is `path` itself (absolute, no `.`, `..` or `//`)."""
    return path == "/" or (path.startswith("/") and "" not in (parts := path[1:].split("/"))
                           and "." not in parts and ".." not in parts)


def absolute(path: str) -> str:
    """`os.path.abspath(path)`: `path` when it is normal and absolute, else os.path's answer."""
    if is_normal_absolute(path):
        return path
    import os  # a relative or unusual path: rare on a login (Dovecot's config names absolute paths)

    return os.path.abspath(path)


def exists(path: str) -> bool:
    """`os.path.exists(path)`."""
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return False
    return True


def isdir(path: str) -> bool:
    """`os.path.isdir(path)`."""
    try:
        return S_ISDIR(posix.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def environment() -> dict[str, str]:
    """What `os.environ` holds: posix.environ's bytes decoded as os.fsdecode does."""
    import sys  # built in

    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {key.decode(encoding, errors): value.decode(encoding, errors) for key, value in posix.environ.items()}


def basename(path: str) -> str:
    """`os.path.basename(path)`."""
    return path[path.rfind("/") + 1:]
