"""The e-mail channel passes the channel conformance suite against a real SMTP server."""

from __future__ import annotations

import pytest
from ecrm_email import plugin as email_plugin
from ecrm_email.inbound import sign_webhook
from ecrm_email.testing import smtp_config, start_smtp_server

from ecrm_core.channels import InboundRequest
from ecrm_core.testing.channels import ChannelConformance

WEBHOOK_SECRET = "webhook-secret-0123456789"


class TestEmailConformance(ChannelConformance):
    channel = "email"

    @pytest.fixture(autouse=True)
    def _server(self):
        with start_smtp_server("none") as server:
            self.server = server
            yield

    def plugins(self):
        return [email_plugin]

    def channel_config(self):
        return {
            "from": "Shop <news@shop.example>",
            "base_url": "http://127.0.0.1:9/crm",
            "smtp": smtp_config(self.server, timeout=5.0),
            "webhook_secret": WEBHOOK_SECRET,
        }

    def customer_fields(self, n):
        return {"email": f"c{n}@example.com"}

    def template(self):
        return {"subject": "Hello {{ customer.first_name }}", "text": "Hi {{ customer.name }}", "html": None}

    def delivered_ids(self):
        return [m["X-Ecrm-Message"] for m in self.server.messages]

    def fail_next(self, kind):
        code, text = {
            "temporary": (451, "4.3.0 try again later"),
            "permanent": (554, "5.7.1 message refused"),
            "address": (550, "5.1.1 no such user"),
        }[kind]
        self.server.fail_next(code, text, at="rcpt" if kind == "address" else "data")

    def inbound_request(self, crm, message_id, *, genuine):
        import json

        body = json.dumps({"events": [{"id": "evt-1", "type": "delivered", "message_id": message_id}]}).encode()
        secret = WEBHOOK_SECRET if genuine else "not-the-secret-0000000000"
        return InboundRequest(
            route="webhook",
            method="POST",
            headers={
                "x-ecrm-signature": sign_webhook(secret, body, timestamp=int(crm.now().timestamp())),
                "content-type": "application/json",
            },
            body=body,
        )
