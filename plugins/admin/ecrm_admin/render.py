"""Rendering: the Jinja2 environment (autoescaped), what plugins return turned
into HTML, and charts (``ecrm_core.charts``) as SVG images."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

__all__ = ["environment", "to_html", "chart_img", "error_box"]

#: The vendored htmx file, under the admin's static files.
HTMX = "vendor/htmx-2.0.11/htmx.min.js"

_env: Environment | None = None
_lock = threading.Lock()
_charts: OrderedDict[str, str] = OrderedDict()
_MAX_CHARTS = 256


def environment() -> Environment:
    """The admin's Jinja2 environment: every ``{{ value }}`` is HTML-escaped."""
    global _env
    if _env is None:
        env = Environment(
            loader=PackageLoader("ecrm_admin", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["html"] = to_html
        env.filters["when"] = _when
        env.filters["pathpart"] = pathpart
        env.globals["htmx_js"] = HTMX
        _env = env
    return _env


def pathpart(value: Any) -> str:
    """``value`` as one URL path segment: every character but letters, digits and
    ``_.-~`` percent-encoded (UTF-8), ``/`` included; ``.``/``..`` whole are
    encoded too, so that no browser reads them as a dot segment."""
    from urllib.parse import quote

    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text in (".", "..") else text


def _when(value: Any) -> str:
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M") if hasattr(value, "strftime") else str(value)


def chart_img(chart: Any, *, css: str = "chart") -> Markup:
    """An ``<img>`` of the chart's SVG (a ``data:`` URL: no inline script or style
    reaches the page), with the title and caption as its text alternative."""
    from ecrm_core.charts import render

    key = hashlib.sha256(json.dumps(chart.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    with _lock:
        data = _charts.get(key)
        if data is not None:
            _charts.move_to_end(key)
    if data is None:
        data = base64.b64encode(render(chart, "svg")).decode("ascii")
        with _lock:
            _charts[key] = data
            while len(_charts) > _MAX_CHARTS:
                _charts.popitem(last=False)
    alt = chart.title + (f". {chart.caption}" if chart.caption else "")
    caption = Markup("<figcaption>{}</figcaption>").format(chart.caption) if chart.caption else Markup("")
    return Markup('<figure class="{}"><img src="data:image/svg+xml;base64,{}" alt="{}">{}</figure>').format(
        css, data, alt, caption
    )


def to_html(value: Any) -> Markup:
    """What a plugin page or widget returned, as HTML.

    ``None``: nothing; an object with ``__html__`` (``markupsafe.Markup``):
    as is, the plugin escaped it; a :class:`~ecrm_core.charts.Chart`: its
    SVG; a list or tuple: each item; anything else: ``str(value)``, escaped.
    """
    if value is None:
        return Markup("")
    if hasattr(value, "__html__"):
        return Markup(value.__html__())
    from ecrm_core.charts import Chart

    if isinstance(value, Chart):
        return chart_img(value)
    if isinstance(value, (list, tuple)):
        return Markup("").join(to_html(v) for v in value)
    return Markup("<p>{}</p>").format(str(value))


def error_box(title: str, message: str) -> Markup:
    return Markup('<div class="error-box" role="alert"><strong>{}</strong> {}</div>').format(title, message)


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> Markup:
    """A plain ``<table>`` with every cell escaped (for plugin pages)."""
    head = Markup("").join(Markup("<th scope=col>{}</th>").format(h) for h in headers)
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(Markup("").join(Markup("<td>{}</td>").format(escape(c)) for c in row))
        for row in rows
    )
    return Markup("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>").format(head, body)
