"""The ``ecrm`` command line.

Entry point ``ecrm = ecrm_core.cli:main``.  Every command builds its
:class:`~ecrm_core.CRM` lazily from the top-level options, so ``ecrm --help``
and ``ecrm plugins`` never open the database.  Plugins add commands through
the ``ecrm_register_commands`` hook; a plugin that fails is reported by
``ecrm plugins`` and never stops the CLI.

Embedding or testing: :func:`make_cli` returns a fresh :class:`click.Group`
(pass ``plugins=[...]`` to add plugin objects, ``entrypoints=False`` to skip
installed plugins)::

    from click.testing import CliRunner
    from ecrm_core.cli import make_cli

    result = CliRunner().invoke(make_cli(plugins=[MyPlugin()]), ["--db", "sqlite:///t.db", "init"])
"""

from __future__ import annotations

# The names below were all defined in the single ``ecrm_core/cli.py`` this
# package replaces; plugins import some of them (``State``, ``pass_state``,
# ``CONTEXT_SETTINGS``), so every one stays importable from here.
from .app import main as main
from .app import make_cli as make_cli
from .base import CONTEXT_SETTINGS as CONTEXT_SETTINGS
from .base import DEFAULT_DB as DEFAULT_DB
from .base import EcrmGroup as EcrmGroup
from .base import State as State
from .base import _message as _message
from .base import _money as _money
from .base import _progress as _progress
from .base import _when as _when
from .base import pass_state as pass_state
from .customers import _lookup as _lookup
from .customers import _print_rejected as _print_rejected
from .customers import customers_group as customers_group
from .customers import render_view as render_view
from .db import db_group as db_group
from .db import init_command as init_command
from .demo import demo_command as demo_command
from .demo import render_report as render_report
from .plugins import plugins_command as plugins_command

__all__ = ["main", "make_cli"]
