"""``pytest`` when it is installed; otherwise a stand-in that lets the test
kit's helpers (:class:`~ecrm_core.testing.channels.FakeClock`, the memory
channels, :class:`~ecrm_core.testing.EventRecorder`) be imported and used
without pytest — ``ecrm demo`` replays a campaign with them on a machine that
has only the Quickstart's packages.  The fixtures are then plain functions and
the conformance suite cannot run (it needs pytest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["pytest"]


class _NoPytest:
    """What the kit uses of pytest at import time; anything else says pytest is missing."""

    @staticmethod
    def fixture(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            return fn

        return decorate

    def __getattr__(self, name: str) -> Any:
        raise ModuleNotFoundError(f"pytest.{name}: install pytest to run ecrm's test kit (pip install pytest)")


try:
    import pytest
except ImportError:  # tests/test_testing_kit.py: a Python where pytest cannot be imported
    pytest = _NoPytest()  # type: ignore[assignment]
