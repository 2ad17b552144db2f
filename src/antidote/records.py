"""Records on disk: JSONL (what every stage writes) and the table formats users bring (JSONL, JSON, CSV, Parquet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_table(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """Rows of a local JSONL, JSON, CSV or Parquet file, as dicts (text files in ``encoding``;
    Parquet stores its own)."""
    import pandas as pd

    path = Path(path)
    readers = {".jsonl": lambda p: pd.read_json(p, lines=True, encoding=encoding),
               ".json": lambda p: pd.read_json(p, encoding=encoding),
               ".csv": lambda p: pd.read_csv(p, encoding=encoding), ".parquet": pd.read_parquet}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(readers)}")
    return readers[path.suffix](path).to_dict(orient="records")
