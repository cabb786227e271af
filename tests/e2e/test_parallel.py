"""Issue 6, part 3: 200 concurrent logins of the installed program, on SQLite (WAL, busy
timeout) and on MariaDB.

A bounded pool (24 at a time) starts 200 processes: right and wrong passwords of several
users, unknown users, a revoked password, many identical logins racing for the same log row
and three logins per distinct (password, service, IP). Checked: every verdict, no lost
row ("not recorded"), exactly one row per distinct (password, service, IP) inside the dedup
window, and no stderr line but the revoked ones.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.common import wrong_password
from tests.support.hardening import dovecot_env, make_site, request_bytes, run_checkpassword

pytestmark = pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")

TOTAL = 200
WORKERS = 24
TIME_LIMIT = 60.0
USERS = [f"user{i}@example.com" for i in range(4)]
SERVICES = ["imap", "pop3", "smtp"]


def _populate(site) -> None:
    for user in USERS:
        for n in range(2):
            site.add_password(f"{user}#{n}", user)
    site.add_password("revoked", USERS[0], revoked=True)


def _jobs(site) -> list[tuple[str, str, str, str, int]]:
    """(user, password, service, ip, expected status), shuffled; 200 in all."""
    rnd = random.Random(6)
    jobs = []
    race_user, race_pw = site.passwords[f"{USERS[0]}#0"][1:3]
    jobs += [(race_user, race_pw, "imap", "198.51.100.10", 0)] * 70  # one row for all of them
    jobs += [(race_user.upper(), race_pw, "imap", "198.51.100.10", 0)] * 10  # same row, other case
    distinct = []
    for user in USERS:
        for n in range(2):
            for service in SERVICES[: 2 + (n == 0)]:
                distinct.append((user, site.pw(f"{user}#{n}"), service, f"198.51.100.{20 + len(distinct)}", 0))
    assert len(distinct) == 20
    jobs += distinct * 3  # three logins per distinct (password, service, IP): one row each
    # the wrong passwords given to USERS[2] (i % 4 == 0 and 2) must not be its own
    own = [site.pw(f"{USERS[2]}#{n}") for n in range(2)]
    others = [site.pw(f"{USERS[1]}#0"), "wrong-password", wrong_password(site.pw(f"{USERS[0]}#0"), *own), ""]
    assert others[0] not in own  # two random passwords: equal only by a chance of 62**-16, but say so
    jobs += [(USERS[i % 4] if i % 4 else USERS[2], others[i % 4], "imap", "203.0.113.5", 1) for i in range(40)]
    jobs += [(f"nobody{i}@example.com", race_pw, "imap", "203.0.113.6", 1) for i in range(10)]
    jobs += [(USERS[0], site.pw("revoked"), "pop3", "203.0.113.7", 1)] * 10
    assert len(jobs) == TOTAL
    rnd.shuffle(jobs)
    return jobs


def _run_all(site) -> None:
    jobs = _jobs(site)

    def one(job):
        user, password, service, ip, _ = job
        return run_checkpassword(site.path, request_bytes(user, password), env=dovecot_env(ip=ip, service=service),
                                 timeout=TIME_LIMIT)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        runs = list(pool.map(one, jobs))
    elapsed = time.monotonic() - start

    wrong = [(job, run.status, run.stderr) for job, run in zip(jobs, runs, strict=True) if run.status != job[4]]
    assert not wrong, f"{len(wrong)} wrong verdicts, e.g. {wrong[:3]}"
    for job, run in zip(jobs, runs, strict=True):
        if job[1] == site.pw("revoked"):
            assert len(run.lines) == 1 and "revoked" in run.lines[0]
        else:
            assert run.stderr == "", run.stderr  # in particular no "not recorded": no row lost
    assert elapsed < TIME_LIMIT, elapsed

    expected = Counter()
    by_user_pw = {(user.lower(), pw): pwid for pwid, user, pw, _ in site.passwords.values()}
    for user, password, service, ip, status in jobs:
        if status == 0:
            expected[(by_user_pw[(user.lower(), password)], service, ip)] = 1
    rows = Counter((int(r[0]), r[1], r[2]) for r in site.log_rows())
    assert rows == expected, (dict(rows - expected), dict(expected - rows))


def _parallel_logins(site) -> None:
    try:
        _populate(site)
        # The limiter would rightly throttle the 40 wrong passwords from one address; this
        # test is about concurrent verdicts and dedup (test_throttle.py covers the limiter).
        site.write(database={"connect_timeout": 3.0}, throttle={"enabled": False})
        _run_all(site)
    finally:
        site.remove()


def test_parallel_logins_sqlite():
    _parallel_logins(make_site(prefix="appauth-par-"))


@pytest.mark.mariadb
def test_parallel_logins_mariadb(mariadb_database):
    _parallel_logins(make_site(mariadb_database.dsn, prefix="appauth-par-mdb-"))
