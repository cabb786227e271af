"""A minimal checkpassword in stdlib Python: the reference of the Dovecot rows of targets.py.

    PYTHON reference_checkpassword.py HASH_FILE REPLY-HELPER...

What any checkpassword program written in Python must do for one login, and nothing
else: start the interpreter, read `user NUL password NUL ...` from fd 3, verify the
password against one stored SHA512-CRYPT hash (HASH_FILE: `user<TAB>{CRYPT}$6$...`, the
very hash dovecot-appauth stores for that user), and on a match exec Dovecot's reply
helper with USER set; exit 1 otherwise. No database, no config, no audit, no log row.

It calls the same C functions for the check as dovecot-appauth (`_crypt.crypt`, and
`_operator._compare_digest` for the constant-time comparison): `crypt.py` would hash test
strings at import and `hmac` would load OpenSSL, so the ratio measures everything else.
"""

import os
import sys
from _crypt import crypt
from _operator import _compare_digest


def main() -> None:
    data = b""
    while len(data) < 1024:
        chunk = os.read(3, 1024)
        if not chunk:
            break
        data += chunk
    parts = data.split(b"\0")
    if len(parts) < 3:
        os._exit(2)
    with open(sys.argv[1], encoding="utf-8") as f:
        user, _, stored = f.read().strip().partition("\t")
    stored = stored.removeprefix("{CRYPT}")
    try:
        given, password = parts[0].decode(), parts[1].decode()
    except UnicodeDecodeError:
        os._exit(1)
    if given != user or not _compare_digest(crypt(password, stored) or "", stored):
        os._exit(1)
    env = dict(os.environ)
    env["USER"] = user
    os.execve(sys.argv[2], sys.argv[2:], env)


main()
