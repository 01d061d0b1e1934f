"""The YAML text form of a campaign: ``load(dump(c)) == c`` and ``dump(load(t)) == t`` for a
text ``t`` in the canonical form (``dump``'s output: keys in model order, defaults left out).

The text is read by PyYAML's safe loader (libyaml's when installed): no tags that make objects,
**no anchors and aliases** (``&name`` / ``*name``: an alias repeats a whole subtree, so a few hundred bytes
could stand for gigabytes — "billion laughs"), nesting at most :data:`MAX_YAML_DEPTH` deep
(both refused from the parser's events, before anything is built),
and date-times read as text (the model parses them), so what YAML gives is plain JSON data
that then goes through the same checks as a definition given as a mapping
(:meth:`Campaign.from_dict <ecrm_campaigns.model.Campaign.from_dict>`).
"""

from __future__ import annotations

import functools
from typing import Any

from ecrm_core.errors import ValidationError

from .model import MAX_DEFINITION_DEPTH, Campaign

__all__ = ["MAX_TEXT", "MAX_YAML_DEPTH", "dump", "load"]

#: Longest campaign text accepted (characters).
MAX_TEXT = 1_000_000
#: Deepest nesting of mappings and lists the YAML reader accepts (the definition's own limit).
MAX_YAML_DEPTH = MAX_DEFINITION_DEPTH


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "the text"


@functools.cache
def _loader() -> type[Any]:
    """PyYAML's safe loader (libyaml's when installed) reading date-times as text."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type,misc]
        pass

    # A date-time stays text: the model reads `at` itself, and free-form data stays JSON.
    Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
    return Loader


def _scan(text: str) -> None:
    """Refuse anchors, aliases and deep nesting from the parser's events, before anything is
    built (a flat loop over the events: nothing recursive, nothing expanded)."""
    import yaml
    from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent

    depth = 0
    for event in yaml.parse(text, Loader=_loader()):
        if isinstance(event, NodeEvent) and event.anchor is not None:  # an alias is a NodeEvent too
            what = f"alias *{event.anchor}" if isinstance(event, AliasEvent) else f"anchor &{event.anchor}"
            raise ValidationError(
                "text",
                _where(event.start_mark),
                f"uses the YAML {what}",
                "write the value out in full: anchors (&) and aliases (*) are not accepted",
            )
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ValidationError(
                    "text",
                    _where(event.start_mark),
                    f"nested deeper than {MAX_YAML_DEPTH} levels",
                    "write flatter data",
                )
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


def load(text: str) -> Campaign:
    """Parse YAML text (checked by :func:`_scan`, then read by the safe loader) into a :class:`Campaign`."""
    import yaml

    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValidationError(
            "text",
            text if isinstance(text, str) else type(text).__name__,
            "not a campaign text",
            f"give at most {MAX_TEXT} characters of YAML",
        )
    try:
        _scan(text)
        data: Any = yaml.load(text, Loader=_loader())  # a SafeLoader: see _loader
    except yaml.YAMLError as exc:
        where = _where(getattr(exc, "problem_mark", None))
        problem = str(getattr(exc, "problem", exc))
        if "nesting depth" in problem:  # libyaml's own limit, met while it looks ahead
            raise ValidationError(
                "text", where, f"nested deeper than {MAX_YAML_DEPTH} levels", "write flatter data"
            ) from None
        raise ValidationError("text", where, f"not valid YAML: {problem}", "fix the YAML syntax there") from None
    return Campaign.from_dict(data)


def dump(campaign: Campaign) -> str:
    """The canonical YAML text of ``campaign`` (PyYAML ``safe_dump``)."""
    import yaml

    return str(
        yaml.safe_dump(campaign.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
    )
