"""Hostile campaign definitions: refused at save time with a message naming the step or the
line, whichever way they enter (YAML text, a mapping, a Campaign object, REST), nothing stored.

One small corpus per class of defect: YAML alias bombs, huge or odd durations, long chains and
wide fans, deep nesting and non-finite numbers in each free-form field of a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from ecrm_campaigns import plugin
from ecrm_campaigns.model import MAX_STEPS, Campaign, Step, parse_duration
from ecrm_campaigns.text import dump, load
from ecrm_campaigns.validate import MAX_LISTED, CampaignInvalid

from ecrm_core import CRM, AttributeDef
from ecrm_core.errors import ValidationError
from ecrm_core.hookspecs import hookimpl
from ecrm_core.validation import MAX_JSON_DEPTH

from .conftest import Shop

HEAD = "key: k\nname: n\ntrigger: {type: api}\nsteps:\n"


def _base(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"key": "k", "name": "n", "trigger": {"type": "api"}, "steps": list(steps), **top}


def _nest(depth: int, leaf: Any = 1) -> Any:
    """``[[...[leaf]...]]``, ``depth`` lists deep (built iteratively)."""
    out = leaf
    for _ in range(depth):
        out = [out]
    return out


def _lol(levels: int, width: int) -> str:
    lines = ["  - id: a\n    type: update\n    attribute: nick\n    value:\n", "      l0: &l0 [xxxxxxxxxx]\n"]
    for i in range(1, levels):
        lines.append(f"      l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]\n")
    return HEAD + "".join(lines)


# -- 1. YAML aliases and anchors --------------------------------------------------------------

ALIAS_BOMBS = {
    "lists of lists": _lol(9, 10),  # 10^8 leaves if expanded
    "wide": _lol(3, 2000),
    "mapping alias": HEAD
    + "  - id: a\n    type: send\n    channel: capture\n    template: t\n    context:\n"
    + "      a: &a {x: 1, y: 2}\n      b: *a\n",
    "scalar anchor": "key: k\nname: &n hello\ndescription: *n\ntrigger: {type: api}\nsteps:\n  - {id: a, type: exit}\n",
    "anchor alone": "key: k\nname: &n hello\ntrigger: {type: api}\nsteps:\n  - {id: a, type: exit}\n",
    "merge key": HEAD + "  - &s {id: a, type: wait, duration: 1d, next: b}\n  - {<<: *s, id: b, next: c}\n"
    "  - {id: c, type: exit}\n",
    "merge key list": "base: &b {type: api}\nkey: k\nname: n\ntrigger: {<<: [*b, *b]}\nsteps:\n  - {id: a, type: exit}\n",
    "self reference": HEAD + "  - {id: a, type: action, name: x, args: &r {me: [*r]}}\n",
    "anchor on the document": "&doc\nkey: k\nname: n\ntrigger: {type: api}\nsteps:\n  - {id: a, type: exit}\n",
}


@pytest.mark.parametrize("text", ALIAS_BOMBS.values(), ids=list(ALIAS_BOMBS))
def test_yaml_anchors_and_aliases_are_refused(shop: Shop, text: str) -> None:
    with pytest.raises(ValidationError) as err:
        shop.campaigns.save(text)
    e = err.value
    assert e.field == "text" and str(e.value).startswith("line "), str(e)
    assert "YAML anchor" in e.problem or "YAML alias" in e.problem
    assert "anchors (&) and aliases (*) are not accepted" in e.fix
    assert shop.campaigns.list() == []


def test_merge_keys_without_aliases_still_read() -> None:
    c = load(HEAD + "  - {<<: {type: wait, duration: 1d}, id: a, next: b}\n  - {id: b, type: exit}\n")
    assert c.step("a").duration == "1d"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 20, 20_000])
def test_deep_yaml_is_refused_without_recursion(depth: int) -> None:
    text = (
        HEAD
        + "  - {id: a, type: send, channel: capture, template: t, context: {x: "
        + "[" * depth
        + "]" * depth
        + "}}\n"
    )
    with pytest.raises(ValidationError) as err:
        load(text)
    assert err.value.field == "text" and "nested deeper than" in err.value.problem


def test_yaml_date_times_stay_text_and_round_trip() -> None:
    text = "key: k\nname: n\ntrigger:\n  type: schedule\n  at: '2030-01-01T09:00:00+00:00'\n  every: 1d\nsteps:\n- id: a\n  type: exit\n"
    c = load(text)
    assert c.trigger.at is not None and c.trigger.at.year == 2030
    assert dump(c) == text
    unquoted = load(text.replace("'2030-01-01T09:00:00+00:00'", "2030-01-01T09:00:00+00:00"))
    assert unquoted == c
    ctx = load(HEAD + "  - {id: a, type: send, channel: capture, template: t, context: {day: 2030-01-01}}\n")
    assert ctx.step("a").context == {"day": "2030-01-01"}  # JSON data, not a date object


def test_yaml_objects_that_are_not_json_are_refused() -> None:
    for value, says in (("!!binary aGVsbG8=", "not a JSON value"), ("!!set {a, b}", "not a JSON value")):
        with pytest.raises(ValidationError) as err:
            load(HEAD + f"  - {{id: a, type: send, channel: capture, template: t, context: {{x: {value}}}}}\n")
        assert err.value.field == "steps.a.context.x" and says in err.value.problem, str(err.value)


# -- 2. durations, chains, fans ----------------------------------------------------------------

DURATIONS = [
    (10**20, "too long"),
    (10**12, "too long"),
    (-(10**12), "too long"),
    ("999999999999w", "too long"),
    ("1" * 5000 + "s", "not a duration"),
    ("3 fortnights", "not a duration"),
    (1.5, "not a duration"),
    (math.nan, "not a finite number"),
    (math.inf, "not a finite number"),
    (True, "not a duration"),
    ([1], "not a duration"),
]
WHERE = {
    "steps.a.duration": lambda v: _base(
        {"id": "a", "type": "wait", "duration": v, "next": "b"}, {"id": "b", "type": "exit"}
    ),
    "steps.a.timeout": lambda v: _base(
        {"id": "a", "type": "wait", "event": "purchase", "timeout": v, "on_event": "b", "next": "b"},
        {"id": "b", "type": "exit"},
    ),
    "trigger.every": lambda v: {
        **_base({"id": "a", "type": "exit"}),
        "trigger": {"type": "schedule", "at": "2030-01-01T00:00:00+00:00", "every": v},
    },
    "reentry.cooldown": lambda v: _base({"id": "a", "type": "exit"}, reentry={"policy": "cooldown", "cooldown": v}),
    "goal.within": lambda v: _base({"id": "a", "type": "exit"}, goal={"kind": "purchase", "within": v}),
}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize(("value", "says"), DURATIONS, ids=[str(v)[:12] for v, _ in DURATIONS])
def test_bad_durations_are_refused_naming_the_field(where: str, value: Any, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        Campaign.from_dict(WHERE[where](value))
    assert err.value.field == where and says in err.value.problem, str(err.value)


def test_a_negative_wait_is_refused_at_save(shop: Shop) -> None:
    with pytest.raises(CampaignInvalid) as err:
        shop.campaigns.save(WHERE["steps.a.duration"](-5))
    assert err.value.field == "steps.a.duration" and "negative wait" in str(err.value)


def test_whole_second_durations_round_trip(shop: Shop) -> None:
    text = (
        "key: nightly\nname: Nightly\ntrigger:\n  type: schedule\n  at: '2030-01-01T00:00:00+00:00'\n  every: 86400\n"
        "reentry:\n  policy: cooldown\n  cooldown: 604800\nsteps:\n- id: a\n  type: wait\n  duration: 3600\n  next: b\n"
        "- id: b\n  type: exit\n"
    )
    info = shop.campaigns.save(text)
    assert info.definition.trigger.every == 86400 and info.definition.step("a").duration == 3600
    assert shop.campaigns.export("nightly") == text
    assert [c.key for c in shop.campaigns.list()] == ["nightly"]
    assert shop.campaigns.start("nightly").status == "live"
    assert parse_duration("86400", "x").days == 1  # stored by earlier versions as text: still read


def _chain(n: int, *, loop: bool = False) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"id": f"s{i}", "type": "wait", "duration": "1m", "next": f"s{i + 1}"} for i in range(n)
    ]
    steps.append(
        {"id": f"s{n}", "type": "wait", "duration": "1m", "next": "s0"} if loop else {"id": f"s{n}", "type": "exit"}
    )
    return _base(*steps)


def test_a_long_flat_journey_is_valid(shop: Shop) -> None:
    info = shop.campaigns.save(_chain(1000))
    assert len(info.definition.steps) == 1001


def test_too_many_steps_are_refused() -> None:
    with pytest.raises(ValidationError) as err:
        Campaign.from_dict(_chain(MAX_STEPS))
    assert err.value.field == "steps" and f"more than {MAX_STEPS} steps" in err.value.problem


def test_a_long_cycle_is_named_shortly(shop: Shop) -> None:
    with pytest.raises(CampaignInvalid) as err:
        shop.campaigns.save(_chain(999, loop=True))
    (p,) = err.value.problems
    assert p.field == "steps.s999.next" and "makes a cycle (s0 -> s1 -> s2" in p.problem
    assert "... (990 more)" in p.problem and p.problem.endswith("s999 -> s0)") and len(p.problem) < 200


def test_a_short_cycle_and_a_self_loop_are_named() -> None:
    from ecrm_campaigns.validate import graph_problems

    c = Campaign.from_dict(
        _base(
            {"id": "a", "type": "wait", "duration": "1d", "next": "b"},
            {"id": "b", "type": "wait", "duration": "1d", "next": "a"},
        )
    )
    assert [p.problem for p in graph_problems(c)] == ["makes a cycle (a -> b -> a)"]
    c = Campaign.from_dict(_base({"id": "a", "type": "wait", "duration": "1d", "next": "a"}))
    assert [p.problem for p in graph_problems(c)] == ["makes a cycle (a -> a)"]


def test_a_wide_fan_is_valid_and_many_problems_stay_a_short_message(shop: Shop) -> None:
    n = 400
    fan = {
        "id": "fan",
        "type": "branch",
        "cases": [{"split": 0.25, "next": f"e{i}"} for i in range(n)],
        "otherwise": "e0",
    }
    exits = [{"id": f"e{i}", "type": "exit"} for i in range(n)]
    assert len(shop.campaigns.save(_base(fan, *exits)).definition.steps) == n + 1
    stray = [{"id": f"x{i}", "type": "exit"} for i in range(n)]  # unreachable, each a problem
    with pytest.raises(CampaignInvalid) as err:
        shop.campaigns.save({**_base(fan, *exits, *stray), "key": "k2"})
    assert len(err.value.problems) == n
    assert f"(all {n} in .problems)" in str(err.value) and str(err.value).count("unreachable") == MAX_LISTED


def test_unknown_targets_list_a_few_step_ids() -> None:
    from ecrm_campaigns.validate import graph_problems

    c = Campaign.from_dict(
        _base(
            {"id": "a", "type": "wait", "duration": "1d", "next": "nope"},
            *[{"id": f"e{i}", "type": "exit"} for i in range(50)],
        )
    )
    (p,) = [p for p in graph_problems(c) if p.problem == "no such step"]
    assert p.fix.endswith("... (41 more)")


# -- 3. free-form step values --------------------------------------------------------------------

FIELDS = {
    "context": lambda v: {"id": "a", "type": "send", "channel": "capture", "template": "t", "context": {"x": v}},
    "template": lambda v: {"id": "a", "type": "send", "channel": "capture", "template": {"subject": "s", "x": v}},
    "args": lambda v: {"id": "a", "type": "action", "name": "tag", "args": {"x": v}},
    "value": lambda v: {"id": "a", "type": "update", "attribute": "nick", "value": {"x": v}},
}
HOSTILE = [
    ("nan", math.nan, "not a finite number"),
    ("inf", math.inf, "not a finite number"),
    ("-inf", -math.inf, "not a finite number"),
    ("big int", 2**64, "integer outside"),
    ("nul", "a\x00b", "NUL"),
    ("deep", _nest(MAX_JSON_DEPTH + 2), "nested deeper than"),
    ("very deep", _nest(5000), "nested deeper than"),
    ("huge text", "x" * 300_000, "larger than"),
    ("many keys", {f"k{i}": i for i in range(1500)}, "keys in all"),
]


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize(("value", "says"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_free_form_values_are_refused_at_save_naming_the_step(shop: Shop, field: str, value: Any, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        shop.campaigns.save(_base(FIELDS[field](value)))
    e = err.value
    assert e.field.startswith(f"steps.a.{field}") or e.field == "steps.a", str(e)
    assert says in str(e), str(e)
    assert shop.campaigns.list() == []


@pytest.mark.parametrize("field", list(FIELDS))
def test_a_campaign_object_built_in_python_goes_through_the_same_checks(shop: Shop, field: str) -> None:
    good = Campaign.from_dict(_base(FIELDS[field]("fine")))
    step = good.steps[0]
    bad = {"context": {"x": math.nan}, "template": {"x": math.nan}, "args": {"x": math.nan}, "value": math.nan}[field]
    import attrs

    c = attrs.evolve(good, steps=(attrs.evolve(step, **{field: bad}),))
    with pytest.raises(ValidationError) as err:
        shop.campaigns.save(c)
    assert err.value.field.startswith(f"steps.a.{field}") and "not a finite number" in str(err.value), str(err.value)


def test_update_values_get_the_checks_of_customers_update(shop: Shop) -> None:
    for value, says in (
        (math.nan, "not a finite number"),
        ("x" * 100_000, "larger than 16384 bytes"),
        (_nest(MAX_JSON_DEPTH), "nested deeper than"),  # the attribute itself is one level
    ):
        with pytest.raises(ValidationError) as err:
            shop.campaigns.save(_base({"id": "a", "type": "update", "attribute": "tier", "value": value}))
        assert err.value.field.startswith("steps.a.value") and says in str(err.value), str(err.value)
        with pytest.raises(ValidationError):  # the core refuses the same value
            shop.crm.customers.create(email="z@example.com", attributes={"tier": value})
    info = shop.campaigns.save(
        _base({"id": "a", "type": "update", "attribute": "tier", "value": _nest(MAX_JSON_DEPTH - 1)})
    )
    assert info.version == 1


class _Typed:
    @hookimpl
    def ecrm_register_attributes(self) -> list[AttributeDef]:
        return [
            AttributeDef(name="score", type="integer"),
            AttributeDef(name="vip", type="boolean"),
            AttributeDef(name="renews", type="datetime"),
        ]


@pytest.mark.parametrize(
    ("attribute", "value", "ok"),
    [
        ("score", 3, True),
        ("score", "3", False),
        ("score", True, False),
        ("score", 2.5, False),
        ("vip", False, True),
        ("vip", 1, False),
        ("renews", "2030-01-01T00:00:00+00:00", True),
        ("renews", "2030-01-01T00:00:00", False),
        ("renews", 5, False),
        ("untyped", {"any": ["json"]}, True),
    ],
)
def test_typed_attributes_get_their_type(crm_factory: Callable[..., CRM], attribute: str, value: Any, ok: bool) -> None:
    from ecrm_campaigns import campaigns

    crm = crm_factory(plugins=[plugin, _Typed()])
    data = _base({"id": "a", "type": "update", "attribute": attribute, "value": value})
    if ok:
        campaigns(crm).save(data)
        return
    with pytest.raises(CampaignInvalid) as err:
        campaigns(crm).save(data)
    assert err.value.field == "steps.a.value", str(err.value)
    says = "naive" if isinstance(value, str) and attribute == "renews" else f"is declared as {_TYPES[attribute]}"
    assert says in err.value.problem or says in err.value.fix, str(err.value)
    assert campaigns(crm).list() == []


_TYPES = {"score": "integer", "vip": "boolean", "renews": "datetime"}


def test_step_type_carries_integer_durations() -> None:
    s = Step.from_dict({"id": "a", "type": "wait", "duration": 60}, "steps[0]")
    assert s.duration == 60 and s.to_dict()["duration"] == 60


# -- over REST ---------------------------------------------------------------------------------


def test_hostile_definitions_over_http(
    crm_factory: Callable[..., CRM], live_api_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ecrm_api")
    from ecrm_api import plugin as api_plugin

    from ecrm_core.testing import CapturingChannel

    channel = CapturingChannel()
    crm = crm_factory(plugins=[api_plugin, plugin, channel.plugin()])
    http = live_api_factory(crm).client()

    def refused(body: Any, field: str, says: str, status: int = 422) -> None:
        r = http.post("/campaigns", json=body)
        assert r.status_code == status, r.text
        assert len(r.content) < 4000
        assert r.json()["errors"][0]["field"].startswith(field) and says in r.text, r.text

    refused({"yaml": _lol(6, 10)}, "body.yaml.text", "YAML anchor")
    refused({"yaml": ALIAS_BOMBS["merge key"]}, "body.yaml.text", "YAML")
    refused({"definition": WHERE["steps.a.duration"](10**12)}, "body.definition.steps.a.duration", "too long")
    refused({"definition": WHERE["trigger.every"]("1" * 30 + "s")}, "body.definition.trigger.every", "not a duration")
    refused(
        {"definition": _base(FIELDS["context"](_nest(MAX_JSON_DEPTH + 2)))},
        "body.definition.steps.a.context",
        "nested deeper",
    )
    refused({"definition": _base(FIELDS["args"](_nest(200)))}, "body.definition.steps.a", "nested deeper")
    refused({"definition": _base(FIELDS["value"]("x" * 20_000))}, "body.definition.steps.a.value", "larger than")
    refused({"definition": _chain(MAX_STEPS)}, "body.definition.steps", "more than")
    r = http.post("/campaigns", json={"definition": _chain(1000)})
    assert r.status_code == 200 and len(r.json()["definition"]["steps"]) == 1001, r.text[:300]
    r = http.post("/campaigns", json={"definition": {**WHERE["trigger.every"](86400), "key": "nightly"}})
    assert r.status_code == 200 and r.json()["definition"]["trigger"]["every"] == 86400, r.text
    assert http.get("/campaigns").status_code == 200
    # a body nested beyond the JSON decoder's limit is the body's problem ...
    deep = b'{"definition": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = http.post("/campaigns", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.text, r.text
    # ... but a RecursionError elsewhere is a server fault, not the client's JSON
    from ecrm_campaigns.service import Campaigns

    def overflow(*args: Any, **kw: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(Campaigns, "save", overflow)
    r = http.post("/campaigns", json={"definition": _base({"id": "a", "type": "exit"})})
    assert r.status_code == 500 and r.json()["type"].endswith("internal") and "nested" not in r.text, r.text


def test_the_cli_refuses_an_alias_bomb_and_a_bad_value(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from ecrm_core.cli import make_cli
    from ecrm_core.testing import make_crm

    db = tmp_path / "cli.db"
    make_crm(db, plugins=[plugin]).close()
    cli = make_cli(plugins=[plugin], entrypoints=False)
    base = ["--db", f"sqlite:///{db}", "campaigns"]
    spec = tmp_path / "c.yaml"
    for text, says in (
        (_lol(9, 10), "text: uses the YAML anchor &l0"),
        (HEAD + "  - {id: a, type: update, attribute: tier, value: .nan}\n", "steps.a.value: not a finite number"),
        (HEAD + "  - {id: a, type: wait, duration: 99999999999999, next: b}\n  - {id: b, type: exit}\n", "too long"),
    ):
        spec.write_text(text)
        r = CliRunner().invoke(cli, [*base, "apply", "-f", str(spec)])
        assert r.exit_code == 1 and says in r.output, r.output
    r = CliRunner().invoke(cli, [*base, "list", "--json"])
    assert r.exit_code == 0 and '"key"' not in r.output, r.output


@pytest.mark.parametrize("data", [5, "x", None, 1.5, [1, [2]], math.nan, "5", "", "- a", "a: 1\n---\nb: 2\n"])
def test_documents_that_are_not_a_mapping_are_refused(data: Any) -> None:
    with pytest.raises(ValidationError) as err:
        load(data) if isinstance(data, str) else Campaign.from_dict(data)
    assert err.value.field in ("campaign", "text"), str(err.value)
