"""Anonymous visitors: signed cookies (HMAC with the workspace secret, expiry, workspace bound),
a corpus of forgeries that never reveal history, and stitching on login through the core's aliases."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from ecrm_personalize import personalize, plugin
from ecrm_personalize.tokens import issue_visitor, verify_visitor

from ecrm_core import CRM, ValidationError

from .conftest import SECRET, Shop


def _known_visitor(shop: Shop) -> tuple[str, int]:
    """A visitor whose cookie maps (through the ``anonymous`` alias) to a prospect with history."""
    cookie = shop.p.visitor_cookie()
    vid = shop.p.visitor_id(cookie)
    assert vid is not None
    shop.crm.interactions.track("purchase", anonymous_id=vid, properties={"skus": ["S1"]})
    prospect = shop.crm.customers.find(alias=__import__("ecrm_core").Alias("anonymous", vid))
    assert prospect is not None and prospect.id is not None
    return cookie, prospect.id


def test_returning_visitor_is_recognised_by_cookie(shop: Shop) -> None:
    shop.p.define("home", k=3)
    cookie, prospect = _known_visitor(shop)
    d = shop.p.decide(cookie, "home")
    assert d.customer_id == prospect and d.visitor is None and d.fallback is None
    assert d.items[0].sku == "S2"  # from their own purchase of S1


def test_new_visitor_gets_a_cookie_that_works_next_time(shop: Shop) -> None:
    shop.p.define("home")
    first = shop.p.decide(None, "home")
    assert first.visitor is not None and first.customer_id is None
    again = shop.p.decide(first.visitor, "home")
    assert again.visitor is None and again.fallback is None  # valid cookie: no new one


def _flip(s: str, i: int) -> str:
    c = s[i]
    return s[:i] + ("a" if c != "a" else "b") + s[i + 1 :]


def _forgeries(shop: Shop, crm_factory: Callable[..., CRM]) -> dict[str, object]:
    good, _ = _known_visitor(shop)
    vid, exp, mac = good.split(".")
    other_ws = shop.crm.in_workspace("other")
    other_secret = crm_factory(plugins=[plugin], secret="another-secret-of-enough-length", load_entrypoints=False)
    decision = shop.p.decide(None, "home").id
    shop.clock.advance(days=-500)
    expired = issue_visitor(shop.crm, vid)
    shop.clock.advance(days=500)
    return {
        "tampered mac": f"{vid}.{exp}.{_flip(mac, 3)}",
        "tampered visitor id": f"{_flip(vid, 5)}.{exp}.{mac}",
        "later expiry, same mac": f"{vid}.{exp}z.{mac}",
        "expired": expired,
        "other workspace": issue_visitor(other_ws, vid),
        "other secret": issue_visitor(other_secret, vid),
        "mac removed": f"{vid}.{exp}.",
        "two parts": f"{vid}.{exp}",
        "four parts": f"{good}.x",
        "upper-case mac": f"{vid}.{exp}.{mac.upper()}",
        "empty": "",
        "only the visitor id": vid,
        "decision id as cookie": decision,
        "base64 junk": base64.urlsafe_b64encode(b"\x00" * 40).decode(),
        "very long": good + "A" * 5000,
        "unicode": f"{vid}.{exp}.{mac[:-1]}é",
        "mac of the old format (no workspace)": f"{vid}.{exp}.{shop.crm.signer.mac('personalize.visitor', f'{vid}.{exp}', size=16)}",
        "null bytes": f"{vid}\x00.{exp}.{mac}",
    }


def test_forged_cookies_never_reveal_history(shop: Shop, crm_factory: Callable[..., CRM]) -> None:
    shop.p.define("home", k=3)
    corpus = _forgeries(shop, crm_factory)
    assert len(corpus) >= 10
    for name, cookie in corpus.items():
        assert verify_visitor(shop.crm, cookie) is None, name
        d = shop.p.decide(cookie, "home")  # type: ignore[arg-type]
        assert d.customer_id is None, name
        assert d.fallback == "invalid_visitor", name
        assert d.visitor is not None and d.visitor != cookie, name  # a new visitor
        assert d.items[0].sku == "S3", name  # popular: not the prospect's "S2"
        with pytest.raises(ValidationError):
            shop.p.identify(cookie, shop.customer())  # type: ignore[arg-type]


def test_non_string_cookies_are_refused(empty_shop: Shop) -> None:
    for value in (None, 12, b"bytes", ["x"], {"v": 1}):
        assert verify_visitor(empty_shop.crm, value) is None


def test_rotated_secret_keeps_cookies_valid(crm_factory: Callable[..., CRM]) -> None:
    old = crm_factory(plugins=[plugin], secret=SECRET)
    cookie = personalize(old).visitor_cookie()
    rotated = crm_factory(plugins=[plugin], secret=[SECRET, "a-brand-new-secret-0123456789"])
    assert personalize(rotated).visitor_id(cookie) == personalize(old).visitor_id(cookie)


def test_login_stitches_the_visitor_onto_the_customer(shop: Shop) -> None:
    shop.p.define("home", k=3)
    cookie, prospect = _known_visitor(shop)
    anon = shop.p.decide(cookie, "home")
    shop.p.report(anon.id, "impression")
    ada = shop.customer(name="Ada", email="ada@example.com")
    assert shop.p.identify(cookie, ada) == prospect  # the prospect is merged into Ada
    assert shop.crm.customers.get(prospect).id == ada
    d = shop.p.decide(cookie, "home")  # the same cookie now means Ada
    assert d.customer_id == ada and d.variant["greeting"].endswith("Ada!")
    assert d.items[0].sku == "S2"  # her history came along
    assert shop.p.decide(ada, "home").items[0].sku == "S2"
    kinds = {s.kind for s in shop.crm.interactions.view(ada).summary}
    assert {"purchase", "personalize_impression"} <= kinds


def test_login_of_a_visitor_without_history_adds_an_alias(shop: Shop) -> None:
    cookie = shop.p.visitor_cookie()
    bob = shop.customer(name="Bob")
    assert shop.p.identify(cookie, bob) is None
    vid = shop.p.visitor_id(cookie)
    assert any(a.kind == "anonymous" and a.value == vid for a in shop.crm.customers.aliases(bob))
    assert shop.p.identify(cookie, bob) is None  # twice: nothing more
    shop.p.define("home")
    assert shop.p.decide(cookie, "home").customer_id == bob
