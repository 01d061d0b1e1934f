"""HTML post-processing of rendered e-mails: nesting bound, CSS inlining,
plain-text derivation, click/open tracking.

The nesting bound (:func:`check_html`) runs before ``css_inline`` and lxml
see a document: their parsers and serialisers recurse per level of
nesting, and a template loop that opens 50,000 ``<div>`` would overflow the
C stack (a crash no Python code can catch).  The estimate follows the HTML
tokenizer (comments, raw-text elements such as ``<style>``, quoted attribute
values) and the tree builder's common implied tags; it errs on the deep
side.  With the default process isolation, a document that still crashes a
parser kills only the sandbox process.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "MAX_HTML_DEPTH",
    "HTMLTooDeep",
    "add_open_pixel",
    "check_html",
    "html_to_text",
    "nesting_depth",
    "rewrite_links",
    "track_html",
]

#: The deepest element nesting a rendered HTML part may have (lxml keeps at
#: most 255 levels; real e-mail layouts stay well under 50).
MAX_HTML_DEPTH = 200


class HTMLTooDeep(ValueError):
    """The HTML nests elements deeper than allowed."""


# ---------------------------------------------------------------------------
# Nesting depth, estimated by a tokenizer that follows the HTML standard's
# ---------------------------------------------------------------------------

_WS = "\t\n\f\r "
_TAG = re.compile(
    r"<!--(?:-?>|.*?(?:--!?>|\Z))"  # a comment; <!--> and <!---> end at once
    r"|<[!?][^>]*>?"  # doctype, CDATA in HTML, processing instruction: a bogus comment
    r"|</(?![A-Za-z])[^>]*>?"  # </ not followed by a letter: a bogus comment
    r"|<(/?)([A-Za-z][^\t\n\f\r />]*)"  # a start or end tag, then its attributes:
    r"((?>[\t\n\f\r /]+|[^\t\n\f\r />][^\t\n\f\r />=]*"
    r"(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:\"[^\"]*\"|'[^']*'|[^\t\n\f\r >]+)?)?)*)>"
    r"|<[A-Za-z/]",  # a tag that never ends: the rest of the document is inside it
    re.S,
)
_VOID = frozenset(
    "area base basefont bgsound br col embed frame hr image img input keygen link meta param source track wbr".split()
)
_RAW = frozenset("script style xmp iframe noembed noframes textarea title".split())
_SCOPE = frozenset("applet caption html table td th marquee object template".split())
# an opening tag that closes an open sibling at the top of the stack
_CLOSES = {
    "li": frozenset({"li"}),
    "dt": frozenset({"dt", "dd"}),
    "dd": frozenset({"dt", "dd"}),
    "p": frozenset({"p"}),
    "option": frozenset({"option"}),
    "optgroup": frozenset({"optgroup", "option"}),
    "tr": frozenset({"tr", "td", "th"}),
    "td": frozenset({"td", "th"}),
    "th": frozenset({"td", "th"}),
    "thead": frozenset({"thead", "tbody", "tfoot"}),
    "tbody": frozenset({"thead", "tbody", "tfoot"}),
    "tfoot": frozenset({"thead", "tbody", "tfoot"}),
    "rb": frozenset({"rb", "rt", "rp", "rtc"}),
    "rt": frozenset({"rb", "rt", "rp"}),
    "rp": frozenset({"rb", "rt", "rp"}),
}
_SECTIONS = frozenset({"tbody", "thead", "tfoot"})


def nesting_depth(html: str, *, stop_at: int | None = None, raw_noscript: bool = False) -> int:
    """The deepest element nesting an HTML parser builds from ``html``
    (``<html>`` and ``<body>`` included), estimated without building a tree.

    Stops counting past ``stop_at``.  Never much lower than what a browser or
    html5ever builds; higher for some sloppy markup (unclosed ``<b>`` and
    ``<div>``).  ``<noscript>`` is read as raw text with ``raw_noscript``
    (parsers differ there; :func:`check_html` tries both).
    """
    stack: list[str] = []
    deepest = 0
    pos = 0
    n = len(html)
    search = _TAG.search
    raw = _RAW | {"noscript"} if raw_noscript else _RAW
    while pos < n:
        m = search(html, pos)
        if m is None:
            break
        pos = m.end()
        name = m.group(2)
        if name is None:
            if m.group(0) in ("<", "</") or (len(m.group(0)) == 2 and m.group(0)[1].isalpha()):
                break  # a tag that runs to the end of the document
            continue  # a comment
        name = name.lower()
        if m.group(1):  # an end tag: close up to the open element, unless a scope boundary is in the way
            for i in range(len(stack) - 1, -1, -1):
                if stack[i] == name:
                    del stack[i:]
                    break
                if stack[i] in _SCOPE:
                    break
            continue
        if name in _VOID:
            continue
        closes = _CLOSES.get(name)
        if closes is not None and stack and stack[-1] in closes:
            stack.pop()
        if name == "tr" and stack and stack[-1] == "table":
            stack.append("tbody")
        elif name in ("td", "th") and stack:
            if stack[-1] == "table":
                stack.append("tbody")
            if stack[-1] in _SECTIONS:
                stack.append("tr")
        stack.append(name)
        if len(stack) > deepest:
            deepest = len(stack)
            if stop_at is not None and deepest + 2 > stop_at:
                return deepest + 2
        if name in raw or name == "plaintext":
            if name == "plaintext":
                break
            end = re.compile(rf"</{re.escape(name)}[{_WS}/>]", re.I).search(html, pos)
            if end is None:
                break
            pos = end.start()
    return deepest + 2  # <html><body>


def check_html(html: str, max_depth: int = MAX_HTML_DEPTH) -> None:
    """Raise :class:`HTMLTooDeep` if ``html`` nests elements deeper than ``max_depth``."""
    if html.count("<") <= max_depth - 2:
        return  # too few tags to nest that deep
    depth = nesting_depth(html, stop_at=max_depth)
    if depth <= max_depth and "<noscript" in html.lower():
        depth = max(depth, nesting_depth(html, stop_at=max_depth, raw_noscript=True))
    if depth > max_depth:
        raise HTMLTooDeep(
            f"the HTML nests elements more than {max_depth} levels deep (e-mail clients and the CSS inliner "
            "cannot process it)"
        )


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def html_to_text(html: str) -> str:
    """A plain-text rendering of ``html`` (links shown as ``[text](url)``)."""
    if not html.strip():
        return ""
    check_html(html)
    from inscriptis import get_text  # type: ignore[import-untyped]
    from inscriptis.model.config import ParserConfig  # type: ignore[import-untyped]

    text = get_text(html, ParserConfig(display_links=True))
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_HTML_DOC = re.compile(r"<html[\s>]", re.I)


def _parse(html: str) -> tuple[Any, bool]:
    import lxml.html  # type: ignore[import-untyped]

    check_html(html)
    if _HTML_DOC.search(html):
        return lxml.html.document_fromstring(html), True
    return lxml.html.fragment_fromstring(html, create_parent="div"), False


def _serialise(root: Any, document: bool) -> str:
    import html as htmllib

    import lxml.html  # type: ignore[import-untyped]

    if document:
        tree = root.getroottree()
        return str(lxml.html.tostring(tree, encoding="unicode", doctype=tree.docinfo.doctype or None))
    head = htmllib.escape(root.text or "", quote=False)
    return head + "".join(lxml.html.tostring(child, encoding="unicode") for child in root)


def rewrite_links(html: str, make_url: Callable[[str], str | None]) -> str:
    """Rewrite every ``<a href>`` with an ``http``/``https`` URL through ``make_url``.

    ``make_url(href)`` returns the new URL, or ``None`` to leave the link
    alone.  ``mailto:``, ``tel:``, ``#anchors``, relative links and links with
    the attribute ``data-ecrm-notrack`` are left unchanged (the attribute is
    removed from the output).  The rest of the document is kept.
    """
    return track_html(html, make_url)


def add_open_pixel(html: str, url: str) -> str:
    """Append a 1x1 tracking ``<img>`` (``alt=""``) at the end of ``<body>``."""
    return track_html(html, pixel_url=url)


def track_html(html: str, make_url: Callable[[str], str | None] | None = None, pixel_url: str | None = None) -> str:
    """:func:`rewrite_links` (when ``make_url`` is given) and :func:`add_open_pixel`
    (when ``pixel_url`` is given) in one parse of the document.

    Raises :class:`HTMLTooDeep` for a document nested deeper than
    :data:`MAX_HTML_DEPTH`.
    """
    root, document = _parse(html)
    if make_url is not None:
        for a in root.iter("a"):
            if "data-ecrm-notrack" in a.attrib:
                del a.attrib["data-ecrm-notrack"]
                continue
            href = a.get("href")
            if href is None:
                continue
            href = href.strip()
            if urlsplit(href).scheme.lower() not in ("http", "https"):
                continue
            new = make_url(href)
            if new is not None:
                a.set("href", new)
    if pixel_url is not None:
        import lxml.html  # type: ignore[import-untyped]

        body = root.find(".//body") if document else root
        if body is None:
            body = root
        img = lxml.html.Element(
            "img",
            src=pixel_url,
            width="1",
            height="1",
            alt="",
            style="display:block;width:1px;height:1px;border:0;margin:0;padding:0",
        )
        body.append(img)
    return _serialise(root, document)


# ---------------------------------------------------------------------------
# Tracking without the signing key: placeholders, filled in by the caller
# ---------------------------------------------------------------------------


def track_placeholders(
    html: str, nonce: str, *, clicks: bool, pixel: bool, skip_prefix: str | None
) -> tuple[str, list[str]]:
    """:func:`track_html` with ``{nonce}{i}`` in place of the i-th tracked link
    and ``{nonce}p`` as the pixel's ``src``; returns the HTML and the original
    links.  The sandbox process does this (it has no signing key); the caller
    signs the links and calls :func:`fill_placeholders`."""
    links: list[str] = []

    def placeholder(url: str) -> str | None:
        if skip_prefix is not None and url.startswith(skip_prefix):
            return None
        links.append(url)
        return f"{nonce}{len(links) - 1}"

    out = track_html(html, placeholder if clicks else None, f"{nonce}p" if pixel else None)
    return out, links


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def fill_placeholders(html: str, nonce: str, urls: list[str], pixel_url: str | None) -> str:
    """Put the signed ``urls`` (and the ``pixel_url``) in place of the placeholders."""
    if not urls and pixel_url is None:
        return html

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "p":
            return _attr(pixel_url or "")
        i = int(key)
        return _attr(urls[i]) if i < len(urls) else m.group(0)

    return re.sub(re.escape(nonce) + r"(p|\d+)", sub, html)
