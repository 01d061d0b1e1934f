"""The exceptions ecrm raises.

Every error a caller can cause is an :class:`EcrmError`.  Errors about a bad
value are :class:`ValidationError`: they name the *field*, the offending
*value* and the *fix*, so that an API layer can turn them into a precise
problem document and a CLI can print them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "EcrmError",
    "ValidationError",
    "BatchError",
    "RowError",
    "NotFound",
    "Conflict",
    "IdempotencyConflict",
    "SchemaNotInitialised",
    "PluginError",
    "HookApiVersionError",
    "HookFailed",
]


class EcrmError(Exception):
    """Base class of every error raised by ecrm."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ValidationError(EcrmError, ValueError):
    """A value was rejected.

    ``field`` is a dotted path (``"email"``, ``"properties.sku"``,
    ``"rows[3].amount"``), ``value`` the rejected value and ``fix`` a sentence
    that tells the caller what to send instead.
    """

    def __init__(self, field: str, value: Any, problem: str, fix: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem} (got {_short(value)}); {fix}")

    def at(self, prefix: str) -> ValidationError:
        """The same error with ``prefix`` put in front of the field path."""
        field = f"{prefix}.{self.field}" if self.field and not self.field.startswith("[") else f"{prefix}{self.field}"
        return type(self)(field, self.value, self.problem, self.fix)


class RowError:
    """One rejected row of a bulk call: where it was and why."""

    __slots__ = ("error", "index", "line")

    def __init__(self, index: int, error: EcrmError, line: int | None = None) -> None:
        self.index = index
        self.line = line
        self.error = error

    def __repr__(self) -> str:
        where = f"line {self.line}" if self.line is not None else f"row {self.index}"
        return f"<RowError {where}: {self.error}>"

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else f"row {self.index}"
        return f"{where}: {self.error}"


class BatchError(EcrmError):
    """A bulk call had rejected rows and stored nothing.

    ``errors`` lists every rejected row (not only the first), each with its
    index in the input and, for file imports, its line number.
    """

    def __init__(self, errors: Sequence[RowError], total: int | None = None, committed: int = 0) -> None:
        self.errors = list(errors)
        #: Rows stored by earlier batches before this error (``atomic=False`` only).
        self.committed = committed
        shown = "; ".join(str(e) for e in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        of = f" of {total}" if total is not None else ""
        stored = (
            "nothing was stored"
            if not committed
            else f"{committed} row(s) of earlier batches were committed (atomic=False), the rest was not stored"
        )
        super().__init__(
            f"{len(self.errors)} row(s){of} rejected, {stored}: {shown}{more}. "
            "Fix the rows, or pass on_error='skip' to store the valid rows and get the rejected ones back."
        )


class NotFound(EcrmError, LookupError):
    """The thing asked for does not exist in this workspace."""

    def __init__(self, what: str, key: Any) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} {_short(key)} not found in this workspace")


class Conflict(EcrmError):
    """The request contradicts what is stored (a unique value taken, a bad merge)."""


class IdempotencyConflict(Conflict):
    """An idempotency key was reused with a different payload."""

    def __init__(self, key: str, problem: str = "") -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used for a different interaction{problem}; "
            "send the same payload to retry safely, or use a new key for a new interaction"
        )


class SchemaNotInitialised(EcrmError):
    """The database has no (or an outdated) ecrm schema."""


class PluginError(EcrmError):
    """A plugin is broken: bad registration, duplicate names, wrong hook API."""


class HookApiVersionError(PluginError):
    """A plugin declares a hook API range that this ecrm does not satisfy."""


class HookFailed(PluginError):
    """A plugin failed in a hook whose work must be complete or not at all
    (``ecrm_customers_deleting``); nothing was changed.

    ``plugin`` and ``hook`` name it; the plugin's own exception is the
    ``__cause__`` (and in ``crm.plugins.failures``).  ``public`` is the
    message without the plugin's exception text, for answers to clients."""

    def __init__(self, plugin: str, hook: str, error: str) -> None:
        self.plugin, self.hook = plugin, hook
        self.public = f"ecrm plugin {plugin!r} failed in {hook}; nothing was changed"
        super().__init__(f"ecrm plugin {plugin!r} failed in {hook} ({error}); nothing was changed")
