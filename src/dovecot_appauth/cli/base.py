"""What every command module of the admin CLI shares: the error it raises, loading the
config, printing JSON and the --service-user option.

The command modules (audit, import_upstream, serve) import this module, never main.py, so the
CLI has no import circle. Nothing here imports SQLAlchemy or a command's logic.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import Config, ConfigError, config_path, load


class CliError(Exception):
    """A problem to report as one line, exit status 1."""


def load_config(args: argparse.Namespace) -> Config:
    path = config_path(args.config)
    try:
        return load(path)
    except ConfigError as e:
        raise CliError(f"configuration {path}: {e}") from None


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def service_user_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service-user", metavar="USER",
                   help="the user logins run as, to check files as and to act as when run as root "
                        "(default: the owner of the [audit.cache] path directory)")


def act_as_service_user(args: argparse.Namespace, config: Config) -> Config:
    """Run the rest of this command as the service user (see service_user.py), so that it
    sees the files as a login does and leaves only files a login can use; the config is
    read again as that user. A no-op when this process cannot change user (not root)."""
    from .service_user import (
        ServiceUserError,
        can_drop_to,
        drop_to,
        missing_cache_warning,
        resolve,
        root_cache_warning,
    )

    try:
        user = resolve(config, args.service_user)
        warning = missing_cache_warning(user, config) or root_cache_warning(user, config)
        if warning:
            print(f"dovecot-appauth: warning: {warning}", file=sys.stderr)
        if not can_drop_to(user):
            if args.service_user:
                raise ServiceUserError(f"cannot act as {user.describe()}: run this command as root or as that user")
            return config
        drop_to(user)
    except ServiceUserError as e:
        raise CliError(str(e)) from None
    return load_config(args)
