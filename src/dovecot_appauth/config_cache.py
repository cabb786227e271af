"""Where the config is, where the per-login program keeps it parsed, and the key that says
that copy is current.

`config.load_cached` writes and reads the file (config.py explains the cache); the fast
path (`fast_path.login_via_serve`) reads only the record it needs from it, without
importing config.py or `os`: so this module uses `posix`, the C module behind `os`,
which the interpreter has loaded at start-up (`os` itself is ~1 ms of every login).
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
