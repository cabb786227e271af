"""Issue 15 item 1: a configured deny or allow list that cannot be read is never an open gate.

The scenario of the issue, run through the installed per-login program as user dovecot
(as Dovecot runs it): a demo-like config where 203.0.113.0/24 counts as global and one
`ip_networks` deny list matches 203.0.113.9. The file moved away, made 0000 or replaced
by a directory used to read as an empty list: the right password from 203.0.113.9 got
in with nothing on stderr and `result=unknown` in the audit line. Now the login is a
temporary failure (111) with one line naming the list, the file and the reason; with
`[audit] unreadable_list = "skip"` it goes on without that list and says so each time.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from dovecot_appauth.audit.pipeline import assess
from dovecot_appauth.config import ConfigError, parse
from dovecot_appauth.core import TempFail
from tests.support.hardening import GLOBAL_NETWORKS, dovecot_env, make_site, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")

USER = "demo@example.com"
DENIED_IP = "203.0.113.9"
OTHER_IP = "198.51.100.7"
DAMAGES = ("moved", "chmod-000", "directory")
REASONS = {"moved": "file not found", "chmod-000": "not readable by uid", "directory": "a directory"}


@pytest.fixture
def site():
    s = make_site(prefix="appauth-lists-")
    s.add_password("a", USER)
    (s.dir / "lists" / "ip_net.deny.lst").write_text("# demo\n203.0.113.0/24   documentation net\n")
    (s.dir / "audit.log").touch()
    os.chmod(s.dir / "audit.log", 0o666)
    yield s
    s.remove()


def write_config(site, *, allow: bool = False, **audit) -> None:
    sections = {
        "audit": {"enabled": True, "global_networks": GLOBAL_NETWORKS, "syslog_socket": "", "journal": "no",
                  "log_file": str(site.dir / "audit.log"), "deadline": 0.5, **audit},
        "audit__dns": {"enabled": False},
        "audit__lists": {"ip_networks": "lists/ip_net.deny.lst"},
    }
    if allow:
        sections["audit__allow"] = {"ip_networks": "lists/ip_net.allow.lst"}
    site.write(**sections)


def damage(path, how: str) -> None:
    if how == "moved":
        path.rename(path.with_suffix(".moved"))
    elif how == "chmod-000":
        os.chmod(path, 0)
    else:
        path.unlink()
        path.mkdir()


def login(site, ip: str):
    return site.login("a", env=dovecot_env(ip=ip), user="dovecot")


def audit_results(site) -> list[str]:
    return [line.rsplit("result=", 1)[1] for line in (site.dir / "audit.log").read_text().splitlines()]


@pytest.mark.parametrize("how", DAMAGES)
def test_unreadable_deny_list_is_a_temporary_failure(site, how):
    write_config(site)
    assert login(site, DENIED_IP).status == 1  # the list works
    assert login(site, OTHER_IP).status == 0
    deny_file = site.dir / "lists" / "ip_net.deny.lst"
    damage(deny_file, how)
    before = audit_results(site)
    for ip in (DENIED_IP, OTHER_IP):  # nobody can be judged without the list
        run = login(site, ip)
        assert run.status == 111, (ip, run.status, run.stderr)
        assert run.reply == b""
        [line] = run.lines
        assert line.startswith(f"dovecot-appauth: deny list ip_networks {deny_file}: {REASONS[how]}"), line
        assert 'unreadable_list' in line, line
    assert audit_results(site) == before  # no "result=unknown" line for a login never judged


@pytest.mark.parametrize("how", DAMAGES)
def test_skip_goes_on_without_the_list_and_says_so_every_time(site, how):
    write_config(site, unreadable_list="skip")
    deny_file = site.dir / "lists" / "ip_net.deny.lst"
    damage(deny_file, how)
    for _ in range(2):
        run = login(site, DENIED_IP)
        assert run.status == 0, run.stderr
        [line] = run.lines
        assert line.startswith(f"dovecot-appauth: deny list ip_networks {deny_file}: {REASONS[how]}"), line
        assert line.endswith("going on without it ([audit] unreadable_list = skip)"), line


def test_unreadable_allow_list_lets_nothing_through(site):
    allow_file = site.dir / "lists" / "ip_net.allow.lst"
    allow_file.write_text(f"{DENIED_IP}\n")
    write_config(site, allow=True)
    assert login(site, DENIED_IP).status == 0  # the allow entry beats the deny list
    os.chmod(allow_file, 0)
    run = login(site, DENIED_IP)
    assert run.status == 111, run.stderr
    [line] = run.lines
    assert line.startswith(f"dovecot-appauth: allow list ip_networks {allow_file}: not readable by uid"), line
    write_config(site, allow=True, unreadable_list="skip")
    run = login(site, DENIED_IP)
    assert run.status == 1, run.stderr  # denied: the allow list that cannot be read allows nothing
    assert run.lines[0].startswith(f"dovecot-appauth: allow list ip_networks {allow_file}: not readable"), run.lines
    assert "denied by audit: ip_networks" in run.lines[1], run.lines


def test_throttle_exemption_needs_a_readable_allow_list(site):
    allow_file = site.dir / "lists" / "ip_net.allow.lst"
    allow_file.write_text(f"{OTHER_IP}\n")
    limits = {"max_per_user_ip": 2, "max_per_ip": 50, "max_per_user": 50, "delay": 0.0, "verdict": "deny"}
    site.write(throttle=limits, audit__allow={"ip_networks": str(allow_file)})
    for _ in range(3):
        assert site.login("a", "not-" + site.pw("a"), env=dovecot_env(ip=OTHER_IP), user="dovecot").status == 1
    assert login(site, OTHER_IP).status == 0  # exempt: the allow list names it
    os.chmod(allow_file, 0)
    run = login(site, OTHER_IP)
    assert run.status == 111, run.stderr
    [line] = run.lines
    assert line.startswith(f"dovecot-appauth: allow list ip_networks {allow_file}: not readable by uid"), line
    site.write(throttle=limits, audit={"enabled": False, "unreadable_list": "skip"},
               audit__allow={"ip_networks": str(allow_file)})
    run = login(site, OTHER_IP)
    assert run.status == 1, run.stderr  # not exempt: throttled
    assert run.lines[0].startswith(f"dovecot-appauth: allow list ip_networks {allow_file}"), run.lines
    assert "throttled" in run.lines[1], run.lines


def test_assess_of_serve_and_explain_refuses_a_missing_list(tmp_path):
    """`pipeline.assess` is what `serve`'s /policy and `explain` run: the same rule."""
    config = parse({"audit": {"global_networks": GLOBAL_NETWORKS, "syslog_socket": "", "journal": "no",
                              "dns": {"enabled": False}, "cache": {"enabled": False},
                              "lists": {"as_numbers": str(tmp_path / "asn.deny.lst")}}})
    with pytest.raises(TempFail, match=r"deny list as_numbers .*asn\.deny\.lst: file not found"):
        assess(user=USER, service="imap", ip=DENIED_IP, config=config, now=time.time())
    # a local source is not judged by the lists: nothing to refuse
    assert not assess(user=USER, service="imap", ip="127.0.0.1", config=config, now=time.time()).deny


def test_serve_verify_and_policy_fail_closed(site, file_clock):
    """`serve` (Dovecot 2.4's Lua passdb and auth policy) runs the same decide/assess."""
    pytest.importorskip("starlette")
    import io

    from dovecot_appauth.serve.server import Engine

    write_config(site)
    deny_file = site.dir / "lists" / "ip_net.deny.lst"
    log = io.StringIO()
    engine = Engine(str(site.path), stderr=log)
    body = {"user": USER, "password": site.pw("a"), "service": "imap", "remote_ip": DENIED_IP}
    assert engine.verify(body)["result"] == "fail"
    damage(deny_file, "moved")
    file_clock.advance()  # serve looks at its files once per --file-check-interval
    assert engine.verify(body) == {"result": "tempfail"}
    with pytest.raises(TempFail, match="deny list ip_networks"):
        engine.policy("allow", {"login": USER, "remote": DENIED_IP, "protocol": "imap"})
    assert f"deny list ip_networks {deny_file}: file not found" in log.getvalue()
    # every login it affects says so, also within one file check interval (the lists built
    # without it are never handed out again: lists.load_lists)
    assert engine.verify(body) == {"result": "tempfail"}
    assert log.getvalue().count(f"deny list ip_networks {deny_file}: file not found") == 2


def test_fifo_in_place_of_a_list_does_not_hang_the_login(site):
    write_config(site)
    deny_file = site.dir / "lists" / "ip_net.deny.lst"
    deny_file.unlink()
    os.mkfifo(deny_file, 0o644)
    run = login(site, DENIED_IP)
    assert run.status == 111 and "not a regular file" in run.stderr, run.stderr
    assert run.elapsed < 10


def test_check_config_names_a_directory_in_place_of_a_list(site):
    write_config(site)
    deny_file = site.dir / "lists" / "ip_net.deny.lst"
    damage(deny_file, "directory")
    out = run_cli(site.path, "check-config", "--no-database", check=False)
    assert out.returncode == 1
    assert f"error: {deny_file}: ip_networks: a directory; audited logins fail until" in out.stdout, out.stdout
    shutil.rmtree(deny_file)


def test_unreadable_list_setting_is_checked():
    assert parse({}).audit.unreadable_list == "tempfail"
    assert parse({"audit": {"unreadable_list": "skip"}}).audit.unreadable_list == "skip"
    with pytest.raises(ConfigError, match=r"\[audit\] unreadable_list: is 'open', must be one of tempfail, skip"):
        parse({"audit": {"unreadable_list": "open"}})


@pytest.mark.parametrize("how", DAMAGES)
def test_audit_chain_refuses_what_a_list_it_cannot_read_should_judge(site, how):
    # --audit-chain: the example config maps 111 to return-ok ("let the login through"), so
    # a temporary failure there would have let in every login the deny list should judge
    write_config(site)
    chain = dovecot_env(ip=DENIED_IP, APPAUTH_OK="yes")  # the marker of the passdb before
    assert site.login("a", env=chain, user="dovecot", args=("--audit-chain",)).status == 1  # the list works
    deny_file = site.dir / "lists" / "ip_net.deny.lst"
    damage(deny_file, how)
    run = site.login("a", env=chain, user="dovecot", args=("--audit-chain",))
    assert run.status == 1, (run.status, run.stderr)
    [line] = run.lines
    assert line.startswith("dovecot-appauth: user demo@example.com: --audit-chain refused the login: deny list "
                           f"ip_networks {deny_file}: {REASONS[how]}"), line
    write_config(site, unreadable_list="skip")  # the admin's choice: on without it, said each time
    run = site.login("a", env=chain, user="dovecot", args=("--audit-chain",))
    assert run.status == 0, run.stderr
    assert "going on without it" in run.lines[0], run.lines
