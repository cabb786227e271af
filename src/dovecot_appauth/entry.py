"""Console-script entry of the per-login program, guarding the import itself.

If `login.py` or a module it needs cannot be loaded (a broken install, a missing
dependency), Python would print a traceback and exit 1, which Dovecot reads as
"wrong password". This wrapper turns that into one stderr line and status 111.
"""

import os


def checkpassword() -> None:
    try:
        from .login import main
    except BaseException as e:
        os.write(2, f"dovecot-appauth: internal error: cannot load the program ({type(e).__name__})\n".encode())
        os._exit(111)
    main()
