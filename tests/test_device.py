"""A job that should run on a GPU and cannot stops at once, naming the cause (antidote.modeling)."""

import re

import pytest
import torch

from antidote import modeling
from antidote.modeling import GPU_ALLOCATION_VARIABLES, DeviceError, pick_device, pick_dtype


@pytest.fixture
def no_slurm_gpu(monkeypatch):
    for variable in GPU_ALLOCATION_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def fake_cuda(monkeypatch, build="12.4", init_error=None, devices=1, bf16=True, name="Tesla V100-SXM2-32GB"):
    """torch as it looks on a GPU node: a CUDA build whose runtime starts (or fails as given)."""
    monkeypatch.setattr(torch.version, "cuda", build)

    def init():
        if init_error:
            raise RuntimeError(init_error)

    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_a_laptop_without_cuda_runs_on_the_cpu(monkeypatch, no_slurm_gpu):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    assert pick_dtype("auto", "cpu") == torch.float32


def test_cuda_asked_of_a_cpu_build_of_torch_names_the_build(monkeypatch, no_slurm_gpu):
    monkeypatch.setattr(torch.version, "cuda", None)
    build = re.escape(torch.__version__)
    with pytest.raises(DeviceError, match=rf"device 'cuda': this torch build \({build}\) has no CUDA"):
        pick_device("cuda")


@pytest.mark.parametrize("variable,value", [("SLURM_JOB_GPUS", "0"), ("SLURM_STEP_GPUS", "0,1"),
                                            ("SLURM_GPUS_ON_NODE", "1")])
def test_a_job_given_a_gpu_never_falls_back_to_the_cpu(monkeypatch, no_slurm_gpu, variable, value):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv(variable, value)
    with pytest.raises(DeviceError, match=rf"device 'auto': this job was given a GPU \({variable}={value}\) but this "
                                          r"torch build .* has no CUDA.*Set device: cpu"):
        pick_device("auto")
    assert pick_device("cpu") == "cpu"  # said so in the config: the CPU, whatever was allocated


def test_no_gpu_allocated_is_no_allocation(monkeypatch, no_slurm_gpu):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")
    monkeypatch.setenv("SLURM_JOB_GPUS", "")
    assert pick_device("auto") == "cpu"


def test_a_driver_that_does_not_start_and_no_visible_device_are_named(monkeypatch, no_slurm_gpu):
    fake_cuda(monkeypatch, init_error="The NVIDIA driver on your system is too old (found version 11040).")
    with pytest.raises(DeviceError, match=r"device 'cuda': CUDA does not start \(The NVIDIA driver on your system is "
                                          r"too old \(found version 11040\)\.\)"):
        pick_device("cuda")
    fake_cuda(monkeypatch, devices=0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match=r"no CUDA device is visible \(CUDA_VISIBLE_DEVICES=''\)"):
        pick_device("cuda:0")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    with pytest.raises(DeviceError, match="was given a GPU"):
        pick_device("auto")


def test_a_working_gpu_is_used_and_its_index_checked(monkeypatch, no_slurm_gpu):
    fake_cuda(monkeypatch, devices=2)
    assert pick_device("auto") == "cuda" and pick_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match=r"device 'cuda:2': only 2 CUDA device\(s\) visible"):
        pick_device("cuda:2")


def test_bf16_on_a_gpu_without_it_names_the_setting(monkeypatch, no_slurm_gpu):
    fake_cuda(monkeypatch, bf16=False)
    for name in ("auto", "bfloat16"):
        with pytest.raises(DeviceError, match=rf"dtype '{name}' computes in bfloat16, which Tesla V100-SXM2-32GB does "
                                              r"not support; set dtype: float16 \(or float32\)"):
            pick_dtype(name, "cuda")
    assert pick_dtype("float16", "cuda") == torch.float16 and pick_dtype("float32", "cuda") == torch.float32
    fake_cuda(monkeypatch, bf16=True, name="NVIDIA H100")
    assert pick_dtype("auto", "cuda") == torch.bfloat16


def test_a_workflow_script_stops_before_any_model_loads(monkeypatch, no_slurm_gpu, tmp_path):
    """start_script, which every model job's script calls first, picks the device: a job given a
    GPU it cannot use stops there, with the cause in its log."""
    from types import SimpleNamespace

    from antidote.runtime import start_script

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    job = SimpleNamespace(log=[], threads=1, rule="evaluate", params=SimpleNamespace(device="auto"))
    with pytest.raises(DeviceError, match="was given a GPU"):
        start_script(job)
    assert modeling.allocated_gpus() == "SLURM_JOB_GPUS=0"
    # a CPU stage (no device param: prune, grouped into the evaluations' GPU allocation) runs on the CPU
    assert start_script(SimpleNamespace(log=[], threads=1, rule="prune", params=SimpleNamespace())) == "cpu"
