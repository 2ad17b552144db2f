"""Outputs that are complete or absent: writers killed (SIGKILL) while writing leave nothing at
the output's path, and the next write of that path cleans up after them."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from antidote.atomic import atomic_path, remove_stale, write_text
from antidote.records import read_jsonl, write_jsonl


def run_python(code: str, env: dict | None = None, wait: bool = True):
    command = [sys.executable, "-c", textwrap.dedent(code)]
    if not wait:
        return subprocess.Popen(command, env={**os.environ, **(env or {})})
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def test_a_process_killed_in_the_middle_of_a_write_leaves_no_file_at_the_path(tmp_path):
    path = tmp_path / "answers.jsonl"
    writer = run_python(f"""
        import time
        from antidote.records import write_jsonl

        def slowly():
            for i in range(100000):
                time.sleep(0.001)
                yield {{"i": i, "text": "x" * 100}}

        write_jsonl({str(path)!r}, slowly())
        """, wait=False)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size > 10000 for p in tmp_path.glob(".answers.jsonl.tmp-*")):
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".answers.jsonl.tmp-{writer.pid}"]
    write_jsonl(path, [{"i": 0}])  # the next write of the path removes what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"] and read_jsonl(path) == [{"i": 0}]


WRITERS = {  # every kind of output the stages write, each through its own writer
    "jsonl": "from antidote.records import write_jsonl; write_jsonl(OUT, [{'a': 1}])",
    "mask parquet": "import torch; from antidote.maskfile import write_masks; "
                    "write_masks(OUT, {'m': torch.zeros(2, 3, dtype=torch.bool)}, {'defense': 'x'})",
    "table csv": "import pandas as pd; from antidote.atomic import atomic_path\n"
                 "with atomic_path(OUT) as temp: pd.DataFrame({'a': [1]}).to_csv(temp)",
    "figure png": "from antidote.plots import new_figure, save_figure; figure, _ = new_figure(1, 1); "
                  "save_figure(figure, OUT)",
    "model directory": "import sys; sys.path.insert(0, 'TESTS'); from conftest import build_model, build_tokenizer\n"
                       "from antidote.atomic import atomic_path\n"
                       "with atomic_path(OUT) as temp: build_model(build_tokenizer()).save_pretrained(temp)",
}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_writer_killed_before_its_output_is_complete_leaves_nothing_at_its_path(tmp_path, kind):
    out = tmp_path / "results" / ("model" if kind == "model directory" else f"out.{kind.split()[-1]}")
    code = WRITERS[kind].replace("OUT", repr(str(out))).replace("TESTS", str(Path(__file__).parent))
    killed = run_python(code, env={"ANTIDOTE_TEST_KILL_BEFORE_RENAME": str(out)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # the whole content was written, under the temporary name only
    (temp,) = (tmp_path / "results").iterdir()
    assert temp.name.startswith(f".{out.name}.tmp-") and not out.exists()
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in (tmp_path / "results").iterdir()] == [out.name]


def test_a_directory_output_replaces_its_earlier_version_but_never_a_users_folder(tmp_path):
    out = tmp_path / "adapter"
    for version in ["1", "2"]:
        with atomic_path(out) as temp:
            temp.mkdir()
            (temp / "weights").write_text(version)
    assert (out / "weights").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"adapter exists and holds \['notes.txt'\], which this output does not"):
        with atomic_path(out) as temp:
            temp.mkdir()
            (temp / "weights").write_text("3")
    assert (out / "notes.txt").read_text() == "mine" and (out / "weights").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_only_temporaries_of_processes_that_no_longer_run_are_removed(tmp_path):
    path = tmp_path / "summary.md"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".summary.md.tmp-{dead}").write_text("left by a killed writer")
    (tmp_path / f".summary.md.tmp-{os.getppid()}").write_text("being written by a running process")
    (tmp_path / ".summary.md.notes").write_text("not a temporary name")
    write_text(path, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".summary.md.notes", f".summary.md.tmp-{os.getppid()}",
                                                           "summary.md"]
    assert remove_stale(path) == []
