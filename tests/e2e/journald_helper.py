"""Run by tests/e2e/test_journald.py inside `unshare --mount`: a real systemd-journald on a
private /run, one login through the per-login program, the journal read back as JSON.

    journald_helper.py CONFIG REQUEST_FILE read|freeze

`read`: journald runs; the login's entry is read back with journalctl. `freeze`: journald
is stopped (SIGSTOP) and its socket's queue filled, as a stuck journald leaves it, then
the login runs. Prints {"status", "elapsed", "stderr", "entries", "dovecot_uid"}.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.common import fill_datagram_queue
from tests.support.hardening import dovecot_env, run_checkpassword

JOURNALD = "/lib/systemd/systemd-journald"
SOCKET = "/run/systemd/journal/socket"


def main() -> int:
    config, request_file, mode = sys.argv[1:4]
    request = Path(request_file).read_bytes()
    # a private /run in this mount namespace: journald's sockets and runtime journal go there
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)
    os.makedirs("/run/systemd/journal")
    os.makedirs("/run/log/journal")
    journald = subprocess.Popen([JOURNALD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(SOCKET):
            if journald.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("systemd-journald did not start")
            time.sleep(0.05)
        if mode == "freeze":
            journald.send_signal(signal.SIGSTOP)
            fill_datagram_queue(SOCKET, b"MESSAGE=filler\n")  # a stuck journald's queue
        run = run_checkpassword(config, request, env=dovecot_env(), user="dovecot")
        entries = [] if mode == "freeze" else read_journal()
    finally:
        journald.send_signal(signal.SIGCONT)
        journald.terminate()
        journald.wait(10)
    print(json.dumps({"status": run.status, "elapsed": run.elapsed, "stderr": run.stderr, "entries": entries,
                      "dovecot_uid": pwd.getpwnam("dovecot").pw_uid}))
    return 0


def read_journal() -> list[dict]:
    """The journal's entries once the login's is there (journald writes it a moment after
    the datagram arrived)."""
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager"],
                             capture_output=True, text=True, check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        if any(e.get("SYSLOG_IDENTIFIER") == "mail-audit" for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
