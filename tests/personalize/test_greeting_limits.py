"""Greeting templates render with bounded work and output, whatever they hold (review, round 25).

The greeting strategy rendered placement templates in a bare Jinja2 sandbox:
``{{ 'x' * 300000000 }}`` (25 bytes) took 1.2 GB and 6 CPU-seconds at every
decision, and two nested ``range(100000)`` loops never finished, holding a
``/personalize/decide`` thread.  The sandbox stops reaching Python's
internals, not repeated work.  Greeting templates now have a grammar
(:func:`ecrm_personalize.strategies.check_greeting`) in which a render's
work and output grow with the source only.  Each construct of the corpus
that can repeat text or work is refused when a placement is defined (a 422
over HTTP), and a stored template with one falls back to the built-in
greeting at a decision (recorded and explained).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ecrm_core.errors import ValidationError

from .conftest import Shop

pytest.importorskip("jinja2")
from ecrm_personalize.schema import PLACEMENTS
from ecrm_personalize.strategies import check_greeting

#: one per construct that repeats text or work (the dangerous size) — each must be refused
HOSTILE = {
    "string repetition": "{{ 'x' * 300000000 }}",
    "repetition of a variable": "{{ name * 100000000 }}",
    "power": "{{ 10 ** 10000000 }}",
    "printf padding": "{{ '%999999999d' % 1 }}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "a loop over the name": "{% for c in name %}{% for d in name %}{{ name }}{% endfor %}{% endfor %}",
    "doubling assignments": "{% set a = name ~ name %}{% set b = a ~ a %}{% set c = b ~ b %}{{ c ~ c }}",
    "a recursive macro": "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "a method call": "{{ 'x'.ljust(999999999) }}",
    "center filter": "{{ name|center(999999999) }}",
    "indent filter": "{{ name|indent(999999999) }}",
    "replace filter": "{{ name|replace('', name * 100) }}",
    "join filter": "{{ name|join('x' * 100000) }}",
    "format filter": "{{ '%s' | format(name) }}",
    "wordwrap filter": "{{ name|wordwrap(1) }}",
    "attribute of a value": "{{ name.__class__.__mro__ }}",
    "slice": "{{ name[::-1] }}",
    "filter block": "{% filter upper %}{{ name }}{% endfilter %}",
    "include": "{% include 'x' %}",
    "an unknown variable": "{{ cycler }}",
    "star args": "{{ name|default(*[1]) }}",
}

#: each must be accepted: what greetings are for
ORDINARY = [
    "Good {{ part_of_day }}{% if first_name %}, {{ first_name }}{% endif %}!",
    "{{ first_name|default('friend')|title }}, {{ {'morning': 'Morgen', 'night': 'Nacht'}[part_of_day] }}",
    "{% if returning and tone == 'formal' %}Welcome back, {{ name|e }}.{% elif locale in ['fr', 'fr-FR'] %}"
    "Bonjour{% else %}Hi{% endif %}",
    "{{ 'Hi ' ~ (first_name or 'there') + '!' }}",
]


@pytest.mark.parametrize("source", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_construct_that_repeats_is_refused_at_definition(empty_shop: Shop, source: str) -> None:
    with pytest.raises(ValidationError) as info:
        empty_shop.p.define("home", greetings={"en": "Hello", "de": source})
    assert info.value.field == "greetings.de"
    assert "variables" in info.value.fix  # says what a greeting may hold


@pytest.mark.parametrize("source", ORDINARY)
def test_ordinary_greetings_are_accepted(empty_shop: Shop, source: str) -> None:
    empty_shop.p.define("home", greetings={"en": source})
    cid = empty_shop.customer(name="Ada Lovelace")
    greeting = empty_shop.p.decide(cid, "home").variant["greeting"]
    assert greeting and "failed" not in " ".join(empty_shop.p.decide(cid, "home").explanation)


#: small instances of the refused constructs (cheap on any code): stored as older rows would be
STORED = {
    "a loop": "{% for i in range(3) %}x{% endfor %}",
    "repetition": "{{ 'ab' * 3 }}",
    "a call": "{{ 'x'.upper() }}",
    "a filter that pads": "{{ name|center(30) }}",
}


@pytest.mark.parametrize("source", list(STORED.values()), ids=list(STORED))
def test_a_stored_template_outside_the_grammar_falls_back_at_a_decision(empty_shop: Shop, source: str) -> None:
    empty_shop.p.define("home", greetings={"en": "Hello"})
    t = empty_shop.crm.db.tables[PLACEMENTS]
    with empty_shop.crm.db.write() as conn:  # as a row stored before the grammar was checked
        config = conn.execute(sa.select(t.c.config).where(t.c.name == "home")).scalar_one()
        conn.execute(sa.update(t).where(t.c.name == "home").values(config={**config, "greetings": {"en": source}}))
    cid = empty_shop.customer(name="Ada Lovelace")
    d = empty_shop.p.decide(cid, "home")
    assert "greeting template failed" in " ".join(d.explanation), d.variant
    assert d.variant["greeting"] == "Good morning, Ada!"
    assert any(f.hook == "strategy greeting" for f in empty_shop.crm.plugins.failures)


def test_check_greeting_names_where() -> None:
    with pytest.raises(ValidationError) as info:
        check_greeting("{{ 1 * 2 }}", "greetings.ko")
    assert info.value.field == "greetings.ko" and "mul" in info.value.problem
