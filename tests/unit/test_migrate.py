"""`import-upstream`: the upstream dovecot_web_auth config.toml translated into ours."""

from __future__ import annotations

import datetime
import os
import sqlite3
import stat
import tomllib
from pathlib import Path

import pytest

from dovecot_appauth.cli import checks, migrate
from dovecot_appauth.cli import main as cli

# The upstream's config.toml.dist, as shipped (typo "unkown", as_cc ".list", coordinates path)
UPSTREAM = """\
[database]
dsn = "{dsn}"

[ldap]
host = "ldap.example.com"
tls = false
basedn = "ou=users,dc=example,dc=com"

[cache]
host = "localhost"

[audit]
# Comma separated lists fof services to always deny for
disabled_services = [ "pop3" ]
audit_result_success = "unkown"
audit_process_unknown = true
local_locationname = "local network"
log_local = true
cache_ttl = 86400
db_authlog_dd_hash_bucket = 120
something_new = 1

[audit.local_networks]
"192.0.2.0/24" = "Network 1"
"172.17.2.0/24" = "Network 2"

[audit.maxmind]
city = "./mmdb/GeoLite2-City.mmdb"
asn = "./mmdb/GeoLite2-ASN.mmdb"

[audit.lists]
ip_networks = "./lists/ip_net.deny.lst"
reverse_hostname = "./lists/rev_host.deny.lst"
network_name = "./lists/net_name.deny.lst"
network_cc = "./lists/net_cc.deny.lst"
entities = "./lists/entity.deny.lst"
as_numbers = "./lists/asn.deny.lst"
as_names = "./lists/as_dscr.deny.lst"
as_cc = "./lists/as_cc.deny.list"
geo_location_ids = "./lists/maxmind/geo_loc.deny.lst"
coordinates = "./lists/maxmind.deny.lst"

[auth]
disallow_passwords_from = ["192.0.2.10/32", "2001:db8::10/128"]
"""

LISTS = {
    "lists/ip_net.deny.lst": "203.0.113.0/24 # test net\n",
    "lists/rev_host.deny.lst": ".*\\.example\\.net\n",
    "lists/net_name.deny.lst": "EXAMPLE-NET.*\n",
    "lists/net_cc.deny.lst": "KP\n",
    "lists/entity.deny.lst": "EXAMPLE-RIPE\n",
    "lists/asn.deny.lst": "# Example\nAS64500\n",
    "lists/as_dscr.deny.lst": ".*Example Hosting.*\n",
    "lists/as_cc.deny.list": "KP\n",
    "lists/maxmind/geo_loc.deny.lst": "2017370\n",
    "lists/maxmind.deny.lst": "43.2465,46.59,50\n",
}


@pytest.fixture
def upstream(tmp_path) -> Path:
    """An upstream install: config.toml next to its lists/ (relative paths), elsewhere than the cwd."""
    root = tmp_path / "dovecot_web_auth"
    for name, text in LISTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    config = root / "config.toml"
    config.write_text(UPSTREAM.format(dsn=f"sqlite:///{tmp_path / 'mail.sqlite'}"))
    return config


def _main(argv: list[str]) -> int:
    return cli.main(argv)


def test_translate_maps_every_upstream_key(upstream):
    m = migrate.translate(migrate.read_upstream(str(upstream)), str(upstream.parent))
    c = m.config
    root = upstream.parent
    assert c["database"]["dsn"].startswith("sqlite:///")
    assert c["auth"] == {"disallow_passwords_from": ["192.0.2.10/32", "2001:db8::10/128"], "dedup_window": 120}
    assert c["audit"]["audit_result_success"] == "unknown"
    assert c["audit"]["disabled_services"] == ["pop3"]
    assert c["audit"]["audit_process_unknown"] is True
    assert c["audit"]["local_networks"] == {"192.0.2.0/24": "Network 1", "172.17.2.0/24": "Network 2"}
    assert c["audit"]["maxmind"] == {"city": str(root / "mmdb/GeoLite2-City.mmdb"),
                                     "asn": str(root / "mmdb/GeoLite2-ASN.mmdb")}
    assert c["audit"]["lists"]["as_cc"] == str(root / "lists/as_cc.deny.list")
    assert c["audit"]["lists"]["coordinates"] == str(root / "lists/maxmind.deny.lst")
    assert set(c["audit"]["lists"]) == set(migrate.LIST_KINDS)
    text = "\n".join(m.untranslated)
    for part in ("[cache]", "[audit] cache_ttl = 86400", "[audit] something_new = 1: unknown upstream key"):
        assert part in text
    assert "[ldap]" not in text  # translated to the account gate, with upstream's markers of a disabled account
    assert c["account"] == {"backend": "ldap", "ldap": {
        "uri": "ldap://ldap.example.com", "basedn": "ou=users,dc=example,dc=com", "filter": "(uid=%u)",
        "disabled": {"loginShell": ["/bin/false"], "homeDirectory": ["/dev/null"]}}}
    assert any("unkown" in n for n in m.notes)
    assert any("GeoLite2-City.mmdb does not exist" in n for n in m.notes)


def test_untranslated_keys_that_hold_secrets_are_listed_without_their_value(tmp_path):
    m = migrate.translate({"ldap": {"host": "ldap.example.com", "bind_pw": "Ldap-Bind-Secret"},
                           "audit": {"api_token": "Audit-Api-Secret", "license_key": "Mm-License-Secret",
                                     "something_new": 1}}, str(tmp_path))
    text = "\n".join(m.untranslated + m.notes)
    assert "Secret" not in text, text
    assert "[ldap] bind_pw = <not shown>: unknown upstream key" in text
    assert "[audit] api_token = <not shown>: unknown upstream key" in text
    assert "[audit] something_new = 1: unknown upstream key" in text  # other values still help


def test_translate_ldap_with_bind_port_and_starttls(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    m = migrate.translate({"ldap": {"host": "ldap.example.com", "port": 3389, "bind": "cn=web,dc=example,dc=com",
                                    "password": "bind-pw", "tls": True, "tls_cert": "ca.pem",
                                    "basedn": "dc=example,dc=com", "extra": 1}}, str(tmp_path))
    ldap = m.config["account"]["ldap"]
    assert ldap["uri"] == "ldap://ldap.example.com:3389"
    assert (ldap["bind_dn"], ldap["bind_password"], ldap["starttls"]) == ("cn=web,dc=example,dc=com", "bind-pw", True)
    assert ldap["ca_file"] == str(tmp_path / "ca.pem")
    assert any("bind_password in this file" in n for n in m.notes)
    assert any("[ldap] extra = 1: unknown upstream key" in u for u in m.untranslated)
    config = parse_text(migrate.dumps(m.config))
    assert config.account.backend == "ldap" and config.account.ldap.starttls
    assert "bind-pw" not in " ".join(m.notes + m.untranslated)


def parse_text(text: str):
    from dovecot_appauth.config import parse

    return parse(tomllib.loads(text))


def test_translate_absolute_paths_stay_and_missing_dsn_is_noted(tmp_path):
    m = migrate.translate({"audit": {"lists": {"ip_networks": "/etc/x.lst"}}, "auth": {}}, str(tmp_path))
    assert m.config["audit"]["lists"]["ip_networks"] == "/etc/x.lst"
    assert any("no [database] dsn" in n for n in m.notes)


def test_dumps_round_trips_awkward_values():
    data = {"a": {"s": 'quote " back \\ tab\t nl\n del\x7f é', "f": 1.5, "i": -3, "b": False, "l": ["x", "y"],
                  "d": datetime.date(2026, 1, 2)},
            "b": {"c": {"1.2.3.0/24": "Net", "k e y": "v"}}, "top": "t"}
    text = migrate.dumps(data)
    assert tomllib.loads(text) == data
    assert text.startswith('top = "t"')


def test_dumps_refuses_unknown_types():
    with pytest.raises(TypeError):
        migrate.dumps({"x": object()})


def test_import_upstream_writes_a_config_that_passes_check_config(upstream, tmp_path, capsys):
    out = tmp_path / "etc" / "config.toml"
    out.parent.mkdir()
    status = _main(["import-upstream", str(upstream), "--output", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    assert "not translated:" in captured.err and "  - [cache]" in captured.err
    assert "note: [ldap]: now the [account] gate" in captured.err
    # paths resolved against the upstream directory, so the file works from anywhere
    assert str(upstream.parent / "lists" / "ip_net.deny.lst") in out.read_text()
    problems = checks.check_all(str(out), check_database=False)
    errors = [str(p) for p in problems if p.level == "error"]
    assert errors == []
    assert _main(["check-config", "--config", str(out), "--no-database"]) == 0


def test_import_upstream_to_stdout_and_refuses_to_overwrite(upstream, tmp_path, capsys):
    assert _main(["import-upstream", str(upstream)]) == 0
    out, _ = capsys.readouterr()
    assert tomllib.loads(out)["audit"]["audit_result_success"] == "unknown"
    existing = tmp_path / "exists.toml"
    existing.write_text("x = 1\n")
    assert _main(["import-upstream", str(upstream), "--output", str(existing)]) == 1
    assert "exists" in capsys.readouterr().err
    assert existing.read_text() == "x = 1\n"


def test_import_upstream_bad_file(tmp_path, capsys):
    bad = tmp_path / "config.toml"
    bad.write_text("[database\n")
    assert _main(["import-upstream", str(bad)]) == 1
    assert "not valid TOML" in capsys.readouterr().err
    assert _main(["import-upstream", str(tmp_path / "missing.toml")]) == 1


def test_import_upstream_check_db(upstream, tmp_path, capsys):
    # no database yet: an error
    assert _main(["import-upstream", str(upstream), "--check-db"]) == 1
    assert "does not exist" in capsys.readouterr().err
    # the upstream's DDL (the plugin's tables and view only): logins work; side tables are warnings
    db = sqlite3.connect(tmp_path / "mail.sqlite")
    db.executescript(
        "CREATE TABLE app_passwords (id INTEGER PRIMARY KEY AUTOINCREMENT, uid VARCHAR(256) NOT NULL COLLATE NOCASE,"
        " password VARCHAR(256) NOT NULL, created DATETIME NOT NULL DEFAULT (datetime('now')), comment TEXT,"
        " deleted DATETIME);"
        "CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, pwid BIGINT NOT NULL, timestamp DATETIME NOT NULL"
        " DEFAULT (datetime('now')), service VARCHAR(256), src_ip VARCHAR(256) NOT NULL, src_rdns VARCHAR(256),"
        " src_loc VARCHAR(256), src_isp VARCHAR(256));"
        "CREATE VIEW app_passwords_with_log AS SELECT * FROM app_passwords;"
    )
    db.close()
    status = _main(["import-upstream", str(upstream), "--check-db"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "upgrade-db" in err and "schema is the one expected" in err
    # a table missing its columns: an error
    db = sqlite3.connect(tmp_path / "mail.sqlite")
    db.executescript("DROP VIEW app_passwords_with_log; DROP TABLE log; CREATE TABLE log (id INTEGER);")
    db.close()
    assert _main(["import-upstream", str(upstream), "--check-db"]) == 1
    assert "column log." in capsys.readouterr().err
