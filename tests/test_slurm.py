"""`snakemake --profile slurm` against a real single-node SLURM (tests/slurm/cluster.sh).

The tiny project runs on SLURM twice, with the profile users get (copied into the project, found
by name as `--profile slurm` from the working directory, like from the repository root). First
with a fault: the project's copy of the evaluation script fails for the base model while a file
named FAULT exists, so every attempt of that job fails and the rest goes on (keep-going). Then,
with the file removed (the fix), again: that run must do only what was left. The jobs are looked
up in SLURM's accounting (`sacct`), and the result must equal a local run's.

Then training jobs are killed on SLURM (the end of this file): one by its time limit, after the
checkpoint signal the profile asks for, one by `scancel`; their retries resume, and the result
equals an uninterrupted local run's. Needs root on Debian (cluster.sh installs and starts SLURM):
skipped elsewhere.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from test_workflow import REPO, make_tiny_project, planned_jobs

CLUSTER_SH = REPO / "tests/slurm/cluster.sh"
PROFILE = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
GPU_RULES = {"base_answers", "align", "finetune", "score", "evaluate", "evaluate_reference", "evaluate_for_selection",
             "evaluate_reference_for_selection"}
CPU_RULES = {"data_splits", "finetune_data", "task_data", "prune", "safelora"}
# `all` only gathers targets and runs on the submit host, as do the rules named in `localrules:`
LOCAL_RULES = {"all"} | {name for path in [REPO / "Snakefile", *REPO.glob("rules/*.smk")]
                         for block in re.findall(r"^localrules:(.*(?:\n[ \t]+\S.*)*)", path.read_text(), re.M)
                         for name in re.findall(r"\w+", block)}
# The injected fault: the stage script fails for one job only, and only while the file exists.
FAILING_RULE, FAILING_SCRIPT, FAILING_MODEL = "evaluate_reference", "evaluate", "base"
FAILING_LOG = f"logs/evaluate/reference/sst2/{FAILING_MODEL}.log"
FAULT = ("if snakemake.wildcards.model == 'base' and __import__('os').path.exists('FAULT'):\n"
         "    raise RuntimeError('a fault injected by tests/test_slurm.py: FAULT exists')\n")
RUN_LIMIT_S = 300                  # each SLURM run is killed after this (a hung status loop)
# Test-only: poll SLURM every second instead of the plugin's 40 s wait before the first check.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "1")
SACCT_FIELDS = ["JobID", "JobName", "Comment", "State", "AllocTRES", "ReqMem", "Partition"]
# The partitions the profile sends jobs to (slurm/config.yaml, "Your site's settings"), as cluster.sh names them
CPU_PARTITION, GPU_PARTITION = "cpu", "gpu"
# Rules the profile groups into shared allocations (group name -> rules), and the CPU ones among them,
# which run in their group's GPU allocation
GROUPS = {}
for entry in PROFILE["groups"]:
    rule, group = entry.split("=")
    GROUPS.setdefault(group, set()).add(rule)
GROUPED_RULES = set().union(*GROUPS.values())
GROUPED_CPU_RULES = GROUPED_RULES & CPU_RULES


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: tests/slurm/cluster.sh installs packages and starts SLURM daemons"
    if not Path("/etc/debian_version").exists() or not (shutil.which("apt-get") and shutil.which("dpkg-query")):
        return "needs Debian with apt-get: tests/slurm/cluster.sh installs SLURM from Debian packages"
    return None


@pytest.fixture(scope="module")
def cluster():
    """The test cluster; started (and at the end stopped) here unless it is already up."""
    if reason := skip_reason():
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    if subprocess.run([CLUSTER_SH, "status"], capture_output=True, env=env).returncode == 0:
        yield
        return
    start = subprocess.run(["timeout", "-k", "10", "300", CLUSTER_SH, "start"], capture_output=True, text=True,
                           env=env)
    output = start.stdout + start.stderr
    try:
        if start.returncode != 0:
            if not re.search(r"packages (already )?installed", output):   # e.g. no package mirror
                pytest.skip(f"tests/slurm/cluster.sh could not install SLURM here: {output[-1000:]}")
            pytest.fail(f"tests/slurm/cluster.sh start failed (exit {start.returncode}):\n{output[-3000:]}")
        yield
    finally:
        subprocess.run(["timeout", "-k", "10", "120", CLUSTER_SH, "stop"], capture_output=True, env=env)


def slurm_run(folder: Path) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm` in the project, as users type it, bounded by `timeout -k`."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"} | {"PYTHONUNBUFFERED": "1"}
    command = ["timeout", "-k", "10", str(RUN_LIMIT_S), sys.executable, "-m", "snakemake", "--profile", "slurm",
               "--max-threads", "1", *FAST_POLLING]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode not in (124, 137), f"SLURM run killed after {RUN_LIMIT_S} s:\n{result.stderr[-4000:]}"
    return result


def run_id(result: subprocess.CompletedProcess) -> str:
    """The run's id, which the plugin gives every job as its SLURM job name."""
    return re.search(r"SLURM run ID: (\S+)", result.stdout + result.stderr).group(1)


def sacct(run: str, since: str) -> list[dict]:
    """The jobs of one Snakemake run, with the rule and wildcards the plugin writes in the comment."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "--name", run, "-o", ",".join(SACCT_FIELDS)],
                         capture_output=True, text=True, check=True).stdout
    rows = [dict(zip(SACCT_FIELDS, line.split("|"))) for line in out.splitlines() if line.strip()]
    for row in rows:
        # a group job's comment names its group and rules: rule_realign_evaluate_prune
        row["group"] = next((g for g in GROUPS if row["Comment"].startswith(f"rule_{g}_")), None)
        if row["group"]:
            row["job"] = (row["group"], row["Comment"].removeprefix(f"rule_{row['group']}_"))
        else:
            match = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", row["Comment"])
            assert match, f"a job of run {run} without the plugin's comment: {row}\nsacct printed:\n{out}"
            rule, wildcards = match.groups()
            row["job"] = (rule, wildcards or "")
    return sorted(rows, key=lambda row: int(row["JobID"]))


def cluster_state() -> str:
    """What the cluster was doing, for a message: its node and its queue."""
    commands = [["sinfo", "-N", "-o", "%N %P %T %G %E"], ["squeue", "-o", "%i %j %P %T %R %b"]]
    return "".join(f"\n$ {' '.join(c)}\n" + subprocess.run(c, capture_output=True, text=True).stdout
                   for c in commands)


def completed(rows: list[dict]) -> Counter:
    """Completed SLURM jobs (allocations) by rule, or by group for group jobs."""
    return Counter(row["job"][0] for row in rows if row["State"] == "COMPLETED")


def finished(result: subprocess.CompletedProcess) -> Counter:
    """Every job Snakemake finished in a run, by rule, grouped ones included, local ones not."""
    rules = re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", result.stdout + result.stderr, re.M)
    return Counter(rule for rule in rules if rule not in LOCAL_RULES)


def megabytes(req_mem: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]?)n?", req_mem).groups()
    return round(float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[unit])


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    started = time.time()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started - 60))
    local = make_tiny_project(tmp_path_factory.mktemp("local"))
    folder = make_tiny_project(tmp_path_factory.mktemp("slurm"))
    shutil.copytree(REPO / "slurm", folder / "slurm")
    # The fault goes in right after the script has opened the rule's log. The code stays the same in
    # both runs, so that only the job that failed has anything left to do.
    script = folder / f"workflow/scripts/{FAILING_SCRIPT}.py"
    original = script.read_text()
    script.write_text(re.sub(r"^.*start_script\(snakemake\).*\n", lambda m: m.group(0) + FAULT, original,
                             count=1, flags=re.M))
    assert script.read_text() != original
    full_plan = planned_jobs(folder)

    # The same run locally, side by side (most of a SLURM run is waiting): the reference result.
    local_run = subprocess.Popen(["timeout", "-k", "10", str(RUN_LIMIT_S), sys.executable, "-m", "snakemake",
                                  "--cores", "2", "--max-threads", "1", "--quiet", "rules"],
                                 cwd=local, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        (folder / "FAULT").touch()
        first = slurm_run(folder)
        error = re.search(rf"Error in rule {FAILING_RULE}:.*?\n\s+log: (\S+),", first.stdout + first.stderr, re.S)
        failed_log = error and error.group(1)
        failed_log_text = (folder / failed_log).read_text() if failed_log else ""
        (folder / "FAULT").unlink()   # the fix
        rerun_plan = planned_jobs(folder)
        finished = {p: p.stat().st_mtime_ns for p in (folder / "results").rglob("*") if p.is_file()}
        second = slurm_run(folder)
        local_output, _ = local_run.communicate(timeout=RUN_LIMIT_S + 20)
    finally:
        if local_run.poll() is None:
            local_run.terminate()   # timeout passes it on to Snakemake
    print(f"SLURM test: {time.time() - started:.0f} s for two SLURM runs and a local run")
    jobs1, jobs2 = sacct(run_id(first), since), sacct(run_id(second), since)
    print("\n".join("|".join(row[f] for f in SACCT_FIELDS) for row in jobs1 + jobs2))
    return dict(folder=folder, local=local, local_run=local_run, local_output=local_output, full_plan=full_plan,
                first=first, failed_log=failed_log, failed_log_text=failed_log_text, second=second,
                rerun_plan=rerun_plan, finished=finished, jobs1=jobs1, jobs2=jobs2)


def test_every_non_local_job_ran_as_a_slurm_job_of_its_run(runs):
    jobs = runs["jobs1"] + runs["jobs2"]
    assert runs["second"].returncode == 0, runs["second"].stderr[-4000:]
    expected = Counter({rule: n for rule, n in runs["full_plan"].items() if rule not in LOCAL_RULES})
    assert finished(runs["first"]) + finished(runs["second"]) == expected
    # each job not grouped was an allocation of its own, which ran once
    alone = Counter({rule: n for rule, n in expected.items() if rule not in GROUPED_RULES})
    assert Counter({rule: n for rule, n in completed(jobs).items() if rule not in GROUPS}) == alone
    done = [row["job"] for row in jobs if row["State"] == "COMPLETED" and not row["group"]]
    assert len(set(done)) == len(done), "a finished job ran again"
    assert not LOCAL_RULES & {row["job"][0] for row in jobs}
    assert {row["JobName"] for row in runs["jobs1"]} == {run_id(runs["first"])}


def test_pruning_and_evaluations_shared_allocations(runs):
    """The pruned models' prune jobs and evaluations ran in group jobs (slurm/config.yaml: groups),
    several in one allocation, at most group-components chains in each."""
    jobs = runs["jobs1"] + runs["jobs2"]
    grouped = sum(n for rule, n in (finished(runs["first"]) + finished(runs["second"])).items()
                  if rule in GROUPED_RULES)
    allocations = [row for row in jobs if row["group"] == "realign" and row["State"] == "COMPLETED"]
    components = int(next(e.split("=")[1] for e in PROFILE["group-components"] if e.startswith("realign=")))
    chains = runs["full_plan"]["prune"] + runs["full_plan"].get("safelora", 0) + 1  # + the fine-tuned model's
    assert grouped == sum(runs["full_plan"][rule] for rule in GROUPED_RULES if rule in runs["full_plan"])
    assert len(allocations) == -(-chains // components) < grouped


def test_gpu_stages_asked_for_and_got_the_gpu_and_the_others_did_not(runs):
    jobs = runs["jobs1"] + runs["jobs2"]
    assert {row["job"][0] for row in jobs} <= GPU_RULES | CPU_RULES | set(GROUPS)
    for row in jobs:
        has_gpu = "gres/gpu=1" in row["AllocTRES"]
        # every model job and group job in the GPU partition with one GPU, every other job in the CPU
        # partition without one
        assert has_gpu == (row["job"][0] in GPU_RULES or bool(row["group"])), row
        assert row["Partition"] == (GPU_PARTITION if has_gpu else CPU_PARTITION), row


def planned_resources(folder: Path, *args: str) -> dict[str, list[dict]]:
    """Rule -> the resources of each of its jobs, read from a dry run with the profile (no cluster needed)."""
    if not (folder / "slurm").exists():
        shutil.copytree(REPO / "slurm", folder / "slurm")
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "slurm", *args], cwd=folder,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    # a group job's members are printed indented under "Group job realign"
    jobs = re.findall(r"^ *(?:local)?rule (\w+):\n(?: +.*\n)*? +resources: (.*)$", dry.stdout + dry.stderr, re.M)
    planned = {}
    for rule, resources in jobs:
        planned.setdefault(rule, []).append(dict(item.split("=", 1) for item in resources.split(", ") if "=" in item))
    return planned


def test_the_profile_sends_exactly_the_model_rules_to_the_gpu_partition(tmp_path):
    """The profile's GPU block (set-resources) names every rule that asks for a GPU and no other;
    read from a dry run of the whole tiny DAG with the profile."""
    partitions = {rule: {(fields.get("slurm_partition"), fields.get("gpu")) for fields in jobs}
                  for rule, jobs in planned_resources(make_tiny_project(tmp_path)).items()}
    assert {rule for rule, seen in partitions.items() if (GPU_PARTITION, "1") in seen} == GPU_RULES
    # the CPU rules grouped with the evaluations go to the GPU partition (a group's jobs share one),
    # asking no GPU of their own; the other CPU rules go to the CPU partition
    assert all(seen == {(GPU_PARTITION if rule in GROUPED_RULES else CPU_PARTITION, None)}
               for rule, seen in partitions.items() if rule in CPU_RULES), partitions
    assert set(PROFILE["set-resources"]) == GPU_RULES | GROUPED_CPU_RULES


def test_each_model_stage_asks_for_the_time_of_its_own_work(tmp_path):
    """Generation is estimated at 0.24 s per decoding step of a batch (rules/cluster.smk), whatever
    the model's size: with 1000 new tokens the tiny evaluation (6 prompts in each of 2 harmful sets
    and 3 benign ones, batch 8: 2 batches) asks for 8 minutes more than its fixed minute, the
    validation evaluation (4 prompts: 1 batch) for 4, and the tiny model's training for none."""
    folder = make_tiny_project(tmp_path)
    (folder / "overlay.yaml").write_text("evaluate: {max_new_tokens: 1000}\ncluster: {runtime: 1}\n")
    planned = planned_resources(folder, "--configfile", "config/config.yaml", "overlay.yaml")
    runtimes = {rule: {int(fields["runtime"]) for fields in jobs} for rule, jobs in planned.items()}
    assert runtimes["evaluate"] == runtimes["evaluate_reference"] == {1 + 8}
    assert runtimes["evaluate_for_selection"] == {1 + 4}
    assert runtimes["align"] == runtimes["finetune"] == runtimes["score"] == {1}
    assert runtimes["prune"] == {10}


def test_a_job_given_a_gpu_it_cannot_use_stops_at_once(cluster, tmp_path):
    """A real GPU allocation (the test node's stand-in GPUs) on a torch without CUDA: the device
    check every model job's script starts with stops it within seconds, naming the cause."""
    if torch.cuda.is_available():
        pytest.skip("this torch can use CUDA here: the job would not fail")
    out = tmp_path / "job.out"
    check = "from antidote.modeling import pick_device; pick_device('auto')"
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"} | {"PYTHONPATH": str(REPO / "src")}
    started = time.time()
    job = subprocess.run(["timeout", "-k", "10", "120", "sbatch", "--wait", "-p", GPU_PARTITION, "--gpus=1",
                          "-o", str(out), "--wrap", f"{sys.executable} -c \"{check}\""],
                         capture_output=True, text=True, env=env)
    assert job.returncode not in (0, 124, 137), job.stdout + job.stderr + cluster_state()
    text = out.read_text()
    assert "DeviceError: device 'auto': this job was given a GPU (SLURM_JOB_GPUS=0) but this torch build" in text
    assert time.time() - started < 60


def test_slurm_result_equals_the_local_result(runs):
    assert runs["local_run"].returncode == 0, runs["local_output"][-4000:]
    local, slurm = runs["local"], runs["folder"]
    pd.testing.assert_frame_equal(pd.read_parquet(slurm / "results/summary.parquet"),
                                  pd.read_parquet(local / "results/summary.parquet"))
    # same CPU: every model's answers and every trained or pruned weight agree to the byte
    files = sorted(p.relative_to(local) for pattern in ["answers.jsonl", "adapter_model.safetensors", "model.safetensors"]
                   for p in (local / "results").rglob(pattern))
    assert len(files) > 10
    assert [f for f in files if (slurm / f).read_bytes() != (local / f).read_bytes()] == []
    # the calibration statistics to rounding (seen once to differ in the last bits between the two
    # runs: sums of squares reduced in another order); the masks made from them agree to the byte
    from safetensors.torch import load_file
    norms = sorted(p.relative_to(local) for p in (local / "results/score").rglob("feature_norms.safetensors"))
    assert len(norms) == 2
    for f in norms:
        mine, theirs = load_file(slurm / f), load_file(local / f)
        assert all(torch.allclose(mine[k], theirs[k], rtol=1e-5, atol=0) for k in theirs), f
    masks = sorted(p.relative_to(local) for p in (local / "results/prune").rglob("mask.parquet"))
    assert len(masks) == 6 and all((slurm / f).read_bytes() == (local / f).read_bytes() for f in masks)


def test_a_failing_job_is_retried_with_more_memory_and_reported_with_its_logs(runs):
    first, folder = runs["first"], runs["folder"]
    assert first.returncode != 0
    output = first.stdout + first.stderr
    assert f"Error in rule {FAILING_RULE}" in output
    # Snakemake names the rule's log, which holds the error
    log = runs["failed_log"]
    assert log == FAILING_LOG
    assert "RuntimeError: a fault injected by tests/test_slurm.py" in runs["failed_log_text"]
    # first try and the profile's retries, each with more memory (sacct's ReqMem)
    attempts = [row for row in runs["jobs1"] if row["job"][0] == FAILING_RULE and row["State"] != "COMPLETED"]
    assert {row["job"] for row in attempts} == {(FAILING_RULE, f"sst2_{FAILING_MODEL}")}
    assert [row["State"] for row in attempts] == ["FAILED"] * (1 + PROFILE["retries"])
    assert output.count("Trying to restart job") == PROFILE["retries"]
    # and names SLURM's log of each failed attempt, kept under the profile's slurm-logdir
    for row in attempts:
        (slurm_log,) = (folder / PROFILE["slurm-logdir"] / f"rule_{FAILING_RULE}").glob(f"*/{row['JobID']}.log")
        assert f"log: {log}, {slurm_log}" in output
        assert "Error in rule" in slurm_log.read_text()
    memory = [megabytes(row["ReqMem"]) for row in attempts]
    assert memory == [memory[0] * attempt for attempt in range(1, len(memory) + 1)]
    # keep-going: what does not need the failed job finished anyway
    assert completed(runs["jobs1"])[FAILING_RULE] == runs["full_plan"][FAILING_RULE] - 1


def test_a_rerun_after_the_fix_does_only_what_was_left(runs):
    assert runs["second"].returncode == 0, runs["second"].stderr[-4000:]
    full, rerun = runs["full_plan"], runs["rerun_plan"]
    done_first = finished(runs["first"])
    left = {rule: n - done_first[rule] for rule, n in full.items() if n > done_first[rule]}
    # SLURM's accounting holds no local rule: those that need the failed job run again, mask_stats
    # (it reads the masks alone) finished in the first run
    assert done_first and {r: n for r, n in rerun.items() if r not in LOCAL_RULES} == \
        {r: n for r, n in left.items() if r not in LOCAL_RULES}
    assert {"collect", "tables", "plots"} <= set(rerun) and "mask_stats" not in rerun
    assert rerun[FAILING_RULE] == 1 and "align" not in rerun
    assert finished(runs["second"]) == Counter({r: n for r, n in rerun.items() if r not in LOCAL_RULES})
    # the results of finished jobs were left as they were
    changed = [p for p, mtime in runs["finished"].items() if not p.exists() or p.stat().st_mtime_ns != mtime]
    assert not changed, changed[:5]


# --- training jobs killed on SLURM, by their time limit and by scancel, resumed by their retries

KILLED_RUN = "sst2-p0.25-lr0.001-ep4-n8-s0"
KILLED_TARGET = f"results/finetune/{KILLED_RUN}/adapter"
# Alignment: 12 steps, checkpoints only at the epochs' ends (4, 8, 12) and when the signal comes;
# fine-tuning: 8 steps, checkpoints at 2, 4, 6, 8. Both wait after step 3 (a test hook) until SLURM
# ends them: the alignment by its time limit of 2 minutes (4 on the retry), the fine-tuning by
# `scancel --signal=TERM`, which ends the job's processes and leaves the job FAILED. (A plain `scancel`,
# or one with SIGKILL, leaves it CANCELLED, which sacct writes "CANCELLED by <uid>": the plugin, 2.8.0,
# does not read that as an end and waits for the job for ever; docs/cluster.md says what to do then.)
LONGER_TRAINING = ("align: {train: {epochs: 3, checkpoint_every: 100}}\n"
                   "finetune: {epochs: [4], train: {checkpoint_every: 2}}\n"
                   "cluster: {runtime: 2}\n")
# The profile asks for the signal 300 s before the limit: with a limit of 2 minutes it would come at once,
# before the job's training has started; 30 s before, it comes after (SLURM may send it some seconds
# early). A signal that comes before the training loop listens for it is lost: that attempt waits at
# step 3 without a checkpoint until its time limit, and the retry waits again, for its own signal.
# A slow start (a cold machine) can cost one such attempt, which the retries absorb.
# (--set-resources replaces the profile's whole block: the partitions are given again)
SIGNAL_30_S = ("--set-resources", "align:slurm_extra='--signal=URG@30'", "finetune:slurm_extra='--signal=URG@30'",
               f"align:slurm_partition={GPU_PARTITION}", f"finetune:slurm_partition={GPU_PARTITION}")
KILLED_LIMIT_S = 720


def running_job(folder: Path, rule: str) -> str | None:
    """The SLURM id of the project's running job of ``rule`` (by the plugin's comment and the work dir)."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%Z"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        job, comment, workdir = line.split("|")
        if comment.startswith(f"rule_{rule}_") or comment == f"rule_{rule}":
            if os.path.realpath(workdir) == os.path.realpath(folder):
                return job
    return None


@pytest.fixture(scope="module")
def killed_runs(cluster, tmp_path_factory):
    started = time.time()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started - 60))
    local = make_tiny_project(tmp_path_factory.mktemp("local-uninterrupted"))
    folder = make_tiny_project(tmp_path_factory.mktemp("slurm-killed"))
    shutil.copytree(REPO / "slurm", folder / "slurm")
    args = [KILLED_TARGET, "--configfile", "config/config.yaml", "overlay.yaml", "--max-threads", "1"]
    for project in (local, folder):
        (project / "overlay.yaml").write_text(LONGER_TRAINING)
    local_run = subprocess.Popen(["timeout", "-k", "10", str(KILLED_LIMIT_S), sys.executable, "-m", "snakemake",
                                  "--cores", "2", *args, "--quiet", "rules"], cwd=local, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"} | {"PYTHONUNBUFFERED": "1",
                                                                        "ANTIDOTE_TEST_WAIT_AFTER_STEP": "3"}
    output = folder / "snakemake.out"
    with open(output, "w") as out:
        slurm = subprocess.Popen(["timeout", "-k", "10", str(KILLED_LIMIT_S), sys.executable, "-m", "snakemake",
                                  "--profile", "slurm", *FAST_POLLING, *args, *SIGNAL_30_S], cwd=folder, env=env,
                                 stdout=out, stderr=subprocess.STDOUT)
        # the fine-tuning job's processes are killed once it has written its first checkpoint
        cancelled, checkpoint = None, folder / f"checkpoints/finetune/{KILLED_RUN}/checkpoint.pt"
        while slurm.poll() is None:
            if not cancelled and checkpoint.exists() and (cancelled := running_job(folder, "finetune")):
                subprocess.run(["scancel", "--signal=TERM", cancelled], check=True)
            time.sleep(0.5)
    local_run.wait(timeout=60)
    text = output.read_text()
    assert slurm.returncode not in (124, 137), f"SLURM run killed after {KILLED_LIMIT_S} s:\n{text[-4000:]}"
    print(f"SLURM kill test: {time.time() - started:.0f} s")
    return dict(folder=folder, local=local, local_run=local_run, slurm=slurm, output=text, cancelled=cancelled,
                jobs=sacct(re.search(r"SLURM run ID: (\S+)", text).group(1), since))


def test_training_jobs_killed_by_the_time_limit_and_by_scancel_were_retried(killed_runs):
    assert killed_runs["slurm"].returncode == 0, killed_runs["output"][-4000:]
    attempts = {rule: [row["State"].split()[0] for row in killed_runs["jobs"] if row["job"][0] == rule]
                for rule in ("align", "finetune")}
    assert attempts["finetune"] == ["FAILED", "COMPLETED"]
    # killed by the time limit at least once (twice when the first signal came before the loop listened)
    assert attempts["align"][-1] == "COMPLETED" and attempts["align"][0] == "TIMEOUT", attempts
    assert set(attempts["align"][:-1]) == {"TIMEOUT"} and len(attempts["align"]) <= 1 + PROFILE["retries"], attempts
    assert killed_runs["cancelled"] == [row["JobID"] for row in killed_runs["jobs"] if row["job"][0] == "finetune"][0]


def test_the_retries_resumed_from_the_checkpoints_of_the_killed_jobs(killed_runs):
    folder = killed_runs["folder"]
    # the alignment's only checkpoint before it was killed could come from the signal alone (step 3)
    assert "resuming from the checkpoint checkpoints/align/checkpoint.pt: step 3 of 12" in \
        (folder / "logs/align.log").read_text()
    assert re.search(rf"resuming from the checkpoint checkpoints/finetune/{KILLED_RUN}/checkpoint.pt: step [23] of 8",
                     (folder / f"logs/finetune/{KILLED_RUN}.log").read_text())
    assert not [p for p in (folder / "checkpoints").rglob("*") if p.is_file()]


def test_the_resumed_slurm_result_equals_the_uninterrupted_local_one(killed_runs):
    assert killed_runs["local_run"].returncode == 0
    local, slurm = killed_runs["local"], killed_runs["folder"]
    for name in ["results/align/model/model.safetensors", f"{KILLED_TARGET}/adapter_model.safetensors"]:
        assert (slurm / name).read_bytes() == (local / name).read_bytes(), name
