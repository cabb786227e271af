"""Issue 15 item 2: the admin commands judge the config as the service user sees it.

Admin commands run as root. Judged as root, a list or database only root can read passed
every check and was off for every login (user dovecot), and `explain` as root left a
root-owned 0600 `cache.sqlite` after which every login logged "enrichment cache bypassed".
Now `check-config` checks the files in a child that dropped to the service user (default:
the owner of the cache directory), `explain` and `cache` drop to it, `login-test` starts
the program as it, and a cache directory others can write is not trusted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.common import dovecot_ids
from tests.support.hardening import GLOBAL_NETWORKS, dovecot_env, make_site

pytestmark = [
    pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning"),
    pytest.mark.skipif(os.geteuid() != 0, reason="changes users: needs root"),
]

USER = "demo@example.com"
CITY = Path(__file__).parents[1] / "data" / "mmdb" / "AppAuth-Test-City.mmdb"


@pytest.fixture
def site():
    s = make_site(prefix="appauth-svc-")
    s.add_password("a", USER)
    deny = s.dir / "lists" / "ip_net.deny.lst"
    deny.write_text("203.0.113.0/24\n")
    s.write(audit={"enabled": True, "global_networks": GLOBAL_NETWORKS, "syslog_socket": "", "journal": "no",
                   "deadline": 0.5},
            audit__dns={"enabled": False}, audit__maxmind={"city": str(CITY)},
            audit__lists={"ip_networks": str(deny)})
    yield s
    s.remove()


def check_config(site, *args: str):
    return run_cli(site.path, "check-config", "--no-database", *args, check=False)


def settle(path: Path) -> None:
    """Wait until `path` changed longer ago than lists.RACY_NS: the parsed form of a list is
    not cached before (a second write within the time stamp's tick could go unseen)."""
    import time

    from dovecot_appauth.audit.lists import RACY_NS

    st = path.stat()
    time.sleep(max(0.0, (max(st.st_mtime_ns, st.st_ctime_ns) + RACY_NS - time.time_ns()) / 1e9 + 0.05))


def owners(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.lstat().st_uid for p in [directory, *directory.rglob("*")]}


def test_check_config_reports_a_list_only_root_can_read(site):
    deny = site.dir / "lists" / "ip_net.deny.lst"
    assert check_config(site).returncode == 0
    os.chmod(deny, 0o600)  # root's: root reads it, dovecot does not
    res = check_config(site)
    assert res.returncode == 1, res.stdout
    assert "info: service user: files checked as dovecot " in res.stdout, res.stdout
    assert (f"error: [audit.lists] ip_networks {deny}: as dovecot: not readable: Permission denied"
            in res.stdout), res.stdout
    # judged as root on request, it is fine
    assert check_config(site, "--service-user", "root").returncode == 0


def test_check_config_reports_a_database_only_root_can_use(site):
    os.chown(site.db_path, 0, 0)
    os.chmod(site.db_path, 0o600)
    res = run_cli(site.path, "check-config", check=False)
    assert res.returncode == 1, res.stdout
    assert f"error: [database] dsn {site.db_path}: as dovecot: database file not readable and writable" \
        in res.stdout, res.stdout


def test_check_config_reports_an_mmdb_only_root_can_read(site):
    private = site.dir / "City.mmdb"
    private.write_bytes(CITY.read_bytes())
    os.chmod(private, 0o600)
    site.write(**{**site.sections, "audit.maxmind": {"city": str(private)}})
    res = check_config(site)
    assert (f"warning: [audit.maxmind] city {private}: as dovecot: not readable: Permission denied"
            in res.stdout), res.stdout


def test_check_config_unknown_service_user(site):
    res = check_config(site, "--service-user", "no-such-user-here")
    assert res.returncode == 1
    assert "error: service user: --service-user no-such-user-here: no such user" in res.stdout, res.stdout


def test_explain_as_root_leaves_only_files_the_service_user_owns(site):
    uid = dovecot_ids()[0]
    settle(site.dir / "lists" / "ip_net.deny.lst")  # so that its parsed form is cached
    out = run_cli(site.path, "explain", "198.51.100.7", "--json").stdout
    assert json.loads(out)["facts"]["sources"]["maxmind"]["status"] == "fetched"
    made = owners(site.cache)
    assert "cache.sqlite" in made and any(name.startswith("lists/") for name in made), made
    assert set(made.values()) == {uid}, made
    run = site.login("a", env=dovecot_env(ip="198.51.100.7"), user="dovecot")
    assert run.status == 0 and run.stderr == "", run.stderr  # no "enrichment cache bypassed"
    assert set(owners(site.cache).values()) == {uid}
    # cache stats and purge as root act as dovecot too
    stats = json.loads(run_cli(site.path, "cache", "stats", "--json").stdout)
    assert stats["sources"]["maxmind"]["entries"] == 1, stats
    run_cli(site.path, "cache", "purge")
    assert set(owners(site.cache).values()) == {uid}


def test_explain_sees_the_lists_as_the_service_user(site):
    deny = site.dir / "lists" / "ip_net.deny.lst"
    os.chmod(deny, 0o600)
    res = run_cli(site.path, "explain", "203.0.113.9", check=False)
    assert res.returncode == 1
    assert f"deny list ip_networks {deny}: not readable by uid {dovecot_ids()[0]} (dovecot)" in res.stderr, res.stderr


def test_login_test_runs_the_program_as_the_service_user(site):
    deny = site.dir / "lists" / "ip_net.deny.lst"
    res = run_cli(site.path, "login-test", USER, "--ip", "198.51.100.7", "--json", input=site.pw("a") + "\n")
    data = json.loads(res.stdout)
    assert data["verdict"] == "AUTHENTICATED", data
    assert data["run_as"].startswith("dovecot (uid "), data
    os.chmod(deny, 0o600)
    res = run_cli(site.path, "login-test", USER, "--ip", "198.51.100.7", "--json", input=site.pw("a") + "\n",
                  check=False)
    data = json.loads(res.stdout)
    assert data["verdict"] == "TEMPORARY FAILURE", data
    assert data["stderr"] == [f"dovecot-appauth: deny list ip_networks {deny}: not readable by uid "
                              f"{dovecot_ids()[0]} (dovecot); audited logins fail until it is fixed "
                              "([audit] unreadable_list = tempfail)"], data
    # root's view on request
    res = run_cli(site.path, "login-test", USER, "--ip", "198.51.100.7", "--json", "--service-user", "root",
                  input=site.pw("a") + "\n")
    assert json.loads(res.stdout)["verdict"] == "AUTHENTICATED"


def test_root_owned_cache_file_is_reported(site):
    (site.cache / "cache.sqlite").write_bytes(b"")  # what explain as root used to leave
    os.chmod(site.cache / "cache.sqlite", 0o600)
    res = check_config(site)
    assert (f"warning: [audit.cache] path {site.cache}: as dovecot: {site.cache}/cache.sqlite belongs to uid 0"
            in res.stdout), res.stdout


@pytest.mark.parametrize("mode", [0o770, 0o777], ids=["0770", "0777"])
def test_cache_directory_others_can_write_is_not_trusted(site, mode):
    assert site.login("a", env=dovecot_env(ip="198.51.100.7"), user="dovecot").stderr == ""
    os.chmod(site.cache, mode)
    for _ in range(2):  # uncached, and loud on every login
        run = site.login("a", env=dovecot_env(ip="198.51.100.7"), user="dovecot")
        assert run.status == 0, run.stderr
        [line] = run.lines
        assert line == (f"dovecot-appauth: enrichment cache bypassed: directory {site.cache} is group- or "
                        f"world-writable (mode {mode:04o}), so its entries could be forged: not trusted; "
                        "chmod 0700"), line
    res = check_config(site)
    assert res.returncode == 1
    assert f"error: [audit.cache] path {site.cache}: is group- or world-writable (mode {mode:04o})" in res.stdout


def test_cache_of_another_user_is_not_trusted(site):
    """A cache directory or file that belongs to another user (one who made the path first):
    readable, so its entries were used, and whoever owns it can forge them."""
    import pwd
    import sqlite3

    nobody = pwd.getpwnam("nobody").pw_uid
    uid = dovecot_ids()[0]
    cache_file = site.cache / "cache.sqlite"
    assert site.login("a", env=dovecot_env(ip="198.51.100.7"), user="dovecot").stderr == ""
    with sqlite3.connect(cache_file) as conn:  # readable without writing: no -wal/-shm needed
        conn.execute("PRAGMA journal_mode=DELETE")
    os.chown(site.cache, nobody, -1)
    os.chmod(site.cache, 0o755)
    os.chown(cache_file, nobody, -1)
    os.chmod(cache_file, 0o644)
    expected = (f"dovecot-appauth: enrichment cache bypassed: directory {site.cache} belongs to uid {nobody}, "
                f"not to this user (uid {uid}) or root, so its entries could be forged: not trusted")
    for _ in range(2):  # uncached, and loud on every login
        run = site.login("a", env=dovecot_env(ip="198.51.100.7"), user="dovecot")
        assert run.status == 0 and run.lines == [expected], run.stderr
    os.chown(site.cache, uid, -1)  # the directory is the service user's again; the file is not
    os.chmod(site.cache, 0o700)
    run = site.login("a", env=dovecot_env(ip="198.51.100.7"), user="dovecot")
    assert run.status == 0 and run.lines == [
        f"dovecot-appauth: enrichment cache bypassed: {cache_file} belongs to uid {nobody}, not to this user "
        f"(uid {uid}) or root: not trusted"], run.stderr


def test_explain_as_root_warns_before_creating_a_missing_cache_directory(site):
    missing = site.dir / "var-cache" / "appauth"
    (site.dir / "var-cache").mkdir()  # root's, like /var/cache
    site.write(**{**site.sections, "audit.cache": {"path": str(missing)}})
    res = run_cli(site.path, "explain", "198.51.100.7")
    assert (f"dovecot-appauth: warning: the cache directory {missing} does not exist, so this command acts as "
            "root" in res.stderr), res.stderr
    assert f"install -d -o dovecot -g dovecot -m 0700 {missing}" in res.stderr
    assert missing.stat().st_uid == 0  # what the warning is about
    shutil.rmtree(missing)
    # created by the install step: explain acts as dovecot and says nothing
    missing.mkdir(mode=0o700)
    os.chown(missing, *dovecot_ids())
    res = run_cli(site.path, "explain", "198.51.100.7")
    assert res.stderr == "", res.stderr
    assert set(owners(missing).values()) == {dovecot_ids()[0]}


def test_a_root_owned_cache_directory_does_not_make_root_the_judge_silently(site):
    # the service user defaults to the cache directory's owner: a directory root made (an
    # install step skipped) turned every check into one as root, who reads everything
    deny = site.dir / "lists" / "ip_net.deny.lst"
    os.chmod(deny, 0o600)  # root's only: off for logins as dovecot
    os.chown(site.cache, 0, 0)
    res = check_config(site)
    assert (f"warning: service user: the cache directory {site.cache} belongs to root, so files are judged as "
            "root" in res.stdout), res.stdout
    assert "--service-user dovecot" in res.stdout
    res = run_cli(site.path, "explain", "198.51.100.7", check=False)
    assert f"dovecot-appauth: warning: the cache directory {site.cache} belongs to root" in res.stderr, res.stderr
    # named on purpose, root is not warned about
    assert "belongs to root" not in check_config(site, "--service-user", "root").stdout


def test_check_config_reports_an_audit_socket_the_service_user_cannot_send_to(site, monkeypatch):
    """A syslog or journald socket root may send to but user dovecot may not (its mode): as
    root it passed, and every login's audit line was not logged there."""
    import socket

    from dovecot_appauth.cli.service_user import ServiceUser, access_problems
    from dovecot_appauth.config import load

    def bound(name: str, mode: int) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(site.dir / name))
        os.chmod(site.dir / name, mode)
        return sock

    syslog = bound("log", 0o600)
    journald = bound("journal", 0o666)
    try:
        site.write(**{**site.sections, "audit": {**site.sections["audit"], "syslog_socket": syslog.getsockname()}})
        res = check_config(site)
        said = (f"warning: [audit] syslog_socket {site.dir / 'log'}: as dovecot: cannot send to it: Permission "
                "denied: every login will say that its audit line was not logged there")
        assert said in res.stdout, res.stdout
        assert check_config(site, "--service-user", "root").stdout.count("syslog_socket") == 0
        os.chmod(site.dir / "log", 0o666)
        assert "syslog_socket" not in check_config(site).stdout

        # journald first, as the login sends: syslog is judged only when journald is not usable
        uid, gid = dovecot_ids()
        dovecot = ServiceUser("dovecot", uid, gid, "test")
        monkeypatch.setattr("dovecot_appauth.audit.line.JOURNAL_SOCKET", journald.getsockname())

        def found(journal: str) -> list[str]:
            site.write(**{**site.sections, "audit": {**site.sections["audit"], "journal": journal}})
            return [str(p) for p in access_problems(load(str(site.path)), str(site.path), dovecot)
                    if p.where.startswith("[audit] ")]

        os.chmod(site.dir / "log", 0o600)
        assert found("auto") == []  # journald takes the lines: syslog is not their way
        os.chmod(site.dir / "journal", 0o600)
        assert found("yes") == [
            f"warning: [audit] journal {site.dir / 'journal'}: as dovecot: cannot send to it: Permission denied: "
            "every login's audit line goes to syslog instead",
            f"warning: [audit] syslog_socket {site.dir / 'log'}: as dovecot: cannot send to it: Permission denied: "
            "every login will say that its audit line was not logged there"]
        assert found("no") == [f"warning: [audit] syslog_socket {site.dir / 'log'}: as dovecot: cannot send to "
                               "it: Permission denied: every login will say that its audit line was not logged there"]
        # a socket nobody listens on any more: refused, said the same way
        journald.close()
        os.chmod(site.dir / "journal", 0o666)
        assert any("journal" in p and "Connection refused" in p for p in found("auto"))
    finally:
        syslog.close()
        journald.close()
