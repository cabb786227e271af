"""examples/systemd/dovecot-appauth-serve.service: accepted by `systemd-analyze verify`
(no warning either: systemd only warns about unknown keys and bad values), with the
sandboxing the service needs, and an ExecStart our command line accepts."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "examples" / "systemd" / "dovecot-appauth-serve.service"
INSTALLED_CLI = "/opt/dovecot-appauth/venv/bin/dovecot-appauth"  # the README's install path


def _service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    # verify checks that ExecStart's program exists: point it at this virtualenv's
    cli = Path(sys.executable).parent / "dovecot-appauth"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_CLI, str(cli)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_unit_sandboxes_the_service():
    service = _service_section()
    assert service["User"] == "dovecot" and service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"].split()
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_unit_command_line_is_one_serve_accepts():
    from dovecot_appauth.cli.main import build_parser

    argv = shlex.split(_service_section()["ExecStart"])
    assert argv[0] == INSTALLED_CLI
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.token_file  # TCP needs the token
