"""`dovecot-appauth serve` run as in production, through the real command: throttled
clients answered at once (also through Dovecot's Lua passdb), the token required on TCP,
the body limit enforced while reading, the bound on requests in work, worker processes,
the metrics endpoint and graceful shutdown."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import _give_to_dovecot, run_cli
from tests.e2e.test_end_to_end_serve import LUA_MODULE, LUA_SCRIPT
from tests.support.common import until_closed
from tests.support.localservers import BlackHoleDns
from tests.support.serve import Service

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

GOOD_IP = "198.51.100.20"
GUESSER_IP = "198.51.100.66"
WRONG = "Wrong-Pass-Word-0000"  # created passwords are random 4x4 groups: never this


def _site(factory, *, dns_port: int | None = None, deadline: float = 1.5):
    dns = ("[audit.dns]\nenabled = false\n" if dns_port is None else
           f'[audit.dns]\nenabled = true\nresolvers = ["127.0.0.1"]\nport = {dns_port}\ntimeout = {deadline}\n')
    cfg = factory(audit=True, extra_toml=f"\n{dns}\n[audit.lists]\nip_networks = \"ip.deny.lst\"\n")
    (cfg.dir / "ip.deny.lst").write_text("203.0.113.64/26\n")
    os.chmod(cfg.dir / "ip.deny.lst", 0o644)
    cfg.path.write_text(cfg.path.read_text().replace(
        "[audit]\n", '[audit]\nglobal_networks = ["203.0.113.0/24", "198.51.100.0/24"]\njournal = "no"\n'
                     f'syslog_socket = ""\nlog_file = "{cfg.dir / "audit.log"}"\ndeadline = {deadline}\n', 1))
    token_file = cfg.dir / "serve.token"
    cfg.cli("serve-token", "--write", str(token_file), "--owner", "dovecot")
    cfg.token_file = token_file
    cfg.token = token_file.read_text().strip()
    return cfg


@pytest.fixture(scope="module")
def site(appauth_config_factory):
    return _site(appauth_config_factory)


def start(cfg, name: str, *extra: str) -> Service:
    return Service(cfg.path, cfg.dir / f"{name}.log", "--token-file", str(cfg.token_file), *extra)


def verify_body(user: str, password: str, ip: str) -> dict:
    return {"user": user, "password": password, "service": "imap", "remote_ip": ip}


async def _flood(port: int, token: str, body: dict, count: int) -> list[tuple[int, bytes]]:
    """`count` concurrent POST /verify, each on its own connection: (status, body) each."""
    payload = json.dumps(body).encode()
    request = (f"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer {token}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
               ).encode() + payload

    async def one() -> tuple[int, bytes]:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 120)
            writer.close()
            return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]
        except (TimeoutError, OSError, IndexError, ValueError):
            return 0, b""

    return list(await asyncio.gather(*(one() for _ in range(count))))


def flood_in_thread(port: int, token: str, body: dict, count: int) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.extend(asyncio.run(_flood(port, token, body, count))))
    thread.start()
    return thread, results


def throttle(served: Service, token: str, user: str, ip: str) -> None:
    """Fail `user` from `ip` up to [throttle] max_per_user_ip (10, the default)."""
    for _ in range(10):
        assert served.request("POST", "/verify", verify_body(user, WRONG, ip), token=token)[1] == {"result": "fail"}
    assert served.request("POST", "/verify", verify_body(user, WRONG, ip), token=token)[1] == \
        {"result": "tempfail", "throttled": True}


# --- 1. no worker is held by a throttled client --------------------------------------------
def test_throttled_flood_does_not_hold_an_innocent_verify(site):
    innocent = site.create_password("innocent@example.com")
    site.create_password("victim@example.com")
    # the defaults (workers, --max-requests 64): the first throttled requests of each worker
    # go to the engine, and those over 64 then are refused as busy (a tempfail as well);
    # once the engine has answered, the rest are answered from memory
    served = start(site, "flood")
    try:
        throttle(served, site.token, "victim@example.com", GUESSER_IP)
        thread, flood = flood_in_thread(served.port, site.token,
                                        verify_body("victim@example.com", WRONG, GUESSER_IP), 1000)
        latencies = []
        try:
            for _ in range(8):
                time.sleep(0.1)
                started = time.monotonic()
                status, answer = served.request("POST", "/verify", verify_body(
                    "innocent@example.com", innocent["password"], GOOD_IP), token=site.token, timeout=30)
                latencies.append(time.monotonic() - started)
                assert (status, answer["result"]) == (200, "ok"), answer
        finally:
            thread.join(180)
        assert len(flood) == 1000 and all(s in (200, 503) and b'"tempfail"' in b for s, b in flood), \
            sorted({(s, b[:60]) for s, b in flood})
        assert sum(s == 200 for s, _ in flood) >= 800, sorted({(s, b[:60]) for s, b in flood})
        # the per-login program's [throttle] delay (2 s) held each of these before
        assert max(latencies) < 1.0, latencies
    finally:
        served.stop()
    assert "throttled" in (site.dir / "flood.log").read_text()


# Dovecot's "high-performance" login mode: one imap-login process serves many clients
# instead of one forked per connection (200 forks on a loaded 2-core machine took seconds
# with any passdb, which is not what this test is about)
HIGH_PERFORMANCE_LOGIN = """
service imap-login {
  service_count = 0
  process_min_avail = 2
}
"""


@pytest.mark.dovecot
def test_throttled_imap_logins_do_not_hold_dovecots_auth_workers(site, dovecot):
    """200 throttled IMAP logins through the Lua passdb (blocking=yes: each one holds an
    auth worker until serve answers), then an innocent login."""
    if not os.path.exists(LUA_MODULE):
        pytest.skip("dovecot-auth-lua missing (apt-get install dovecot-auth-lua)")
    _give_to_dovecot(site.db_path.parent)
    innocent = site.create_password("imap-innocent@example.com")
    site.create_password("imap-victim@example.com")
    served = start(site, "flood-imap")
    guesser = "198.51.100.77"
    try:
        throttle(served, site.token, "imap-victim@example.com", guesser)
        dovecot.reconfigure(passdb=f"passdb {{\n  driver = lua\n  args = file={LUA_SCRIPT} blocking=yes\n}}\n",
                            extra_conf=HIGH_PERFORMANCE_LOGIN,
                            import_environment={"APPAUTH_VERIFY_URL": served.url("/verify"),
                                                "APPAUTH_TOKEN": site.token})
        with ThreadPoolExecutor(200) as pool:
            flood = [pool.submit(dovecot.imap_login, "imap-victim@example.com", WRONG, client_ip=guesser,
                                 select=False, timeout=120) for _ in range(200)]
            time.sleep(0.05)
            answered_before = sum(f.done() for f in flood)
            started = time.monotonic()
            ok = dovecot.imap_login("imap-innocent@example.com", innocent["password"], client_ip=GOOD_IP)
            elapsed = time.monotonic() - started
            results = [f.result() for f in flood]
        assert ok.ok, ok.text
        assert not any(r.ok for r in results)
        assert sum("UNAVAILABLE" in r.text for r in results) >= 150, [r.text for r in results][:5]
        assert answered_before < 150, answered_before  # the innocent login came during the flood
        assert elapsed < 1.0, f"{elapsed:.2f} s"
    finally:
        served.stop()


# --- 2. authenticated by default -----------------------------------------------------------
def test_serve_refuses_tcp_without_a_token(site):
    result = run_cli(site.path, "serve", "--port", "1", check=False, timeout=30)
    assert result.returncode != 0 and "needs --token-file" in result.stderr and "--insecure-no-token" in result.stderr
    for contradiction in (["--port", "1", "--token-file", str(site.token_file), "--insecure-no-token"],
                          ["--unix-socket", str(site.dir / "s.sock"), "--insecure-no-token"]):
        result = run_cli(site.path, "serve", *contradiction, check=False, timeout=30)
        assert result.returncode != 0 and "--insecure-no-token" in result.stderr, result.stderr


def test_serve_refuses_a_file_check_interval_out_of_range(site):
    for value in ("-1", "nan", "3601"):
        result = run_cli(site.path, "serve", "--port", "1", "--token-file", str(site.token_file),
                         "--file-check-interval", value, check=False, timeout=30)
        assert result.returncode != 0 and "--file-check-interval" in result.stderr, result.stderr


def test_serve_refuses_a_token_file_everyone_can_read(site, tmp_path):
    loose = tmp_path / "token"
    loose.write_text("some-secret-value\n")
    os.chmod(loose, 0o644)
    result = run_cli(site.path, "serve", "--port", "1", "--token-file", str(loose), check=False, timeout=30)
    assert result.returncode != 0 and "readable by every user" in result.stderr
    assert "some-secret-value" not in result.stderr


def test_serve_token_writes_a_private_file_for_the_owner(site, tmp_path):
    import pwd

    path = tmp_path / "serve.token"
    result = run_cli(site.path, "serve-token", "--write", str(path), "--owner", "dovecot")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == pwd.getpwnam("dovecot").pw_uid
    secret = path.read_text().strip()
    assert len(secret) >= 40 and secret not in result.stdout + result.stderr
    again = run_cli(site.path, "serve-token", "--write", str(path), check=False)
    assert again.returncode != 0 and "exists" in again.stderr and path.read_text().strip() == secret
    run_cli(site.path, "serve-token", "--write", str(path), "--mode", "600", "--force")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_text().strip() != secret
    assert run_cli(site.path, "serve-token", "--write", str(path), "--mode", "644", "--force",
                   check=False).returncode != 0


def test_insecure_no_token_callers_cannot_pick_the_client_address_or_report(site):
    created = site.create_password("untrusted@example.com")
    served = Service(site.path, site.dir / "insecure.log", "--insecure-no-token", "--workers", "1")
    try:
        # a listed address named by the caller is not used: the caller's own (127.0.0.1) is
        assert served.request("POST", "/verify", verify_body("untrusted@example.com", created["password"],
                                                             "203.0.113.70"))[1]["result"] == "ok"
        served.request("POST", "/policy?command=report", {"login": "untrusted@example.com", "remote": GOOD_IP,
                                                          "protocol": "imap", "success": True})
        # nor through X-Forwarded-For (uvicorn's proxy headers would take it from 127.0.0.1)
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        try:
            conn.request("POST", "/verify", body=json.dumps(verify_body("untrusted@example.com", created["password"],
                                                                        "192.0.2.1")),
                         headers={"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.70"})
            assert json.loads(conn.getresponse().read())["result"] == "ok"
        finally:
            conn.close()
    finally:
        served.stop()
    import sqlite3

    conn = sqlite3.connect(site.db_path)
    try:
        logged = conn.execute("SELECT src_ip FROM log JOIN app_passwords ON log.pwid = app_passwords.id "
                              "WHERE app_passwords.uid = 'untrusted@example.com'").fetchall()
        reported = conn.execute("SELECT count(*) FROM audit_events WHERE uid = 'untrusted@example.com' "
                                "AND pwid IS NULL").fetchone()[0]
    finally:
        conn.close()
    assert logged == [("127.0.0.1",)] and reported == 0
    assert "--insecure-no-token" in (site.dir / "insecure.log").read_text()


# --- 3. bounded input ------------------------------------------------------------------------
def _peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def _workers(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_10_mib_body_is_refused_without_being_buffered(site):
    served = start(site, "body", "--workers", "1")
    try:
        (worker,) = _workers(served.proc.pid)
        assert served.request("GET", "/health", timeout=5)[0] == 200
        before = _peak_kib(worker)
        big = b'{"user": "' + b"x" * (10 * 1024 * 1024) + b'"}'
        for chunked in (False, True):
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
            headers = {"Authorization": f"Bearer {site.token}", "Content-Type": "application/json"}
            try:
                if chunked:  # no Content-Length to refuse by: the reading itself must stop
                    conn.request("POST", "/verify", body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                                 headers=headers, encode_chunked=True)
                else:
                    conn.request("POST", "/verify", body=big, headers=headers)
                status = conn.getresponse().status
            except (BrokenPipeError, ConnectionResetError):
                status = 413  # answered and closed while the client still sent
            finally:
                conn.close()
            assert status == 413
        grown = _peak_kib(worker) - before
        assert grown < 4096, f"peak memory grew by {grown} KiB"
    finally:
        served.stop()


def test_requests_not_sent_whole_are_closed_after_the_deadline(site):
    """Connections a local process opens without ever finishing a request (no token
    needed) are answered 408 and closed REQUEST_TIMEOUT (10 s) after they were made; a
    real login meanwhile is answered. The workers' open-file limit is raised."""
    from dovecot_appauth.serve.http import REQUEST_TIMEOUT, WANTED_NOFILE

    created = site.create_password("deadline@example.com")
    served = start(site, "deadline", "--workers", "1")
    held: list[socket.socket] = []
    try:
        (worker,) = _workers(served.proc.pid)
        limits = Path(f"/proc/{worker}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()
        assert int(soft) >= min(int(hard), WANTED_NOFILE), limits
        for i in range(30):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=REQUEST_TIMEOUT + 50)
            sock.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"")  # half a head, or nothing
            held.append(sock)
        status, answer = served.request("POST", "/verify", verify_body("deadline@example.com", created["password"],
                                                                       GOOD_IP), token=site.token)
        assert (status, answer["result"]) == (200, "ok")
        for sock in held:
            assert until_closed(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in held:
            sock.close()
        served.stop()
    log = (site.dir / "deadline.log").read_text()
    assert log.count(f"closed: request not received within {REQUEST_TIMEOUT:g} s") == 30, log


def test_an_oversized_head_is_refused_without_being_buffered(site):
    """httptools keeps every header until the head ends: serve stops reading a head at
    MAX_HEAD (431 and closed), so 64 MiB of headers cost the worker no memory."""
    from dovecot_appauth.serve.http import MAX_HEAD

    served = start(site, "head", "--workers", "1")
    try:
        (worker,) = _workers(served.proc.pid)
        assert served.request("GET", "/health", timeout=5)[0] == 200
        before = _peak_kib(worker)
        sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        try:
            sock.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\n")
            line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
            sent = 0
            with pytest.raises(OSError):  # closed by serve long before it all went
                while sent < 64 * 1024 * 1024:
                    sock.sendall(line)
                    sent += len(line)
        finally:
            sock.close()
        grown = _peak_kib(worker) - before
        assert grown < 4096, f"peak memory grew by {grown} KiB after {sent} bytes of headers"
        sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        try:
            sock.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * MAX_HEAD + b"\r\n")
            assert until_closed(sock).startswith(b"HTTP/1.1 431 ")
        finally:
            sock.close()
        assert served.request("GET", "/health", timeout=5)[0] == 200
    finally:
        served.stop()
    assert f"closed: request head over {MAX_HEAD} bytes" in (site.dir / "head.log").read_text()


def test_nested_json_and_a_nul_in_config_get_a_clean_answer_and_no_traceback(site):
    served = start(site, "malformed", "--workers", "1")
    try:
        headers = {"Authorization": f"Bearer {site.token}", "Content-Type": "application/json"}
        for path in ("/verify", "/policy?command=allow"):
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
            try:
                conn.request("POST", path, body=b"[" * 60000, headers=headers)
                response = conn.getresponse()
                assert response.status == 400, (path, response.status, response.read())
            finally:
                conn.close()
        body = {**verify_body("nobody@example.com", WRONG, GOOD_IP), "config": str(site.path) + "\0"}
        status, answer = served.request("POST", "/verify", body, token=site.token)
        assert status == 409 and answer["result"] == "tempfail"
    finally:
        served.stop()
    log = (site.dir / "malformed.log").read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


@pytest.fixture
def dead_dns_site(appauth_config_factory):
    with BlackHoleDns() as dns:
        yield _site(appauth_config_factory, dns_port=dns.port, deadline=3.0)


def test_max_requests_bounds_the_work_and_refuses_the_excess_at_once(dead_dns_site):
    """A dead DNS server holds every audited login for the audit deadline (3 s): the
    requests over --max-requests get a temporary failure at once, never a place in a queue."""
    cfg = dead_dns_site
    created = cfg.create_password("busy@example.com")
    served = start(cfg, "busy", "--workers", "1", "--max-requests", "20")
    try:
        answers: list[tuple[float, int, bytes]] = []
        started = time.monotonic()

        async def timed() -> None:
            async def one(i: int) -> None:
                body = verify_body("busy@example.com", created["password"], f"198.51.100.{i % 250 + 1}")
                status, text = (await _flood(served.port, cfg.token, body, 1))[0]
                answers.append((time.monotonic() - started, status, text))

            await asyncio.gather(*(one(i) for i in range(400)))

        asyncio.run(timed())
    finally:
        served.stop()
    held = [t for t, s, b in answers if s == 200 and b'"ok"' in b]
    refused = [t for t, s, b in answers if s == 503 and b'"tempfail"' in b]
    assert len(held) + len(refused) == 400, sorted({(s, b[:50]) for _, s, b in answers})
    assert 1 <= len(held) <= 20 * 3, len(held)  # 20 at a time; a few more as places free
    # every refusal came before the first held login could end (the 3 s audit deadline)
    assert min(held) >= 2.5 and max(refused[:300]) < min(held), (min(held), sorted(refused)[-5:])


# --- 5. worker processes, 7. graceful shutdown and metrics -----------------------------------
def test_workers_share_the_socket_and_stop_together(site):
    served = start(site, "workers", "--workers", "3")
    try:
        workers = _workers(served.proc.pid)
        assert len(workers) == 3
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        with ThreadPoolExecutor(12) as pool:
            while len(seen) < 3 and time.monotonic() < deadline:
                seen |= {a[1]["pid"] for a in pool.map(lambda _: served.request("GET", "/health"), range(24))}
        assert seen == set(workers)
    finally:
        served.proc.send_signal(signal.SIGTERM)  # the supervisor alone: it stops its workers
        served.proc.wait(30)
        served.stop()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_sigterm_finishes_requests_in_flight(dead_dns_site):
    cfg = dead_dns_site
    created = cfg.create_password("inflight@example.com")
    served = start(cfg, "graceful", "--workers", "2")
    result: dict = {}

    def slow_login() -> None:  # held ~3 s by the dead resolver
        result["answer"] = served.request("POST", "/verify", verify_body("inflight@example.com",
                                                                        created["password"], "198.51.100.90"),
                                          token=cfg.token, timeout=30)

    thread = threading.Thread(target=slow_login)
    thread.start()
    time.sleep(1.0)
    served.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    served.proc.wait(30)
    served.stop()
    assert result["answer"][0] == 200 and result["answer"][1]["result"] == "ok", result
    assert served.proc.returncode == 0


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def live_dns_site(appauth_config_factory):
    from tests.support.localservers import LocalDns

    with LocalDns() as dns:
        yield _site(appauth_config_factory, dns_port=dns.port)


def _get_metrics(served: Service, token: str | None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def test_metrics_need_the_token_and_add_up_over_workers(live_dns_site):
    cfg = live_dns_site
    created = cfg.create_password("metrics@example.com")
    cfg.create_password("metrics-victim@example.com")
    served = start(cfg, "metrics", "--workers", "2")
    try:
        assert _get_metrics(served, None)[0] == 401
        assert _get_metrics(served, "wrong-token")[0] == 401
        with ThreadPoolExecutor(8) as pool:  # 10 addresses, 4 logins each: misses, then cache hits
            answers = list(pool.map(lambda i: served.request("POST", "/verify", verify_body(
                "metrics@example.com", created["password"], f"198.51.100.{100 + i % 10}"), token=cfg.token)[1],
                range(40)))
        assert all(a["result"] == "ok" for a in answers), answers
        throttle(served, cfg.token, "metrics-victim@example.com", "198.51.100.99")
        time.sleep(0.01)
        (cfg.dir / "ip.deny.lst").write_text("203.0.113.64/26\n203.0.113.128/26\n")
        cfg.path.write_text(cfg.path.read_text() + "# changed\n")
        time.sleep(1.1)  # serve looks at its files once per --file-check-interval (default 1 s)
        for _ in range(10):  # the workers see the changed list on their next requests
            served.request("POST", "/verify", verify_body("metrics@example.com", WRONG, "198.51.100.98"),
                           token=cfg.token)
        status, content_type, text = _get_metrics(served, cfg.token)
    finally:
        served.stop()
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    # counted in two processes, summed by whichever answered /metrics
    assert _metric(text, "appauth_logins_total", endpoint="verify", result="ok", service="imap") == 40
    assert _metric(text, "appauth_logins_total", endpoint="verify", result="fail", service="imap") == 20
    assert _metric(text, "appauth_logins_total", endpoint="verify", result="tempfail", service="imap") == 1
    assert _metric(text, "appauth_throttled_total", service="imap") == 1
    assert _metric(text, "appauth_request_seconds_count", endpoint="verify") == 61
    hits = _metric(text, "appauth_enrichment_cache_total", source="rdns", result="hit")
    misses = _metric(text, "appauth_enrichment_cache_total", source="rdns", result="miss")
    assert hits + misses == 40 and misses >= 10 and hits >= 1, (hits, misses)
    assert _metric(text, "appauth_enrichment_total", source="rdns", status="fetched") == misses
    assert _metric(text, "appauth_list_reloads_total", kind="ip_networks") >= 1
    assert _metric(text, "appauth_config_reloads_total", result="ok") >= 1
