"""`serve`: the command line around `server.py` (needs `pip install 'dovecot-appauth[serve]'`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    from .cli import CliError
    from .config import config_path

    try:
        from .server import serve
    except ImportError as e:
        raise CliError(f"serve needs starlette and uvicorn: pip install 'dovecot-appauth[serve]' ({e})") from None
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"--token-file {args.token_file}: {getattr(e, 'strerror', None) or e}") from None
        if not token:  # an empty secret would let every request in
            raise CliError(f"--token-file {args.token_file} is empty")
    try:
        mode = int(args.socket_mode, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise CliError(f"--socket-mode {args.socket_mode!r}: an octal mode such as 660")
    try:
        serve(config_path(args.config), host=args.host, port=args.port, uds=args.unix_socket, token=token,
              socket_mode=mode)
    except OSError as e:
        raise CliError(f"cannot listen: {e}") from None
    return 0


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("serve", cmd_serve,
                "HTTP service: Dovecot auth policy (/policy) and app-password verify (/verify) endpoints",
                "dovecot-appauth serve --port 8077")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("DOVECOT_APPAUTH_PORT", "8077")),
                   help="TCP port (default 8077)")
    p.add_argument("--unix-socket", metavar="PATH",
                   help="listen on a Unix socket instead of TCP (Dovecot 2.3 itself cannot reach one: "
                        "for a reverse proxy or other local clients)")
    p.add_argument("--socket-mode", default="660", metavar="MODE",
                   help="permissions of the --unix-socket file, octal (default 660: owner and group)")
    p.add_argument("--token-file", metavar="FILE",
                   help="require this secret (Bearer, or Basic password) on every request")
