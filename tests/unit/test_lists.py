"""List files (lists.py): formats of shared/LISTS.md, problems with file:line, the cache."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dovecot_appauth.audit.lists import PARSERS, check_lists, load_file, load_lists, parse_asn, parse_list
from dovecot_appauth.audit.patterns import regex_fullmatch, required_literal
from dovecot_appauth.config import ALLOW_KINDS, LIST_KINDS, AuditConfig, CacheConfig, Config, UserAllow

CONF_LISTS = Path(__file__).parents[2] / "conf" / "lists"
UPSTREAM_NAMES = {
    "ip_networks": "ip_net.deny.lst",
    "reverse_hostname": "rev_host.deny.lst",
    "network_name": "net_name.deny.lst",
    "network_cc": "net_cc.deny.lst",
    "entities": "entity.deny.lst",
    "as_numbers": "asn.deny.lst",
    "as_names": "as_dscr.deny.lst",
    "as_cc": "as_cc.deny.lst",
    "geo_location_ids": "maxmind/geo_loc.deny.lst",
    "coordinates": "maxmind/coords.deny.lst",
}
ALLOW_NAMES = {
    "ip_networks": "allow/ip_net.allow.lst",
    "as_numbers": "allow/asn.allow.lst",
    "countries": "allow/cc.allow.lst",
}


def values(kind: str, text: str) -> list:
    entries, problems = parse_list(kind, text, "t.lst")
    assert not [p for p in problems if p.level == "error"], problems
    return [e.value for e in entries]


def test_parse_list_ip_networks():
    text = (
        "# comment\n\n192.0.2.0/24   TEST-NET-1 comment\n2001:db8::/32\n198.51.100.7\n  203.0.113.0/25\t x\n"
    )
    entries, problems = parse_list("ip_networks", text, "ip.lst")
    assert problems == []
    assert [(e.line, e.text) for e in entries] == [
        (3, "192.0.2.0/24"),
        (4, "2001:db8::/32"),
        (5, "198.51.100.7"),
        (6, "203.0.113.0/25"),
    ]
    assert entries[0].value == (4, 0xC0000200, 24)
    assert entries[1].value == (6, 0x20010DB8 << 96, 32)
    assert entries[2].value == (4, 0xC6336407, 32)
    assert entries[0].where == "ip.lst:3"


def test_parse_list_host_bits_masked_with_warning():
    entries, problems = parse_list("ip_networks", "176.112.170.0/21\n2001:db8::1/64\n", "ip.lst")
    assert entries[0].value == (4, (176 << 24) | (112 << 16) | (168 << 8), 21)
    assert entries[1].value == (6, 0x20010DB8 << 96, 64)
    assert [(p.where, p.level) for p in problems] == [("ip.lst:1", "warning"), ("ip.lst:2", "warning")]
    assert "used as 176.112.168.0/21" in problems[0].message
    assert "used as 2001:db8::/64" in problems[1].message


@pytest.mark.parametrize(
    "bad",
    [
        "192.0.2.0/33",
        "192.0.2/24",
        "300.1.1.1/8",
        "010.0.0.0/8",
        "example.net",
        "2001:db8::/129",
        "192.0.2.0/-1",
        "fe80::1%eth0/64",
        "192.0.2.0/ 24",
    ],
)
def test_parse_list_ip_networks_bad_lines(bad):
    entries, problems = parse_list("ip_networks", f"192.0.2.0/24\n{bad}\n198.51.100.0/24\n", "ip.lst")
    assert [e.line for e in entries] == [1, 3]
    assert [(p.where, p.level) for p in problems] == [("ip.lst:2", "error")]


def test_parse_list_as_numbers():
    assert values("as_numbers", "AS3209\n3209\nas64500 documentation\nAS36492  GOOGLEWIFI, US\n") == [
        3209,
        3209,
        64500,
        36492,
    ]
    assert parse_asn("AS4294967295") == 4294967295
    entries, problems = parse_list("as_numbers", "AS\nASX1\n-5\nAS4294967296\n", "asn.lst")
    assert entries == [] and [p.where for p in problems] == [f"asn.lst:{i}" for i in range(1, 5)]


def test_parse_list_regex_kinds():
    for kind in ("as_names", "network_name", "reverse_hostname"):
        entries, problems = parse_list(kind, "VODANET.*\n.*Vodafone.*\n(unclosed\n<>\n", "re.lst")
        assert [e.value for e in entries] == ["VODANET.*", ".*Vodafone.*", "<>"]
        assert [p.where for p in problems] == ["re.lst:3"]
        assert "bad regular expression" in problems[0].message
    # without validation the bad pattern is kept and simply never matches
    entries, problems = parse_list("as_names", "(unclosed\n", "re.lst", validate_regex=False)
    assert problems == [] and not regex_fullmatch(entries[0].value, "(unclosed")


def test_parse_list_country_codes_and_entities():
    for kind in ("network_cc", "as_cc", "countries"):
        entries, problems = parse_list(kind, "de\nUS\nDEU\n1A\n", "cc.lst")
        assert [e.value for e in entries] == ["DE", "US"]
        assert [p.where for p in problems] == ["cc.lst:3", "cc.lst:4"]
    entries, problems = parse_list("entities", "ORG-DTAG1-RIPE\nat-88-z\ntwo words\n", "e.lst")
    assert [e.value for e in entries] == ["ORG-DTAG1-RIPE", "AT-88-Z"] and len(problems) == 1


def test_parse_list_geo_ids_and_coordinates():
    assert values("geo_location_ids", "6254928\n# Ashburn\n4744870\n") == [6254928, 4744870]
    assert values("coordinates", "38.8710323,-77.0566834,200,0.5\n10, 20, 30\n") == [
        (38.8710323, -77.0566834, 200.0, 0.5),
        (10.0, 20.0, 30.0, 1.0),
    ]
    entries, problems = parse_list(
        "coordinates", "91,0,10\n0,181,10\n0,0,0\n0,0,nan\n1,2\n0,0,10,-1\n", "c.lst"
    )
    assert entries == [] and len(problems) == 6
    _, problems = parse_list("geo_location_ids", "Virginia\n", "g.lst")
    assert problems[0].where == "g.lst:1"


def test_regex_fullmatch_semantics():
    assert not regex_fullmatch("DoD", "DoD Network Information Center")
    assert regex_fullmatch(".*DoD.*", "The DoD Network")
    assert regex_fullmatch("DoD.*", "DoD Network Information Center")
    assert regex_fullmatch(r".*\.compute-1\.amazonaws\.com", "ec2-52-23-158-188.compute-1.amazonaws.com")
    assert not regex_fullmatch(r".*\.compute-1\.amazonaws\.com", "compute-1.amazonaws.com")
    assert not regex_fullmatch("vodanet.*", "VODANET International")  # case-sensitive
    assert regex_fullmatch("<>", "<>")
    # the fast path agrees with the regex engine, also around newlines
    for pattern in (".*abc", "abc.*", ".*abc.*", "abc", r"a\.b", ".*", r"x\-y"):
        for value in ("abc", "xabc", "abcx", "xabcx", "a.b", "ab", "", "x-y", "abc\n", "\nabc", "a\nbc"):
            assert regex_fullmatch(pattern, value) == bool(__import__("re").fullmatch(pattern, value)), (
                pattern,
                value,
            )


def test_required_literal_is_a_sound_prefilter():
    import re

    pattern = r"(mail|smtp)[0-9]+\.prov7\.example\.(com|net)"
    hint = required_literal(pattern)
    assert hint == ".prov7.example."
    assert regex_fullmatch(pattern, "smtp12.prov7.example.net", hint)
    assert not regex_fullmatch(pattern, "smtp12.prov8.example.net", hint)
    assert required_literal("(?i)abc.def") is None and required_literal("a|bcdef") is None
    for pattern in (r"ab?cde", r"x[0-9]+yz\d", r"(a)bcd(e)fgh", r"abc{2}d"):
        hint = required_literal(pattern)
        for value in ("abcde", "acde", "x12yz3", "abcdefgh", "abccd", "abcd"):
            if re.fullmatch(pattern, value):
                assert hint is None or hint in value, (pattern, hint, value)


def make_config(
    tmp_path: Path, lists: dict[str, str], allow: dict[str, str] | None = None, cache: bool = True, **audit
) -> Config:
    for name, text in {**lists, **(allow or {})}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return Config(
        path=str(tmp_path / "config.toml"),
        audit=AuditConfig(
            lists=dict(zip_kinds(lists)),
            allow=dict(zip_kinds(allow or {})),
            cache=CacheConfig(path=str(tmp_path / "cache"), enabled=cache),
            **audit,
        ),
    )


def zip_kinds(files: dict[str, str]):
    """File names are `<kind>.lst`: the kind is the stem."""
    for name in files:
        yield Path(name).stem, name


def test_load_lists_reads_every_kind_and_reports(tmp_path):
    files = {f"{kind}.lst": "" for kind in LIST_KINDS}
    files["as_numbers.lst"] = "AS64500\nbad\n"
    allow = {f"allow/{kind}.lst": "" for kind in ALLOW_KINDS}
    config = make_config(tmp_path, files, allow)
    lists = load_lists(config)
    assert set(lists.deny) == set(LIST_KINDS) and set(lists.allow) == set(ALLOW_KINDS)
    assert [e.value for e in lists.deny["as_numbers"]] == [64500]
    assert [p.where for p in lists.problems] == [f"{tmp_path}/as_numbers.lst:2"]


def test_load_lists_missing_file_is_unreadable_not_empty(tmp_path):
    config = make_config(tmp_path, {"as_numbers.lst": "AS1\n"})
    os.unlink(tmp_path / "as_numbers.lst")
    lists = load_lists(config)
    assert "as_numbers" not in lists.deny and lists.problems == []
    [e] = lists.unreadable
    assert (e.role, e.kind, e.path, e.reason) == ("deny", "as_numbers", f"{tmp_path}/as_numbers.lst", "file not found")


def test_load_lists_directory_in_place_of_a_file(tmp_path):
    (tmp_path / "dir.lst").mkdir()  # unreadable as a file, for root too
    config = Config(path=str(tmp_path / "config.toml"), audit=AuditConfig(allow={"ip_networks": "dir.lst"}))
    lists = load_lists(config)
    assert "ip_networks" not in lists.allow
    [e] = lists.unreadable
    assert (e.role, e.reason) == ("allow", "a directory")
    assert str(e) == f"allow list ip_networks {tmp_path}/dir.lst: a directory"


def test_load_lists_change_applies_at_next_load(tmp_path):
    config = make_config(tmp_path, {"as_numbers.lst": "AS64500\n"})
    assert [e.value for e in load_lists(config).deny["as_numbers"]] == [64500]
    (tmp_path / "as_numbers.lst").write_text("AS64501\n")
    assert [e.value for e in load_lists(config).deny["as_numbers"]] == [64501]
    # same size, new mtime: still noticed
    (tmp_path / "as_numbers.lst").write_text("AS64502\n")
    st = os.stat(tmp_path / "as_numbers.lst")
    os.utime(tmp_path / "as_numbers.lst", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert [e.value for e in load_lists(config).deny["as_numbers"]] == [64502]


@pytest.fixture
def cache_fresh_files(monkeypatch):
    """The parsed-form cache is not written for a file changed within RACY_NS: these tests
    write their lists just before loading them."""
    from dovecot_appauth.audit import lists as lists_module

    monkeypatch.setattr(lists_module, "RACY_NS", 0)


def test_list_cache_is_keyed_by_the_whole_stat_and_skips_racy_files(tmp_path, monkeypatch):
    """A same-size list put in place with the old mtime (`cp -p`, `tar x`, a rename) is read
    again: the cache's key is the whole stat signature, not size and mtime. A file changed
    within RACY_NS is not cached at all (a second same-size write in the same time stamp
    tick would keep even that signature)."""
    from dovecot_appauth.audit import lists as lists_module

    config = make_config(tmp_path, {"ip_networks.lst": "198.51.100.0/24\n"})
    path = tmp_path / "ip_networks.lst"
    cached = tmp_path / "cache" / "lists"

    def networks() -> list[str]:
        return [e.text for e in load_lists(config).deny["ip_networks"]]

    monkeypatch.setattr(lists_module, "RACY_NS", 3600 * 10**9)  # every file is "just changed"
    assert networks() == ["198.51.100.0/24"]
    assert not cached.exists() or list(cached.iterdir()) == []  # parsed, not cached
    monkeypatch.setattr(lists_module, "RACY_NS", 0)
    assert networks() == ["198.51.100.0/24"]
    assert len(list(cached.iterdir())) == 1
    old = path.stat()
    replacement = tmp_path / "ip_networks.new"
    replacement.write_text("198.51.101.0/24\n")  # the same size
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.rename(replacement, path)
    new = path.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert networks() == ["198.51.101.0/24"]


def test_load_lists_cache_is_marshal_private_and_used(tmp_path, cache_fresh_files):
    config = make_config(
        tmp_path, {"reverse_hostname.lst": "(bad\n.*\\.example\\.net\n(a|b)x+\\.host\\.example\n"}
    )
    first = load_lists(config)
    files = list((tmp_path / "cache" / "lists").iterdir())
    assert len(files) == 1 and files[0].suffix == ".marshal"  # marshal, never pickle: loading runs no code
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "cache" / "lists").stat().st_mode & 0o777) == "0o700"
    data = marshal.loads(files[0].read_bytes())
    assert data["entries"][1][3] == ".host.example"  # the prefilter literal is cached
    # the cache is what the next load uses: tamper with it (same key) and see it
    data["entries"][0] = (data["entries"][0][0], "from-cache", *data["entries"][0][2:])
    files[0].write_bytes(marshal.dumps(data))
    second = load_lists(config)
    assert second.deny["reverse_hostname"][0].text == "from-cache"
    assert [p.where for p in second.problems] == [p.where for p in first.problems]
    assert len(first.problems) == 1  # the bad regex was reported and left out of the cache
    # a damaged cache file is ignored and rewritten
    files[0].write_bytes(b"{not marshal")
    assert load_lists(config).deny["reverse_hostname"][0].text == ".*\\.example\\.net"
    assert marshal.loads(files[0].read_bytes())["entries"][0][1] == ".*\\.example\\.net"
    # a cache file others may write is never read (marshal is not for untrusted data)
    data["entries"][0] = (data["entries"][0][0], "group-writable", *data["entries"][0][2:])
    files[0].write_bytes(marshal.dumps(data))
    files[0].chmod(0o620)
    assert load_lists(config).deny["reverse_hostname"][0].text == ".*\\.example\\.net"


def test_load_lists_unwritable_cache_is_bypassed(tmp_path):
    config = make_config(tmp_path, {"as_numbers.lst": "AS1\n"})
    (tmp_path / "cache").write_text("a file where the directory should be")
    lists = load_lists(config)
    assert [e.value for e in lists.deny["as_numbers"]] == [1] and lists.problems == []


def test_load_lists_per_user_inline(tmp_path):
    config = make_config(
        tmp_path,
        {},
        None,
        allow_users={"alice": UserAllow(ip_networks=("198.51.100.0/24", "bad"), as_numbers=("AS64496",))},
    )
    lists = load_lists(config)
    assert [e.value for e in lists.user_allow["alice"]["as_numbers"]] == [64496]
    assert [p.where for p in lists.problems] == ["[audit.allow.users.alice] ip_networks:2"]


def test_check_lists_reports_everything(tmp_path):
    config = make_config(
        tmp_path,
        {"ip_networks.lst": "192.0.2.1/24\n", "as_names.lst": "ok.*\n[\n"},
        None,
        cache=False,
        ignore_networks=("10.0.0.0/33",),
        local_networks={"172.16.0.0/12": "lan", "nonsense": "x"},
    )
    problems = check_lists(config)
    where = {p.where: p.level for p in problems}
    assert where[f"{tmp_path}/ip_networks.lst:1"] == "warning"
    assert where[f"{tmp_path}/as_names.lst:2"] == "error"
    assert where["[audit] ignore_networks:1"] == "error"
    assert where["[audit] local_networks:2"] == "error"


def test_conf_lists_examples_parse():
    """The shipped examples: upstream file names, every kind, no problems."""
    for kind, name in {**UPSTREAM_NAMES, **{f"allow {k}": v for k, v in ALLOW_NAMES.items()}}.items():
        path = CONF_LISTS / name
        _, problems = load_file(kind.split()[-1], str(path), validate_regex=True)
        assert problems == [], problems
    assert set(UPSTREAM_NAMES) == set(LIST_KINDS)
    assert set(ALLOW_NAMES) == set(ALLOW_KINDS)
    assert set(PARSERS) == set(LIST_KINDS) | set(ALLOW_KINDS)


def test_lists_import_is_cheap():
    code = (
        # the stdlib modules compile their own patterns when imported: import them first
        "import sys, re, json, ipaddress, dataclasses, enum, typing, math, os\n"
        "before = set(re._cache)\n"
        "import dovecot_appauth.audit.lists, dovecot_appauth.audit.rules\n"
        "assert set(re._cache) == before, set(re._cache) - before\n"
        "bad = {'click', 'sqlalchemy', 'dns', 'maxminddb', 'logging', 'socket'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=".*\\^$+?{}[]|()-_/ ,:;!@#%&'\"=~`<>aZ09\n\t\x00\u00e9\u2028", max_size=12))
def test_every_fast_form_pattern_compiles(pattern):
    """parse_list skips compiling `.*literal` forms (regex_fullmatch never compiles them
    either, for a value without a newline): each must be a valid regex, meaning the same."""
    import re

    from dovecot_appauth.audit.patterns import _fast_form

    form = _fast_form(pattern)
    if form is None:
        return
    compiled = re.compile(pattern)  # raises if the skip were wrong
    lit = form[1]
    for value in (lit, "x" + lit, lit + "y", "x" + lit + "y", ""):
        assert regex_fullmatch(pattern, value) == (compiled.fullmatch(value) is not None), (pattern, value)


def test_cache_rebuild_of_fast_form_lists_does_not_import_re(tmp_path):
    """What a cold login rebuilds: regex lists of `.*literal` forms only (the shipped
    examples) are validated without importing `re`; another form still compiles."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "rev.lst").write_text(".*\\.bad\\.example\\.net\nEXAMPLE-BAD-NET\nAS-BAD.*\n")
    (lists / "bad.lst").write_text("ok.*\n(unclosed\n")
    rev, bad, cache = str(lists / "rev.lst"), str(lists / "bad.lst"), str(tmp_path / "c")
    code = (
        "import sys, os\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[2] / 'src')!r})\n"
        "from dovecot_appauth.audit.lists import read_file\n"
        f"entries, problems = read_file('reverse_hostname', {rev!r}, cache_dir={cache!r})\n"
        "assert [e.text for e in entries] == [r'.*\\.bad\\.example\\.net', 'EXAMPLE-BAD-NET', 'AS-BAD.*'], entries\n"
        "assert problems == [] and 're' not in sys.modules\n"
        f"entries, problems = read_file('reverse_hostname', {bad!r}, cache_dir={cache!r})\n"
        "assert [e.text for e in entries] == ['ok.*'] and len(problems) == 1, (entries, problems)\n"
        "assert 'bad regular expression' in problems[0].message\n"
    )
    subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True)


def test_load_lists_from_the_cache_equal_a_fresh_parse(tmp_path, cache_fresh_files):
    """A realistic list set read back from the parsed-form cache gives the entries a fresh
    parse gives (the per-login cost of that read is measured in benchmarks/, not here)."""
    ips = "".join(f"{i % 223 + 1}.{i // 223 % 256}.{i % 256}.0/24  provider {i}\n" for i in range(2000))
    rx = "".join(
        f".*\\.host{i}\\.example\\.net\n(mail|smtp)[0-9]+\\.p{i}\\.example\\.com\n" for i in range(100)
    )
    config = make_config(tmp_path, {"ip_networks.lst": ips, "reverse_hostname.lst": rx})
    load_lists(config)  # fills the cache
    assert len(list((tmp_path / "cache" / "lists").iterdir())) == 2
    cached = load_lists(config)
    fresh = load_lists(config, use_cache=False)
    for kind in ("ip_networks", "reverse_hostname"):
        assert [(e.line, e.text, e.value) for e in cached.deny[kind]] == [
            (e.line, e.text, e.value) for e in fresh.deny[kind]
        ], kind
    assert len(cached.deny["ip_networks"]) == 2000 and len(cached.deny["reverse_hostname"]) == 200
    assert cached.problems == fresh.problems == []


# --- kept warm (serve): parsed once, again when a file changes -------------------------------


@pytest.fixture
def warm(monkeypatch):
    """`keep_warm()` for one test, counting parses per file; RACY_NS 0 unless a test sets it
    (the files are written just before they are loaded)."""
    from dovecot_appauth.audit import lists as lists_module

    parsed: list[str] = []
    real = lists_module.parse_list

    def counting(kind, text, filename, **kwargs):
        parsed.append(os.path.basename(filename))
        return real(kind, text, filename, **kwargs)

    monkeypatch.setattr(lists_module, "parse_list", counting)
    monkeypatch.setattr(lists_module, "RACY_NS", 0)
    lists_module.keep_warm()
    try:
        yield parsed
    finally:
        lists_module.keep_warm(False)


def test_kept_lists_are_not_parsed_again_until_a_file_changes(tmp_path, warm):
    config = make_config(tmp_path, {"ip_networks.lst": "192.0.2.0/24\n", "reverse_hostname.lst": r".*\.bad\.example"},
                         cache=False)
    first = load_lists(config)
    assert sorted(warm) == ["ip_networks.lst", "reverse_hostname.lst"]
    warm.clear()
    second = load_lists(config)
    assert warm == []  # a stat per file, no parse
    assert second.deny["ip_networks"] is first.deny["ip_networks"] and second == first
    # rewritten in place, same size (a later mtime, as the next clock tick would give)
    path = tmp_path / "ip_networks.lst"
    mtime = path.stat().st_mtime_ns
    path.write_text("192.0.2.0/25\n")
    os.utime(path, ns=(mtime, mtime + 1_000_000))
    assert [e.text for e in load_lists(config).deny["ip_networks"]] == ["192.0.2.0/25"] and warm == ["ip_networks.lst"]
    # a new file renamed into place (what editors and config tools do)
    warm.clear()
    (tmp_path / "new.lst").write_text("198.51.100.0/24\n")
    os.replace(tmp_path / "new.lst", tmp_path / "ip_networks.lst")
    assert [e.text for e in load_lists(config).deny["ip_networks"]] == ["198.51.100.0/24"]
    assert warm == ["ip_networks.lst"]
    warm.clear()
    load_lists(config)
    assert warm == []


def test_kept_lists_carry_their_compiled_form_and_stay_plain_without_keep_warm(tmp_path, warm):
    from dovecot_appauth.audit import lists as lists_module
    from dovecot_appauth.audit.matchers import CompiledList

    config = make_config(tmp_path, {"ip_networks.lst": "192.0.2.0/24\n"}, cache=False)
    kept = load_lists(config).deny["ip_networks"]
    assert isinstance(kept, CompiledList) and kept.networks is not None
    lists_module.keep_warm(False)
    plain = load_lists(config).deny["ip_networks"]
    assert type(plain) is tuple and plain == kept


def test_kept_list_that_cannot_be_read_is_reported_on_every_load(tmp_path, warm):
    config = make_config(tmp_path, {"as_numbers.lst": "AS64500\n"}, cache=False)
    assert load_lists(config).deny["as_numbers"] != ()
    os.unlink(tmp_path / "as_numbers.lst")
    for _ in range(2):
        lists = load_lists(config)
        assert "as_numbers" not in lists.deny and lists.unreadable[0].reason == "file not found"
    (tmp_path / "as_numbers.lst").mkdir()  # unusable as a list, for root too; stat works
    for _ in range(2):
        lists = load_lists(config)
        assert "as_numbers" not in lists.deny and lists.unreadable[0].reason == "a directory"


def test_kept_list_changed_just_now_is_read_again(tmp_path, warm, monkeypatch):
    """File times are coarse: a file changed within RACY_NS is not kept, so a second write
    of the same size in the same clock tick cannot go unnoticed."""
    from dovecot_appauth.audit import lists as lists_module

    monkeypatch.setattr(lists_module, "RACY_NS", 3600 * 10**9)
    config = make_config(tmp_path, {"as_numbers.lst": "AS64500\n"}, cache=False)
    load_lists(config)
    load_lists(config)
    assert warm == ["as_numbers.lst", "as_numbers.lst"]
    monkeypatch.setattr(lists_module, "RACY_NS", 0)
    load_lists(config)
    load_lists(config)
    assert len(warm) == 3


def test_kept_inline_user_lists_are_parsed_once(tmp_path, warm):
    config = make_config(tmp_path, {}, cache=False,
                         allow_users={"alice": UserAllow(ip_networks=("192.0.2.0/24",))})
    first = load_lists(config)
    second = load_lists(config)
    assert len(warm) == 1 and second.user_allow == first.user_allow
    assert second.user_allow["alice"]["ip_networks"].networks is not None


def _rewrite(path: Path, text: str) -> None:
    """New content and an mtime of its own, 10 s back: a change the stat signature shows
    (not one within RACY_NS: `warm` sets it to 0, and a future mtime would be racy)."""
    mtime = path.stat().st_mtime_ns - 10 * 10**9
    path.write_text(text)
    os.utime(path, ns=(mtime, mtime))


def test_warm_lists_are_handed_out_again_while_their_stats_are_reused(tmp_path, warm, file_clock):
    """serve (--file-check-interval 1): the same Lists while every file's stat is reused;
    a change shows when the stat is taken again, as without the reuse, never later."""
    from dovecot_appauth import filestat

    filestat.set_interval(1.0)
    config = make_config(tmp_path, {"ip_networks.lst": "192.0.2.0/24\n", "as_numbers.lst": "AS64500\n"},
                         cache=False)
    first = load_lists(config)
    assert load_lists(config) is first
    _rewrite(tmp_path / "ip_networks.lst", "198.51.100.0/24\n")
    file_clock.advance(0.999)
    assert load_lists(config) is first  # the stat from 1 ms ago still stands
    file_clock.advance(0.001)
    changed = load_lists(config)
    assert [e.text for e in changed.deny["ip_networks"]] == ["198.51.100.0/24"]
    assert load_lists(config) is changed
    # a reloaded config (a new Config object) builds its own
    again = make_config(tmp_path, {}, cache=False)
    assert load_lists(again) is not changed and load_lists(again).deny == {}
    # set_interval forgets the stats: nothing built on them is handed out again
    filestat.set_interval(1.0)
    assert load_lists(config) is not changed


def test_warm_lists_are_reused_only_until_the_earliest_stat_they_rest_on(tmp_path, warm, file_clock):
    from dovecot_appauth import filestat

    filestat.set_interval(1.0)
    config = make_config(tmp_path, {"ip_networks.lst": "192.0.2.0/24\n", "as_numbers.lst": "AS64500\n"},
                         cache=False)
    filestat.stat(str(tmp_path / "as_numbers.lst"))  # seen earlier (serve's list watch does so)
    file_clock.advance(0.6)
    first = load_lists(config)  # as_numbers.lst's stat is the one from 0.6 s ago
    _rewrite(tmp_path / "as_numbers.lst", "AS64501\n")
    file_clock.advance(0.399)
    assert load_lists(config) is first
    file_clock.advance(0.001)  # one interval after that stat, not after the build
    assert [e.text for e in load_lists(config).deny["as_numbers"]] == ["AS64501"]


def test_warm_lists_with_a_file_not_kept_are_built_on_every_load(tmp_path, warm, file_clock, monkeypatch):
    """A list that cannot be read is said on every login, and one changed just now is read
    again on every load (RACY_NS): neither is handed out again."""
    from dovecot_appauth import filestat
    from dovecot_appauth.audit import lists as lists_module

    filestat.set_interval(1.0)
    config = make_config(tmp_path, {"ip_networks.lst": "192.0.2.0/24\n", "as_numbers.lst": "AS64500\n"},
                         cache=False)
    os.unlink(tmp_path / "as_numbers.lst")
    first = load_lists(config)
    second = load_lists(config)
    assert second is not first and [e.reason for e in second.unreadable] == ["file not found"]
    (tmp_path / "as_numbers.lst").write_text("AS64500\n")
    file_clock.advance()
    monkeypatch.setattr(lists_module, "RACY_NS", 3600 * 10**9)
    warm.clear()
    assert load_lists(config) is not load_lists(config)
    assert warm.count("as_numbers.lst") == 2 and not load_lists(config).unreadable


def test_lists_are_never_handed_out_again_without_keep_warm(tmp_path, file_clock):
    """The per-login program (and serve with --file-check-interval 0) builds them each time."""
    from dovecot_appauth import filestat

    config = make_config(tmp_path, {"ip_networks.lst": "192.0.2.0/24\n"}, cache=False)
    filestat.set_interval(1.0)
    assert load_lists(config) is not load_lists(config)  # not warm
    from dovecot_appauth.audit import lists as lists_module

    lists_module.keep_warm()
    try:
        filestat.set_interval(0)
        assert load_lists(config) is not load_lists(config)  # warm, but every load stats again
    finally:
        lists_module.keep_warm(False)


def _long_network_list(tmp_path: Path) -> Path:
    lines = [f"10.{i // 256}.{i % 256}.0/24" for i in range(300)]
    lines += ["10.1.0.0/16", "2001:db8::/32", "::ffff:0:0/96", "192.0.2.77", "10.0.5.0/24", "0.0.0.0/0"]
    path = tmp_path / "ip_net.deny.lst"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_long_ip_networks_list_comes_from_the_cache_with_its_index(tmp_path, cache_fresh_files):
    """A list of INDEX_MIN_ENTRIES or more networks is cached with its per-prefix index
    (lists.NetworkIndex, the form serve compiles); a login looks addresses up in it and
    gets the entry the scan finds."""
    from dovecot_appauth.audit.lists import INDEX_MIN_ENTRIES, IndexedNetworks, read_file
    from dovecot_appauth.audit.rules import _subject, match_ip_networks

    path = _long_network_list(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    first, _ = read_file("ip_networks", str(path), cache_dir=str(cache))
    assert not isinstance(first, IndexedNetworks)  # parsed: the cache is being written
    cached, _ = read_file("ip_networks", str(path), cache_dir=str(cache))
    assert isinstance(cached, IndexedNetworks) and len(cached) >= INDEX_MIN_ENTRIES
    assert tuple(cached) == tuple(first)
    for ip in ("10.0.7.9", "10.1.2.3", "10.0.5.1", "::ffff:10.1.0.1", "::ffff:203.0.113.1", "2001:db8::5",
               "192.0.2.77", "203.0.113.9", "2001:db9::1", "fe80::1%eth0", "not an address"):
        subject = _subject(ip, None)
        assert match_ip_networks(cached, subject) == match_ip_networks(tuple(first), subject), ip
    # short lists are scanned, and carry no index
    short = tmp_path / "short.lst"
    short.write_text("10.0.0.0/8\n")
    read_file("ip_networks", str(short), cache_dir=str(cache))
    assert not isinstance(read_file("ip_networks", str(short), cache_dir=str(cache))[0], IndexedNetworks)


def test_a_damaged_network_index_in_the_cache_means_parse_the_file(tmp_path, cache_fresh_files):
    from dovecot_appauth.audit.lists import IndexedNetworks, read_file

    path = _long_network_list(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    parsed, _ = read_file("ip_networks", str(path), cache_dir=str(cache))
    (file,) = cache.iterdir()
    data = marshal.loads(file.read_bytes())
    v4, v6 = data["index"]
    data["index"] = (((v4[0][0], {0: len(parsed) + 5}),), v6)  # an index past the end
    file.write_bytes(marshal.dumps(data))
    again, _ = read_file("ip_networks", str(path), cache_dir=str(cache))
    assert not isinstance(again, IndexedNetworks) and again == parsed


# re warns (FutureWarning) about patterns a later Python may read differently; such a
# warning printed at login is two lines with our source line in Dovecot's log, every time.
FUTURE_WARNING_PATTERN = r"mail[[]x.*\.future\.example\.org"


def test_regex_future_warning_is_a_check_config_warning_never_printed(tmp_path):
    import re
    import warnings

    re.purge()  # re's own cache would hide the warning of a pattern compiled before
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        entries, problems = parse_list("reverse_hostname", FUTURE_WARNING_PATTERN + "\n", "rev.lst")
    assert escaped == []
    assert [e.text for e in entries] == [FUTURE_WARNING_PATTERN]  # kept: today's meaning is clear
    assert [(p.where, p.level) for p in problems] == [("rev.lst:1", "warning")]
    assert "Possible nested set at position 5" in problems[0].message and "FutureWarning" in problems[0].message


def test_regex_future_warning_stays_off_a_logins_stderr(tmp_path):
    """A fresh process (re's cache empty) fills the list cache and matches with the pattern,
    in the per-login way and in serve's compiled form: nothing on stderr."""
    config_dir = tmp_path / "site"
    config_dir.mkdir()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.unit.test_lists import FUTURE_WARNING_PATTERN, make_config\n"
        "from dovecot_appauth.audit import lists\n"
        "from dovecot_appauth.audit.lists import load_lists\n"
        "lists.RACY_NS = 0  # the list is written just before: cache it all the same\n"
        "from dovecot_appauth.audit.matchers import RegexSet\n"
        "from dovecot_appauth.audit.patterns import regex_fullmatch\n"
        f"config = make_config(Path({str(config_dir)!r}), {{'reverse_hostname.lst': FUTURE_WARNING_PATTERN + '\\n'}})\n"
        "for _ in range(2):\n"
        "    lists = load_lists(config)\n"
        "    entry = lists.deny['reverse_hostname'][0]\n"
        "    assert regex_fullmatch(entry.value, 'mail[x1.future.example.org', entry.hint)\n"
        "    assert [p.level for p in lists.problems] == ['warning'], lists.problems\n"
        "assert RegexSet([entry.value]).may_match('mail[x2.future.example.org')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
