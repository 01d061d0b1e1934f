"""The YAML text form of a campaign: ``load(dump(c)) == c`` and ``dump(load(t)) == t`` for a
text ``t`` in the canonical form (``dump``'s output: keys in model order, defaults left out)."""

from __future__ import annotations

from typing import Any

from ecrm_core.errors import ValidationError

from .model import Campaign

__all__ = ["dump", "load"]

#: Longest campaign text accepted (characters).
MAX_TEXT = 1_000_000


def load(text: str) -> Campaign:
    """Parse YAML text (PyYAML ``safe_load``: no tags, no objects) into a :class:`Campaign`."""
    import yaml

    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValidationError(
            "text",
            text if isinstance(text, str) else type(text).__name__,
            "not a campaign text",
            f"give at most {MAX_TEXT} characters of YAML",
        )
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "the text"
        raise ValidationError(
            "text", where, f"not valid YAML: {getattr(exc, 'problem', exc)}", "fix the YAML syntax there"
        ) from None
    return Campaign.from_dict(data)


def dump(campaign: Campaign) -> str:
    """The canonical YAML text of ``campaign`` (PyYAML ``safe_dump``)."""
    import yaml

    return str(
        yaml.safe_dump(campaign.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
    )
