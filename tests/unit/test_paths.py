"""paths.py: the per-login path's stand-ins for os.path and os.environ give os's answers."""

from __future__ import annotations

import os
import posixpath

from hypothesis import given
from hypothesis import strategies as st

from dovecot_appauth import paths

# paths built of the pieces that make os.path's answers differ: slashes, dots, names
PATHS = st.lists(st.sampled_from(["/", "//", ".", "..", "a", "bc", "d.e", " ", "é"]), max_size=8).map("".join)


@given(PATHS, PATHS)
def test_join_is_os_path_join(directory, name):
    assert paths.join(directory, name) == posixpath.join(directory, name)


@given(PATHS)
def test_dirname_and_basename_are_os_paths(path):
    assert paths.dirname(path) == posixpath.dirname(path)
    assert paths.basename(path) == posixpath.basename(path)


@given(PATHS)
def test_absolute_is_os_path_abspath(path):
    assert paths.absolute(path) == os.path.abspath(path)
    if paths.is_normal_absolute(path):  # the case answered without os: abspath leaves it as it is
        assert os.path.abspath(path) == path


def test_exists_and_isdir_are_os_paths(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "absent")
    for name in ("file", "link", "absent", "."):
        path = str(tmp_path / name)
        assert (paths.exists(path), paths.isdir(path)) == (os.path.exists(path), os.path.isdir(path)), name
    assert paths.exists("bad\0path") is os.path.exists("bad\0path") is False


def test_environment_is_os_environ(monkeypatch):
    monkeypatch.setenv("APPAUTH_PATHS_TEST", "v\udcff")  # not UTF-8: kept as os.environ keeps it
    assert paths.environment() == dict(os.environ)
