"""Printing a JSON tree as canonical rule text (:func:`to_text`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ValidationError
from .limits import MAX_DEPTH
from .syntax import (
    _BUILTIN_CALLS,
    _DURATION,
    _DURATION_FIX,
    _IDENT,
    _NODE_KEYS,
    _WINDOW,
    AGGS,
    KEYWORDS,
    OP_TEXT,
    _close,
)


def to_text(tree: Mapping[str, Any]) -> str:
    """Print a rule tree in the canonical text syntax.

    Accepts the node shapes of ``docs/rules.md`` (dicts or other mappings,
    lists or tuples); raises :class:`ValidationError`, with the path of the
    culprit (``all[2].any[0].op``), for a shape that cannot be printed.
    """
    return _print(tree, "", 0)[0]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(path: str, value: Any, problem: str, fix: str) -> ValidationError:
    return ValidationError(path or "rule", _short(value), problem, fix)


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _print(node: Any, path: str, depth: int) -> tuple[str, str]:
    """``node`` as text, and its kind (``all``, ``any``, or ``leaf`` for everything else)."""
    if depth > MAX_DEPTH:
        raise _bad(
            path, None, f"nested more than {MAX_DEPTH} levels deep", "flatten the rule or split it into segments"
        )
    if not isinstance(node, Mapping):
        raise _bad(path, node, "not a condition", 'write an object such as {"field": …} or {"all": […]}')
    keys = [k for k in _NODE_KEYS if k in node]
    if len(keys) != 1:
        found = ", ".join(repr(k) for k in node) or "nothing"
        raise _bad(
            path, node, f"a condition needs exactly one of {', '.join(_NODE_KEYS)} (found {found})", "see docs/rules.md"
        )
    key = keys[0]
    allowed = {
        "field": ("field", "op", "value"),
        "event": ("event", "op", "value"),
        "condition": ("condition", "args"),
    }.get(key, (key,))
    for k in node:
        if k not in allowed:
            raise _bad(
                _join(path, str(k)),
                node[k],
                f"unexpected key {k!r} in a {key!r} condition",
                f"a {key!r} condition has only {', '.join(allowed)}",
            )
    here = _join(path, key)
    if key in ("all", "any"):
        children = node[key]
        if not _is_seq(children) or not children:
            raise _bad(here, children, "not a non-empty list", f'write {{"{key}": [condition, …]}}')
        parts: list[str] = []
        last = ("", "leaf")
        for i, child in enumerate(children):
            last = _print(child, f"{here}[{i}]", depth + 1)
            text, kind = last
            if kind == "any" or (kind == "all" and key == "all"):
                text = f"({text})"
            parts.append(text)
        if len(parts) == 1:  # one child: the node means the child
            return last
        return (" and " if key == "all" else " or ").join(parts), key
    if key == "not":
        text, kind = _print(node["not"], here, depth + 1)
        return (f"not ({text})" if kind in ("all", "any") else f"not {text}"), "leaf"
    if key == "field":
        return _field_name(node["field"], here) + _predicate(node, path), "leaf"
    if key == "event":
        return _event(node["event"], here) + _predicate(node, path), "leaf"
    if key == "segment":
        return f"segment({_string(node['segment'], here, 'a segment name')})", "leaf"
    if key == "consent":
        channel = node["consent"]
        return f"consent({channel if _plain(channel) else _string(channel, here, 'a channel name')})", "leaf"
    return _condition(node, path), "leaf"


def _plain(name: Any) -> bool:
    return isinstance(name, str) and _IDENT.fullmatch(name) is not None and name.lower() not in KEYWORDS


def _name_text(name: Any, path: str, what: str = "a name") -> str:
    if _plain(name):
        return str(name)
    if not isinstance(name, str) or not name:
        raise _bad(path, name, f"not {what}", "write a non-empty name as text")
    if any(c in name for c in "`\n\r\0"):
        raise _bad(path, name, f"{what} with a backtick, line break or NUL cannot be written in rule text", "rename it")
    return f"`{name}`"


def _field_name(name: Any, path: str) -> str:
    if isinstance(name, str) and name.count(".") == 1:
        a, _, b = name.partition(".")
        if _plain(a) and _plain(b):
            return name
    return _name_text(name, path, "a field name")


def _string(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, value, f"not {what}", "write it as text")
    return json.dumps(value, ensure_ascii=False)


def _scalar_text(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than str() converts
            raise _bad(path, "<huge int>", "a number with too many digits", "write a smaller number") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(path, value, "not a finite number", "write a finite number")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        raise _bad(path, value, "rule text has no null", 'to test for a missing value use {"op": "exists"} under "not"')
    raise _bad(path, value, "not a value", "write text, a number, true or false")


def _list_text(value: Any, path: str) -> str:
    if not _is_seq(value):
        raise _bad(path, value, "not a list", 'write a list of values, e.g. ["KR", "JP"]')
    return "(" + ", ".join(_scalar_text(v, f"{path}[{i}]") for i, v in enumerate(value)) + ")"


def _duration_text(value: Any, path: str, pattern: re.Pattern[str] = _DURATION) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        example = "'90d' or '210d..30d'" if pattern is _WINDOW else "'90d'"
        raise _bad(path, value, "not a duration", f"{_DURATION_FIX.replace('e.g. 90d', 'e.g. ' + example)}")
    return value


def _predicate(node: Mapping[str, Any], path: str) -> str:
    """`` op value`` of a comparison or filter node."""
    op = node.get("op")
    opath, vpath = _join(path, "op"), _join(path, "value")
    if not isinstance(op, str) or op not in OP_TEXT:
        guess = _close(str(op), tuple(OP_TEXT))
        hint = f'did you mean "{guess[0]}"? ' if guess else ""
        raise _bad(opath, op, f"unknown operator {op!r}", f"{hint}use one of {', '.join(OP_TEXT)}")
    if op == "exists":
        if node.get("value") is not None:
            raise _bad(vpath, node["value"], "'exists' takes no value", "remove the value")
        return " exists"
    if "value" not in node:
        raise _bad(vpath, None, f"{op!r} needs a value", "add a value")
    value = node["value"]
    if op in ("in", "not_in"):
        return f" {OP_TEXT[op]} {_list_text(value, vpath)}"
    if op == "between":
        if not _is_seq(value) or len(value) != 2:
            raise _bad(vpath, value, "'between' needs a list of two values", "write [low, high]")
        return f" between {_scalar_text(value[0], vpath + '[0]')} and {_scalar_text(value[1], vpath + '[1]')}"
    if op in ("within", "older_than"):
        return f" {op} {_duration_text(value, vpath)}"
    return f" {OP_TEXT[op]} {_scalar_text(value, vpath)}"


def _event(ev: Any, path: str) -> str:
    if not isinstance(ev, Mapping):
        raise _bad(path, ev, "not an event description", 'write {"kind": "purchase", "agg": "count"}')
    for k in ev:
        if k not in ("kind", "agg", "window", "where"):
            raise _bad(_join(path, str(k)), ev[k], f"unexpected key {k!r}", "an event has kind, agg, window, where")
    kind = _name_text(ev.get("kind"), _join(path, "kind"), "an interaction kind")
    agg = ev.get("agg")
    if agg not in AGGS:
        guess = _close(str(agg), AGGS)
        hint = f'did you mean "{guess[0]}"? ' if guess else ""
        raise _bad(_join(path, "agg"), agg, f"unknown aggregate {agg!r}", f"{hint}use one of {', '.join(AGGS)}")
    window = ev.get("window")
    window_text = "" if window is None else _duration_text(window, _join(path, "window"), _WINDOW)
    where = ev.get("where")
    filters = ""
    if where is not None:
        wpath = _join(path, "where")
        if not _is_seq(where):
            raise _bad(
                wpath, where, "not a list of filters", 'write [{"field": "channel", "op": "eq", "value": "web"}]'
            )
        parts = []
        for i, f in enumerate(where):
            fpath = f"{wpath}[{i}]"
            if not isinstance(f, Mapping) or "field" not in f:
                raise _bad(fpath, f, "not a filter", 'write {"field": "category", "op": "eq", "value": "shoes"}')
            for k in f:
                if k not in ("field", "op", "value"):
                    raise _bad(
                        _join(fpath, str(k)), f[k], f"unexpected key {k!r} in a filter", "a filter has field, op, value"
                    )
            parts.append(_field_name(f["field"], _join(fpath, "field")) + _predicate(f, fpath))
        if parts:
            filters = "[" + ", ".join(parts) + "]"
    return f"{kind}{filters}.{agg}({window_text})"


def _condition(node: Mapping[str, Any], path: str) -> str:
    here = _join(path, "condition")
    name = node["condition"]
    if name in _BUILTIN_CALLS:
        head = f"`{name}`"  # a plain segment(...)/consent(...) is the built-in condition
    else:
        head = _name_text(name, here, "a condition name")
    args = node.get("args")
    apath = _join(path, "args")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise _bad(apath, args, "not an object", 'write args as an object, e.g. {"min": 4}')
    parts = []
    for key, value in args.items():
        kpath = _join(apath, str(key))
        text = _list_text(value, kpath) if _is_seq(value) else _scalar_text(value, kpath)
        parts.append(f"{_name_text(key, kpath, 'an argument name')}={text}")
    return f"{head}({', '.join(parts)})"
