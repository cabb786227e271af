"""The checkpassword contract without I/O: fd-3 parsing, environment, fd-4 encoding.

Expected values come from shared/PROTOCOL.md (Dovecot 2.3.19's db-checkpassword.c and
checkpassword-reply.c), written out here rather than computed by the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dovecot_appauth.core import (
    MAX_REQUEST_LEN,
    MISUSE,
    AppAuthError,
    Credentials,
    ExitCode,
    Misuse,
    Mode,
    TempFail,
    decode_reply,
    encode_reply,
    encode_request,
    field_name_ok,
    parse_request,
    read_environment,
    tab_escape,
    tab_unescape,
    username_ok,
    utf8_ok,
)

# Every byte Dovecot's str_tabescape() escapes, with its escape (PROTOCOL.md).
ESCAPED = {"\x01": "\x011", "\t": "\x01t", "\n": "\x01n", "\r": "\x01r", "\0": "\x010"}
NASTY = "a\x01b\tc\nd\re\0f"

# --- exit statuses ---------------------------------------------------------------------


def test_ExitCode_values_match_protocol():
    assert (ExitCode.OK, ExitCode.FAIL, ExitCode.LOOKUP_OK, ExitCode.LOOKUP_UNKNOWN, ExitCode.TEMPFAIL) == (
        0, 1, 2, 3, 111,
    )
    assert MISUSE == 2


def test_errors_carry_their_exit_status():
    assert Misuse("x").exit_code == 2
    assert TempFail("x").exit_code == 111
    assert AppAuthError("x").exit_code == 111  # an unclassified problem is never "wrong password"


# --- fd 3 ------------------------------------------------------------------------------


def test_parse_request_plain():
    assert parse_request(b"alice@example.com\0secret\0\0") == Credentials("alice@example.com", "secret", True)


def test_parse_request_lookup_has_empty_password():
    creds = parse_request(b"alice\0\0\0")
    assert creds.password == ""
    assert creds.password_given is False


def test_encode_request_is_what_dovecot_writes():
    assert encode_request("alice", "pw") == b"alice\0pw\0\0"


@pytest.mark.parametrize("char", ["\x01", "\t", "\n", "\r"])
def test_parse_request_password_keeps_escapable_bytes(char):
    password = f"x{char}y{char}"
    assert parse_request(encode_request("alice", password)).password == password


_usernames = st.text(
    alphabet=st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=60,
)
_passwords = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=60)


@given(user=_usernames, password=_passwords)
@example(user="alice@example.com", password="\x01\t\n\r")
@example(user="ü@example.com", password="pässwörd")
def test_parse_request_round_trip(user, password):
    data = encode_request(user, password)
    if len(data) > MAX_REQUEST_LEN:
        with pytest.raises(Misuse):
            parse_request(data)
        return
    creds = parse_request(data)
    assert (creds.username, creds.password, creds.password_given) == (user, password, password != "")


def test_parse_request_exactly_512_bytes_is_accepted():
    data = b"u\0" + b"p" * (512 - 4) + b"\0\0"
    assert len(data) == 512
    assert parse_request(data).password == "p" * 508


def test_parse_request_513_bytes_is_misuse():
    data = b"u\0" + b"p" * (513 - 4) + b"\0\0"
    assert len(data) == 513
    with pytest.raises(Misuse, match="513 bytes"):
        parse_request(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"alice", id="no-NUL"),
        pytest.param(b"alice\0secret", id="one-NUL"),
        pytest.param(b"alice\0secret\0", id="two-NULs"),
        pytest.param(b"alice\0secret\0\0trailing", id="last-field-unterminated"),
        pytest.param(b"alice\0secret\0\0\0", id="four-fields"),
        pytest.param(b"alice\0sec\0ret\0\0", id="NUL-in-password"),
    ],
)
def test_parse_request_bad_framing_is_misuse(data):
    with pytest.raises(Misuse) as info:
        parse_request(data)
    assert info.value.exit_code == 2
    assert "secret" not in str(info.value)


def test_parse_request_empty_user_is_misuse():
    with pytest.raises(Misuse, match="empty username"):
        parse_request(b"\0secret\0\0")


def test_parse_request_non_utf8_username_is_misuse():
    with pytest.raises(Misuse, match="UTF-8"):
        parse_request(b"al\xffice\0secret\0\0")


@pytest.mark.parametrize("user", [b"al\tice", b"al\nice", b"al\x7fice", b"al\x01ice"])
def test_parse_request_control_character_in_username_is_misuse(user):
    with pytest.raises(Misuse, match="control character"):
        parse_request(user + b"\0secret\0\0")


def test_parse_request_non_utf8_password_is_none_not_an_error():
    creds = parse_request(b"alice\0se\xffcret\0\0")
    assert creds.username == "alice"
    assert creds.password is None
    assert creds.password_given is True


# --- environment -------------------------------------------------------------------------

DOVECOT_ENV = {
    "PROTO": "TCP",
    "SERVICE": "imap",
    "TCPREMOTEIP": "198.51.100.7",
    "REMOTE_IP": "198.51.100.7",
    "TCPLOCALIP": "192.0.2.1",
    "LOCAL_IP": "192.0.2.1",
    "TCPREMOTEPORT": "54321",
    "TCPLOCALPORT": "993",
    "ORIG_UID": "112",
    "AUTH_USER": "alice@example.com",
    "AUTH_RIP": "198.51.100.7",
    "AUTH_MECH": "PLAIN",
}


def _creds(password="secret"):
    return Credentials("alice@example.com", password, bool(password))


def test_read_environment_verify():
    req = read_environment(_creds(), DOVECOT_ENV)
    assert req.mode is Mode.VERIFY
    assert (req.username, req.password, req.service) == ("alice@example.com", "secret", "imap")
    assert (req.remote_ip, req.local_ip) == ("198.51.100.7", "192.0.2.1")
    assert (req.remote_port, req.local_port) == (54321, 993)
    assert req.master_user is None
    assert dict(req.passdb_fields) == {}  # AUTH_* and Dovecot's own variables are not fields


def test_read_environment_lookup():
    req = read_environment(_creds(""), {**DOVECOT_ENV, "AUTHORIZED": "1"})
    assert req.mode is Mode.LOOKUP
    assert req.password is None


def test_read_environment_credentials_lookup():
    env = {**DOVECOT_ENV, "AUTHORIZED": "1", "CREDENTIALS_LOOKUP": "1", "SCHEME": "CRAM-MD5"}
    req = read_environment(_creds(""), env)
    assert req.mode is Mode.CREDENTIALS_LOOKUP
    assert req.credentials_scheme == "CRAM-MD5"
    assert req.password is None


@pytest.mark.parametrize("scheme", [None, ""])
def test_read_environment_credentials_lookup_without_scheme_is_lookup(scheme):
    # doveadm auth lookup / passdb lookups: CREDENTIALS_LOOKUP=1 with no SCHEME want fields, not a hash
    env = {**DOVECOT_ENV, "AUTHORIZED": "1", "CREDENTIALS_LOOKUP": "1"}
    if scheme is not None:
        env["SCHEME"] = scheme
    req = read_environment(_creds(""), env)
    assert req.mode is Mode.LOOKUP
    assert req.credentials_scheme is None


def test_read_environment_authorized_other_than_1_is_verify():
    assert read_environment(_creds(), {**DOVECOT_ENV, "AUTHORIZED": "2"}).mode is Mode.VERIFY


@pytest.mark.parametrize("sent", ["IMAP", "Imap", "imap"])
def test_read_environment_service_in_lower_case(sent):
    """One service whatever case it was sent in: policies, the log and audit events compare it."""
    assert read_environment(_creds(), {**DOVECOT_ENV, "SERVICE": sent}).service == "imap"


def test_read_environment_remote_ip_fallback_and_missing():
    env = {"SERVICE": "smtp", "REMOTE_IP": "2001:db8::7", "LOCAL_IP": "::1"}
    req = read_environment(_creds(), env)
    assert (req.remote_ip, req.local_ip, req.service) == ("2001:db8::7", "::1", "smtp")
    bare = read_environment(_creds(), {})
    assert (bare.remote_ip, bare.local_ip, bare.remote_port, bare.service) == (None, None, None, "")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1), ("65535", 65535), ("0", None), ("65536", None), ("abc", None), ("-5", None), ("", None),
     ("¹", None), ("١٢٣", None)],  # Unicode digits: isdigit() says yes, int() says no (or another number)
)
def test_read_environment_ports(value, expected):
    req = read_environment(_creds(), {"TCPREMOTEPORT": value, "TCPLOCALPORT": value})
    assert req.remote_port == expected
    assert req.local_port == expected


def test_read_environment_master_user():
    req = read_environment(_creds(), {**DOVECOT_ENV, "MASTER_USER": "admin@example.com"})
    assert req.master_user == "admin@example.com"
    assert "master_user" not in req.passdb_fields


def test_read_environment_passdb_fields_lower_cased_and_filtered():
    env = {
        **DOVECOT_ENV,
        "USERDB_QUOTA_RULE": "*:storage=1G",
        "NOLOGIN": "1",
        "PATH": "/usr/bin",
        "HOME": "/root",
        "AUTH_SESSION": "x",
        "DOVECOT_APPAUTH_CONFIG": "/etc/x.toml",
        "LC_ALL": "C",
    }
    req = read_environment(_creds(), env)
    assert dict(req.passdb_fields) == {"userdb_quota_rule": "*:storage=1G", "nologin": "1"}


# --- fd 4 -------------------------------------------------------------------------------


@pytest.mark.parametrize(("char", "escaped"), sorted(ESCAPED.items()))
def test_tab_escape_each_byte(char, escaped):
    assert tab_escape(f"a{char}b") == f"a{escaped}b"
    assert tab_unescape(f"a{escaped}b") == f"a{char}b"


def test_tab_escape_escape_byte_first():
    # "\x01t" must not come back as TAB: the escape byte itself is escaped
    assert tab_escape("\x01t") == "\x011t"
    assert tab_unescape(tab_escape("\x01t")) == "\x01t"


@pytest.mark.parametrize("bad", ["\x01", "a\x01", "a\x01x"])
def test_tab_unescape_rejects_bad_escape(bad):
    with pytest.raises(ValueError, match="bad escape"):
        tab_unescape(bad)


@given(st.text(alphabet=st.sampled_from([*ESCAPED, "a", "t", "1", "0", "=", "é"]), max_size=40))
def test_tab_escape_round_trip(value):
    escaped = tab_escape(value)
    assert not any(ch in escaped for ch in "\t\n\r\0")
    assert tab_unescape(escaped) == value


def test_encode_reply_literal():
    data = encode_reply([("user", "alice"), ("k\x01", NASTY), ("nodelay", None)])
    assert data == b"user=alice\tk\x011=a\x011b\x01tc\x01nd\x01re\x010f\tnodelay\t"


def test_encode_reply_no_raw_lf_or_nul():
    data = encode_reply([(f"key{c}", f"value{c}") for c in ESCAPED])
    assert b"\n" not in data and b"\0" not in data and b"\r" not in data
    # one TAB per field, none inside
    assert data.count(b"\t") == len(ESCAPED)


@pytest.mark.parametrize("key", ["", "a=b"])
def test_encode_reply_rejects_bad_key(key):
    with pytest.raises(ValueError, match="invalid reply field name"):
        encode_reply([(key, "x")])


_field_text = st.text(alphabet=st.sampled_from([*ESCAPED, "a", "b", "t", "n", "1", "0", " ", "ü"]), max_size=20)
_fields = st.lists(
    st.tuples(_field_text.filter(lambda k: k != ""), st.one_of(st.none(), _field_text)),
    max_size=6,
)


@given(_fields)
@example([(NASTY, NASTY)])
@example([("userdb_mail", "maildir:~/Maildir"), ("nologin", None), ("reason", "")])
def test_encode_decode_reply_round_trip(fields):
    assert decode_reply(encode_reply(fields)) == fields


def test_decode_reply_as_checkpassword_reply_writes_it():
    # literal output of Dovecot 2.3.19's checkpassword-reply for FOO="a<TAB>b<LF>c<0x01>d"
    data = b"user=alice\tfoo=a\x01tb\x01nc\x011d\tuserdb_uid=0\tuserdb_gid=0\t"
    assert decode_reply(data) == [
        ("user", "alice"), ("foo", "a\tb\nc\x01d"), ("userdb_uid", "0"), ("userdb_gid", "0"),
    ]


# --- what an answer may carry (fast_path.answer_of checks serve's with these) ---------------


def test_utf8_ok():
    assert utf8_ok("") and utf8_ok("plain") and utf8_ok("zoë ✓ 𝄞")
    assert not utf8_ok("a\udc80") and not utf8_ok("\ud800b")


@pytest.mark.parametrize(("name", "ok"), [
    ("alice@example.com", True), ("Zoë@example.com", True), ("a b", True), ("", False), ("a\tb", False),
    ("a\nb", False), ("a\0b", False), ("a\x7fb", False), ("a\x1fb", False), ("a\udc80", False),
])
def test_username_ok_agrees_with_parse_request(name, ok):
    assert username_ok(name) is ok
    if name and utf8_ok(name):  # what fd 3 can carry: parse_request takes exactly the same names
        data = name.encode() + b"\0pw\0\0"
        if ok:
            assert parse_request(data).username == name
        else:
            with pytest.raises(Misuse):
                parse_request(data)


@pytest.mark.parametrize(("name", "ok"), [
    ("userdb_home", True), ("userdb_namespace/inbox/mailbox/Sent/autocreate", True), ("nopassword", True),
    ("userdb_zoë", True), ("", False), ("a=b", False), ("a b", False), ("a\tb", False), ("a\u00a0b", False),
    ("a\x7f", False), ("a\0", False), ("a\udc80", False),
])
def test_field_name_ok(name, ok):
    assert field_name_ok(name) is ok
    if ok:
        assert decode_reply(encode_reply([(name, "v")])) == [(name, "v")]
