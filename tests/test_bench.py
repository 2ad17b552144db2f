"""bench/gpu_loops.py --smoke runs every loop, agrees with the authors' ways, and writes its table,
so the GPU benchmark never rots between GPU runs (about 15 s on 2 CPU cores)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOP_TITLES = {"calibration": "calibration feature norms", "generation": "greedy generation",
               "training": "LoRA training", "qlora": "QLoRA training"}


def run_bench(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, str(REPO / "bench/gpu_loops.py"), "--smoke", "--device", "cpu", *args],
                   cwd=REPO, env=env, check=True, timeout=300, capture_output=True, text=True)


def test_smoke_run_writes_every_loop_with_sane_numbers(tmp_path):
    out = tmp_path / "gpu_loops.md"
    run_bench("--repeats", "2", "--out", str(out))
    table = out.read_text()
    for title in LOOP_TITLES.values():
        assert f"| {title}" in table, title
    assert "command: `python bench/gpu_loops.py --smoke" in table and "torch " in table

    result = json.loads(out.with_suffix(".json").read_text())
    rows = {row["loop"]: row for row in result["rows"]}
    assert list(rows) == list(LOOP_TITLES)
    for loop in ("calibration", "generation", "training"):
        row = rows[loop]
        assert row["status"] == "measured"
        assert row["reference_s"] > 0 and row["ours_s"] > 0 and row["floor_s"] > 0, row
        assert row["floor_s"] < row["ours_s"], "the floor is a lower bound"
    assert rows["calibration"]["checks"]["mask_agreement"] >= 0.99
    assert rows["calibration"]["checks"]["feature_norm_rel_error"] < 1e-2
    assert rows["training"]["checks"]["loss_rel_error"] < 1e-3, "the answer loss is the full loss"
    assert rows["generation"]["ours_rate"] > 0 and rows["training"]["ours_rate"] > 0
    assert rows["qlora"]["status"] == "skipped" and "needs CUDA" in rows["qlora"]["check"]
    assert out.with_suffix(".csv").read_text().count("\n") == 1 + len(LOOP_TITLES)

    # --update replaces the rows of the loops run again and keeps the others
    run_bench("--repeats", "1", "--loops", "qlora", "--update", "--out", str(out))
    updated = json.loads(out.with_suffix(".json").read_text())
    assert len(updated["runs"]) == 2
    assert [row["loop"] for row in updated["rows"]] == list(LOOP_TITLES)
    assert {row["loop"]: row["run"] for row in updated["rows"]} == {"calibration": 0, "generation": 0,
                                                                   "training": 0, "qlora": 1}
