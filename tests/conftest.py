"""Shared fixtures. Real servers: tests/support/dovecot.py, tests/support/mariadb.py.

Helpers for the admin CLI and config files live here too:
``run_cli(config, *args)``, ``write_appauth_config(dir, dsn, ...)``, and the fixtures
``appauth_config_factory`` (session), ``sqlite_config`` and ``mariadb_config`` (function).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.common import DOVECOT_USER, dovecot_ids, new_server_dir, shared_tempdir_base
from tests.support.common import give_to_dovecot as _give_to_dovecot

pytest_plugins = ["tests.support.dovecot", "tests.support.ldap", "tests.support.mariadb", "tests.support.servers"]

VENV_BIN = Path(sys.executable).parent  # the venv running pytest; not resolved on purpose
CLI = VENV_BIN / "dovecot-appauth"
CHECKPASSWORD = VENV_BIN / "dovecot-appauth-checkpassword"


def run_cli(config: str | os.PathLike | None, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``dovecot-appauth [--config CONFIG] ARGS...``; raises with stdout/stderr when ``check`` fails."""
    argv = [str(CLI)] + (["--config", str(config)] if config is not None else []) + [str(a) for a in args]
    res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False,
                         env=env, stdin=None if input is not None else subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {res.returncode}\nstdout:\n{res.stdout}\n"
                             f"stderr:\n{res.stderr}")
    return res


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_appauth_config(directory: str | os.PathLike, dsn: str, *, userdb: dict | None = None,
                         audit: bool = False, extra_toml: str = "", name: str = "config.toml") -> Path:
    """Write a config for our program. ``userdb=None``: uid/gid of user dovecot, home
    ``DIR/mail/%u`` (0777), ``maildir:~/Maildir``; pass ``{}`` for no [userdb] fields.
    ``extra_toml`` is appended verbatim (whole sections)."""
    directory = Path(directory)
    if userdb is None:
        uid, gid = dovecot_ids()
        mail = directory / "mail"
        mail.mkdir(exist_ok=True)
        os.chmod(mail, 0o1777)
        userdb = {"uid": str(uid), "gid": str(gid), "home": f"{mail}/%u", "mail": "maildir:~/Maildir"}
    cache = directory / "cache"
    cache.mkdir(exist_ok=True)
    _give_to_dovecot(cache)
    lines = ["[database]", f"dsn = {_toml(dsn)}", "", "[userdb]"]
    lines += [f"{k} = {_toml(v)}" for k, v in userdb.items()]
    lines += ["", "[audit]", f"enabled = {_toml(audit)}", "", "[audit.cache]", f"path = {_toml(cache)}", ""]
    path = directory / name
    path.write_text("\n".join(lines) + "\n" + extra_toml)
    os.chmod(path, 0o644)
    return path


@dataclass
class AppauthConfig:
    """A config file for our program plus its database, reachable by user dovecot.

    ``path`` (the TOML), ``dir`` (0755, for more files), ``dsn``, ``db_path`` (SQLite only;
    its directory ``dir/db`` belongs to user dovecot and is re-chowned after every CLI call).
    """

    path: Path
    dir: Path
    dsn: str
    db_path: Path | None = None
    database: object = None  # the MariaDBDatabase for mariadb_config

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        try:
            return run_cli(self.path, *args, check=check, input=input)
        finally:
            if self.db_path is not None:
                _give_to_dovecot(self.db_path.parent)

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "--json").stdout)

    def create_password(self, user: str, comment: str | None = None) -> dict:
        """``password create USER [--comment C] --json`` -> {"id", "uid", "password"}."""
        extra = ["--comment", comment] if comment is not None else []
        return self.cli_json("password", "create", user, *extra)

    def revoke(self, password_id: int) -> None:
        self.cli("password", "revoke", str(password_id))

    def list_passwords(self, user: str | None = None):
        return self.cli_json("password", "list", *([user] if user else []))


def _require_cli() -> None:
    if not CLI.exists():
        pytest.fail(f"{CLI} missing: pip install -e '.[test]' into the venv running pytest", pytrace=False)


@pytest.fixture(scope="session")
def appauth_config_factory():
    """``make(dsn=None, *, userdb=None, audit=False, extra_toml="", init_db=True) -> AppauthConfig``.

    ``dsn=None``: a new SQLite file. Each call gets its own 0755 directory under a
    world-traversable temp base (user dovecot must reach config, database and cache)."""
    made: list[Path] = []

    def make(dsn: str | None = None, *, userdb: dict | None = None, audit: bool = False,
             extra_toml: str = "", init_db: bool = True, database=None) -> AppauthConfig:
        _require_cli()
        directory = new_server_dir("appauth-cfg-")
        made.append(directory)
        db_path = None
        if dsn is None:
            db_dir = directory / "db"
            db_dir.mkdir()
            db_path = db_dir / "appauth.sqlite"
            dsn = f"sqlite:///{db_path}"
        path = write_appauth_config(directory, dsn, userdb=userdb, audit=audit, extra_toml=extra_toml)
        cfg = AppauthConfig(path=path, dir=directory, dsn=dsn, db_path=db_path, database=database)
        if db_path is not None:
            _give_to_dovecot(db_path.parent)
        if init_db:
            cfg.cli("init-db")
        return cfg

    yield make
    if not os.environ.get("APPAUTH_TEST_KEEP"):
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sqlite_config(appauth_config_factory) -> AppauthConfig:
    """A config with a fresh, initialised SQLite database (``init-db`` via the CLI)."""
    return appauth_config_factory()


@pytest.fixture
def mariadb_config(appauth_config_factory, mariadb_database) -> AppauthConfig:
    """A config with a fresh, initialised database on the session's MariaDB (TCP DSN)."""
    return appauth_config_factory(mariadb_database.dsn, database=mariadb_database)


__all__ = ["CHECKPASSWORD", "CLI", "DOVECOT_USER", "AppauthConfig", "run_cli", "shared_tempdir_base",
           "write_appauth_config"]


class FileClock:
    """The clock of `serve`'s file change checks (filestat.py), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float | None = None) -> None:
        """Past the check interval by default: the next check stats the files again."""
        from dovecot_appauth import filestat

        self.now += filestat.interval() if seconds is None else seconds


@pytest.fixture(autouse=True)
def _file_checks_reset(monkeypatch):
    """An in-process `serve` Engine sets the file check interval for the whole process:
    each test starts with it off and a clock of its own (`file_clock`)."""
    from dovecot_appauth import filestat

    clock = FileClock()
    monkeypatch.setattr(filestat, "_clock", clock)
    filestat.set_interval(0)
    yield clock
    filestat.set_interval(0)


@pytest.fixture
def file_clock(_file_checks_reset) -> FileClock:
    """Advance it past the interval after changing a file an in-process Engine watches."""
    return _file_checks_reset


@pytest.fixture(autouse=True)
def _notify_commands_reaped():
    """The notify commands a test started in this process (audit/events.py keeps them
    unwaited, as a login does) are waited for after it: none is left running, or unreaped,
    when the session ends."""
    yield
    from dovecot_appauth.audit import events

    for child in list(events._running):
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    events._running.clear()
