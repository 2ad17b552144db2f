"""Training checkpoints: what a killed training job needs to go on exactly where it stopped.

One file, ``checkpoint.pt``, in a folder of its own (``checkpoints/<rule>/<wildcards>``: not an
output, so Snakemake leaves it when the job fails), replaced atomically by each newer one. It
holds the adapter's weights, the optimizer's and the schedule's state, the random states (the
batch order's, torch's), the position in the epoch's batches, the training log so far, and a
fingerprint of everything the result depends on: a checkpoint of other settings, data, base
model or training code is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_path, remove_stale

FILE = "checkpoint.pt"


@dataclass
class Checkpoints:
    folder: Path
    fingerprint: str
    every: int = 100  # steps between checkpoints; one is also written at each epoch's end

    def __post_init__(self):
        self.folder = Path(self.folder)

    @property
    def file(self) -> Path:
        return self.folder / FILE

    def save(self, state: dict) -> None:
        with atomic_path(self.file) as temp:
            torch.save({"fingerprint": self.fingerprint, **state}, temp)

    def load(self) -> dict | None:
        """The latest checkpoint, if there is one of these settings and data."""
        if not self.file.exists():
            return None
        state = torch.load(self.file, weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            logging.warning("not resuming from %s: it was written for other settings, data, base model or "
                            "training code (fingerprint %s, these are %s); training starts from step 0",
                            self.file, str(state.get("fingerprint"))[:12], self.fingerprint[:12])
            return None
        return state

    def remove(self) -> None:
        """The checkpoint of a finished training, and its folder once empty."""
        self.file.unlink(missing_ok=True)
        remove_stale(self.file)
        if self.folder.exists() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def fingerprint(*parts, model_dir: Path) -> str:
    """sha256 of ``parts`` (JSON: settings, records), the base model's files (name, size,
    modification time: a retrained model is another model) and the code that tokenizes and trains."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for file in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(model_dir)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    for module in ("train.py", "checkpoint.py", "modeling.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()
