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
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    serve(config_path(args.config), host=args.host, port=args.port, uds=args.unix_socket, token=token)
    return 0


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("serve", cmd_serve,
                "HTTP service: Dovecot auth policy (/policy) and app-password verify (/verify) endpoints",
                "dovecot-appauth serve --port 8077")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("DOVECOT_APPAUTH_PORT", "8077")),
                   help="TCP port (default 8077)")
    p.add_argument("--unix-socket", metavar="PATH", help="listen on a Unix socket instead of TCP")
    p.add_argument("--token-file", metavar="FILE",
                   help="require this secret (Bearer, or Basic password) on every request")
