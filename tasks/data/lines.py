"""Strict parsing of delimited text files: exact 1-based line numbers in every error.

Large all-integer files (ratings) take a vectorised path (a byte-class check with numpy, then
pandas' C parser); only when that fails is the file split line by line to name the first bad line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from doppel.tasks.records import DataError

INT_PATTERN = r"[+-]?\d{1,18}"
_DIGITS_OK = np.zeros(256, dtype=bool)
_DIGITS_OK[ord("0") : ord("9") + 1] = True
_DIGITS_OK[ord("\n")] = True


def quote(value: object, limit: int = 80) -> str:
    """repr() of a value, shortened for error messages."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass
class Table:
    """Rows of one file as a DataFrame plus the 1-based line number of every row."""

    label: str
    df: pd.DataFrame
    lines: np.ndarray

    def fail(self, row: int, reason: str) -> NoReturn:
        raise DataError(self.label, int(self.lines[row]), reason)

    def check(self, bad: np.ndarray | pd.Series, reason: Callable[[int], str]) -> None:
        """Raise for the first row where `bad` is true; `reason(row)` builds the message."""
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            row = int(np.argmax(bad))
            self.fail(row, reason(row))

    def text(self, col: str, required: bool = False) -> pd.Series:
        """A stripped string column; `required` rejects empty values."""
        s = self.df[col].astype(str).str.strip()
        if required:
            self.check((s == "").to_numpy(), lambda i: f"empty {col}")
        return s

    def ints(self, col: str, lo: int | None = None, hi: int | None = None, allow_empty: bool = False) -> pd.Series:
        """An integer column (int64, or nullable Int64 if `allow_empty`), range-checked."""
        raw = self.df[col]
        if pd.api.types.is_integer_dtype(raw.dtype):
            values = raw.astype("int64")
        else:
            s = raw.astype(str).str.strip()
            ok = s.str.fullmatch(INT_PATTERN).to_numpy(dtype=bool)
            empty = (s == "").to_numpy()
            if allow_empty:
                ok = ok | empty
            self.check(~ok, lambda i: f"{col} is not an integer: {quote(s.iloc[i])}")
            values = pd.to_numeric(s.mask(empty), errors="raise").astype("Int64" if allow_empty else "int64")
        arr = values.to_numpy(dtype="float64", na_value=np.nan)
        if lo is not None or hi is not None:
            low = -np.inf if lo is None else lo
            high = np.inf if hi is None else hi
            bad = ~np.isnan(arr) & ((arr < low) | (arr > high))
            span = f"{'' if lo is None else lo}..{'' if hi is None else hi}"
            self.check(bad, lambda i: f"{col} {quote(raw.iloc[i])} out of range {span}")
        return values.reset_index(drop=True)

    def unique(self, cols: list[str], what: str) -> None:
        """Reject a repeated key (cols), naming the line of the first occurrence."""
        dup = self.df.duplicated(cols, keep="first").to_numpy()
        if dup.any():
            row = int(np.argmax(dup))
            key = self.df.iloc[row][cols]
            first = (self.df[cols] == key.to_numpy()).all(axis=1).to_numpy().argmax()
            shown = ", ".join(f"{c} {quote(key[c])}" for c in cols)
            self.fail(row, f"duplicate {what} for {shown} (first at line {int(self.lines[first])})")


def read_bytes(path: Path, label: str | None = None) -> bytes:
    """Read a file, turning a missing file into a DataError."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(label or str(path), None, "file not found") from None


def _normalise(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n") if b"\r" in data else data


def _decode(data: bytes, label: str, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(label, line, f"not valid {encoding} text ({e.reason})") from None


def read_rows(
    data: bytes, label: str, sep: str, names: list[str] | None = None, encoding: str = "utf-8", header: bool = False
) -> Table:
    """Split unquoted delimited text into string columns; blank lines are skipped.

    With `header`, the first non-blank line names the columns; else `names` does.
    Every other non-blank line must have exactly that many fields.
    """
    text = _decode(_normalise(data), label, encoding)
    rows: list[list[str]] = []
    line_nos: list[int] = []
    for no, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        fields = line.split(sep)
        if names is None and header:
            names = [f.strip() for f in fields]
            continue
        if names is None:
            raise ValueError("read_rows needs names or header=True")
        if len(fields) != len(names):
            raise DataError(
                label, no, f"expected {len(names)} fields separated by {sep!r}, found {len(fields)}: {quote(line)}"
            )
        rows.append(fields)
        line_nos.append(no)
    if names is None:
        raise DataError(label, None, "empty file (no header line)")
    df = (
        pd.DataFrame(rows, columns=names, dtype=str)
        if rows
        else pd.DataFrame({n: pd.Series([], dtype=str) for n in names})
    )
    return Table(label, df, np.asarray(line_nos, dtype=np.int64))


def read_int_rows(data: bytes, label: str, sep: str, names: list[str]) -> Table:
    """Read a file of integer fields only (ratings, splits) fast, with strict checks."""
    data = _normalise(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    if arr.size and arr[-1] != 10:
        nl = np.append(nl, arr.size)
    starts = np.concatenate(([0], nl[:-1] + 1)) if nl.size else nl
    nonblank = (nl - starts) > 0
    counts = np.bincount(np.searchsorted(nl, np.flatnonzero(arr == ord(sep))), minlength=nl.size) + 1
    bad = nonblank & (counts != len(names))
    if bad.any():
        i = int(np.argmax(bad))
        line = data[starts[i] : nl[i]].decode("utf-8", "replace")
        raise DataError(
            label, i + 1, f"expected {len(names)} fields separated by {sep!r}, found {counts[i]}: {quote(line)}"
        )
    lines = np.flatnonzero(nonblank) + 1
    ok_bytes = _DIGITS_OK.copy()
    ok_bytes[ord(sep)] = True
    if lines.size and ok_bytes[arr].all():
        try:
            df = pd.read_csv(
                io.BytesIO(data), sep=sep, header=None, names=names, dtype=np.int64, engine="c", skip_blank_lines=True
            )
            if len(df) == lines.size:
                return Table(label, df, lines)
        except (ValueError, OverflowError):
            pass  # an empty or huge field: the slow path below names the line
    table = read_rows(data, label, sep, names)
    ok = np.column_stack([table.df[c].str.fullmatch(INT_PATTERN).to_numpy(dtype=bool) for c in names])
    if not ok.all():
        row = int(np.argmax(~ok.all(axis=1)))
        col = names[int(np.argmax(~ok[row]))]
        table.fail(row, f"{col} is not an integer: {quote(table.df[col].iloc[row])}")
    df = pd.DataFrame({c: table.df[c].astype("int64") for c in names})
    return Table(label, df, table.lines)


def read_csv_rows(
    path: Path, required: Sequence[str], optional: Sequence[str] = (), aliases: dict[str, str] | None = None
) -> Table:
    """Read a quoted CSV with a header; keep `required` + present `optional` columns (as str).

    `aliases` maps alternative header names to canonical ones (e.g. "ts" -> "timestamp").
    Every record must have as many fields as the header; a record's line is where it starts.
    """
    label = str(path)
    text = _decode(_normalise(read_bytes(path, label)), label, "utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        while not header:
            header = next(reader)
    except StopIteration:
        raise DataError(label, None, "empty file (no header line)") from None
    except csv.Error as e:
        raise DataError(label, reader.line_num, f"bad CSV: {e}") from None
    aliases = aliases or {}
    names = [aliases.get(h.strip().lower(), h.strip().lower()) for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            label, reader.line_num, f"missing column(s) {', '.join(missing)} in header {quote(','.join(header))}"
        )
    keep = [c for c in list(required) + list(optional) if c in names]
    idx = [names.index(c) for c in keep]
    rows: list[list[str]] = []
    line_nos: list[int] = []
    prev = reader.line_num
    try:
        for rec in reader:
            start, prev = prev + 1, reader.line_num
            if not rec:
                continue
            if len(rec) != len(names):
                raise DataError(label, start, f"expected {len(names)} fields, found {len(rec)}: {quote(','.join(rec))}")
            rows.append([rec[j] for j in idx])
            line_nos.append(start)
    except csv.Error as e:
        raise DataError(label, reader.line_num, f"bad CSV: {e}") from None
    df = (
        pd.DataFrame(rows, columns=keep, dtype=str)
        if rows
        else pd.DataFrame({c: pd.Series([], dtype=str) for c in keep})
    )
    return Table(label, df, np.asarray(line_nos, dtype=np.int64))
