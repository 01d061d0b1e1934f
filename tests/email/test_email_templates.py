"""ecrm_email.templates: stored templates, the sandbox, layouts, CSS inlining, bounds, link helpers.

Every test runs on a real SQLite CRM (``email_templates`` created by the
plugin's migration ``email_0001``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import ecrm_email.plugin
import lxml.html
import pytest
import sqlalchemy as sa
from ecrm_email.templates import Rendered, Templates, add_open_pixel, rewrite_links, sample_context, track_html

from ecrm_core import CRM
from ecrm_core.channels import TemplateError
from ecrm_core.errors import NotFound

CTX = {
    "customer": {"name": "Ada Lovelace", "first_name": "Ada", "email": "ada@example.com", "attributes": {}},
    "offer": {"code": "spring", "name": "Spring sale", "content": {"url": "https://shop.example.com/spring"}},
}


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[CRM]:
    c = CRM(f"sqlite:///{tmp_path / 't.db'}", load_entrypoints=False, plugins=[ecrm_email.plugin])
    c.upgrade()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def templates(crm: CRM) -> Templates:
    return Templates(crm)


# ---------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------


def test_save_get_list_delete(templates: Templates) -> None:
    templates.save("welcome", subject="Hi {{ customer.first_name }}", html="<p>Hi</p>", description="first mail")
    templates.save("layouts/brand", subject="-", html="<div>{% block content %}{% endblock %}</div>")
    got = templates.get("welcome")
    assert got["subject"] == "Hi {{ customer.first_name }}"
    assert got["html"] == "<p>Hi</p>" and got["text"] is None and got["description"] == "first mail"
    assert got["created_at"].tzinfo is not None
    assert [t["name"] for t in templates.list()] == ["layouts/brand", "welcome"]

    templates.save("welcome", subject="Hello", text="Hello {{ customer.name }}")  # upsert
    again = templates.get("welcome")
    assert (again["subject"], again["html"], again["text"]) == ("Hello", None, "Hello {{ customer.name }}")
    assert again["created_at"] == got["created_at"] and again["updated_at"] >= got["updated_at"]
    assert len(templates.list()) == 2

    templates.delete("welcome")
    with pytest.raises(NotFound):
        templates.get("welcome")
    with pytest.raises(NotFound):
        templates.delete("welcome")
    assert [t["name"] for t in templates.list()] == ["layouts/brand"]


def test_templates_belong_to_their_workspace(crm: CRM) -> None:
    Templates(crm).save("welcome", subject="default ws", text="a")
    other = Templates(crm.in_workspace("shop_b"))
    assert other.list() == []
    with pytest.raises(TemplateError, match="no such template"):
        other.render("welcome", CTX)
    other.save("welcome", subject="shop b", text="b")
    assert other.render("welcome", CTX).subject == "shop b"
    assert Templates(crm).render("welcome", CTX).subject == "default ws"
    assert Templates(crm).render("welcome", CTX, workspace="shop_b").subject == "shop b"


def test_syntax_error_names_part_and_line_and_stores_nothing(templates: Templates) -> None:
    html = "<p>one</p>\n<p>two</p>\n<p>{{ customer.name }</p>\n"
    with pytest.raises(TemplateError) as info:
        templates.save("broken", subject="ok", html=html)
    err = info.value
    assert err.field == "template.html"
    assert err.problem.startswith("line 3: ") and "'}'" in err.problem
    assert "{{ customer.name }</p>" in str(err.value)
    assert err.fix
    with pytest.raises(NotFound):
        templates.get("broken")

    templates.save("kept", subject="ok", text="fine")
    with pytest.raises(TemplateError) as info:
        templates.save("kept", subject="{% if %}", text="changed")
    assert info.value.field == "template.subject" and info.value.problem.startswith("line 1: ")
    assert templates.get("kept")["text"] == "fine"


def test_unknown_filter_is_caught_at_save(templates: Templates) -> None:
    with pytest.raises(TemplateError) as info:
        templates.save("x", subject="s", text="a\n{{ customer.name | shout }}")
    assert info.value.field == "template.text" and info.value.problem.startswith("line 2: ")
    assert "shout" in info.value.problem


@pytest.mark.parametrize(
    "name", ["", "../etc/passwd", "a/../b", "/abs", "welcome.html", "x.txt", "a b", "é", "a" * 201]
)
def test_bad_names_are_rejected(templates: Templates, name: str) -> None:
    with pytest.raises(TemplateError) as info:
        templates.save(name, subject="s", text="t")
    assert info.value.field == "name" and "template name" in info.value.problem


def test_a_body_and_a_subject_are_required(templates: Templates) -> None:
    with pytest.raises(TemplateError, match="no body"):
        templates.save("x", subject="s")
    with pytest.raises(TemplateError, match="empty subject"):
        templates.save("x", subject="  ", text="t")
    with pytest.raises(TemplateError, match="no subject"):
        templates.render({"html": "<p>x</p>"}, CTX)
    with pytest.raises(TemplateError, match="unknown template parts"):
        templates.render({"subject": "s", "body": "x"}, CTX)


def test_migration_matches_table_definition(crm: CRM) -> None:
    table = crm.db.tables["email_templates"]
    with crm.db.read() as conn:
        insp = sa.inspect(conn)
        columns = {c["name"]: c for c in insp.get_columns(table.name)}
        uniques = {u["name"]: u["column_names"] for u in insp.get_unique_constraints(table.name)}
    assert list(columns) == [c.name for c in table.columns]
    assert {n: c["nullable"] for n, c in columns.items()} == {c.name: c.nullable for c in table.columns}
    assert uniques == {"uq_ecrm_email_templates_ws_name": ["workspace_id", "name"]}


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def test_render_inline_returns_all_parts(templates: Templates) -> None:
    r = templates.render(
        {"subject": "Hi {{ customer.first_name }}", "html": "<p>{{ offer.name }}</p>", "text": "{{ offer.name }}!"},
        CTX,
    )
    assert isinstance(r, Rendered)
    assert r.subject == "Hi Ada"
    assert r.html is not None and "<p>Spring sale</p>" in r.html
    assert r.text == "Spring sale!"


def test_html_is_autoescaped_but_text_and_subject_are_not(templates: Templates) -> None:
    ctx = {"customer": {"name": "<script>alert('x')</script> & co"}}
    r = templates.render(
        {"subject": "For {{ customer.name }}", "html": "<p>{{ customer.name }}</p>", "text": "{{ customer.name }}"},
        ctx,
    )
    assert r.html is not None
    assert "<script>" not in r.html and "&lt;script&gt;" in r.html and "&amp; co" in r.html
    assert r.text == "<script>alert('x')</script> & co"
    assert r.subject == "For <script>alert('x')</script> & co"


def test_inheritance_from_the_built_in_layout(templates: Templates) -> None:
    html = (
        '{% extends "layouts/base.html" %}'
        "{% block preheader %}20% off{% endblock %}"
        "{% block content %}<h1>Hello {{ customer.first_name }}</h1>{% endblock %}"
    )
    ctx = dict(CTX, unsubscribe_url="https://crm.example.com/u/TOKEN", preferences_url="https://crm.example.com/p/T")
    r = templates.render({"subject": "Spring", "html": html}, ctx)
    assert r.html is not None
    doc = lxml.html.document_fromstring(r.html)
    assert doc.findtext(".//title") == "Spring"  # the subject is in the layout's context
    assert doc.find(".//h1").text == "Hello Ada"
    hrefs = [a.get("href") for a in doc.iter("a")]
    assert hrefs == ["https://crm.example.com/u/TOKEN", "https://crm.example.com/p/T"]

    plain = templates.render({"subject": "Spring", "html": html}, CTX)  # no unsubscribe_url: no footer links
    assert plain.html is not None and "Unsubscribe" not in plain.html and "<a " not in plain.html


def test_inheritance_from_a_stored_layout_follows_updates(templates: Templates) -> None:
    templates.save(
        "layouts/brand",
        subject="unused",
        html='<div class="brand">ACME {% block content %}{% endblock %}</div>',
        text="ACME\n{% block content %}{% endblock %}\n-- the ACME team",
    )
    templates.save(
        "promo",
        subject="Deal for {{ customer.first_name }}",
        html='{% extends "layouts/brand.html" %}{% block content %}<b>{{ offer.name }}</b>{% endblock %}',
        text='{% extends "layouts/brand.txt" %}{% block content %}{{ offer.name }}{% endblock %}',
    )
    r = templates.render("promo", CTX)
    assert r.subject == "Deal for Ada"
    assert r.html is not None and re.search(r'<div class="brand">ACME <b>Spring sale</b></div>', r.html)
    assert r.text == "ACME\nSpring sale\n-- the ACME team"

    templates.save(
        "layouts/brand",
        subject="unused",
        html="<section>{% block content %}{% endblock %}</section>",
        text="{% block content %}{% endblock %}",
    )
    again = templates.render("promo", CTX)
    assert again.html is not None and "<section><b>Spring sale</b></section>" in again.html
    assert again.text == "Spring sale"

    templates.save("layouts/brand", subject="unused", html="<i>{% block content %}{% endblock %}</i>")
    with pytest.raises(TemplateError) as info:  # the layout lost its text part
        templates.render("promo", CTX)
    assert info.value.field == "template.text" and "layouts/brand.txt" in info.value.problem


def test_directory_templates_include_and_are_shadowed_by_stored_ones(crm: CRM, tmp_path: Path) -> None:
    d = tmp_path / "mail"
    (d / "partials").mkdir(parents=True)
    (d / "receipt.subject").write_text("Receipt for {{ customer.first_name }}\n")
    (d / "receipt.html").write_text('<p>Thanks</p>{% include "partials/sig.html" %}')
    (d / "partials" / "sig.html").write_text("<p>{{ customer.name }} &mdash; signed</p>")
    (d / "secret.txt").write_text("top secret")
    t = Templates(crm, directory=d)
    r = t.render("receipt", {"customer": {"name": "<Ada>", "first_name": "Ada"}})
    assert r.subject == "Receipt for Ada"
    assert r.html is not None and "<p>&lt;Ada&gt; — signed</p>" in r.html
    assert "Thanks" in r.text and "<Ada>" in r.text  # derived from the HTML

    t.save("receipt", subject="stored wins", text="stored")
    assert t.render("receipt", CTX).subject == "stored wins"

    for escape in ('{% include "../mail/secret.txt" %}', '{% include "/etc/passwd" %}'):
        with pytest.raises(TemplateError, match="not found"):
            t.render({"subject": "s", "text": escape}, CTX)


def test_css_is_inlined_and_media_queries_kept(templates: Templates) -> None:
    html = (
        "<html><head><style>p.lead { color: #ff0000; } @media (max-width: 600px) { p.lead { color: blue; } }"
        '</style><link rel="stylesheet" href="http://127.0.0.1:9/never.css"></head>'
        '<body><p class="lead">Hi</p></body></html>'
    )
    r = templates.render({"subject": "s", "html": html}, CTX)
    assert r.html is not None
    doc = lxml.html.document_fromstring(r.html)
    assert "color: #ff0000" in doc.find(".//p").get("style")
    styles = "".join(s.text or "" for s in doc.iter("style"))
    assert "@media (max-width: 600px)" in styles and "p.lead { color: #ff0000" not in styles
    assert doc.find(".//link") is None  # remote stylesheets are neither loaded nor kept


def test_text_is_derived_from_html_when_missing(templates: Templates) -> None:
    html = '<h1>Spring</h1><p>Hello {{ customer.first_name }},</p><p><a href="{{ offer.content.url }}">Shop now</a></p>'
    r = templates.render({"subject": "s", "html": html}, CTX)
    assert "Spring" in r.text and "Hello Ada," in r.text
    assert "[Shop now](https://shop.example.com/spring)" in r.text
    assert "<" not in r.text


def test_strict_undefined_names_the_path_and_suggests(templates: Templates) -> None:
    with pytest.raises(TemplateError) as info:
        templates.render({"subject": "s", "html": "<p>\n{{ customer.nmae }}</p>"}, CTX)
    err = info.value
    assert err.field == "template.html"
    assert err.problem == "line 2: 'customer' has no attribute 'nmae'"
    assert "customer.name" in err.fix and "default" in err.fix

    with pytest.raises(TemplateError) as info:
        templates.render({"subject": "Hi {{ custmer.name }}", "text": "x"}, CTX)
    assert info.value.field == "template.subject"
    assert "'custmer' is undefined" in info.value.problem and "'customer'" in info.value.fix


def test_default_filter_covers_missing_and_none(templates: Templates) -> None:
    tpl = {"subject": "Hi {{ customer.name | default('friend') }}", "text": "{{ customer.nmae | default('friend') }}"}
    r = templates.render(tpl, {"customer": {"name": None}})
    assert (r.subject, r.text) == ("Hi friend", "friend")
    assert (
        templates.render({"subject": "{{ customer.name }}!", "text": "x"}, {"customer": {"name": None}}).subject == "!"
    )


def test_subject_with_a_line_break_is_rejected(templates: Templates) -> None:
    ctx = {"customer": {"name": "Ada\r\nBcc: victim@example.com"}}
    with pytest.raises(TemplateError) as info:
        templates.render({"subject": "Hi {{ customer.name }}", "text": "x"}, ctx)
    assert info.value.field == "template.subject" and "line break" in info.value.problem
    with pytest.raises(TemplateError):
        templates.render({"subject": "one\ntwo", "text": "x"}, CTX)
    with pytest.raises(TemplateError):
        templates.render({"subject": "one\u2028two", "text": "x"}, CTX)
    # leading/trailing white space (a file's final newline) is stripped, not an error
    assert templates.render({"subject": "  Hi {{ customer.first_name }}\n", "text": "x"}, CTX).subject == "Hi Ada"


def test_preview_merges_sample_data(templates: Templates) -> None:
    tpl = {
        "subject": "{{ offer.name }} for {{ customer.first_name }}",
        "html": '{% extends "layouts/base.html" %}{% block content %}{{ customer.attributes.tier }}{% endblock %}',
    }
    r = templates.preview(tpl)
    assert r.subject == "Spring sale: 20% off for Ada"
    assert r.html is not None and "gold" in r.html and "https://example.com/unsubscribe/PREVIEW" in r.html
    r = templates.preview(tpl, {"customer": {"first_name": "Grace", "attributes": {"tier": "silver"}}})
    assert r.subject == "Spring sale: 20% off for Grace" and r.html is not None and "silver" in r.html
    assert sample_context()["customer"]["name"] == "Ada Lovelace"


def test_unknown_template_name(templates: Templates) -> None:
    with pytest.raises(TemplateError) as info:
        templates.render("nope", CTX)
    assert info.value.field == "template" and "no such template" in info.value.problem


# ---------------------------------------------------------------------------
# the sandbox
# ---------------------------------------------------------------------------

SENTINEL = "ECRM_SENTINEL_PATH"

INJECTIONS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch ECRM_SENTINEL_PATH') }}",
    "{{ joiner.__init__.__globals__['__builtins__']['open']('ECRM_SENTINEL_PATH', 'w') }}",
    "{{ namespace.__init__.__globals__.os.popen('touch ECRM_SENTINEL_PATH').read() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch ECRM_SENTINEL_PATH') }}",
    "{{ self.__init__.__globals__ }}",
    "{{ customer.__class__.__base__.__subclasses__() }}",
    "{{ customer.attributes.update({'x': 1}) }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '{x.__class__}'.format_map({'x': ''}) }}",
    "{{ '{0.__class__}'.format_map({'0': ''}) }}",
    "{{ '%s'|format(''.__class__) }}",
    "{{ lipsum.__globals__ }}",
    "{{ range.__self__.__import__('os').system('touch ECRM_SENTINEL_PATH') }}",
    "{{ dict.__base__.__subclasses__() }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{{ (1).__class__.__base__ }}",
    "{{ loop.__class__ }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ range(10**9) | list }}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_injection_payloads_fail_cleanly_and_never_execute(
    templates: Templates, tmp_path: Path, payload: str, part: str
) -> None:
    sentinel = tmp_path / "pwned"
    source = payload.replace(SENTINEL, str(sentinel))
    tpl = {"subject": "s", "text": "t", part: source}
    try:
        r = templates.render(tpl, CTX)
    except TemplateError as exc:
        assert exc.field == f"template.{part}"
        assert exc.problem.startswith("line 1: ")
    else:  # rendered harmlessly: nothing internal leaks
        out = getattr(r, "subject" if part == "subject" else part) or ""
        assert "<class" not in out and "function" not in out and "module" not in out
    assert not sentinel.exists()
    assert templates.render({"subject": "ok", "text": "still {{ 1 + 1 }}"}, CTX).text == "still 2"


BOMBS = [
    "{{ 'x' * 10**9 }}",
    "{{ [1] * 10**9 }}",
    "{{ 9 ** (9 ** 9) }}",
    "{{ 'x' | center(999999999) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ 'x' | indent(999999999) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 999999999) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '%0999999999d' | format(1) }}",
    "{% set s = 'x' * 100000 %}{{ s | replace('x', s) }}",
    "{% set s = 'x' * 100000 %}{{ s.replace('x', s) }}",
    "{% set s = 'x' * 100000 %}{{ range(100000) | join(s) }}",
    "{% set s = 'x' * 100000 %}{{ s.join(range(100000) | map('string')) }}",
    "{% set ns = namespace(s='xx') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s='xx') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(80) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(80) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|string }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(80) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|tojson }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(80) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l ~ '' }}",
    "{% set ns = namespace(n=2) %}{% for i in range(100) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}",
    "{{ range(100000) | map('center', 1000000) | list | length }}",
    "{{ [1] | batch(999999999, 'x') | list }}",
    "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
]


@pytest.mark.parametrize("payload", BOMBS)
def test_output_and_time_bombs_are_bounded(crm: CRM, payload: str) -> None:
    templates = Templates(crm, max_seconds=0.5)
    with pytest.raises(TemplateError) as info:
        templates.render({"subject": "s", "text": payload}, CTX)
    assert info.value.field == "template.text"
    assert re.search(r"larger than|longer than|builds more than|too large|too deep|not allowed", info.value.problem)
    assert templates.render({"subject": "ok", "text": "fine"}, CTX).text == "fine"  # the worker goes on


def test_max_output_is_configurable_and_counts_bytes(crm: CRM) -> None:
    small = Templates(crm, max_output=100)
    assert small.render({"subject": "s", "text": "{{ 'é' * 50 }}"}, CTX).text == "é" * 50
    with pytest.raises(TemplateError, match="larger than 100 bytes"):
        small.render({"subject": "s", "text": "é{{ 'é' * 50 }}"}, CTX)
    with pytest.raises(TemplateError, match="larger than 100 bytes"):
        small.render({"subject": "s", "html": "<p>{% for i in range(60) %}{{ i }}{% endfor %}</p>"}, CTX)


def test_renders_in_parallel_threads_keep_their_own_budgets(crm: CRM) -> None:
    templates = Templates(crm, max_seconds=0.5)
    results: dict[str, object] = {}

    def bomb() -> None:
        try:
            templates.render(
                {
                    "subject": "s",
                    "text": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                },
                CTX,
            )
        except TemplateError as exc:
            results["bomb"] = exc.problem

    thread = threading.Thread(target=bomb)
    thread.start()
    good = [templates.render({"subject": "n{{ i }}", "text": "{{ i }}"}, {"i": i}).text for i in range(50)]
    thread.join()
    assert good == [str(i) for i in range(50)]
    assert "longer than" in str(results["bomb"])


# ---------------------------------------------------------------------------
# link helpers
# ---------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>t</title></head><body>
<p><a href="https://shop.example.com/p?a=1&amp;b=two#top">shop</a>
<a href="http://example.com/x">plain http</a>
<a href="mailto:help@example.com?subject=hi">mail</a>
<a href="tel:+441234">call</a>
<a href="#section">anchor</a>
<a href="/relative">relative</a>
<a>no href</a>
<a href="https://example.com/unsub" data-ecrm-notrack>unsubscribe</a>
<a href="https://example.com/keep">keep</a></p>
</body></html>"""


def test_rewrite_links_only_touches_http_links() -> None:
    seen: list[str] = []

    def make_url(href: str) -> str | None:
        seen.append(href)
        return None if href.endswith("/keep") else f"https://t.example.com/c?u={len(seen)}"

    out = rewrite_links(PAGE, make_url)
    assert seen == ["https://shop.example.com/p?a=1&b=two#top", "http://example.com/x", "https://example.com/keep"]
    assert out.startswith("<!DOCTYPE html>")
    doc = lxml.html.document_fromstring(out)
    hrefs = {a.text: a.get("href") for a in doc.iter("a")}
    assert hrefs == {
        "shop": "https://t.example.com/c?u=1",
        "plain http": "https://t.example.com/c?u=2",
        "mail": "mailto:help@example.com?subject=hi",
        "call": "tel:+441234",
        "anchor": "#section",
        "relative": "/relative",
        "no href": None,
        "unsubscribe": "https://example.com/unsub",
        "keep": "https://example.com/keep",
    }
    assert "data-ecrm-notrack" not in out
    assert doc.findtext(".//title") == "t"


def test_add_open_pixel_appends_to_body() -> None:
    out = add_open_pixel(PAGE, "https://t.example.com/o/TOKEN?x=1&y=2")
    doc = lxml.html.document_fromstring(out)
    body = doc.find(".//body")
    img = body[-1]
    assert img.tag == "img" and img.get("src") == "https://t.example.com/o/TOKEN?x=1&y=2"
    assert (img.get("alt"), img.get("width"), img.get("height")) == ("", "1", "1")
    assert len(doc.findall(".//a")) == 9 and out.startswith("<!DOCTYPE html>")
    frag = add_open_pixel("<p>hi</p>", "https://t/o")
    assert frag.startswith("<p>hi</p><img") and 'alt=""' in frag


def test_helpers_on_a_rendered_message(templates: Templates) -> None:
    html = '{% extends "layouts/base.html" %}{% block content %}<a href="{{ offer.content.url }}?c=1&d=2">Go</a>{% endblock %}'
    r = templates.render({"subject": "s", "html": html}, dict(CTX, unsubscribe_url="https://crm.example.com/u/1"))
    assert r.html is not None
    out = add_open_pixel(rewrite_links(r.html, lambda u: "https://crm.example.com/click?to=" + u), "https://crm/o")
    doc = lxml.html.document_fromstring(out)
    hrefs = [a.get("href") for a in doc.iter("a")]
    assert hrefs == [
        "https://crm.example.com/click?to=https://shop.example.com/spring?c=1&d=2",
        "https://crm.example.com/u/1",
    ]
    assert doc.find(".//body")[-1].get("src") == "https://crm/o"
    assert "@media" in out  # the layout's responsive rules survive
    # track_html does both in one parse of the document: the same result
    assert track_html(r.html, lambda u: "https://crm.example.com/click?to=" + u, "https://crm/o") == out
    assert track_html(PAGE, None, "https://t/o") == add_open_pixel(PAGE, "https://t/o")
    assert track_html(PAGE, lambda u: u + "#t") == rewrite_links(PAGE, lambda u: u + "#t")
    assert track_html("<p>hi</p>") == "<p>hi</p>"


def test_a_stored_layout_overrides_the_built_in_one(templates: Templates) -> None:
    tpl = {"subject": "s", "html": '{% extends "layouts/base.html" %}{% block content %}hi{% endblock %}'}
    assert "@media" in (templates.render(tpl, CTX).html or "")
    templates.save("layouts/base", subject="-", html="<main>{% block content %}{% endblock %}</main>")
    r = templates.render(tpl, CTX)
    assert r.html is not None and "<main>hi</main>" in r.html and "@media" not in r.html
    templates.delete("layouts/base")
    assert "@media" in (templates.render(tpl, CTX).html or "")
