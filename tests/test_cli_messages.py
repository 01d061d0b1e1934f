"""``ecrm messages …`` with click's CliRunner, on a SQLite file, with the MemoryChannel."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ecrm_core import CRM
from ecrm_core.cli import make_cli
from ecrm_core.testing.channels import MemoryChannel


def test_messages_commands(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    config = tmp_path / "ecrm.toml"
    config.write_text('secret = "0123456789abcdef0123"\n[channels.memory.policy]\nmax_attempts = 1\n')
    memory = MemoryChannel(name="memory")
    crm = CRM(url, load_entrypoints=False, plugins=[memory.plugin()])
    crm.upgrade()
    ada = crm.customers.create(email="ada@example.com", consent={"memory": "granted"})
    first = crm.messages.send("memory", ada.id, {"body": "one"})
    second = crm.messages.send("memory", ada.id, {"body": "two"})
    crm.close()

    def run(*args, code=0):
        cli = make_cli(plugins=[memory.plugin()], entrypoints=False)
        result = CliRunner().invoke(cli, ["--db", url, "--config", str(config), *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    memory.fail_next("permanent")
    out = run("messages", "dispatch")
    assert "sent 1" in out and "dead 1" in out
    dead = [json.loads(line) for line in run("messages", "list", "--status", "dead", "--json").splitlines()]
    assert [d["id"] for d in dead] == [first.id]
    shown = json.loads(run("messages", "show", first.id, "--json"))
    assert [a["status"] for a in shown["attempt_log"]] == ["rejected"]
    assert "queued again" in run("messages", "replay", first.id)
    assert "sent 1" in run("messages", "dispatch")
    assert memory.delivered_ids == [second.id, first.id]
    assert "suppressed (all)" in run("messages", "suppress", "memory", "ada@example.com")
    assert "no longer suppressed" in run("messages", "unsuppress", "memory", "ada@example.com")
    assert "was not suppressed" in run("messages", "unsuppress", "memory", "ada@example.com", code=1)
    assert "not found" in run("messages", "replay", "nope", code=1)
    assert "Ctrl-C" in run("messages", "--help") or "worker" in run("messages", "--help")


def test_bad_config_file_is_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("channels = [\n")
    result = CliRunner().invoke(make_cli(entrypoints=False), ["--config", str(config), "messages", "list"])
    assert result.exit_code == 2 and "not valid TOML" in result.output
    config.write_text("[smtp]\nhost = 'x'\n")
    result = CliRunner().invoke(make_cli(entrypoints=False), ["--config", str(config), "messages", "list"])
    assert result.exit_code == 2 and "unknown section(s) smtp" in result.output
