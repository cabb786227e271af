"""A login loads only what a login needs (DESIGN.md: every hot-path module is judged by import cost)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dovecot_appauth import hashing, schema

PROGRAM = Path(sys.executable).parent / "dovecot-appauth-checkpassword"
PASSWORD = "Imp0-rt5T-estP-assw"
# Heavy or admin-only packages that must not be imported by a successful login (audit disabled)
FORBIDDEN = ["sqlalchemy", "click", "argparse", "dns", "maxminddb", "pymysql", "bcrypt", "argon2", "logging"]

_LOGIN = """
import json, sys, time
from dovecot_appauth.config import load
from dovecot_appauth.core import encode_request, parse_request, read_environment
from dovecot_appauth.login import decide

config = load(sys.argv[1])
env = {"PROTO": "TCP", "SERVICE": "imap", "TCPREMOTEIP": "198.51.100.7", "TCPREMOTEPORT": "50000"}
request = read_environment(parse_request(encode_request("alice@example.com", sys.argv[2])), env)
outcome = decide(request, config, now=time.time())
print(json.dumps({"exit_code": int(outcome.exit_code), "user": outcome.user, "modules": sorted(sys.modules)}))
"""


@pytest.fixture
def config_path(tmp_path):
    db = tmp_path / "appauth.sqlite"
    engine = schema.make_engine(f"sqlite:///{db}")
    schema.init_db(engine)
    schema.create_password(engine, "alice@example.com", hashing.hash_password(PASSWORD))
    engine.dispose()
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\ndsn = "sqlite:///{db}"\n\n[userdb]\nuid = "5000"\n\n[audit]\nenabled = false\n')
    return path


def _loaded(modules: list[str], name: str) -> list[str]:
    return [m for m in modules if m == name or m.startswith(name + ".")]


def test_warm_login_imports_nothing_heavy(config_path):
    argv = [sys.executable, "-c", _LOGIN, str(config_path), PASSWORD]
    subprocess.run(argv, capture_output=True, timeout=60, check=True)  # warm: bytecode caches written
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["exit_code"], result["user"]) == (0, "alice@example.com")  # it really logged in
    assert "dovecot_appauth.login" in result["modules"] and "sqlite3" in result["modules"]
    loaded = {name: _loaded(result["modules"], name) for name in FORBIDDEN}
    assert {name: mods for name, mods in loaded.items() if mods} == {}
    assert "dovecot_appauth.schema" not in result["modules"]
    assert "dovecot_appauth.cli" not in result["modules"]


def test_installed_program_imports_nothing_heavy(config_path):
    """The real program, run as Dovecot runs it, with CPython's import trace on stderr."""
    r, w = os.pipe()
    request = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(r)
    try:
        os.write(w, b"alice@example.com\0" + PASSWORD.encode() + b"\0\0")
        os.close(w)
        proc = subprocess.run(
            [str(PROGRAM), "--config", str(config_path)],
            env={"SERVICE": "imap", "TCPREMOTEIP": "198.51.100.7", "PYTHONPROFILEIMPORTTIME": "1"},
            close_fds=False, preexec_fn=lambda: os.dup2(request, 3),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
    finally:
        os.close(request)
    trace = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    others = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 0, others
    assert others == ["dovecot-appauth: fd 4 is not open: reply not written (run as Dovecot does, or add 4>&1 "
                      "to see it)"]
    modules = [line.split("|")[-1].strip() for line in trace[1:]]
    assert "dovecot_appauth.login" in modules
    loaded = {name: _loaded(modules, name) for name in FORBIDDEN}
    assert {name: mods for name, mods in loaded.items() if mods} == {}
