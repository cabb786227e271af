"""serve's HTTP connections (serve/http.py): a deadline for each request, a bound on its
head and on the connections open at once, through serve's own uvicorn configuration
(server.uvicorn_config) on a real socket on 127.0.0.1; the deadline made shorter here."""

from __future__ import annotations

import http.client
import io
import json
import socket
import sqlite3
import threading
import time

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("httptools")

from dovecot_appauth.audit.enrich import keep_cache_open  # noqa: E402
from dovecot_appauth.audit.lists import keep_warm  # noqa: E402
from dovecot_appauth.core import WouldWait, must_not_wait  # noqa: E402
from dovecot_appauth.serve.http import MAX_HEAD, connections_allowed  # noqa: E402
from dovecot_appauth.serve.server import Engine, build_app, uvicorn_config  # noqa: E402
from tests.support.common import until_closed  # noqa: E402
from tests.unit.test_server import ALLOWED_IP, PASSWORD, TOKEN, _site  # noqa: E402

VERIFY = json.dumps({"user": "alice@example.com", "password": PASSWORD, "remote_ip": ALLOWED_IP}).encode()


def request(body: bytes = VERIFY, token: str = TOKEN, extra: bytes = b"", length: int | None = None) -> bytes:
    """A POST /verify as bytes; `extra`: more header lines; `length`: another Content-Length."""
    return (b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body)


class Served:
    """build_app on serve's uvicorn configuration, in a thread; `bounds` for
    guarded_protocol (request_timeout, max_head, max_connections). What it says about
    connections is in `said`, the engine's lines in `log`."""

    def __init__(self, tmp_path, *, keep_alive: float = 60, **bounds):
        path, self.db = _site(tmp_path)
        self.log = io.StringIO()
        self.engine = Engine(str(path), stderr=self.log)
        self.said: list[str] = []
        config = uvicorn_config(build_app(self.engine, TOKEN), self.said.append, **bounds)
        config.log_level = "error"
        config.timeout_keep_alive = keep_alive  # never what closes a connection in these tests
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return sock

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.listener.close()


@pytest.fixture
def serve_with(tmp_path):
    made: list[Served] = []

    def make(**bounds) -> Served:
        made.append(Served(tmp_path, **bounds))
        return made[-1]

    yield make
    for served in made:
        served.close()
    keep_warm(False)  # the Engine turned these on for this process
    keep_cache_open(False)


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP answer read from `sock`, which stays open: (status, body)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def verified(sock: socket.socket) -> str:
    status, body = answer(sock)
    assert status == 200, (status, body)
    return json.loads(body)["result"]


# --- the deadline -----------------------------------------------------------------------------
def test_a_request_head_not_sent_whole_is_answered_408_and_closed(serve_with):
    served = serve_with(request_timeout=1.0)
    silent, half = served.connect(), served.connect()
    half.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\n")  # and no more
    whole = served.connect()
    whole.sendall(request())
    assert verified(whole) == "ok"  # the others do not stand in its way
    assert until_closed(half).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert until_closed(silent).startswith(b"HTTP/1.1 408 ")  # from the connection's start
    assert served.said.count(f"connection from 127.0.0.1:{half.getsockname()[1]} closed: request not "
                             "received within 1 s") == 1, served.said
    assert len(served.said) == 2


def test_each_request_on_a_kept_connection_has_its_own_deadline(serve_with):
    served = serve_with(request_timeout=0.5)
    sock = served.connect()
    for _ in range(3):  # more than the deadline in all
        sock.sendall(request())
        assert verified(sock) == "ok"
        time.sleep(0.3)
    sock.sendall(request()[:30])  # the next one stops half-way
    assert until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_body_not_sent_whole_is_closed_and_nothing_is_decided(serve_with):
    served = serve_with(request_timeout=0.5)
    sock = served.connect()
    sock.sendall(request()[:-5])  # the head and most of the body
    assert until_closed(sock).startswith(b"HTTP/1.1 408 ")
    # a caller without the token is answered at once; its body never comes: closed all
    # the same, without a second answer
    other = served.connect()
    other.sendall(request(token="wrong", length=1000)[:-len(VERIFY)])
    data = until_closed(other)
    assert data.startswith(b"HTTP/1.1 401 ") and b" 408 " not in data
    assert sqlite3.connect(served.db).execute("SELECT count(*) FROM log").fetchone() == (0,)
    assert "Traceback" not in served.log.getvalue()


def test_the_deadline_is_for_receiving_a_request_not_for_answering_it(serve_with):
    """A request the engine takes longer than the deadline over is answered."""
    served = serve_with(request_timeout=0.3)
    release = threading.Event()
    real_verify = served.engine.verify

    def slow(body):
        if must_not_wait():
            raise WouldWait("slow")  # to a thread
        release.wait(2.0)  # longer than the deadline: nobody releases it
        return real_verify(body)

    served.engine.verify = slow
    sock = served.connect()
    sock.sendall(request())
    assert verified(sock) == "ok"


# --- the head ---------------------------------------------------------------------------------
def test_a_head_over_the_limit_is_answered_431_without_reading_on(serve_with):
    served = serve_with()
    sock = served.connect()
    sock.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD + 1000) + b"\r\n")
    data = until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), data[:100]
    sock = served.connect()  # many headers, none large
    sock.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 1000)
    assert until_closed(sock).startswith(b"HTTP/1.1 431 ")
    assert served.said[-1].endswith(f"closed: request head over {MAX_HEAD} bytes") and len(served.said) == 2


def test_heads_within_the_limit_and_large_bodies_are_taken(serve_with):
    served = serve_with()
    sock = served.connect()
    sock.sendall(request(extra=b"X-Pad: " + b"a" * (MAX_HEAD - 500) + b"\r\n"))
    assert verified(sock) == "ok"
    # a body of nearly 64 KiB sent with its head: more than MAX_HEAD bytes at once
    big = json.dumps({**json.loads(VERIFY), "pad": "x" * 60000}).encode()
    sock.sendall(request(big))
    assert verified(sock) == "ok"
    # two requests at once, their heads together over the limit (each one under it)
    pad = b"X-Pad: " + b"a" * (MAX_HEAD // 2) + b"\r\n"
    sock.sendall(request(extra=pad) + request(extra=pad))
    assert verified(sock) == "ok" and verified(sock) == "ok"
    assert served.said == []


# --- connections at once ------------------------------------------------------------------------
def test_one_connection_too_many_closes_the_oldest_waiting_one(serve_with):
    served = serve_with(max_connections=3)
    kept = [served.connect() for _ in range(3)]
    for sock in kept:  # each known to the server, in this order
        sock.sendall(request())
        assert verified(sock) == "ok"
    newest = served.connect()
    newest.sendall(request())
    assert verified(newest) == "ok"
    assert until_closed(kept[0]) == b""
    for sock in kept[1:]:
        sock.sendall(request())
        assert verified(sock) == "ok"
    assert served.said == [f"3 connections open (the most a worker keeps): closed the oldest one waiting for a "
                           f"request, from 127.0.0.1:{kept[0].getsockname()[1]}"]


def test_with_a_request_in_work_on_every_connection_a_new_one_is_refused(serve_with):
    served = serve_with(max_connections=2)
    release = threading.Event()
    entered = threading.Semaphore(0)
    real_verify = served.engine.verify

    def held(body):
        if must_not_wait():
            raise WouldWait("held")
        entered.release()
        release.wait(30)
        return real_verify(body)

    served.engine.verify = held
    busy = [served.connect() for _ in range(2)]
    try:
        for sock in busy:
            sock.sendall(request())
        for _ in busy:
            assert entered.acquire(timeout=30)
        refused = served.connect()
        refused.sendall(request())
        assert until_closed(refused) == b""
    finally:
        release.set()
    assert [verified(sock) for sock in busy] == ["ok", "ok"]
    assert served.said == [f"2 connections open (the most a worker keeps), each with a request in work: refused "
                           f"a new one from 127.0.0.1:{refused.getsockname()[1]}"]


def test_the_connections_kept_leave_descriptors_for_the_engine():
    assert connections_allowed(-1) == 4096 and connections_allowed(65536) == 4096
    assert connections_allowed(1024) == 512 and connections_allowed(256) == 128 and connections_allowed(1) == 1
