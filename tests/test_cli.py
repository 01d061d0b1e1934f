"""The ``ecrm`` command line, run with click's CliRunner on SQLite files."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from ecrm_core import CRM, hookimpl
from ecrm_core.cli import main, make_cli
from ecrm_core.importer import CustomerFileReader
from ecrm_core.plugins import Plugins

Run = Callable[..., Result]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture
def run(url: str) -> Run:
    """Invoke ``ecrm --db URL ARGS`` (installed plugins not loaded)."""

    def invoke(*args: str, plugins: Sequence[Any] = (), db: str | None = None) -> Result:
        cli = make_cli(plugins=plugins, entrypoints=False)
        return CliRunner().invoke(cli, ["--db", db or url, *args], catch_exceptions=False)

    return invoke


@pytest.fixture
def ready(run: Run) -> Run:
    """``run`` on an initialised database."""
    assert run("init").exit_code == 0
    return run


@pytest.fixture
def open_crm(url: str) -> Iterator[Callable[[], CRM]]:
    made: list[CRM] = []

    def factory() -> CRM:
        crm = CRM(url, load_entrypoints=False)
        made.append(crm)
        return crm

    yield factory
    for crm in made:
        crm.close()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# help, schema
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["init"],
        ["db"],
        ["db", "upgrade"],
        ["db", "status"],
        ["plugins"],
        ["customers"],
        ["customers", "import"],
        ["customers", "show"],
        ["demo"],
    ],
)
def test_every_command_has_help_with_examples(args: list[str]) -> None:
    result = CliRunner().invoke(make_cli(entrypoints=False), [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "Quick start" in result.output
    assert "ecrm " in result.output


def test_main_runs_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"], entrypoints=False)
    assert exit_info.value.code == 0
    assert "Quick start" in capsys.readouterr().out


def test_init_creates_schema_and_status_reports_it(run: Run) -> None:
    result = run("init")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output and "crm.db" in result.output
    again = run("init")
    assert again.exit_code == 0
    status = run("db", "status", "--json")
    doc = json.loads(status.stdout)
    assert doc["up_to_date"] is True and doc["current"] == ["0006_jobs"]
    table = run("db", "status", "--check")
    assert table.exit_code == 0 and "0006_jobs" in table.output


def test_db_upgrade(run: Run) -> None:
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert json.loads(run("db", "status", "--json").stdout)["up_to_date"] is True


def test_status_of_empty_database(run: Run) -> None:
    result = run("db", "status", "--check")
    assert result.exit_code == 1
    assert "not initialised" in result.output and "ecrm db upgrade" in result.output


@pytest.mark.parametrize("args", [["customers", "show", "1"], ["customers", "import", "FILE"]])
def test_commands_on_uninitialised_database_give_a_clear_error(run: Run, tmp_path: Path, args: list[str]) -> None:
    path = write(tmp_path / "c.csv", "email\nada@example.com\n")
    result = run(*[str(path) if a == "FILE" else a for a in args])
    assert result.exit_code == 1
    assert "Error: no ecrm schema" in result.output
    assert "ecrm db upgrade" in result.output
    assert "Traceback" not in result.output


def test_bad_database_url_is_a_clear_error(run: Run) -> None:
    result = run("init", db="nosuchdriver://x")
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output


def test_bad_workspace_is_a_clear_error(run: Run) -> None:
    result = run("--workspace", "Not A Slug", "init")
    assert result.exit_code == 1
    assert "workspace" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------
# plugins
# ---------------------------------------------------------------------------


class HelloPlugin:
    """A plugin that adds ``ecrm hello`` and uses the CLI's CRM."""

    ECRM_PLUGIN_NAME = "hello"

    @hookimpl
    def ecrm_register_commands(self, cli: click.Group) -> None:
        @cli.command("hello")
        @click.pass_obj
        def hello(state: Any) -> None:
            """Say hello with the customer count."""
            click.echo(f"hello, {state.crm().customers.count()} customers")


class BrokenCommandsPlugin:
    ECRM_PLUGIN_NAME = "broken_commands"

    @hookimpl
    def ecrm_register_commands(self, cli: click.Group) -> None:
        raise RuntimeError("boom while adding commands")


class HijackPlugin:
    ECRM_PLUGIN_NAME = "hijack"

    @hookimpl
    def ecrm_register_commands(self, cli: click.Group) -> None:
        @cli.command("init")
        def fake_init() -> None:
            click.echo("hijacked")


def test_plugins_table_and_json(run: Run) -> None:
    result = run("plugins", plugins=[HelloPlugin()])
    assert result.exit_code == 0, result.output
    for word in ("core.kinds", "core.lifecycle", "hello", "loaded", "default", "host"):
        assert word in result.output
    doc = json.loads(run("plugins", "--json", plugins=[HelloPlugin()]).stdout)
    by_name = {p["name"]: p for p in doc["plugins"]}
    assert by_name["hello"]["status"] == "loaded"
    assert by_name["hello"]["hooks"] == ["ecrm_register_commands"]
    assert by_name["core.kinds"]["source"] == "default"
    assert doc["hook_failures"] == [] and doc["startup_error"] is None


def test_plugins_does_not_need_a_schema(run: Run, tmp_path: Path) -> None:
    result = run("plugins", "--json")
    assert result.exit_code == 0


def test_plugin_command_is_registered_and_runs(ready: Run) -> None:
    help_text = ready("--help", plugins=[HelloPlugin()]).output
    assert "hello" in help_text
    result = ready("hello", plugins=[HelloPlugin()])
    assert result.exit_code == 0, result.output
    assert "hello, 0 customers" in result.output


def test_broken_plugin_does_not_stop_the_cli(ready: Run) -> None:
    plugins = [BrokenCommandsPlugin(), HelloPlugin()]
    assert ready("hello", plugins=plugins).exit_code == 0
    doc = json.loads(ready("plugins", "--json", plugins=plugins).stdout)
    failures = doc["hook_failures"]
    assert [(f["plugin"], f["hook"]) for f in failures] == [("broken_commands", "ecrm_register_commands")]
    assert "boom while adding commands" in failures[0]["error"]
    table = ready("plugins", plugins=plugins)
    assert table.exit_code == 0 and "boom while adding commands" in table.output


def test_plugin_cannot_replace_builtin_commands(run: Run) -> None:
    result = run("init", plugins=[HijackPlugin()])
    assert result.exit_code == 0
    assert "hijacked" not in result.output and "up to date" in result.output


def test_failed_entrypoint_plugin_is_shown(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    def fake_entrypoints(self: Plugins, allow: Any, deny: Any) -> None:
        self._fail("shiny", "1.2.3", "import failed: ModuleNotFoundError: No module named 'shiny_deps'")

    monkeypatch.setattr(Plugins, "_load_entrypoints", fake_entrypoints)
    cli = make_cli(entrypoints=True)
    runner = CliRunner()
    table = runner.invoke(cli, ["--db", url, "plugins"])
    assert table.exit_code == 0, table.output
    assert "shiny" in table.output and "failed" in table.output and "shiny_deps" in table.output
    doc = json.loads(runner.invoke(cli, ["--db", url, "plugins", "--json"]).stdout)
    shiny = next(p for p in doc["plugins"] if p["name"] == "shiny")
    assert shiny["status"] == "failed" and shiny["version"] == "1.2.3" and "shiny_deps" in shiny["error"]
    # every other command still works
    assert runner.invoke(cli, ["--db", url, "init"]).exit_code == 0


def test_invalid_host_plugin_is_reported_not_crashing(run: Run) -> None:
    class Misspelled:
        ECRM_PLUGIN_NAME = "misspelled"

        @hookimpl
        def ecrm_register_interaction_kind(self) -> None:  # one letter short
            return None

    result = run("plugins", "--json", plugins=[Misspelled()])
    assert result.exit_code == 0
    assert "ecrm_register_interaction_kinds" in json.loads(result.stdout)["startup_error"]
    init = run("init", plugins=[Misspelled()])
    assert init.exit_code == 1 and "ecrm plugins" in init.output and "Traceback" not in init.output


# ---------------------------------------------------------------------------
# customers import
# ---------------------------------------------------------------------------

GOOD_CSV = """\
external_id,email,phone,name,lifecycle_stage,timezone,locale,attr.plan,consent.email,alias.cookie
u1,ada@example.com,+82 10 1234 5678,Ada,new,Asia/Seoul,ko-KR,pro,true,c-1
u2,bob@example.com,,Bob,,,,,no,
u3,,,"Cy, the third",,,,free,granted,
"""


def test_import_csv(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    result = ready("customers", "import", str(write(tmp_path / "c.csv", GOOD_CSV)))
    assert result.exit_code == 0, result.output
    assert "3 created, 0 updated, 0 rejected" in result.output
    crm = open_crm()
    ada = crm.customers.find(external_id="u1")
    assert ada is not None
    assert (ada.email, ada.phone, ada.name, ada.lifecycle_stage) == ("ada@example.com", "+821012345678", "Ada", "new")
    assert (ada.timezone, ada.locale) == ("Asia/Seoul", "ko-KR")
    assert dict(ada.attributes) == {"plan": "pro"}
    assert ada.consent["email"].status == "granted"
    assert ada.id is not None
    assert crm.customers.find(alias=__import__("ecrm_core").Alias("cookie", "c-1")) == ada
    bob = crm.customers.find(email="bob@example.com")
    assert bob is not None and bob.phone is None and bob.consent["email"].status == "denied"
    assert bob.lifecycle_stage == "prospect" and dict(bob.attributes) == {}
    cy = crm.customers.find(external_id="u3")
    assert cy is not None and cy.name == "Cy, the third"


def test_empty_cells_keep_stored_values(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    ready("customers", "import", str(write(tmp_path / "a.csv", GOOD_CSV)))
    update = write(tmp_path / "b.csv", "external_id,name,attr.plan\nu1,,enterprise\n")
    result = ready("customers", "import", str(update))
    assert result.exit_code == 0, result.output
    assert "0 created, 1 updated" in result.output
    ada = open_crm().customers.find(external_id="u1")
    assert ada is not None and ada.name == "Ada" and dict(ada.attributes) == {"plan": "enterprise"}


BAD_CSV = """\
email,name,consent.email
ada@example.com,Ada,yes
not-an-email,Bad Email,yes
bob@example.com,"Bob
on two lines",no
cy@example.com,Cy,perhaps
dan@example.com,Dan,yes,extra
eve@example.com,Eve,no
"""


def test_import_is_all_or_nothing_by_default(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    result = ready("customers", "import", str(write(tmp_path / "bad.csv", BAD_CSV)))
    assert result.exit_code == 1
    out = result.output
    assert "line 3: email: not a valid e-mail address" in out
    assert "line 6: consent.email: not a consent value (got 'perhaps')" in out
    assert "line 7: row: 4 cells but the header has 3 columns" in out
    assert "Nothing was stored" in out and "3 of 6 row(s)" in out and "--skip-invalid" in out
    assert open_crm().customers.count() == 0


def test_import_skip_invalid_stores_good_rows(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    result = ready("customers", "import", "--skip-invalid", str(write(tmp_path / "bad.csv", BAD_CSV)))
    assert result.exit_code == 0, result.output
    assert "3 created, 0 updated, 3 rejected" in result.output
    assert "line 3:" in result.output and "line 6:" in result.output and "line 7:" in result.output
    crm = open_crm()
    assert crm.customers.count() == 3
    bob = crm.customers.find(email="bob@example.com")
    assert bob is not None and bob.name == "Bob\non two lines"
    assert crm.customers.find(email="cy@example.com") is None


def test_rows_after_multiline_cells_keep_their_line_numbers(ready: Run, tmp_path: Path) -> None:
    text = 'email,name\na@example.com,"A\nB\nC"\n\nbad,X\n'
    result = ready("customers", "import", str(write(tmp_path / "m.csv", text)))
    assert result.exit_code == 1
    assert "line 6: email: not a valid e-mail address" in result.output


def test_show_errors_limits_the_listing(ready: Run, tmp_path: Path) -> None:
    text = "email\n" + "".join(f"bad{i}\n" for i in range(10))
    result = ready("customers", "import", "--show-errors", "3", str(write(tmp_path / "b.csv", text)))
    assert result.exit_code == 1
    assert "line 4:" in result.output and "line 5:" not in result.output and "and 7 more" in result.output


def test_unknown_csv_column_is_a_clear_error(ready: Run, tmp_path: Path) -> None:
    result = ready("customers", "import", str(write(tmp_path / "c.csv", "emial,name\na@example.com,A\n")))
    assert result.exit_code == 1
    assert "unknown column" in result.output and "did you mean 'email'" in result.output
    assert "Traceback" not in result.output


def test_unknown_extension_needs_format(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    path = write(tmp_path / "export.txt", "email;name\na@example.com;A\n")
    result = ready("customers", "import", str(path))
    assert result.exit_code == 1 and "--format" in result.output
    ok = ready("customers", "import", "--format", "csv", "--delimiter", ";", str(path))
    assert ok.exit_code == 0, ok.output
    assert open_crm().customers.count() == 1


JSONL = """\
{"external_id": "j1", "email": "ann@example.com", "name": "Ann", "attributes": {"vip": true}, "consent": {"email": "granted"}}

{"external_id": "j2", "attr.plan": "pro", "consent.sms": "no", "aliases": [{"kind": "cookie", "value": "k2"}]}
{"external_id": "j3", "email": "oops"}
{not json
["a", "list"]
{"external_id": "j4", "nmae": "typo"}
"""


def test_import_jsonl_all_or_nothing(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    result = ready("customers", "import", str(write(tmp_path / "c.jsonl", JSONL)))
    assert result.exit_code == 1
    out = result.output
    assert "line 4: email: not a valid e-mail address" in out
    assert "line 5: line: malformed JSON" in out
    assert "line 6: line: not a JSON object" in out
    assert "line 7: nmae: unknown field" in out and "did you mean 'name'" in out
    assert open_crm().customers.count() == 0


def test_import_jsonl_skip_invalid(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    result = ready("customers", "import", "--skip-invalid", str(write(tmp_path / "c.jsonl", JSONL)))
    assert result.exit_code == 0, result.output
    assert "2 created, 0 updated, 4 rejected" in result.output
    crm = open_crm()
    ann = crm.customers.find(external_id="j1")
    assert ann is not None and dict(ann.attributes) == {"vip": True} and ann.consent["email"].granted
    j2 = crm.customers.find(external_id="j2")
    assert j2 is not None and dict(j2.attributes) == {"plan": "pro"} and j2.consent["sms"].status == "denied"
    assert j2.id is not None and crm.customers.aliases(j2.id)[0].kind == "cookie"


def test_malformed_lines_alone_still_store_nothing(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    path = write(tmp_path / "c.jsonl", '{"email": "a@example.com"}\n{broken\n')
    result = ready("customers", "import", str(path))
    assert result.exit_code == 1 and "line 2: line: malformed JSON" in result.output
    assert open_crm().customers.count() == 0


def test_gzipped_jsonl(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    import gzip

    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"email": "a@example.com"}\n{"email": "b@example.com"}\n')
    result = ready("customers", "import", str(path))
    assert result.exit_code == 0, result.output
    assert open_crm().customers.count() == 2


def test_non_utf8_file_is_a_clear_error(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("email,name\na@example.com,Jos\xe9\n".encode("latin-1"))
    result = ready("customers", "import", str(path))
    assert result.exit_code == 1 and "--encoding" in result.output and "Traceback" not in result.output
    ok = ready("customers", "import", "--encoding", "latin-1", str(path))
    assert ok.exit_code == 0, ok.output
    found = open_crm().customers.find(email="a@example.com")
    assert found is not None and found.name == "José"


def test_reader_streams(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("external_id,email,attr.n\n")
        for i in range(50_000):
            f.write(f"x{i},user{i}@example.com,{i}\n")
    with CustomerFileReader(path) as reader:
        rows = iter(reader)
        first = next(rows)
        assert first == {"external_id": "x0", "email": "user0@example.com", "attributes": {"n": "0"}}
        assert reader.position < reader.size / 4  # only a buffer's worth was read
        assert sum(1 for _ in rows) == 49_999
        assert reader.position == reader.size
        assert reader.line_of(49_999) == 50_001


def test_import_large_file(ready: Run, tmp_path: Path, open_crm: Callable[[], CRM]) -> None:
    # several batches (1000 rows by default) before the bad last row: nothing is stored;
    # streaming a file of any size is test_reader_streams' part
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(2_500):
            f.write(json.dumps({"external_id": f"x{i}", "email": f"user{i}@example.com"}) + "\n")
        f.write('{"external_id": "last", "email": "nope"}\n')
    result = ready("customers", "import", str(path))
    assert result.exit_code == 1 and "line 2501: email" in result.output
    assert open_crm().customers.count() == 0
    result = ready("customers", "import", "--skip-invalid", "--batch-size", "1000", str(path))
    assert result.exit_code == 0, result.output
    assert "2500 created" in result.output
    assert open_crm().customers.count() == 2_500


# ---------------------------------------------------------------------------
# customers show
# ---------------------------------------------------------------------------


def test_customers_show(ready: Run, open_crm: Callable[[], CRM]) -> None:
    crm = open_crm()
    ada = crm.customers.create(external_id="u-1", email="ada@example.com", name="Ada [admin]", consent={"email": True})
    assert ada.id is not None
    when = datetime(2024, 5, 1, 12, tzinfo=UTC)
    crm.interactions.track(
        "purchase", customer_id=ada.id, amount="42.50", currency="EUR", channel="web", occurred_at=when
    )
    crm.interactions.track("page_view", customer_id=ada.id, channel="web", properties={"path": "/shoes"})
    for ref in (str(ada.id), "ada@example.com", "u-1"):
        result = ready("customers", "show", ref)
        assert result.exit_code == 0, result.output
        out = result.output
        assert "Ada [admin]" in out and "email: granted" in out
        assert "purchase" in out and "42.50 EUR" in out and "2024-05-01 12:00 UTC" in out
        assert "path=/shoes" in out and "external" in out


def test_customers_show_unknown(ready: Run) -> None:
    result = ready("customers", "show", "999")
    assert result.exit_code == 1 and "customer 999 not found" in result.output
    result = ready("customers", "show", "nobody@example.com")
    assert result.exit_code == 1 and "not found" in result.output


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def test_demo(run: Run, open_crm: Callable[[], CRM]) -> None:
    result = run("demo", "--customers", "200")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Built the demo shop" in out and "200 customers" in out
    for title in ("Interactions by kind and channel", "Net revenue by month", "Top customers", "Active offers", "360°"):
        assert title in out
    crm = open_crm()
    assert crm.customers.count() == 200
    interactions = crm.interactions.count()
    assert interactions > 200 * 10
    for kind in ("purchase", "page_view", "product_view", "add_to_cart", "email_open", "signup"):
        assert crm.interactions.count(kind) > 0, kind
    assert {o.code for o in crm.offers.list()} >= {"demo.welcome10", "demo.winback20"}
    stages = {c.lifecycle_stage for c in crm.customers.list(limit=200)}
    assert {"prospect", "active"} <= stages
    # the stages come from the lifecycle rules, and the demo segments are filled
    assert all(crm.lifecycle.stage_for(c.id) == c.lifecycle_stage for c in crm.customers.list(limit=30))
    segments = {s.slug: s for s in crm.segments.list()}
    assert {"demo-vip", "demo-kr-vip", "demo-window-shoppers"} <= set(segments)
    assert segments["demo-vip"].member_count == len(crm.segments.members("demo-vip", limit=1000)) > 0
    assert "Customers by lifecycle phase" in out and "Segments (live" in out

    again = run("demo", "--customers", "200")
    assert again.exit_code == 0 and "Reusing the demo" in again.output
    assert crm.interactions.count() == interactions

    fresh = run("demo", "--customers", "150", "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert crm.customers.count() == 150 and len(crm.offers.list()) == 6


def test_demo_refuses_a_workspace_with_real_customers(ready: Run, open_crm: Callable[[], CRM]) -> None:
    open_crm().customers.create(email="real@example.com")
    result = ready("demo", "--customers", "20", "--fresh")
    assert result.exit_code == 1 and "not demo data" in result.output
    assert open_crm().customers.count() == 1
    other = ready("--workspace", "demo", "demo", "--customers", "20")
    assert other.exit_code == 0, other.output


def test_build_demo_is_reproducible(crm_factory: Callable[..., CRM]) -> None:
    from ecrm_core.demo import build_demo, shop_report

    now = datetime(2025, 6, 30, tzinfo=UTC)
    reports = []
    for _ in range(2):
        crm = crm_factory()
        summary = build_demo(crm, customers=60, seed=7, now=now)
        assert summary.customers == 60 and not summary.reused and summary.offers == 6
        reports.append(shop_report(crm))
    a, b = reports
    assert a.interactions == b.interactions and a.by_kind_channel == b.by_kind_channel
    assert a.revenue_by_month == b.revenue_by_month
    assert [t.email for t in a.top_customers] == [t.email for t in b.top_customers]
    assert all(month <= "2025-06" for month, _ in a.revenue_by_month)


def test_demo_runs_the_stages_plugins_add_and_isolates_a_failing_one(run: Run) -> None:
    from ecrm_core import DemoStage, hookimpl

    calls: list[str] = []

    class Stages:
        @hookimpl
        def ecrm_register_demo_stages(self, crm: CRM) -> list[DemoStage]:
            def broken(crm: CRM, progress: Any) -> None:
                calls.append("broken")
                raise RuntimeError("no tiers configured")

            def report(crm: CRM, progress: Any) -> str:
                calls.append("report")
                progress.start("scoring", 2)
                progress.advance(2)
                return f"[bold]{crm.customers.count()} customers scored[/]"

            return [
                DemoStage(name="t.broken", title="Broken stage", run=broken, order=1),
                DemoStage(name="t.report", title="Report stage", run=report, order=2),
            ]

    result = run("demo", "--customers", "30", plugins=[Stages()])
    assert result.exit_code == 0, result.output
    assert calls == ["broken", "report"]
    assert "Broken stage" in result.output and "no tiers configured" in result.output
    assert "the others went on" in result.output
    assert "30 customers scored" in result.output
    skipped = run("demo", "--customers", "30", "--core-only", plugins=[Stages()])
    assert skipped.exit_code == 0 and calls == ["broken", "report"], skipped.output
