"""The per-login program's config cache (`config.load_cached`) and its private marshal files."""

from __future__ import annotations

import marshal
import os
import sys

import pytest

from dovecot_appauth import config_cache, ipnum, private_file
from dovecot_appauth.config import ConfigError, config_cache_file, load, load_cached

GOOD = '[database]\ndsn = "sqlite:////tmp/x.sqlite"\n\n[audit]\ndeadline = 0.7\nunknown_key = 1\n'


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(config_cache, "CONFIG_CACHE_ROOT", str(root))
    return root


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    path.write_text(GOOD)
    return path


def _cached(conf) -> tuple:
    return marshal.loads(open(config_cache_file(str(conf)), "rb").read())


def test_load_cached_is_load_and_fills_a_private_cache(conf, cache_root):
    first = load_cached(str(conf))
    assert first == load(str(conf))
    assert [str(p) for p in first.problems] == [str(p) for p in load(str(conf)).problems]  # the warning too
    file = config_cache_file(str(conf))
    assert os.path.dirname(os.path.dirname(file)) == str(cache_root)
    assert oct(os.stat(file).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(file)).st_mode & 0o777) == "0o700"
    key, data, table, fast = _cached(conf)
    assert data["audit"]["deadline"] == 0.7 and key[2] == str(conf)
    assert fast is None  # no [fast_path] socket: nothing for fast_path.login_via_serve
    assert key[1] == sys.version  # another interpreter's ipaddress may judge addresses otherwise
    assert table == ipnum.global_table()  # the is_global table a warm login uses (ipnum.py)
    assert load_cached(str(conf)) == first


def test_load_cached_uses_the_cache(conf):
    load_cached(str(conf))
    key, data, table, fast = _cached(conf)
    data["audit"]["deadline"] = 0.9  # same key: the cache is believed
    private_file.store(config_cache_file(str(conf)), (key, data, table, fast))
    assert load_cached(str(conf)).audit.deadline == 0.9


def test_load_cached_notices_every_change(conf):
    load_cached(str(conf))
    st = os.stat(conf)
    conf.write_text(GOOD.replace("0.7", "0.8"))  # same size, and the mtime set back
    os.utime(conf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_cached(str(conf)).audit.deadline == 0.8  # ctime moved
    os.chmod(conf, 0o600)
    assert load_cached(str(conf)).audit.deadline == 0.8
    assert _cached(conf)[0][-1] == os.stat(conf).st_ctime_ns


def test_load_cached_reports_problems_as_load_does(conf):
    conf.write_text('[audit]\ndeadline = "soon"\n')
    with pytest.raises(ConfigError) as plain:
        load(str(conf))
    for _ in range(2):  # the second time from the cache: validated again, same message
        with pytest.raises(ConfigError) as cached:
            load_cached(str(conf))
        assert str(cached.value) == str(plain.value)


def test_load_cached_errors_match_load(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as plain:
        load(str(missing))
    with pytest.raises(ConfigError) as cached:
        load_cached(str(missing))
    assert str(cached.value) == str(plain.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("[audit\n")
    with pytest.raises(ConfigError) as plain:
        load(str(broken))
    with pytest.raises(ConfigError) as cached:
        load_cached(str(broken))
    assert str(cached.value) == str(plain.value)


def test_load_cached_ignores_a_cache_others_can_write(conf):
    load_cached(str(conf))
    key, data, table, fast = _cached(conf)
    data["audit"]["deadline"] = 0.9
    file = config_cache_file(str(conf))
    private_file.store(file, (key, data, table, fast))
    os.chmod(file, 0o620)  # group-writable: someone else could have written it
    assert load_cached(str(conf)).audit.deadline == 0.7


def test_load_cached_ignores_a_symlink_and_damage(conf, tmp_path):
    load_cached(str(conf))
    key, data, table, fast = _cached(conf)
    data["audit"]["deadline"] = 0.9
    elsewhere = tmp_path / "elsewhere.marshal"
    elsewhere.write_bytes(marshal.dumps((key, data, table, fast)))
    file = config_cache_file(str(conf))
    os.unlink(file)
    os.symlink(elsewhere, file)
    assert load_cached(str(conf)).audit.deadline == 0.7
    os.unlink(file)
    with open(file, "wb") as f:
        f.write(b"\x00garbage")
    os.chmod(file, 0o600)
    assert load_cached(str(conf)).audit.deadline == 0.7
    assert _cached(conf)[1]["audit"]["deadline"] == 0.7  # rewritten


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the directory to another user")
def test_load_cached_ignores_a_directory_of_another_user(conf):
    load_cached(str(conf))
    key, data, table, fast = _cached(conf)
    data["audit"]["deadline"] = 0.9
    file = config_cache_file(str(conf))
    private_file.store(file, (key, data, table, fast))
    os.chown(os.path.dirname(file), 65534, 65534)
    assert load_cached(str(conf)).audit.deadline == 0.7


def test_load_cached_without_a_usable_cache_directory(conf, cache_root):
    (cache_root / f"dovecot-appauth-{os.geteuid()}").write_text("a file where the directory should be")
    assert load_cached(str(conf)) == load(str(conf))


def test_load_cached_leaves_unmarshallable_values_uncached(conf):
    conf.write_text(GOOD + "when = 1979-05-27T07:32:00Z\n")  # a TOML datetime: marshal cannot store it
    assert load_cached(str(conf)) == load(str(conf))  # an unknown key: a warning, as always
    assert not os.path.exists(config_cache_file(str(conf)))


def test_load_cached_prunes_old_files_of_other_configs(conf, tmp_path):
    load_cached(str(conf))
    directory = os.path.dirname(config_cache_file(str(conf)))
    stale, fresh = os.path.join(directory, "config-stale.marshal"), os.path.join(directory, "config-fresh.marshal")
    for name in (stale, fresh):
        private_file.store(name, ("x", {}))
    os.utime(stale, (0, 0))
    os.utime(config_cache_file(str(conf)), (0, 0))  # not written for a day: pruned like any other
    other = tmp_path / "etc" / "other.toml"
    other.write_text(GOOD)
    load_cached(str(other))  # a miss: writes its file and prunes
    assert not os.path.exists(stale) and os.path.exists(fresh)
    assert not os.path.exists(config_cache_file(str(conf))) and os.path.exists(config_cache_file(str(other)))
    assert load_cached(str(conf)).audit.deadline == 0.7  # a config still in use just gets its file again
    assert os.path.exists(config_cache_file(str(conf)))


def test_load_cached_ignores_a_damaged_is_global_table(conf, monkeypatch):
    """A table that is not one is not used: is_global is then derived from ipaddress again."""
    from dovecot_appauth.audit.rules import is_globally_reachable

    load_cached(str(conf))
    key, data, _table, fast = _cached(conf)
    private_file.store(config_cache_file(str(conf)), (key, data, {4: ((5,), (True,)), 6: "garbage"}, fast))
    monkeypatch.setattr(ipnum, "_table", None)
    assert load_cached(str(conf)).audit.deadline == 0.7
    assert ipnum._table is None  # not taken
    assert is_globally_reachable("8.8.8.8") and not is_globally_reachable("10.0.0.1")
    assert not is_globally_reachable("::ffff:192.168.1.1") and is_globally_reachable("100.64.0.1")
    assert ipnum._table == ipnum.global_table()  # derived on first use


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_private_files_make_every_missing_directory_0700(tmp_path, umask):
    """The list cache (cache/lists) is often the first thing made in a new [audit.cache]
    directory: its parent must come out 0700 too, whatever the umask, or a group-writable
    cache directory would be untrusted on every login (makedirs gives parents the umask's mode)."""
    import stat

    from dovecot_appauth import private_file

    target = tmp_path / "cache" / "lists" / "deny.marshal"
    old = os.umask(umask)
    try:
        assert private_file.store(str(target), {"a": 1})
    finally:
        os.umask(old)
    for directory in (tmp_path / "cache", tmp_path / "cache" / "lists"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert private_file.load(str(target)) == {"a": 1}


def test_load_cached_checks_a_cache_read_before_as_if_read_now(conf):
    """entry.checkpassword reads the cache once and hands it to login.main: load_cached
    believes it only under the file's current key, as a cache it reads itself."""
    load_cached(str(conf))
    read_before = _cached(conf)
    key, data, table, fast = read_before
    changed = dict(data, audit={**data["audit"], "deadline": 0.9})
    assert load_cached(str(conf), (key, changed, table, fast)).audit.deadline == 0.9  # believed: same key
    conf.write_text(GOOD.replace("0.7", "0.8"))  # the file changed after the cache was read
    assert load_cached(str(conf), read_before).audit.deadline == 0.8
    assert _cached(conf)[1]["audit"]["deadline"] == 0.8  # and the cache written again
