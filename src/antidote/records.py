"""Records on disk: JSONL (what every stage writes) and the table formats users bring (JSONL, JSON, CSV, Parquet).

A file that cannot be read as one stops with a :class:`DataError` naming the file, the line
(JSONL, and text that is not in its encoding) or the row (other tables, counted from 1 without
the header), and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .atomic import atomic_path


class DataError(ValueError):
    """A data file that cannot be used, named with the line or row and the field."""


def decoded_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The file's text; bytes that are not ``encoding`` stop with the line they are on."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode(encoding)
    except LookupError:
        raise DataError(f"{path}: {encoding!r} is not a text encoding Python knows") from None
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not {encoding} text ({error.reason} at byte {error.start}); "
                        "give the file's encoding, or convert it") from None


def _jsonl_rows(path: Path, encoding: str) -> list[tuple[str, dict]]:
    rows = []
    # split on "\n" only: a JSON string may hold U+2028 and other characters that str.splitlines() breaks at
    for number, line in enumerate(decoded_text(path, encoding).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: a JSON object was expected, not {type(record).__name__} {line[:40]!r}")
        rows.append((where, record))
    return rows


def _table_rows(path: Path, encoding: str) -> list[tuple[str, dict]]:
    import pandas as pd

    if path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except Exception as error:  # pyarrow's errors for a file that is not Parquet have no common class
            raise DataError(f"{path}: not a Parquet file ({type(error).__name__}: {error})") from None
    else:
        text = decoded_text(path, encoding)
        if path.suffix == ".json":
            try:
                json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}, column {error.colno})") \
                    from None
        try:
            table = pd.read_json(path, encoding=encoding) if path.suffix == ".json" else \
                pd.read_csv(path, encoding=encoding)
        except (ValueError, pd.errors.ParserError) as error:  # e.g. "Expected 2 fields in line 4, saw 3"
            raise DataError(f"{path}: not a valid {path.suffix[1:].upper()} table ({error})") from None
    return [(f"{path}, row {i}", row) for i, row in enumerate(table.to_dict(orient="records"), 1)]


READERS = {".jsonl": _jsonl_rows, ".json": _table_rows, ".csv": _table_rows, ".parquet": _table_rows}


def read_rows(path: str | Path, encoding: str = "utf-8", fields: Iterable[str] = (), hint: str = "") \
        -> list[tuple[str, dict]]:
    """(where, row) of every row of a user's JSONL, JSON, CSV or Parquet file (text files in
    ``encoding``; Parquet stores its own), where = ``"<path>, line <n>"`` (JSONL) or ``"<path>,
    row <n>"``. The file must hold rows, each with ``fields``; ``hint`` ends the error message
    (which config key to change)."""
    path = Path(path)
    if path.suffix not in READERS:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(READERS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    rows = READERS[path.suffix](path, encoding)
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    for number, (where, row) in enumerate(rows):
        missing = [field for field in fields if field not in row]
        if missing and number == 0:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {sorted(row)}){hint}")
        if missing:
            raise DataError(f"{where}, field {missing[0]!r}: missing{hint}")
    return rows


def read_table(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """The rows of :func:`read_rows`, as dicts."""
    return [row for _, row in read_rows(path, encoding)]


def jsonl_rows(path: str | Path, fields: Iterable[str] = ()) -> list[tuple[str, dict]]:
    """(where, record) of every record of a JSONL file a stage wrote (it may hold none); each
    record must hold ``fields`` as text."""
    rows = _jsonl_rows(Path(path), "utf-8")
    for where, record in rows:
        for field in fields:
            if not isinstance(record.get(field), str):
                problem = "missing" if field not in record else f"{record[field]!r} is not text"
                raise DataError(f"{where}, field {field!r}: {problem}")
    return rows


def read_jsonl(path: str | Path, fields: Iterable[str] = ()) -> list[dict]:
    """The records of :func:`jsonl_rows`."""
    return [record for _, record in jsonl_rows(path, fields)]


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
