"""JSON through CPython's C accelerator (`_json`), without importing the `json` package.

`json` imports `re` and compiles five patterns at import (~2 ms a login). The per-login
path reads and writes a little JSON (the enrichment cache's values, the fast path's
request and answer) and needs none of that: the C scanner and encoder `json.loads` and
`json.dumps` themselves run are in `_json`. Anything but a clean run (malformed JSON,
whose error the C scanner can only raise once `json.decoder` is imported; trailing data;
a value the encoder refuses) is handed to the real `json`, so results and errors are
always its own. Without `_json` (not CPython) these are `json.loads` and `json.dumps`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see values.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _decoder(parse_constant: Callable[[str], float] | None) -> Callable[[str], Any]:
    """`json.loads(text)`, or with `parse_constant` `json.loads(text, parse_constant=...)`."""
    def fallback(text: str) -> Any:
        import json

        return json.loads(text) if parse_constant is None else json.loads(text, parse_constant=parse_constant)

    try:
        from _json import make_scanner
    except ImportError:
        return fallback

    class _Options:  # the attributes the C scanner reads from json.JSONDecoder()
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int

    options = _Options()
    options.parse_constant = parse_constant or {  # type: ignore[attr-defined]
        "-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
    scan = make_scanner(options)

    def loads(text: str) -> Any:
        try:
            value, end = scan(text, 0)
            if end == len(text):
                return value
        except Exception:  # noqa: S110 - the fallback below gives the real error
            pass
        return fallback(text)

    return loads


loads = _decoder(None)  # json.loads
loads_finite = _decoder(_no_constant)  # json.loads, but NaN and the infinities are a ValueError


def _encoder() -> Callable[[Any], str]:
    """`json.dumps(value, separators=(",", ":"))`: the C encoder made with the arguments
    `json.JSONEncoder(separators=(",", ":"))` gives it, for a dict."""
    def fallback(value: Any) -> str:
        import json

        return json.dumps(value, separators=(",", ":"))

    try:
        from _json import encode_basestring_ascii, make_encoder
    except ImportError:
        return fallback

    def default(o: Any) -> Any:
        raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")

    def dumps(value: Any) -> str:
        if type(value) is dict:
            try:
                # markers (check_circular), default, encoder (ensure_ascii), indent,
                # key_separator, item_separator, sort_keys, skipkeys, allow_nan
                return "".join(make_encoder({}, default, encode_basestring_ascii, None, ":", ",",
                                            False, False, True)(value, 0))
            except Exception:  # noqa: S110 - json.dumps below gives the real error
                pass
        return fallback(value)

    return dumps


dumps = _encoder()  # json.dumps(value, separators=(",", ":")): ASCII, compact
