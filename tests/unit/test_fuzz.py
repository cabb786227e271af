"""Issue 6, part 1: fuzzing the parsers, the audit line, the sources' response handling and
the installed program with hypothesis.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default, about 20 s here) and ``long`` (more than
100,000 cases in all: ``scripts/fuzz.sh``). Each test scales its own ``max_examples`` from the
profile, so loading a profile here never changes the other test files' settings.
Properties are listed in docs/SECURITY.md.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dovecot_appauth import config as cfgmod
from dovecot_appauth import core
from dovecot_appauth.audit import facts, lists
from tests.support.common import wrong_password
from tests.support.hardening import (
    DOCUMENTED_STATUSES,
    GLOBAL_NETWORKS,
    HttpResponder,
    UdpResponder,
    dovecot_env,
    http_response,
    make_site,
    run_checkpassword,
)

settings.register_profile("ci", deadline=None, derandomize=False, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.register_profile("long", parent=settings.get_profile("ci"))
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    PROFILE = "ci"


def fuzz(ci: int, long: int) -> settings:
    """Settings for one test: ``ci`` examples in CI, ``long`` in the long run."""
    return settings(settings.get_profile(PROFILE), max_examples=ci if PROFILE == "ci" else long)


# Characters that break lines or fields somewhere: every C0, DEL, C1, the Unicode separators.
NASTY_CHARS = "".join(chr(c) for c in range(0x20)) + "\x7f\x85\xa0\u2028\u2029\ufeff<>=, \\%$\"'{}"
nasty_text = st.text(alphabet=st.sampled_from(NASTY_CHARS) | st.characters(), max_size=40)


# --- fd 3 --------------------------------------------------------------------------------

structured_request = st.builds(
    lambda parts, extra: b"\0".join(parts) + extra,
    st.lists(st.binary(max_size=60) | st.text(max_size=30).map(str.encode), min_size=1, max_size=5),
    st.sampled_from([b"", b"\0", b"\0\0", b"x"]),
)


@fuzz(400, 30_000)
@given(st.binary(max_size=600) | structured_request)
@example(b"u\0p\0\0")
@example(b"u" * 300 + b"\0" + b"p" * 209 + b"\0\0")  # 512 bytes: the limit
@example(b"u" * 300 + b"\0" + b"p" * 210 + b"\0\0")  # 513 bytes
def test_fd3_parser(data):
    try:
        creds = core.parse_request(data)
    except core.Misuse as e:
        assert "\n" not in str(e)  # one stderr line
        return
    assert len(data) <= core.MAX_REQUEST_LEN
    parts = data.split(b"\0")
    assert len(parts) == 4 and parts[3] == b""
    assert creds.username and creds.username.encode() == parts[0]
    assert not any(ord(c) < 0x20 or c == "\x7f" for c in creds.username)
    assert creds.password_given == bool(parts[1])
    if creds.password is None:
        with pytest.raises(UnicodeDecodeError):
            parts[1].decode("utf-8")
    else:
        assert creds.password.encode() == parts[1]


# --- environment -----------------------------------------------------------------------------

ENV_KEYS = ["PROTO", "SERVICE", "TCPREMOTEIP", "REMOTE_IP", "TCPLOCALIP", "LOCAL_IP", "TCPREMOTEPORT",
            "TCPLOCALPORT", "MASTER_USER", "AUTHORIZED", "CREDENTIALS_LOOKUP", "SCHEME", "USER", "HOME", "EXTRA",
            "AUTH_USER", "AUTH_RIP", "DOVECOT_APPAUTH_CONFIG", "LC_ALL", "NOLOGIN", "USERDB_UID"]
env_key = st.sampled_from(ENV_KEYS) | st.text(st.characters(blacklist_characters="\0=", codec="utf-8"),
                                                 min_size=1, max_size=20)
env_value = st.sampled_from(["1", "2", "", "0", "65535", "65536", "-1", "١٢", "x", "CRAM-MD5"]) | st.text(
    st.characters(blacklist_characters="\0", codec="utf-8"), max_size=40)


@fuzz(300, 15_000)
@given(st.dictionaries(env_key, env_value, max_size=12), st.booleans())
def test_environment_reader(env, with_password):
    creds = core.parse_request(b"alice@example.com\0" + (b"secret" if with_password else b"") + b"\0\0")
    req = core.read_environment(creds, env)
    assert req.username == "alice@example.com"
    assert isinstance(req.service, str)
    assert req.mode in set(core.Mode)
    if env.get("AUTHORIZED") == "1":
        assert req.mode is not core.Mode.VERIFY and req.password is None
    else:
        assert req.mode is core.Mode.VERIFY and req.password == ("secret" if with_password else "")
    for port in (req.remote_port, req.local_port):
        assert port is None or (isinstance(port, int) and 0 < port < 65536)
    assert req.remote_ip in (None, env.get("TCPREMOTEIP"), env.get("REMOTE_IP"))
    lowered = {k.lower() for k in env}
    for key, value in req.passdb_fields.items():
        assert key == key.lower() and key in lowered and isinstance(value, str)


# --- list files ------------------------------------------------------------------------------

LIST_PARSE_KINDS = sorted(set(cfgmod.LIST_KINDS) | set(cfgmod.ALLOW_KINDS))
# what str.splitlines() splits on besides "\n": excluded here, see the line-number test below
_SPLITLINES_EXTRA = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
list_tokens = st.sampled_from([
    "192.0.2.0/24", "192.0.2.1/24", "2001:db8::/32", "2001:db8::1/129", "fe80::1%eth0", "300.1.1.1", "0/0",
    "AS64500", "as1", "4294967296", "DE", "de", "D", "ÄÖ", "1850147", "١٢٣", "52.5,13.4,20", "91,0,1",
    "1,2,nan", "1,2,inf", "1,2,3,-1", ".*DoD.*", "host-\\d+\\.example", "(", "[z-a]", "a{2,1}", "\\",
    "ORG-1-TEST", "two words", "# comment", "#", "", " ", "\t",
])
list_line = st.lists(list_tokens | st.text(st.characters(blacklist_characters=_SPLITLINES_EXTRA + "\n"),
                                            max_size=15), max_size=4).map(" ".join)
list_text = st.lists(list_line, max_size=12).map("\n".join)


@pytest.mark.parametrize("kind", LIST_PARSE_KINDS)
@fuzz(40, 3_000)
@given(text=list_text | st.text(st.characters(blacklist_characters=_SPLITLINES_EXTRA), max_size=300),
       validate=st.booleans())
def test_list_parser(kind, text, validate):
    filename = "/etc/dovecot-appauth/lists/x.lst"
    entries, problems = lists.parse_list(kind, text, filename, validate_regex=validate)
    lines = text.split("\n")
    seen_error_lines = set()
    for p in problems:
        where = re.fullmatch(re.escape(filename) + r":(\d+)", p.where)
        assert where, p.where
        number = int(where.group(1))
        assert 1 <= number <= len(lines)
        assert p.level in ("error", "warning")
        assert "\n" not in p.message
        if p.level == "error":
            seen_error_lines.add(number)
    entry_lines = [e.line for e in entries]
    assert len(entry_lines) == len(set(entry_lines))  # one entry per line
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        is_entry = number in entry_lines
        if not line or line.startswith("#"):
            assert not is_entry and number not in seen_error_lines
        else:  # every other line is an entry or exactly one error
            assert is_entry != (number in seen_error_lines), (number, raw)
    for e in entries:
        assert e.file == filename
        json.dumps(e.value)  # the parsed form is plain JSON data (the lists cache)


def test_list_parser_line_numbers_follow_newlines_only():
    _, problems = lists.parse_list("ip_networks", "192.0.2.0/24 comment\x0cwith a form feed\n300.1.1.1\n", "f")
    assert [p.where for p in problems] == ["f:2"]


@pytest.mark.parametrize("pattern", ["host-\\d{4294967296}", "(" * 1200 + "a" + ")" * 1200])
def test_regex_list_line_that_cannot_compile_is_a_problem(pattern):
    entries, problems = lists.parse_list("reverse_hostname", f"ok\\.example\n{pattern}\n", "f", validate_regex=True)
    assert len(entries) == 1 and [p.where for p in problems] == ["f:2"]


# --- config --------------------------------------------------------------------------------

SECTION_KEYS = {
    "database": ["dsn", "connect_timeout"],
    "auth": ["disallow_passwords_from", "hash_scheme", "sha512_rounds", "dedup_window", "password_length",
             "password_chunk"],
    "userdb": ["uid", "gid", "home", "mail", "extra"],
    "audit": ["enabled", "audit_only", "disabled_services", "audit_result_success", "log_local",
              "local_networks", "ignore_networks", "global_networks", "deadline", "syslog_socket", "journal",
              "log_file", "maxmind", "dns", "rdap", "cache", "lists", "allow"],
}
SUB_KEYS = ["city", "asn", "enabled", "resolvers", "port", "timeout", "servers", "bootstrap_url", "path",
            "rdns_ttl", "negative_ttl", "ip_networks", "as_numbers", "countries", "users", "reverse_hostname"]
scalar = (st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=20)
          | st.sampled_from(["sqlite:///x", "mysql+pymysql://u:p@h/db", "192.0.2.0/24", "nan", "ok", "unkown",
                             "bcrypt", "yes", "::1/128", "not-a-net"]))
toml_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.sampled_from(SUB_KEYS) | st.text(max_size=8), inner, max_size=4),
                          max_leaves=12)
config_dict = st.fixed_dictionaries({}, optional={
    section: st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), toml_value, max_size=6)
    for section, keys in SECTION_KEYS.items()
}) | st.dictionaries(st.text(max_size=8), toml_value, max_size=3)


def _numbers(obj, path=""):
    """Every int/float attribute reachable in a Config (dataclass or plain class)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
        return
    attrs = getattr(obj, "__dict__", None) or {s: getattr(obj, s) for s in getattr(obj, "__slots__", ())}
    for k, v in attrs.items():
        if not k.startswith("_") and k != "problems":
            yield from _numbers(v, f"{path}.{k}")


def _check_config_result(load):
    try:
        config = load()
    except cfgmod.ConfigError as e:
        assert e.problems and all(p.level in ("error", "warning") for p in e.problems)
        return None
    assert isinstance(config, cfgmod.Config)
    return config


@fuzz(300, 10_000)
@given(config_dict)
def test_config_parse_arbitrary_dicts(data):
    config = _check_config_result(lambda: cfgmod.parse(data, "/etc/x/config.toml"))
    if config is not None:
        assert config.database.connect_timeout >= 0.1
        assert config.audit.deadline >= 0.05


@fuzz(100, 2_000)
@given(section_key=st.sampled_from([("database", "connect_timeout"), ("auth", "dedup_window"),
                                    ("audit", "deadline"), ("audit.dns", "timeout"), ("audit.rdap", "timeout"),
                                    ("audit.cache", "negative_ttl")]),
       value=st.sampled_from([math.inf, math.nan]))
@example(section_key=("auth", "dedup_window"), value=math.inf)
def test_config_numbers_are_finite(section_key, value):
    section, key = section_key
    data: dict = {}
    table = data
    for part in section.split("."):
        table = table.setdefault(part, {})
    table[key] = value
    config = _check_config_result(lambda: cfgmod.parse(data))
    if config is not None:
        for where, number in _numbers(config):
            assert math.isfinite(number), where


toml_line = st.sampled_from([
    "[database]", "[auth]", "[audit]", "[audit.dns]", "[audit.lists]", "[userdb.extra]", "[[audit]]", "[audit",
    'dsn = "sqlite:///x"', "connect_timeout = 0.2", "deadline = -1", "deadline = 1e400", "x = nan", "x = inf",
    'hash_scheme = "md5"', "enabled = yes", "ip_networks = 5", 'disallow_passwords_from = ["300.1.1.1/8"]',
    "dedup_window = 1979-05-27T07:32:00Z", "a.b.c = 1", '"quoted key" = 1', "k = '''", "= 1", "key = \"\\u0000\"",
]) | st.text(max_size=30)


@fuzz(150, 5_000)
@given(st.lists(toml_line, max_size=12).map("\n".join) | st.binary(max_size=200).map(
    lambda b: b.decode("latin-1")))
def test_config_load_arbitrary_text(tmp_path_factory, text):
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "config.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check_config_result(lambda: cfgmod.load(str(path)))


# --- IpFacts JSON (what the cache holds) -----------------------------------------------------

json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=10)
geo_json = st.fixed_dictionaries({"geoname_id": st.none() | st.integers(0, 2**31), "name": st.none() | nasty_text,
                                  "code": st.none() | nasty_text})
as_number = st.integers(1, 2**32 - 1)  # facts.as_number: AS0 and numbers past 32 bits are none
maxmind_json = st.fixed_dictionaries({
    "city": geo_json, "subdivisions": st.lists(geo_json, max_size=3), "country": geo_json, "continent": geo_json,
    "registered_country": geo_json, "represented_country": geo_json,
    "latitude": st.none() | st.floats(-90, 90), "longitude": st.none() | st.floats(-180, 180),
    "accuracy_radius_km": st.none() | st.integers(0, 20000), "postal_code": st.none() | nasty_text,
    "asn": st.none() | as_number, "as_org": st.none() | nasty_text,
}, optional={"unavailable": st.lists(st.sampled_from(facts.MAXMIND_PARTS), min_size=1, max_size=2, unique=True)})
whois_json = st.fixed_dictionaries({
    "asn": st.none() | as_number, "as_cc": st.none() | nasty_text, "as_desc": st.none() | nasty_text,
    "net_name": st.none() | nasty_text, "net_cc": st.none() | nasty_text,
    "entities": st.lists(nasty_text, max_size=40),
})
report_json = st.fixed_dictionaries({"status": st.sampled_from([s.value for s in facts.SourceStatus]),
                                     "elapsed_ms": st.floats(0, 1e6), "detail": nasty_text})
facts_json = st.fixed_dictionaries({
    "ip": st.sampled_from(["198.51.100.7", "2001:db8::25", "203.0.113.9"]),
    "rdns": st.none() | st.just("<>") | nasty_text, "maxmind": st.none() | maxmind_json,
    "whois": st.none() | whois_json,
    "sources": st.dictionaries(st.sampled_from(["rdns", "maxmind", "rdap"]), report_json, max_size=3),
})
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


def _canonical(f) -> str:
    return json.dumps(f.to_json(), sort_keys=True, default=str)


@fuzz(300, 10_000)
@given(facts_json)
def test_ipfacts_json_round_trip(data):
    """Well-typed facts survive the cache's JSON round trip unchanged."""
    first = facts.IpFacts.from_json(json.loads(json.dumps(data)))
    again = facts.IpFacts.from_json(json.loads(json.dumps(first.to_json())))
    assert _canonical(first) == _canonical(again)
    assert again.asns == first.asns
    assert again.trusted_asns == first.trusted_asns
    if first.maxmind is not None:
        assert again.maxmind.unavailable == tuple(data["maxmind"].get("unavailable", ()))


@fuzz(300, 10_000)
@given(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=30)
       | st.text("AaSs0123456789+-_ \u0660\uff10", max_size=25)
       | st.integers(-5, 2**40).map(lambda n: f"AS{n}"))
def test_as_number_is_a_4_byte_as_number_or_none(value):
    """Whatever RDAP, a damaged file or a cache row holds: an int SQLite can store, or None."""
    number = facts.as_number(value)
    assert number is None or (type(number) is int and 0 < number < 2**32)
    if number is not None and isinstance(value, str):
        digits = value.strip().upper().removeprefix("AS")
        assert digits.isascii() and digits.isdigit() and int(digits) == number


@fuzz(300, 10_000)
@given(st.lists(st.binary(min_size=1, max_size=63), max_size=4))
def test_no_ptr_name_reads_as_no_ptr(labels):
    """No PTR name a reverse zone holds prints as NO_PTR ("<>") or with a bare < or >."""
    from dovecot_appauth.audit.sources.rdns import name_text

    text = name_text(tuple(labels))
    assert text != facts.NO_PTR
    assert not re.search(r"(?<!\\)[<>]", text.replace("\\\\", ""))


@fuzz(300, 10_000)
@given(json_value | st.fixed_dictionaries({"ip": json_value}, optional={
    "rdns": json_value, "maxmind": json_value, "whois": json_value, "sources": json_value}))
def test_ipfacts_from_arbitrary_json(data):
    """Garbage raises a shape error (the cache treats it as a miss); what loads can be logged."""
    from dovecot_appauth.audit.line import format_line, journal_fields

    try:
        f = facts.IpFacts.from_json(data)
    except SHAPE_ERRORS:
        return
    json.dumps(f.to_json(), default=str)
    line = format_line("u", "imap", "198.51.100.7", f, None)
    assert len(line.splitlines()) == 1
    journal_fields("u", "imap", "198.51.100.7", f, None)


# --- the audit line --------------------------------------------------------------------------

_FIELD = re.compile(r"(\w+)=(<[^<>]*>|[^ ,<>=]*)")
LINE_KEYS = {"user", "service", "ip", "host", "asn", "as_cc", "as_desc", "as_org", "net_name", "net_cc", "entity",
             "city", "subdivision", "country", "represented_country", "registered_country", "lat", "lon", "rad",
             "result", "reason"}


def _fields(line: str) -> list[tuple[str, str]]:
    """Parse `k=v, k=<v>, ...` strictly; AssertionError if the line does not parse."""
    out, pos = [], 0
    while pos < len(line):
        if out:
            assert line.startswith(", ", pos), line[pos:pos + 40]
            pos += 2
        m = _FIELD.match(line, pos)
        assert m, line[pos:pos + 40]
        out.append((m.group(1), m.group(2)))
        pos = m.end()
        if out[-1][0] == "rad" and line.startswith("km", pos):  # rad=20km: "km" is outside the value
            pos += 2
    return out


@fuzz(300, 10_000)
@given(user=nasty_text.filter(bool), service=nasty_text, ip=st.sampled_from(["198.51.100.7", "2001:db8::25"])
       | nasty_text, data=facts_json, disabled=st.booleans(), audit_only=st.booleans())
def test_audit_line_never_breaks_or_forges(user, service, ip, data, disabled, audit_only):
    from dovecot_appauth.audit import rules
    from dovecot_appauth.audit.line import MAX_LINE_CHARS, format_line, journal_fields

    config = cfgmod.parse({"audit": {"disabled_services": [service] if disabled else [], "audit_only": audit_only,
                                     "global_networks": GLOBAL_NETWORKS, "cache": {"enabled": False}}})
    f = facts.IpFacts.from_json(data)
    verdict = rules.evaluate(user, service, ip, f, lists.load_lists(config), config.audit)
    line = format_line(user, service, ip, f, verdict)
    assert len(line) <= MAX_LINE_CHARS
    bad = [c for c in line if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"]
    assert not bad and len(line.splitlines()) == 1
    tail = re.search(r", result=([a-z-]+), reason=<([^<>]*)>\Z", line)
    assert tail and tail.group(1) == verdict.result
    if len(line) < MAX_LINE_CHARS - 300:  # not truncated: the whole line parses, no forged field
        keys = [k for k, _ in _fields(line)]
        assert set(keys) <= LINE_KEYS and keys[0] == "user" and keys[-2:] == ["result", "reason"]
        assert keys.count("result") == 1 and keys.count("user") == 1
    for value in journal_fields(user, service, ip, f, verdict).values():
        assert not any(ord(c) < 0x20 or c in "\x7f\u2028\u2029" for c in value)


# --- DNS responses ---------------------------------------------------------------------------

DNS_TIMEOUT = 0.15


def _dns_reply(query: bytes, mode: str, payload: bytes, ancount: int, flags: int) -> bytes:
    if mode == "raw":
        return payload
    if mode == "id":
        return query[:2] + payload
    # a header that answers this query, the question copied, then garbage "answers"
    question = query[12:]
    return query[:2] + struct.pack(">HHHHH", flags, 1, ancount, 0, 0) + question + payload


@pytest.fixture(scope="module")
def dns_responder():
    state = {"reply": lambda q: None}
    with UdpResponder(lambda q: state["reply"](q)) as server:
        server.state = state
        yield server


@fuzz(25, 1_500)
@given(mode=st.sampled_from(["raw", "id", "answer", "answer", "answer"]), payload=st.binary(max_size=300),
       ancount=st.integers(0, 65535), flags=st.sampled_from([0x8180, 0x8183, 0x8182, 0x8380, 0x8580, 0xFFFF]),
       copies=st.integers(1, 3))
def test_dns_garbage_answers(dns_responder, mode, payload, ancount, flags, copies):
    from dovecot_appauth.audit.sources import SourceUnavailable, rdns

    dns_responder.state["reply"] = lambda q: [_dns_reply(q, mode, payload, ancount, flags)] * copies
    cfg = cfgmod.parse({"audit": {"dns": {"resolvers": ["127.0.0.1"], "port": dns_responder.port,
                                          "timeout": DNS_TIMEOUT}}}).audit.dns
    start = time.monotonic()
    try:
        name = rdns.lookup("198.51.100.7", cfg, DNS_TIMEOUT)
    except (TimeoutError, rdns.RdnsError, SourceUnavailable):
        name = None
    elapsed = time.monotonic() - start
    assert elapsed < DNS_TIMEOUT + 1.5, elapsed  # slack for a loaded machine; a retry loop would be far longer
    if name is not None:
        assert (isinstance(name, str) and not name.endswith(".")) or name == "."
        assert not any(ord(c) < 0x20 for c in name)


# --- RDAP responses --------------------------------------------------------------------------

RDAP_TIMEOUT = 0.5
rdap_member = st.sampled_from(["name", "country", "entities", "remarks", "arin_originas0_originautnums",
                               "originAutnums", "handle", "services", "description", "title", "roles"])
rdap_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["AS64500", "64500", "1-2", "x-y", "http://127.0.0.1:1/"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(rdap_member | st.text(max_size=4), inner, max_size=4),
    max_leaves=15)
rdap_body = (rdap_json.map(lambda v: json.dumps(v).encode())
             | st.dictionaries(rdap_member, rdap_json, max_size=6).map(lambda v: json.dumps(v).encode())
             | st.binary(max_size=200)
             | st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"entities":' * 3000 + b"1" + b"}" * 3000,
                                b"{" + b" " * 70_000 + b"}"]))
rdap_reply = st.tuples(st.sampled_from([200, 200, 200, 404, 429, 500, 302]), rdap_body,
                       st.sampled_from(["application/rdap+json", "text/html"]), st.sampled_from([None, 0, 10**6]))


@pytest.fixture(scope="module")
def rdap_responder():
    state = {"reply": (200, b"{}", "application/rdap+json", None)}

    def respond(path: str) -> bytes:
        status, body, ctype, length = state["reply"]
        return http_response(body, status, ctype, length)

    with HttpResponder(respond) as server:
        server.state = state
        yield server


def _rdap_config(responder, bootstrap: bool):
    table = {"enabled": True, "timeout": RDAP_TIMEOUT}
    table.update({"servers": [], "bootstrap_url": responder.url} if bootstrap else {"servers": [responder.url]})
    return cfgmod.parse({"audit": {"rdap": table}}).audit.rdap


def _check_whois(w):
    assert w.asn is None or (type(w.asn) is int and 0 < w.asn < 2**32)
    for v in (w.as_cc, w.as_desc, w.net_name, w.net_cc):
        assert v is None or isinstance(v, str)
    assert isinstance(w.entities, tuple) and all(isinstance(e, str) for e in w.entities)


@fuzz(40, 2_000)
@given(reply=rdap_reply, bootstrap=st.booleans())
def test_rdap_garbage_login_contained(rdap_responder, reply, bootstrap):
    """What a login sees: enrich() never raises, reports rdap, and stays within its deadline."""
    from dovecot_appauth.audit.enrich import enrich

    rdap_responder.state["reply"] = reply
    rdap_cfg = _rdap_config(rdap_responder, bootstrap)
    config = cfgmod.parse({"audit": {"deadline": RDAP_TIMEOUT, "dns": {"enabled": False},
                                     "cache": {"enabled": False},
                                     "rdap": {"enabled": True, "timeout": RDAP_TIMEOUT,
                                              "servers": list(rdap_cfg.servers),
                                              "bootstrap_url": rdap_cfg.bootstrap_url}}})
    start = time.monotonic()
    err = io.StringIO()
    f = enrich("198.51.100.7", config, now=time.time(), stderr=err)
    assert time.monotonic() - start < RDAP_TIMEOUT + 1.5
    assert err.getvalue().count("\n") <= 1
    report = f.sources["rdap"]
    assert str(report.status) in ("fetched", "failed", "timeout")
    assert "\n" not in report.detail
    if f.whois is not None:
        _check_whois(f.whois)


@fuzz(40, 2_000)
@given(reply=rdap_reply, bootstrap=st.booleans())
@example(reply=(200, b'{"name": "N", "remarks": 5}', "application/rdap+json", None), bootstrap=False)
def test_rdap_garbage_documented_errors(rdap_responder, reply, bootstrap):
    from dovecot_appauth.audit.sources import rdap

    rdap_responder.state["reply"] = reply
    start = time.monotonic()
    try:
        w = rdap.lookup("198.51.100.7", _rdap_config(rdap_responder, bootstrap), RDAP_TIMEOUT, asn_hint=64500)
    except (TimeoutError, rdap.RdapError):
        pass
    else:
        _check_whois(w)
    assert time.monotonic() - start < RDAP_TIMEOUT + 1.5


# --- MaxMind files ---------------------------------------------------------------------------

CITY_MMDB = Path(__file__).parents[1] / "data" / "mmdb" / "AppAuth-Test-City.mmdb"


@fuzz(20, 1_000)
@given(cut=st.integers(0, 4000))
@example(cut=2932)  # 4 bytes short: the pure-Python decoder used to answer (see sources/maxmind.py)
def test_maxmind_truncated_file(tmp_path_factory, cut):
    from dovecot_appauth.audit.sources import SourceUnavailable, maxmind

    data = CITY_MMDB.read_bytes()
    assume(cut < len(data))
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "city.mmdb"
    path.write_bytes(data[:cut])
    for ip in ("198.51.100.7", "2001:db8::25"):
        with pytest.raises(SourceUnavailable):
            maxmind.lookup(ip, str(path), None)


MMDB_FILES = sorted((Path(__file__).parents[1] / "data" / "mmdb").glob("*.mmdb"))

# Which truncations of a .mmdb does libmaxminddb (the C extension) open? In a child process:
# the extension can crash on a damaged file.
_C_EXTENSION_OPENS = """
import sys, maxminddb
data = open(sys.argv[1], "rb").read()
opened = []
for cut in range(len(data) + 1):
    path = sys.argv[2]
    with open(path, "wb") as f:
        f.write(data[:cut])
    try:
        maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT).close()
    except (maxminddb.InvalidDatabaseError, ValueError, OSError):
        continue
    opened.append(cut)
print(" ".join(map(str, opened)))
"""


@pytest.mark.parametrize("mmdb", MMDB_FILES, ids=lambda p: p.name)
def test_maxmind_every_truncation_is_unavailable_as_libmaxminddb_says(tmp_path, mmdb):
    """Every cut of the test files (not a sample): our source answers only for the whole file,
    and the C extension opens exactly the same (the whole file only). The metadata section
    ends the file, so any truncation loses part of it (MaxMind DB spec 2.0)."""
    import subprocess
    import sys

    from dovecot_appauth.audit.sources import SourceUnavailable, maxmind

    data = mmdb.read_bytes()
    path = tmp_path / "cut.mmdb"
    answered = []
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        city, asn = (str(path), None) if "City" in mmdb.name else (None, str(path))
        try:
            maxmind.lookup("198.51.100.7", city, asn)
        except SourceUnavailable:
            continue
        answered.append(cut)
    assert answered == [len(data)]
    try:
        import maxminddb.extension  # noqa: F401
    except ImportError:
        pytest.skip("maxminddb's C extension is not built here: nothing to compare with")
    child = subprocess.run([sys.executable, "-c", _C_EXTENSION_OPENS, str(mmdb), str(tmp_path / "c.mmdb")],
                           capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode == 0, child.stderr
    assert [int(cut) for cut in child.stdout.split()] == answered


# Byte flips inside a .mmdb can crash maxminddb's C extension (SIGSEGV): that fuzzing runs in
# a child process, see test_faults.py::test_maxmind_corrupt_byte_does_not_crash_the_login.


# --- the program -----------------------------------------------------------------------------

REAL_USER = "fuzz@example.com"


@pytest.fixture(scope="module")
def fuzz_site():
    site = make_site(prefix="appauth-fuzz-")
    site.add_password("real", REAL_USER, "Real-Pass-1234-abcd")
    site.add_password("other", "other@example.com")
    site.add_password("old", REAL_USER, "Old1-Old2-Old3-Old4", revoked=True)
    (site.dir / "lists" / "ip.lst").write_text("203.0.113.0/24\n")
    plain = site.write()
    audited = site.write("audited.toml",
                         audit={"enabled": True, "syslog_socket": "", "global_networks": GLOBAL_NETWORKS},
                         audit__dns={"enabled": False},
                         audit__lists={"ip_networks": str(site.dir / "lists" / "ip.lst")})
    site.configs = {"plain": plain, "audited": audited}
    yield site
    site.remove()


password_mutation = st.one_of(
    st.binary(max_size=80),
    st.just(b"Real-Pass-1234-abcd").flatmap(lambda p: st.sampled_from([
        p[:-1], p + b"x", p.upper(), p.lower(), b" " + p, p + b" ", wrong_password(p), p.replace(b"-", b""),
        p + b"\xff", p + b"\0", b"Old1-Old2-Old3-Old4", b""])),
)
user_mutation = st.sampled_from([REAL_USER.encode(), REAL_USER.upper().encode(), b"other@example.com",
                                 b"nobody@example.com", b"fuzz@example.co", b"fuzz%", b"fuzz_@example.com",
                                 b"f\xc3\xbczz@example.com", b"fuzz@example.com ", b"*"]) | st.binary(max_size=60)


@fuzz(60, 1_500)
@given(user=user_mutation, password=password_mutation, tail=st.sampled_from([b"\0\0", b"\0\0", b"\0x\0", b"\0"]),
       which=st.sampled_from(["plain", "audited"]),
       ip=st.sampled_from(["198.51.100.7", "203.0.113.9", "::ffff:203.0.113.9", "10.0.0.1", "", "garbage",
                           "2001:db8::25"]),
       service=st.sampled_from(["imap", "pop3", "smtp", "", "x y"]), authorized=st.sampled_from([None, None, "1", "2"]))
def test_program_never_lets_a_wrong_password_in(fuzz_site, user, password, tail, which, ip, service, authorized):
    request = (user + b"\0" + password + tail)[:600]
    env = dovecot_env(ip=ip or None, service=service)
    if authorized:
        env["AUTHORIZED"] = authorized
    run = run_checkpassword(fuzz_site.configs[which], request, env=env)
    assert "Traceback" not in run.stderr
    assert run.status in DOCUMENTED_STATUSES, (run.status, run.stderr)
    for secret in fuzz_site.secrets:
        assert secret not in run.stderr
    assert len(run.lines) <= 2
    if run.status == 0:
        assert request == REAL_USER.encode() + b"\0Real-Pass-1234-abcd\0\0" or (
            request.split(b"\0")[0].decode().lower() == REAL_USER and request.split(b"\0")[1] == b"Real-Pass-1234-abcd"
            and request.endswith(b"\0\0") and request.count(b"\0") == 3)
        assert authorized != "1"
        assert not (which == "audited" and "203.0.113" in ip)  # the deny list holds
        assert run.reply.startswith(b"user=fuzz@example.com\t")
