"""Hostile templates: every one costs at most the configured limits, fails with a
TemplateError naming the limit, and leaves the calling process (and the pool
of sandbox processes) working.

The corpus is ``tests/fixtures/hardening/templates.json``: deep nesting (which
crashed the process in the CSS inliner), output built in ``{% set %}``/
``{% filter %}``/``{% call %}`` blocks and macros, slow single operations,
huge ranges, memory bombs, values that would print heap addresses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ecrm_email.plugin
import pytest
from ecrm_email.channel import EmailChannel
from ecrm_email.templates import Templates

from ecrm_core import CRM
from ecrm_core.channels import ChannelConfigError, Content, TemplateError

CORPUS = json.loads((Path(__file__).parents[1] / "fixtures" / "hardening" / "templates.json").read_text())
LIMITS = CORPUS["limits"]
PAYLOADS = CORPUS["payloads"]
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
OK = {"subject": "Hi {{ customer.first_name }}", "html": "<p>Hello {{ customer.first_name }}</p>"}
CTX = {"customer": {"id": 7, "first_name": "Ada", "email": "ada@example.com", "attributes": {}}}


def _build(value: Any) -> Any:
    """Corpus contexts: ``{"$repeat": [v, n]}`` is ``[v] * n`` (big data without a big file)."""
    if isinstance(value, dict):
        if set(value) == {"$repeat"}:
            item, n = value["$repeat"]
            return [_build(item)] * n
        return {k: _build(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v) for v in value]
    return value


@pytest.fixture(scope="module")
def crm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CRM]:
    path = tmp_path_factory.mktemp("sandbox") / "t.db"
    c = CRM(f"sqlite:///{path}", load_entrypoints=False, plugins=[ecrm_email.plugin])
    c.upgrade()
    try:
        yield c
    finally:
        c.close()


def _templates(crm: CRM, entry: dict[str, Any] | None = None, **extra: Any) -> Templates:
    limits = {**LIMITS, **((entry or {}).get("limits") or {}), **extra}
    return Templates(crm, **limits)


def _bound(limits: dict[str, Any]) -> float:
    # "bounded", not a benchmark: generous on a loaded machine
    return 10 * max(float(limits.get("max_seconds", LIMITS["max_seconds"])), 1.0)


@pytest.mark.parametrize("entry", PAYLOADS, ids=[p["id"] for p in PAYLOADS])
def test_hostile_template_is_bounded_and_names_the_limit(crm: CRM, entry: dict[str, Any]) -> None:
    templates = _templates(crm, entry)
    for name, parts in (entry.get("save") or {}).items():
        templates.save(name, **parts)
    template = {"subject": "s", "text": "t", entry["part"]: entry["template"]}
    ctx = {**CTX, **_build(entry.get("context") or {})}
    templates.render(OK, CTX)  # a sandbox process is ready: the clock measures the attack only
    t0 = time.monotonic()
    with pytest.raises(TemplateError) as info:
        templates.render(template, ctx)
    elapsed = time.monotonic() - t0
    err = info.value
    assert elapsed < _bound({**LIMITS, **(entry.get("limits") or {})}), elapsed
    assert re.search(entry["expect"], err.problem), err.problem
    assert err.field.startswith("template"), err.field
    assert not ADDRESS.search(str(err)), str(err)
    # the process survived and the pool recovered: a normal template renders right after
    r = templates.render(OK, CTX)
    assert r.subject == "Hi Ada" and "Hello Ada" in (r.html or "")


@pytest.mark.parametrize("entry", [p for p in PAYLOADS if p["id"].startswith("repr-")], ids=lambda p: p["id"])
def test_inline_isolation_never_prints_an_address(crm: CRM, entry: dict[str, Any]) -> None:
    templates = _templates(crm, isolation="inline")
    try:
        r = templates.render({"subject": "s", "text": entry["template"]}, CTX)
    except TemplateError as exc:
        assert not ADDRESS.search(str(exc)), str(exc)
    else:
        assert not ADDRESS.search(r.text), r.text


def test_preview_is_isolated_too(crm: CRM) -> None:
    templates = _templates(crm)
    templates.save("deep", subject="d", html="{% for i in range(50000) %}<div>{% endfor %}")
    with pytest.raises(TemplateError, match="max depth"):
        templates.preview("deep")
    with pytest.raises(TemplateError, match="max_seconds"):
        templates.preview({"subject": "s", "text": "{{ big | sum(start=[]) | length }}"}, {"big": [[0] * 300] * 4000})
    assert templates.preview(OK).subject == "Hi Ada"


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("{% filter length %}abcd{% endfilter %}", "4"),
        ("{% filter first %}abcd{% endfilter %}", "a"),
        ("{% filter list %}ab{% endfilter %}", "['a', 'b']"),
        ("{% filter wordcount %}a b c{% endfilter %}", "3"),
        ("{% filter int %}42{% endfilter %}", "42"),
        ("{% filter float %}1.5{% endfilter %}", "1.5"),
        ("{% filter upper %}ab{% endfilter %}", "AB"),
        ("{% set n | length %}abc{% endset %}{{ n + 1 }}", "4"),
        ("{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}", "x"),
    ],
)
@pytest.mark.parametrize("isolation", ["process", "inline"])
def test_filter_blocks_may_return_non_strings(crm: CRM, source: str, text: str, isolation: str) -> None:
    templates = _templates(crm, isolation=isolation)
    assert templates.render({"subject": "s", "text": source}, {}).text == text


def test_filter_block_result_is_escaped_in_html(crm: CRM) -> None:
    r = _templates(crm).render({"subject": "s", "html": "<p>{% filter list %}<b>{% endfilter %}</p>"}, {})
    assert "<b>" not in (r.html or "") and "&lt;" in (r.html or "")


def test_render_many_isolates_each_context(crm: CRM) -> None:
    templates = _templates(crm)
    source = {
        "subject": "Hi {{ customer.first_name }}",
        "text": "{{ customer.first_name }}{% if slow is defined %}{{ slow | sum(start=[]) | length }}{% endif %}"
        "{% if deep is defined %}{{ customer.get }}{% endif %}",
    }
    contexts: list[dict[str, Any]] = [
        {"customer": {"first_name": "A"}},
        {"customer": {"first_name": "B"}, "slow": [[0] * 300] * 4000},  # kills its sandbox process
        {"customer": {"first_name": "C"}},
        {"customer": {"first_name": "D"}, "deep": True},
        {"customer": {"first_name": "E"}},
        {"customer": {"first_name": "F"}, "bad": object()},  # not plain data
        "not a mapping",
        {"customer": {"first_name": "G"}},
    ]
    t0 = time.monotonic()
    results = templates.render_many(source, contexts)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 20
    assert [r.text if not isinstance(r, TemplateError) else None for r in results] == [
        "A",
        None,
        "C",
        None,
        "E",
        None,
        None,
        "G",
    ]
    assert "max_seconds" in results[1].problem  # type: ignore[union-attr]
    assert "cannot print" in results[3].problem  # type: ignore[union-attr]
    assert results[5].field == "context" and results[6].field == "context"  # type: ignore[union-attr]


def _sandbox_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"ecrm_email.render_process" in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_crashed_sandbox_fails_only_the_context_it_was_rendering(crm: CRM) -> None:
    templates = _templates(crm, max_seconds=5.0, workers=1)
    templates.render(OK, CTX)
    slow = "{% for i in range(n) %}{% for j in range(300) %}{% endfor %}{% endfor %}{{ customer.first_name }}"
    contexts = [{"customer": {"first_name": f"c{i}"}, "n": 1 if i != 3 else 10**5} for i in range(8)]
    stop = threading.Event()

    def crash_the_slow_one() -> None:
        # contexts 0-2 take milliseconds; context 3 keeps its sandbox busy for
        # seconds (then max_seconds would stop it): crash it there
        if stop.wait(1.0):
            return
        for pid in _sandbox_pids():  # idle ones too: the pool replaces them
            os.kill(pid, signal.SIGSEGV)

    killer = threading.Thread(target=crash_the_slow_one)
    killer.start()
    try:
        results = templates.render_many({"subject": "s", "text": slow}, contexts)
    finally:
        stop.set()
        killer.join()
    failed = [i for i, r in enumerate(results) if isinstance(r, TemplateError)]
    assert failed == [3], [getattr(r, "problem", r) for r in results]
    assert "SIGSEGV" in results[3].problem  # type: ignore[union-attr]
    assert [r.text for r in results if not isinstance(r, TemplateError)] == [f"c{i}" for i in range(8) if i != 3]


def test_a_template_failing_for_everyone_stops_early(crm: CRM) -> None:
    templates = _templates(crm, max_seconds=0.3)
    contexts = [{"big": [[0] * 300] * 4000} for _ in range(20)]
    t0 = time.monotonic()
    results = templates.render_many({"subject": "s", "text": "{{ big | sum(start=[]) | length }}"}, contexts)
    assert time.monotonic() - t0 < 30  # not 20 x (max_seconds + a new process)
    assert all(isinstance(r, TemplateError) and "max_seconds" in r.problem for r in results)
    assert "not rendered" in results[-1].problem  # type: ignore[union-attr]


def test_the_wall_clock_bound_holds_per_item_of_a_chunk(crm: CRM) -> None:
    templates = _templates(crm, max_seconds=0.5)
    slow = "{% if slow %}{{ slow | sum(start=[]) | length }}{% endif %}ok"
    contexts = [{"slow": [[0] * 300] * 4000 if i % 2 else None} for i in range(6)]
    t0 = time.monotonic()
    results = templates.render_many({"subject": "s", "text": slow}, contexts)
    assert time.monotonic() - t0 < 3 * 10 * 1.0  # three slow ones, each bounded
    assert [isinstance(r, TemplateError) for r in results] == [False, True] * 3


# ---------------------------------------------------------------------------
# The channel: render_many, render, crm.messages.send
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CRM]:
    path = tmp_path_factory.mktemp("shop") / "shop.db"
    channels = {
        "email": {
            "from": "Shop <news@shop.example>",
            "base_url": "https://shop.example/crm",
            "smtp": {"host": "127.0.0.1", "port": 9},
            "max_seconds": 0.5,
        }
    }
    c = CRM(
        f"sqlite:///{path}", load_entrypoints=False, plugins=[ecrm_email.plugin], channels=channels, secret="s" * 32
    )
    c.upgrade()
    try:
        yield c
    finally:
        c.close()


TRACKED = {
    "subject": "Hi {{ customer.first_name }}",
    "html": '<p>{{ customer.first_name }} <a href="https://shop.example/p/{{ customer.id }}">buy</a>'
    '<a href="{{ unsubscribe_url }}">unsubscribe</a></p>{% if deep %}{% for i in range(50000) %}<div>{% endfor %}{% endif %}',
}


def test_channel_render_many_signs_links_per_message(shop: CRM) -> None:
    chan = shop.channels.get("email")
    contexts = [
        {"customer": {"id": i + 1, "first_name": f"c{i}"}, "deep": i == 1, "message": {"workspace": "default"}}
        for i in range(4)
    ]
    ids = [f"m{i}" for i in range(4)]
    results = chan.render_many(TRACKED, contexts, message_ids=ids, purpose="marketing")
    assert isinstance(results[1], TemplateError) and "max depth" in results[1].problem
    for i in (0, 2, 3):
        content = results[i]
        assert isinstance(content, Content)
        hrefs = re.findall(r'href="([^"]+)"', content.html or "")
        click = [h for h in hrefs if "/channels/email/click/" in h]
        assert len(click) == 1
        assert (
            shop.channels.get("email").links.verify_click(click[0].rsplit("/", 1)[1])
            if hasattr(chan.links, "verify_click")
            else True
        )
        assert any("/channels/email/unsubscribe/" in h for h in hrefs)  # ecrm's own link is left alone
        assert content.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "/channels/email/open/" in (content.html or "")
        assert "ecrm" not in re.sub(r"https://[^\"]+", "", content.html or "")  # no placeholder left
    # each message its own signed links
    assert results[0].html != results[2].html  # type: ignore[union-attr]
    one = chan.render(TRACKED, contexts[0], message_id="m0", purpose="marketing")
    assert one.subject == "Hi c0"
    with pytest.raises(TemplateError, match="max depth"):
        chan.render(TRACKED, contexts[1], message_id="m1", purpose="marketing")


@pytest.mark.parametrize(
    "entry",
    [p for p in PAYLOADS if p["id"] in ("loop-divs", "set-block", "sum-lists", "repr-0", "compare-shared-structures")],
    ids=lambda p: p["id"],
)
def test_messages_send_rejects_the_message_and_the_process_survives(shop: CRM, entry: dict[str, Any]) -> None:
    ada = shop.customers.upsert(
        external_id="ada", email="ada@example.com", name="Ada Lovelace", consent={"email": "granted"}
    )
    template = {"subject": "s", "text": "t", entry["part"]: entry["template"]}
    t0 = time.monotonic()
    try:
        record = shop.messages.send("email", ada.id, template, context=_build(entry.get("context") or {}))
    except TemplateError as exc:  # the pipeline reports the customer's template error
        assert re.search(entry["expect"], exc.problem), exc.problem
    else:  # or it records the message as not sendable for that customer
        assert record.status in ("blocked", "dead"), record
    assert time.monotonic() - t0 < 10
    ok = shop.messages.send("email", ada.id, {"subject": "Hi {{ customer.first_name }}", "text": "fine"})
    assert ok.status == "queued" and ok.content.subject == "Hi Ada"


def test_channel_config_is_validated() -> None:
    crm = CRM("sqlite://", load_entrypoints=False, plugins=[ecrm_email.plugin])
    base = {"from": "a@b.example", "base_url": "https://b.example"}
    for bad, match in [
        ({"isolation": "thread"}, "isolation"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"max_seconds": "2"}, "max_seconds"),
        ({"max_memory": 1000}, "max_memory"),
        ({"max_output": -1}, "max_output"),
        ({"render_workers": 0}, "render_workers"),
    ]:
        with pytest.raises(ChannelConfigError, match=match):
            EmailChannel(crm, {**base, **bad})
    assert EmailChannel(crm, {**base, "isolation": "inline", "max_memory": 64 << 20}).templates().isolation == "inline"
    crm.close()
