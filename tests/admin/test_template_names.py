"""E-mail template names in the admin's URLs: a name is one encoded path
segment, so names with "/", dots, or the words of the fixed routes ("new",
"preview") each reach their own page; names the e-mail plugin refuses
(spaces, non-ASCII, "..") get a clear 400 with the form kept, never a
routing error or another template's page."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import pytest

GOOD = ("news/spring", "layouts/brand/v2", "a..b/c.d", "new", "preview", "edit", "edit/new", "x-y_z.1")
BAD = ("../etc/passwd", "a/../b", "with space", "nested/with space", "ünïcode", "日本/メール", "a/", "a//b", "..")


def _links(page: str) -> list[str]:
    return re.findall(r'href="(/admin/templates/edit/[^"]+)"', page)


@pytest.mark.parametrize("name", GOOD)
def test_a_name_with_slashes_dots_or_a_route_word_has_its_own_page(admin_client: Any, name: str) -> None:
    b = admin_client("marketer")
    saved = b.post("/templates/new", {"name": name, "subject": f"Subject of {name}", "text": "Hello"})
    assert saved.status_code == 303, saved.text
    location = saved.headers["location"]
    assert location.startswith("/admin/templates/edit/") and location.endswith("?saved=1")
    segment = location[len("/admin/templates/edit/") : -len("?saved=1")]
    assert "/" not in segment and unquote(segment) == name  # one segment, the whole name
    page = b.client.get(location)
    assert page.status_code == 200
    assert f'value="Subject of {name}"' in page.text
    # the list links to the same page; editing there updates this template, not another
    (link,) = [u for u in _links(b.get("/templates").text) if unquote(u.rsplit("/", 1)[1]) == name]
    edited = b.client.post(link, data={"_csrf": b.csrf(), "subject": "Changed", "text": "Hi"}, follow_redirects=False)
    assert edited.status_code == 303 and edited.headers["location"] == location
    assert 'value="Changed"' in b.client.get(link).text
    # the fixed routes still work beside such names
    assert 'id="t-name"' in b.get("/templates/new").text


def test_a_literal_slash_in_the_path_reaches_the_same_template(admin_client: Any) -> None:
    b = admin_client("marketer")
    assert b.post("/templates/new", {"name": "news/spring", "subject": "S", "text": "T"}).status_code == 303
    for path in ("/templates/edit/news/spring", "/templates/edit/news%2Fspring"):
        page = b.get(path)
        assert page.status_code == 200 and 'value="S"' in page.text, path


@pytest.mark.parametrize("name", BAD)
def test_a_name_the_email_plugin_refuses_is_a_clear_error_and_the_form_is_kept(admin_client: Any, name: str) -> None:
    b = admin_client("marketer")
    refused = b.post("/templates/new", {"name": name, "subject": "Kept subject", "text": "Kept text"})
    assert refused.status_code == 400
    assert "not a valid template name" in refused.text
    assert 'value="Kept subject"' in refused.text and "Kept text" in refused.text
    assert _links(b.get("/templates").text) == []  # nothing stored


@pytest.mark.parametrize(
    "path", ["/templates/edit/with%20space", "/templates/edit/%C3%BCn", "/templates/edit/a%2F..%2Fb"]
)
def test_opening_an_impossible_name_is_a_400_page(admin_client: Any, path: str) -> None:
    b = admin_client("marketer")
    page = b.get(path)
    assert page.status_code == 400 and "not a valid template name" in page.text


def test_an_unknown_name_is_a_404_page(admin_client: Any) -> None:
    b = admin_client("marketer")
    page = b.get("/templates/edit/news%2Fnothing")
    assert page.status_code == 404 and "news/nothing" in page.text
