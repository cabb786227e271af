"""Where the config is, where the per-login program keeps it parsed, and the key that says
that copy is current.

`config.load_cached` writes and reads the file (config.py explains the cache).
`entry.checkpassword` reads it first (`read_current`), for the fast path's record, and
hands what it read to `login.main`, which does not read it again: so this module uses
`posix`, the C module behind `os`, which the interpreter has loaded at start-up (`os`
itself is ~1 ms of every login), and a login that takes no fast path loads nothing more.
"""

from __future__ import annotations

import posix

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONFIG_PATH = "/etc/dovecot-appauth/config.toml"
CONFIG_ENV = "DOVECOT_APPAUTH_CONFIG"

# 2: the is_global table (ipnum.global_table) is stored with the TOML, and the key names the
# interpreter whose `ipaddress` it was derived from; 3: the fast path's record is stored too
CONFIG_CACHE_FORMAT = 3
CONFIG_CACHE_ROOT = "/tmp"  # noqa: S108 - a private per-uid directory, checked by private_file.py


def config_cache_file(abspath: str) -> str:
    """The cache file of the config at `abspath` (absolute and normalized, as
    `os.path.abspath` gives it: another spelling of the path names another file)."""
    from .private_file import name_hash

    return f"{CONFIG_CACHE_ROOT}/dovecot-appauth-{posix.geteuid()}/config-{name_hash(abspath)}.marshal"


def cache_key(abspath: str, st: Any) -> tuple[int | str, ...]:
    """What must not have changed since the cache was written: this format and interpreter,
    and the config file's path, device, inode, size, mtime and ctime (`st`: its stat)."""
    import sys  # built in: no import cost

    return (CONFIG_CACHE_FORMAT, sys.version, abspath, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def plain_config_path(argv: list[str], env: dict[str, str]) -> tuple[str, list[str]] | None:
    """(config path, reply helper's argv) of the command line Dovecot runs, `[--config
    FILE] HELPER...`; None for any other option (--debug, --audit-chain, --help, --),
    which login.main alone handles."""
    args = list(argv)
    config = None
    if args[:1] == ["--config"] and len(args) >= 2:
        config, args = args[1], args[2:]
    elif args and args[0].startswith("--config="):
        config, args = args[0].split("=", 1)[1], args[1:]
    if args and args[0].startswith("-"):
        return None
    return (config or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH), args


def read_current(config_file: str) -> tuple | None:
    """The config cache of `config_file` (key, TOML, is_global table, fast path record)
    when it is current (`cache_key`); None otherwise, and for a relative path (the cache
    is named by the absolute one, which config.py makes)."""
    from . import private_file

    if not config_file.startswith("/"):
        return None
    try:
        st = posix.stat(config_file)
    except OSError:
        return None
    cached = private_file.load(config_cache_file(config_file))
    if type(cached) is not tuple or len(cached) != 4 or cached[0] != cache_key(config_file, st):
        return None
    return cached
