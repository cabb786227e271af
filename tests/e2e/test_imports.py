"""A login loads only what a login needs (DESIGN.md: every hot-path module is judged by import cost).

Not timed: these fail when a module known to be heavy is imported during a warm login,
so the discipline of docs/PERFORMANCE.md survives later changes. Each runs the real
program in a subprocess, as Dovecot runs it (request on fd 3), with CPython's import
trace (`-X importtime` / PYTHONPROFILEIMPORTTIME) on stderr, twice: the first login fills
the caches (config, lists, enrichment), the second is the warm login that is checked.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dovecot_appauth import hashing
from dovecot_appauth.cli import schema
from dovecot_appauth.config import config_cache_file

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = Path(sys.executable).parent / "dovecot-appauth-checkpassword"
MMDB = ROOT / "tests" / "data" / "mmdb"
PASSWORD = "Imp0-rt5T-estP-assw"
NO_FD4 = "dovecot-appauth: fd 4 is not open: reply not written (run as Dovecot does, or add 4>&1 to see it)"

# Heavy, admin-only or cold-path-only modules that a warm successful login (SQLite, audit
# on, every source cached) must not import. Each name also covers its submodules.
FORBIDDEN = [
    # packages a login must not touch unless the cache misses or the config asks for them
    "sqlalchemy", "geoip2", "ipwhois", "whoisit", "diskcache", "dns", "maxminddb", "pymysql", "ldap", "ldap3",
    "bcrypt", "argon2", "urllib.request", "http.client", "ssl", "threading",
    # admin tools and general-purpose machinery
    "click", "argparse", "logging", "dataclasses", "inspect", "typing", "importlib.metadata",
    # the stdlib modules the hot path deliberately avoids (see docs/PERFORMANCE.md)
    "tomllib",  # the parsed config comes from the config cache
    "crypt",  # _crypt directly: crypt.py hashes test strings at import
    "hmac", "_hashlib", "secrets",  # compare_digest from _operator; secrets only for new passwords
    "sqlite3",  # _sqlite3 directly: sqlite3.dbapi2 imports datetime
    "datetime", "json", "urllib.parse",
    # addresses and networks are integers on a login (ipnum.py; the is_global table comes
    # from the config cache)
    "ipaddress",
    # _sqlite3 is imported without functools' statement cache (store._sqlite_module), and
    # nothing else on a warm login needs them
    "functools", "collections",
    # the installed program is a plain script (packaging/), not pip's entry-point wrapper,
    # which imports `re` (and with it `enum`); our closed sets are values.Choice, not enum
    "re", "enum",
    # our own modules that only the admin CLI or a cache miss needs
    "dovecot_appauth.audit.matchers",  # compiled list forms: for serve (lists.keep_warm), never a login
    "dovecot_appauth.cli.schema", "dovecot_appauth.cli.main", "dovecot_appauth.cli.audit", "dovecot_appauth.cli.checks",
    "dovecot_appauth.audit.sources.rdns", "dovecot_appauth.audit.sources.maxmind", "dovecot_appauth.audit.sources.rdap",
]
# the admin CLI, the daemon and the report: never on a login (docs/DESIGN.md)
FORBIDDEN += ["dovecot_appauth.cli", "dovecot_appauth.serve", "dovecot_appauth.report"]
# ...and without an [account] gate, its module either
FORBIDDEN_WITHOUT_GATE = [*FORBIDDEN, "dovecot_appauth.account"]


def _write_site(tmp_path: Path, audit: bool) -> Path:
    db = tmp_path / "appauth.sqlite"
    engine = schema.make_engine(f"sqlite:///{db}")
    schema.init_db(engine)
    schema.create_password(engine, "alice@example.com", hashing.hash_password(PASSWORD))
    engine.dispose()
    path = tmp_path / "config.toml"
    text = f'[database]\ndsn = "sqlite:///{db}"\n\n[userdb]\nuid = "5000"\n\n'
    if not audit:
        return _write(path, text + "[audit]\nenabled = false\n")
    lists = ROOT / "conf" / "lists"
    text += f"""[audit]
enabled = true
global_networks = ["198.51.100.0/24", "203.0.113.0/24"]
syslog_socket = ""
journal = "no"
log_file = "{tmp_path / 'audit.log'}"

[audit.maxmind]
city = "{MMDB / 'AppAuth-Test-City.mmdb'}"
asn = "{MMDB / 'AppAuth-Test-ASN.mmdb'}"

[audit.dns]
enabled = false

[audit.cache]
path = "{tmp_path / 'cache'}"

[audit.lists]
ip_networks = "{lists / 'ip_net.deny.lst'}"
reverse_hostname = "{lists / 'rev_host.deny.lst'}"
as_numbers = "{lists / 'asn.deny.lst'}"
as_names = "{lists / 'as_dscr.deny.lst'}"
geo_location_ids = "{lists / 'maxmind' / 'geo_loc.deny.lst'}"
coordinates = "{lists / 'maxmind' / 'coords.deny.lst'}"

[audit.allow]
ip_networks = "{lists / 'allow' / 'ip_net.allow.lst'}"
"""
    return _write(path, text)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _forget_config_cache(path: Path) -> None:
    """The program keeps the parsed config in /tmp (config.py): leave nothing behind."""
    try:
        os.unlink(config_cache_file(str(path)))
    except FileNotFoundError:
        pass


@pytest.fixture
def plain_config(tmp_path):
    path = _write_site(tmp_path, audit=False)
    yield path
    _forget_config_cache(path)


@pytest.fixture
def audit_config(tmp_path):
    path = _write_site(tmp_path, audit=True)
    yield path
    _forget_config_cache(path)


def _run_login(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one login as Dovecot does: the request on fd 3, no reply helper, no fd 4."""
    r, w = os.pipe()
    request = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(r)
    try:
        os.write(w, b"alice@example.com\0" + PASSWORD.encode() + b"\0\0")
        os.close(w)
        return subprocess.run(
            argv, env={"SERVICE": "imap", "TCPREMOTEIP": "198.51.100.7", **env},
            close_fds=False, preexec_fn=lambda: os.dup2(request, 3),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
    finally:
        os.close(request)


def _warm_modules(argv: list[str], env: dict[str, str]) -> list[str]:
    """The modules the second of two identical logins imported (it must succeed)."""
    for _ in range(2):  # the first fills .pyc files, the config cache, list and enrichment caches
        proc = _run_login(argv, env)
        trace = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
        others = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
        assert proc.returncode == 0, others
        assert others == [NO_FD4]
    modules = [line.split("|")[-1].strip() for line in trace[1:]]
    assert "dovecot_appauth.login" in modules and "_sqlite3" in modules  # the trace covers the login
    return modules


def _heavy(modules: list[str], names: list[str]) -> dict[str, list[str]]:
    loaded = {name: [m for m in modules if m == name or m.startswith(name + ".")] for name in names}
    return {name: mods for name, mods in loaded.items() if mods}


def test_installed_program_imports_nothing_heavy(plain_config):
    """The installed program, audit off."""
    modules = _warm_modules([str(PROGRAM), "--config", str(plain_config)], {"PYTHONPROFILEIMPORTTIME": "1"})
    assert _heavy(modules, FORBIDDEN_WITHOUT_GATE) == {}
    assert "dovecot_appauth.audit.pipeline" not in modules  # the audit is imported only when enabled


def test_installed_program_warm_audit_imports_nothing_heavy(audit_config):
    """The installed program, audit on, every source answered from the cache."""
    modules = _warm_modules([str(PROGRAM), "--config", str(audit_config)], {"PYTHONPROFILEIMPORTTIME": "1"})
    assert "dovecot_appauth.audit.enrich" in modules and "dovecot_appauth.audit.rules" in modules  # it did audit
    assert _heavy(modules, FORBIDDEN_WITHOUT_GATE) == {}
    log = (audit_config.parent / "audit.log").read_text().splitlines()
    assert len(log) == 2 and "as_org=<Example Telecom GmbH>" in log[1]  # the cached MaxMind facts were used


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    """The -IS launcher the README's install writes (python -m dovecot_appauth.entry install)."""
    target = tmp_path_factory.mktemp("bin") / "dovecot-appauth-checkpassword"
    subprocess.run([sys.executable, "-m", "dovecot_appauth.entry", "install", str(target)], check=True,
                   capture_output=True, timeout=120)
    return target


@pytest.mark.parametrize("audit", [False, True], ids=["audit-off", "audit-on"])
def test_through_the_launcher_a_warm_login_does_not_import_os(tmp_path, launcher, audit):
    """As installed (`#!python -IS`, no `site`), nothing a warm login runs imports `os`
    (~1 ms: it loads `_collections_abc`, `posixpath` and `stat`): the login's modules use
    `posix` and paths.py. `python -I -S` itself does not load `os`, so the trace sees it.
    Nor does a login without `[fast_path]` load the fast path's module."""
    path = _write_site(tmp_path, audit=audit)
    try:
        argv = [sys.executable, "-I", "-S", "-X", "importtime", str(launcher), "--config", str(path)]
        modules = _warm_modules(argv, {})
    finally:
        _forget_config_cache(path)
    assert ("dovecot_appauth.audit.pipeline" in modules) is audit
    assert _heavy(modules, [*FORBIDDEN_WITHOUT_GATE, "os", "posixpath", "_collections_abc", "stat"]) == {}
    assert "dovecot_appauth.fast_path" not in modules  # no [fast_path]: entry.py does not load it
    bare = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", "-c", "import os"], capture_output=True,
                          text=True, check=True).stderr
    assert any(line.endswith("| os") for line in bare.splitlines())  # the trace would show it


def test_guard_sees_a_heavy_import(audit_config):
    """The guard is not vacuous: the same harness reports a module the login did import."""
    code = "import dataclasses, tomllib; from dovecot_appauth.entry import checkpassword; checkpassword()"
    argv = [sys.executable, "-X", "importtime", "-c", code, "--config", str(audit_config)]
    modules = _warm_modules(argv, {})
    assert {"dataclasses", "inspect", "tomllib"} <= set(_heavy(modules, FORBIDDEN))


def test_installed_program_warm_account_gate_imports_no_ldap_client(tmp_path, slapd):
    """[account] backend = "ldap": the first login asks slapd; the warm one answers from the
    gate's cache and loads neither python-ldap nor anything else heavy."""
    path = _write_site(tmp_path, audit=True)
    settings = slapd.settings()
    gate = "\n[account]\nbackend = \"ldap\"\n\n[account.ldap]\n" + "".join(
        f'{key} = "{value}"\n' for key, value in settings.items())
    try:
        _write(path, path.read_text() + gate)
        modules = _warm_modules([str(PROGRAM), "--config", str(path)], {"PYTHONPROFILEIMPORTTIME": "1"})
        assert "dovecot_appauth.account" in modules  # the gate ran
        assert _heavy(modules, FORBIDDEN) == {}
    finally:
        _forget_config_cache(path)


# A cold login (empty enrichment cache) asks the sources; it must load what the lookups
# need and no more: no dnspython for the PTR query (sources/rdns.py speaks DNS itself).
# no urllib (http.client, ssl) for an RDAP server on plain HTTP (sources/rdap.py). Still
# loaded on a cold login, and why (docs/PERFORMANCE.md): maxminddb, whose package imports
# importlib.metadata.
# maxminddb's C extension, in a forked child (sources/maxmind.py), without the pure-Python
# reader's modules and what they import (typing, dataclasses with inspect, multiprocessing)
COLD_FORBIDDEN = ["dns", "sqlalchemy", "geoip2", "ipwhois", "whoisit", "pymysql", "ldap", "bcrypt", "argon2",
                  "click", "argparse", "logging", "tomllib", "crypt", "hmac", "sqlite3",
                  "urllib.request", "urllib.error", "http", "ssl", "_ssl",
                  "dovecot_appauth.cli.schema", "dovecot_appauth.cli.main",
                  # maxminddb's reader modules without its package __init__ (sources/maxmind.py)
                  "importlib.metadata", "email", "zipfile", "csv",
                  "maxminddb.reader", "maxminddb.decoder", "typing", "dataclasses", "inspect", "multiprocessing"]


def test_installed_program_cold_login_imports_no_dnspython(tmp_path, dns_server, rdap_server):
    """The enrichment cache emptied before the traced login: MaxMind, reverse DNS and RDAP
    are asked (the local DNS and RDAP servers answer), without dnspython and, RDAP being a
    plain-HTTP server, without urllib.request, http.client and ssl."""
    path = _write_site(tmp_path, audit=True)
    _write(path, path.read_text().replace(
        "[audit.dns]\nenabled = false\n",
        f'[audit.dns]\nenabled = true\nresolvers = ["127.0.0.1"]\nport = {dns_server.port}\n\n'
        f'[audit.rdap]\nenabled = true\nservers = ["{rdap_server.base("rdap")}"]\n'))
    argv = [str(PROGRAM), "--config", str(path)]
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    try:
        assert _run_login(argv, env).returncode == 0  # .pyc files and the config cache
        shutil.rmtree(tmp_path / "cache")
        proc = _run_login(argv, env)
    finally:
        _forget_config_cache(path)
    others = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 0 and others == [NO_FD4], others
    modules = [line.split("|")[-1].strip() for line in proc.stderr.splitlines()[1:]
               if line.startswith("import time:")]
    # the sources ran (the import trace of their threads does not always name our own
    # source modules, but it names what they import; maxminddb.errors: what the extension imports)
    assert "maxminddb.errors" in modules and "socket" in modules and "threading" in modules
    assert _heavy(modules, COLD_FORBIDDEN) == {}
    line = (tmp_path / "audit.log").read_text().splitlines()[-1]
    assert ", host=dsl-7.pool.example.net," in line, line  # the PTR was asked and found
    assert "net_name=<None>" not in line, line  # and RDAP answered
