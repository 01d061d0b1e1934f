"""Plugin loading (stevedore entry points), allow/deny lists, failure policy, API versions."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest

from ecrm_core import CRM, HOOK_API_VERSION, HookApiVersionError, InteractionKind, PluginError, hookimpl
from ecrm_core.plugins import Plugins


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install fake plugin distributions (dist-info + module) on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(dist: str, entry: str, module: str, source: str, version: str = "1.2.3") -> None:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[ecrm.plugins]\n{entry} = {module}\n")
        sys.modules.pop(module, None)
        import importlib

        from stevedore import ExtensionManager

        importlib.invalidate_caches()
        ExtensionManager.ENTRY_POINT_CACHE.clear()  # stevedore's per-process cache

    yield install
    import importlib

    importlib.invalidate_caches()


GOOD = """
from ecrm_core import hookimpl, InteractionKind
ECRM_HOOK_API = ">=1,<2"
@hookimpl
def ecrm_register_interaction_kinds():
    return [InteractionKind(name="points_earned", description="loyalty points")]
"""


def test_entry_point_plugins_load_with_version_and_hooks(installed, tmp_path):
    installed("ecrm-loyalty", "loyalty", "fake_loyalty", GOOD)
    crm = CRM(f"sqlite:///{tmp_path / 'a.db'}")
    info = crm.plugins.info["loyalty"]
    assert (info.status, info.source, info.version) == ("loaded", "entrypoint", "1.2.3")
    assert info.hooks == ("ecrm_register_interaction_kinds",) and info.hook_api == ">=1,<2"
    assert crm.registry.interaction_kinds["points_earned"].plugin == "loyalty"
    assert crm.plugins.info["core.kinds"].source == "default"


def test_broken_plugins_are_reported_and_skipped(installed, tmp_path):
    installed("ecrm-good", "good", "fake_good", GOOD)
    installed("ecrm-broken", "broken", "fake_broken", "import nonexistent_dependency_xyz\n")
    installed(
        "ecrm-typo",
        "typo",
        "fake_typo",
        "from ecrm_core import hookimpl\n@hookimpl\ndef ecrm_customer_created(crm):\n    pass\n",
    )
    installed("ecrm-old", "old", "fake_old", 'ECRM_HOOK_API = ">=2"\n')
    installed("ecrm-bad-range", "badrange", "fake_badrange", 'ECRM_HOOK_API = "one point oh"\n')
    crm = CRM(f"sqlite:///{tmp_path / 'a.db'}")  # the host starts anyway
    crm.upgrade()
    info = crm.plugins.info
    assert info["good"].status == "loaded"
    assert info["broken"].status == "failed" and "nonexistent_dependency_xyz" in info["broken"].error
    assert info["typo"].status == "failed" and "did you mean 'ecrm_customers_created'" in info["typo"].error
    assert info["old"].status == "failed" and "supports the ecrm hook API >=2" in info["old"].error
    assert "not a version range" in info["badrange"].error
    assert crm.customers.create(email="a@example.com").id  # the core works


def test_allow_and_deny_lists(installed, tmp_path, monkeypatch):
    installed("ecrm-good", "good", "fake_good2", GOOD)
    installed("ecrm-broken", "broken", "fake_broken2", "raise RuntimeError('boom at import')\n")
    crm = CRM(f"sqlite:///{tmp_path / 'a.db'}", enable=["good"])
    assert crm.plugins.info["good"].status == "loaded"
    assert crm.plugins.info["broken"].status == "disabled"  # never imported
    assert "fake_broken2" not in sys.modules
    monkeypatch.setenv("ECRM_DISABLE_PLUGINS", "good, broken")
    crm = CRM(f"sqlite:///{tmp_path / 'b.db'}")
    assert {crm.plugins.info[n].status for n in ("good", "broken")} == {"disabled"}
    monkeypatch.delenv("ECRM_DISABLE_PLUGINS")
    monkeypatch.setenv("ECRM_PLUGINS", "goood")
    crm = CRM(f"sqlite:///{tmp_path / 'c.db'}")
    assert "did you mean 'good'" in crm.plugins.info["goood"].error
    monkeypatch.setenv("ECRM_PLUGINS", "")
    crm = CRM(f"sqlite:///{tmp_path / 'd.db'}")
    assert crm.plugins.info["good"].status == "disabled"


def test_default_plugins_can_be_replaced(tmp_path):
    class MyKinds:
        @hookimpl
        def ecrm_register_interaction_kinds(self):
            return [InteractionKind(name="visit")]

    crm = CRM(f"sqlite:///{tmp_path / 'a.db'}", load_entrypoints=False, disable=["core.kinds"], plugins=[MyKinds()])
    assert set(crm.registry.interaction_kinds) == {"visit"}
    assert crm.plugins.info["core.kinds"].status == "disabled"


def test_host_plugins_fail_loudly(tmp_path):
    class Typo:
        @hookimpl
        def ecrm_interaction_recorded(self, batch):
            pass

    with pytest.raises(PluginError, match="did you mean 'ecrm_interactions_recorded'"):
        CRM(f"sqlite:///{tmp_path / 'a.db'}", load_entrypoints=False, plugins=[Typo()])

    class Future:
        ECRM_HOOK_API = ">=3"

    with pytest.raises(HookApiVersionError, match=f"this ecrm-core implements {re.escape(HOOK_API_VERSION)};"):
        CRM(f"sqlite:///{tmp_path / 'a.db'}", load_entrypoints=False, plugins=[Future()])

    class Wrapper:
        @hookimpl(wrapper=True)
        def ecrm_customers_created(self, customers):
            return (yield)

    with pytest.raises(PluginError, match="cannot be a wrapper"):
        CRM(f"sqlite:///{tmp_path / 'a.db'}", load_entrypoints=False, plugins=[Wrapper()])


def test_duplicate_registrations_name_both_plugins(crm):
    class Dup:
        @hookimpl
        def ecrm_register_interaction_kinds(self):
            return [InteractionKind(name="purchase")]

    with pytest.raises(PluginError, match=r"'purchase' is registered twice: by plugins 'core.kinds' and 'dup'"):
        crm.register_plugin(Dup(), name="dup")
    assert "dup" not in crm.plugins.info  # nothing half-registered
    with pytest.raises(PluginError, match="already registered"):
        crm.register_plugin(object(), name="core.kinds")


def test_a_raising_registration_hook_is_isolated(crm):
    class Broken:
        @hookimpl
        def ecrm_register_interaction_kinds(self):
            raise RuntimeError("bad config")

    crm.register_plugin(Broken(), name="broken")
    assert "purchase" in crm.registry.interaction_kinds
    failure = crm.plugins.failures[-1]
    assert (failure.plugin, failure.hook) == ("broken", "ecrm_register_interaction_kinds")
    assert "bad config" in failure.error and "Traceback" in failure.traceback


def test_no_global_state_between_crms(tmp_path):
    class Extra:
        @hookimpl
        def ecrm_register_interaction_kinds(self):
            return [InteractionKind(name="visit")]

    one = CRM(f"sqlite:///{tmp_path / 'a.db'}", load_entrypoints=False, plugins=[Extra()])
    two = CRM(f"sqlite:///{tmp_path / 'b.db'}", load_entrypoints=False)
    assert "visit" in one.registry.interaction_kinds and "visit" not in two.registry.interaction_kinds
    assert Plugins().info == {}


def test_import_is_light():
    import subprocess

    code = "import sys, ecrm_core; print(sorted(m for m in ('sqlalchemy', 'pluggy', 'alembic', 'stevedore') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_building_a_crm_imports_no_web_framework(tmp_path):
    """Plugins' route handlers are collected when the API reads them, not when a CRM is built:
    a script or the worker with ecrm-api (and plugins with routes) installed imports no Litestar."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ecrm_core import CRM\n"
        "crm = CRM('sqlite:///' + sys.argv[1])\n"
        "crm.upgrade()\n"
        "crm.customers.create(email='a@example.com')\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('litestar', 'starlette', 'uvicorn'))\n"
        "assert not web, web[:5]\n"
        "crm.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.db")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
