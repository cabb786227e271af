"""The reply: templates, userdb fields, the helper's environment, and what reaches fd 4."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from dovecot_appauth.config import UserdbConfig
from dovecot_appauth.core import decode_reply
from dovecot_appauth.reply import expand_template, helper_environment, helper_reply, userdb_fields

DOVECOT_HELPER = "/usr/lib/dovecot/checkpassword-reply"
STANDIN = [sys.executable, "-m", "dovecot_appauth.cli.reply_standin"]
NASTY = "a\tb\nc\rd\x01e"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/srv/mail/%d/%n", "/srv/mail/example.com/alice"),
        ("%u", "alice@example.com"),
        ("100%%", "100%"),
        ("%x%", "%x%"),  # unknown code and a trailing % stay as they are
        ("%%n", "%n"),
        ("", ""),
    ],
)
def test_expand_template(template, expected):
    assert expand_template(template, "alice@example.com") == expected


def test_expand_template_user_without_domain():
    assert expand_template("%n|%d|%u", "bob") == "bob||bob"


def test_userdb_fields_order_and_expansion():
    userdb = UserdbConfig(
        uid="5000", gid="vmail", home="/srv/%d/%n", mail="maildir:~/Maildir",
        extra={"userdb_quota_rule": "*:storage=1G", "userdb_acl_groups": "%d-staff"},
    )
    assert userdb_fields("alice@example.com", userdb) == [
        ("userdb_uid", "5000"),
        ("userdb_gid", "vmail"),
        ("userdb_home", "/srv/example.com/alice"),
        ("userdb_mail", "maildir:~/Maildir"),
        ("userdb_quota_rule", "*:storage=1G"),
        ("userdb_acl_groups", "example.com-staff"),
    ]


def test_userdb_fields_none_configured():
    assert userdb_fields("alice@example.com", UserdbConfig()) == []


def test_helper_environment():
    base = {"SERVICE": "imap", "HOME": "/root", "EXTRA": "OLD", "TCPREMOTEIP": "192.0.2.1"}
    env = helper_environment(base, "alice@example.com", [("userdb_uid", "5000"), ("userdb_x", NASTY)],
                             lookup=False)
    assert env == {
        "SERVICE": "imap",
        "TCPREMOTEIP": "192.0.2.1",
        "USER": "alice@example.com",
        "USERDB_UID": "5000",
        "USERDB_X": NASTY,  # raw: Dovecot 2.3's helper escapes values itself
        "EXTRA": "USERDB_UID USERDB_X",
    }
    assert base["HOME"] == "/root"  # the caller's mapping is not changed


def test_helper_environment_lookup_sets_authorized_2():
    env = helper_environment({"AUTHORIZED": "1"}, "alice", [], lookup=True)
    assert env["AUTHORIZED"] == "2"
    assert env["EXTRA"] == ""


def _high(fd: int) -> int:
    """Move a pipe end to fd >= 10 (close-on-exec), so dup2 onto 3/4 never clobbers it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def run_with_fd4(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, bytes]:
    """Run argv with a pipe on fd 4 (as Dovecot does); returns the process and what fd 4 got."""
    r, w = os.pipe()
    r, w = _high(r), _high(w)
    try:
        proc = subprocess.run(
            argv, env=env, close_fds=False, preexec_fn=lambda: os.dup2(w, 4),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )
        os.close(w)
        w = -1
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    return proc, data


def _run_helper(helper: list[str], env: dict[str, str]) -> tuple[int, list, str]:
    proc, data = run_with_fd4(helper, {**env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    return proc.returncode, decode_reply(data), proc.stderr.decode()


def _helpers():
    params = [pytest.param(STANDIN, id="standin")]
    if os.access(DOVECOT_HELPER, os.X_OK):
        params.append(pytest.param([DOVECOT_HELPER], id="dovecot"))
    else:
        params.append(pytest.param([DOVECOT_HELPER], id="dovecot",
                                   marks=pytest.mark.skip(reason=f"{DOVECOT_HELPER} not installed")))
    return params


_HOLD_FD4 = """
import fcntl, os
from dovecot_appauth.reply import hold_fd4, write_fd4
hold_fd4()
fd = os.open(os.devnull, os.O_RDONLY)  # a file opened after it never becomes fd 4
print(fd != 4, bool(fcntl.fcntl(4, fcntl.F_GETFD) & fcntl.FD_CLOEXEC), write_fd4("alice", []))
"""


def test_hold_fd4_keeps_a_closed_fd4_closed_for_writes_and_for_the_helper():
    """fd 4 not open (a manual run): held by /dev/null, read-only and close-on-exec, so no
    file of the login lands there, a write fails as on a closed fd, and an exec'd helper
    finds it closed (login.py holds it first thing)."""
    proc = subprocess.run([sys.executable, "-c", _HOLD_FD4], capture_output=True, text=True, timeout=30,
                          close_fds=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "False"]


def test_hold_fd4_leaves_an_open_fd4_alone():
    proc, data = run_with_fd4([sys.executable, "-c", _HOLD_FD4])
    assert proc.returncode == 0, proc.stderr
    # the reply went to Dovecot's pipe; fd 4 is the caller's, not close-on-exec
    assert proc.stdout.decode().split() == ["True", "False", "True"]
    assert decode_reply(data) == [("user", "alice")]


@pytest.mark.parametrize("helper", _helpers())
@pytest.mark.parametrize("lookup", [False, True])
def test_helper_round_trip_of_fields(helper, lookup):
    fields = [("userdb_uid", "5000"), ("userdb_gid", "5001"), ("userdb_home", "/srv/mail/alice"),
              ("userdb_x", NASTY), ("userdb_quota_rule", "*:storage=1G")]
    env = helper_environment({"ORIG_UID": str(os.getuid()), "HOME": "/root"}, "alice@example.com", fields,
                             lookup=lookup)
    status, reply, stderr = _run_helper(helper, env)
    assert stderr == ""
    assert status == (2 if lookup else 0)
    assert reply == [("user", "alice@example.com"), *fields]


@pytest.mark.parametrize("helper", _helpers())
def test_helper_adds_its_own_uid_gid_when_missing(helper):
    env = helper_environment({"ORIG_UID": str(os.getuid())}, "alice", [("userdb_mail", "maildir:~/M")],
                             lookup=False)
    status, reply, _ = _run_helper(helper, env)
    assert status == 0
    assert reply == [("user", "alice"), ("userdb_mail", "maildir:~/M"),
                     ("userdb_uid", str(os.getuid())), ("userdb_gid", str(os.getgid()))]


@pytest.mark.skipif(not os.access(DOVECOT_HELPER, os.X_OK), reason=f"{DOVECOT_HELPER} not installed")
def test_standin_writes_what_dovecot_helper_writes():
    env = helper_environment({"ORIG_UID": str(os.getuid())}, "alice@example.com",
                             [("userdb_x", NASTY), ("userdb_uid", "7")], lookup=False)
    assert _run_helper(STANDIN, env) == _run_helper([DOVECOT_HELPER], env)


_WRITE_FD4 = """
import sys
from dovecot_appauth.reply import write_fd4
print(write_fd4(sys.argv[1], [("userdb_x", sys.argv[2]), ("userdb_uid", "5000")]))
"""


def test_write_fd4_encodes_the_reply():
    proc, data = run_with_fd4([sys.executable, "-c", _WRITE_FD4, "alice", NASTY])
    assert proc.stdout.decode().strip() == "True"
    assert b"\n" not in data
    assert decode_reply(data) == [("user", "alice"), ("userdb_x", NASTY), ("userdb_uid", "5000")]


def test_write_fd4_without_fd4_returns_false():
    proc = subprocess.run([sys.executable, "-c", _WRITE_FD4, "alice", "x"], capture_output=True, text=True,
                          timeout=30, close_fds=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("lookup", [False, True])
@pytest.mark.parametrize("fields", [
    [("userdb_uid", "5000"), ("userdb_gid", "5001"), ("userdb_home", "/srv/mail/alice"), ("userdb_x", NASTY)],
    [("userdb_mail", "maildir:~/M")],  # no uid, no gid: the helper adds its process's
    [("userdb_gid", "7"), ("Userdb_Quota_Rule", "*:storage=1G"), ("userdb_empty", "")],  # no uid, a mixed-case name
    [],
], ids=["all", "no-uid-gid", "mixed-case", "none"])
@pytest.mark.skipif(not os.access(DOVECOT_HELPER, os.X_OK), reason=f"{DOVECOT_HELPER} not installed")
def test_the_program_writes_what_dovecots_helper_writes(fields, lookup):
    """The per-login program writes fd 4 itself instead of exec'ing checkpassword-reply
    (login.respond): byte for byte what the helper writes for the same fields."""
    env = helper_environment({"ORIG_UID": str(os.getuid()), "HOME": "/root"}, "alice@example.com", fields,
                             lookup=lookup)
    proc, data = run_with_fd4([DOVECOT_HELPER], env)
    assert proc.returncode == (2 if lookup else 0), proc.stderr
    from dovecot_appauth.core import encode_reply

    assert encode_reply(helper_reply("alice@example.com", fields, os.getuid(), os.getgid())) == data
