"""`login-test`: run the installed checkpassword program exactly as Dovecot does.

The request goes in on fd 3, the environment is Dovecot's (no PATH, no HOME), and a
reply helper collects fd 4: Dovecot's own `checkpassword-reply` when installed,
otherwise `reply_standin.py`, which does the same job. The admin sees the exit status,
its meaning, the fields and the stderr lines Dovecot would log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import EXIT_MEANINGS, decode_reply, encode_request

if TYPE_CHECKING:
    from .service_user import ServiceUser

DOVECOT_REPLY_HELPER = "/usr/lib/dovecot/checkpassword-reply"


@dataclass
class LoginTestResult:
    exit_code: int
    meaning: str
    fields: list[tuple[str, str | None]] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    helper: str = ""
    program: str = ""
    run_as: str = ""  # the user the program ran as

    @property
    def verdict(self) -> str:
        if self.exit_code == 0:
            return "AUTHENTICATED"
        if self.exit_code == 1:
            return "REFUSED"
        if self.exit_code == 2 and self.fields:
            return "USER EXISTS"
        if self.exit_code == 3:
            return "UNKNOWN USER"
        return "TEMPORARY FAILURE"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "meaning": self.meaning,
            "fields": [[k, v] for k, v in self.fields],
            "stderr": self.stderr_lines,
            "program": self.program,
            "reply_helper": self.helper,
            "run_as": self.run_as,
        }

    def describe(self) -> str:
        lines = [f"verdict:     {self.verdict}", f"exit status: {self.exit_code} ({self.meaning})"]
        if self.fields:
            lines.append("fields:")
            lines.extend(f"  {k}={v}" if v is not None else f"  {k}" for k, v in self.fields)
        if self.stderr_lines:
            lines.append("Dovecot would log:")
            lines.extend(f"  auth: Error: {line}" for line in self.stderr_lines)
        lines.append(f"program:     {self.program}")
        lines.append(f"reply helper: {self.helper}")
        lines.append(f"run as:      {self.run_as}")
        return "\n".join(lines)


def default_program() -> str:
    """The checkpassword program installed next to this interpreter (venv/bin), or on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "dovecot-appauth-checkpassword")
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("dovecot-appauth-checkpassword")
    if found:
        return found
    raise FileNotFoundError("dovecot-appauth-checkpassword not found; pass --program")


def reply_helper() -> list[str]:
    if os.access(DOVECOT_REPLY_HELPER, os.X_OK):
        return [DOVECOT_REPLY_HELPER]
    return [sys.executable, "-m", "dovecot_appauth.cli.reply_standin"]


def dovecot_environment(*, service: str, remote_ip: str, remote_port: int, lookup: bool) -> dict[str, str]:
    env = {
        "PROTO": "TCP",
        "SERVICE": service,
        "TCPREMOTEIP": remote_ip,
        "REMOTE_IP": remote_ip,
        "TCPREMOTEPORT": str(remote_port),
        "TCPLOCALIP": "127.0.0.1",
        "LOCAL_IP": "127.0.0.1",
        "TCPLOCALPORT": "143",
        "ORIG_UID": str(os.getuid()),
    }
    if lookup:
        env["AUTHORIZED"] = "1"
    return env


_MOVE_FDS = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
    "os.dup2(r, 3, inheritable=True); os.dup2(w, 4, inheritable=True); os.close(r); os.close(w); "
    "os.execve(sys.argv[3], sys.argv[3:], os.environ)"
)


def _high_fd(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def run_login_test(
    *,
    user: str,
    password: str,
    config: str,
    service: str = "imap",
    remote_ip: str = "127.0.0.1",
    remote_port: int = 54321,
    lookup: bool = False,
    program: str | None = None,
    audit_chain: bool = False,
    timeout: float = 30.0,
    run_as: ServiceUser | None = None,
) -> LoginTestResult:
    """`run_as`: start the program as this user (we are root), as Dovecot starts it as its
    auth user; it then reads the config, lists and database and writes the cache as that user."""
    program = program or default_program()
    helper = reply_helper()
    argv = [program, "--config", config]
    if audit_chain:
        argv.append("--audit-chain")
    argv += helper
    env = dovecot_environment(service=service, remote_ip=remote_ip, remote_port=remote_port, lookup=lookup)
    if run_as is not None:
        env["ORIG_UID"] = str(run_as.uid)  # checkpassword-reply refuses a uid other than its own
    if audit_chain:
        # what Dovecot passes on from the earlier passdb that accepted the password
        from ..login import AUDIT_CHAIN_MARKER

        env[AUDIT_CHAIN_MARKER[0].upper()] = AUDIT_CHAIN_MARKER[1]
    if helper[0] == sys.executable:
        # the stand-in must find this package, as the installed program does
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    # Move the child's ends above 9, so that the shell's `3<&N` and `N<&-` never collide.
    request_r, reply_w = _high_fd(request_r), _high_fd(reply_w)
    open_fds = {request_r, request_w, reply_r, reply_w}

    def close(fd: int) -> None:
        if fd in open_fds:
            open_fds.discard(fd)
            os.close(fd)

    try:
        os.write(request_w, encode_request(user, password))
        close(request_w)
        # Move the pipe ends to fds 3 and 4, as Dovecot's fork does (dash cannot
        # redirect fds above 9, so a tiny Python step does it before the exec).
        wrapper = [sys.executable, "-I", "-c", _MOVE_FDS, str(request_r), str(reply_w)]
        proc = subprocess.Popen(
            wrapper + argv,
            pass_fds=(request_r, reply_w),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **({} if run_as is None else {"user": run_as.uid, "group": run_as.gid, "extra_groups": run_as.groups}),
        )
        close(request_r)
        close(reply_w)
        _, err = proc.communicate(timeout=timeout)
        chunks = []
        while True:
            chunk = os.read(reply_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        for fd in list(open_fds):
            close(fd)
    status = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    fields = decode_reply(b"".join(chunks)) if chunks else []
    return LoginTestResult(
        exit_code=status,
        meaning=EXIT_MEANINGS.get(status, "internal failure (client: UNAVAILABLE)"),
        fields=fields,
        stderr_lines=[line for line in err.decode("utf-8", "replace").splitlines() if line],
        helper=" ".join(helper),
        program=program,
        run_as=run_as.describe() if run_as is not None else _current_user(),
    )


def _current_user() -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except KeyError:
        return f"uid {os.geteuid()}"
