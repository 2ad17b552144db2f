"""The conda environment of the rules (envs/antidote.yaml) asks for what the package depends on."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def requirement_names(requirements):
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower(): r.replace(" ", "") for r in requirements}


def test_the_conda_environment_mirrors_the_package_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    package = requirement_names(project["dependencies"] + project["optional-dependencies"]["gpu"])
    environment = yaml.safe_load((REPO / "envs/antidote.yaml").read_text())
    pip = requirement_names(next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict)))
    assert set(pip) == set(package)
    # the same ranges, torch aside (the README installs 2.13.0 beside the package; the environment pins it)
    assert {k: v for k, v in pip.items() if k != "torch"} == {k: v for k, v in package.items() if k != "torch"}
    assert pip["torch"] == "torch==2.13.0"
