"""``ecrm keys`` and ``ecrm serve``: CliRunner for the key commands, a real process for the server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from ecrm_api import Keys
from ecrm_api import plugin as api_plugin
from ecrm_api.cli import parse_duration, parse_rate

from ecrm_core import CRM
from ecrm_core.cli import make_cli

Run = Callable[..., Result]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture
def run(url: str) -> Run:
    """``ecrm --db URL ARGS`` with the API plugin (installed plugins not loaded)."""

    def invoke(*args: str, workspace: str | None = None) -> Result:
        cli = make_cli(plugins=[api_plugin], entrypoints=False)
        ws = ["--workspace", workspace] if workspace else []
        return CliRunner().invoke(cli, ["--db", url, *ws, *args], catch_exceptions=False)

    return invoke


@pytest.fixture
def ready(run: Run) -> Run:
    assert run("init").exit_code == 0
    return run


def token_of(result: Result) -> str:
    found = re.findall(r"^ecrm_[0-9a-f]+_\S+$", result.stdout, re.M)
    assert len(found) == 1, result.output
    return found[0]


def keys_of(url: str) -> Keys:
    return Keys(CRM(url, plugins=[api_plugin], load_entrypoints=False))


# ---------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["serve"], ["keys"], ["keys", "create"], ["keys", "list"], ["keys", "revoke"], ["keys", "rotate"]]
)
def test_help_teaches_with_examples(run: Run, args: list[str]) -> None:
    r = run(*args, "--help")
    assert r.exit_code == 0
    assert "Examples:" in r.output and "ecrm " in r.output


# ---------------------------------------------------------------------------
# keys create / list / revoke / rotate
# ---------------------------------------------------------------------------


def test_create_prints_the_token_once_and_stores_only_a_hash(ready: Run, url: str) -> None:
    r = ready("keys", "create", "shop-backend", "--scope", "read", "--scope", "write")
    assert r.exit_code == 0, r.output
    token = token_of(r)
    assert "cannot be shown again" in r.stderr
    k = keys_of(url)
    key = k.authenticate(token)
    assert key is not None and key.scopes == {"read", "write"} and key.name == "shop-backend"
    assert key.expires_at is None
    listed = ready("keys", "list")
    assert key.key_id in listed.output and "shop-backend" in listed.output
    assert token.rsplit("_", 1)[1] not in listed.output  # never the secret
    assert token.rsplit("_", 1)[1] not in ready("keys", "list", "--json").output


def test_create_json_workspace_expiry_and_comma_scopes(ready: Run, url: str) -> None:
    r = ready(
        "keys", "create", "site", "--scope", "ingest,read", "--workspace", "shop_kr", "--expires", "90d", "--json"
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["workspace"] == "shop_kr" and doc["scopes"] == ["ingest", "read"]
    key = keys_of(url).authenticate(doc["token"])
    assert key is not None and key.workspace == "shop_kr" and key.expires_at is not None
    days = (key.expires_at - key.created_at).total_seconds() / 86400
    assert days == pytest.approx(90)
    assert doc["key_id"] in ready("keys", "list", workspace="shop_kr").output
    assert doc["key_id"] not in ready("keys", "list").output  # another workspace
    listed = json.loads(ready("keys", "list", "--workspace", "shop_kr", "--json").stdout)
    assert [d["key_id"] for d in listed] == [doc["key_id"]] and "token" not in listed[0]


def test_default_scope_is_read(ready: Run) -> None:
    doc = json.loads(ready("keys", "create", "ro", "--json").stdout)
    assert doc["scopes"] == ["read"]


def test_revoke_hides_the_key_unless_all(ready: Run, url: str) -> None:
    doc = json.loads(ready("keys", "create", "temp", "--json").stdout)
    r = ready("keys", "revoke", doc["key_id"])
    assert r.exit_code == 0 and "revoked key" in r.output
    assert keys_of(url).authenticate(doc["token"]) is None
    assert doc["key_id"] not in ready("keys", "list").output
    assert doc["key_id"] in ready("keys", "list", "--all").output
    again = ready("keys", "revoke", doc["key_id"])
    assert again.exit_code == 0 and "already revoked" in again.output


def test_rotate_with_grace_keeps_the_old_key_working(ready: Run, url: str) -> None:
    old = json.loads(ready("keys", "create", "ci", "--scope", "read,write", "--json").stdout)
    r = ready("keys", "rotate", old["key_id"], "--grace", "1h")
    assert r.exit_code == 0, r.output
    new_token = token_of(r)
    assert "stops working at" in r.output and "cannot be shown again" in r.stderr
    k = keys_of(url)
    new = k.authenticate(new_token)
    assert new is not None and new.rotated_from == old["key_id"] and new.scopes == {"read", "write"}
    assert k.authenticate(old["token"]) is not None  # still inside the grace period
    now = json.loads(ready("keys", "rotate", new.key_id, "--json").stdout)
    assert keys_of(url).authenticate(new_token) is None and keys_of(url).authenticate(now["token"]) is not None


def test_empty_list_says_how_to_create_one(ready: Run) -> None:
    r = ready("keys", "list")
    assert r.exit_code == 0 and "ecrm keys create" in r.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["keys", "create", "x", "--scope", "owner"], 2, "unknown scope 'owner'; use read, write, ingest, admin"),
        (["keys", "create", "x", "--expires", "3 months"], 2, "is not a duration"),
        (["keys", "create", "x", "--expires", "0x"], 2, "e.g. 90d, 12h"),
        (["keys", "create", "x", "--workspace", "Bad Space!"], 2, "--workspace"),
        (["keys", "create", ""], 2, "NAME"),
        (["keys", "revoke", "0123456789abcdef"], 1, "no API key '0123456789abcdef'; `ecrm keys list --all`"),
        (["keys", "rotate", "nope"], 1, "no API key 'nope'"),
        (["keys", "rotate", "nope", "--grace", "soon"], 2, "--grace"),
    ],
)
def test_errors_are_one_clear_line(ready: Run, args: list[str], code: int, message: str) -> None:
    r = ready(*args)
    assert r.exit_code == code, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    error_lines = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_rotating_a_revoked_key_is_refused(ready: Run) -> None:
    doc = json.loads(ready("keys", "create", "old", "--json").stdout)
    ready("keys", "revoke", doc["key_id"])
    r = ready("keys", "rotate", doc["key_id"])
    assert r.exit_code == 1 and "is revoked; create a new one with `ecrm keys create`" in r.output


def test_keys_and_serve_refuse_a_database_with_pending_migrations(run: Run) -> None:
    for args in (["keys", "list"], ["keys", "create", "x"], ["serve", "--port", "0"]):
        r = run(*args)
        assert r.exit_code == 1, r.output
        assert "not up to date" in r.output and "run `ecrm db upgrade` first" in r.output


def test_serve_rejects_bad_options(ready: Run) -> None:
    r = ready("serve", "--rate-limit", "fast")
    assert r.exit_code == 2 and "200/second" in r.output
    r = ready("serve", "--path", "crm/")
    assert r.exit_code == 2 and "--path" in r.output and "/crm" in r.output


def test_parsers() -> None:
    assert parse_rate("200/second") == ("second", 200)
    assert parse_rate("50/min") == ("minute", 50)
    assert parse_rate("3/hours") == ("hour", 3)
    assert parse_rate("off") is None
    assert parse_duration("2w", option="--x").days == 14
    assert parse_duration("90m", option="--x").total_seconds() == 5400


# ---------------------------------------------------------------------------
# a real server process
# ---------------------------------------------------------------------------


def ecrm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_ecrm_exe(), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _ecrm_exe() -> str:
    exe = Path(sys.executable).with_name("ecrm")
    if not exe.exists():
        pytest.skip("the `ecrm` console script is not installed next to this Python")
    return str(exe)


def test_serve_process_keys_from_another_process(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'live.db'}"
    env = {**os.environ, "ECRM_DATABASE_URL": db, "ECRM_API_SECRET": "s" * 32, "COLUMNS": "200"}
    env.pop("ECRM_WORKSPACE", None)
    assert ecrm("init", env=env).returncode == 0
    server = subprocess.Popen(
        [_ecrm_exe(), "serve", "--port", "0", "--key-cache", "0.2", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        lines = []
        base = None
        deadline = time.monotonic() + 30
        while base is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if m:
                base = m.group(1)
        assert base is not None, "".join(lines) + (server.stderr.read() if server.poll() is not None else "")
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(200):
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert http.get("/health").json() == {"status": "ok"}
            # TCP_NODELAY on the served sockets: no ~40 ms Nagle/delayed-ACK stall per response
            timings = []
            for _ in range(15):
                t0 = time.perf_counter()
                http.get("/health")
                timings.append(time.perf_counter() - t0)
            assert sorted(timings)[7] < 0.02, timings
            assert http.get("/docs/openapi.json").status_code == 200

            made = ecrm("keys", "create", "live", "--scope", "read", "--json", env=env)
            assert made.returncode == 0, made.stderr
            doc = json.loads(made.stdout)
            auth = {"Authorization": f"Bearer {doc['token']}"}
            me = http.get("/me", headers=auth)
            assert me.status_code == 200 and me.json()["key_id"] == doc["key_id"]

            revoked = ecrm("keys", "revoke", doc["key_id"], env=env)
            assert revoked.returncode == 0, revoked.stderr
            deadline = time.monotonic() + 5
            while http.get("/me", headers=auth).status_code != 401:
                assert time.monotonic() < deadline, "the revoked key still works after the key cache time"
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, err = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, err
    assert "ecrm API stopped" in out
    assert "Traceback" not in err
    assert "ECRM_API_SECRET" not in err  # set: no warning
    assert "has no API key yet" in err  # the workspace had none when it started
