"""The per-login program as installed by default: a `#!python -IS` launcher written outside
the venv by `python -m dovecot_appauth.entry install FILE` (README, Install).

Proved on a real installation: a wheel of this checkout installed into a fresh venv, the
launcher written where the old recipe had a symlink into the venv, then the package
upgraded with pip to a new version. The launcher must be untouched and still start the
program with -I -S (read from /proc while it waits for its request) and log a user in.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dovecot_appauth import hashing
from dovecot_appauth.cli import schema
from dovecot_appauth.config import config_cache_file
from dovecot_appauth.entry import main as entry_main

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Laun-cher-Test-Pass"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _wheel(tmp_path: Path, version: str) -> Path:
    """A wheel of this checkout with `version` (built offline from a copy: no build/ here)."""
    src = tmp_path / f"src-{version}"
    for name in ("src", "packaging"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "README.md", src / "README.md")
    text = (ROOT / "pyproject.toml").read_text()
    assert 'version = "' in text
    start = text.index('version = "')
    end = text.index('"', start + len('version = "'))
    (src / "pyproject.toml").write_text(text[:start] + f'version = "{version}' + text[end:])
    out = tmp_path / f"wheel-{version}"
    subprocess.run([*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    return wheel


def _pip_install(venv: Path, wheel: Path, *extra: str) -> None:
    # --no-deps: a login with SQLite and SHA-512-crypt needs only the standard library
    subprocess.run([*PIP, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index",
                    *extra, str(wheel)], check=True, capture_output=True, timeout=300)


def _site(tmp_path: Path) -> Path:
    db = tmp_path / "appauth.sqlite"
    engine = schema.make_engine(f"sqlite:///{db}")
    schema.init_db(engine)
    schema.create_password(engine, "alice@example.com", hashing.hash_password(PASSWORD))
    engine.dispose()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\ndsn = "sqlite:///{db}"\n\n[userdb]\nuid = "5000"\n\n[audit]\nenabled = false\n')
    return config


def _high(fd: int) -> int:
    """Move fd above 9 (close-on-exec), so that the dup2 to 3/4 never hits itself."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _login_seen_from_proc(program: Path, config: Path) -> tuple[int, bytes, str, list[str]]:
    """Start `program` as Dovecot does; while it waits for fd 3, read its argv from /proc.
    Returns (status, reply on fd 4, stderr, argv of the running process)."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    req_r, rep_w = (_high(fd) for fd in (req_r, rep_w))

    def fds() -> None:
        os.dup2(req_r, 3)
        os.dup2(rep_w, 4)

    proc = subprocess.Popen([str(program), "--config", str(config)], env={"SERVICE": "imap",
                            "TCPREMOTEIP": "198.51.100.7", "PYTHONPATH": "/nonexistent"},
                            close_fds=False, preexec_fn=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    os.close(req_r)
    os.close(rep_w)
    try:
        # the request is not written yet: the program is blocked in its read of fd 3
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        os.write(req_w, b"alice@example.com\0" + PASSWORD.encode() + b"\0\0")
    finally:
        os.close(req_w)
    _, err = proc.communicate(timeout=60)
    with os.fdopen(rep_r, "rb") as f:
        reply = f.read()
    return proc.returncode, reply, err.decode(), argv


def test_launcher_survives_pip_upgrade_and_runs_with_I_S(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    venv_python = venv / "bin" / "python"
    _pip_install(venv, _wheel(tmp_path, "0.1.0"))
    pip_script = venv / "bin" / "dovecot-appauth-checkpassword"
    assert pip_script.read_text().splitlines()[0] == f"#!{venv_python}"  # pip drops any option

    # the old recipe: a symlink from the bin directory Dovecot uses into the venv
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "dovecot-appauth-checkpassword"
    launcher.symlink_to(pip_script)
    res = subprocess.run([str(venv_python), "-m", "dovecot_appauth.entry", "install", str(launcher)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "replacing a symlink" in res.stdout
    assert not launcher.is_symlink() and launcher.stat().st_mode & 0o777 == 0o755
    assert launcher.read_text().splitlines()[0] == f"#!{venv_python} -IS"
    assert pip_script.read_text().splitlines()[0] == f"#!{venv_python}"  # not written through the link
    written = launcher.read_bytes()

    _pip_install(venv, _wheel(tmp_path, "0.1.1"), "--upgrade")
    assert (venv_python.parent / "dovecot-appauth").exists()
    assert any(p.name.startswith("dovecot_appauth-0.1.1") for p in venv.glob("lib/python*/site-packages/*"))
    assert launcher.read_bytes() == written  # pip rewrote its own script only

    config = _site(tmp_path)
    try:
        status, reply, err, argv = _login_seen_from_proc(launcher, config)
    finally:
        try:
            os.unlink(config_cache_file(str(config)))
        except FileNotFoundError:
            pass
    assert (status, err) == (0, ""), err
    assert reply.startswith(b"user=alice@example.com\t")
    assert argv[:3] == [str(venv_python), "-IS", str(launcher)], argv


def test_install_refuses_a_target_inside_the_venv(tmp_path, capsys):
    """pip would rewrite a launcher written into the venv's bin: refused, nothing written."""
    target = Path(sys.prefix) / "bin" / "dovecot-appauth-launcher-test"
    assert entry_main(["install", str(target)]) == 1
    assert "inside" in capsys.readouterr().err
    assert not target.exists()


def test_install_keeps_the_old_file_when_the_launcher_cannot_start(tmp_path, capsys, monkeypatch):
    """A launcher that fails its start check (here: this interpreter cannot import the
    package) never replaces what Dovecot runs today."""
    target = tmp_path / "dovecot-appauth-checkpassword"
    target.write_text("old\n")
    import dovecot_appauth.entry as entry

    monkeypatch.setattr(entry, "launcher_script", lambda t: f"#!{sys.executable} -IS\nraise SystemExit(111)\n")
    assert entry_main(["install", str(target)]) == 1
    assert "does not start (111)" in capsys.readouterr().err
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == [target.name]


@pytest.mark.parametrize("argv", [[], ["install"], ["frobnicate", "x"]])
def test_entry_usage(argv, capsys):
    assert entry_main(argv) == 2
    assert "install FILE" in capsys.readouterr().err
