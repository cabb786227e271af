#!/usr/bin/env python3
"""Per-login benchmark of dovecot-appauth (issue 5): one entry point, a table and a JSON file.

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/run.py [--quick] [--json FILE] [--only NAME,...]

Installs nothing. Everything is set up in a temp dir with the real command line
(`dovecot-appauth init-db`, `password create`, `password revoke`), the real console
script `dovecot-appauth-checkpassword` next to sys.executable is started the way Dovecot
starts it (fd 3 request, fd 4 reply, Dovecot's environment without PATH/HOME, the reply
helper as last argument), and every figure is compared with a bare start of the same
interpreter measured in the same run. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support.localservers, tests.fixtures_* (no pytest needed for the servers)

PYTHON = sys.executable
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin
PROGRAM = VENV_BIN / "dovecot-appauth-checkpassword"
CLI = VENV_BIN / "dovecot-appauth"
REPLY_HELPER = "/usr/lib/dovecot/checkpassword-reply"
MMDB_DIR = ROOT / "tests" / "data" / "mmdb"
LISTS_DIR = ROOT / "conf" / "lists"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"
SCHEMA_VERSION = 1

DEADLINE = 0.5  # [audit] deadline of every config here; the black-hole target is this + 0.1 s
GLOBAL_NETWORKS = ("198.51.100.0/24", "203.0.113.0/24")  # documentation ranges judged as global
USER = "alice@example.com"  # one active password
USER_R = "carol@example.com"  # one active and one revoked password
UNKNOWN_USER = "nobody@example.com"
# users with several app passwords: a wrong password must cost what an unknown user costs
# ([auth] hash_checks pads a failed check), whatever the number of passwords
USERS_BY_COUNT = {1: USER, 3: "three@example.com", 10: "ten@example.com"}
WRONG_PASSWORD = "xxxx-xxxx-xxxx-xxxx"  # generated passwords are [0-9A-Za-z]: never all x
CLIENT_IP = "198.51.100.7"  # in the test .mmdb, a PTR in LocalDns, allowed by conf/lists/allow
DENIED_IP = "203.0.113.9"  # denied by conf/lists/asn.deny.lst (AS64500)
SPAWN_TIMEOUT = 30.0  # a login that takes longer is killed and counted as an error
TOTAL_TIME_CAP = 900.0  # the whole run stops starting new measurements after this
IMAP_TIME_CAP = 240.0  # per IMAP load: logins not started by then count as errors

# name -> (label, target text); order = table order
SCENARIOS: dict[str, tuple[str, str]] = {
    "bare": ("python -c pass", "baseline"),
    "bare-isolated": ("python -I -S -c pass", "reference"),
    "warm": ("warm success, SQLite, cache warm", "<= 2.0x bare"),
    "wrong": ("wrong password, user has 1 password", "within 10% of unknown"),
    "wrong-3": ("wrong password, user has 3 passwords", "within 10% of unknown"),
    "wrong-10": ("wrong password, user has 10 passwords", "within 10% of unknown"),
    "unknown": ("unknown user", "info (vs warm)"),
    "revoked": ("revoked password", "info"),
    "wrong-revoked": ("wrong pw, user has a revoked pw", "info (vs unknown)"),
    "denied": ("denied by audit (ASN list)", "info"),
    "cold": ("cold: cache empty, MaxMind+local DNS", "<= 4x bare"),
    "cold-rdap": ("cold + local RDAP", "info"),
    "blackhole": ("cold, DNS+RDAP black-holed", f"<= {DEADLINE * 1000 + 100:.0f} ms"),
    "mariadb": ("warm success, MariaDB", "info (<= 2.0x)"),
    "imap": ("IMAP through Dovecot", ">= 60 logins/s, 0 err"),
    "imap-passwd": ("IMAP, passwd-file passdb instead", "info (Dovecot alone)"),
    "rss": ("peak RSS of a warm login", "<= 25 MiB"),
}
ALIASES = {"success": "warm", "wrong-1": "wrong"}
WRONG_BY_COUNT = {1: "wrong", 3: "wrong-3", 10: "wrong-10"}  # passwords of the user -> scenario


def timing_ratios(results: dict[str, Result]) -> dict[str, float]:
    """Median wall clock of a wrong password / an unknown user, by the user's number of passwords."""
    unknown = results.get("unknown")
    if not (unknown and unknown.median):
        return {}
    return {str(count): res.median / unknown.median for count, name in WRONG_BY_COUNT.items()
            if (res := results.get(name)) and res.median}


def render_ratios(ratios: dict[str, float], what: str) -> str:
    """`wrong password / unknown user (<what>): 1 password 1.003, 3 passwords 0.998, ...`"""
    parts = [f"{n} password{'s' if n != '1' else ''} {ratio:.3f}" for n, ratio in ratios.items()]
    return f"wrong password / unknown user ({what}): " + ", ".join(parts)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- spawning


@dataclass
class Sample:
    seconds: float
    status: int
    maxrss_kib: int
    stderr: str


def _high_fd(fd: int) -> int:
    """Move fd above 9 (close-on-exec), so that the dup2 to 3/4 never hits itself."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def spawn(argv: list[str], env: dict[str, str], request: bytes, err_path: str,
          timeout: float = SPAWN_TIMEOUT, rss: bool = False) -> Sample:
    """Start argv as Dovecot does (fd 3 request, fd 4 /dev/null), wait, return wall time and status.

    posix_spawn + wait4: nothing of ours runs in the child. Its ru_maxrss is NOT the login's
    peak: posix_spawn uses vfork, and Linux carries the parent's (this benchmark's) RSS
    high-water mark over the exec. With `rss=True` the child is started through a small
    wrapper (GNU time, or a forking `python -I -S`) whose wait4 sees the real peak; use
    that only for the RSS runs, the wrapper costs time.
    """
    rss_file = err_path + ".rss"
    if rss:
        argv = [*rss_wrapper(), rss_file, *argv]
    r, w = os.pipe()
    r = _high_fd(r)
    os.write(w, request)  # < 512 bytes: fits the pipe buffer
    os.close(w)
    null = _high_fd(os.open(os.devnull, os.O_RDWR))
    err = _high_fd(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, err, 2),
               (os.POSIX_SPAWN_DUP2, r, 3), (os.POSIX_SPAWN_DUP2, null, 4)]
    killer: threading.Timer | None = None
    try:
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        killer = threading.Timer(timeout, _kill, (pid,))
        killer.daemon = True
        killer.start()
        _, wstatus, rusage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        if killer is not None:
            killer.cancel()
        for fd in (r, null, err):
            os.close(fd)
    status = os.waitstatus_to_exitcode(wstatus)
    if status < 0:
        status = 128 - status  # killed by a signal, as a shell shows it
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    maxrss = rusage.ru_maxrss
    if rss:
        with open(rss_file) as f:  # GNU time writes "Command exited with non-zero status N" first
            maxrss = int(f.read().split()[-1])
    return Sample(elapsed, status, maxrss, stderr)


GNU_TIME = "/usr/bin/time"
_FORK_WAIT4 = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, st, ru = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(ru.ru_maxrss))\n"
    "os._exit(os.waitstatus_to_exitcode(st) & 255)\n"
)


@functools.cache
def rss_wrapper() -> list[str]:
    """argv prefix taking the output file next: GNU time (~2 MiB itself) or a forking python -I -S (~9 MiB)."""
    if os.access(GNU_TIME, os.X_OK):
        res = subprocess.run([GNU_TIME, "-f", "%M", "true"], capture_output=True, text=True, check=False)
        if res.returncode == 0 and res.stderr.strip().isdigit():
            return [GNU_TIME, "-f", "%M", "-o"]
    return [PYTHON, "-I", "-S", "-c", _FORK_WAIT4]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def dovecot_env(ip: str, service: str = "imap", user: str = "") -> dict[str, str]:
    """What Dovecot 2.3 gives the checkpassword child: no PATH, HOME or LANG (PROTOCOL.md)."""
    env = {
        "PROTO": "TCP", "SERVICE": service, "TCPREMOTEIP": ip, "REMOTE_IP": ip, "TCPREMOTEPORT": "54321",
        "TCPLOCALIP": "127.0.0.1", "LOCAL_IP": "127.0.0.1", "TCPLOCALPORT": "143",
        "ORIG_UID": str(os.getuid()),  # the reply helper compares it with its own uid
    }
    # a few of the ~30 AUTH_* variables Dovecot also sets
    env.update({"AUTH_USER": user, "AUTH_SERVICE": service, "AUTH_RIP": ip, "AUTH_LIP": "127.0.0.1",
                "AUTH_PROTOCOL": service, "AUTH_MECH": "PLAIN"})
    return env


def request_bytes(user: str, password: str) -> bytes:
    return user.encode() + b"\0" + password.encode() + b"\0\0"


# ----------------------------------------------------------------------------- statistics


def summarize(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None, "stdev": None}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


# ----------------------------------------------------------------------------- local servers


class BlackHoleTcp:
    """A TCP port on 127.0.0.1 that accepts connections and never answers (a hung RDAP server)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.port = 0
        self._held: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> BlackHoleTcp:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._loop, name="blackhole-tcp", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self.sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self._held.append(conn)  # read nothing, answer nothing
            while len(self._held) > 32:
                self._held.pop(0).close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for conn in self._held:
            conn.close()
        self._held.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


# ----------------------------------------------------------------------------- setup


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string (ASCII paths, DSNs)


def write_config(path: Path, *, dsn: str, cache_dir: Path, log_file: Path, lists_dir: Path,
                 dns_port: int | None, rdap_servers: list[str] | None = None, rdap_timeout: float = 1.2,
                 dns_timeout: float = 1.0, userdb: dict[str, str] | None = None) -> Path:
    """The benchmark's config; `userdb`: a [userdb] section (`serve` has no reply helper to
    add the uid/gid of its process)."""
    lists = {
        "ip_networks": "ip_net.deny.lst", "reverse_hostname": "rev_host.deny.lst",
        "network_name": "net_name.deny.lst", "network_cc": "net_cc.deny.lst", "entities": "entity.deny.lst",
        "as_numbers": "asn.deny.lst", "as_names": "as_dscr.deny.lst", "as_cc": "as_cc.deny.lst",
        "geo_location_ids": "maxmind/geo_loc.deny.lst", "coordinates": "maxmind/coords.deny.lst",
    }
    allow = {"ip_networks": "allow/ip_net.allow.lst", "as_numbers": "allow/asn.allow.lst",
             "countries": "allow/cc.allow.lst"}
    lines = [
        "# written by benchmarks/run.py",
        "[database]", f"dsn = {toml_str(dsn)}", "connect_timeout = 3", "",
        *(["[userdb]", *(f"{k} = {toml_str(v)}" for k, v in userdb.items()), ""] if userdb else []),
        "[audit]", "enabled = true", f"deadline = {DEADLINE}",
        f"global_networks = {json.dumps(list(GLOBAL_NETWORKS))}",
        f"log_file = {toml_str(str(log_file))}", 'syslog_socket = ""', 'journal = "no"', "",
        "[audit.maxmind]", f"city = {toml_str(str(MMDB_DIR / 'AppAuth-Test-City.mmdb'))}",
        f"asn = {toml_str(str(MMDB_DIR / 'AppAuth-Test-ASN.mmdb'))}", "",
        "[audit.dns]",
    ]
    if dns_port is None:
        lines += ["enabled = false"]
    else:
        lines += ["enabled = true", 'resolvers = ["127.0.0.1"]', f"port = {dns_port}", f"timeout = {dns_timeout}"]
    lines += ["", "[audit.rdap]"]
    if rdap_servers:
        lines += ["enabled = true", f"servers = {json.dumps(rdap_servers)}", f"timeout = {rdap_timeout}"]
    else:
        lines += ["enabled = false"]
    lines += ["", "[audit.cache]", "enabled = true", f"path = {toml_str(str(cache_dir))}", "", "[audit.lists]"]
    lines += [f"{k} = {toml_str(str(lists_dir / v))}" for k, v in lists.items()]
    lines += ["", "[audit.allow]"]
    lines += [f"{k} = {toml_str(str(lists_dir / v))}" for k, v in allow.items()]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return path


def cli(config: Path, *args: str, timeout: float = 120) -> str:
    res = subprocess.run([str(CLI), "--config", str(config), *args], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"dovecot-appauth {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def create_password(config: Path, user: str) -> tuple[int, str]:
    data = json.loads(cli(config, "password", "create", user, "--comment", "benchmark", "--json"))
    return int(data["id"]), str(data["password"])


@dataclass
class Accounts:
    """The users of a database: alice (one active), carol (active + revoked)."""

    password: str
    carol_password: str
    revoked_password: str


def populate(config: Path, owner: str | None = None) -> Accounts:
    cli(config, "init-db", *(["--owner", owner] if owner else []))
    _, password = create_password(config, USER)
    _, carol = create_password(config, USER_R)
    revoked_id, revoked = create_password(config, USER_R)
    cli(config, "password", "revoke", str(revoked_id))
    for count, user in USERS_BY_COUNT.items():
        if user != USER:
            for _ in range(count):
                create_password(config, user)
    return Accounts(password, carol, revoked)


def shared_tmp() -> str:
    """A temp base other users (dovecot, mysql) can traverse."""
    try:
        from tests.support.common import shared_tempdir_base
    except ImportError:  # pytest missing: fixtures_common imports it
        return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return shared_tempdir_base()


@dataclass
class SmallSite:
    """The warm-login site of the benchmark, for the one-scenario tools (importtime.py,
    instructions.py): its config (SQLite made with the CLI, test MaxMind files, example
    lists, reverse DNS on a local server when dnslib is there) and its users."""

    workdir: Path
    config: Path
    cache: Path
    accounts: Accounts


@contextlib.contextmanager
def small_site(prefix: str) -> Iterator[SmallSite]:
    """Build a SmallSite in a new temp dir; stop its DNS server and remove it afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=shared_tmp()))
    os.chmod(workdir, 0o755)
    dns = None
    try:
        try:
            from tests.support.localservers import LocalDns

            dns = LocalDns().start()
        except ImportError as e:
            log(f"no local DNS server ({e}): reverse DNS disabled")
        lists = workdir / "lists"
        shutil.copytree(LISTS_DIR, lists)
        (workdir / "db").mkdir()
        cache = workdir / "cache"
        config = write_config(workdir / "config.toml", dsn=f"sqlite:///{workdir / 'db' / 'db.sqlite'}",
                              cache_dir=cache, log_file=workdir / "audit.log", lists_dir=lists,
                              dns_port=dns.port if dns else None)
        yield SmallSite(workdir, config, cache, populate(config))
    finally:
        if dns is not None:
            dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- the benchmark


@dataclass
class SpawnScenario:
    name: str
    argv: list[str]
    env: dict[str, str]
    request: bytes
    expect: int
    reps: int
    prepare: Callable[[], None] | None = None
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Result:
    name: str
    label: str
    target: str
    status: str = "INFO"  # PASS | MISS | INFO | SKIP | ERROR
    runs: int = 0
    unit: str = "ms"
    median: float | None = None
    min: float | None = None
    max: float | None = None
    ratio_bare: float | None = None
    ratio_isolated: float | None = None
    errors: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "label", "target", "status", "runs", "unit", "median",
                                              "min", "max", "ratio_bare", "ratio_isolated", "errors", "note",
                                              "extra", "samples")}


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick: bool = args.quick
        self.only: set[str] = args.only
        self.keep: bool = args.keep
        self.reps: int = args.reps or (5 if self.quick else 20)
        self.started = time.monotonic()
        self.results: dict[str, Result] = {}
        self.notes: list[str] = []
        self.cleanup: list[Callable[[], None]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="appauth-bench-", dir=shared_tmp()))
        os.chmod(self.workdir, 0o755)
        self.helper = [REPLY_HELPER] if (os.access(REPLY_HELPER, os.X_OK) and not args.no_reply_helper) else []

    def want(self, name: str) -> bool:
        return not self.only or name in self.only

    def over_time(self) -> bool:
        return time.monotonic() - self.started > TOTAL_TIME_CAP

    # --- set-up ------------------------------------------------------------------------
    def setup(self) -> None:
        if not os.access(self.args.program, os.X_OK) or not os.access(CLI, os.X_OK):
            raise SystemExit(f"{self.args.program} or {CLI} missing: install the package into this venv "
                             "(pip install -e .)")
        w = self.workdir
        self.lists = w / "lists"
        shutil.copytree(LISTS_DIR, self.lists)
        (w / "db").mkdir()
        self.dsn = f"sqlite:///{w / 'db' / 'db.sqlite'}"
        self.dns = None
        self.dns_note = ""
        try:
            from tests.support.localservers import LocalDns
        except ImportError as e:  # dnslib is a test dependency
            self.dns_note = f"no local DNS server ({e}): reverse DNS disabled in every config"
            self.notes.append(self.dns_note)
        else:
            self.dns = LocalDns().start()
            self.cleanup.append(self.dns.stop)
        dns_port = self.dns.port if self.dns else None
        self.cfg_warm = write_config(w / "warm.toml", dsn=self.dsn, cache_dir=w / "cache-warm",
                                     log_file=w / "audit.log", lists_dir=self.lists, dns_port=dns_port)
        log(f"work dir {w}; creating the SQLite database with the CLI")
        self.accounts = populate(self.cfg_warm)

    def program_argv(self, config: Path) -> list[str]:
        return [str(self.args.program), "--config", str(config), *self.helper]

    def login(self, name: str, config: Path, user: str, password: str, expect: int, *, ip: str = CLIENT_IP,
              reps: int | None = None, prepare: Callable[[], None] | None = None) -> SpawnScenario:
        return SpawnScenario(name, self.program_argv(config), dovecot_env(ip, user=user),
                             request_bytes(user, password), expect, reps or self.reps, prepare)

    # --- scenarios ---------------------------------------------------------------------
    def spawn_scenarios(self) -> list[SpawnScenario]:
        w, acc = self.workdir, self.accounts
        env = dovecot_env(CLIENT_IP)
        out = [
            SpawnScenario("bare", [PYTHON, "-c", "pass"], env, b"", 0, self.reps),
            SpawnScenario("bare-isolated", [PYTHON, "-I", "-S", "-c", "pass"], env, b"", 0, self.reps),
        ]
        from tests.support.common import wrong_password  # differs from the right one by construction

        wrong = [name for name in WRONG_BY_COUNT.values() if self.want(name)]
        need_warm = self.want("warm") or self.want("rss") or self.want("unknown") or bool(wrong)
        if need_warm:
            out.append(self.login("warm", self.cfg_warm, USER, acc.password, 0))
        for count, name in WRONG_BY_COUNT.items():
            if name in wrong:
                out.append(self.login(name, self.cfg_warm, USERS_BY_COUNT[count], WRONG_PASSWORD, 1))
        if self.want("unknown") or wrong:  # the reference of the wrong-password scenarios
            out.append(self.login("unknown", self.cfg_warm, UNKNOWN_USER, acc.password, 1))
        if self.want("revoked"):
            out.append(self.login("revoked", self.cfg_warm, USER_R, acc.revoked_password, 1))
        if self.want("wrong-revoked"):
            out.append(self.login("wrong-revoked", self.cfg_warm, USER_R,
                                  wrong_password(acc.carol_password, acc.revoked_password), 1))
        if self.want("denied"):
            out.append(self.login("denied", self.cfg_warm, USER, acc.password, 1, ip=DENIED_IP))
        dns_port = self.dns.port if self.dns else None
        if self.want("cold"):
            cache = w / "cache-cold"
            cfg = write_config(w / "cold.toml", dsn=self.dsn, cache_dir=cache, log_file=w / "audit.log",
                               lists_dir=self.lists, dns_port=dns_port)
            out.append(self.login("cold", cfg, USER, acc.password, 0, prepare=_emptier(cache)))
        if self.want("cold-rdap"):
            from tests.support.localservers import LocalRdap

            rdap = LocalRdap().start()
            self.cleanup.append(rdap.stop)
            cache = w / "cache-cold-rdap"
            cfg = write_config(w / "cold-rdap.toml", dsn=self.dsn, cache_dir=cache, log_file=w / "audit.log",
                               lists_dir=self.lists, dns_port=dns_port, rdap_servers=[rdap.base("rdap")])
            out.append(self.login("cold-rdap", cfg, USER, acc.password, 0, prepare=_emptier(cache)))
        if self.want("blackhole"):
            out.append(self.blackhole_scenario())
        if self.want("mariadb"):
            scenario = self.mariadb_scenario()
            if scenario is not None:
                out.append(scenario)
        return out

    def blackhole_scenario(self) -> SpawnScenario:
        try:
            from tests.support.localservers import BlackHoleDns
        except ImportError:
            BlackHoleDns = None
        if BlackHoleDns is not None:
            dns = BlackHoleDns().start()
            self.cleanup.append(dns.stop)
            dns_port = dns.port
        else:  # the same thing without dnslib: a UDP socket nobody reads
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            self.cleanup.append(sock.close)
            dns_port = sock.getsockname()[1]
        tcp = BlackHoleTcp().start()
        self.cleanup.append(tcp.stop)
        cache = self.workdir / "cache-blackhole"
        # the sources' own timeouts are longer than the deadline: only the deadline can end the wait
        cfg = write_config(self.workdir / "blackhole.toml", dsn=self.dsn, cache_dir=cache,
                           log_file=self.workdir / "audit.log", lists_dir=self.lists, dns_port=dns_port,
                           rdap_servers=[tcp.url], rdap_timeout=5.0, dns_timeout=5.0)
        reps = max(3, self.reps // 3) if self.quick else max(5, self.reps // 2)
        return self.login("blackhole", cfg, USER, self.accounts.password, 0, reps=reps, prepare=_emptier(cache))

    def mariadb_scenario(self) -> SpawnScenario | None:
        try:
            from tests.support.common import new_server_dir
            from tests.support.mariadb import MariaDBServer, mariadb_available
        except ImportError as e:
            self.skip("mariadb", f"cannot import tests/support/mariadb.py ({e})")
            return None
        reason = mariadb_available()
        if reason:
            self.skip("mariadb", reason)
            return None
        log("starting MariaDB (tests/support/mariadb.MariaDBServer)")
        basedir = new_server_dir("appauth-bench-mdb-")
        server = MariaDBServer(basedir)
        self.cleanup.append(lambda: shutil.rmtree(basedir, ignore_errors=True) if not self.keep else None)
        self.cleanup.append(server.stop)
        try:
            server.start()
            db = server.fresh_database("bench")
            cfg = write_config(self.workdir / "mariadb.toml", dsn=db.dsn, cache_dir=self.workdir / "cache-mariadb",
                               log_file=self.workdir / "audit.log", lists_dir=self.lists,
                               dns_port=self.dns.port if self.dns else None)
            accounts = populate(cfg)
        except Exception as e:
            self.skip("mariadb", f"could not start/populate MariaDB: {e}", status="ERROR")
            return None
        return self.login("mariadb", cfg, USER, accounts.password, 0)

    def skip(self, name: str, reason: str, status: str = "SKIP") -> None:
        label, target = SCENARIOS[name]
        self.results[name] = Result(name, label, target, status=status, note=reason)
        log(f"{name}: {status}: {reason}")

    # --- running -----------------------------------------------------------------------
    def run_one(self, sc: SpawnScenario, rss: bool = False) -> Sample | None:
        if sc.prepare:
            sc.prepare()
        err_path = str(self.workdir / "stderr.txt")
        try:
            sample = spawn(sc.argv, sc.env, sc.request, err_path, rss=rss)
        except OSError as e:
            sc.errors.append(f"cannot start: {e}")
            return None
        if sample.status != sc.expect:
            first = sample.stderr.strip().splitlines()[:1]
            sc.errors.append(f"exit {sample.status}, expected {sc.expect}: {first[0] if first else 'no stderr'}")
        return sample

    def run_spawns(self, scenarios: list[SpawnScenario]) -> None:
        log("warming up (2 untimed runs each: page cache, .pyc, enrichment and list caches)")
        for sc in scenarios:
            for _ in range(2):
                self.run_one(sc)
            if sc.errors:
                log(f"{sc.name}: warm-up problem: {sc.errors[-1]}")
                sc.errors.clear()
        rounds = max(sc.reps for sc in scenarios)
        log(f"measuring: {rounds} interleaved rounds over {', '.join(sc.name for sc in scenarios)}")
        for i in range(rounds):
            if self.over_time():
                self.notes.append(f"time cap of {TOTAL_TIME_CAP:.0f} s reached after {i} rounds")
                break
            for sc in scenarios:
                if len(sc.samples) < sc.reps:
                    sample = self.run_one(sc)
                    if sample is not None:
                        sc.samples.append(sample)

    def run_rss(self, scenarios: list[SpawnScenario]) -> None:
        """Peak RSS in separate runs through the RSS wrapper (see spawn())."""
        self.rss_kib: dict[str, list[int]] = {}
        if not self.want("rss"):
            return
        chosen = [sc for sc in scenarios if sc.name in ("bare", "warm", "wrong", "cold", "cold-rdap", "mariadb")]
        log(f"peak RSS: {self.reps} runs each of {', '.join(sc.name for sc in chosen)} via {rss_wrapper()[0]}")
        for _ in range(self.reps):
            if self.over_time():
                break
            for sc in chosen:
                sample = self.run_one(sc, rss=True)
                if sample is not None:
                    self.rss_kib.setdefault(sc.name, []).append(sample.maxrss_kib)

    def record_spawns(self, scenarios: list[SpawnScenario]) -> None:
        by_name = {sc.name: sc for sc in scenarios}
        bare = _median_ms(by_name["bare"])
        isolated = _median_ms(by_name["bare-isolated"])
        for sc in scenarios:
            label, target = SCENARIOS[sc.name]
            ms = [s.seconds * 1000 for s in sc.samples]
            stats = summarize(ms)
            res = Result(sc.name, label, target, runs=len(ms), median=stats["median"], min=stats["min"],
                         max=stats["max"], errors=len(sc.errors), samples=[round(v, 3) for v in ms])
            res.extra = {"stdev": stats["stdev"],
                         "argv": [*sc.argv[:1], "..."] if sc.name not in ("bare", "bare-isolated") else sc.argv}
            if res.median is not None:
                res.ratio_bare = res.median / bare if bare else None
                res.ratio_isolated = res.median / isolated if isolated else None
            if sc.errors:
                res.note = f"{len(sc.errors)} error(s), first: {sc.errors[0]}"
            self.results[sc.name] = res
        self.judge_spawns(by_name)

    def judge_spawns(self, by_name: dict[str, SpawnScenario]) -> None:
        r = self.results
        bare = r["bare"].median
        for name in ("bare", "bare-isolated"):
            r[name].status = "INFO"
        warm = r.get("warm")
        if warm and warm.median and bare:
            needed = 2.0 * bare
            warm.status = _passmiss(warm.median <= needed and not warm.errors)
            if warm.median > needed:
                warm.note = _join(warm.note, f"needs -{warm.median - needed:.1f} ms to reach {needed:.1f} ms")
        for name in ("unknown", *WRONG_BY_COUNT.values()):
            res = r.get(name)
            if res and res.median and warm and warm.median:
                diff = res.median / warm.median - 1
                res.extra["vs_warm"] = diff  # info: a failed check costs [auth] hash_checks hashes
                res.note = _join(res.note, f"{diff:+.1%} vs warm")
        unknown = r.get("unknown")
        for name in (*WRONG_BY_COUNT.values(), "wrong-revoked", "revoked"):
            res = r.get(name)
            if res and res.median and unknown and unknown.median:
                diff = res.median / unknown.median - 1
                res.extra["vs_unknown"] = diff
                res.note = _join(res.note, f"{diff:+.1%} vs unknown")
                if name in WRONG_BY_COUNT.values():  # no user enumeration by timing
                    res.status = _passmiss(abs(diff) <= 0.10 and not res.errors)
        cold = r.get("cold")
        if cold and cold.median and bare:
            cold.status = _passmiss(cold.median <= 4.0 * bare and not cold.errors)
            if cold.median > 4.0 * bare:
                cold.note = _join(cold.note, f"needs -{cold.median - 4.0 * bare:.1f} ms")
        bh = r.get("blackhole")
        if bh and bh.median is not None:
            limit = DEADLINE * 1000 + 100
            bh.status = _passmiss(bh.max is not None and bh.max <= limit and not bh.errors)
            bh.extra["limit_ms"] = limit
            parts = [f"max {bh.max:.0f} ms vs {limit:.0f}"]
            if warm and warm.median:
                over = bh.median - warm.median
                bh.extra["over_warm_ms"] = over
                parts.append(f"wall-warm {over:.0f} ms")
            bh.note = _join(bh.note, "; ".join(parts))
        mdb = r.get("mariadb")
        if mdb and mdb.median and bare and mdb.status != "SKIP":
            mdb.note = _join(mdb.note, f"{mdb.median / bare:.2f}x bare" + (
                f", {mdb.median - warm.median:+.1f} ms vs SQLite" if warm and warm.median else ""))
        for res in r.values():
            if res.errors and res.status in ("INFO", "PASS"):
                res.status = "ERROR" if res.status == "INFO" else "MISS"
        if self.want("rss") and self.rss_kib.get("warm"):
            self.record_rss()
        if self.only and "warm" not in self.only and "warm" in r and not self.want("warm"):
            r["warm"].note = _join(r["warm"].note, "(run as the reference of other scenarios)")

    def record_rss(self) -> None:
        label, target = SCENARIOS["rss"]
        mib = [k / 1024 for k in self.rss_kib["warm"]]
        stats = summarize(mib)
        bare_mib = [k / 1024 for k in self.rss_kib.get("bare", [])]
        res = Result("rss", label, target, runs=len(mib), unit="MiB", median=stats["median"], min=stats["min"],
                     max=stats["max"], samples=[round(v, 2) for v in mib])
        bare_med = _median(bare_mib)
        if res.median and bare_med:
            res.ratio_bare = res.median / bare_med
        res.status = _passmiss(res.max is not None and res.max <= 25.0)
        others = {n: _median([k / 1024 for k in v]) for n, v in self.rss_kib.items() if n not in ("warm", "bare")}
        res.extra = {"bare_mib": bare_med, "wrapper": rss_wrapper()[0],
                     **{f"{n}_mib": v for n, v in others.items() if v}}
        res.note = f"max RSS via {os.path.basename(rss_wrapper()[0])}; bare {bare_med or 0:.1f} MiB" + "".join(
            f", {n} {v:.1f}" for n, v in others.items() if v)
        self.results["rss"] = res

    # --- Dovecot -----------------------------------------------------------------------
    def run_imap(self) -> None:
        names = [n for n in ("imap", "imap-passwd") if self.want(n)]
        try:
            from tests.support.common import dovecot_ids, new_server_dir
            from tests.support.dovecot import (
                DovecotServer,
                checkpassword_passdb,
                dovecot_available,
                passwd_file_passdb,
                write_passwd_file,
            )
        except ImportError as e:
            for name in names:
                self.skip(name, f"cannot import tests/support/dovecot.py ({e})")
            return
        reason = dovecot_available()
        if reason:
            for name in names:
                self.skip(name, reason)
            return
        clients = self.args.clients or (4 if self.quick else 8)
        per_client = self.args.logins or (5 if self.quick else 25)
        basedir = new_server_dir("appauth-bench-dc-")
        if not self.keep:
            self.cleanup.append(lambda: shutil.rmtree(basedir, ignore_errors=True))
        uid, gid = dovecot_ids()
        # everything the program touches must be the dovecot user's (it runs as that user)
        (basedir / "db").mkdir()
        audit_log = basedir / "audit.log"
        audit_log.touch()
        os.chown(audit_log, uid, gid)
        (basedir / "cache").mkdir(mode=0o700)
        os.chown(basedir / "cache", uid, gid)
        cfg = write_config(basedir / "appauth.toml", dsn=f"sqlite:///{basedir / 'db' / 'db.sqlite'}",
                           cache_dir=basedir / "cache", log_file=audit_log, lists_dir=self.lists,
                           dns_port=self.dns.port if self.dns else None)
        ips = [f"198.51.100.{10 + i}" for i in range(clients)]
        try:
            accounts = populate(cfg, owner="dovecot")
            ours = checkpassword_passdb(cfg)
            server = DovecotServer(basedir, ours, auth_penalty=False)
            self.cleanup.append(server.stop)
            log(f"starting Dovecot (tests/support/dovecot.DovecotServer) in {basedir}")
            server.start()
        except Exception as e:
            for name in names:
                self.skip(name, f"could not start Dovecot: {e}", status="ERROR")
            return
        if "imap" in names:
            self.imap_load("imap", server, accounts.password, ips, per_client)
        if "imap-passwd" in names:
            # the same load with a passwd-file passdb: what Dovecot alone manages on this machine
            passwd = write_passwd_file(basedir / "bench.passwd", {USER: accounts.password}, server.mail_root)
            try:
                server.reconfigure(passdb=passwd_file_passdb(passwd))
            except Exception as e:
                self.skip("imap-passwd", f"could not restart Dovecot: {e}", status="ERROR")
                return
            self.imap_load("imap-passwd", server, accounts.password, ips, per_client)

    def imap_load(self, name: str, server: Any, password: str, ips: list[str], per_client: int) -> None:
        """len(ips) threads, each `per_client` sequential logins from its own source address."""
        label, target = SCENARIOS[name]
        clients = len(ips)
        log(f"{name}: {clients} clients x {per_client} logins")
        failed = warm_up_logins(server, USER, password, ips)
        if failed:
            self.skip(name, failed, status="ERROR")
            return
        load = drive_imap_logins(server, USER, password, ips, per_client)
        done, p99 = load.latencies_ms, load.p99_ms
        stats = summarize(done)
        res = Result(name, label, target, runs=len(done), median=stats["median"], min=stats["min"],
                     max=stats["max"], errors=load.error_count, samples=[round(v, 2) for v in done])
        res.extra = {"logins_per_s": load.rate, "p50_ms": stats["median"], "p99_ms": p99, "clients": clients,
                     "logins_per_client": per_client, "wall_s": load.wall_s,
                     "auth_log_errors": len(load.auth_errors),
                     "what": "connect, ID x-originating-ip, LOGIN, SELECT INBOX, LOGOUT; latency of all of it"}
        if name == "imap":
            res.status = _passmiss(load.rate >= 60 and res.errors == 0)
        elif res.errors:
            res.status = "ERROR"
        res.note = load.describe()
        self.results[name] = res

    # --- main --------------------------------------------------------------------------
    def run(self) -> None:
        self.setup()
        scenarios = self.spawn_scenarios()
        self.run_spawns(scenarios)
        self.run_rss(scenarios)
        self.record_spawns(scenarios)
        if self.want("imap") or self.want("imap-passwd"):
            self.run_imap()

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception as e:  # cleaning up must not hide the results
                log(f"cleanup: {e}")
        if self.keep:
            log(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _emptier(cache: Path) -> Callable[[], None]:
    def empty() -> None:
        shutil.rmtree(cache, ignore_errors=True)  # the program recreates it (0700)

    return empty


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _median_ms(sc: SpawnScenario) -> float | None:
    return _median([s.seconds * 1000 for s in sc.samples])


def _passmiss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


# ----------------------------------------------------------------------------- IMAP load


def warm_up_logins(server: Any, user: str, password: str, ips: list[str]) -> str | None:
    """One login per source address (fills the enrichment cache, starts Dovecot's processes);
    None, or what went wrong."""
    for ip in ips:
        res = server.imap_login(user, password, client_ip=ip, timeout=30)
        if not res.ok:
            return f"warm-up login from {ip} failed: {res.text}; log: {' | '.join(server.auth_errors()[-3:])}"
    return None


@dataclass
class ImapLoad:
    """What `drive_imap_logins` measured."""

    clients: int
    per_client: int
    latencies_ms: list[float]
    errors: list[str]
    wall_s: float
    auth_errors: list[str]

    @property
    def error_count(self) -> int:
        missing = self.clients * self.per_client - len(self.latencies_ms) - sum(
            e.startswith("time cap") for e in self.errors)
        return len(self.errors) + max(0, missing)

    @property
    def rate(self) -> float:
        """Logins per second (wall clock of the whole load)."""
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 99)

    def describe(self) -> str:
        median = _median(self.latencies_ms)
        note = (f"{self.rate:.1f} logins/s, p50 {median or 0:.0f} ms, p99 {self.p99_ms or 0:.0f} ms, "
                f"{self.error_count} errors, {self.clients}x{self.per_client}")
        if self.errors:
            note += f"; first error: {self.errors[0][:160]}"
        if self.auth_errors:
            note += f"; {len(self.auth_errors)} auth log error(s), first: {self.auth_errors[0][-160:]}"
        return note


def drive_imap_logins(server: Any, user: str, password: str, ips: list[str], per_client: int,
                      time_cap: float = IMAP_TIME_CAP) -> ImapLoad:
    """len(ips) threads started together, each `per_client` sequential IMAP logins (connect,
    ID x-originating-ip, LOGIN, SELECT INBOX, LOGOUT) from its own source address."""
    clients = len(ips)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + time_cap
    barrier = threading.Barrier(clients + 1, timeout=60)

    def client(ip: str) -> None:
        barrier.wait()
        for _ in range(per_client):
            if time.monotonic() > stop_at:
                with lock:
                    errors.append("time cap reached: login not run")
                continue
            t0 = time.perf_counter()
            res = server.imap_login(user, password, client_ip=ip, timeout=30)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt * 1000)
                if not res.ok:
                    errors.append(res.text)

    threads = [threading.Thread(target=client, args=(ip,), name=f"imap-{ip}", daemon=True) for ip in ips]
    for t in threads:
        t.start()
    mark = server.log_mark()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=max(1.0, stop_at - time.monotonic() + 35))
    wall = time.perf_counter() - t0
    time.sleep(0.2)  # Dovecot's log process writes asynchronously
    auth_errors = server.auth_errors(mark)
    with lock:
        return ImapLoad(clients, per_client, list(latencies), list(errors), wall, auth_errors)


# ----------------------------------------------------------------------------- output


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "euid": os.geteuid(),
    }
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    info["code"] = code_identity()
    return info


def code_identity() -> dict[str, Any]:
    """git HEAD (read-only: no index refresh) and a hash of src/, so runs of uncommitted code compare."""
    ident: dict[str, Any] = {}
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        res = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False, env=env)
        if res.returncode == 0:
            ident["git_head"] = res.stdout.strip()
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    ident["src_sha256"] = digest.hexdigest()[:16]
    return ident


def fmt(value: float | None, unit: str = "ms") -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.1f}"
    return f"{value:.1f}"


def render_table(results: dict[str, Result], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    head = (f"dovecot-appauth benchmark  {meta['timestamp']}  Python {m['python']}  nproc {m['nproc']}  "
            f"{'quick' if meta['quick'] else 'full'} ({meta['reps']} runs/scenario)  "
            f"reply helper: {meta['reply_helper'] or 'none (fd 4 = /dev/null)'}")
    cols = ["scenario", "label", "runs", "median", "min", "max", "unit", "x bare", "x -I -S", "target", "result"]
    rows = []
    for name in SCENARIOS:
        res = results.get(name)
        if res is None:
            continue
        rows.append([name, res.label, str(res.runs) if res.runs else "-", fmt(res.median), fmt(res.min),
                     fmt(res.max), res.unit if res.median is not None else "",
                     f"{res.ratio_bare:.2f}x" if res.ratio_bare else "-",
                     f"{res.ratio_isolated:.2f}x" if res.ratio_isolated else "-", res.target, res.status])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    right = {2, 3, 4, 5, 7, 8}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells))

    out = [head, "", line(cols), line(["-" * w for w in widths])]
    out += [line(r).rstrip() for r in rows]
    notes = [f"  {name}: {res.note}" for name in SCENARIOS if (res := results.get(name)) and res.note]
    if notes or meta.get("notes"):
        out += ["", "notes:", *notes, *(f"  {n}" for n in meta.get("notes", []))]
    return "\n".join(out)


def write_json(path: Path, results: dict[str, Result], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": SCHEMA_VERSION, **meta,
            "scenarios": {name: results[name].to_json() for name in SCENARIOS if name in results}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Per-login benchmark of dovecot-appauth (see benchmarks/README.md).")
    p.add_argument("--quick", action="store_true", help="fewer runs and IMAP logins (a smoke run, ~1 min)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"write results here (default {DEFAULT_JSON})")
    p.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--reps", type=int, default=0, help="runs per login scenario (default 20, quick 5)")
    p.add_argument("--clients", type=int, default=0, help="IMAP clients (default 8, quick 4)")
    p.add_argument("--logins", type=int, default=0, help="logins per IMAP client (default 25, quick 5)")
    p.add_argument("--no-reply-helper", action="store_true",
                   help="do not append Dovecot's checkpassword-reply (the program writes fd 4 itself)")
    p.add_argument("--program", type=Path, default=PROGRAM,
                   help=f"the checkpassword program to start (default {PROGRAM}); e.g. a checkout's "
                        "bin/dovecot-appauth-checkpassword, to compare a change without installing it")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (configs, databases, logs)")
    args = p.parse_args(argv)
    only = {ALIASES.get(n.strip(), n.strip()) for n in args.only.split(",") if n.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    args.only = only
    if args.reps < 0 or args.clients < 0 or args.logins < 0:
        p.error("counts must be positive")
    args.reps = min(args.reps, 500)
    args.clients = min(args.clients, 64)
    args.logins = min(args.logins, 500)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.close()
    meta = {
        "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": args.quick,
        "reps": bench.reps,
        "only": sorted(args.only),
        "deadline_s": DEADLINE,
        "reply_helper": " ".join(bench.helper),
        "program": str(args.program),
        "machine": machine_info(),
        "notes": bench.notes,
    }
    meta["timing_ratios"] = timing_ratios(bench.results)
    print(render_table(bench.results, meta))
    if meta["timing_ratios"]:
        print("\n" + render_ratios(meta["timing_ratios"], "wall clock, medians; target 0.90-1.10"))
    write_json(args.json, bench.results, meta)
    log(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
