"""The audit line to a real systemd-journald (`[audit] journal`), through the real per-login program.

journald runs in a mount namespace of its own (`unshare --mount`) with a private tmpfs on
/run, so it creates its sockets and its runtime journal there and nothing of the host's
/run is touched. Inside that namespace a helper (tests/e2e/journald_helper.py) starts it,
runs one login through the installed checkpassword program (as user dovecot, fd 3 as
Dovecot gives it), reads the entry back with `journalctl -o json`, stops or freezes
journald as asked, and prints what it found as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.common import wrong_password
from tests.support.hardening import request_bytes

HELPER = Path(__file__).with_name("journald_helper.py")
JOURNALD = "/lib/systemd/systemd-journald"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(JOURNALD) or not shutil.which("unshare")
    or not shutil.which("journalctl"),
    reason="needs root, systemd-journald, journalctl and unshare (apt-get install systemd util-linux)",
)


@pytest.fixture
def journal_site(appauth_config_factory):
    extra = ('[audit.dns]\nenabled = false\n\n[audit.rdap]\nenabled = false\n\n'
             '[audit.maxmind]\ncity = ""\nasn = ""\n')
    cfg = appauth_config_factory(audit=True, extra_toml=extra)
    cfg.path.write_text(cfg.path.read_text().replace(
        "[audit]\n", '[audit]\njournal = "yes"\nsyslog_socket = ""\nglobal_networks = ["198.51.100.0/24"]\n', 1))
    return cfg


def run_in_namespace(cfg, tmp_path: Path, request: bytes, mode: str) -> dict:
    request_file = tmp_path / "request"
    request_file.touch(mode=0o600)  # a password: never on a command line
    request_file.write_bytes(request)
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, str(HELPER),
                          str(cfg.path), str(request_file), mode],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert res.returncode == 0, f"helper failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def test_audit_line_and_fields_reach_a_real_journald(journal_site, tmp_path):
    created = journal_site.create_password("jo@example.com")
    found = run_in_namespace(journal_site, tmp_path, request_bytes("jo@example.com", created["password"]), "read")
    assert found["status"] == 0, found  # the login went through the reply helper
    entries = [e for e in found["entries"] if e.get("SYSLOG_IDENTIFIER") == "mail-audit"]
    assert len(entries) == 1, found
    entry = entries[0]
    # the audit line, as syslog would have it (no source enabled here: every value unknown)
    assert entry["MESSAGE"] == (
        "user=<jo@example.com>, service=imap, ip=198.51.100.7, host=None, asn=None, as_cc=None, as_desc=<None>, "
        "as_org=<None>, net_name=<None>, net_cc=None, entity=<>, result=unknown, "
        "reason=<no list matched (unknown: rdns, maxmind, whois)>")
    assert entry["AUDIT_USER"] == "jo@example.com" and entry["AUDIT_IP"] == "198.51.100.7"
    assert entry["AUDIT_SERVICE"] == "imap" and entry["AUDIT_RESULT"] == "unknown"
    assert entry["AUDIT_REASON"] == "no list matched (unknown: rdns, maxmind, whois)"
    assert (entry["PRIORITY"], entry["SYSLOG_FACILITY"]) == ("6", "2")
    # journald itself took it (native protocol), from the login's own process
    assert entry["_TRANSPORT"] == "journal" and entry["_UID"] == str(found["dovecot_uid"])
    assert "journald" not in found["stderr"], found["stderr"]
    # no password or hash in the journal
    assert created["password"] not in json.dumps(found["entries"])
    assert "$6$" not in json.dumps(found["entries"])


def test_a_frozen_journald_costs_a_login_one_timeout(journal_site, tmp_path):
    """journald stopped (SIGSTOP) with its queue full: the login waits about one
    LOG_SOCKET_TIMEOUT for it, says so in Dovecot's log and is answered; a wrong
    password is still a wrong password."""
    created = journal_site.create_password("jo@example.com")
    found = run_in_namespace(journal_site, tmp_path, request_bytes("jo@example.com", created["password"]), "freeze")
    assert found["status"] == 0, found
    assert 0.9 <= found["elapsed"] < 10, found  # one timeout (1 s), not for ever
    assert "journald: TimeoutError" in found["stderr"], found["stderr"]
    assert created["password"] not in found["stderr"]
    wrong = run_in_namespace(journal_site, tmp_path,
                             request_bytes("jo@example.com", wrong_password(created["password"])), "freeze")
    assert wrong["status"] == 1, wrong  # checkpassword: 1 = wrong password, never 111 for this
