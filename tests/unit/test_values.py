"""values.Choice: the closed sets of the per-login path behave as the enum members they replace."""

from __future__ import annotations

import copy
import enum
import json
import pickle

import pytest

from dovecot_appauth.audit.facts import SourceStatus
from dovecot_appauth.core import ExitCode, Mode
from dovecot_appauth.values import Choice

# the enum each Choice class replaced, with the same members: the behaviour to keep
ExitCodeEnum = enum.IntEnum("ExitCodeEnum", {m.name: m.value for m in ExitCode})
ModeEnum = enum.Enum("ModeEnum", {m.name: m.value for m in Mode})
StatusEnum = enum.StrEnum("StatusEnum", {m.name: m.value for m in SourceStatus})


@pytest.mark.parametrize(("ours", "theirs"), [(ExitCode, ExitCodeEnum), (Mode, ModeEnum), (SourceStatus, StatusEnum)])
def test_choice_members_behave_like_the_enum_they_replace(ours, theirs):
    assert [m.name for m in ours] == [m.name for m in theirs] and len(ours) == len(theirs)
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.value == other.value and type(mine.value) is type(other.value)
        assert ours(mine.value) is mine and ours[mine.name] is mine
        assert str(mine) == str(other).replace(theirs.__name__, ours.__name__)
        assert f"{mine}" == f"{other}".replace(theirs.__name__, ours.__name__)
        assert repr(mine) == repr(other).replace(theirs.__name__, ours.__name__)
        assert (mine == mine.value) == (other == other.value)  # IntEnum/StrEnum compare as values
        assert hash(mine) == hash(mine) and {mine: 1}[ours(mine.value)] == 1
        assert pickle.loads(pickle.dumps(mine)) is mine and copy.deepcopy(mine) is mine
        assert mine in ours
    with pytest.raises(ValueError, match="is not a valid"):
        ours("no such value")
    with pytest.raises(KeyError):
        ours["NO_SUCH_NAME"]


def test_int_and_str_choices_are_ints_and_strs():
    assert isinstance(ExitCode.TEMPFAIL, int) and ExitCode.TEMPFAIL + 0 == 111
    assert json.dumps({"status": SourceStatus.CACHED, "code": ExitCode.FAIL}) == '{"status": "cached", "code": 1}'
    assert SourceStatus.TIMEOUT.upper() == "TIMEOUT"
    assert Mode.VERIFY != "verify"  # a plain Choice is not its value, as with enum.Enum


def test_choice_class_is_closed():
    with pytest.raises(AttributeError):
        Mode.VERIFY = "other"  # type: ignore[misc]

    class Colour(Choice):
        """Methods and private names are not members."""

        RED = "red"
        _hidden = 1

        def shout(self) -> str:
            return self.value.upper()

    assert list(Colour) == [Colour.RED] and Colour.RED.shout() == "RED"
