"""Streaming readers for customer files (CSV and JSON Lines).

:class:`CustomerFileReader` turns a file into customer rows for
:meth:`~ecrm_core.services.customers.Customers.upsert_many` one row at a
time — the file is never loaded whole — and keeps what it needs to name the
*file line* of every rejected row::

    with CustomerFileReader("customers.csv") as reader:
        result = crm.customers.upsert_many(reader, on_error="skip", first_line=reader.first_line)
    for error in sorted([*reader.errors, *reader.locate(result.errors)], key=lambda e: e.line or 0):
        print(error)          # "line 7: email: not a valid e-mail address ..."

Rows the reader cannot even parse (malformed JSON, a bad ``consent.*``
value, a CSV row with too many cells) are not passed on; they are collected
in :attr:`CustomerFileReader.errors` as :class:`~ecrm_core.errors.RowError`
objects with their line numbers.

CSV files have a header row.  Columns:

* ``external_id``, ``email``, ``phone``, ``name``, ``lifecycle_stage``,
  ``timezone``, ``locale`` — the customer's fields;
* ``attr.<name>`` — an attribute (stored as text), e.g. ``attr.plan``;
* ``consent.<channel>`` — ``true``/``false``, ``yes``/``no``, ``1``/``0`` or
  ``granted``/``denied``, e.g. ``consent.email``;
* ``alias.<kind>`` — an extra identity, e.g. ``alias.cookie``.

An empty cell means "not given": the stored value is left as it is.  JSON
Lines files hold one object per line with the same keys as
``crm.customers.upsert`` (``attributes`` and ``consent`` as objects,
``aliases`` as ``[["kind", "value"], ...]``); the flat ``attr.*``,
``consent.*`` and ``alias.*`` keys of the CSV format are accepted too.

Files ending in ``.gz`` are decompressed on the fly.
"""

from __future__ import annotations

import bisect
import csv
import difflib
import gzip
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from .errors import RowError, ValidationError

__all__ = ["CustomerFileReader", "Format", "FORMATS", "CUSTOMER_COLUMNS", "detect_format", "parse_consent"]

Format = Literal["csv", "jsonl"]

#: The file formats :class:`CustomerFileReader` reads.
FORMATS: tuple[Format, ...] = ("csv", "jsonl")

#: CSV columns that map one to one onto customer fields.
CUSTOMER_COLUMNS = ("external_id", "email", "phone", "name", "lifecycle_stage", "timezone", "locale")

#: Columns that identify a customer (a file needs at least one).
IDENTITY_COLUMNS = ("external_id", "email", "phone")

_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_GRANTED = frozenset({"true", "yes", "y", "1", "granted", "opt-in", "opt_in"})
_DENIED = frozenset({"false", "no", "n", "0", "denied", "opt-out", "opt_out"})
_PREFIXES = ("attr.", "consent.", "alias.")


def detect_format(path: str | Path, format: str | None = None) -> Format:
    """The format of ``path``: ``format`` if given, else from the file extension.

    ``.csv`` is CSV; ``.jsonl`` and ``.ndjson`` are JSON Lines; a trailing
    ``.gz`` is ignored.  Raises :class:`~ecrm_core.errors.ValidationError`
    when neither tells.
    """
    if format is not None:
        if format not in FORMATS:
            raise ValidationError("format", format, "unknown file format", f"use one of {', '.join(FORMATS)}")
        return format  # type: ignore[return-value]
    name = Path(path).name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    found = _EXTENSIONS.get(suffix)
    if found is None:
        raise ValidationError(
            "format",
            suffix or name,
            "cannot tell the file format from the extension",
            "name the file *.csv or *.jsonl, or pass --format csv|jsonl",
        )
    return found


def parse_consent(value: Any, channel: str) -> str:
    """``"granted"`` or ``"denied"`` for a consent cell (``true``, ``no``, ``granted``…)."""
    if isinstance(value, bool):
        return "granted" if value else "denied"
    text = str(value).strip().lower()
    if text in _GRANTED:
        return "granted"
    if text in _DENIED:
        return "denied"
    raise ValidationError(
        f"consent.{channel}", value, "not a consent value", "use true/false, yes/no, 1/0 or granted/denied"
    )


def _check_columns(columns: list[str]) -> None:
    """Reject a header with unknown, empty or repeated column names."""
    seen: set[str] = set()
    for position, column in enumerate(columns, start=1):
        if not column:
            raise ValidationError(
                f"columns[{position}]", column, "empty column name", "give every column of the header row a name"
            )
        if column in seen:
            raise ValidationError(f"columns[{position}]", column, "repeated column", "keep one column per field")
        seen.add(column)
        if column in CUSTOMER_COLUMNS:
            continue
        prefix = next((p for p in _PREFIXES if column.startswith(p)), None)
        if prefix is not None and len(column) > len(prefix):
            continue
        close = difflib.get_close_matches(column, CUSTOMER_COLUMNS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValidationError(
            f"columns[{position}]",
            column,
            "unknown column",
            f"{hint}use {', '.join(CUSTOMER_COLUMNS)}, or attr.<name>, consent.<channel>, alias.<kind>",
        )
    if not any(c in IDENTITY_COLUMNS or c.startswith("alias.") for c in columns):
        raise ValidationError(
            "columns",
            columns,
            "no identity column",
            "add an external_id, email, phone or alias.<kind> column so rows can be matched to customers",
        )


def _flat_key(row: dict[str, Any], key: str, value: Any) -> None:
    """Put a flat ``attr.x`` / ``consent.x`` / ``alias.x`` value where it belongs in ``row``."""
    prefix, _, rest = key.partition(".")
    if prefix == "attr":
        row.setdefault("attributes", {})[rest] = value
    elif prefix == "consent":
        row.setdefault("consent", {})[rest] = parse_consent(value, rest)
    else:  # alias
        row.setdefault("aliases", []).append((rest, value))


class _CountingReader(io.RawIOBase):
    """A binary stream that counts the bytes read from the file underneath."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0


class CustomerFileReader:
    """Customer rows streamed out of a CSV or JSON Lines file.

    Use it as a context manager (that opens the file and checks the CSV
    header), then iterate it once.  ``position`` is how many bytes of the
    file were read so far (for a progress bar against ``size``).

    :param path: the file (``.gz`` files are decompressed on the fly).
    :param format: ``"csv"`` or ``"jsonl"``; by default from the extension.
    :param encoding: text encoding (``utf-8-sig`` also accepts a BOM).
    :param delimiter: the CSV cell separator.
    """

    def __init__(
        self,
        path: str | Path,
        format: str | None = None,
        *,
        encoding: str = "utf-8-sig",
        delimiter: str = ",",
    ) -> None:
        self.path = Path(path)
        self.format: Format = detect_format(self.path, format)
        self.encoding = encoding
        self.delimiter = delimiter
        #: Rows rejected while parsing, with their line numbers (in file order).
        self.errors: list[RowError] = []
        #: Records seen in the file so far (good and bad; blank lines not counted).
        self.records = 0
        #: Rows handed on (the ``index`` that ``upsert_many`` reports).
        self.rows = 0
        #: The file line of the first data row when nothing is skipped.
        self.first_line = 2 if self.format == "csv" else 1
        self.columns: list[str] = []
        self._file: IO[bytes] | None = None
        self._counter: _CountingReader | None = None
        self._text: io.TextIOWrapper | None = None
        self._csv: Any = None
        self._started = False
        # Sparse map from row index to (file line, record number): a new
        # entry only where the numbering jumps (multi-line cells, blank
        # lines, rejected rows), so memory stays small for large files.
        self._marks: list[int] = []
        self._offsets: list[tuple[int, int]] = []

    # -- lifetime ------------------------------------------------------------
    def __enter__(self) -> CustomerFileReader:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open the file and, for CSV, read and check the header row."""
        if self._file is not None:
            return
        try:
            self._file = self.path.open("rb")
        except OSError as exc:
            raise ValidationError(
                "file", str(self.path), f"cannot be read ({exc.strerror})", "check the path and its permissions"
            ) from None
        self._counter = _CountingReader(self._file)
        binary: IO[bytes] = io.BufferedReader(self._counter)
        if self.path.name.lower().endswith(".gz"):
            binary = gzip.GzipFile(fileobj=binary, mode="rb")  # type: ignore[assignment]
        self._text = io.TextIOWrapper(binary, encoding=self.encoding, newline="")
        if self.format == "csv":
            self._csv = csv.reader(self._text, delimiter=self.delimiter, strict=True)
            try:
                header = self._next_csv()
            except UnicodeDecodeError as exc:
                self.close()
                raise ValidationError(
                    "file",
                    str(self.path),
                    f"not {self.encoding} text ({exc.reason} at byte {exc.start})",
                    "save the file as UTF-8, or pass the file's --encoding",
                ) from None
            except csv.Error as exc:
                self.close()
                raise ValidationError(
                    "file", str(self.path), f"unreadable header row ({exc})", "the first line must be a header row"
                ) from None
            if header is None:
                self.close()
                raise ValidationError("file", str(self.path), "empty file", "the first line must be a header row")
            self.columns = [c.strip() for c in header]
            try:
                _check_columns(self.columns)
            except ValidationError:
                self.close()
                raise

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        if self._file is not None:
            self._file.close()
        self._text = self._file = None

    @property
    def size(self) -> int:
        """The size of the file in bytes (compressed size for ``.gz``)."""
        return self.path.stat().st_size

    @property
    def position(self) -> int:
        """Bytes of the file read so far."""
        return self._counter.count if self._counter is not None else 0

    # -- line numbers ----------------------------------------------------------
    def _emit(self, line: int) -> None:
        index = self.rows
        offsets = (line - self.first_line - index, self.records - 1 - index)
        if (self._offsets[-1] if self._offsets else (0, 0)) != offsets:
            self._marks.append(index)
            self._offsets.append(offsets)
        self.rows += 1

    def _offset(self, index: int) -> tuple[int, int]:
        at = bisect.bisect_right(self._marks, index) - 1
        return self._offsets[at] if at >= 0 else (0, 0)

    def line_of(self, index: int) -> int:
        """The file line where the ``index``-th row handed on starts."""
        return self.first_line + index + self._offset(index)[0]

    def record_of(self, index: int) -> int:
        """The record number (0-based, bad rows included) of the ``index``-th row handed on."""
        return index + self._offset(index)[1]

    def locate(self, errors: Iterable[RowError]) -> list[RowError]:
        """``upsert_many``'s row errors with the file line and record number of each row."""
        return [RowError(self.record_of(e.index), e.error, self.line_of(e.index)) for e in errors]

    def _reject(self, line: int, error: ValidationError) -> None:
        self.errors.append(RowError(self.records - 1, error, line))

    # -- reading -----------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._started:
            raise RuntimeError("a CustomerFileReader can be iterated once")
        self._started = True
        self.open()
        try:
            yield from self._csv_rows() if self.format == "csv" else self._jsonl_rows()
        except UnicodeDecodeError as exc:
            raise ValidationError(
                "file",
                str(self.path),
                f"not {self.encoding} text ({exc.reason} near byte {self.position})",
                "save the file as UTF-8, or pass the file's --encoding",
            ) from None
        except (OSError, EOFError) as exc:  # truncated or corrupt .gz
            raise ValidationError("file", str(self.path), f"cannot be read ({exc})", "check the file") from None

    def _next_csv(self) -> list[str] | None:
        try:
            return next(self._csv)  # type: ignore[no-any-return]
        except StopIteration:
            return None

    def _csv_rows(self) -> Iterator[dict[str, Any]]:
        reader = self._csv
        columns = self.columns
        width = len(columns)
        previous = reader.line_num
        while True:
            start = previous + 1
            try:
                cells = self._next_csv()
            except csv.Error as exc:
                previous = reader.line_num
                self.records += 1
                self._reject(start, ValidationError("row", str(exc), "malformed CSV", "check the quoting of this row"))
                continue
            previous = reader.line_num
            if cells is None:
                return
            if not any(c.strip() for c in cells):
                continue  # blank line
            self.records += 1
            if len(cells) > width:
                self._reject(
                    start,
                    ValidationError(
                        "row",
                        cells[width:],
                        f"{len(cells)} cells but the header has {width} columns",
                        "remove the extra cells or quote cells that contain the delimiter",
                    ),
                )
                continue
            row: dict[str, Any] = {}
            try:
                for column, cell in zip(columns, cells, strict=False):
                    value = cell.strip()
                    if not value:
                        continue  # empty cell: not given
                    if column in CUSTOMER_COLUMNS:
                        row[column] = value
                    else:
                        _flat_key(row, column, value)
            except ValidationError as exc:
                self._reject(start, exc)
                continue
            self._emit(start)
            yield row

    def _jsonl_rows(self) -> Iterator[dict[str, Any]]:
        assert self._text is not None
        for line_number, line in enumerate(self._text, start=1):
            if not line.strip():
                continue
            self.records += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                text = line.strip()
                self._reject(
                    line_number,
                    ValidationError(
                        "line",
                        text if len(text) <= 60 else text[:57] + "...",
                        f"malformed JSON ({exc.msg} at column {exc.colno})",
                        "write one JSON object per line",
                    ),
                )
                continue
            try:
                row = self._object(obj)
            except ValidationError as exc:
                self._reject(line_number, exc)
                continue
            self._emit(line_number)
            yield row

    @staticmethod
    def _object(obj: Any) -> dict[str, Any]:
        if not isinstance(obj, Mapping):
            raise ValidationError(
                "line", obj, "not a JSON object", 'write one object per line, e.g. {"email": "ada@example.com"}'
            )
        row: dict[str, Any] = {}
        flat: list[tuple[str, Any]] = []
        for key, value in obj.items():
            if key.startswith(_PREFIXES):
                if value is not None:
                    flat.append((key, value))
            elif key == "aliases":
                row["aliases"] = _aliases(value)
            else:
                row[key] = value
        for key, value in flat:
            if key.startswith("attr.") and "attributes" in row and not isinstance(row["attributes"], Mapping):
                continue  # upsert_many reports the bad "attributes" value
            if key.startswith("consent.") and "consent" in row and not isinstance(row["consent"], Mapping):
                continue
            if key.startswith("attr."):
                row["attributes"] = dict(row.get("attributes") or {})
            elif key.startswith("consent."):
                row["consent"] = dict(row.get("consent") or {})
            _flat_key(row, key, value)
        return row


def _aliases(value: Any) -> list[tuple[str, str]]:
    """``[["kind", "value"], {"kind": ..., "value": ...}]`` as pairs, or raise."""
    fix = 'send aliases as [["cookie", "abc123"], ...] or [{"kind": "cookie", "value": "abc123"}, ...]'
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError("aliases", value, "not a list", fix)
    out = []
    for position, item in enumerate(value):
        if isinstance(item, Mapping) and set(item) == {"kind", "value"}:
            out.append((item["kind"], item["value"]))
        elif isinstance(item, list) and len(item) == 2:
            out.append((item[0], item[1]))
        else:
            raise ValidationError(f"aliases[{position}]", item, "not a kind/value pair", fix)
    return out
