"""fast_path.py's pure parts: the request it sends serve and how it reads serve's answer."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dovecot_appauth import fast_path
from dovecot_appauth.core import LoginRequest, Mode, TempFail
from dovecot_appauth.fast_path import Unanswered, answer_of, encode_request, parse_answer, request_body


def _request(**kw) -> LoginRequest:
    values = {"username": "alice@example.com", "password": "pw", "mode": Mode.VERIFY, "service": "imap",
              "remote_ip": "198.51.100.7", "local_ip": "192.0.2.1", "remote_port": 50000, "local_port": 143}
    values.update(kw)
    return LoginRequest(**values)


def _encode(request: LoginRequest, config_real: str, token: str | None = None) -> bytes:
    return encode_request(request_body(request, config_real), token)


def _split(data: bytes) -> tuple[list[str], dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    assert length == len(body)
    return lines, json.loads(body)


def test_request_is_a_post_to_verify_with_every_field(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("")
    lines, body = _split(_encode(_request(), str(config)))
    assert lines[0] == "POST /verify HTTP/1.1" and "Connection: close" in lines
    assert not any(line.startswith("Authorization") for line in lines)
    assert body == {"user": "alice@example.com", "password": "pw", "service": "imap", "remote_ip": "198.51.100.7",
                    "local_ip": "192.0.2.1", "remote_port": 50000, "local_port": 143, "config": str(config)}


def test_the_fast_path_record_names_the_config_by_its_real_path(tmp_path):
    """serve compares the config it runs with the one named: by real path (fast_path.record)."""
    from dovecot_appauth.config import parse

    (tmp_path / "real.toml").write_text("")
    (tmp_path / "link.toml").symlink_to(tmp_path / "real.toml")
    config = parse({"fast_path": {"socket": "run/serve.sock", "token_file": "serve.token", "timeout": 3},
                    "throttle": {"delay": 0.5}}, str(tmp_path / "link.toml"))
    assert fast_path.record(config) == (str(tmp_path / "run" / "serve.sock"), str(tmp_path / "serve.token"), 3.0,
                                        0.5, str(tmp_path / "real.toml"))
    assert fast_path.record(parse({}, str(tmp_path / "link.toml"))) is None  # no [fast_path] socket


def test_request_without_client_sends_nulls():
    _, body = _split(_encode(_request(remote_ip=None, local_ip=None, remote_port=None, local_port=None), "/c"))
    assert body["remote_ip"] is None and body["remote_port"] is None


def test_token_goes_in_a_bearer_header():
    lines, _ = _split(_encode(_request(), "/c", token="s3cret-token"))
    assert "Authorization: Bearer s3cret-token" in lines


@given(st.text(min_size=1), st.text())
def test_any_user_and_password_survive_the_encoding(user, password):
    _, body = _split(_encode(_request(username=user, password=password), "/c"))
    assert body["user"] == user and body["password"] == password


def _answer(status: int, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_answers_are_read_as_json_reads_them(obj):
    body = json.dumps(obj).encode()
    assert parse_answer(_answer(200, body)) == (200, obj)
    assert parse_answer(_answer(200, json.dumps(obj, ensure_ascii=False).encode())) == (200, obj)


@pytest.mark.parametrize("data", [
    b"",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n",  # no end of the head
    b"SMTP 200 OK\r\n\r\n{}",
    b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\n\r\n{}",  # no content-length
    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}",  # cut short
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n{}",
    _answer(200, b"[1]"), _answer(200, b"{'a': 1}"), _answer(200, b"{} {}"), _answer(200, b"NaN"),
    _answer(200, b'{"a": NaN}'), _answer(200, b"\xff"), _answer(200, b"{" * 100000),
])
def test_what_is_not_an_answer_is_refused(data):
    with pytest.raises(ValueError):
        parse_answer(data)


def test_serve_decisions():
    ok = answer_of(200, {"result": "ok", "user": "Alice@example.com", "fields": {"userdb_home": "/h", "nopw": None}})
    assert (ok.result, ok.user, ok.fields) == ("ok", "Alice@example.com", [("userdb_home", "/h"), ("nopw", None)])
    assert answer_of(200, {"result": "fail"}).result == "fail"
    held = answer_of(200, {"result": "tempfail", "throttled": True})
    assert held.result == "tempfail" and held.throttled
    assert not answer_of(200, {"result": "tempfail"}).throttled


@pytest.mark.parametrize(("status", "said"), [
    (401, "token_file"), (403, "token_file"), (409, "another configuration"), (503, "busy"), (413, "HTTP 413"),
    (400, "HTTP 400"), (404, "HTTP 404"),
])
def test_requests_serve_did_not_take_are_checked_in_process(status, said):
    with pytest.raises(Unanswered, match=said):
        answer_of(status, {"result": "tempfail"})


@pytest.mark.parametrize(("status", "body"), [
    (500, {"result": "ok", "user": "a", "fields": {}}),  # an error page, whatever it says
    (200, {"result": "maybe"}),
    (200, {}),
    (200, {"result": "ok", "fields": {}}),  # no user
    (200, {"result": "ok", "user": "", "fields": {}}),
    (200, {"result": "ok", "user": "a", "fields": []}),
    (200, {"result": "ok", "user": "a", "fields": {"uid": 5}}),  # not a string
])
def test_an_answer_that_decides_nothing_is_a_temporary_failure(status, body):
    with pytest.raises(TempFail):
        answer_of(status, body)


@pytest.mark.parametrize(("user", "fields", "said"), [
    ("a", {"userdb_x=secret-value": "1"}, "field #1 with a name"),
    ("a", {"userdb_home": "/h", "": "1"}, "field #2 with a name"),
    ("a", {"user db": "1"}, "field #1 with a name"),
    ("a", {"userdb_\tx": "1"}, "field #1 with a name"),
    ("a", {"userdb_\x7f": None}, "field #1 with a name"),
    ("a", {"userdb_\udc80": "1"}, "field #1 with a name"),
    ("a", {"userdb_home": "secret-value\ud800"}, "field 'userdb_home' that is not UTF-8"),
    ("secret-value\udc80", {}, "user name with a control character or that is not UTF-8"),
    ("secret-value\x00", {}, "user name with a control character"),
    ("secret-value\n", {}, "user name with a control character"),
    ("secret-value\x7f", {}, "user name with a control character"),
])
def test_an_ok_answer_the_in_process_login_would_never_give_is_a_temporary_failure(user, fields, said):
    """Checked as login.py's own path checks its user (fd 3, core.username_ok) and field
    names ([userdb.extra], core.field_name_ok): refused before anything is written to fd 4,
    saying what is wrong and not the value (reply.send raised ValueError or
    UnicodeEncodeError on them: a traceback, and exit 1 in login_via_serve)."""
    with pytest.raises(TempFail, match=said) as info:
        answer_of(200, {"result": "ok", "user": user, "fields": fields})
    assert "secret-value" not in str(info.value) and str(info.value).endswith(": temporary failure")


def test_an_ok_answer_with_what_dovecot_can_carry_is_taken():
    """Names Dovecot uses with '/' and '.', non-ASCII values and users, a NUL-free tab in a
    value (fd 4 escapes it): all as the in-process login would answer them."""
    fields = {"userdb_namespace/inbox/mailbox/Sent/autocreate": "yes", "userdb_home": "/srv/mail/Zoë\tx",
              "nopassword": None, "userdb_quota.rule": "*:storage=1G"}
    ok = answer_of(200, {"result": "ok", "user": "zoë@example.com", "fields": fields})
    assert (ok.user, ok.fields) == ("zoë@example.com", list(fields.items()))


def test_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("  abc-123\n")
    assert fast_path.read_token(str(path)) == "abc-123"
    path.write_text("\n")
    with pytest.raises(TempFail, match="empty"):
        fast_path.read_token(str(path))
    with pytest.raises(TempFail, match="No such file"):
        fast_path.read_token(str(tmp_path / "absent"))


def test_a_peer_that_cannot_be_checked_is_not_trusted(tmp_path):
    """untrusted_peer never raises: what it cannot check is a reason not to send the password."""
    import socket

    left, right = socket.socketpair()
    try:
        # a socket path whose directory is gone: the check cannot stat it
        reason = fast_path.untrusted_peer(left, str(tmp_path / "gone" / "serve.sock"))
    finally:
        left.close()
        right.close()
    assert reason is not None and reason.startswith("cannot tell who listens there")


# fast_path.login_via_serve is run (entry.checkpassword) only for what Dovecot runs: the plain
# command line and a current config cache (config_cache.py)

@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--config", "/etc/a.toml", "/usr/lib/dovecot/checkpassword-reply"], {},
     ("/etc/a.toml", ["/usr/lib/dovecot/checkpassword-reply"])),
    (["--config=/etc/a.toml"], {}, ("/etc/a.toml", [])),
    ([], {"DOVECOT_APPAUTH_CONFIG": "/etc/b.toml"}, ("/etc/b.toml", [])),
    (["/helper"], {}, ("/etc/dovecot-appauth/config.toml", ["/helper"])),
    (["--debug", "/helper"], {}, None),
    (["--config", "/etc/a.toml", "--audit-chain", "/helper"], {}, None),
    (["--help"], {}, None),
    (["--", "/helper"], {}, None),
])
def test_only_the_plain_command_line_is_taken_without_login_main(argv, env, expected):
    from dovecot_appauth.config_cache import plain_config_path

    assert plain_config_path(argv, env) == expected


def test_the_record_is_read_only_from_a_current_cache(tmp_path, monkeypatch):
    """The fast path's record is believed only while the config file is the one the cache
    was made from (config_cache.cache_key); anything else is login.main's."""
    from dovecot_appauth import config_cache, private_file
    from dovecot_appauth.config import config_cache_file, load, load_cached

    def record(path) -> tuple | None:
        cached = config_cache.read_current(str(path))
        return None if cached is None else cached[3]

    monkeypatch.setattr(config_cache, "CONFIG_CACHE_ROOT", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "config.toml"
    conf.write_text(f'[fast_path]\nsocket = "{tmp_path / "serve.sock"}"\ntimeout = 2\n')
    assert config_cache.read_current(str(conf)) is None  # no cache yet
    load_cached(str(conf))  # what the first login (login.main) does
    made = record(conf)
    assert made == (str(tmp_path / "serve.sock"), None, 2.0, load(str(conf)).throttle.delay,
                    os.path.realpath(conf))
    assert config_cache.read_current("config.toml") is None  # relative: login.main makes it absolute
    cached = private_file.load(config_cache_file(str(conf)))
    private_file.store(config_cache_file(str(conf)), cached[:3])  # a cache of the format before
    assert config_cache.read_current(str(conf)) is None
    load_cached(str(conf))
    conf.write_text(conf.read_text() + "# edited\n")  # the file changed: the cache is stale
    assert record(conf) is None
    load_cached(str(conf))
    assert record(conf) == made
    conf.write_text("")  # no [fast_path] socket: no record
    load_cached(str(conf))
    assert record(conf) is None
