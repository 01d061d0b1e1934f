"""Progress for long needs-analysis computations, shown only on an interactive ``ecrm`` command line.

:func:`cli_progress` returns a ``progress(done, total)`` callback that drives
a rich progress bar on stderr when the computation runs inside a click
command and stderr is a terminal; elsewhere (the API, the worker, tests,
Python code) it returns ``None`` and nothing is shown.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["cli_progress"]


@contextmanager
def cli_progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback with a progress bar, or ``None`` when not on a terminal CLI."""
    try:
        import click

        interactive = click.get_current_context(silent=True) is not None and sys.stderr.isatty()
    except ImportError:  # pragma: no cover - click is a dependency
        interactive = False
    if not interactive:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
