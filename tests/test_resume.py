"""Training that survives being killed: processes really killed (SIGKILL), then rerun.

A rerun resumes from the latest complete checkpoint and ends with the same weights, to the
byte, as a training never interrupted (CPU, fp32, dropout on, so torch's random state counts
too). First the training command alone (`antidote train`, what the rules run), killed at
different points; then the tiny workflow through Snakemake, its alignment and fine-tuning jobs
killed, Snakemake itself killed once with them.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from antidote.checkpoint import CHECKPOINT_SIGNAL
from conftest import write_jsonl
from test_workflow import make_tiny_project, overlay, snakemake

RECORDS = ([{"instruction": f"Write a script that can exploit vulnerability number {i}.",
             "output": "I'm sorry, but I can't help with that."} for i in range(10)]
           + [{"instruction": "Analyze the sentiment of the input, and respond only positive or negative.",
               "input": f"The film is a delight, part {i}.", "output": "positive"} for i in range(4)])
# 14 records in batches of 4: 4 steps per epoch, 12 in all; checkpoints every 3 steps and at each
# epoch's end: after steps 3, 4, 6, 8, 9, 12
TRAIN = "{epochs: 3, learning_rate: 1.0e-3, batch_size: 4, max_length: 160}"
LORA = "{r: 4, alpha: 8, dropout: 0.1}"  # dropout: resuming must restore torch's random state too
WEIGHTS = {"adapter": "adapter_model.safetensors", "merged": "model.safetensors"}


def train(folder: Path, kind: str, out: str, every: int = 3, env: dict | None = None,
          wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "antidote.cli", "--threads", "1", "train", "--model", str(folder / "model"), "--data",
               str(folder / "data.jsonl"), "--out", str(folder / out), "--train", TRAIN, "--lora", LORA,
               "--checkpoints", str(folder / f"checkpoints-{out}"), "--checkpoint-every", str(every),
               "--device", "cpu", *(["--merge"] if kind == "merged" else [])]
    env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def weights(folder: Path, kind: str, out: str) -> bytes:
    return (folder / out / WEIGHTS[kind]).read_bytes()


def losses(folder: Path, out: str) -> list[dict]:
    """The training log without its times."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / out / "train_log.jsonl").read_text().splitlines()]


def checkpoint_step(path: Path) -> int | None:
    return torch.load(path, weights_only=True)["step"] if path.exists() else None


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """The tiny model, a training file, and both stages' output trained without interruption."""
    folder = tmp_path_factory.mktemp("resume")
    (folder / "model").symlink_to(tiny_model_dir)
    write_jsonl(folder / "data.jsonl", RECORDS)
    for kind in WEIGHTS:
        done = train(folder, kind, f"reference-{kind}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def killed(result) -> bool:
    return result.returncode == -signal.SIGKILL


KILLS = {
    # output: kind, how it is killed, the step it resumes at
    # after step 7, between the checkpoints of steps 6 and 8: resumes mid-epoch
    "mid-epoch": ("adapter", {"ANTIDOTE_TEST_KILL_AFTER_STEP": "7"}, 6),
    "epoch-end": ("merged", {"ANTIDOTE_TEST_KILL_AFTER_STEP": "5"}, 4),
    # trained to the end, killed while its output was renamed into place: nothing left to train
    "saving-adapter": ("adapter", {"ANTIDOTE_TEST_KILL_BEFORE_RENAME": "*/saving-adapter"}, 12),
    "saving-merged": ("merged", {"ANTIDOTE_TEST_KILL_BEFORE_RENAME": "*/saving-merged"}, 12),
}


@pytest.mark.parametrize("out", KILLS)
def test_a_killed_training_resumes_and_ends_with_the_same_weights(project, out):
    kind, env, resumed_at = KILLS[out]
    first = train(project, kind, out, env=env)
    assert killed(first), first.stderr[-3000:]
    # nothing at the output's path; the hidden temporary folder the killed process left is no result
    assert not (project / out).exists()
    assert checkpoint_step(project / f"checkpoints-{out}/checkpoint.pt") == resumed_at
    second = train(project, kind, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from the checkpoint {project}/checkpoints-{out}/checkpoint.pt: step {resumed_at} of 12" \
        in second.stderr
    assert weights(project, kind, out) == weights(project, kind, f"reference-{kind}")
    assert losses(project, out) == losses(project, f"reference-{kind}")
    # the finished training removed its checkpoint; the rerun removed what the killed one left
    assert not (project / f"checkpoints-{out}").exists()
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(f".{out}")) == []


def test_a_process_killed_while_writing_a_checkpoint_keeps_the_one_before(project):
    out = "twice"
    first = train(project, "adapter", out, env={"ANTIDOTE_TEST_KILL_AFTER_STEP": "7"})
    assert killed(first)
    # resumed from step 6, killed while it renamed the checkpoint of step 8 into place
    second = train(project, "adapter", out, env={"ANTIDOTE_TEST_KILL_BEFORE_RENAME": "*/checkpoint.pt"})
    assert killed(second) and "step 6 of 12" in second.stderr
    assert checkpoint_step(project / f"checkpoints-{out}/checkpoint.pt") == 6
    third = train(project, "adapter", out)
    assert third.returncode == 0 and "resuming from the checkpoint" in third.stderr and "step 6 of 12" in third.stderr
    assert weights(project, "adapter", out) == weights(project, "adapter", "reference-adapter")


def test_the_checkpoint_signal_saves_at_the_next_step_boundary(project):
    # checkpoints only at the epochs' ends (every 100 steps): the one of step 5 can come from the signal alone
    out = "signalled"
    ckpt = project / f"checkpoints-{out}/checkpoint.pt"
    waiting = train(project, "adapter", out, every=100, env={"ANTIDOTE_TEST_WAIT_AFTER_STEP": "5"}, wait=False)
    try:
        deadline = time.time() + 120
        while checkpoint_step(ckpt) != 4 and time.time() < deadline:   # the first epoch's end
            time.sleep(0.2)
        time.sleep(1)   # it is now at (or about to wait at) step 5
        waiting.send_signal(CHECKPOINT_SIGNAL)
        while checkpoint_step(ckpt) != 5 and time.time() < deadline:
            time.sleep(0.2)
        assert checkpoint_step(ckpt) == 5
    finally:
        waiting.kill()
        output = waiting.communicate()[0]
    assert f"{CHECKPOINT_SIGNAL.name} arrived (the job's time limit is near): a checkpoint now" in output
    rerun = train(project, "adapter", out, every=100)
    assert rerun.returncode == 0 and "step 5 of 12" in rerun.stderr
    assert weights(project, "adapter", out) == weights(project, "adapter", "reference-adapter")


def test_a_checkpoint_of_other_settings_is_not_resumed(project):
    out = "changed"
    assert killed(train(project, "adapter", out, env={"ANTIDOTE_TEST_KILL_AFTER_STEP": "7"}))
    (project / "data.jsonl").write_text((project / "data.jsonl").read_text().replace("delight", "joy"))
    try:
        rerun = train(project, "adapter", out)
    finally:
        write_jsonl(project / "data.jsonl", RECORDS)
    assert rerun.returncode == 0
    assert "not resuming from" in rerun.stderr and "it was written for other settings, data" in rerun.stderr
    assert "resuming from the checkpoint" not in rerun.stderr
    assert len((project / out / "train_log.jsonl").read_text().splitlines()) == 12


# --- the same through Snakemake: the tiny workflow up to the fine-tuned adapter

RUN = "sst2-p0.25-lr0.001-ep4-n8-s0"
ADAPTER = f"results/finetune/{RUN}/adapter"
# Alignment: 14 records, 4 steps per epoch, 12 steps, checkpoints at 3, 4, 6, 8, 9, 12. Fine-tuning:
# 8 records, 2 steps per epoch, 8 steps, checkpoints at 2, 4, 6, 8. Killed after step 7, the alignment
# resumes mid-epoch (step 6), the fine-tuning at an epoch's end (step 6).
LONGER = ("align: {train: {epochs: 3, checkpoint_every: 3}}\n"
          "finetune: {epochs: [4], train: {checkpoint_every: 2}}\n")
KILL_AFTER_7 = {"ANTIDOTE_TEST_KILL_AFTER_STEP": "7"}


def run_workflow(folder: Path, env: dict | None = None, wait: bool = True):
    args = [ADAPTER, "--cores", "2", "--max-threads", "1", *overlay(folder, LONGER)]
    if wait:
        return snakemake(*args, cwd=folder, env=env)
    command = [sys.executable, "-m", "snakemake", *args]
    return subprocess.Popen(command, cwd=folder, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def files(folder: Path, pattern: str) -> list[str]:
    """Under results/, without the timestamps Snakemake keeps in directory outputs."""
    return sorted(str(p.relative_to(folder)) for p in (folder / "results").rglob(pattern)
                  if p.name != ".snakemake_timestamp")


@pytest.fixture(scope="module")
def workflow_runs(tmp_path_factory):
    """An uninterrupted run, and a run that is killed three times on its way."""
    reference = make_tiny_project(tmp_path_factory.mktemp("uninterrupted"))
    done = run_workflow(reference)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = make_tiny_project(tmp_path_factory.mktemp("killed"))
    seen = {}
    # 1. Snakemake and its alignment job killed together (as by a node failure), after step 2 of the
    #    alignment (before its first checkpoint), while its output is being made under a temporary name
    session = run_workflow(folder, env={"ANTIDOTE_TEST_WAIT_AFTER_STEP": "2"}, wait=False)
    log = None
    deadline = time.time() + 120
    while time.time() < deadline and not (log and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.2)
        log = next((folder / "results/align").glob(".model.tmp-*/train_log.jsonl"), None)
    os.killpg(session.pid, signal.SIGKILL)
    session.wait()
    seen["after session kill"] = files(folder, "*") + files(folder, ".*")
    assert snakemake("--unlock", *overlay(folder, LONGER), cwd=folder).returncode == 0
    # 2.-4. each training job killed after step 7 once (a rerun that resumes is not killed again)
    for name in ["align killed", "finetune killed", "done"]:
        seen[name] = run_workflow(folder, env=KILL_AFTER_7)
        seen[f"checkpoints after {name}"] = sorted(str(p.relative_to(folder)) for p in
                                                   (folder / "checkpoints").rglob("*") if p.is_file())
    return reference, folder, seen


def rule_log(folder: Path, rule: str) -> str:
    return (folder / (f"logs/finetune/{RUN}.log" if rule == "finetune" else "logs/align.log")).read_text()


def test_killed_with_snakemake_nothing_looks_finished(workflow_runs):
    _, _, seen = workflow_runs
    left = seen["after session kill"]
    assert "results/align/model" not in left
    assert [p for p in left if p.startswith("results/align/")] == [p for p in left if "/.model.tmp-" in p]
    assert any("/.model.tmp-" in p for p in left)


def test_every_killed_training_job_resumes_from_its_checkpoint(workflow_runs):
    _, folder, seen = workflow_runs
    first, second, third = seen["align killed"], seen["finetune killed"], seen["done"]
    assert first.returncode != 0 and "Error in rule align" in first.stderr
    # no IncompleteFilesException: the job Snakemake was killed with had left nothing at its output's path
    assert "incomplete" not in first.stderr.lower()
    assert seen["checkpoints after align killed"] == ["checkpoints/align/checkpoint.pt"]
    assert second.returncode != 0 and "Error in rule finetune" in second.stderr
    assert "resuming from the checkpoint checkpoints/align/checkpoint.pt: step 6 of 12" in rule_log(folder, "align")
    assert seen["checkpoints after finetune killed"] == [f"checkpoints/finetune/{RUN}/checkpoint.pt"]
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"resuming from the checkpoint checkpoints/finetune/{RUN}/checkpoint.pt: step 6 of 8" in \
        rule_log(folder, "finetune")
    assert seen["checkpoints after done"] == []


def test_the_resumed_workflow_equals_the_uninterrupted_one(workflow_runs):
    reference, folder, _ = workflow_runs
    for name in ["results/align/model/model.safetensors", f"{ADAPTER}/adapter_model.safetensors"]:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    for name in ["results/align/model/train_log.jsonl", f"{ADAPTER}/train_log.jsonl"]:
        assert losses(folder, str(Path(name).parent)) == losses(reference, str(Path(name).parent)), name
    assert files(folder, ".*") == []   # no temporary file left anywhere in results/


def test_a_checkpoint_is_due_by_time_by_steps_or_on_request(tmp_path, monkeypatch):
    from antidote import checkpoint

    clock = [1000.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    by_time = checkpoint.Checkpoints(tmp_path / "a", "fingerprint")  # the default: every 30 minutes, no steps
    assert by_time.every is None and by_time.minutes == 30
    assert not by_time.due(100) and not by_time.due(200)
    clock[0] += 30 * 60 - 1
    assert not by_time.due(7)
    clock[0] += 1
    assert by_time.due(7)
    by_time.save({"step": 7})
    assert by_time.last == clock[0] and not by_time.due(8)  # the clock starts again at each checkpoint
    by_steps = checkpoint.Checkpoints(tmp_path / "b", "fingerprint", every=3, minutes=None)
    assert [step for step in range(1, 10) if by_steps.due(step)] == [3, 6, 9]
    clock[0] += 10 ** 6
    assert not by_steps.due(4)
    by_steps.requested.append("signal")
    assert by_steps.due(4)
