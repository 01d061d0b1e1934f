"""Helpers for code that handles a large batch in one go (delivery, ingest).

:func:`gc_paused` pauses Python's cyclic garbage collector for one batch.  A
batch allocates tens of thousands of objects (rows, tuples, dicts, messages)
that live until its end; the collections they trigger walk them and every
older object of the process (SQLAlchemy's metadata, the host application)
again and again -- measured at about a fifth of an ingest tick's CPU and
seconds of a 200,000-message send.  Reference counting still frees the
objects as the batch goes, and the collector runs again right after it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block (process-wide).

    Left alone when someone else already paused it, so blocks nest::

        from ecrm_core.batching import gc_paused

        with gc_paused():
            rows = [(i, str(i)) for i in range(50_000)]
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
