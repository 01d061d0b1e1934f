"""HEAD on the e-mail channel's link routes through ecrm-api, over real HTTP
on 127.0.0.1 (issue 14, item 10): link checkers and mail scanners send HEAD;
they get the GET's status and headers, no body, and nothing is recorded."""

from __future__ import annotations

import re
import socket

import httpx
import pytest
from ecrm_api import plugin as api_plugin
from ecrm_api.app import create_app
from ecrm_api.testing import serve_in_thread
from ecrm_email import plugin as email_plugin
from ecrm_email.testing import smtp_config

from ecrm_core.testing import make_crm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def shop(tmp_path, smtp_server):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    crm = make_crm(
        tmp_path / "shop.db",
        plugins=[email_plugin, api_plugin],
        secret="head-secret-0123456789abcdef",
        channels={"email": {"from": "Shop <news@shop.example>", "base_url": base, "smtp": smtp_config(smtp_server)}},
    )
    url, stop = serve_in_thread(create_app(crm, rate_limit=None), port=port)
    assert url == base
    yield crm, smtp_server
    stop()
    crm.close()


def test_head_on_link_routes_answers_like_get_without_body_or_events(shop):
    crm, server = shop
    ada = crm.customers.create(email="ada@example.com", consent={"email": "granted"})
    crm.messages.send(
        "email",
        ada.id,
        {"subject": "Hi", "text": "t", "html": '<p><a href="https://shop.example/sale">sale</a></p>'},
    )
    assert crm.messages.dispatch().sent == 1
    [msg] = server.messages
    [unsubscribe] = re.findall(r"<(https?://[^>]+)>", msg["List-Unsubscribe"])
    html = msg.get_body(("html",)).get_content()
    [click] = [u.replace("&amp;", "&") for u in re.findall(r'href="([^"]+)"', html) if "/click/" in u]
    [pixel] = [u.replace("&amp;", "&") for u in re.findall(r'src="([^"]+)"', html) if "/open/" in u]
    prefs = crm.channels.get("email").links.preferences_url(customer_id=ada.id, workspace=crm.workspace)
    before = [i.kind for i in crm.interactions.timeline(ada.id)]
    with httpx.Client(follow_redirects=False, timeout=10) as http:
        for url in (click, unsubscribe, pixel, prefs):
            get = http.get(url) if url != click else None
            head = http.head(url)
            assert head.status_code != 405, url
            assert head.content == b""
            if url == click:
                assert head.status_code in (302, 303, 307) and head.headers["location"] == "https://shop.example/sale"
            else:
                assert get is not None and head.status_code == get.status_code == 200
                assert head.headers["content-type"] == get.headers["content-type"]
        # a tampered token answers HEAD with the error status, still no body
        bad = http.head(click[:-3] + ("AAA" if not click.endswith("AAA") else "BBB"))
        assert bad.status_code in (400, 403) and bad.content == b""
        # the webhook is POST only
        assert http.head(crm.channels.get("email").base_url + "/channels/email/webhook").status_code == 405
    after = [i.kind for i in crm.interactions.timeline(ada.id)]
    assert after.count("click") == 0 and after.count("unsubscribe") == 0
    assert after.count("email_open") == before.count("email_open") + 1  # the GET of the pixel, not the HEAD
    assert crm.customers.get(ada.id).consent.get("email:marketing") is None
