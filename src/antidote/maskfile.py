"""Masks in Parquet, one row per pruned matrix, 1 bit per weight before compression.

Schema (also in docs/formats.md):

| column   | type   | meaning |
|----------|--------|---------|
| module   | string | the weight's name in the PEFT adapter file, e.g. ``...q_proj.lora_A.weight`` |
| rows     | int32  | output features (weight.shape[0]) |
| cols     | int32  | input features (weight.shape[1]) |
| n_pruned | int64  | number of True entries |
| bits     | binary | ``numpy.packbits(mask.reshape(-1), bitorder="little")``, row-major; 1 = pruned |

File metadata key ``antidote`` holds JSON: defense, alpha, scope (row or tensor), rounding, seed.

SafeLoRA masks nothing; its projection table (:func:`write_projection`) has one row per module
(``module``, ``cosine``, ``projected``) and the same metadata key. :func:`read_mask_info` reads
either file's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .atomic import atomic_path

SCHEMA = pa.schema([("module", pa.string()), ("rows", pa.int32()), ("cols", pa.int32()),
                    ("n_pruned", pa.int64()), ("bits", pa.binary())])
PROJECTION_SCHEMA = pa.schema([("module", pa.string()), ("cosine", pa.float64()), ("projected", pa.bool_())])


def write_masks(path: str | Path, masks: dict[str, torch.Tensor], info: dict) -> None:
    names = sorted(masks)
    arrays = [m.cpu().numpy().astype(bool) for m in (masks[n] for n in names)]
    table = pa.table({
        "module": names,
        "rows": [a.shape[0] for a in arrays],
        "cols": [a.shape[1] for a in arrays],
        "n_pruned": [int(a.sum()) for a in arrays],
        "bits": [np.packbits(a.reshape(-1), bitorder="little").tobytes() for a in arrays],
    }, schema=SCHEMA.with_metadata({"antidote": json.dumps(info)}))
    with atomic_path(path) as temp:
        pq.write_table(table, temp, compression="zstd")


def write_projection(path: str | Path, modules: list[dict], info: dict) -> None:
    """SafeLoRA's record: each module's ``cosine`` (NaN where it has none) and whether it was ``projected``."""
    table = pa.Table.from_pylist(modules, schema=PROJECTION_SCHEMA.with_metadata({"antidote": json.dumps(info)}))
    with atomic_path(path) as temp:
        pq.write_table(table, temp)


def read_mask_info(path: str | Path) -> dict:
    """The metadata of a mask file (defense, alpha, scope, rounding, seed, update_removed; without the
    bits) or of SafeLoRA's projection table (defense, select, value, update_removed, ...)."""
    return json.loads((pq.read_schema(path).metadata or {}).get(b"antidote", b"{}"))


class PackedMasks(Mapping):
    """A mask file's masks by weight name, each unpacked only when asked for: unpacked, a 7B
    adapter's masks (r=256 on q, k, v) take about 200 MB, eight times their packed bits, so
    whoever reads many files (rule mask_stats) holds one matrix at a time."""

    def __init__(self, path: str | Path):
        self.packed = {row["module"]: row for row in pq.read_table(path).to_pylist()}
        self.info = read_mask_info(path)

    def __getitem__(self, name: str) -> torch.Tensor:
        row = self.packed[name]
        bits = np.unpackbits(np.frombuffer(row["bits"], dtype=np.uint8), count=row["rows"] * row["cols"],
                             bitorder="little")
        return torch.from_numpy(bits.astype(bool).reshape(row["rows"], row["cols"]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.packed)

    def __len__(self) -> int:
        return len(self.packed)


def read_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every mask of the file, unpacked, and its metadata."""
    masks = PackedMasks(path)
    return dict(masks), masks.info
