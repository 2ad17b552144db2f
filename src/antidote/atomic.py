"""Outputs that are complete or absent.

Every file and directory a stage writes is first written under a hidden temporary name beside
its place, ``.<name>.tmp-<pid>``, and renamed into place once complete (a rename within one
directory is atomic). A process killed while writing leaves no file at the output's path, so
neither a later run nor a reader of ``results/`` can take a half-written output for a finished
one. The temporary names a killed process left behind are removed by the next write of the
same path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

# A test hook (tests/test_atomic.py): a process whose environment sets this to a glob pattern kills
# itself with SIGKILL right before renaming a finished output whose path matches it.
KILL_BEFORE_RENAME = "ANTIDOTE_TEST_KILL_BEFORE_RENAME"


def _sibling(path: Path, kind: str, pid: int | None = None) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid() if pid is None else pid}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove(path: Path) -> None:
    """A file or a directory tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stale(path: Path) -> list[Path]:
    """The temporary siblings of ``path`` left by processes that no longer run; returns them."""
    stale = []
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*-*"):
        kind, _, pid = sibling.name[len(path.name) + 2:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _running(int(pid)):
            remove(sibling)
            stale.append(sibling)
    return stale


def _flush(temp: Path) -> None:
    """Every file of ``temp`` on disk before the rename makes it the output, also after a node
    crash (the page cache lost)."""
    for file in [temp] if temp.is_file() else [p for p in temp.rglob("*") if p.is_file()]:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _move_into_place(temp: Path, path: Path) -> None:
    """Rename ``temp`` onto ``path``. A directory already there is replaced only if it holds
    nothing the new one does not (an earlier version of the same output), never a user's folder."""
    if temp.is_dir() and path.is_dir() and any(path.iterdir()):
        foreign = sorted({p.name for p in path.iterdir()} - {p.name for p in temp.iterdir()})
        if foreign:
            raise FileExistsError(f"{path} exists and holds {foreign[:3]}, which this output does not: "
                                  "move it away or write elsewhere")
        old = _sibling(path, "old")
        os.replace(path, old)
        os.replace(temp, path)
        shutil.rmtree(old)
    else:
        os.replace(temp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write its content to (a file, or a directory the
    caller creates); renamed onto ``path`` when the block completes, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    temp = _sibling(path, "tmp")
    remove(temp)
    try:
        yield temp
        if fnmatch.fnmatch(str(path), os.environ.get(KILL_BEFORE_RENAME) or "\0"):
            os.kill(os.getpid(), signal.SIGKILL)
        _flush(temp)
        _move_into_place(temp, path)
    finally:
        remove(temp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
