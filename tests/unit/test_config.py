"""The TOML configuration: defaults, problems with their location, file errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from dovecot_appauth.config import (
    FIELDS,
    AuditConfig,
    AuthConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    LdapAccountConfig,
    UserdbConfig,
    config_path,
    example_toml,
    load,
    parse,
)
from tests.support.common import new_server_dir

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "config.toml"


def _toml(text: str) -> dict:
    return tomllib.loads(textwrap.dedent(text))


def _error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, "/etc/dovecot-appauth/config.toml")
    return info.value


def test_example_config_loads_without_problems():
    config = load(str(EXAMPLE))
    assert config.problems == ()


def test_example_config_is_the_one_the_table_writes():
    # conf/config.toml is written from config.FIELDS: a key added, renamed or re-documented
    # there without running the script fails here (and in CI)
    assert EXAMPLE.read_text() == example_toml(), "run scripts/write-config-example.py"
    script = Path(__file__).resolve().parents[2] / "scripts" / "write-config-example.py"
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0


def test_example_config_names_every_key_of_the_table():
    named: set[tuple[str, str]] = set()  # (section, key) written as `key = ...` or `# key = ...`
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif " = " in line:
            named.add((section, line.removeprefix("# ").split(" = ", 1)[0]))
    for section, key, kind, *_ in ROWS:
        if "*" not in section and kind != "users" and key != "bind_password":  # bind_dn's help tells it
            assert (section, key) in named or kind in ("string_table", "strings_table"), (section, key)
            if kind in ("string_table", "strings_table"):
                assert f"[{section}.{key}]" in EXAMPLE.read_text()


ROWS = [(section, *row) for section, _help, rows in FIELDS for row in rows]  # (section, key, kind, ...)


def _nested(section: str, key: str, value: object) -> dict:
    """{"a": {"b": {key: value}}} for section "a.b"; "*" is the user alice."""
    data: dict = {key: value}
    for part in reversed(section.replace("*", "alice").split(".")):
        data = {part: data}
    return data


WRONG_BY_KIND = {"bool": "yes", "number": "ten", "int": 1.5, "str": 5, "text": 5, "strings": 5, "choice": "zzz",
                 "id": True, "command": 5, "string_table": 5, "strings_table": 5, "users": 5}


@pytest.mark.parametrize("row", ROWS, ids=[f"{row[0]}.{row[1]}" for row in ROWS])
def test_every_row_of_the_table_is_read_and_checked(row):
    section, key, kind, *_ = row
    error = _error(_nested(section, key, WRONG_BY_KIND[kind]))
    where = f"config.toml: [{section.replace('*', 'alice')}] {key}"
    assert [p.where for p in error.problems if p.level == "error"] == [where]
    unknown = parse(_nested(section, key + "_typo", 1)).problems
    assert [(p.level, p.where.rsplit(" ", 1)[-1]) for p in unknown] == [("warning", key + "_typo")]


def test_defaults_are_the_rows_defaults():
    config = parse({})
    sections = {"database": config.database, "auth": config.auth, "userdb": config.userdb, "audit": config.audit,
                "alerts": config.alerts, "throttle": config.throttle, "nextcloud": config.nextcloud,
                "account": config.account, "account.ldap": config.account.ldap, "account.sql": config.account.sql,
                "fast_path": config.fast_path}
    for child in ("maxmind", "dns", "rdap", "origin_as", "cache"):
        sections[f"audit.{child}"] = getattr(config.audit, child)
    checked = 0
    for section, key, kind, default, *_ in ROWS:
        if section in sections:
            value = getattr(sections[section], key)
            assert value == (dict(default) if kind.endswith("table") else default), (section, key)
            checked += 1
    assert checked == len(ROWS) - 17  # all but the 10 deny lists, 4 rows of [audit.allow], 3 of its users
    assert config.audit.lists == {} and config.audit.allow == {} and config.audit.allow_users == {}


def test_a_section_class_takes_keywords_and_copies_mutable_defaults():
    one, two = UserdbConfig(), UserdbConfig()
    one.extra["userdb_quota_rule"] = "*:storage=1G"
    assert two.extra == {}
    assert AuthConfig(hash_checks=3).hash_checks == 3
    assert AuditConfig(dns=None, lists=None, local_networks=None) == AuditConfig()  # None: the default, as before
    assert LdapAccountConfig(disabled=None).disabled == {"loginShell": ("/bin/false",), "homeDirectory": ("/dev/null",)}
    with pytest.raises(TypeError, match="no field hash_chekcs"):
        AuthConfig(hash_chekcs=3)


def test_empty_config_is_all_defaults():
    config = parse({})
    assert config.database == DatabaseConfig()
    assert config.auth == AuthConfig()
    assert config.database.dsn == "sqlite:////var/lib/dovecot-appauth/db.sqlite"
    assert config.database.connect_timeout == 3.0
    assert config.auth.dedup_window == 60.0
    assert config.auth.hash_scheme == "sha512-crypt"
    assert config.audit.enabled is True
    assert config.problems == ()


def test_values_are_read():
    config = parse(_toml("""
        [database]
        dsn = "mysql+pymysql://u:p@db/appauth"
        connect_timeout = 1.5
        [auth]
        disallow_passwords_from = ["192.0.2.10/32", "2001:db8::/64"]
        hash_scheme = "bcrypt"
        dedup_window = 30
        [audit]
        enabled = false
    """))
    assert config.database.dsn == "mysql+pymysql://u:p@db/appauth"
    assert config.database.connect_timeout == 1.5
    assert config.auth.disallow_passwords_from == ("192.0.2.10/32", "2001:db8::/64")
    assert config.auth.hash_scheme == "bcrypt"
    assert config.auth.dedup_window == 30.0
    assert config.audit.enabled is False


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[auth]\nfrobnicate = 1\n", "config.toml: [auth] frobnicate"),
        ("[database]\ndns = 'x'\n", "config.toml: [database] dns"),
        ("top_level_typo = true\n", "config.toml: top_level_typo"),
        ("[nosuchsection]\nx = 1\n", "config.toml: nosuchsection"),
        ("[audit.dns]\nresolver = ['x']\n", "config.toml: [audit.dns] resolver"),
    ],
)
def test_unknown_key_is_a_warning_with_location(text, where):
    config = parse(tomllib.loads(text), "/etc/dovecot-appauth/config.toml")
    assert len(config.problems) == 1
    problem = config.problems[0]
    assert problem.level == "warning"
    assert problem.where == where
    assert "unknown key" in problem.message
    assert str(problem).startswith(f"warning: {where}")


@pytest.mark.parametrize(
    ("text", "section", "key"),
    [
        ("[auth]\ndedup_window = 'sixty'\n", "[auth]", "dedup_window"),
        ("[auth]\ndedup_window = true\n", "[auth]", "dedup_window"),  # a bool is not a number
        ("[database]\nconnect_timeout = [1]\n", "[database]", "connect_timeout"),
        ("[database]\ndsn = 5\n", "[database]", "dsn"),
        ("[auth]\nsha512_rounds = 5000.5\n", "[auth]", "sha512_rounds"),
        ("[auth]\nhash_scheme = 'md5'\n", "[auth]", "hash_scheme"),
        ("[auth]\ndisallow_passwords_from = [1, 2]\n", "[auth]", "disallow_passwords_from"),
        ("[auth]\ndisallow_passwords_from = 10\n", "[auth]", "disallow_passwords_from"),
        ("[audit]\nenabled = 'no'\n", "[audit]", "enabled"),
        ("[audit.dns]\ntimeout = -1\n", "[audit.dns]", "timeout"),
        ("[userdb]\nuid = true\n", "[userdb]", "uid"),
        ("auth = 'x'\n", "config.toml:", "auth"),
    ],
)
def test_wrong_type_is_an_error_naming_section_and_key(text, section, key):
    error = _error(tomllib.loads(text))
    errors = [p for p in error.problems if p.level == "error"]
    assert len(errors) == 1
    assert section in errors[0].where
    assert errors[0].where.endswith(key)
    assert section in str(error) and key in str(error)


def test_errors_and_warnings_are_all_reported():
    error = _error(tomllib.loads("[auth]\ndedup_window = 'x'\nhash_scheme = 'md5'\ntypo = 1\n"))
    assert sorted(p.level for p in error.problems) == ["error", "error", "warning"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"192.0.2.10"', ("192.0.2.10",)),
        ('"192.0.2.10/32, 2001:db8::/64"', ("192.0.2.10/32", "2001:db8::/64")),
        ('"192.0.2.10/32 2001:db8::/64"', ("192.0.2.10/32", "2001:db8::/64")),
        ('["192.0.2.10/32", "2001:db8::/64"]', ("192.0.2.10/32", "2001:db8::/64")),
        ("[]", ()),
        ('""', ()),
    ],
)
def test_disallow_passwords_from_string_or_list(value, expected):
    config = parse(tomllib.loads(f"[auth]\ndisallow_passwords_from = {value}\n"))
    assert config.auth.disallow_passwords_from == expected


def test_userdb_fields_and_extra_prefix():
    config = parse(_toml("""
        [userdb]
        uid = 5000
        gid = "vmail"
        home = "/srv/mail/%d/%n"
        mail = "maildir:~/Maildir"
        [userdb.extra]
        quota_rule = "*:storage=1G"
        userdb_mail_plugins = "quota"
        nologin_after = 3
    """))
    assert config.userdb.uid == "5000"
    assert config.userdb.gid == "vmail"
    assert config.userdb.home == "/srv/mail/%d/%n"
    assert config.userdb.mail == "maildir:~/Maildir"
    assert config.userdb.extra == {
        "userdb_quota_rule": "*:storage=1G",
        "userdb_mail_plugins": "quota",
        "userdb_nologin_after": "3",
    }


@pytest.mark.parametrize("key", ["quota rule", "quota=rule", "quota\trule", "", "x\u00a0y", "a\x7f"])
def test_userdb_extra_field_name_that_dovecot_cannot_get_is_an_error(key):
    """A space split the name in EXTRA (the field was lost); a `=` made every login 111."""
    error = _error({"userdb": {"extra": {key: "1G", "quota_rule2": "*:storage=2G"}}})
    [problem] = error.problems
    assert (problem.level, problem.where) == ("error", f"config.toml: [userdb].extra {key!r}")
    assert "must not be empty or contain white space, '=' or a control character" in str(problem)


def test_userdb_extra_field_names_dovecot_uses_are_fine():
    config = parse({"userdb": {"extra": {"namespace/inbox/mailbox/Sent/autocreate": "yes", "quota_rule2": "x",
                                         "acl_groups": "a,b"}}})
    assert sorted(config.userdb.extra) == ["userdb_acl_groups", "userdb_namespace/inbox/mailbox/Sent/autocreate",
                                           "userdb_quota_rule2"]


def test_userdb_extra_non_string_is_an_error():
    error = _error(tomllib.loads("[userdb.extra]\nquota_rule = ['a']\n"))
    assert "[userdb].extra quota_rule" in str(error)


def test_audit_allow_users_lower_cased():
    config = parse(_toml("""
        [audit.allow.users."Alice@Example.com"]
        ip_networks = ["192.0.2.0/24"]
    """))
    assert config.audit.allow_users["alice@example.com"].ip_networks == ("192.0.2.0/24",)


# --- files --------------------------------------------------------------------------


def test_load_reads_file_and_keeps_path(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[database]\ndsn = "sqlite:///db.sqlite"\n[typo]\n')
    config = load(str(path))
    assert config.path == str(path)
    assert config.database.dsn == "sqlite:///db.sqlite"
    assert [p.where for p in config.problems] == ["config.toml: typo"]


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load(str(path))
    assert str(path) in str(info.value)


def test_load_invalid_toml_names_file_and_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[database]\ndsn = 'x'\nbroken = \n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load(str(path))
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)


def test_load_non_utf8_file_names_file_and_line_not_the_byte(tmp_path):
    """tomllib raised UnicodeDecodeError (an internal error of every login); the byte itself
    is not shown: it may be part of a password in the file."""
    path = tmp_path / "config.toml"
    path.write_bytes(b"[database]\n\ndsn = 'mysql+pymysql://u:s\xe9cret@db/x'\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value) == f"error: {path}: config file is not UTF-8 (line 3): TOML must be UTF-8"
    assert "xe9" not in str(info.value) and "cret" not in str(info.value)


def test_load_toml_nested_too_deeply_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply") as info:
        load(str(path))
    assert str(path) in str(info.value)


def test_load_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(str(tmp_path))


def test_load_unreadable_file():
    """As an unprivileged user (root reads any file): the message names the file and the uid."""
    directory = new_server_dir("appauth-cfg-unreadable-")
    try:
        path = directory / "config.toml"
        path.write_text("")
        path.chmod(0)
        script = "import sys\nfrom dovecot_appauth.config import load\nload(sys.argv[1])\n"
        proc = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60, cwd="/",
            env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            user="nobody" if os.geteuid() == 0 else None,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert "ConfigError" in proc.stderr
    assert f"{path}: config file not readable by uid" in proc.stderr


def test_resolve_relative_to_config_dir(tmp_path):
    config = Config(path=str(tmp_path / "config.toml"))
    assert config.resolve("lists/asn.lst") == str(tmp_path / "lists" / "asn.lst")
    assert config.resolve("/abs/file") == "/abs/file"
    assert Config().resolve("rel") == "rel"


def test_config_path_precedence():
    env = {"DOVECOT_APPAUTH_CONFIG": "/from/env.toml"}
    assert config_path("/explicit.toml", env) == "/explicit.toml"
    assert config_path(None, env) == "/from/env.toml"
    assert config_path(None, {}) == "/etc/dovecot-appauth/config.toml"


@pytest.mark.parametrize(
    ("toml_text", "where"),
    [
        ('[auth]\ndisallow_passwords_from = ["192.0.2.300/32"]\n', "[auth] disallow_passwords_from"),
        ('[audit]\nignore_networks = ["not-a-net"]\n', "[audit] ignore_networks"),
        ('[audit]\nglobal_networks = ["2001:db8::/129"]\n', "[audit] global_networks"),
        ('[audit.local_networks]\n"10.0.0.0/33" = "LAN"\n', "[audit.local_networks]"),
        ('[audit.allow.users."a@example.com"]\nip_networks = ["x"]\n', "[audit.allow.users.a@example.com] ip_networks"),
    ],
)
def test_parse_rejects_bad_networks(toml_text, where):
    """A network that does not parse is a config error, not a failure of every login."""
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(toml_text), "c.toml")
    assert any(where in p.where and "not an IP network" in p.message for p in info.value.problems), info.value.problems


def test_limiter_and_hash_padding_options():
    config = parse(_toml("""
        [auth]
        hash_checks = 3
        [throttle]
        ipv6_prefix = 56
        known_client_days = 7.5
        unavailable = "skip"
    """))
    assert config.auth.hash_checks == 3
    assert (config.throttle.ipv6_prefix, config.throttle.known_client_days, config.throttle.unavailable) == (
        56, 7.5, "skip")
    assert config.throttle.known_client_window == 7.5 * 86400
    defaults = parse({})
    assert (defaults.auth.hash_checks, defaults.throttle.ipv6_prefix, defaults.throttle.known_client_days,
            defaults.throttle.unavailable) == (10, 64, 30.0, "tempfail")


@pytest.mark.parametrize(("text", "where", "message"), [
    ("[throttle]\nipv6_prefix = 129\n", "[throttle] ipv6_prefix", "at most 128"),
    ("[throttle]\nipv6_prefix = 8\n", "[throttle] ipv6_prefix", "at least 16"),
    ("[throttle]\nunavailable = 'open'\n", "[throttle] unavailable", "one of tempfail, skip"),
    ("[throttle]\nknown_client_days = -1\n", "[throttle] known_client_days", "at least 0"),
    ("[auth]\nhash_checks = 0\n", "[auth] hash_checks", "at least 1"),
])
def test_limiter_and_hash_padding_options_are_checked(text, where, message):
    error = _error(tomllib.loads(text))
    assert any(where in str(p) and message in str(p) for p in error.problems), error.problems
