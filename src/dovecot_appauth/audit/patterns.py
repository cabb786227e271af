"""The regular expressions of the regex list kinds: compiled once, the string fast path for
the common `.*literal` forms, the literal every match must contain.

Shared by lists.py (parsing, the per-login scan) and matchers.py (the compiled forms `serve`
keeps), so neither imports the other at module level. On the per-login path: stdlib only,
`re` imported only when a pattern has to be compiled.
"""

from __future__ import annotations

import _thread

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)

if TYPE_CHECKING:
    import re


REGEX_KINDS = ("reverse_hostname", "network_name", "as_names")


# `re` is imported only here and below, when a pattern is really compiled: a login whose
# regex lists are all answered by the fast path or the cached hint never imports it.
_compiled: dict[str, re.Pattern[str] | None] = {}


_SIMPLE_ESCAPES = frozenset(".-_/ ,:;!@#%&'\"=~`<>")


class quiet_re:  # lower case: used like contextlib's managers, `with quiet_re() as caught:`
    """Compile or parse patterns inside: re's FutureWarnings are caught, never printed.

    A login must not write them to Dovecot's log (two lines, with our source line, on every
    login that compiled such a pattern); `check-config` reports them from `caught`.
    catch_warnings swaps process-wide state, so these blocks take turns (serve has threads);
    the lock is re-entrant, as `_compile` runs inside other such blocks.
    """

    _lock = _thread.RLock()

    def __enter__(self) -> list:
        import warnings

        self._lock.acquire()
        try:
            self._catch = warnings.catch_warnings(record=True)
            caught = self._catch.__enter__()
            warnings.simplefilter("always")
        except BaseException:
            self._lock.release()
            raise
        return caught

    def __exit__(self, *exc: object) -> None:
        try:
            self._catch.__exit__(*exc)
        finally:
            self._lock.release()


def _compile(pattern: str, warnings_out: list[str] | None = None) -> re.Pattern[str]:
    """Compile and remember `pattern`; a bad one raises ValueError("bad regular expression: ...").

    re's FutureWarnings ("Possible nested set at position 5": a later Python may read the
    pattern differently) go to `warnings_out` when given, and nowhere otherwise.
    """
    import re

    with quiet_re() as caught:
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"bad regular expression: {e}") from None
        except (OverflowError, RecursionError, MemoryError) as e:
            # a huge repeat count or deep nesting: re raises these instead of re.error
            raise ValueError(f"regular expression too large ({type(e).__name__})") from None
    if warnings_out is not None:
        warnings_out.extend(str(w.message) for w in caught)
    _compiled[pattern] = compiled
    return compiled


def _literal(body: str) -> str | None:
    """The literal a pattern body stands for, or None if it uses any regex feature."""
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 < len(body) and body[i + 1] in _SIMPLE_ESCAPES:
                out.append(body[i + 1])
                i += 2
                continue
            return None
        if c in ".^$*+?{}[]|()":
            return None
        out.append(c)
        i += 1
    return "".join(out)


def _fast_form(pattern: str) -> tuple[bool, str, bool] | None:
    """`.*lit`, `lit.*`, `.*lit.*` or `lit` -> (any prefix, literal, any suffix), else None."""
    lead = pattern.startswith(".*")
    body = pattern[2:] if lead else pattern
    trail = body.endswith(".*") and not body.endswith("\\.*")
    body = body[:-2] if trail else body
    lit = _literal(body)
    return None if lit is None else (lead, lit, trail)


def required_literal(pattern: str) -> str | None:
    """The longest literal every match of `pattern` contains, if it has one worth using.

    Computed once when a file is parsed for the cache, so a login can rule a pattern out
    with `in` instead of compiling it (~0.1 ms each). Only top-level literals count
    (nothing inside a group, branch or repeat), and none under IGNORECASE. Uses the
    regex parser's internals, so any surprise just means "no hint".
    """
    if _fast_form(pattern) is not None:
        return None  # matched without the regex engine anyway
    try:
        import re
        from re import _constants, _parser  # type: ignore[attr-defined]

        with quiet_re():
            parsed = _parser.parse(pattern)
        if parsed.state.flags & re.IGNORECASE:
            return None
        best, run = "", []
        for op, arg in [*parsed, (None, None)]:
            if op is _constants.LITERAL:
                run.append(chr(arg))
                continue
            if len(run) > len(best):
                best = "".join(run)
            run = []
        return best if len(best) >= 3 else None
    except Exception:
        return None


def regex_fullmatch(pattern: str, value: str, hint: str | None = None) -> bool:
    """Whether `pattern` matches all of `value`; a pattern that does not compile never matches."""
    if hint is not None and hint not in value:
        return False
    if "\n" not in value:  # `.` never matches a newline: leave those to the real engine
        form = _fast_form(pattern)
        if form is not None:
            lead, lit, trail = form
            if lead and trail:
                return lit in value
            if lead:
                return value.endswith(lit)
            if trail:
                return value.startswith(lit)
            return value == lit
    compiled = _compiled.get(pattern, False)
    if compiled is False:
        try:
            compiled = _compile(pattern)
        except ValueError:
            compiled = _compiled[pattern] = None  # reported by check-config; skipped here
    return compiled is not None and compiled.fullmatch(value) is not None
