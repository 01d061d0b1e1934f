"""What the commands of one ``ecrm`` invocation share: :class:`State`
(``ctx.obj``), the top-level group's error handling, progress bars and
formatting helpers."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import click

from ..errors import EcrmError, PluginError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.progress import Progress

    from ..crm import CRM
    from ..plugins import Plugins

__all__ = ["CONTEXT_SETTINGS", "DEFAULT_DB", "EcrmGroup", "State", "pass_state"]

log = logging.getLogger("ecrm.cli")

DEFAULT_DB = "sqlite:///ecrm.db"
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---------------------------------------------------------------------------
# state shared by the commands of one invocation
# ---------------------------------------------------------------------------


@dataclass
class State:
    """``ctx.obj``: the top-level options and a lazily built CRM."""

    db: str
    prefix: str
    workspace: str
    plugin_objects: Sequence[Any]
    entrypoints: bool
    plugins: Plugins
    load_error: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    _crm: CRM | None = field(default=None, repr=False)
    _out: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)

    def crm(self) -> CRM:
        """The CRM for this invocation, built on first use and closed at exit."""
        if self._crm is None:
            from ..crm import CRM

            self._crm = CRM(
                self.db,
                table_prefix=self.prefix,
                workspace=self.workspace,
                plugins=self.plugin_objects,
                load_entrypoints=self.entrypoints,
                channels=self.config.get("channels"),
                secret=self.config.get("secret"),
            )
            click.get_current_context().find_root().call_on_close(self._crm.close)
        return self._crm

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False)
        return self._err

    def where(self) -> str:
        """The database URL without its password, and the prefix/workspace."""
        from sqlalchemy.engine import make_url

        try:
            url = make_url(self.db).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL is reported when the CRM is built
            url = self.db
        return f"{url} (table prefix {self.prefix!r}, workspace {self.workspace!r})"


pass_state = click.make_pass_decorator(State)


class EcrmGroup(click.Group):
    """The top-level group: turns ecrm and database errors into clear messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EcrmError as exc:
            raise click.ClickException(_message(exc)) from None
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(exc, SQLAlchemyError):
                detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                raise click.ClickException(
                    f"database error: {detail} (database: {ctx.obj.where() if ctx.obj else '?'})"
                ) from None
            raise


def _message(exc: EcrmError) -> str:
    if isinstance(exc, PluginError):
        return f"{exc} (run `ecrm plugins` to see every plugin's status)"
    return str(exc)


@contextmanager
def _progress(state: State) -> Iterator[Progress]:
    """A rich progress display on stderr (silent when stderr is not a terminal)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=state.err,
        transient=True,
        disable=not state.err.is_terminal,
    ) as progress:
        yield progress


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def _money(amount: Decimal | None, currency: str | None = None) -> str:
    if amount is None:
        return ""
    digits = 0 if currency in ("KRW", "JPY") else 2
    text = f"{amount:,.{digits}f}"
    return f"{text} {currency}" if currency else text
