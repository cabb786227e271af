"""examples/systemd/*.service (serve on TCP for Dovecot 2.4, and on a Unix socket for the
checkpassword fast path): accepted by `systemd-analyze verify` (no warning either: systemd
only warns about unknown keys and bad values), with the sandboxing the service needs, and
an ExecStart our command line accepts."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"
UNIT = UNITS / "dovecot-appauth-serve.service"
FAST_PATH_UNIT = UNITS / "dovecot-appauth-fastpath.service"
INSTALLED_CLI = "/opt/dovecot-appauth/venv/bin/dovecot-appauth"  # the README's install path


def _service_section(unit: Path = UNIT) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(unit.read_text())
    return dict(parser["Service"])


@pytest.mark.parametrize("unit", [UNIT, FAST_PATH_UNIT], ids=lambda u: u.name)
def test_unit_passes_systemd_analyze_verify(tmp_path, unit):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    # verify checks that ExecStart's program exists: point it at this virtualenv's
    cli = Path(sys.executable).parent / "dovecot-appauth"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_CLI, str(cli)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@pytest.mark.parametrize("unit", [UNIT, FAST_PATH_UNIT], ids=lambda u: u.name)
def test_unit_sandboxes_the_service(unit):
    service = _service_section(unit)
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


def test_fast_path_unit_listens_where_the_example_config_says():
    from dovecot_appauth.cli.main import build_parser

    service = _service_section(FAST_PATH_UNIT)
    args = build_parser().parse_args(shlex.split(service["ExecStart"])[1:])
    assert args.command == "serve" and args.unix_socket == "/run/dovecot-appauth/serve.sock"
    assert args.socket_mode == "660" and not args.token_file  # the socket's mode decides who may call
    assert service["RuntimeDirectory"] == "dovecot-appauth" and service["User"] == "dovecot"
    example = (Path(__file__).resolve().parents[2] / "conf" / "config.toml").read_text()
    assert f'# socket = "{args.unix_socket}"' in example
