"""`dovecot-appauth serve --workers`: right-password /verify throughput with one worker
process and with N (issue 12, item 5: hashing uses every core).

    /opt/dovecot-appauth-test/venv/bin/python benchmarks/serve_workers.py [--workers N] [--requests 400] [--clients 8]

One temporary SQLite site (audit off: the SHA512-crypt check and the `log` insert), the
real `serve` started with `--workers 1`, then with `--workers N` (default: the cores),
`--requests` right-password requests from `--clients` concurrent clients against each.
Prints requests/s for both and their ratio as JSON. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_flood import _free_port, _post, make_site, start_serve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    base, config, token, password = make_site()
    rates = {}
    try:
        for workers in (1, args.workers):
            port = _free_port()
            proc = start_serve(config, base, port, "--workers", str(workers))
            try:
                # distinct client addresses: the `log` row is written, not deduplicated
                nets = ("192.0.2", "198.51.100", "203.0.113")  # documentation addresses only
                bodies = [{"user": "innocent@example.com", "password": password,
                           "remote_ip": f"{nets[i // 250 % 3]}.{i % 250 + 1}"} for i in range(args.requests)]

                def verify(body: dict, port: int = port) -> str:
                    return _post(port, token, body)["result"]

                with ThreadPoolExecutor(args.clients) as pool:
                    list(pool.map(verify, bodies[:args.clients]))  # warm
                    started = time.monotonic()
                    results = list(pool.map(verify, bodies))
                    seconds = time.monotonic() - started
                assert results.count("ok") == len(results), set(results)
                rates[workers] = round(len(results) / seconds, 1)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"requests": args.requests, "clients": args.clients,
                      "per_second": {f"workers={w}": r for w, r in rates.items()},
                      "ratio": round(rates[args.workers] / rates[1], 2), "load_average": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
