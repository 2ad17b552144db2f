"""What every workflow script does first: log to the rule's log file, use the rule's threads;
and what it wraps its stage in: an out-of-memory error that names the settings to lower."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

import torch

from .modeling import pick_device, set_threads


def start_script(snakemake) -> str:
    """Send stdout/stderr (progress bars included) to the rule's log; return the device to use:
    the model stages' (their ``device`` param, checked by :func:`pick_device`), the CPU for the
    others (which may run inside a GPU allocation, grouped with the evaluations)."""
    if snakemake.log:
        stream = open(snakemake.log[0], "w", buffering=1)
        sys.stdout = sys.stderr = stream
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    set_threads(snakemake.threads)
    requested = getattr(snakemake.params, "device", None)
    device = pick_device(requested) if requested else "cpu"
    logging.info("rule %s on %s with %d threads", snakemake.rule, device, snakemake.threads)
    return device


@contextmanager
def lower_on_out_of_memory(*settings: str):
    """Re-raise a GPU out-of-memory error with the config settings (``score.batch_size``, ...)
    that would make the stage fit: PyTorch's own message names none of them."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        raise torch.cuda.OutOfMemoryError(f"{error}\nThe GPU ran out of memory: lower {' or '.join(settings)} "
                                          "in the config (the model, its dtype and max_length set the rest)") from error
