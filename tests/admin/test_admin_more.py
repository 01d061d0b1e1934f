"""The CLI, workspaces, the host's authentication, the tables against their migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner
from ecrm_admin import AdminUser, Users
from ecrm_admin import plugin as admin_plugin

from ecrm_core import CRM
from ecrm_core.cli import make_cli
from ecrm_core.plugins import PluginInfo


def test_cli_creates_lists_and_changes_users(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"

    def run(*args: str, stdin: str | None = None) -> Any:
        cli = make_cli(plugins=[admin_plugin], entrypoints=False)
        return CliRunner().invoke(cli, ["--db", url, *args], input=stdin, catch_exceptions=False)

    assert run("init").exit_code == 0
    made = run(
        "admin",
        "users",
        "create",
        "ada",
        "--role",
        "marketer",
        "--workspace",
        "default",
        "--password-stdin",
        stdin="a long passphrase\n",
    )
    assert made.exit_code == 0 and "created ada (marketer; workspaces: default)" in made.output
    short = run("admin", "users", "create", "bo", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "password" in short.output
    assert "ada\tmarketer\tdefault" in run("admin", "users", "list").output
    assert run("admin", "users", "set", "ada", "--role", "admin").exit_code == 0
    crm = CRM(url, plugins=[admin_plugin], load_entrypoints=False)
    try:
        assert Users(crm).authenticate("ada", "a long passphrase") == AdminUser(
            username="ada", role="admin", workspaces=("default",)
        )
        stored = crm.db.tables["admin_users"]
        with crm.db.read() as conn:
            hashed = conn.scalar(sa.select(stored.c.password_hash))
        assert hashed.startswith("scrypt$16384$8$1$") and "passphrase" not in hashed
    finally:
        crm.close()


def test_workspaces_switch_only_to_those_the_user_may_see(admin_client: Any, admin_crm: CRM) -> None:
    eu = admin_crm.in_workspace("eu")
    eu.customers.create(email="eu@example.com", name="Euro")
    with admin_crm.db.write() as conn:
        w = admin_crm.db.tables["workspaces"]
        conn.execute(sa.insert(w).values(id="eu", name="EU", created_at=admin_crm.now()))
        conn.execute(sa.insert(w).values(id="us", name="US", created_at=admin_crm.now()))
    Users(admin_crm).create("euro", "a long passphrase", role="agent", workspaces=["default", "eu"])
    b = admin_client(None)
    assert b.login("euro", "a long passphrase").status_code == 303
    home = b.get("/")
    assert '<option value="eu"' in home.text and '<option value="us"' not in home.text
    assert b.post("/workspace", {"workspace": "us", "next": "/admin/"}).status_code == 403
    moved = b.post("/workspace", {"workspace": "eu", "next": "/admin/customers"})
    assert moved.status_code == 303 and moved.headers["location"] == "/admin/customers"
    assert "Euro" in b.get("/customers").text
    assert 'id="n-customers">1<' in b.get("/").text


def test_the_hosts_authentication(admin_crm: CRM, admin_build: Any) -> None:
    from litestar.testing import TestClient

    def host(request: Any) -> AdminUser | None:
        who = request.headers.get("x-staff")
        return AdminUser(username=who, role="agent") if who else None

    app = admin_build(admin_crm, authenticate=host, login_url="/sso")
    with TestClient(app, base_url="https://shop.local") as client:
        assert client.get("/admin/", follow_redirects=False).headers["location"] == "/sso"
        assert client.get("/admin/login", follow_redirects=False).headers["location"] == "/sso"
        first = client.get("/admin/", headers={"x-staff": "grace"})
        assert first.status_code == 200 and "grace" in first.text
        assert client.get("/admin/plugins", headers={"x-staff": "grace"}).status_code == 403
        # another identity from the host never inherits grace's session
        other = client.get("/admin/", headers={"x-staff": "mallory"})
        assert other.status_code == 200 and "mallory" in other.text and "grace" not in other.text
        # the host stopped vouching: signed out
        assert client.get("/admin/", follow_redirects=False).status_code == 303


def test_failed_plugins_are_listed(admin_client: Any, admin_crm: CRM) -> None:
    admin_crm.plugins.info["sms"] = PluginInfo(
        "sms", "entrypoint", "failed", version="0.3", error="import failed: ModuleNotFoundError: no module 'twilio'"
    )
    page = admin_client("admin").get("/plugins")
    assert "sms" in page.text and "failed" in page.text and "no module &#39;twilio&#39;" in page.text


def test_tables_match_their_migration(admin_crm: CRM) -> None:
    inspector = sa.inspect(admin_crm.db.engine)
    for short in ("admin_users", "admin_sessions"):
        table = admin_crm.db.tables[short]
        reflected = {c["name"] for c in inspector.get_columns(table.name)}
        assert reflected == {c.name for c in table.c}, short
    indexes = {i["name"] for i in inspector.get_indexes(admin_crm.db.tables["admin_sessions"].name)}
    assert {i.name for i in admin_crm.db.tables["admin_sessions"].indexes} <= indexes


def test_admin_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/admin.py runs end to end at a tiny size (no timing assertion: the figures are for people)."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "admin.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--customers=500",
            "--interactions=3000",
            "--requests=3",
            "--warmup=1",
            "--builder-repeat=1",
            f"--db={tmp_path / 'bench.db'}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for figure in (
        "baseline: bare Litestar page",
        "360° view",
        "segment builder",
        "error + caret",
        "load average",
        "attribute index on country",
    ):
        assert figure in proc.stdout, figure


def test_demo_stage_gives_a_user_to_log_in_with(admin_crm: CRM) -> None:
    from rich.console import Console

    stage = admin_crm.registry.demo_stages["admin.login"]
    console = Console(width=200, record=True)
    console.print(stage.run(admin_crm, None))
    text = console.export_text()
    import re

    password = re.search(r"password\W+(\S+)", text).group(1)
    assert Users(admin_crm).authenticate("demo-admin", password).role == "admin"
    console.print(stage.run(admin_crm, None))  # again: the password is reset, nothing duplicated
    assert Users(admin_crm).authenticate("demo-admin", password) is None


def test_served_at_the_root_path(admin_client: Any) -> None:
    b = admin_client("agent", path="")
    home = b.get("/")
    assert home.status_code == 200 and 'href="/customers"' in home.text and 'action="/logout"' in home.text
    assert b.get("/static/admin.css").status_code == 200
