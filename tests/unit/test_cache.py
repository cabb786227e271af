"""cache.py: the SQLite file of JSON entries, its modes, expiry, failures and concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dovecot_appauth.audit.cache import FILE_NAME, CacheUnavailable, IpCache, Negative, file_signature

NOW = 1_700_000_000.0


@pytest.fixture
def cache(tmp_path):
    c = IpCache(str(tmp_path / "cache"))
    yield c
    c.close()


def test_IpCache_put_get_roundtrip(cache):
    cache.put("rdns", "192.0.2.10", {"ptr": "host.example"}, 60, NOW)
    assert cache.get("rdns", "192.0.2.10", NOW + 1) == {"ptr": "host.example"}
    assert cache.get("rdns", "192.0.2.11", NOW + 1) is None
    assert cache.get("rdap", "192.0.2.10", NOW + 1) is None


def test_IpCache_ttl_expiry(cache):
    cache.put("rdns", "192.0.2.10", {"ptr": "a"}, 60, NOW)
    assert cache.get("rdns", "192.0.2.10", NOW + 59.9) == {"ptr": "a"}
    assert cache.get("rdns", "192.0.2.10", NOW + 60) is None


def test_IpCache_no_ttl_never_expires(cache):
    cache.put("maxmind", "192.0.2.10", {"sig": "1-2"}, None, NOW)
    assert cache.get("maxmind", "192.0.2.10", NOW + 10 * 365 * 86400) == {"sig": "1-2"}


def test_IpCache_negative_entry(cache):
    cache.put_failure("rdap", "192.0.2.10", "HTTP 429", 300, NOW)
    hit = cache.get("rdap", "192.0.2.10", NOW + 10)
    assert hit == Negative("failed", "HTTP 429", NOW)
    cache.put_failure("rdns", "192.0.2.10", "no answer", 300, NOW, status="timeout")
    assert cache.get("rdns", "192.0.2.10", NOW).status == "timeout"
    assert cache.get("rdap", "192.0.2.10", NOW + 300) is None
    # a later success replaces the negative entry
    cache.put("rdap", "192.0.2.10", {"facts": {}}, 60, NOW + 1)
    assert cache.get("rdap", "192.0.2.10", NOW + 2) == {"facts": {}}


def test_IpCache_get_many_one_query(cache):
    cache.put_many([("rdns", "ip", {"ptr": "x"}, 60, True), ("rdap", "ip", {"status": "timeout",
                    "detail": "d"}, 60, False)], NOW)
    got = cache.get_many([("rdns", "ip"), ("rdap", "ip"), ("maxmind", "ip")], NOW)
    assert got == {("rdns", "ip"): {"ptr": "x"}, ("rdap", "ip"): Negative("timeout", "d", NOW)}


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_IpCache_modes_are_umask_proof(tmp_path, umask):
    old = os.umask(umask)
    try:
        c = IpCache(str(tmp_path / "sub" / "cache"))
        c.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
        c.get("rdns", "ip", NOW)
        assert stat.S_IMODE(os.stat(c.directory).st_mode) == 0o700
        # the missing parent too: os.makedirs made it with the umask's mode (0777 under umask 0)
        assert stat.S_IMODE(os.stat(tmp_path / "sub").st_mode) == 0o700
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(c.path + suffix):
                assert stat.S_IMODE(os.stat(c.path + suffix).st_mode) == 0o600, suffix
        assert os.path.exists(c.path + "-wal")  # WAL mode is on
        c.close()
    finally:
        os.umask(old)


def test_IpCache_values_are_json_text_never_pickle(cache):
    cache.put("rdap", "203.0.113.66", {"facts": {"entities": ["A", "B"], "asn": 64500}}, 60, NOW)
    cache.put_failure("rdns", "203.0.113.66", "timeout", 60, NOW)
    cache.close()
    conn = sqlite3.connect(cache.path)
    rows = conn.execute("SELECT value, typeof(value) FROM entry").fetchall()
    conn.close()
    assert len(rows) == 2
    for value, kind in rows:
        assert kind == "text"
        assert isinstance(json.loads(value), dict)
    # Read through SQLite (which sees the WAL too), not searched as raw bytes: the database
    # and WAL files hold random salts and checksums, where two given bytes (a pickle header)
    # turn up by chance


def test_IpCache_corrupt_file_raises_CacheUnavailable(tmp_path):
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    (d / FILE_NAME).write_bytes(b"this is not an SQLite database, " * 200)
    c = IpCache(str(d))
    with pytest.raises(CacheUnavailable, match="not a database"):
        c.get("rdns", "ip", NOW)
    with pytest.raises(CacheUnavailable):
        c.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
    # purging everything is the repair
    assert c.purge() == -1
    c.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
    assert c.get("rdns", "ip", NOW) == {"ptr": "x"}
    c.close()


def test_IpCache_unusable_directory_raises_CacheUnavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    c = IpCache(str(blocker / "cache"))
    with pytest.raises(CacheUnavailable):
        c.get("rdns", "ip", NOW)


def test_IpCache_non_json_value_raises_CacheUnavailable(cache):
    cache.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
    cache.close()
    conn = sqlite3.connect(cache.path)
    with conn:
        conn.execute("UPDATE entry SET value = 'gASVAAAAAAAAAAB9lC4='")  # base64 pickle: refused
    conn.close()
    with pytest.raises(CacheUnavailable):
        cache.get("rdns", "ip", NOW)


def test_IpCache_stats(cache):
    cache.put("rdns", "a", {"ptr": "x"}, 60, NOW)
    cache.put("rdns", "b", {"ptr": "y"}, 10, NOW)
    cache.put_failure("rdap", "a", "429", 60, NOW)
    cache.put("maxmind", "a", {"sig": "s"}, None, NOW)
    s = cache.stats(NOW + 30)
    assert s["sources"] == {"rdns": {"entries": 1, "negative": 0}, "rdap": {"entries": 0, "negative": 1},
                            "maxmind": {"entries": 1, "negative": 0}}
    assert s["expired"] == 1
    assert s["bytes"] > 0 and s["path"] == cache.path


def test_IpCache_purge_ip_and_expired(cache):
    cache.put("rdns", "198.51.100.7", {"ptr": "x"}, 60, NOW)
    cache.put("rdap", "198.51.100.7", {"facts": {}}, 60, NOW)
    cache.put("rdns", "192.0.2.10", {"ptr": "y"}, 5, NOW)
    assert cache.purge("::ffff:198.51.100.7") == 2  # IPv4-mapped is the same address
    assert cache.get("rdns", "198.51.100.7", NOW) is None
    assert cache.purge(expired_before=NOW + 10) == 1
    assert cache.stats(NOW)["sources"] == {}
    cache.put("rdns", "a", {"ptr": "x"}, 60, NOW)
    assert cache.purge() == 1
    assert not os.path.exists(cache.path)


def test_IpCache_new_file_appears_ready_made(tmp_path):
    c = IpCache(str(tmp_path / "cache"))
    c.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
    c.close()
    assert os.listdir(c.directory) == [FILE_NAME]  # closed: no -wal/-shm, no private build file left
    conn = sqlite3.connect(c.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM entry").fetchone() == (1,)
    finally:
        conn.close()


def test_IpCache_first_read_makes_no_file_and_the_first_write_brings_its_rows(tmp_path):
    """A cold login: the read finds no file (a miss, no empty file made and synced), the
    write builds the file with its rows in it and links it into place, ready made."""
    c = IpCache(str(tmp_path / "cache"))
    assert c.get_many([("rdns", "ip"), ("maxmind", "ip")], NOW) == {}
    assert stat.S_IMODE(os.stat(c.directory).st_mode) == 0o700
    assert os.listdir(c.directory) == []
    c.put_many([("rdns", "ip", {"ptr": "x"}, 60, True), ("maxmind", "ip", {"sig": "s"}, None, True),
                ("rdap", "ip", {"status": "timeout", "detail": "d"}, 60, False)], NOW)
    assert os.listdir(c.directory) == [FILE_NAME]  # no connection left open, nothing half made
    assert stat.S_IMODE(os.stat(c.path).st_mode) == 0o600
    conn = sqlite3.connect(c.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    assert c.get_many([("rdns", "ip"), ("maxmind", "ip"), ("rdap", "ip")], NOW + 1) == {
        ("rdns", "ip"): {"ptr": "x"}, ("maxmind", "ip"): {"sig": "s"}, ("rdap", "ip"): Negative("timeout", "d", NOW)}
    c.close()


def test_IpCache_first_read_still_refuses_an_untrusted_directory(tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(CacheUnavailable, match="world-writable"):
        IpCache(str(d)).get_many([("rdns", "ip")], NOW)
    with pytest.raises(CacheUnavailable, match="world-writable"):
        IpCache(str(d)).put_many([("rdns", "ip", {"ptr": "x"}, 60, True)], NOW)
    assert os.listdir(d) == []


def test_IpCache_write_after_another_login_made_the_file(tmp_path):
    """Two cold logins: both read no file; the second to write finds the first one's file in
    place (its own private build loses the link) and adds its rows to it."""
    first, second = IpCache(str(tmp_path / "cache")), IpCache(str(tmp_path / "cache"))
    assert first.get_many([("rdns", "a")], NOW) == {} and second.get_many([("rdns", "b")], NOW) == {}
    first.put_many([("rdns", "a", {"ptr": "a"}, 60, True)], NOW)
    second.put_many([("rdns", "b", {"ptr": "b"}, 60, True)], NOW)
    second.close()
    assert first.get_many([("rdns", "a"), ("rdns", "b")], NOW) == {("rdns", "a"): {"ptr": "a"},
                                                                  ("rdns", "b"): {"ptr": "b"}}
    first.close()
    assert os.listdir(tmp_path / "cache") == [FILE_NAME]


def test_IpCache_without_hard_links_renames_the_file_into_place(tmp_path, monkeypatch):
    def no_links(src, dst, **kwargs):
        raise OSError(1, "Operation not permitted")  # what a file system without hard links says

    monkeypatch.setattr(os, "link", no_links)
    c = IpCache(str(tmp_path / "cache"))
    c.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
    assert c.get("rdns", "ip", NOW) == {"ptr": "x"}
    c.close()
    assert os.listdir(c.directory) == [FILE_NAME]
    assert stat.S_IMODE(os.stat(c.path).st_mode) == 0o600


def test_IpCache_empty_file_gets_its_table(tmp_path):
    # what an older version (or `touch`) leaves: an empty file is still a usable cache
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    (d / FILE_NAME).write_bytes(b"")
    c = IpCache(str(d))
    c.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
    assert c.get("rdns", "ip", NOW) == {"ptr": "x"}
    c.close()


def test_IpCache_purge_all_removes_half_made_files(tmp_path):
    c = IpCache(str(tmp_path / "cache"))
    c.put("rdns", "ip", {"ptr": "x"}, 60, NOW)
    leftover = c.path + ".new-4242-1"  # a login killed while building the file
    open(leftover, "wb").close()
    assert c.purge() == 1
    assert os.listdir(c.directory) == []


def test_file_signature_is_mtime_and_size(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"12345")
    st = os.stat(p)
    assert file_signature(str(p)) == f"{st.st_mtime_ns}-5"


_WORKER = r"""
import sys
from dovecot_appauth.audit.cache import IpCache
c = IpCache(sys.argv[1])
n = int(sys.argv[2])
for i in range(200):
    key = f"192.0.2.{i % 50}"
    c.put("rdns", key, {"ptr": f"w{n}-{i}"}, 60, 1000.0)
    hit = c.get("rdns", key, 1001.0)
    assert hit is not None and hit["ptr"].startswith("w"), hit
    c.close()  # a login opens and closes the file once each
print("ok")
"""


def test_IpCache_concurrent_processes(tmp_path):
    d = str(tmp_path / "cache")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, d, str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(8)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    assert IpCache(d).stats(1001.0)["sources"]["rdns"]["entries"] == 50


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=5))
def test_cache_json_encoder_writes_what_json_dumps_writes(value):
    from dovecot_appauth.cjson import dumps as _json_dumps

    assert _json_dumps(value) == json.dumps(value, separators=(",", ":"))


def test_cache_json_encoder_errors_are_json_dumps_errors():
    from dovecot_appauth.cjson import dumps as _json_dumps

    for bad in ({"a": {1, 2}}, {"a": object()}, {1j: 1}):
        with pytest.raises(TypeError) as ours:
            _json_dumps(bad)
        with pytest.raises(TypeError) as theirs:
            json.dumps(bad, separators=(",", ":"))
        assert str(ours.value) == str(theirs.value)
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        _json_dumps(circular)


def test_cache_write_imports_neither_json_nor_re(tmp_path):
    """A cold login writes its entries without `json` (which imports `re`)."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[2] / 'src')!r})\n"
        "from dovecot_appauth.audit.cache import IpCache\n"
        f"c = IpCache({str(tmp_path / 'cache')!r})\n"
        "assert c.get_many([('rdns', 'ip')], 1.0) == {}\n"
        "v = {'ptr': 'h\\u00e9st', 'n': [1, 2.5, None, True]}\n"
        "c.put_many([('rdns', 'ip', v, 60, True)], 1.0)\n"
        "assert c.get_many([('rdns', 'ip')], 1.0) == {('rdns', 'ip'): v}\n"
        "bad = {'json', 're'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True)


def test_IpCache_close_for_exit_leaves_a_short_wal_and_the_rows(tmp_path):
    """`close(exiting=True)` (the per-login program, store.close_for_exit): the connection is
    left to the exit, so the -wal and -shm stay for the next login instead of being
    checkpointed and removed; a plain close, the last one, removes them. Both keep the rows."""
    first = IpCache(str(tmp_path))
    first.put("rdns", "192.0.2.1", {"ptr": "a.example"}, None, 1000.0)
    first.close()
    wal = tmp_path / (FILE_NAME + "-wal")
    assert not wal.exists()
    second = IpCache(str(tmp_path))
    second.put("rdns", "192.0.2.2", {"ptr": "b.example"}, None, 1000.0)
    second.close(exiting=True)
    assert wal.exists()
    third = IpCache(str(tmp_path))
    assert third.get("rdns", "192.0.2.2", 1001.0) == {"ptr": "b.example"}
    assert third.get("rdns", "192.0.2.1", 1001.0) == {"ptr": "a.example"}
    third.close()
