"""Hook ``ecrm_computed_attributes``: what plugins compute about a person,
seen by every send's templates and by ``crm.customers.computed``."""

from __future__ import annotations

from typing import Any

from ecrm_core import hookimpl
from ecrm_core.channels import Content
from ecrm_core.testing import make_crm
from ecrm_core.testing.channels import MemoryChannel


class SeeingChannel(MemoryChannel):
    """Renders the customer's attributes as the template sees them into the body."""

    def render(self, template: Any, context: Any, *, message_id: str, purpose: str) -> Content:
        attrs = context["customer"]["attributes"]
        return Content(body=";".join(f"{k}={attrs[k]}" for k in sorted(attrs)))


class Scores:
    def __init__(self, values: dict[int, dict[str, Any]]) -> None:
        self.values = values
        self.asked: list[list[int]] = []

    @hookimpl
    def ecrm_computed_attributes(self, crm, customer_ids):
        self.asked.append(list(customer_ids))
        return {cid: self.values[cid] for cid in customer_ids if cid in self.values}


class MoreScores(Scores):
    pass


class Broken:
    @hookimpl
    def ecrm_computed_attributes(self, crm, customer_ids):
        raise RuntimeError("the scores table is gone")


class NotAMapping:
    @hookimpl
    def ecrm_computed_attributes(self, crm, customer_ids):
        return ["not", "a", "mapping"]


def build(tmp_path, *plugins):
    channel = SeeingChannel(name="memory")
    crm = make_crm(tmp_path / "computed.db", plugins=[channel.plugin(), *plugins], secret="s" * 32)
    return crm, channel


def people(crm, n: int) -> list[int]:
    return [
        crm.customers.create(email=f"p{i}@example.com", consent={"memory": "granted"}, attributes={"tier": "gold"}).id
        for i in range(n)
    ]


def test_templates_read_computed_values_as_attributes_stored_ones_win(tmp_path):
    scores = Scores({})
    crm, channel = build(tmp_path, scores)
    ids = people(crm, 3)
    scores.values.update({ids[0]: {"rfm_group": "champions", "tier": "computed"}, ids[1]: {"rfm_group": "lost"}})
    report = crm.messages.send_many("memory", {"body": "x"}, customer_ids=ids)
    assert report.queued == 3
    crm.messages.dispatch()
    bodies = {m.customer_id: m.content.body for m in channel.sent}
    assert bodies[ids[0]] == "rfm_group=champions;tier=gold"  # the stored "tier" wins
    assert bodies[ids[1]] == "rfm_group=lost;tier=gold"
    assert bodies[ids[2]] == "tier=gold"  # the plugin knows nothing of this one
    # one question per chunk of the send, not one per customer
    assert [sorted(a) for a in scores.asked] == [sorted(ids)]
    # the stored customer is unchanged: nothing was copied
    assert crm.customers.get(ids[0]).attributes == {"tier": "gold"}


def test_computed_merges_plugins_first_answer_wins_and_isolates_failures(tmp_path):
    first = Scores({})
    second = MoreScores({})
    crm, channel = build(tmp_path, first, second, Broken(), NotAMapping())
    ids = people(crm, 2)
    first.values[ids[0]] = {"a": 1}
    second.values[ids[0]] = {"b": 2}
    second.values[ids[1]] = {"b": 3}
    computed = crm.customers.computed(ids)
    assert computed[ids[1]] == {"b": 3}
    assert computed[ids[0]] == {"a": 1, "b": 2}
    failed = [(f.hook, f.error) for f in crm.plugins.failures if f.hook == "ecrm_computed_attributes"]
    assert len(failed) == 2 and any("scores table is gone" in e for _h, e in failed)
    assert any("not a mapping" in e for _h, e in failed)
    # a failing plugin does not stop a send: the others' values still reach the template
    crm.messages.send_many("memory", {"body": "x"}, customer_ids=ids)
    crm.messages.dispatch()
    assert sorted(m.content.body for m in channel.sent) == ["a=1;b=2;tier=gold", "b=3;tier=gold"]


def test_no_plugin_no_cost(tmp_path):
    crm, _channel = build(tmp_path)
    ids = people(crm, 1)
    assert crm.customers.computed(ids) == {}
    assert crm.customers.computed([]) == {}
    assert crm.customers.with_computed({"tier": "gold"}, None) == {"tier": "gold"}


class Answers:
    """A plugin answering ``make(ids)`` (a malformed answer of the corpus below)."""

    def __init__(self, make: Any, name: str = "answers") -> None:
        self.make = make
        self.ECRM_PLUGIN_NAME = name

    @hookimpl
    def ecrm_computed_attributes(self, crm, customer_ids):
        return self.make(list(customer_ids))


_DEEP: Any = "x"
for _ in range(200):
    _DEEP = [_DEEP]

MALFORMED = {
    "string key": lambda ids: {ids[0]: {"a": 1}, "total": {"a": 2}},
    "digit string key": lambda ids: {str(ids[0]): {"a": 1}},
    "bool key": lambda ids: {True: {"a": 1}},
    "float key": lambda ids: {float(ids[0]): {"a": 1}},
    "values not a mapping": lambda ids: {ids[0]: ["a", 1]},
    "values a string": lambda ids: {ids[0]: "champions"},
    "non-string name": lambda ids: {ids[0]: {1: "x"}},
    "NaN": lambda ids: {ids[0]: {"p": float("nan")}},
    "infinity": lambda ids: {ids[0]: {"p": float("inf")}},
    "huge text": lambda ids: {ids[0]: {"note": "x" * 2_000_000}},
    "deep nesting": lambda ids: {ids[0]: {"deep": _DEEP}},
    "huge integer": lambda ids: {ids[0]: {"n": 10**30}},
    "an object": lambda ids: {ids[0]: {"when": object()}},
    "a set": lambda ids: {ids[0]: {"tags": {"a", "b"}}},
}


def test_a_malformed_answer_is_recorded_and_left_out_whatever_its_shape(tmp_path):
    """A corpus of malformed answers: each plugin is left out whole and recorded;
    the well-formed plugin's values still reach every template and the send goes on."""
    good = Scores({})
    bad = [Answers(make, f"answers-{label}") for label, make in MALFORMED.items()]
    crm, channel = build(tmp_path, good, *bad)
    ids = people(crm, 2)
    good.values[ids[0]] = {"rfm_group": "champions"}
    assert crm.customers.computed(ids) == {ids[0]: {"rfm_group": "champions"}}
    failed = [f for f in crm.plugins.failures if f.hook == "ecrm_computed_attributes"]
    assert len(failed) == len(MALFORMED), [f.error for f in failed]
    report = crm.messages.send_many("memory", {"body": "x"}, customer_ids=ids)
    assert report.queued == 2
    crm.messages.dispatch()
    assert sorted(m.content.body for m in channel.sent) == ["rfm_group=champions;tier=gold", "tier=gold"]


def test_ids_that_were_not_asked_are_ignored(tmp_path):
    extra = Answers(lambda ids: {**{i: {"a": 1} for i in ids}, **{10**6 + n: {"a": 2} for n in range(1000)}})
    crm, _channel = build(tmp_path, extra)
    ids = people(crm, 2)
    assert crm.customers.computed(ids) == {i: {"a": 1} for i in ids}
