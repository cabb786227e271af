"""Console-script entry of the per-login program, guarding the import itself.

If `login.py` or a module it needs cannot be loaded (a broken install, a missing
dependency), Python would print a traceback and exit 1, which Dovecot reads as
"wrong password". This wrapper turns that into one stderr line and status 111.

`python -m dovecot_appauth.entry launcher` prints a faster launcher for this
installation (see `launcher_script` and docs/PERFORMANCE.md).
"""

import os
import sys


def checkpassword() -> None:
    try:
        from .login import main
    except BaseException as e:
        os.write(2, f"dovecot-appauth: internal error: cannot load the program ({type(e).__name__})\n".encode())
        os._exit(111)
    main()


_LAUNCHER = '''#!{python} -IS
# dovecot-appauth-checkpassword for {prefix}, written by
# `python -m dovecot_appauth.entry launcher`: run again after moving or upgrading Python.
# -I -S: no `site` (no .pth processing) and no PYTHON* variables; the paths `site` would
# add are listed here instead: a few ms of every login (docs/PERFORMANCE.md).
import sys

sys.path.extend({paths!r})
try:
    from dovecot_appauth.entry import checkpassword
except BaseException:
    import os

    os.write(2, b"dovecot-appauth: internal error: cannot load the program ({prefix})\\n")
    os._exit(111)
checkpassword()
'''


def launcher_script() -> str:
    """A `#!python -IS` launcher with this interpreter's import path spelled out.

    Run by the installation's own interpreter (the venv's python), so that `sys.path`
    holds what `site` adds for it: site-packages and the entries of its .pth files. The
    first entry (the directory of whatever runs this) is left out, as are the entries
    `python -I -S` has anyway.
    """
    import ast
    import subprocess

    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; print(repr(sys.path))"],
                          capture_output=True, text=True, check=True).stdout
    have = set(ast.literal_eval(bare))
    paths = [p for p in sys.path[1:] if p and p not in have and os.path.isdir(p)]
    return _LAUNCHER.format(python=sys.executable, prefix=sys.prefix, paths=paths)


if __name__ == "__main__":
    if sys.argv[1:] != ["launcher"]:
        sys.exit("usage: python -m dovecot_appauth.entry launcher > FILE && chmod 755 FILE")
    sys.stdout.write(launcher_script())
