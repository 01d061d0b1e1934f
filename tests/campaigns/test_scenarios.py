"""The seeds' scenarios, end to end: campaigns run by the worker's jobs, e-mail over real SMTP
(aiosmtpd on 127.0.0.1), the messages parsed back.

* a customer buys -> within a day an e-mail with similar products and a discount offer;
* a customer inactive for 90 days -> a win-back offer;
* the holdout receives nothing, and the report compares the two groups;
* a birthday e-mail at 09:00 in the customer's timezone;
* one customer whose data breaks the template is skipped with the reason, the others get theirs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ecrm_email")
pytest.importorskip("aiosmtpd")
from ecrm_campaigns import campaigns
from ecrm_campaigns import plugin as campaigns_plugin
from ecrm_email import plugin as email_plugin
from ecrm_email.testing import SMTPTestServer, smtp_config

from ecrm_core import CRM
from ecrm_core.testing import FakeClock, make_crm

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday

CATALOG = {
    "shoes": [{"name": "Trail runner"}, {"name": "City sneaker"}, {"name": "Rain boot"}],
    "hats": [{"name": "Wool beanie"}, {"name": "Sun hat"}],
}


class Shop:
    def __init__(self, crm: CRM, smtp: SMTPTestServer, clock: FakeClock) -> None:
        self.crm, self.smtp, self.clock = crm, smtp, clock
        self.svc = campaigns(crm)

    def customer(self, n: int, **fields: Any) -> int:
        return self.crm.customers.create(
            email=f"c{n}@example.com", name=f"Customer {n}", consent={"email": "granted"}, **fields
        ).id

    def worker(self) -> None:
        """``ecrm worker --once``: due campaign steps, then delivery over SMTP."""
        from ecrm_core.worker import JobRunner
        from ecrm_core.worker.inprocess import InProcessExecutor

        runner = JobRunner(self.crm, jobs=["campaigns.*", "messages.*"])
        for _ in range(2):
            InProcessExecutor(runner).run(once=True)

    def mail_to(self, address: str) -> list[Any]:
        return [m for m in self.smtp.messages if m["To"] == address]


@pytest.fixture
def shop(tmp_path: Path, smtp_server: SMTPTestServer) -> Iterator[Shop]:
    clock = FakeClock(T0)
    crm = make_crm(
        tmp_path / "shop.db",
        plugins=[email_plugin, campaigns_plugin],
        clock=clock,
        secret="scenario-secret-0123456789abcdef",
        channels={
            "email": {
                "from": "Shop <news@shop.example>",
                "base_url": "http://127.0.0.1:9",
                "smtp": smtp_config(smtp_server),
            }
        },
    )
    yield Shop(crm, smtp_server, clock)
    crm.close()


def _text(msg: Any) -> str:
    return str(msg.get_body(("plain",)).get_content())


def test_a_purchase_brings_similar_products_and_a_discount_within_a_day(shop: Shop) -> None:
    crm = shop.crm
    crm.offers.create(
        "thanks10", "10 % off your next order", kind="discount", status="active", content={"code": "THANKS10"}
    )
    shop.svc.save(
        {
            "key": "post_purchase",
            "name": "After a purchase",
            "trigger": {"type": "interaction", "kind": "purchase", "where": "amount >= 20"},
            "offers": [{"code": "thanks10", "limit": 1}],
            "reentry": {"policy": "cooldown", "cooldown": "30d"},
            "steps": [
                {"id": "settle", "type": "wait", "duration": "2h", "next": "similar"},
                {
                    "id": "similar",
                    "type": "send",
                    "channel": "email",
                    "offer": "thanks10",
                    "context": {"catalog": CATALOG},
                    "template": {
                        "subject": "{{ customer.name }}, more {{ customer.attributes.last_category | default('ideas') }} for you",
                        "text": (
                            # the save-time check renders with a sample customer who has no attributes:
                            # a template says what to do without them (the default)
                            "{% for p in catalog.get(customer.attributes.last_category | default(''), []) %}"
                            "{% if p.name != customer.attributes.last_product | default('') %}"
                            "* {{ p.name }}\n{% endif %}"
                            "{% endfor %}Use {{ offer.content.code }}: {{ offer.name }}.\n"
                            "Unsubscribe: {{ unsubscribe_url }}"
                        ),
                    },
                },
            ],
        }
    )
    shop.svc.start("post_purchase")
    ada = shop.customer(1, attributes={"last_category": "shoes", "last_product": "Trail runner"})
    small = shop.customer(2, attributes={"last_category": "hats", "last_product": "Sun hat"})
    crm.interactions.track(
        "purchase", customer_id=ada, amount="89.00", currency="EUR", properties={"category": "shoes"}
    )
    crm.interactions.track("purchase", customer_id=small, amount="9.00", currency="EUR")  # under the filter
    shop.worker()
    assert shop.smtp.messages == []  # the journey waits two hours first
    shop.clock.advance(hours=2, minutes=1)
    shop.worker()
    [mail] = shop.mail_to("c1@example.com")
    assert mail["Subject"] == "Customer 1, more shoes for you"
    text = _text(mail)
    assert "* City sneaker" in text and "* Rain boot" in text and "Trail runner" not in text  # similar, not the same
    assert "Use THANKS10: 10 % off your next order." in text
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert shop.clock() - T0 < timedelta(days=1)
    assert shop.mail_to("c2@example.com") == []
    # a second purchase within the cooldown brings no second e-mail
    crm.interactions.track("purchase", customer_id=ada, amount="40.00", currency="EUR")
    shop.clock.advance(hours=3)
    shop.worker()
    assert len(shop.mail_to("c1@example.com")) == 1


WINBACK = {
    "key": "winback",
    "name": "Win back",
    "trigger": {"type": "segment_entered", "segment": "lapsed"},
    "offers": ["comeback20"],
    "goal": {"kind": "purchase", "within": "14d", "exit": True},
    "steps": [
        {
            "id": "offer",
            "type": "send",
            "channel": "email",
            "offer": "comeback20",
            "template": {
                "subject": "We miss you, {{ customer.name }}",
                "text": "{{ offer.name }}: {{ offer.content.code }}",
            },
        }
    ],
}


def _lapsing(shop: Shop, n: int, days_ago: int = 89) -> list[int]:
    ids = []
    for k in range(n):
        cid = shop.customer(100 + k)
        shop.crm.interactions.track(
            "purchase", customer_id=cid, amount="30.00", currency="EUR", occurred_at=T0 - timedelta(days=days_ago)
        )
        ids.append(cid)
    return ids


def test_ninety_days_inactive_brings_a_win_back_offer(shop: Shop) -> None:
    crm = shop.crm
    crm.segments.create("lapsed", rule="purchase.count(730d) >= 1 and purchase.count(90d) == 0")
    crm.offers.create(
        "comeback20", "20 % off to welcome you back", kind="discount", status="active", content={"code": "BACK20"}
    )
    shop.svc.save(WINBACK)
    shop.svc.start("winback")
    [old] = _lapsing(shop, 1, days_ago=89)  # active 89 days ago: not yet
    recent = shop.customer(1)
    crm.interactions.track(
        "purchase", customer_id=recent, amount="30.00", currency="EUR", occurred_at=T0 - timedelta(days=10)
    )
    crm.segments.refresh()
    shop.worker()
    assert shop.smtp.messages == []
    shop.clock.advance(days=2)  # now 91 days since the last purchase
    crm.segments.refresh()  # what the worker's segments.refresh job does every 15 minutes
    shop.worker()
    [mail] = shop.mail_to("c100@example.com")
    assert mail["Subject"] == "We miss you, Customer 100" and "20 % off to welcome you back: BACK20" in _text(mail)
    assert shop.mail_to("c1@example.com") == []
    assert shop.svc.enrollment("winback", old)["status"] == "done"


def test_the_holdout_receives_nothing_and_the_report_compares_the_groups(shop: Shop) -> None:
    crm = shop.crm
    crm.segments.create("lapsed", rule="purchase.count(730d) >= 1 and purchase.count(90d) == 0")
    crm.offers.create("comeback20", "20 % off", kind="discount", status="active", content={"code": "BACK20"})
    shop.svc.save({**WINBACK, "holdout": 30})
    shop.svc.start("winback")
    ids = _lapsing(shop, 24, days_ago=91)  # lapsed already: they enter as the purchases are recorded
    shop.worker()
    arms = {cid: shop.svc.enrollment("winback", cid)["arm"] for cid in ids}
    held = [cid for cid in ids if arms[cid] == "holdout"]
    treated = [cid for cid in ids if arms[cid] == "main"]
    assert held and treated
    received = {m["To"] for m in shop.smtp.messages}
    emails = {cid: crm.customers.get(cid).email for cid in ids}
    assert received == {emails[c] for c in treated}  # the holdout got nothing at all
    # a week later some customers of both groups came back
    shop.clock.advance(days=7)
    for cid in treated[: len(treated) // 2] + held[:1]:
        crm.interactions.track("purchase", customer_id=cid, amount="50.00", currency="EUR")
    report = shop.svc.evaluate("winback")
    got = {a.name: a for a in report.arms}
    assert (got["holdout"].entered, got["holdout"].messaged, got["holdout"].converted) == (len(held), 0, 1)
    assert (got["main"].entered, got["main"].sent, got["main"].converted) == (
        len(treated),
        len(treated),
        len(treated) // 2,
    )
    [uplift] = report.uplifts
    assert uplift.arm == "main" and uplift.points == pytest.approx(
        (len(treated) // 2 / len(treated) - 1 / len(held)) * 100
    )
    summary = " ".join(report.summary())
    assert "held out and sent nothing" in summary and "main lifts conversion" in summary
    [step] = [s for s in report.steps if s.arm == "main"]
    assert step.step == "offer" and step.sent == len(treated) and step.converted == len(treated) // 2
    assert step.revenue_per_recipient > 0


def test_a_birthday_email_at_nine_in_the_customers_timezone(shop: Shop) -> None:
    from ecrm_core.worker import JobRunner

    crm = shop.crm
    seoul = shop.customer(1, timezone="Asia/Seoul", attributes={"birthday": "1990-03-03"})
    shop.customer(2, timezone="America/New_York", attributes={"birthday": "1990-03-03"})
    shop.svc.save(
        {
            "key": "bday",
            "name": "Birthday",
            "trigger": {"type": "date", "attribute": "attributes.birthday", "time": "09:00"},
            "reentry": {"policy": "cooldown", "cooldown": "300d"},
            "steps": [
                {
                    "id": "wish",
                    "type": "send",
                    "channel": "email",
                    "template": {"subject": "Happy birthday {{ customer.name }}", "text": "x"},
                }
            ],
        }
    )
    shop.svc.start("bday")
    schedule = JobRunner(crm, jobs=["campaigns.schedule"])
    shop.clock.now = datetime(2026, 3, 2, 23, 59, tzinfo=UTC)  # 08:59 on 3 March in Seoul
    schedule.tick("campaigns.schedule", "default", force=True)
    shop.worker()
    assert shop.smtp.messages == []
    shop.clock.advance(minutes=15)  # 09:14 in Seoul (date triggers run every 15 minutes); still the 2nd in New York
    schedule.tick("campaigns.schedule", "default", force=True)
    shop.worker()
    assert [m["To"] for m in shop.smtp.messages] == ["c1@example.com"]
    shop.clock.now = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)  # 09:00 in New York
    schedule.tick("campaigns.schedule", "default", force=True)
    shop.worker()
    assert sorted(m["To"] for m in shop.smtp.messages) == ["c1@example.com", "c2@example.com"]
    assert shop.svc.enrollment("bday", seoul)["entry"] == 1


def test_a_customer_whose_data_breaks_the_template_is_skipped_the_others_get_theirs(shop: Shop) -> None:
    shop.svc.save(
        {
            "key": "sizes",
            "name": "Sizes",
            "trigger": {"type": "api"},
            "steps": [
                {
                    "id": "mail",
                    "type": "send",
                    "channel": "email",
                    # a size must be a number: "XL" makes the filter fail for that customer only
                    "template": {
                        "subject": "Your size",
                        "text": "Size {{ '%d' | format(customer.attributes.size | default(40)) }}",
                    },
                }
            ],
        }
    )
    shop.svc.start("sizes")
    ids = [shop.customer(k, attributes={"size": 38 + k}) for k in range(3)]
    bad = shop.customer(9, attributes={"size": "XL"})
    shop.svc.trigger("sizes", [*ids, bad])
    shop.worker()
    assert sorted(m["To"] for m in shop.smtp.messages) == [f"c{k}@example.com" for k in range(3)]
    row = shop.svc.enrollment("sizes", bad)
    assert row["status"] == "failed" and "render_failed" in row["reason"]
    assert {shop.svc.enrollment("sizes", c)["status"] for c in ids} == {"done"}
