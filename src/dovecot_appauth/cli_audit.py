"""Audit commands of the admin CLI: explain, cache stats, cache purge."""

from __future__ import annotations

from typing import Any, Callable


def register(sub: Any, command: Callable[..., Any]) -> None:
    pass
