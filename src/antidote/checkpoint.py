"""Training checkpoints: what a killed training job needs to go on exactly where it stopped.

One file, ``checkpoint.pt``, in a folder of its own (``checkpoints/<rule>/<wildcards>``: not an
output, so Snakemake leaves it when the job fails), replaced atomically by each newer one. It
holds the adapter's weights, the optimizer's and the schedule's state, the random states (the
batch order's, torch's), the position in the epoch's batches, the training log so far, and a
fingerprint of everything the result depends on: a checkpoint of other settings, data, base
model or training code is never resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_path, remove_stale

FILE = "checkpoint.pt"
# SLURM sends this shortly before a job's time limit (sbatch --signal, slurm/config.yaml); a checkpoint
# follows at the next step boundary. Not SIGUSR1: SLURM signals every process of the job step, the
# Snakemake process that runs the script included, and SIGUSR1 would end them; SIGURG they ignore.
CHECKPOINT_SIGNAL = signal.SIGURG


@dataclass
class Checkpoints:
    folder: Path
    fingerprint: str
    every: int | None = None  # steps between checkpoints (None: not by steps)
    # minutes between checkpoints (None: not by time): a 7B adapter's checkpoint, with the
    # optimizer's state, is 2.4 GB, too much to write every few minutes to a shared file system
    minutes: float | None = 30
    requested: list = field(default_factory=list)  # CHECKPOINT_SIGNALs not yet answered by a checkpoint
    # when the last checkpoint was written (or the training began); read through the module, so tests can move the clock
    last: float = field(default_factory=lambda: time.monotonic())

    def __post_init__(self):
        self.folder = Path(self.folder)

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after ``step``: the signal asked for one, or ``every``
        steps or ``minutes`` have passed since the last (the training adds each epoch's end
        and its last step)."""
        return bool(self.requested or (self.every and step % self.every == 0)
                    or (self.minutes and time.monotonic() - self.last >= 60 * self.minutes))

    @contextlib.contextmanager
    def on_signal(self):
        """While the block runs, :data:`CHECKPOINT_SIGNAL` asks for a checkpoint (in the main
        thread only, the one Python delivers signals to)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(CHECKPOINT_SIGNAL, lambda signum, frame: self.requested.append(signum))
        try:
            yield
        finally:
            signal.signal(CHECKPOINT_SIGNAL, previous)

    @property
    def file(self) -> Path:
        return self.folder / FILE

    def save(self, state: dict) -> None:
        with atomic_path(self.file) as temp:
            torch.save({"fingerprint": self.fingerprint, **state}, temp)
        self.last = time.monotonic()

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
    for module in ("train.py", "training_defenses.py", "checkpoint.py", "modeling.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()
