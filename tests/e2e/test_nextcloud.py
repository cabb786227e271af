"""The Nextcloud backend against a real HTTP server on 127.0.0.1 that behaves like Nextcloud's WebDAV."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time

import pytest

from dovecot_appauth import nextcloud
from dovecot_appauth.core import TempFail
from tests.support.fake_nextcloud import FakeNextcloud

ALICE, ALICE_PW = "alice@example.com", "abcd-efgh-ijkl-mnop"


@pytest.fixture
def nc():
    server = FakeNextcloud()
    yield server
    server.close()


def settings(url: str, **kw) -> nextcloud.NextcloudSettings:
    kw.setdefault("timeout", 1.0)
    return nextcloud.NextcloudSettings(url, **kw)


def test_verify_207_is_right_401_is_wrong(nc, tmp_path):
    s = settings(nc.url(), cache_seconds=0)
    assert nextcloud.verify(ALICE, ALICE_PW, "198.51.100.7", s, str(tmp_path)) is True
    assert nextcloud.verify(ALICE, "wrong", "198.51.100.7", s, str(tmp_path)) is False
    assert nextcloud.verify("nobody", ALICE_PW, None, s, None) is False
    method, path, user, headers = nc.requests[0]
    assert (method, path, user) == ("PROPFIND", "/remote.php/dav/", ALICE)
    assert headers["Depth"] == "0" and headers["X-Forwarded-For"] == "198.51.100.7"
    assert "X-Forwarded-For" not in nc.requests[2][3]


def test_verify_password_with_colons_and_user_in_url(nc):
    s = settings(nc.url("/remote.php/dav/files/%u/"), cache_seconds=0)
    assert nextcloud.verify("bob", "pass:with:colons", None, s, None) is True
    assert nc.requests[0][1] == "/remote.php/dav/files/bob/"
    # a colon in the user name cannot be sent with basic auth: wrong, without asking
    assert nextcloud.verify("bo:b", "x", None, s, None) is False
    assert len(nc.requests) == 1


@pytest.mark.parametrize("path", ["/error/", "/redirect/"])
def test_verify_other_statuses_are_temporary_failures(nc, path):
    with pytest.raises(TempFail, match=r"HTTP (500|302)"):
        nextcloud.verify(ALICE, ALICE_PW, None, settings(nc.url(path)), None)


def test_verify_slow_server_is_a_temporary_failure_within_the_timeout(nc):
    start = time.monotonic()
    with pytest.raises(TempFail, match="no answer"):
        nextcloud.verify(ALICE, ALICE_PW, None, settings(nc.url("/slow/"), timeout=0.5), None)
    assert time.monotonic() - start < 3  # the server answers after 5 s


def test_verify_dripping_server_cannot_extend_the_deadline(nc):
    start = time.monotonic()
    with pytest.raises(TempFail, match="no answer"):
        nextcloud.verify(ALICE, ALICE_PW, None, settings(nc.url("/drip/"), timeout=0.7), None)
    assert time.monotonic() - start < 3  # the drip lasts 5.4 s


def test_verify_connection_refused_and_not_http():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TempFail, match="nextcloud"):
        nextcloud.verify(ALICE, ALICE_PW, None, settings(f"http://127.0.0.1:{port}/"), None)
    # a server that answers something else than HTTP
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def answer():
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        conn.close()

    t = threading.Thread(target=answer)
    t.start()
    with pytest.raises(TempFail, match="did not answer HTTP"):
        nextcloud.verify(ALICE, ALICE_PW, None, settings(f"http://127.0.0.1:{srv.getsockname()[1]}/"), None)
    t.join()
    srv.close()


def test_verify_bad_url_and_messages_never_hold_credentials(nc):
    with pytest.raises(TempFail, match="must be http"):
        nextcloud.verify(ALICE, ALICE_PW, None, settings("ftp://x/"), None)
    with pytest.raises(TempFail) as e:
        nextcloud.verify(ALICE, ALICE_PW, None, settings(f"http://admin:secret@127.0.0.1:{nc.port}/error/"), None)
    assert "secret" not in str(e.value) and ALICE_PW not in str(e.value)


def test_https_with_an_unknown_ca_is_a_temporary_failure(nc):
    # the fake speaks plain HTTP: the TLS handshake fails, which must not read as a wrong password
    with pytest.raises(TempFail):
        nextcloud.verify(ALICE, ALICE_PW, None, settings(f"https://127.0.0.1:{nc.port}/"), None)


def test_cache_answers_bursts_without_asking_nextcloud(nc, tmp_path):
    s = settings(nc.url(), cache_seconds=60)
    now = 1_000_000.0
    assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(tmp_path), now=now)
    for i in range(5):
        assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(tmp_path), now=now + i)
    assert len(nc.requests) == 1
    # wrong passwords are never cached, and never answered from alice's entry
    assert not nextcloud.verify(ALICE, "wrong", None, s, str(tmp_path), now=now + 1)
    assert not nextcloud.verify(ALICE, "wrong", None, s, str(tmp_path), now=now + 2)
    assert len(nc.requests) == 3
    # expired: asked again
    assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(tmp_path), now=now + 61)
    assert len(nc.requests) == 4


def test_cache_files_hold_no_password_and_the_key_is_private(nc, tmp_path):
    s = settings(nc.url(), cache_seconds=60)
    assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(tmp_path))
    key = tmp_path / "nextcloud.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    entries = os.listdir(tmp_path / "nextcloud")
    assert len(entries) == 1
    blob = b"".join(p.read_bytes() + p.name.encode() for p in tmp_path.rglob("*") if p.is_file())
    assert ALICE_PW.encode() not in blob and ALICE.encode() not in blob
    assert stat.S_IMODE((tmp_path / "nextcloud").stat().st_mode) == 0o700
    # the same credentials under another install's key give another entry
    other = tmp_path / "other"
    assert nextcloud._cache_entry(str(other), s, ALICE, ALICE_PW) != nextcloud._cache_entry(str(tmp_path), s, ALICE,
                                                                                             ALICE_PW)


def test_cache_not_used_with_a_readable_key(nc, tmp_path):
    s = settings(nc.url(), cache_seconds=60)
    assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(tmp_path))
    os.chmod(tmp_path / "nextcloud.key", 0o644)
    assert nextcloud.load_key(str(tmp_path)) is None
    assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(tmp_path))
    assert len(nc.requests) == 2


def test_cache_purges_expired_entries(nc, tmp_path):
    s = settings(nc.url(), cache_seconds=10)
    assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(tmp_path), now=1000.0)
    assert nextcloud.verify("bob", "pass:with:colons", None, s, str(tmp_path), now=1020.0)
    assert len(os.listdir(tmp_path / "nextcloud")) == 1


def test_unwritable_cache_dir_does_not_fail_the_login(nc, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = settings(nc.url(), cache_seconds=60)
    assert nextcloud.verify(ALICE, ALICE_PW, None, s, str(blocker / "cache"))
