"""How the suite runs in parallel (pytest-xdist); loaded by ``tests/conftest.py``.

* A plain ``pytest`` runs on ``ECRM_TEST_WORKERS`` workers (default ``auto``:
  one per CPU) with ``--dist loadgroup``; ``-n N`` chooses the count, ``-n 0``
  or ``-p no:xdist`` runs serially, ``--pdb`` and ``--collect-only`` stay serial.
* ``@pytest.mark.xdist_group("name")``: the tests sharing a name run one after
  the other on one worker.  Every browser test is in the group ``browser``
  (one Chromium for the run).
* The groups reach the scheduler explicitly.  xdist's own ``loadgroup`` passes
  them by appending ``@name`` to node ids, which pytest 9.2's structured node
  ids silently ignore (pytest-dev/pytest-xdist#1386): every group would be
  spread over the workers.  Here each worker writes ``{node id: group}`` to a
  directory of the controller's before it reports its collection, and the
  scheduler (xdist's load-scope scheduling, one scope per group, every other
  test a scope of its own) reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

#: How many xdist workers a plain ``pytest`` uses (``auto``, ``0`` for none, or a number).
ENV_WORKERS = "ECRM_TEST_WORKERS"
_GROUPS_DIR = pytest.StashKey[Path]()


def _xdist(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("xdist")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Default to ``-n $ECRM_TEST_WORKERS --dist loadgroup`` when xdist is
    installed and the command line chose neither.  Runs before xdist's own
    ``pytest_cmdline_main``, which resolves ``auto``."""
    option = config.option
    if hasattr(config, "workerinput"):  # a worker parses the command line again: take the controller's choice
        if config.workerinput.get("ecrm_dist") == "loadgroup":
            option.loadgroup = True
        return
    if not _xdist(config) or option.collectonly or option.usepdb:
        return
    if option.numprocesses is None and not option.tx and option.dist == "no" and not option.distload:
        workers = os.environ.get(ENV_WORKERS, "auto").strip() or "auto"
        option.numprocesses = workers if workers in ("auto", "logical") else int(workers)
    if option.numprocesses and option.dist == "no" and not option.distload:
        option.dist = "loadgroup"  # honour xdist_group marks, also for a bare `-n N`


def pytest_configure(config: pytest.Config) -> None:
    if not _xdist(config):  # -p no:xdist: the marks stay valid (--strict-markers)
        config.addinivalue_line("markers", "xdist_group(name): run with the other tests of this group (pytest-xdist)")
    if _xdist(config) and not hasattr(config, "workerinput") and config.option.dist == "loadgroup":
        config.stash[_GROUPS_DIR] = Path(tempfile.mkdtemp(prefix="ecrm-xdist-groups-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_GROUPS_DIR, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each worker the distribution mode (its command line may not say
    ``--dist loadgroup``) and where to write its groups."""
    node.workerinput["ecrm_dist"] = node.config.option.dist
    directory = node.config.stash.get(_GROUPS_DIR, None)
    if directory is not None:
        node.workerinput["ecrm_groups_dir"] = str(directory)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put every browser test in the group ``browser``: one that uses the
    ``browser`` fixture or sits in a module that loads ``browser_kit`` (some
    ask for ``page`` through ``request.getfixturevalue``)."""
    group = pytest.mark.xdist_group("browser")
    for item in items:
        module = getattr(item, "module", None)
        kit = "browser_kit" in (getattr(module, "pytest_plugins", None) or ())
        if (kit or "browser" in getattr(item, "fixturenames", ())) and item.get_closest_marker("xdist_group") is None:
            item.add_marker(group)


def _group(item: pytest.Item) -> str | None:
    names = sorted(
        {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    )
    return "_".join(names) or None


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reports the collection
def pytest_collection_finish(session: pytest.Session) -> None:
    workerinput = getattr(session.config, "workerinput", None)
    if not workerinput or not workerinput.get("ecrm_groups_dir"):
        return
    groups = {item.nodeid: g for item in session.items if (g := _group(item)) is not None}
    directory = Path(workerinput["ecrm_groups_dir"])
    part = directory / f"{workerinput['workerid']}.json.part"
    part.write_text(json.dumps(groups), encoding="utf-8")
    part.replace(directory / f"{workerinput['workerid']}.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    directory = config.stash.get(_GROUPS_DIR, None)
    if config.option.dist != "loadgroup" or directory is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """xdist's ``loadgroup`` with the groups read from the workers' files."""

        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self.groups: dict[str, str] = {}

        def add_node_collection(self, node: Any, collection: Any) -> None:
            path = directory / f"{node.gateway.id}.json"
            if path.exists():
                self.groups.update(json.loads(path.read_text(encoding="utf-8")))
            super().add_node_collection(node, collection)

        def _split_scope(self, nodeid: str) -> str:
            group = self.groups.get(nodeid)
            if group is None and "@" in nodeid and nodeid.rfind("@") > nodeid.rfind("]"):
                group = nodeid.rsplit("@", 1)[-1]  # a pytest that still takes xdist's suffix
            return f"group:{group}" if group is not None else nodeid

    return GroupScheduling(config, log)
