"""The limits of a rule, in one place (``docs/rules.md``, "Limits").

Every rule within these limits compiles to statements SQLite and PostgreSQL
accept: the SQL compiler (:mod:`.sql`) merges equality chains on one field
into one ``IN`` bound as ONE parameter, and nests what remains as balanced
trees, so that the expression depth the database sees grows with the
logarithm of the number of conditions, not with the number itself.  The
limits below bound what is left: nesting written by the user, the size of
the statement, and the work of one evaluation.

The text parser (:mod:`.text`) checks :data:`MAX_TEXT_LENGTH` and
:data:`MAX_DEPTH` before parsing; the validator (:mod:`.model`) checks the
others, for text and JSON trees alike.  A rule over a limit is refused with
a :class:`~ecrm_core.errors.ValidationError` naming the limit and the place
(the path in the tree and, for text, the line and column).
"""

from __future__ import annotations

__all__ = [
    "MAX_TEXT_LENGTH",
    "MAX_DEPTH",
    "MAX_NESTING",
    "MAX_NODES",
    "MAX_TERMS",
    "MAX_LIST",
    "MAX_VALUES",
    "MAX_EVENTS",
    "MAX_FILTERS",
    "LIMITS",
]

#: The longest rule text, in characters.
MAX_TEXT_LENGTH = 20_000
#: How deep ``all``/``any``/``not`` (parentheses and ``not`` in text) may nest.
MAX_DEPTH = 64
#: How many times ``and`` and ``or`` may alternate on the way down, once
#: ``not`` is pushed down to the conditions (``a and (b or (c and d))`` is 3).
#: This is what nests in SQL: SQLite's parser refuses statements nested
#: much deeper (its parser stack holds 100 entries; the bound leaves room for
#: the statement around the rule and for wide lists nested as balanced trees).
MAX_NESTING = 12
#: Nodes of the tree: conditions plus ``all``/``any``/``not``.
MAX_NODES = 4000
#: Conditions (leaves: field, behaviour, segment, consent and plugin conditions).
MAX_TERMS = 2000
#: Values in one ``in`` / ``not in`` list.
MAX_LIST = 1000
#: Values in all the ``in`` lists of one rule together.
MAX_VALUES = 10_000
#: Behaviour (event) conditions: each reads interactions in a subquery of its own.
MAX_EVENTS = 100
#: Filters in one behaviour condition (``purchase[category == "shoes", …]``).
MAX_FILTERS = 32

#: Every limit by name (for docs and error messages).
LIMITS: dict[str, int] = {
    "text_length": MAX_TEXT_LENGTH,
    "depth": MAX_DEPTH,
    "nesting": MAX_NESTING,
    "nodes": MAX_NODES,
    "terms": MAX_TERMS,
    "list": MAX_LIST,
    "values": MAX_VALUES,
    "events": MAX_EVENTS,
    "filters": MAX_FILTERS,
}
