"""The rule text syntax: parse text into the tree, print it back, and say clearly what is wrong."""

from __future__ import annotations

import subprocess
import sys
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecrm_core.errors import ValidationError
from ecrm_core.rules.text import (
    KEYWORDS,
    MAX_DEPTH,
    RuleSyntaxError,
    format_caret,
    parse,
    parse_with_positions,
    to_text,
)


def f(field: str, op: str = "eq", value: Any = 1) -> dict[str, Any]:
    node: dict[str, Any] = {"field": field, "op": op}
    if op != "exists":
        node["value"] = value
    return node


def ev(
    kind: str, agg: str, op: str, value: Any, window: str | None = None, where: list[Any] | None = None
) -> dict[str, Any]:
    e: dict[str, Any] = {"kind": kind, "agg": agg}
    if window is not None:
        e["window"] = window
    if where is not None:
        e["where"] = where
    return {"event": e, "op": op, "value": value}


A, B, C, D = f("a"), f("b"), f("c"), f("d")

# ---------------------------------------------------------------------------
# parsing: every construct
# ---------------------------------------------------------------------------
PARSE_CASES: list[tuple[str, dict[str, Any]]] = [
    # the docs example
    (
        'purchase.count(90d) >= 3 and purchase.sum(90d) > 100 and country in ("KR", "JP")',
        {
            "all": [
                {"event": {"kind": "purchase", "agg": "count", "window": "90d"}, "op": "ge", "value": 3},
                {"event": {"kind": "purchase", "agg": "sum", "window": "90d"}, "op": "gt", "value": 100},
                {"field": "country", "op": "in", "value": ["KR", "JP"]},
            ]
        },
    ),
    # comparison operators
    ("x == 1", f("x", "eq", 1)),
    ("x = 1", f("x", "eq", 1)),
    ("x != 1", f("x", "ne", 1)),
    ("x < 1", f("x", "lt", 1)),
    ("x <= 1", f("x", "le", 1)),
    ("x > 1", f("x", "gt", 1)),
    ("x >= 1", f("x", "ge", 1)),
    ("x==1", f("x", "eq", 1)),
    ('x in ("a", "b")', f("x", "in", ["a", "b"])),
    ('x in ["a", "b"]', f("x", "in", ["a", "b"])),
    ('x in ("KR")', f("x", "in", ["KR"])),
    ("x in ()", f("x", "in", [])),
    ("x in (1, 2.5)", f("x", "in", [1, 2.5])),
    ('x not in ("a")', f("x", "not_in", ["a"])),
    ("x between 1 and 5", f("x", "between", [1, 5])),
    ('created_at between "2024-01-01" and "2024-12-31"', f("created_at", "between", ["2024-01-01", "2024-12-31"])),
    ('email contains "@example"', f("email", "contains", "@example")),
    ('name starts_with "Kim"', f("name", "starts_with", "Kim")),
    ("phone exists", {"field": "phone", "op": "exists"}),
    ("created_at within 30d", f("created_at", "within", "30d")),
    ("created_at older_than 2w", f("created_at", "older_than", "2w")),
    ("created_at within 12h", f("created_at", "within", "12h")),
    ("created_at within 007D", f("created_at", "within", "7d")),
    # values
    ("x == true", f("x", "eq", True)),
    ("x == FALSE", f("x", "eq", False)),
    ("x == -3", f("x", "eq", -3)),
    ("x == 4.5", f("x", "eq", 4.5)),
    ("x == -0.25", f("x", "eq", -0.25)),
    ("x == 1e3", f("x", "eq", 1000.0)),
    ("x == 1.5E-3", f("x", "eq", 0.0015)),
    ("x == 12345678901234567890123", f("x", "eq", 12345678901234567890123)),
    ('x == "K\\"R"', f("x", "eq", 'K"R')),
    ("x == 'K\"R'", f("x", "eq", 'K"R')),
    ("x == 'it\\'s'", f("x", "eq", "it's")),
    ('x == "a\\\\b\\n\\t\\u00e9\\/"', f("x", "eq", "a\\b\n\té/")),
    ('x == "\\ud83d\\ude00"', f("x", "eq", "\U0001f600")),
    ('x == "서울 -- not a comment"', f("x", "eq", "서울 -- not a comment")),
    ('x == ""', f("x", "eq", "")),
    # names
    ('attributes.country == "KR"', f("attributes.country", "eq", "KR")),
    ("Country == 1", f("Country", "eq", 1)),
    ("`and` == 1", f("and", "eq", 1)),
    ("`first name` exists", {"field": "first name", "op": "exists"}),
    ("`a.b.c` == 1", f("a.b.c", "eq", 1)),
    ("`a b`.`c` == 1", f("a b.c", "eq", 1)),
    ("android == 1", f("android", "eq", 1)),
    ("nothing == 1", f("nothing", "eq", 1)),
    ("x_in == 1", f("x_in", "eq", 1)),
    # events
    ("purchase.count() >= 1", ev("purchase", "count", "ge", 1)),
    ("purchase.count(90d) >= 1", ev("purchase", "count", "ge", 1, "90d")),
    ("purchase.count(210d..30d) >= 1", ev("purchase", "count", "ge", 1, "210d..30d")),
    ("purchase.avg(1w) between 10 and 20.5", ev("purchase", "avg", "between", [10, 20.5], "1w")),
    ("purchase.first() within 30d", ev("purchase", "first", "within", "30d")),
    ("purchase.last() older_than 180d", ev("purchase", "last", "older_than", "180d")),
    ("`checkout.completed`.count() >= 1", ev("checkout.completed", "count", "ge", 1)),
    ("`and`.sum() > 0", ev("and", "sum", "gt", 0)),
    (
        'purchase[category == "shoes", channel == "web"].count(30d) >= 1',
        ev(
            "purchase",
            "count",
            "ge",
            1,
            "30d",
            [f("category", "eq", "shoes"), f("channel", "eq", "web")],
        ),
    ),
    (
        'purchase[properties.size in ("L", "XL"), amount > 10, coupon exists].sum() > 100',
        ev(
            "purchase",
            "sum",
            "gt",
            100,
            where=[f("properties.size", "in", ["L", "XL"]), f("amount", "gt", 10), {"field": "coupon", "op": "exists"}],
        ),
    ),
    # calls
    ('segment("vip")', {"segment": "vip"}),
    ("segment('vip')", {"segment": "vip"}),
    ("segment(vip)", {"segment": "vip"}),
    ("consent(email)", {"consent": "email"}),
    ('consent("email")', {"consent": "email"}),
    ('consent("email:news")', {"consent": "email:news"}),
    ("consent(`email`)", {"consent": "email"}),
    ('rfm(min=4, label="x")', {"condition": "rfm", "args": {"min": 4, "label": "x"}}),
    ("rfm()", {"condition": "rfm", "args": {}}),
    ('rfm(tags=["a", "b"], on=true)', {"condition": "rfm", "args": {"tags": ["a", "b"], "on": True}}),
    ("rfm(`max score`=5)", {"condition": "rfm", "args": {"max score": 5}}),
    ("`segment`(x=1)", {"condition": "segment", "args": {"x": 1}}),
    ("`stats.rfm`(min=4)", {"condition": "stats.rfm", "args": {"min": 4}}),
    ("`not`()", {"condition": "not", "args": {}}),
    # structure and precedence
    ("a == 1 and b == 1 and c == 1", {"all": [A, B, C]}),
    ("a == 1 or b == 1 or c == 1", {"any": [A, B, C]}),
    ("a == 1 or b == 1 and c == 1", {"any": [A, {"all": [B, C]}]}),
    ("a == 1 and b == 1 or c == 1", {"any": [{"all": [A, B]}, C]}),
    ("(a == 1 or b == 1) and c == 1", {"all": [{"any": [A, B]}, C]}),
    ("not a == 1 and b == 1", {"all": [{"not": A}, B]}),
    ("not (a == 1 and b == 1)", {"not": {"all": [A, B]}}),
    ("not not a == 1", {"not": {"not": A}}),
    ("((a == 1))", A),
    ("(a == 1) and (b == 1)", {"all": [A, B]}),
    ("(a == 1 and b == 1) and c == 1", {"all": [{"all": [A, B]}, C]}),
    ("a == 1 or (b == 1 or c == 1)", {"any": [A, {"any": [B, C]}]}),
    ("x between 1 and 5 and a == 1", {"all": [f("x", "between", [1, 5]), A]}),
    (
        'a == 1 and not segment("vip") or consent(sms)',
        {"any": [{"all": [A, {"not": {"segment": "vip"}}]}, {"consent": "sms"}]},
    ),
    # keywords are case-insensitive
    (
        "X NOT IN (1) And Not y EXISTS oR z BETWEEN 1 AND 2 or w WITHIN 1d",
        {
            "any": [
                {"all": [f("X", "not_in", [1]), {"not": {"field": "y", "op": "exists"}}]},
                f("z", "between", [1, 2]),
                f("w", "within", "1d"),
            ]
        },
    ),
    # comments and layout
    (
        "-- who is a VIP\npurchase.count(90d) >= 3 -- frequent\n\tAND\r\n   country == 'KR' --",
        {"all": [ev("purchase", "count", "ge", 3, "90d"), f("country", "eq", "KR")]},
    ),
    ("  x\n==\n1  ", f("x", "eq", 1)),
]


@pytest.mark.parametrize(("text", "tree"), PARSE_CASES, ids=[c[0][:40] for c in PARSE_CASES])
def test_parse(text: str, tree: dict[str, Any]) -> None:
    assert parse(text) == tree


@pytest.mark.parametrize(("text", "tree"), PARSE_CASES, ids=[c[0][:40] for c in PARSE_CASES])
def test_parsed_trees_print_and_parse_back(text: str, tree: dict[str, Any]) -> None:
    assert parse(to_text(tree)) == tree


def test_numbers_have_their_python_types() -> None:
    assert type(parse("x == 3")["value"]) is int
    assert type(parse("x == 3.0")["value"]) is float
    assert type(parse("x == 1e2")["value"]) is float
    assert type(parse("x == true")["value"]) is bool


def test_exists_has_no_value_and_windowless_events_no_window_key() -> None:
    assert "value" not in parse("x exists")
    event = parse("purchase.count() exists")["event"]
    assert event == {"kind": "purchase", "agg": "count"}


CANONICAL = [
    'purchase.count(90d) >= 3 and purchase.sum(90d) > 100 and country in ("KR", "JP")',
    'purchase[category == "shoes", channel == "web"].count(30d) >= 1',
    'purchase.last() older_than 180d and not segment("vip")',
    'consent(email) and lifecycle_stage in ("active", "new")',
    "a == 1 or b == 2 and c == 3",
    "(a == 1 or b == 2) and c == 3",
    "not (a == 1 or b == 2)",
    "not (a == 1 and b == 2)",
    "not not a exists",
    "(a == 1 and b == 2) and c == 3",
    "a == 1 or (b == 2 or c == 3)",
    'x between -1.5 and 2 or y not in () or z contains "\\"" or w starts_with "é"',
    "`and` == true and `checkout.completed`.count(210d..30d) < 2 and `first name` != false",
    'rfm(min=4, label="x", tags=("a", "b")) and `segment`() and consent("email:news")',
    "x == 1e+16 and y == 0.1 and z == -3",
    'attributes.country == "KR" and `a.b.c` exists',
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_text_round_trips(text: str) -> None:
    assert to_text(parse(text)) == text


def test_non_canonical_text_prints_canonically() -> None:
    text = "-- c\nX  =  'KR' AND ((y IN [1])) And NOT z Exists OR consent(\"email\") or segment(vip)"
    assert to_text(parse(text)) == 'X == "KR" and y in (1) and not z exists or consent(email) or segment("vip")'


# ---------------------------------------------------------------------------
# positions
# ---------------------------------------------------------------------------
def _dicts(node: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            out += _dicts(v)
    elif isinstance(node, list):
        for v in node:
            out += _dicts(v)
    return out


def test_positions_point_at_every_node() -> None:
    text = 'a == 1 and\n  (b == 2 or purchase[channel == "web"].count() > 1)\n  and rfm(min=4) and not segment("x")'
    tree, positions = parse_with_positions(text)
    anyn = tree["all"][1]
    cmp_ = anyn["any"][1]
    expected = {
        id(tree): (1, 1),
        id(tree["all"][0]): (1, 1),
        id(anyn): (2, 4),
        id(anyn["any"][0]): (2, 4),
        id(cmp_): (2, 14),
        id(cmp_["event"]): (2, 14),
        id(cmp_["event"]["where"][0]): (2, 23),
        id(tree["all"][2]): (3, 7),
        id(tree["all"][3]): (3, 22),
        id(tree["all"][3]["not"]): (3, 26),
    }
    for key, pos in expected.items():
        assert positions[key] == pos
    # every dict that is a node, an event or a filter has a position (args objects need none)
    nodes = [d for d in _dicts(tree) if d is not tree["all"][2]["args"]]
    assert all(id(d) in positions for d in nodes)


# ---------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------
def test_to_text_docs_example() -> None:
    tree = PARSE_CASES[0][1]
    assert to_text(tree) == PARSE_CASES[0][0]


@pytest.mark.parametrize(
    ("tree", "text"),
    [
        ({"all": [{"any": [A, B]}, C]}, "(a == 1 or b == 1) and c == 1"),
        ({"any": [{"all": [A, B]}, C]}, "a == 1 and b == 1 or c == 1"),
        ({"any": [A, {"any": [B, C]}]}, "a == 1 or (b == 1 or c == 1)"),
        ({"all": [{"all": [A, B]}, C]}, "(a == 1 and b == 1) and c == 1"),
        ({"not": {"all": [A, B]}}, "not (a == 1 and b == 1)"),
        ({"not": {"any": [A, B]}}, "not (a == 1 or b == 1)"),
        ({"not": {"not": A}}, "not not a == 1"),
        ({"all": [{"not": A}, {"not": {"any": [B, C]}}]}, "not a == 1 and not (b == 1 or c == 1)"),
        ({"all": [A]}, "a == 1"),  # one child means the child
        ({"any": [{"all": [A]}, B]}, "a == 1 or b == 1"),
    ],
)
def test_to_text_parenthesises_only_where_needed(tree: dict[str, Any], text: str) -> None:
    assert to_text(tree) == text


@pytest.mark.parametrize(
    ("tree", "text"),
    [
        (f("and"), "`and` == 1"),
        (f("AND"), "`AND` == 1"),
        (f("True"), "`True` == 1"),
        (f("first name"), "`first name` == 1"),
        (f("a.b.c"), "`a.b.c` == 1"),
        (f("in.x"), "`in.x` == 1"),
        (f("1st"), "`1st` == 1"),
        (f("x", "eq", 'say "hi" \\ \n 한국'), 'x == "say \\"hi\\" \\\\ \\n 한국"'),
        (f("x", "eq", 0.1), "x == 0.1"),
        (f("x", "eq", 1e16), "x == 1e+16"),
        (f("x", "eq", -2.0), "x == -2.0"),
        (f("x", "in", ("KR",)), 'x in ("KR")'),
        (f("x", "between", (1, 2)), "x between 1 and 2"),
        (ev("checkout.completed", "count", "ge", 1), "`checkout.completed`.count() >= 1"),
        ({"segment": 'a"b'}, 'segment("a\\"b")'),
        ({"consent": "email"}, "consent(email)"),
        ({"consent": "email:news"}, 'consent("email:news")'),
        ({"consent": "or"}, 'consent("or")'),
        ({"condition": "rfm"}, "rfm()"),
        ({"condition": "consent", "args": {"x": 1}}, "`consent`(x=1)"),
        ({"condition": "rfm", "args": {"and": 1, "b": [1, "x"]}}, '`rfm`(`and`=1, b=(1, "x"))'.replace("`rfm`", "rfm")),
        (
            ev("purchase", "count", "ge", 1, None, []),
            "purchase.count() >= 1",
        ),
        ({"event": {"kind": "p", "agg": "sum", "window": None, "where": None}, "op": "gt", "value": 1}, "p.sum() > 1"),
    ],
)
def test_to_text_names_values_and_calls(tree: dict[str, Any], text: str) -> None:
    assert to_text(tree) == text


def test_to_text_accepts_mappings_and_tuples() -> None:
    tree = MappingProxyType(
        {
            "all": (
                MappingProxyType({"field": "x", "op": "in", "value": ("a", "b")}),
                {"event": MappingProxyType({"kind": "p", "agg": "count", "where": (f("c"),)}), "op": "eq", "value": 1},
                {"condition": "rfm", "args": MappingProxyType({"t": ("x",)})},
            )
        }
    )
    assert to_text(tree) == 'x in ("a", "b") and p[c == 1].count() == 1 and rfm(t=("x"))'


@pytest.mark.parametrize(
    ("tree", "path", "problem"),
    [
        ({"all": [A, B, {"any": [{"field": "x", "op": "zz", "value": 1}]}]}, "all[2].any[0].op", "unknown operator"),
        ({"any": [A, {"not": {"field": "x", "op": "eq"}}]}, "any[1].not.value", "needs a value"),
        (f("x", "within", "90x"), "value", "not a duration"),
        (f("x", "within", "0d"), "value", "not a duration"),
        (f("x", "in", "KR"), "value", "not a list"),
        (f("x", "between", [1, 2, 3]), "value", "two values"),
        (f("x", "eq", None), "value", "no null"),
        (f("x", "eq", float("nan")), "value", "not a finite number"),
        (f("x", "eq", float("inf")), "value", "not a finite number"),
        (f("x", "eq", {"a": 1}), "value", "not a value"),
        (f("x", "in", ["a", [1]]), "value[1]", "not a value"),
        ({"field": "x", "op": "exists", "value": 3}, "value", "takes no value"),
        (f("a`b"), "field", "backtick"),
        (f("a\nb"), "field", "line break"),
        (f(""), "field", "not a field name"),
        (f(3), "field", "not a field name"),  # type: ignore[arg-type]
        ({"event": {"kind": "p", "agg": "cnt"}, "op": "ge", "value": 1}, "event.agg", "unknown aggregate"),
        ({"event": {"kind": "p", "agg": "count", "window": "9"}, "op": "ge", "value": 1}, "event.window", "duration"),
        ({"event": {"kind": "p", "agg": "count", "color": 1}, "op": "ge", "value": 1}, "event.color", "unexpected key"),
        (
            ev("p", "count", "ge", 1, None, [f("a"), {"field": "b", "op": "??"}]),
            "event.where[1].op",
            "unknown operator",
        ),
        (ev("p", "count", "ge", 1, None, ["x"]), "event.where[0]", "not a filter"),
        ({"all": []}, "all", "non-empty list"),
        ({"any": "ab"}, "any", "non-empty list"),
        ({"all": [A, "x"]}, "all[1]", "not a condition"),
        ({"field": "x", "op": "eq", "value": 1, "note": "?"}, "note", "unexpected key"),
        ({"field": "x", "segment": "y"}, "rule", "exactly one of"),
        ({}, "rule", "exactly one of"),
        ({"segment": 3}, "segment", "segment name"),
        ({"condition": "rfm", "args": [1]}, "args", "not an object"),
        ({"condition": "rfm", "args": {"a": None}}, "args.a", "no null"),
        ({"condition": "", "args": {}}, "condition", "condition name"),
    ],
)
def test_to_text_rejects_unprintable_shapes_with_a_path(tree: Any, path: str, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        to_text(tree)
    assert info.value.field == path
    assert problem in info.value.problem


def test_to_text_refuses_too_deep_and_cyclic_trees() -> None:
    deep: dict[str, Any] = A
    for _ in range(MAX_DEPTH):
        deep = {"not": deep}
    assert parse(to_text(deep)) == deep  # 64 levels: fine both ways
    with pytest.raises(ValidationError, match="levels deep"):
        to_text({"not": deep})
    very_deep: dict[str, Any] = A
    for _ in range(10_000):
        very_deep = {"all": [very_deep, B]}
    with pytest.raises(ValidationError, match="levels deep"):
        to_text(very_deep)
    cyclic: dict[str, Any] = {"all": [A]}
    cyclic["all"].append(cyclic)
    with pytest.raises(ValidationError, match="levels deep"):
        to_text(cyclic)


def test_to_text_of_alternating_nesting_at_the_limit_parses() -> None:
    tree: dict[str, Any] = A
    for i in range(MAX_DEPTH):
        tree = {"all" if i % 2 else "any": [f(f"x{i}"), tree]}
    text = to_text(tree)
    assert parse(text) == tree
    assert to_text(parse(text)) == text


# ---------------------------------------------------------------------------
# syntax errors
# ---------------------------------------------------------------------------
ERROR_CASES: list[tuple[str, int, int, str, str]] = [
    # text, line, column, in the problem, in the fix
    ("purchase.count(90d) >== 3", 1, 21, '">==" is not an operator', 'did you mean ">="?'),
    ("x => 3", 1, 3, '"=>" is not an operator', 'did you mean ">="?'),
    ("x <> 3", 1, 3, '"<>" is not an operator', 'did you mean "!="?'),
    ('country inn ("KR")', 1, 9, 'unknown operator "inn"', 'did you mean "in"?'),
    ('name startswith "K"', 1, 6, 'unknown operator "startswith"', 'did you mean "starts_with"?'),
    ("phone exist", 1, 7, 'unknown operator "exist"', 'did you mean "exists"?'),
    ("purchase.cnt(90d) >= 3", 1, 10, 'unknown aggregate "cnt"', 'did you mean "count"?'),
    ("purchase.COUNT() >= 3", 1, 10, 'unknown aggregate "COUNT"', 'did you mean "count"?'),
    ('x == "abc', 1, 6, "unclosed string", 'matching "'),
    ("x == 'abc", 1, 6, "unclosed string", "matching '"),
    ('x == "a\nb"', 1, 6, "unclosed string", "\\n"),
    ("x `a == 1", 1, 3, "unclosed name", "backtick"),
    ("`` == 1", 1, 1, "unclosed name", "backtick"),
    ("(x == 1 and (y == 2)", 1, 1, 'this "(" is never closed', 'add the missing ")"'),
    ("x == 1 or (y == 2", 1, 11, 'this "(" is never closed', 'add the missing ")"'),
    ("x in (1, 2", 1, 6, 'this "(" is never closed', 'add the missing ")"'),
    ("x == 1)", 1, 7, 'this ")" has no matching "("', "remove it"),
    ("x ==", 1, 5, 'missing value after "=="', 'e.g. country == "KR"'),
    ("x == and y == 1", 1, 6, 'missing value after "=="', "write a value"),
    ("x between 1 and", 1, 16, 'missing value after "and"', "write a value"),
    ("x contains", 1, 11, 'missing value after "contains"', "write a value"),
    ("purchase.count(90x) > 1", 1, 16, 'bad duration "90x"', "whole number followed by h, d or w, e.g. 90d"),
    ("purchase.count(90) > 1", 1, 16, 'bad duration "90"', "whole number followed by h, d or w"),
    ("purchase.count(90d..3x) > 1", 1, 21, 'bad duration "3x"', "whole number followed by h, d or w"),
    ("x within 90", 1, 10, 'bad duration "90"', "whole number followed by h, d or w"),
    ("x older_than 1.5d", 1, 14, 'bad duration "1.5d"', "whole number followed by h, d or w"),
    ("x within -3d", 1, 10, 'bad duration "-3d"', "whole number followed by h, d or w"),
    ("x within days", 1, 10, 'bad duration "days"', "whole number followed by h, d or w"),
    ("x within 0d", 1, 10, 'the duration "0d" is zero', "at least 1"),
    ("x within", 1, 9, 'missing duration after "within"', "e.g. 90d"),
    ("and == 1", 1, 1, '"and" is a keyword, not a name', "backticks: `and`"),
    ("x == 1 or exists == 2", 1, 11, '"exists" is a keyword', "backticks: `exists`"),
    ("a.b.c == 1", 1, 4, "expected a comparison operator", "backticks"),
    ("checkout.completed.count() >= 1", 1, 19, "expected a comparison operator", "`checkout.completed`.count()"),
    ("x == 30d", 1, 6, "expected a value", "a duration only follows within / older_than"),
    ("x == ture", 1, 6, "expected a value", 'did you mean "true"?'),
    ("x == KR", 1, 6, 'got the name "KR"', 'text values go in quotes: "KR"'),
    ("x == nan", 1, 6, '"nan" is not a number', "finite number"),
    ("x == Infinity", 1, 6, '"Infinity" is not a number', "finite number"),
    ("x == null", 1, 6, "no null", "not country exists"),
    ("x == `KR`", 1, 6, "expected a value", 'double quotes: "KR"'),
    ("x == 1e999", 1, 6, "too large", "smaller number"),
    ("x == 1.5.3", 1, 6, 'bad number "1.5.3"', "numbers are written like"),
    ("x == 12abc", 1, 6, 'bad number "12abc"', "numbers are written like"),
    ('x == "\\q"', 1, 7, 'invalid escape "\\q"', "\\uXXXX"),
    ('x == "ab\\u12"', 1, 9, 'invalid escape "\\u12"', "\\uXXXX"),
    ("rfm(4)", 1, 5, "rfm(...) takes keyword arguments only", "rfm(min=4)"),
    ("rfm(min=4, x)", 1, 12, "keyword arguments only", "name the argument"),
    ("segmnt(vip)", 1, 8, "did you mean segment(...)?", "name the argument"),
    ("rfm(a=1, a=2)", 1, 10, 'the argument "a" is given twice', "once"),
    ('segment("vip", "x")', 1, 16, "takes exactly one segment name", 'segment("vip")'),
    ("segment()", 1, 9, "takes exactly one segment name", 'segment("vip")'),
    ('segment(name="vip")', 1, 9, "without a keyword", 'segment("vip")'),
    ("segment(1)", 1, 9, "must be text", 'segment("vip")'),
    ("consent(true)", 1, 9, "the channel must be text", "consent(email)"),
    ("x == 1 adn y == 2", 1, 8, 'expected "and", "or" or the end of the rule', 'did you mean "and"?'),
    ("x == 1 y == 2", 1, 8, 'got the name "y"', "join conditions with and / or"),
    ("x == 1 && y == 2", 1, 8, "unexpected character '&'", 'did you mean "and"?'),
    ("x == 1 || y == 2", 1, 8, "unexpected character '|'", 'did you mean "or"?'),
    ("x == 1; y == 2", 1, 7, "unexpected character ';'", "join conditions"),
    ("x == \u201cKR\u201d", 1, 6, "unexpected character", "straight double quotes"),
    ("x == 1 @", 1, 8, "unexpected character '@'", "backticks"),
    ("", 1, 1, "the rule is empty", "write a condition"),
    ("  -- just a comment\n", 1, 1, "the rule is empty", "write a condition"),
    ("x == 1 and", 1, 11, 'the rule ends after "and"', "add a condition"),
    ("x == 1 -- c\n  or\n", 2, 5, 'the rule ends after "or"', "add a condition"),
    ("not", 1, 4, 'the rule ends after "not"', "add a condition"),
    ("country", 1, 8, 'the rule ends after "country"; expected a comparison operator', "complete the comparison"),
    ('country "KR"', 1, 9, "missing operator", "write an operator"),
    ("x between 1 5", 1, 13, "between needs two values joined by and", "amount between 10 and 20"),
    ('x in "KR"', 1, 6, "expected a list of values in parentheses", 'in ("KR")'),
    ("x not like 1", 1, 7, '"not" after a name only forms "not in"', "not in front"),
    ("x == 1 and\n  y => 2", 2, 5, '"=>" is not an operator', 'did you mean ">="?'),
    ("purchase[].count()", 1, 10, "expected a filter", "purchase[category =="),
    ("purchase[a == 1]", 1, 17, 'expected "."', "name the aggregate"),
    ("purchase[a == 1 b == 2].count()", 1, 17, 'expected "," or "]"', 'write "," or "]" here'),
    ("purchase.count(90d or x == 1", 1, 20, 'expected ")" or ".."', 'close the window with ")"'),
    ("purchase.count >= 1 and purchase.count", 1, 39, 'the rule ends after "count"', "complete the comparison"),
    ("purchase[a == 1].count x", 1, 24, 'expected "("', "e.g. count() or count(90d)"),
    ("x. == 1", 1, 4, "expected a name", 'write a name after "."'),
    ("x == (1)", 1, 6, "expected a value", "only follows in / not in"),
    ("x == 1 and (", 1, 13, 'the rule ends after "("', "add a condition"),
    ("x\0 == 1", 1, 2, "NUL", "remove it"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "problem", "fix"), ERROR_CASES, ids=[c[0][:30] for c in ERROR_CASES]
)
def test_syntax_errors(text: str, line: int, column: int, problem: str, fix: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse(text)
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert problem in err.problem, str(err)
    assert fix in err.fix, str(err)
    assert err.field == "rule" and err.value == text
    assert isinstance(err, ValidationError)
    # the message shows the offending line and a caret under the column
    message = str(err)
    src = text.split("\n")[line - 1]
    shown = "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in src)
    assert f"\n{shown}\n{' ' * (column - 1)}^\n" in message
    assert f"line {line}, column {column}" in message
    assert message.endswith(err.fix)


@pytest.mark.parametrize(
    ("text", "char"),
    [
        ("purchase.count(90d) >== 3", ">"),
        ('country inn ("KR")', "i"),
        ("purchase.cnt(90d) >= 1", "c"),
        ('x == "abc', '"'),
        ("x == 1)", ")"),
        ("x within 1.5d", "1"),
        ("rfm(a=1, a=2)", "a"),
    ],
)
def test_caret_points_at_the_culprit(text: str, char: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse(text)
    err = info.value
    src, caret = err.context.split("\n")
    assert src == text.split("\n")[err.line - 1]
    assert src[caret.index("^")] == char


def test_error_message_format() -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse("purchase.count(90d) >== 3")
    assert str(info.value) == (
        'rule: ">==" is not an operator; expected a comparison operator (==, !=, <, <=, >, >=, in, not in, '
        "between, contains, starts_with, exists, within, older_than) at line 1, column 21\n"
        "purchase.count(90d) >== 3\n"
        "                    ^\n"
        'did you mean ">="?'
    )


def test_rule_syntax_error_keeps_its_position_under_a_prefix() -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse("x ==")
    moved = info.value.at("segments[2]")
    assert isinstance(moved, RuleSyntaxError)
    assert moved.field == "segments[2].rule"
    assert (moved.line, moved.column) == (1, 5)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        parse(b"x == 1")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# abuse guards
# ---------------------------------------------------------------------------
def test_too_long() -> None:
    text = "x == 1 or " * 2001 + "x == 1"
    with pytest.raises(RuleSyntaxError) as info:
        parse(text)
    assert "longer than 20,000 characters" in info.value.problem
    assert (info.value.line, info.value.column) == (1, 20_001)


def test_deep_parentheses_fail_fast_and_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import ecrm_core.rules.parser as parser_module

    def never() -> None:
        raise AssertionError("the grammar ran: too-deep nesting must be refused by the pre-check")

    # fast by construction (no timing assertion): refused by the linear pre-scan, before the grammar
    monkeypatch.setattr(parser_module, "_machinery", never)
    text = "(" * 9_000 + "x == 1" + ")" * 9_000
    with pytest.raises(RuleSyntaxError) as info:
        parse(text)
    assert f"deeper than {MAX_DEPTH} levels" in info.value.problem
    assert (info.value.line, info.value.column) == (1, MAX_DEPTH + 1)
    assert len(str(info.value)) < 1_000  # the caret line is a window, not 18,000 characters


def test_deep_not_fails_clearly() -> None:
    with pytest.raises(RuleSyntaxError, match="deeper than 64"):
        parse("not " * 4_000 + "x == 1")
    with pytest.raises(RuleSyntaxError, match="deeper than 64"):
        parse("not (" * 40 + "x == 1" + ")" * 40)


def test_nesting_up_to_the_limit_parses() -> None:
    assert parse("(" * MAX_DEPTH + "x == 1" + ")" * MAX_DEPTH) == f("x")
    tree = parse("not " * MAX_DEPTH + "x == 1")
    for _ in range(MAX_DEPTH):
        tree = tree["not"]
    assert tree == f("x")
    # calls, lists and filters inside do not count as levels
    inner = 'purchase[c in ("a")].count(9d) == 1 and rfm(t=(1))'
    assert parse("(" * MAX_DEPTH + inner + ")" * MAX_DEPTH) == parse(inner)
    # and/or end a run of not
    assert parse(" and ".join(["not " * 40 + "x == 1"] * 3))["all"][2] == parse("not " * 40 + "x == 1")


def test_brackets_inside_strings_comments_and_names_do_not_count() -> None:
    text = 'x == "' + "(" * 100 + '" -- ' + "(" * 100 + "\n and `" + "(" * 100 + "` == 1"
    assert parse(text) == {"all": [f("x", "eq", "(" * 100), f("(" * 100)]}


def test_import_is_cheap() -> None:
    code = "import sys, ecrm_core, ecrm_core.rules.text; assert 'lark' not in sys.modules, 'lark imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# format_caret
# ---------------------------------------------------------------------------
def test_format_caret() -> None:
    assert format_caret("a == 1\nbb >== 2", 2, 4) == "bb >== 2\n   ^"
    assert format_caret("x ==", 1, 5) == "x ==\n    ^"
    assert format_caret("\tx == y", 1, 3) == "\tx == y\n\t ^"
    assert format_caret("名前 == x", 1, 4) == "名前 == x\n     ^"
    assert format_caret("x", 5, 1) == "\n^"
    long = "a" * 150 + "X" + "b" * 150
    src, caret = format_caret(long, 1, 151).split("\n")
    assert len(src) < 110 and src[len(caret) - 1] == "X"


# ---------------------------------------------------------------------------
# the round trip, for random canonical trees
# ---------------------------------------------------------------------------
_plain = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
_odd_names = st.sampled_from(
    [
        *sorted(KEYWORDS),
        "AND",
        "Or",
        "NOT",
        "True",
        "Between",
        "checkout.completed",
        "a b",
        "名前",
        "1abc",
        "x-y",
        "segment",
        "consent",
        "count",
        " lead",
        "a.b.c",
        "'q'",
        '"dq"',
        "--x",
        "x\\y",
        "é",
    ]
)
_any_name = st.text(
    alphabet=st.characters(blacklist_characters="`\n\r\x00", blacklist_categories=("Cs",)), min_size=1, max_size=6
)
names = st.one_of(_plain, _odd_names, _any_name)
field_names = st.one_of(names, st.builds(lambda a, b: f"{a}.{b}", _plain, _plain))
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['"', "'", "\\", '\\"', "\\u0041", "--", "`", "\n", "\t", "\x00", "\u2028", "é한😀", "", " "]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(texts, numbers, st.booleans())
durations = st.builds(lambda n, u: f"{n}{u}", st.integers(min_value=1, max_value=10**6), st.sampled_from("hdw"))
windows = st.one_of(durations, st.builds(lambda a, b: f"{a}..{b}", durations, durations))


@st.composite
def predicates(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(
        st.sampled_from(
            [
                "eq",
                "ne",
                "lt",
                "le",
                "gt",
                "ge",
                "in",
                "not_in",
                "between",
                "contains",
                "starts_with",
                "exists",
                "within",
                "older_than",
            ]
        )
    )
    if op == "exists":
        return {"op": op}
    if op in ("in", "not_in"):
        return {"op": op, "value": draw(st.lists(scalars, max_size=4))}
    if op == "between":
        return {"op": op, "value": [draw(scalars), draw(scalars)]}
    if op in ("within", "older_than"):
        return {"op": op, "value": draw(durations)}
    return {"op": op, "value": draw(scalars)}


field_leaves = st.builds(lambda name, p: {"field": name, **p}, field_names, predicates())


@st.composite
def event_leaves(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": draw(names),
        "agg": draw(st.sampled_from(["count", "sum", "avg", "first", "last"])),
    }
    if draw(st.booleans()):
        event["window"] = draw(windows)
    if draw(st.booleans()):
        event["where"] = draw(st.lists(field_leaves, min_size=1, max_size=3))
    return {"event": event, **draw(predicates())}


leaves = st.one_of(
    field_leaves,
    event_leaves(),
    st.builds(lambda s: {"segment": s}, texts),
    st.builds(lambda s: {"consent": s}, st.one_of(names, texts)),
    st.builds(
        lambda name, args: {"condition": name, "args": args},
        names,
        st.dictionaries(names, st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=3),
    ),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda cs: {"all": cs}, st.lists(children, min_size=2, max_size=4)),
        st.builds(lambda cs: {"any": cs}, st.lists(children, min_size=2, max_size=4)),
        st.builds(lambda c: {"not": c}, children),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_round_trip_of_random_trees(tree: dict[str, Any]) -> None:
    text = to_text(tree)
    parsed, positions = parse_with_positions(text)
    assert parsed == tree
    assert to_text(parsed) == text
    assert all(id(d) in positions for d in _dicts(parsed) if not _is_args(d, parsed))


def _is_args(d: dict[str, Any], tree: dict[str, Any]) -> bool:
    return any(n.get("args") is d for n in _dicts(tree) if "condition" in n)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        tree = parse(text)
    except RuleSyntaxError as err:
        assert err.line >= 1 and err.column >= 1
        assert "^" in err.context
    else:
        assert parse(to_text(tree)) == tree
