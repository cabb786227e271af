"""The audit commands of the admin CLI: explain, cache stats/purge, check-config on lists.

Run through the installed `dovecot-appauth` with a real local DNS server, the test
MaxMind databases and list files written here; no Dovecot needed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.localservers import ASN_MMDB, CITY_MMDB

DOC_RANGES = '["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]'


@pytest.fixture
def audit_setup(tmp_path: Path, dns_server):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ip_net.deny.lst").write_text("# hosting\n203.0.113.0/24  Example Hosting\n")
    (lists / "asn.deny.lst").write_text("AS64496\n")
    (lists / "rev_host.deny.lst").write_text(r".*\.hosting\.example" "\n")
    (lists / "cc.allow.lst").write_text("DE\n")
    dns = dns_server.dns_config()
    config = tmp_path / "config.toml"
    config.write_text(f"""
[database]
dsn = "sqlite:///{tmp_path}/db.sqlite"

[audit]
global_networks = {DOC_RANGES}
log_file = "{tmp_path}/audit.log"
syslog_socket = ""
journal = "no"

[audit.maxmind]
city = "{CITY_MMDB}"
asn = "{ASN_MMDB}"

[audit.dns]
resolvers = ["127.0.0.1"]
port = {dns.port}

[audit.cache]
path = "{tmp_path}/cache"

[audit.lists]
ip_networks = "lists/ip_net.deny.lst"
as_numbers = "lists/asn.deny.lst"
reverse_hostname = "lists/rev_host.deny.lst"

[audit.allow]
countries = "lists/cc.allow.lst"
""")
    run_cli(config, "init-db")
    return config, tmp_path


def test_explain_denied_ip_text(audit_setup):
    config, _ = audit_setup
    out = run_cli(config, "explain", "203.0.113.66", "--user", "alice@example.com").stdout
    assert "203.0.113.66: source is global" in out
    assert "reverse DNS: vps66.hosting.example" in out
    assert "Khasavyurt" in out and "AS64500" in out
    assert "deny       ip_networks        match" in out
    assert "verdict: DENY: ip_networks:" in out and "ip_net.deny.lst:2" in out
    assert "result=deny" in out


def test_explain_json_checks_every_rule_in_order(audit_setup):
    config, _ = audit_setup
    data = json.loads(run_cli(config, "explain", "192.0.2.10", "--json").stdout)
    assert data["verdict"] == "deny"
    kinds = [(c["list"], c["kind"], c["result"]) for c in data["checks"]]
    # the allow list (DE) did not match a US address; ip_networks has no entry for it;
    # reverse_hostname did not match; as_numbers matched AS64496
    assert ("allow", "countries", "no match") in kinds
    assert ("deny", "ip_networks", "no match") in kinds
    assert ("deny", "as_numbers", "match") in kinds
    assert data["facts"]["rdns"] == "host-10.cloud.example.com"
    assert data["facts"]["sources"]["rdns"]["status"] in ("fetched", "cached")


def test_explain_allow_beats_deny(audit_setup):
    config, tmp = audit_setup
    # Frankfurt (DE) is on the country allow list; put its network on the deny list too
    with open(tmp / "lists" / "ip_net.deny.lst", "a") as f:
        f.write("198.51.100.0/24\n")
    data = json.loads(run_cli(config, "explain", "198.51.100.7", "--json").stdout)
    assert data["verdict"] == "allow"
    assert "countries" in data["reason"]


def test_explain_writes_nothing(audit_setup):
    """explain must not log in, write the audit line or touch the log table."""
    config, tmp = audit_setup
    run_cli(config, "explain", "203.0.113.66")
    assert not (tmp / "audit.log").exists()
    with sqlite3.connect(tmp / "db.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM log").fetchone() == (0,)


def test_explain_rejects_non_ip(audit_setup):
    config, _ = audit_setup
    res = run_cli(config, "explain", "not-an-ip", check=False)
    assert res.returncode == 1
    assert "is not an IP address" in res.stderr
    assert "Traceback" not in res.stderr


def test_cache_stats_and_purge(audit_setup):
    config, _ = audit_setup
    run_cli(config, "explain", "203.0.113.66")
    run_cli(config, "explain", "198.51.100.7")
    stats = json.loads(run_cli(config, "cache", "stats", "--json").stdout)
    assert stats["sources"]["rdns"]["entries"] == 2
    assert stats["sources"]["maxmind"]["entries"] == 2

    out = run_cli(config, "cache", "purge", "--ip", "203.0.113.66").stdout
    assert "removed" in out
    stats = json.loads(run_cli(config, "cache", "stats", "--json").stdout)
    assert stats["sources"]["rdns"]["entries"] == 1

    # the second explain of the remaining IP is a cache hit
    data = json.loads(run_cli(config, "explain", "198.51.100.7", "--json").stdout)
    assert data["facts"]["sources"]["rdns"]["status"] == "cached"

    run_cli(config, "cache", "purge")
    stats = json.loads(run_cli(config, "cache", "stats", "--json").stdout)
    assert sum(s["entries"] for s in stats["sources"].values()) == 0

    text = run_cli(config, "cache", "stats").stdout
    assert "expired" in text


def test_check_config_reports_list_lines(audit_setup):
    config, tmp = audit_setup
    (tmp / "lists" / "ip_net.deny.lst").write_text("203.0.113.0/24\n198.51.100.77/24 host bits\nbogus\n")
    (tmp / "lists" / "rev_host.deny.lst").write_text("ok\\.example\n(unclosed\n")
    res = run_cli(config, "check-config", check=False)
    assert res.returncode == 1, res.stdout
    assert "ip_net.deny.lst:3" in res.stdout  # "bogus": an error with file and line
    assert "ip_net.deny.lst:2" in res.stdout and "warning" in res.stdout  # host bits masked
    assert "rev_host.deny.lst:2" in res.stdout  # regex that does not compile


def test_check_config_clean(audit_setup):
    config, _ = audit_setup
    res = run_cli(config, "check-config")
    assert "0 error(s), 0 warning(s)" in res.stdout, res.stdout
