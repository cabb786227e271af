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
