"""SafeLoRA (Hsu et al., NeurIPS 2024; reference code IBM/SafeLoRA), a peer defense: data-free,
it projects the user's LoRA update onto the alignment update where the two point apart most.

For every module the user's adapter targets, with ``V = W_aligned - W_base`` the alignment update:

    C   = V @ V.T / ||V||_F                      (the reference's scaled projection, not a projector)
    cos = cosine(vec(C @ B @ A), vec(B @ A))     (B, A: the user's lora_B, lora_A)

and in the modules of lowest cosine (the ``k`` lowest, a fraction of the modules, or all at or
under a threshold) ``B <- C @ B``, ``A`` unchanged. Stage 1 keeps its alignment adapter, so ``V =
scaling * B_al @ A_al`` comes in low rank; everything here is computed from factors ``V = L @ R``:
``C @ B = L (R R^T) (L^T B) / ||V||_F``, ``||V||_F^2 = tr(L^T L R R^T)``, and the cosine from the
``r x r`` Gram matrix of ``A``. Nothing larger than a weight is formed (``C`` itself is out x out).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch

from .modeling import PEFT_PREFIX, lora_modules, lora_scaling, weight_files
from .paths import SAFELORA_SELECTIONS

Factors = tuple[torch.Tensor, torch.Tensor]  # (L, R) with V = L @ R, in float64
# A module's alignment update, made when it is needed (one module's worth of memory at a time);
# None where there is none
AlignmentUpdate = Callable[[str], Factors | None]


def alignment_from_adapter(weights: dict[str, torch.Tensor], adapter_config: dict) -> AlignmentUpdate:
    """V = scaling * B_al @ A_al of a module of the alignment adapter, as its two factors."""
    scaling = lora_scaling(adapter_config)

    def update(module: str) -> Factors | None:
        if f"{module}.lora_A.weight" not in weights:
            return None
        return scaling * weights[f"{module}.lora_B.weight"].double(), weights[f"{module}.lora_A.weight"].double()

    return update


def alignment_from_models(base_dir: Path, aligned_dir: Path) -> AlignmentUpdate:
    """V = W_aligned - W_base of a module, read from two HF model directories (safetensors, one
    file or sharded), for an aligned model that comes without its adapter. V is as large as the
    weight; its thin QR factors are exact and no larger."""
    from safetensors import safe_open

    files = {model_dir: weight_files(model_dir) for model_dir in (base_dir, aligned_dir)}

    def read(model_dir: Path, name: str) -> torch.Tensor:
        if name not in files[model_dir]:
            raise KeyError(f"{model_dir} holds no weight {name!r}")
        with safe_open(files[model_dir][name], framework="pt") as tensors:
            return tensors.get_tensor(name).double()

    def update(module: str) -> Factors:
        # an aligned model brought without its adapter: module M's weight is "<M>.weight" in its files
        name = module.removeprefix(PEFT_PREFIX) + ".weight"
        return tuple(torch.linalg.qr(read(aligned_dir, name) - read(base_dir, name)))

    return update


def projected(b: torch.Tensor, v: Factors) -> torch.Tensor | None:
    """C @ b with C = V V^T / ||V||_F and V = L @ R, never forming V or C; None where V = 0 (C undefined)."""
    left, right = v
    gram = right @ right.T
    norm = torch.sum((left.T @ left) * gram).sqrt()
    return None if norm == 0 else left @ (gram @ (left.T @ b)) / norm


def update_cosine(projected_b: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
    """cosine(vec(projected_b @ a), vec(b @ a)) from r x r products: <X A, Y A> = sum((X^T Y) * A A^T).
    NaN where B A = 0 (no update to judge); 0 where C B A = 0 and B A is not."""
    gram = a @ a.T

    def inner(x, y):
        return float(torch.sum((x.T @ y) * gram))

    moved, original = inner(projected_b, projected_b), inner(b, b)
    if original == 0:
        return math.nan
    return inner(projected_b, b) / math.sqrt(moved * original) if moved > 0 else 0.0


def selected_modules(cosines: dict[str, float], select: str, value: float) -> set[str]:
    """The modules to project, as the reference picks them: every module of cosine at most the
    threshold, or at most the k-th lowest cosine (ties at it go too), k = ``value`` or
    ceil(``value`` * modules). Modules without a cosine (NaN) are never picked."""
    if select not in SAFELORA_SELECTIONS:
        raise ValueError(f"unknown SafeLoRA selection {select!r}; expected one of {list(SAFELORA_SELECTIONS)}")
    judged = sorted(c for c in cosines.values() if not math.isnan(c))
    if select == "threshold":
        limit = value
    else:
        count = int(value) if select == "count" else math.ceil(value * len(cosines))
        if count < 1 or not judged:
            return set()
        limit = judged[min(count, len(judged)) - 1]
    return {module for module, cosine in cosines.items() if cosine <= limit}


def safelora(weights: dict[str, torch.Tensor], alignment: AlignmentUpdate, select: str,
             value: float) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The user's adapter weights with ``B <- C @ B`` in the selected modules, and one record per
    module: its cosine and whether it was projected. A module the alignment update does not
    reach (V = 0 there, e.g. not among the alignment adapter's target modules) has no C: its
    cosine is NaN and it is left as it is."""
    candidates, cosines = {}, {}
    for module in lora_modules(weights):
        a, b = weights[f"{module}.lora_A.weight"].double(), weights[f"{module}.lora_B.weight"].double()
        v = alignment(module)
        if v is not None and (v[0].shape[0], v[1].shape[1]) != (b.shape[0], a.shape[1]):
            raise ValueError(f"{module}: the alignment update is {v[0].shape[0]} x {v[1].shape[1]}, the adapter's "
                             f"{b.shape[0]} x {a.shape[1]}: not the same model")
        candidates[module] = projected(b, v) if v is not None else None
        cosines[module] = math.nan if candidates[module] is None else update_cosine(candidates[module], b, a)
    unreached = [m for m, c in cosines.items() if math.isnan(c)]
    if unreached:
        logging.warning("SafeLoRA: %d of %d modules have no cosine (no alignment update there, or no update of "
                        "the adapter) and are left as they are, e.g. %s", len(unreached), len(cosines), unreached[0])
    chosen = selected_modules(cosines, select, value)
    defended = dict(weights)
    for module in chosen:
        b_name = f"{module}.lora_B.weight"
        defended[b_name] = candidates[module].to(weights[b_name].dtype)
    return defended, [{"module": m, "cosine": c, "projected": m in chosen} for m, c in cosines.items()]
