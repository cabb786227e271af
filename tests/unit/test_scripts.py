"""The README's two commands run as written: as root where sudo is not installed, and as a
user with sudo (issue 14, item 4). scripts/as-root.sh decides; APPAUTH_DRY_RUN=1 makes
scripts/test.sh and examples/demo.sh print that decision and stop before changing anything,
so these tests run the real scripts, the real sudo and the real `id`, with no stub.

"A PATH that has no sudo" is a directory of links to the few real programs the scripts
use before they stop (sh, bash, id, dirname, basename, sed), and no sudo among them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_SH = ROOT / "scripts" / "test.sh"
DEMO_SH = ROOT / "examples" / "demo.sh"
UNPRIVILEGED = "nobody"



def _unprivileged_can_read_checkout() -> bool:
    if os.geteuid() != 0:
        return False
    probe = ["runuser", "-u", UNPRIVILEGED, "--", "test", "-r", str(TEST_SH), "-a", "-r", str(DEMO_SH)]
    return subprocess.run(probe, capture_output=True).returncode == 0


# A checkout under /root is closed to user nobody: these tests then cannot run the scripts as it.
needs_root = pytest.mark.skipif(not _unprivileged_can_read_checkout(),
                                reason=f"needs root (runuser) and a checkout user {UNPRIVILEGED} can read")


@pytest.fixture()
def bin_without_sudo() -> Iterator[Path]:
    """A PATH directory with the real programs the scripts' first lines use, without sudo
    (and without python3, so the demo sees python3-venv missing, as on a fresh Debian 12).
    Under /tmp itself: pytest's tmp_path is root's alone, and user nobody must enter it."""
    bindir = Path(tempfile.mkdtemp(prefix="appauth-nosudo-", dir="/tmp"))
    bindir.chmod(0o755)
    for name in ("sh", "bash", "id", "dirname", "basename", "sed", "env"):
        real = shutil.which(name)
        assert real, f"{name} not installed"
        (bindir / name).symlink_to(real)
    yield bindir
    shutil.rmtree(bindir)


def run(argv: list[str], *, path: str | None = None, user: str | None = None,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path or os.environ["PATH"], "APPAUTH_DRY_RUN": "1", **(extra_env or {})}
    if user:
        # runuser keeps the environment given here (no login shell); env sets PATH for the
        # script without runuser looking it up there
        argv = ["runuser", "-u", user, "--", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
        env = {"PATH": os.environ["PATH"]}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, cwd="/")


def sudo_installed() -> bool:
    return shutil.which("sudo") is not None


# --- scripts/test.sh ---------------------------------------------------------------------

@needs_root
def test_test_sh_as_root_without_sudo_runs_directly(bin_without_sudo: Path) -> None:
    done = run([str(bin_without_sudo / "bash"), str(TEST_SH), "-q"], path=str(bin_without_sudo))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "as-root: running as root"
    assert "sudo" not in done.stderr


@needs_root
def test_test_sh_as_a_user_without_sudo_stops_with_one_line(bin_without_sudo: Path) -> None:
    done = run(["bash", str(TEST_SH), "-q"], path=str(bin_without_sudo), user=UNPRIVILEGED)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("test.sh: this script needs root and sudo is not installed: run it as root (")
    assert "APPAUTH_AS_USER=1" in lines[0]


@needs_root
@pytest.mark.skipif(not sudo_installed(), reason="sudo not installed (scripts/test.sh installs it)")
def test_test_sh_as_a_user_with_sudo_reruns_through_sudo_with_its_arguments_and_settings() -> None:
    done = run(["bash", str(TEST_SH), "-k", "two words"], user=UNPRIVILEGED,
               extra_env={"APPAUTH_VENV": "/tmp/it's a venv", "CI": "true", "UNRELATED": "x"})
    assert done.returncode == 0, done.stderr
    uid = subprocess.run(["id", "-u", UNPRIVILEGED], capture_output=True, text=True, check=True).stdout.strip()
    assert done.stdout.strip() == (
        f"as-root: not root (uid {uid}): would re-run through sudo: sudo -- env "
        "APPAUTH_VENV='/tmp/it'\\''s a venv' APPAUTH_DRY_RUN='1' CI='true' "
        f"'bash' '{TEST_SH}' '-k' 'two words'")


@needs_root
def test_test_sh_as_user_on_request_runs_as_that_user(bin_without_sudo: Path) -> None:
    done = run(["bash", str(TEST_SH)], path=str(bin_without_sudo), user=UNPRIVILEGED,
               extra_env={"APPAUTH_AS_USER": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("as-root: APPAUTH_AS_USER=1: running as uid ")


def test_test_sh_default_venv_is_not_the_production_path() -> None:
    text = TEST_SH.read_text()
    assert 'VENV="${APPAUTH_VENV:-/opt/dovecot-appauth-test/venv}"' in text
    assert "/opt/dovecot-appauth/venv}" not in text
    readme = (ROOT / "README.md").read_text()
    assert "/opt/dovecot-appauth/venv" in readme and "/opt/dovecot-appauth-test/venv" in readme


# --- examples/demo.sh --------------------------------------------------------------------

@needs_root
def test_demo_as_root_without_sudo_installs_python3_venv_directly(bin_without_sudo: Path) -> None:
    done = run([str(bin_without_sudo / "sh"), str(DEMO_SH)], path=str(bin_without_sudo))
    assert done.returncode == 0, done.stderr
    assert "as-root: would run as root: apt-get update -qq" in done.stdout
    assert "as-root: would run as root: env DEBIAN_FRONTEND=noninteractive apt-get install" in done.stdout
    assert "sudo" not in done.stdout + done.stderr


@needs_root
def test_demo_as_a_user_without_sudo_and_without_python3_venv_stops(bin_without_sudo: Path) -> None:
    done = run(["sh", str(DEMO_SH)], path=str(bin_without_sudo), user=UNPRIVILEGED)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "demo.sh: 'apt-get update -qq' needs root and sudo is not installed: "
        "run it as root (or install python3-venv first)")


@needs_root
@pytest.mark.skipif(not sudo_installed(), reason="sudo not installed (scripts/test.sh installs it)")
def test_demo_as_a_user_with_sudo_installs_python3_venv_through_sudo(bin_without_sudo: Path) -> None:
    (bin_without_sudo / "sudo").symlink_to(shutil.which("sudo") or "")
    done = run(["sh", str(DEMO_SH)], path=str(bin_without_sudo), user=UNPRIVILEGED)
    assert done.returncode == 0, done.stderr
    assert "would run through sudo: sudo -- apt-get update -qq" in done.stdout
    assert "would run through sudo: sudo -- env DEBIAN_FRONTEND=noninteractive apt-get install" in done.stdout


@needs_root
def test_demo_as_a_user_with_python3_venv_needs_no_root() -> None:
    if subprocess.run(["python3", "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        pytest.skip("python3-venv not installed here")
    done = run(["sh", str(DEMO_SH)], user=UNPRIVILEGED)
    assert done.returncode == 0, done.stderr
    assert "as-root: python3-venv is installed: nothing needs root" in done.stdout
    assert "sudo" not in done.stdout + done.stderr
