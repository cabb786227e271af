"""Console-script entry of the per-login program, guarding the import itself.

If `login.py` or a module it needs cannot be loaded (a broken install, a missing
dependency), Python would print a traceback and exit 1, which Dovecot reads as
"wrong password". This wrapper turns that into one stderr line and status 111.

`python -m dovecot_appauth.entry install FILE` writes the per-login program as a
`#!python -IS` launcher for this installation at FILE, outside the venv, where
`pip install --upgrade` never rewrites it (README, Install; docs/PERFORMANCE.md).
`... entry launcher` prints the same launcher.
"""

import posix  # the C module behind os, loaded at start-up: the fast path never imports os (~1 ms)
import sys


def _cannot_load(e: BaseException) -> None:
    try:
        posix.write(2, f"dovecot-appauth: internal error: cannot load the program ({type(e).__name__})\n".encode())
    except OSError:  # fd 2 closed: the status still says it
        pass
    posix._exit(111)


def checkpassword() -> None:
    import dovecot_appauth

    dovecot_appauth.per_login_process = True  # sources/maxmind.py: this process ends after one login
    # No cyclic garbage collection in this short process: the collections that imports
    # trigger (gen 0/1/2 over every new class, function and code object) were ~3 % of a
    # warm login's instructions, and os._exit ends the process right after the answer.
    # Reference counting still frees everything else; a cold login's peak RSS grew 0.2 MiB.
    import gc

    gc.disable()
    # The config cache is read once, here: with the fast path's record (a config with
    # [fast_path] socket) serve decides the login, and this process loads little more than
    # the interpreter (fast_path.login_via_serve); anything else, and every login serve did
    # not take, is login.main's, with the cache as read here.
    try:
        from .config_cache import plain_config_path, read_current
        from .paths import environment
    except BaseException as e:
        _cannot_load(e)
    env = None
    try:
        env = environment()
        plain = plain_config_path(sys.argv[1:], env)
        cached = read_current(plain[0]) if plain else None
    except Exception:  # login.main does it all again and says what is wrong
        plain = cached = None
    handover = None
    if plain is not None and cached is not None and cached[3] is not None:
        try:
            from .fast_path import login_via_serve
        except BaseException as e:
            _cannot_load(e)
        handover = login_via_serve(cached[3], plain[1], env)
        if type(handover) is int:
            posix._exit(handover)
    try:
        from .login import main
    except BaseException as e:
        _cannot_load(e)
    main(handover=handover, cached=cached, env=env)

_LAUNCHER = '''#!{python} -IS
# dovecot-appauth-checkpassword for {prefix}, written by
# `{python} -m dovecot_appauth.entry install`: run that again after moving the venv or
# upgrading Python (upgrading dovecot-appauth with pip needs nothing: this file is outside
# the venv and imports the package from its site-packages).
# -I -S: no `site` (no .pth processing) and no PYTHON* variables; the paths `site` would
# add are listed here instead: a few ms of every login (docs/PERFORMANCE.md).
import sys

sys.path.extend({paths!r})
try:
    from dovecot_appauth.entry import checkpassword
except BaseException:
    import os

    try:
        os.write(2, b"dovecot-appauth: internal error: cannot load the program from {prefix}: "
                    b"run {python} -m dovecot_appauth.entry install {target}\\n")
    except OSError:
        pass
    os._exit(111)
checkpassword()
'''


def launcher_script(target: str = "FILE") -> str:
    """A `#!python -IS` launcher with this interpreter's import path spelled out.

    Run by the installation's own interpreter (the venv's python), so that `sys.path`
    holds what `site` adds for it: site-packages and the entries of its .pth files. The
    first entry (the directory of whatever runs this) is left out, as are the entries
    `python -I -S` has anyway.
    """
    import ast
    import os
    import subprocess

    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; print(repr(sys.path))"],
                          capture_output=True, text=True, check=True).stdout
    have = set(ast.literal_eval(bare))
    paths = [p for p in sys.path[1:] if p and p not in have and os.path.isdir(p)]
    return _LAUNCHER.format(python=sys.executable, prefix=sys.prefix, paths=paths, target=target)


def install_launcher(target: str) -> str:
    """Write the launcher to `target` (mode 0755) and check that it starts; returns a line
    saying what was done. Raises ValueError for a target inside this installation.

    The file is written next to `target` and renamed over it: a symlink there (the old
    recipe linked /usr/local/bin to the venv's script) is replaced, never written through,
    so the venv's own script stays pip's and pip never rewrites the launcher.
    """
    import os
    import subprocess
    import tempfile

    target = os.path.abspath(target)
    prefix = os.path.realpath(sys.prefix) + os.sep
    if os.path.realpath(os.path.dirname(target)).startswith(prefix):
        raise ValueError(f"{target} is inside {sys.prefix}, where pip install --upgrade rewrites scripts: "
                         "write the launcher outside the venv (e.g. /usr/local/bin)")
    text = launcher_script(target)
    fd, tmp = tempfile.mkstemp(prefix=".dovecot-appauth-", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)  # noqa: S103 - a program every user (dovecot) runs; root-owned, not writable
        # the launcher must start before it replaces anything: --help imports the program
        check = subprocess.run([tmp, "--help"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                               check=False)
        if check.returncode != 0:
            detail = check.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ValueError(f"the launcher does not start ({check.returncode}): {detail[0]}")
        was_link = os.path.islink(target)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return (f"wrote {target} (#!{sys.executable} -IS)" + (", replacing a symlink" if was_link else ""))


_USAGE = ("usage: python -m dovecot_appauth.entry install FILE   (write the -IS launcher, e.g. "
          "/usr/local/bin/dovecot-appauth-checkpassword)\n"
          "       python -m dovecot_appauth.entry launcher       (print it)")


def main(argv: list[str]) -> int:
    """`python -m dovecot_appauth.entry launcher|install FILE`."""
    import subprocess

    if argv == ["launcher"]:
        sys.stdout.write(launcher_script())
        return 0
    if len(argv) == 2 and argv[0] == "install":
        try:
            print(install_launcher(argv[1]))
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            print(f"dovecot-appauth: cannot install the launcher: {e}", file=sys.stderr)
            return 1
        return 0
    print(_USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
