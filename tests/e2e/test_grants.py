"""Least privilege on MariaDB: the mail host's account with exactly the documented grants
runs every per-login feature, and a missing privilege is reported as one (issue 15, item 3).

The grants are read from docs/CONFIGURATION.md itself, so the documentation cannot fall
behind what a login needs. Logins run through the installed program, as Dovecot runs it.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from dovecot_appauth.cli import schema
from dovecot_appauth.policy import Policy
from tests.support.hardening import GLOBAL_NETWORKS, dovecot_env, make_site, run_cli

pytestmark = pytest.mark.mariadb

ROOT = Path(__file__).resolve().parents[2]
MMDB = ROOT / "tests" / "data" / "mmdb"
README_ACCOUNT = "'dovecot'@'mailhost'"
README_DATABASE = "mail_auth"
MAIL_HOST_PASSWORD = "Mail:host@pw/1"  # a test account on the test server
LIMITS = {"max_per_user_ip": 3, "max_per_ip": 5, "max_per_user": 8, "delay": 0.0}


def readme_grants() -> list[str]:
    """The GRANT statements of docs/CONFIGURATION.md's MariaDB section, as written there."""
    text = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    grants = re.findall(r"^GRANT [^\n]+;$", text, flags=re.MULTILINE)
    assert grants, "docs/CONFIGURATION.md lists no GRANT statements"
    return grants


class MailHost:
    """A MariaDB account for the mail host, with the documented grants on one database."""

    def __init__(self, server, database: str) -> None:
        self.server = server
        self.database = database
        self.name = f"mh_{uuid.uuid4().hex[:10]}"
        self.accounts = [f"'{self.name}'@'%'", f"'{self.name}'@'localhost'"]
        statements = [f"CREATE USER {a} IDENTIFIED BY '{MAIL_HOST_PASSWORD}'" for a in self.accounts]
        for grant in readme_grants():
            grant = grant.rstrip(";").replace(f" {README_DATABASE}.", f" `{database}`.")
            statements += [grant.replace(README_ACCOUNT, a) for a in self.accounts]
        server.execute_root(*statements)

    @property
    def dsn(self) -> str:
        return (f"mysql+pymysql://{self.name}:{quote(MAIL_HOST_PASSWORD, safe='')}@{self.server.host}:"
                f"{self.server.port}/{self.database}")

    def revoke(self, privilege: str, table: str) -> None:
        self.server.execute_root(*(f"REVOKE {privilege} ON `{self.database}`.`{table}` FROM {a}"
                                   for a in self.accounts))

    def drop(self) -> None:
        self.server.execute_root(*(f"DROP USER IF EXISTS {a}" for a in self.accounts))


@pytest.fixture
def least(mariadb, mariadb_database):
    """A site whose tables the admin account made, and whose logins use the mail host account."""
    site = make_site(mariadb_database.dsn, prefix="appauth-grants-")
    site.add_password("a", "alice@example.com")
    site.add_password("c", "carol@example.com")
    engine = schema.make_engine(mariadb_database.dsn)
    try:
        schema.set_policy(engine, site.pwid("c"), services=("imap",))
    finally:
        engine.dispose()
    host = MailHost(mariadb, mariadb_database.name)
    site.admin_dsn = mariadb_database.dsn
    site.dsn = host.dsn
    site.host = host
    _write(site)
    yield site
    host.drop()
    site.remove()


def _write(site, **throttle) -> None:
    site.write(
        audit={"enabled": True, "deadline": 1.0, "global_networks": GLOBAL_NETWORKS, "syslog_socket": "",
               "journal": "no", "log_file": str(site.dir / "audit.log")},
        audit__dns={"enabled": False},
        audit__maxmind={"city": str(MMDB / "AppAuth-Test-City.mmdb"), "asn": str(MMDB / "AppAuth-Test-ASN.mmdb")},
        throttle={**LIMITS, **throttle},
    )


def _rows(site, sql: str) -> list[tuple]:
    engine = schema.make_engine(site.admin_dsn)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql).fetchall()]
    finally:
        engine.dispose()


def _login(site, key, password=None, ip="198.51.100.7", service="imap"):
    return site.login(key, password, env=dovecot_env(ip=ip, service=service))


def test_readme_grants_cover_what_the_login_needs():
    from dovecot_appauth.store import MAIL_HOST_GRANTS

    listed = {}
    for grant in readme_grants():
        found = re.fullmatch(rf"GRANT (.+) ON {README_DATABASE}\.(\w+) TO {re.escape(README_ACCOUNT)};", grant)
        assert found, grant
        listed[found.group(2)] = found.group(1)
    assert listed == MAIL_HOST_GRANTS


def test_every_per_login_feature_runs_with_the_readme_grants(least):
    site = least
    # login, its log row, its audit event and its known client
    ok = _login(site, "a")
    assert (ok.status, ok.stderr) == (0, ""), ok
    assert _rows(site, "SELECT pwid, service, src_ip FROM log") == [(site.pwid("a"), "imap", "198.51.100.7")]
    assert _rows(site, "SELECT uid, result, authenticated FROM audit_events") == [("alice@example.com", "unknown", 1)]
    assert _rows(site, "SELECT uid, client FROM known_clients") == [("alice@example.com", "198.51.100.7")]
    # a policy refusal is an audit event too
    refused = _login(site, "c", service="pop3")
    assert refused.status == 1 and "refused" in refused.stderr and "permission" not in refused.stderr
    assert _rows(site, "SELECT uid, result, rule FROM audit_events WHERE result = 'refused'") == [
        ("carol@example.com", "refused", "policy")]
    # the limiter counts and refuses
    for _ in range(3):
        wrong = _login(site, "a", "Wrong-Pass-Word-0000", ip="203.0.113.5")
        assert (wrong.status, wrong.stderr) == (1, ""), wrong
    throttled = _login(site, "a", ip="203.0.113.5")
    assert throttled.status == 111 and "throttled, 3 failed logins per user+ip" in throttled.stderr
    # the per-user limit, and the known client's exemption from it
    for n in range(5):
        assert _login(site, "a", "Wrong-Pass-Word-0000", ip=f"203.0.113.{20 + n}").status == 1
    assert _login(site, "a", ip="203.0.113.99").status == 111
    known = _login(site, "a", ip="198.51.100.7")
    assert (known.status, known.stderr) == (0, ""), known
    # check-config, run with the mail host's DSN, has nothing to say about the database
    res = run_cli(site.path, "check-config", check=False)
    assert "[database]" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_missing_limiter_grant_fails_closed_and_names_the_grant(least):
    site = least
    site.host.revoke("SELECT", "auth_failures")
    run = _login(site, "a")
    assert run.status == 111, run
    [line] = run.lines
    assert "brute-force limiter unavailable" in line and "permission denied" in line
    assert f"GRANT SELECT, INSERT ON `{site.host.database}`.`auth_failures` TO '{site.host.name}'@" in line
    assert site.pw("a") not in run.stderr and MAIL_HOST_PASSWORD not in run.stderr
    # check-config says the same, not "table missing"
    res = run_cli(site.path, "check-config", check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "no SELECT privilege on table auth_failures" in out and "GRANT SELECT, INSERT ON" in out, out
    assert "is missing" not in out, out
    # a client the limiter never holds back is not refused for it, but hears of it
    _write(site, exempt_networks=["198.51.100.0/24"])
    exempt = _login(site, "a")
    assert exempt.status == 0 and "limiter off for this login (an exempt network" in exempt.stderr, exempt
    assert _login(site, "a", ip="203.0.113.7").status == 111
    # the documented way to go on without the limiter: every login says so
    _write(site, unavailable="skip")
    for _ in range(2):
        run = _login(site, "a")
        assert run.status == 0, run
        [line] = run.lines
        assert "brute-force limiter off for this login" in line and "GRANT SELECT, INSERT" in line


def test_missing_insert_grants_are_said_on_every_login(least):
    site = least
    site.host.revoke("INSERT", "auth_failures")
    site.host.revoke("INSERT", "audit_events")
    wrong = _login(site, "a", "Wrong-Pass-Word-0000")
    assert wrong.status == 1
    assert "not counted for throttling" in wrong.stderr and "GRANT SELECT, INSERT ON" in wrong.stderr, wrong
    ok = _login(site, "a")
    assert ok.status == 0
    assert "audit event of alice@example.com not recorded: " in ok.stderr and "permission denied" in ok.stderr
    assert f"`{site.host.database}`.`audit_events`" in ok.stderr
    res = run_cli(site.path, "check-config", check=False)
    out = res.stdout + res.stderr
    assert "no INSERT privilege on table auth_failures" in out and "no INSERT privilege on table audit_events" in out


def test_missing_known_clients_grant_is_said_and_the_login_still_succeeds(least):
    site = least
    site.host.revoke("UPDATE", "known_clients")  # ON DUPLICATE KEY UPDATE needs it
    site.host.revoke("INSERT", "known_clients")
    ok = _login(site, "a")
    assert ok.status == 0
    assert "not recorded as a known client" in ok.stderr and "GRANT SELECT, INSERT, UPDATE ON" in ok.stderr, ok


def test_policy_table_grant_missing_is_not_an_old_database(least):
    site = least
    site.host.revoke("SELECT", "app_password_policy")
    run = _login(site, "a")
    assert run.status == 111, run
    assert "upgrade-db" not in run.stderr and "GRANT SELECT ON" in run.stderr and "app_password_policy" in run.stderr


def test_the_readme_grants_are_least_privilege(least):
    """No DELETE (nor anything else unlisted); what is granted still reads the policies."""
    from dovecot_appauth.core import TempFail
    from dovecot_appauth.store import open_store

    store = open_store(least.dsn, 2.0)
    try:
        with pytest.raises(TempFail, match="permission denied"):
            store._run("DELETE FROM auth_failures", ())
        assert Policy(("imap",)) == store.find_passwords("carol@example.com")[0].policy
    finally:
        store.close()
