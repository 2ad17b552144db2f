"""Allocations and wall time of pruning and evaluating 12 pruned models on the test SLURM cluster,
each job its own allocation (the profile without its groups: before) against the profile's
grouped allocations (after), printed as a table.

    .venv/bin/python bench/slurm_groups.py        # as root on Debian; starts tests/slurm/cluster.sh if needed

The tiny project of the tests (a random tiny Llama, tests/tiny/config.yaml) with four masking
defenses at three alphas: 12 pruned models of one fine-tuned run. Everything before pruning
(data, alignment, fine-tuning, calibration scores, the reference evaluations) runs locally first;
then each way runs `snakemake --profile slurm` on a copy of that project, which does what is
left: 12 prune jobs, the 12 pruned models' evaluations, the
validation evaluations of Antidote's 3 alphas, and the local rules. Allocations are the run's
jobs in `sacct`; the wall time is the Snakemake command's, status polling every second (the
profile's first check after 40 s is shortened to 2 s, as in tests/test_slurm.py). About 10 minutes.
"""

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_slurm import CLUSTER_SH, FAST_POLLING, sacct  # noqa: E402
from test_workflow import make_tiny_project  # noqa: E402

OVERLAY = """
prune:
  alpha: [0.05, 0.1, 0.25]
  alpha_by_defense: {antidote: [0.05, 0.1, 0.25]}
  defenses: [antidote, antidote-benign, random, magnitude]
  select: {defenses: [antidote]}
"""
CONFIG = ("--configfile", "config/config.yaml", "overlay.yaml")
# What makes the grouped allocations in slurm/config.yaml; the "before" profile has none of it
GROUPING_KEYS = ("groups", "group-components", "resources", "set-resource-scopes", "cores")


def run(command: list[str], folder: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])}... failed in {folder}:\n{result.stderr[-3000:]}")
    return result


def main() -> None:
    if subprocess.run([CLUSTER_SH, "status"], capture_output=True).returncode != 0:
        run(["timeout", "300", str(CLUSTER_SH), "start"], REPO)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "prepared").mkdir()
        prepared = make_tiny_project(Path(tmp) / "prepared")
        (prepared / "overlay.yaml").write_text(OVERLAY)
        snakemake = [sys.executable, "-m", "snakemake"]
        run([*snakemake, "--cores", "2", "--max-threads", "1", "--quiet", "rules", *CONFIG, "--omit-from", "prune"],
            prepared)
        left = run([*snakemake, "-n", "--quiet", "rules", *CONFIG], prepared).stdout
        counts = dict(re.findall(r"^(\w+)\s+(\d+)$", left, re.M))  # the job stats table (printed twice)
        print("left to run on SLURM:", ", ".join(f"{count} {rule}" for rule, count in counts.items() if rule != "total"))
        profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
        ways = {"each job its own allocation (before)": {k: v for k, v in profile.items() if k not in GROUPING_KEYS},
                "the profile's groups (after)": profile}
        print("\n| pruning and evaluating 12 pruned models | allocations | of them with a GPU | wall s |")
        print("|---|---|---|---|")
        for way, settings in ways.items():
            folder = Path(tmp) / way.split()[-1].strip("()")
            shutil.copytree(prepared, folder, symlinks=True)
            (folder / "slurm").mkdir()
            (folder / "slurm/config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
            started = time.perf_counter()
            result = run(["timeout", "1200", *snakemake, "--profile", "slurm", "--max-threads", "1", *FAST_POLLING,
                          *CONFIG], folder)
            seconds = time.perf_counter() - started
            jobs = sacct(re.search(r"SLURM run ID: (\S+)", result.stdout + result.stderr).group(1), since)
            gpu = sum("gres/gpu" in job["AllocTRES"] for job in jobs)
            print(f"| {way} | {len(jobs)} | {gpu} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
