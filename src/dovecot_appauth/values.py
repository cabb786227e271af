"""`Value`: the base of the per-login program's record types, in place of `@dataclass`.

Why not dataclasses: the per-login program is started once per authentication, and
`import dataclasses` pulls in inspect, ast, dis and tokenize (~10 ms), and every
`@dataclass` then generates and exec()s its methods at import (~0.3 ms a class, about
thirty classes on the login path). See docs/PERFORMANCE.md.

A subclass names its fields in `__slots__` and writes a plain `__init__` whose
parameters are the fields, with keyword defaults. This base derives equality and
hashing from `__slots__` and a repr in constructor order, as `@dataclass(frozen=True)`
did. Instances are immutable by convention: nothing assigns to a field after
`__init__` (`__slots__` keeps typos and new attributes out). Type hints stay in the
signatures; `from __future__ import annotations` keeps them unevaluated, and names
needed only by hints are imported under `if TYPE_CHECKING:` with a module-level
`TYPE_CHECKING = False` (type checkers treat that name as true), so `typing` itself is
not imported at run time (~4 ms).
"""

from __future__ import annotations


class Value:
    __slots__ = ()
    # fields left out of repr() (a password); a subclass may override
    _repr_hidden: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in self.__slots__))

    def __repr__(self) -> str:
        # the constructor's parameters, in order: the fields as a dataclass repr lists them
        code = type(self).__init__.__code__
        names = code.co_varnames[1 : code.co_argcount]
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names if name not in self._repr_hidden)
        return f"{type(self).__name__}({shown})"


class _ChoiceType(type):
    """The metaclass of `Choice`: the class's public constants become its members.

    Each constant NAME = value turns into one instance of the class, reachable as
    `Class.NAME` or `Class["NAME"]`, with `.name` and `.value`; `Class(value)` finds the
    member (ValueError for any other value); iterating the class gives the members in
    definition order.
    """

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict) -> _ChoiceType:
        constants = {key: value for key, value in namespace.items()
                     if not key.startswith("_") and not callable(value)
                     and not isinstance(value, (classmethod, staticmethod, property))}
        cls = super().__new__(mcls, name, bases, {k: v for k, v in namespace.items() if k not in constants})
        members: dict[str, object] = {}
        for key, value in constants.items():
            if issubclass(cls, int):
                member = int.__new__(cls, value)
            elif issubclass(cls, str):
                member = str.__new__(cls, value)
            else:
                member = object.__new__(cls)
            member._name_ = key  # type: ignore[attr-defined]
            member._value_ = value  # type: ignore[attr-defined]
            members[key] = member
            type.__setattr__(cls, key, member)
        type.__setattr__(cls, "_members_", members)
        type.__setattr__(cls, "_by_value_", {m._value_: m for m in members.values()})  # type: ignore[attr-defined]
        return cls

    def __call__(cls, value: object) -> object:
        try:
            return cls._by_value_[value]  # type: ignore[attr-defined]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__name__}") from None

    def __getitem__(cls, name: str) -> object:
        return cls._members_[name]  # type: ignore[attr-defined]

    def __iter__(cls):
        return iter(cls._members_.values())  # type: ignore[attr-defined]

    def __len__(cls) -> int:
        return len(cls._members_)  # type: ignore[attr-defined]

    def __contains__(cls, member: object) -> bool:
        return isinstance(member, cls) and member in cls._members_.values()  # type: ignore[attr-defined]

    def __setattr__(cls, name: str, value: object) -> None:
        raise AttributeError(f"{cls.__name__} is a closed set of members")


class Choice(metaclass=_ChoiceType):
    """A closed set of named constants, in place of `enum.Enum` on the per-login path.

    Why not enum: with no `re` loaded, `import enum` is ~2 ms of every login, and each
    Enum class costs ~0.1 ms more to build. Used the same way: `Mode.VERIFY`, `.name`,
    `.value`, `Mode("verify")`, `for m in Mode`, identity comparison. `IntChoice` and
    `StrChoice` members are also ints and strs (as IntEnum and StrEnum members are).
    """

    _name_: str
    _value_: object

    @property
    def name(self) -> str:
        return self._name_

    @property
    def value(self):  # the constant, of its own type
        return self._value_

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {self._value_!r}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self._name_}"

    def __reduce__(self) -> tuple:
        return (type(self), (self._value_,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo: dict):
        return self


class IntChoice(int, Choice):
    """Members are ints: `ExitCode.FAIL == 1`, usable as an exit status."""

    __repr__ = Choice.__repr__

    def __str__(self) -> str:
        return int.__repr__(self)

    __format__ = int.__format__


class StrChoice(str, Choice):
    """Members are strs: `SourceStatus.CACHED == "cached"`, usable in text and JSON."""

    __repr__ = Choice.__repr__

    def __str__(self) -> str:
        return str.__str__(self)

    __format__ = str.__format__
