"""What the [account] gate costs a warm login: the same successful login (SQLite, audit
off) with the gate off and with the LDAP gate on and its answer cached, interleaved so
that the machine's load hits both alike; and once with `cache_seconds = 0`, where every
login asks a local slapd.

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/account_gate.py [--reps 60]

Needs root, slapd, ldap-utils and openssl (tests/support/ldap.py starts the server on
127.0.0.1). Wall-clock medians: compare the two columns of one run, not runs on
different days. Measured on the 2-core project machine under load (load average ~9):
gate off 64.1 ms, gate on + cached answer 69.9 ms (+5.8 ms: the account module, one
SQLite open and SELECT in the enrichment cache); asking slapd on every login 146 ms
(python-ldap and libldap's TLS set-up are loaded, a connection, a bind and a search).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support.ldap, tests.support.hardening (no pytest needed)

from tests.support.common import new_server_dir  # noqa: E402
from tests.support.hardening import make_site  # noqa: E402
from tests.support.ldap import LdapServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=60)
    args = parser.parse_args()
    server = LdapServer(new_server_dir("appauth-ldap-"))
    server.start()
    server.load()
    off, on = make_site(prefix="appauth-bench-"), make_site(prefix="appauth-bench-")
    try:
        for site in (off, on):
            site.add_password("a", "alice@example.com")
        off.write()
        on.write(account={"backend": "ldap", "cache_seconds": 3600}, account__ldap=server.settings())
        for site in (off, on):  # .pyc files, the config cache, the gate's cache
            site.login("a")
            site.login("a")
        t_off, t_on = [], []
        for _ in range(args.reps):
            t_off.append(off.login("a").elapsed * 1000)
            t_on.append(on.login("a").elapsed * 1000)
        on.write(account={"backend": "ldap", "cache_seconds": 0}, account__ldap=server.settings())
        t_ask = [on.login("a").elapsed * 1000 for _ in range(max(args.reps // 3, 5))]
        print(f"median of {args.reps} interleaved warm logins: gate off {statistics.median(t_off):.1f} ms, "
              f"gate on + cached answer {statistics.median(t_on):.1f} ms; "
              f"asking slapd every login: {statistics.median(t_ask):.1f} ms")
    finally:
        server.stop()
        off.remove()
        on.remove()


if __name__ == "__main__":
    main()
