"""filestat: serve's change checks stat a file at most once per interval."""

from __future__ import annotations

import errno
import os

import pytest

from dovecot_appauth import filestat


@pytest.fixture
def counted(monkeypatch):
    calls: list[str] = []
    real = os.stat

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(filestat.os, "stat", counting)
    return calls


def test_off_stats_on_every_call(tmp_path, counted):
    f = tmp_path / "f"
    f.write_text("x")
    for _ in range(3):
        assert filestat.stat(str(f)).st_size == 1
    assert len(counted) == 3


def test_within_the_interval_the_last_stat_is_reused(tmp_path, counted, file_clock):
    filestat.set_interval(1.0)
    f = tmp_path / "f"
    f.write_text("x")
    assert filestat.stat(str(f)).st_size == 1
    f.write_text("xyz")
    file_clock.advance(0.999)
    assert filestat.stat(str(f)).st_size == 1  # not looked at again yet
    assert len(counted) == 1
    file_clock.advance(0.001)
    assert filestat.stat(str(f)).st_size == 3  # the interval is over: the change is seen
    assert len(counted) == 2
    other = tmp_path / "other"
    other.write_text("")
    assert filestat.stat(str(other)).st_size == 0  # each path has its own time
    assert len(counted) == 3


def test_a_missing_file_raises_as_os_stat_does_each_time(tmp_path, counted, file_clock):
    filestat.set_interval(1.0)
    missing = str(tmp_path / "missing")
    errors = []
    for _ in range(2):
        with pytest.raises(FileNotFoundError) as info:
            filestat.stat(missing)
        errors.append(info.value)
    assert errors[0] is not errors[1]  # a new exception each time: no traceback piles up
    assert errors[1].errno == errno.ENOENT and errors[1].filename == missing
    assert len(counted) == 1
    (tmp_path / "missing").write_text("now")
    with pytest.raises(FileNotFoundError):
        filestat.stat(missing)  # still the last answer
    file_clock.advance()
    assert filestat.stat(missing).st_size == 3


def test_setting_the_interval_forgets_and_refuses_a_negative_one(tmp_path, counted):
    filestat.set_interval(5)
    f = str(tmp_path / "f")
    open(f, "w").close()
    filestat.stat(f)
    filestat.set_interval(5)
    filestat.stat(f)
    assert len(counted) == 2
    with pytest.raises(ValueError):
        filestat.set_interval(-1)


def test_the_memory_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(filestat, "MAX_PATHS", 3)
    filestat.set_interval(60)
    for i in range(10):
        p = tmp_path / str(i)
        p.write_text("")
        filestat.stat(str(p))
        assert len(filestat._seen) <= 3


def test_stat_until_gives_the_answer_and_how_long_it_stands(tmp_path, counted, file_clock):
    f = str(tmp_path / "f")
    open(f, "w").close()
    st, until = filestat.stat_until(f)
    assert st.st_size == 0 and until == 0.0  # off: every call stats
    filestat.set_interval(1.0)
    generation = filestat.generation()
    st, until = filestat.stat_until(f)
    assert until == file_clock.now + 1.0
    # what is built on it stands until then, in this generation only
    assert filestat.stands(generation, until) and not filestat.stands(generation + 1, until)
    assert not filestat.stands(generation, file_clock.now)
    with open(f, "w") as out:
        out.write("x")
    file_clock.advance(0.5)
    st, until = filestat.stat_until(f)  # the same answer: it stands as long as before
    assert st.st_size == 0 and until == file_clock.now + 0.5 and len(counted) == 2
    file_clock.advance(0.5)
    st, until = filestat.stat_until(f)
    assert st.st_size == 1 and until == file_clock.now + 1.0 and len(counted) == 3
    assert filestat.stat(f).st_size == 1 and len(counted) == 3  # stat() shares the answers
    missing = str(tmp_path / "missing")
    assert filestat.stat_until(missing) == (None, file_clock.now + 1.0)
    with pytest.raises(FileNotFoundError):
        filestat.stat(missing)
    assert len(counted) == 4
    filestat.set_interval(1.0)
    assert filestat.generation() != generation
    assert not filestat.stands(generation, file_clock.now + 1.0)  # an older generation never stands
