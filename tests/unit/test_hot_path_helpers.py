"""The small replacements the per-login path uses instead of heavier stdlib modules (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dovecot_appauth.audit.cache import Negative
from dovecot_appauth.audit.lists import Entry
from dovecot_appauth.audit.sources import SourceUnavailable
from dovecot_appauth.audit.sources.rdns import system_nameservers
from dovecot_appauth.cjson import loads as _json_loads
from dovecot_appauth.config import AuditConfig, Config, Problem
from dovecot_appauth.core import Credentials, LoginRequest, Mode
from dovecot_appauth.dsn import parse_dsn

JSON_CASES = [
    '{"ptr":"dsl-7.pool.example.net"}', '{"a":1,"b":[1,2.5,"x\\u00e9",null,true,false],"c":{"d":-1e5}}',
    '{"a":NaN,"b":Infinity,"c":-Infinity}', " {\"a\": 1}\n", "[]", '"s"', "1",
]
JSON_BAD = ["", "{not json", '{"a":1}x', '{"a":1,}', "nul", "[1,", '"\\x"']


@pytest.mark.parametrize("text", JSON_CASES)
def test__json_loads_is_json_loads(text):
    assert repr(_json_loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", JSON_BAD)
def test__json_loads_raises_what_json_loads_raises(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        _json_loads(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)


def test__json_loads_error_in_a_fresh_process():
    """The C scanner can only raise its error once json.decoder is imported: never a SystemError."""
    code = ("import sys; from dovecot_appauth.cjson import loads as _json_loads\n"
            "assert 'json' not in sys.modules\n"
            "assert _json_loads('{\"a\":[1]}') == {'a': [1]} and 'json' not in sys.modules\n"
            "try:\n    _json_loads('{not json')\nexcept ValueError as e:\n    print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "JSONDecodeError"


def test_Value_equality_hash_and_repr_like_a_frozen_dataclass():
    a, b = Problem("f:1", "bad"), Problem("f:1", "bad")
    assert a == b and hash(a) == hash(b) and a != Problem("f:1", "bad", "warning")
    assert repr(a) == "Problem(where='f:1', message='bad', level='error')"
    assert Config() == Config() and AuditConfig(deadline=1.0) != AuditConfig()
    assert (Problem("x", "y") == ("x", "y", "error")) is False
    with pytest.raises(AttributeError):
        a.typo = 1  # __slots__: no new attributes


def test_Value_repr_hides_secrets():
    assert "hunter2" not in repr(Credentials("u", "hunter2", True))
    assert "hunter2" not in repr(LoginRequest("u", "hunter2", Mode.VERIFY, "imap"))
    assert "hunter2" not in repr(parse_dsn("mysql+pymysql://u:hunter2@db/x"))


def test_Entry_and_Negative_are_named_tuples():
    e = Entry("f", 3, "AS1", 1)
    assert e == ("f", 3, "AS1", 1, None) and (e.file, e.line, e.text, e.value, e.hint, e.where) == (
        "f", 3, "AS1", 1, None, "f:3")
    n = Negative("timeout", "d", 5.0)
    assert n == ("timeout", "d", 5.0) and (n.status, n.detail, n.stored) == ("timeout", "d", 5.0)
    assert repr(n) == "Negative(status='timeout', detail='d', stored=5.0)"


def test_system_nameservers_reads_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# c\n; c\nsearch example.com\nnameserver 192.0.2.53\nnameserver bogus\n"
                    "nameserver   2001:db8::53\noptions timeout:1\n")
    assert system_nameservers(str(conf)) == ["192.0.2.53", "2001:db8::53"]
    conf.write_text("search example.com\n")
    with pytest.raises(SourceUnavailable):
        system_nameservers(str(conf))
    with pytest.raises(SourceUnavailable):
        system_nameservers(str(tmp_path / "missing"))


def test_rdns_lookup_ignores_garbage_retries_truncated_over_tcp_and_follows_cnames():
    """What dnspython's resolver did for us before rdns.py moved the bytes itself."""
    import socket
    import struct
    import threading

    import dns.flags
    import dns.message
    import dns.rrset

    from dovecot_appauth.audit.sources import rdns
    from dovecot_appauth.config import DnsConfig

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen()

    def answer(query, truncated):
        r = dns.message.make_response(query)
        if truncated:
            r.flags |= dns.flags.TC
        else:  # an RFC 2317 delegation: CNAME, then the PTR
            target = "7.0-25.100.51.198.in-addr.arpa."
            r.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "CNAME", target))
            r.answer.append(dns.rrset.from_text(target, 60, "IN", "PTR", "tcp.example.net."))
        return r.to_wire()

    def serve_udp():
        data, source = udp.recvfrom(4096)
        query = dns.message.from_wire(data)
        udp.sendto(b"garbage", source)  # ignored
        other = dns.message.make_response(query)
        other.id ^= 1
        udp.sendto(other.to_wire(), source)  # an answer to some other query: ignored
        udp.sendto(answer(query, True), source)

    def serve_tcp():
        conn, _ = tcp.accept()
        with conn:
            (length,) = struct.unpack("!H", conn.recv(2))
            wire = answer(dns.message.from_wire(conn.recv(length)), False)
            conn.sendall(struct.pack("!H", len(wire)) + wire)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_udp, serve_tcp)]
    for t in threads:
        t.start()
    try:
        assert rdns.lookup("198.51.100.7", DnsConfig(resolvers=("127.0.0.1",), port=port), 2.0) == "tcp.example.net"
    finally:
        udp.close()
        tcp.close()


# --- the stdlib PTR exchange (sources/rdns.py) against dnspython's reading of the same bytes ---


_label = st.binary(min_size=1, max_size=20)


@given(labels=st.lists(_label, min_size=0, max_size=6))
def test_rdns_name_text_is_dnspythons(labels):
    """Names come out as dnspython's to_text(omit_final_dot=True) wrote them (the audit
    line, the cache and the lists saw that form), never with a control character, and
    with `<` and `>` escaped too, so that no name reads as "no PTR" (`<>`)."""
    import dns.name

    from dovecot_appauth.audit.sources.rdns import name_text

    text = name_text(tuple(labels))
    dnspythons = dns.name.Name([*labels, b""]).to_text(omit_final_dot=True)
    assert text == dnspythons.replace("<", "\\<").replace(">", "\\>")
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


@given(target=st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12), min_size=1,
                       max_size=4), via_cname=st.booleans(), other_first=st.booleans())
def test_rdns_parse_response_reads_dnspythons_answers(target, via_cname, other_first):
    """Responses written by dnspython (name compression, a CNAME step, an unrelated record
    first): the PTR found is the one the answer holds for the name asked."""
    import dns.message
    import dns.rrset

    from dovecot_appauth.audit.sources.rdns import name_text, parse_response, ptr_query, ptr_question

    qname = ptr_question("198.51.100.7")
    query = dns.message.from_wire(ptr_query(qname, 4242))
    response = dns.message.make_response(query)
    owner = query.question[0].name.to_text()
    ptr_name = ".".join(target) + "."
    if other_first:
        response.answer.append(dns.rrset.from_text("x.example.", 60, "IN", "PTR", "other.example."))
    if via_cname:
        alias = "7.0-25.100.51.198.in-addr.arpa."
        response.answer.append(dns.rrset.from_text(owner, 60, "IN", "CNAME", alias))
        owner = alias
    response.answer.append(dns.rrset.from_text(owner, 60, "IN", "PTR", ptr_name))
    answer = parse_response(response.to_wire(), 4242, qname)
    assert answer is not None and answer.rcode == 0 and not answer.truncated
    found = answer.first_ptr(qname)
    assert found is not None and name_text(found) == ptr_name[:-1]
    # not ours: another id, another question
    assert parse_response(response.to_wire(), 4243, qname) is None
    assert parse_response(response.to_wire(), 4242, ptr_question("198.51.100.8")) is None


@pytest.mark.parametrize("damage", ["self-pointer", "forward-pointer", "extended-label", "past-the-end"])
def test_rdns_parse_response_refuses_bad_names(damage):
    """A compression loop or a name past the end is a malformed datagram (ignored), never a hang."""
    import struct

    from dovecot_appauth.audit.sources.rdns import parse_response, ptr_query, ptr_question

    qname = ptr_question("198.51.100.7")
    query = ptr_query(qname, 7)
    head = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + query[12:]
    rdata_at = len(head) + 2 + 10
    name_bytes = {
        "self-pointer": struct.pack("!H", 0xC000 | rdata_at),
        "forward-pointer": struct.pack("!H", 0xC000 | (rdata_at + 4)) + b"\x00\x00",
        "extended-label": b"\x40abc\x00",
        "past-the-end": b"\x05ab",
    }[damage]
    record = b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 60, len(name_bytes)) + name_bytes
    assert parse_response(head + record, 7, qname) is None
    # the same record with a good name is read
    good = b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 60, 2) + b"\xc0\x0c"
    assert parse_response(head + good, 7, qname) is not None


# A store on a fresh `python -I -S` (as the launcher runs): the same statement twice, a
# write in a transaction, an error; then which of functools/_sqlite3 are loaded.
_STORE_SCRIPT = r"""
import sys
sys.path[:0] = {paths!r}
from dovecot_appauth import store
{patch}
s = store.open_store("sqlite:///" + {db!r}, 3)
for _ in range(2):
    assert s.conn.execute("SELECT count(*) FROM t WHERE a = ?", (1,)).fetchone() == (1,)
s._begin()
s.conn.execute("INSERT INTO t (a) VALUES (?)", (2,))
s.commit()
try:
    s.conn.execute("SELECT nope FROM t")
except s._errors as e:
    print("error", type(e).__name__, e)
fake = getattr(sys.modules.get("functools"), "__file__", None) is None
print("functools", "functools" in sys.modules, "stand-in" if "functools" in sys.modules and fake else "")
print("rows", s.conn.execute("SELECT a FROM t ORDER BY a").fetchall())
s.close()
"""


@pytest.mark.parametrize("stand_in", ["works", "refused"])
def test_sqlite_store_without_functools(tmp_path, stand_in):
    """store._sqlite_module: _sqlite3 imported without functools, and the stand-in gone after.
    `refused`: a Python whose _sqlite3 wants more of functools gets the plain import."""
    import sqlite3

    import dovecot_appauth

    db = tmp_path / "t.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (a INTEGER)")
        conn.execute("INSERT INTO t (a) VALUES (1)")
    conn.close()
    src = str(Path(dovecot_appauth.__file__).parents[1])
    patch = "store._FUNCTOOLS_STAND_IN = {}" if stand_in == "refused" else ""
    code = _STORE_SCRIPT.format(paths=[src], db=str(db), patch=patch)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "error OperationalError no such column: nope"
    # never the stand-in left behind; the real functools only when the stand-in was refused
    assert out[1] == ("functools True " if stand_in == "refused" else "functools False ")
    assert out[2] == "rows [(1,), (2,)]"


def test_per_login_program_runs_without_cyclic_gc():
    """entry.checkpassword turns the cyclic GC off before importing the program (and only
    the per-login program: importing entry does not)."""
    code = ("import gc, dovecot_appauth.entry as entry, dovecot_appauth.login as login\n"
            "print(gc.isenabled())\n"
            "login.main = lambda handover=None, cached=None, env=None: print(gc.isenabled())\n"
            "entry.checkpassword()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def _run_isolated(code: str, *path: str) -> str:
    """`code` in a fresh `python -I -S` with this checkout and site-packages on its path."""
    import subprocess
    import sys

    paths = [*path, *(p for p in sys.path if p)]
    prelude = f"import sys; sys.path[:0] = {paths!r}\n"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_maxmind_source_loads_maxminddbs_reader_without_its_package_init():
    """The per-login program's cold path: maxminddb's reader modules, not its __init__ (which
    imports importlib.metadata); the bare package it used is gone, so a later `import
    maxminddb` is the whole package, with the same classes."""
    out = _run_isolated(
        "import dovecot_appauth\ndovecot_appauth.per_login_process = True\n"
        "from dovecot_appauth.audit.sources import maxmind\n"
        "print('importlib.metadata' in sys.modules, 'maxminddb' in sys.modules, maxmind.MODE_MMAP)\n"
        "import maxminddb\n"
        "print(maxminddb.Reader is maxmind.Reader, maxminddb.InvalidDatabaseError is maxmind.InvalidDatabaseError,\n"
        "      callable(maxminddb.open_database))\n")
    assert out.split() == ["False", "False", str(int(__import__("maxminddb").MODE_MMAP)), "True", "True", "True"]
    # a process that has the package already takes it as it is; one that is not the
    # per-login program (serve, the CLI) imports the package the usual way
    out = _run_isolated("import maxminddb\nfrom dovecot_appauth.audit.sources import maxmind\n"
                        "print(maxmind.Reader is maxminddb.Reader)")
    assert out.split() == ["True"]
    out = _run_isolated("from dovecot_appauth.audit.sources import maxmind\nimport maxminddb.file\n"
                        "print('importlib.metadata' in sys.modules, maxmind.Reader is maxminddb.Reader)")
    assert out.split() == ["True", "True"]


def test_per_login_maxmind_lookup_imports_only_the_c_extension():
    """The per-login program's lookup: maxminddb's C extension (for a forked child), not the
    pure-Python reader's modules and what they import."""
    from tests.support.localservers import ASN_MMDB, CITY_MMDB

    out = _run_isolated(
        "import dovecot_appauth\ndovecot_appauth.per_login_process = True\n"
        "from dovecot_appauth.audit.sources import maxmind\n"
        f"facts, problems = maxmind.lookup_detailed('198.51.100.7', {str(CITY_MMDB)!r}, {str(ASN_MMDB)!r})\n"
        "print(facts.country.code, facts.asn, len(problems))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('maxminddb'))))\n"
        "print(*(m in sys.modules for m in ('typing', 'dataclasses', 'multiprocessing', 'importlib.metadata')))\n")
    assert out.splitlines() == ["DE 64501 0", "maxminddb.errors maxminddb.extension", "False False False False"]


def test_maxmind_source_imports_the_package_when_its_layout_is_another(tmp_path):
    """A maxminddb without the modules named (another version's layout): the usual import."""
    fake = tmp_path / "maxminddb"
    fake.mkdir()
    (fake / "__init__.py").write_text("Reader = 'package-reader'\nInvalidDatabaseError = ValueError\nMODE_MMAP = 7\n")
    (fake / "decoder.py").write_text("Decoder = 'package-decoder'\n")
    out = _run_isolated("import dovecot_appauth\ndovecot_appauth.per_login_process = True\n"
                        "from dovecot_appauth.audit.sources import maxmind\n"
                        "print(maxmind.Reader, maxmind.Decoder, maxmind.MODE_MMAP)", str(tmp_path))
    assert out.split() == ["package-reader", "package-decoder", "7"]


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_ptr_question_is_ipaddress_reverse_pointer(address):
    from dovecot_appauth.audit.sources.rdns import ptr_question

    expected = tuple(label.encode() for label in address.reverse_pointer.split("."))
    assert ptr_question(str(address)) == expected
    assert ptr_question(address.exploded) == expected


def test_ptr_question_of_a_zone_or_a_non_address_is_ipaddress_s():
    import ipaddress

    from dovecot_appauth.audit.sources.rdns import ptr_question

    zoned = "fe80::1%eth0"
    try:  # Python 3.11's reverse_pointer refuses a zone: whatever it does, we do the same
        expected = tuple(label.encode() for label in ipaddress.ip_address(zoned).reverse_pointer.split("."))
    except ValueError:
        with pytest.raises(ValueError):
            ptr_question(zoned)
    else:
        assert ptr_question(zoned) == expected
    for bad in ("198.51.100.256", "01.2.3.4", "", "example.com"):
        with pytest.raises(ValueError):
            ptr_question(bad)


def _finite_reference(text: str):
    def refuse(name: str) -> float:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("text", [t for t in JSON_CASES if "NaN" not in t])
def test_loads_finite_is_json_loads(text):
    from dovecot_appauth.cjson import loads_finite

    assert repr(loads_finite(text)) == repr(_finite_reference(text))


@pytest.mark.parametrize("text", [*JSON_BAD, '{"a":NaN}', "Infinity", '[1,-Infinity]'])
def test_loads_finite_raises_what_json_loads_raises(text):
    from dovecot_appauth.cjson import loads_finite

    with pytest.raises(ValueError) as ours:
        loads_finite(text)
    with pytest.raises(ValueError) as theirs:
        _finite_reference(text)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_fast_path_answer_that_is_not_json_in_a_fresh_process():
    """What the per-login program meets: serve's answer parsed before `json` was ever
    imported. A malformed body is a ValueError (the fast path's temporary failure), never
    the C scanner's SystemError."""
    code = ("import sys; from dovecot_appauth.fast_path import parse_answer\n"
            "assert 'json' not in sys.modules\n"
            "try:\n    parse_answer(b'HTTP/1.1 200 OK\\r\\ncontent-length: 9\\r\\n\\r\\n{not json')\n"
            "except ValueError as e:\n    print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ValueError"
