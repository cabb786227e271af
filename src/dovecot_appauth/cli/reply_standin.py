"""A stand-in for Dovecot's checkpassword-reply, for `login-test` where Dovecot is not installed.

It does what checkpassword-reply.c (Dovecot 2.3) does: write `user=$USER`,
`userdb_home=$HOME`, each variable named in `$EXTRA` (key lower-cased; name and value
tab-escaped, as the real helper's str_append_tabescaped does), and `userdb_uid`/`userdb_gid` of its own
process when not given, each ending in TAB, to fd 4; exit 2 when AUTHORIZED=2, else 0.
"""

from __future__ import annotations

import os
import sys

_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\n": "\x01n", "\r": "\x01r"}


def _tabescape(value: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def main() -> int:
    out = []
    user = os.environ.get("USER")
    if user is not None:
        if "\t" in user:
            print("checkpassword: USER contains TAB", file=sys.stderr)
            return 1
        out.append(f"user={user}\t")
    home = os.environ.get("HOME")
    if home is not None:
        out.append(f"userdb_home={home}\t")
    keys = set()
    for name in os.environ.get("EXTRA", "").split(" "):
        value = os.environ.get(name) if name else None
        if value is not None:
            keys.add(name.lower())
            out.append(f"{_tabescape(name.lower())}={_tabescape(value)}\t")
    if "userdb_uid" not in keys:
        out.append(f"userdb_uid={os.getuid()}\t")
    if "userdb_gid" not in keys:
        out.append(f"userdb_gid={os.getgid()}\t")
    try:
        os.write(4, "".join(out).encode())
    except OSError as e:
        print(f"checkpassword: write_full() failed: {e.strerror}", file=sys.stderr)
        return 111
    return 2 if os.environ.get("AUTHORIZED") == "2" else 0


if __name__ == "__main__":
    sys.exit(main())
