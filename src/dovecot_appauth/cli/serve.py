"""`serve` and `serve-token`: the command line around `server.py` (needs
`pip install 'dovecot-appauth[serve]'`)."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable
from typing import Any

TOKEN_MODES = {"600": 0o600, "640": 0o640}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_token(path: str) -> str:
    """The secret in `path`; CliError when it is missing, empty or readable by every user."""
    from .base import CliError

    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"--token-file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token:  # an empty secret would let every request in
        raise CliError(f"--token-file {path} is empty")
    if mode & stat.S_IROTH:
        raise CliError(f"--token-file {path} is readable by every user (mode {stat.S_IMODE(mode):04o}): "
                       f"chmod 640 {path}")
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    from ..config import config_path
    from .base import CliError

    try:
        from ..serve import http  # noqa: F401  (uvicorn's httptools protocol: serve/http.py)
        from ..serve.server import serve
    except ImportError as e:
        raise CliError("serve needs starlette, uvicorn, httptools and prometheus_client: "
                       f"pip install 'dovecot-appauth[serve]' ({e})") from None
    if args.token_file and args.insecure_no_token:
        raise CliError("--token-file and --insecure-no-token contradict each other")
    if args.unix_socket and args.insecure_no_token:
        raise CliError("--insecure-no-token is for TCP: on --unix-socket the socket's mode decides who may call")
    token = read_token(args.token_file) if args.token_file else None
    if token is None and not args.unix_socket and not args.insecure_no_token:
        raise CliError("serve on TCP needs --token-file FILE (make one with 'dovecot-appauth serve-token "
                       "--write FILE --owner dovecot'); without a token any local process could log users in "
                       "through it, pick the client address and report logins. --insecure-no-token runs "
                       "without one (the client address is then the caller's own, reports are not audited)")
    try:
        mode = int(args.socket_mode, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise CliError(f"--socket-mode {args.socket_mode!r}: an octal mode such as 660")
    if args.workers < 1:
        raise CliError(f"--workers {args.workers}: at least 1")
    if args.max_requests < 1:
        raise CliError(f"--max-requests {args.max_requests}: at least 1")
    if not 0 <= args.file_check_interval <= 3600:  # also refuses nan
        raise CliError(f"--file-check-interval {args.file_check_interval}: from 0 to 3600 seconds")
    if args.insecure_no_token:
        import sys

        print("dovecot-appauth serve: --insecure-no-token: callers are not authenticated; remote_ip and "
              "remote are replaced by the caller's own address and reports are not audited", file=sys.stderr)
    try:
        return serve(config_path(args.config), host=args.host, port=args.port, uds=args.unix_socket, token=token,
                     socket_mode=mode, workers=args.workers, max_requests=args.max_requests,
                     file_check_interval=args.file_check_interval, threads_only=args.threads_only)
    except OSError as e:
        raise CliError(f"cannot listen: {e}") from None


def cmd_serve_token(args: argparse.Namespace) -> int:
    """Write a new random secret to a file only `--owner` (and its group, with 640) can read."""
    import secrets

    from .base import CliError

    path = args.write
    if os.path.lexists(path) and not args.force:
        raise CliError(f"{path} exists (--force replaces it; Dovecot's copy of the secret must then change too)")
    uid = gid = -1
    if args.owner:
        import pwd

        try:
            entry = pwd.getpwnam(args.owner)
        except KeyError:
            raise CliError(f"--owner {args.owner}: no such user") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        # created 0600 and filled before it gets its owner and final mode: never readable by others
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
            os.fsync(fd)
            if uid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, TOKEN_MODES[args.mode])
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as e:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise CliError(f"{path}: {e.strerror or e}") from None
    print(f"wrote a new token to {path} (mode {args.mode}" + (f", owner {args.owner}" if args.owner else "")
          + "); give the same secret to Dovecot (auth_policy_server_api_header, APPAUTH_TOKEN)")
    return 0


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("serve", cmd_serve,
                "HTTP service: Dovecot auth policy (/policy) and app-password verify (/verify) endpoints",
                "dovecot-appauth serve --port 8077 --token-file /etc/dovecot-appauth/serve.token")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("DOVECOT_APPAUTH_PORT", "8077")),
                   help="TCP port (default 8077)")
    p.add_argument("--unix-socket", metavar="PATH",
                   help="listen on a Unix socket instead of TCP (Dovecot 2.3 itself cannot reach one: "
                        "for a reverse proxy or other local clients); its file mode decides who may call")
    p.add_argument("--socket-mode", default="660", metavar="MODE",
                   help="permissions of the --unix-socket file, octal (default 660: owner and group)")
    p.add_argument("--token-file", metavar="FILE",
                   help="require this secret (Bearer, or Basic password) on every request; needed on TCP "
                        "(see serve-token)")
    p.add_argument("--insecure-no-token", action="store_true",
                   help="listen on TCP without a token: callers may not name the client address "
                        "(their own is used) nor report logins")
    p.add_argument("--workers", type=int, default=_cores(), metavar="N",
                   help=f"worker processes sharing the socket (default: the number of cores, {_cores()} here)")
    p.add_argument("--max-requests", type=int, default=64, metavar="N",
                   help="requests in work at once per worker; more are answered 503 (temporary failure) "
                        "at once instead of waiting past Dovecot's timeout (default 64)")
    p.add_argument("--file-check-interval", type=float, default=1.0, metavar="SECONDS",
                   help="look at the config, list and cache files for changes at most this often; a "
                        "change takes effect within this time (default 1; 0: on every request)")
    p.add_argument("--threads-only", action="store_true",
                   help="run every request on an engine thread; by default a request that needs no "
                        "lookup, no lock and no slow hash is answered on the event loop itself (faster)")

    p = command("serve-token", cmd_serve_token,
                "write a new random secret for serve --token-file, readable only by its owner (and group)",
                "dovecot-appauth serve-token --write /etc/dovecot-appauth/serve.token --owner dovecot")
    p.add_argument("--write", required=True, metavar="FILE", help="the token file to create")
    p.add_argument("--owner", metavar="USER", help="give the file to USER and its group (e.g. dovecot)")
    p.add_argument("--mode", choices=sorted(TOKEN_MODES), default="640",
                   help="640 (owner and group may read; default) or 600; never readable by others")
    p.add_argument("--force", action="store_true", help="replace an existing token file")
