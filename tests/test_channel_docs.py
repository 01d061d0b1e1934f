"""The reference in the docs says what the code does (issue 14, item 9).

* ``docs/hooks.md``'s version table names, for every hook, the version in its
  spec's ``versionadded``;
* ``docs/channels.md`` documents every field of the channel API's classes and
  every event type;
* ``docs/testing.md`` names every ``ApiConfig`` field ``live_api_factory`` takes.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import attrs
import pytest

from ecrm_core import channels, hookspecs
from ecrm_core.registry import ChannelSpec

DOCS = Path(__file__).resolve().parent.parent / "docs"
HOOKS = [
    (name, fn)
    for name, fn in vars(hookspecs).items()
    if name.startswith("ecrm_") and inspect.isfunction(fn) and fn.__module__ == hookspecs.__name__
]


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[n for n, _ in HOOKS])
def test_hook_version_table(name, fn):
    added = re.search(r"versionadded:: ([0-9.]+)", fn.__doc__ or "")
    assert added, f"{name} has no versionadded"
    rows = re.findall(rf"^\| `{name}` \| ([0-9.]+)(?: \(([^|]*)\))? \|$", (DOCS / "hooks.md").read_text(), flags=re.M)
    assert [since for since, _ in rows] == [added.group(1)]
    # each later change of the hook (versionchanged) is named in the row: "1.0 (`aliases` since 1.5)"
    for changed in re.findall(r"versionchanged:: ([0-9.]+)", fn.__doc__ or ""):
        assert changed in rows[0][1], f"{name}: the table does not say what changed in {changed}"


CLASSES = [
    channels.Content,
    channels.Message,
    channels.DeliveryResult,
    channels.InboundRoute,
    channels.InboundRequest,
    channels.InboundResponse,
    channels.MessageEvent,
    ChannelSpec,
]


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_channel_reference_names_every_field(cls):
    text = (DOCS / "channels.md").read_text()
    section = text[text.index("## Reference") :]
    start = section.index(f"**`{cls.__name__}`**")
    end = section.find("\n**`", start + 1)
    block = section[start : end if end != -1 else None]
    missing = [f.name for f in attrs.fields(cls) if f"`{f.name}`" not in block]
    assert not missing, f"docs/channels.md Reference: {cls.__name__} lacks {missing}"


def test_event_type_table_is_complete():
    text = (DOCS / "channels.md").read_text()
    table = text[text.index("### Event types") : text.index("## Reference")]
    for kind in channels.EVENT_TYPES:
        [row] = [line for line in table.splitlines() if line.startswith(f"| `{kind}` |")]
        needs = "yes" if kind in channels.MESSAGE_EVENTS else "no"
        assert row.split("|")[2].strip() == needs
        assert f"`{channels.EVENT_KINDS[kind]}`" in row


def test_live_api_factory_arguments_are_documented():
    config = pytest.importorskip("ecrm_api.config")
    text = (DOCS / "testing.md").read_text()
    for f in attrs.fields(config.ApiConfig):
        assert f"`{f.name}`" in text, f.name
