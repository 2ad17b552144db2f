"""One-shot pruning (stage 4): score every weight, mark the top alpha of each row, zero them.

Antidote keeps the Wanda score but removes the LARGEST-scoring weights: on harmful
calibration data these are the weights that carry the harmful behaviour. Random and
magnitude pruning are the authors' ablations at the same alpha. Every masking defense is a
score function with the same signature, registered in ``DEFENSES`` beside SafeLoRA (a peer
defense that projects instead of masking: :mod:`antidote.safelora`): the workflow, the CLI,
the config checks, the tables and the plots all read their names from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
# torch itself is imported by the functions that compute: the rule files read DEFENSES while
# Snakemake parses them (on the submit host, and again at every job's start), which needs no torch.

# How many entries a mask takes, as the authors' code counts them: per row, a stable ascending
# sort keeps the first int(columns * (1 - alpha)) and prunes the rest; per whole tensor
# (their random pruning), int(alpha * numel) entries are pruned. Recorded in every mask file.
ROUNDING = "authors"
MASK_SCOPES = ("tensor", "row")  # choices of prune.random_scope


def antidote_score(weight: torch.Tensor, feature_norm: torch.Tensor, generator=None) -> torch.Tensor:
    """Wanda: S[i, j] = |W[i, j]| * sqrt(n_j), with n_j the feature's squared norm (see calibrate)."""
    return weight.abs() * feature_norm.sqrt().unsqueeze(0)


def magnitude_score(weight: torch.Tensor, feature_norm: torch.Tensor, generator=None) -> torch.Tensor:
    return weight.abs()


def random_score(weight: torch.Tensor, feature_norm: torch.Tensor, generator=None) -> torch.Tensor:
    import torch

    return torch.rand(weight.shape, generator=generator)


# The calibration sets stage 3 gathers feature norms on: the harmful one (Antidote's), and the
# benign control (the fine-tuning task's own training items, as many as the harmful set).
CALIBRATIONS = ("harmful", "benign")


@dataclass(frozen=True)
class Defense:
    score: Callable[..., torch.Tensor] | None  # None: the defense masks nothing (SafeLoRA projects)
    calibration: str | None  # whose feature norms (stage 3) it reads: one of CALIBRATIONS, or None
    summary: str
    # antidote-setdiff: whose feature norms rank the entries it spares (a row's top beta by the same score)
    spared: str | None = None

    @property
    def masks(self) -> bool:
        """Whether the defense is set by alpha and writes a mask (all but SafeLoRA)."""
        return self.score is not None

    @property
    def needs_feature_norms(self) -> bool:
        return self.calibration is not None

    @property
    def calibrations(self) -> tuple[str, ...]:
        """Every calibration set whose feature norms it reads."""
        return tuple(c for c in (self.calibration, self.spared) if c)


# The defenses, in the order tables and plots list them.
DEFENSES = {
    "antidote": Defense(antidote_score, "harmful",
                        "Wanda score on the harmful calibration set, top alpha per row removed"),
    "antidote-benign": Defense(antidote_score, "benign",
                               "the same score and selection on benign task data (a control: what does the "
                               "harmful data add?)"),
    "antidote-setdiff": Defense(antidote_score, "harmful",
                                "Antidote's top alpha per row, less the row's top beta by the same score on the "
                                "benign data (after Wei et al. 2024: weights that harmful data finds and benign "
                                "data does not)", spared="benign"),
    "random": Defense(random_score, None,
                      "seeded random entries, alpha of each whole tensor (the authors' ablation; or per row)"),
    "magnitude": Defense(magnitude_score, None, "largest |W|, alpha per row, no data (the authors' ablation)"),
    "safelora": Defense(None, None,
                        "SafeLoRA (Hsu et al. 2024), data-free: lora_B projected onto the alignment update in "
                        "the modules whose update points furthest from it (prune.safelora, no alpha)"),
}


def top_fraction_mask(score: torch.Tensor, alpha: float) -> torch.Tensor:
    """True at the entries of every row that the authors' Wanda code prunes: the largest scores.

    They sort each row ascending (stable) and keep its first int(columns * (1 - alpha))
    entries, so a row loses one entry more than floor(alpha * columns) whenever that product
    is not whole (4096 columns at alpha 0.1: 410, not 409). Among equal scores the stable sort
    keeps the lower column and prunes the higher one, on every device.
    """
    import torch

    keep = int(score.shape[1] * (1 - alpha))
    ascending = torch.sort(score, dim=1, stable=True).indices
    mask = torch.ones_like(score, dtype=torch.bool)
    return mask.scatter_(1, ascending[:, :keep], False)


def whole_tensor_mask(score: torch.Tensor, alpha: float) -> torch.Tensor:
    """True at the int(alpha * numel) largest scores of the whole tensor, rows ignored.

    The authors' random pruning draws that many entries of each tensor; the largest of
    uniform random scores are such a draw. Ties go to the lower flat index.
    """
    import torch

    count = int(alpha * score.numel())
    descending = torch.sort(score.flatten(), descending=True, stable=True).indices
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    return mask.scatter_(0, descending[:count], True).view_as(score)


def mask_scope(defense: str, random_scope: str = "tensor") -> str:
    """Among which entries a defense picks: ``row`` (each output row, as Wanda compares them;
    Antidote and magnitude pruning) or ``tensor`` (the whole matrix). Random pruning draws from
    the whole tensor as the authors' ablation does, or per row with ``random_scope="row"``."""
    if random_scope not in MASK_SCOPES:
        raise ValueError(f"unknown random_scope {random_scope!r}; expected one of {list(MASK_SCOPES)}")
    return random_scope if defense == "random" else "row"


def _feature_norm(feature_norms: dict[str, torch.Tensor] | None, name: str, weight: torch.Tensor) -> torch.Tensor:
    if feature_norms is None or name not in feature_norms:
        raise KeyError(f"no calibration feature norms for {name}")
    norm = feature_norms[name]
    if norm.shape != (weight.shape[1],):
        raise ValueError(f"feature norms of {name} have shape {tuple(norm.shape)}, expected ({weight.shape[1]},)")
    return norm


def compute_masks(weights: dict[str, torch.Tensor], feature_norms: dict[str, torch.Tensor] | None,
                  defense: str, alpha: float, seed: int = 0, random_scope: str = "tensor", *,
                  spared_norms: dict[str, torch.Tensor] | None = None,
                  beta: float | None = None) -> dict[str, torch.Tensor]:
    """A mask for every weight matrix, picked per row or per tensor as :func:`mask_scope` says;
    ``feature_norms`` (those of the defense's calibration set) are needed by data-aware defenses
    only. antidote-setdiff also reads ``spared_norms`` (the benign set's) and ``beta`` (default:
    alpha, as Wei et al.'s p = q)."""
    if defense not in DEFENSES:
        raise ValueError(f"unknown defense {defense!r}; expected one of {list(DEFENSES)}")
    spec = DEFENSES[defense]
    if not spec.masks:
        raise ValueError(f"{defense} masks nothing: it projects the adapter (antidote.safelora)")
    beta = alpha if beta is None else beta
    for key, value in [("alpha", alpha), *([("beta", beta)] if spec.spared else [])]:
        if not 0 < value < 1:
            raise ValueError(f"{key} must lie in (0, 1), got {value}")
    import torch

    select = {"row": top_fraction_mask, "tensor": whole_tensor_mask}[mask_scope(defense, random_scope)]
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name in sorted(weights):
        weight = weights[name].float().cpu()
        norm = _feature_norm(feature_norms, name, weight) if spec.needs_feature_norms else None
        masks[name] = select(spec.score(weight, norm, generator), alpha)
        if spec.spared:
            # spared: the row's entries that the benign data ranks in its own top beta, so that only
            # what the harmful data finds and the benign data does not is removed
            masks[name] &= ~top_fraction_mask(spec.score(weight, _feature_norm(spared_norms, name, weight)), beta)
    return masks


def apply_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero the masked entries; weights without a mask pass through unchanged."""
    return {name: w.masked_fill(masks[name].to(w.device), 0) if name in masks else w
            for name, w in weights.items()}


def mask_agreement(masks: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """The share of the entries selected in ``masks`` that ``other`` selects too (1.0: the same
    masks). Masks of one alpha select as many entries each, so the measure is then symmetric
    (antidote-setdiff's excepted: it selects a subset of Antidote's)."""
    selected = sum(int(m.sum()) for m in masks.values())
    common = sum(int((m & other[name]).sum()) for name, m in masks.items())
    return common / selected if selected else 1.0


def update_removed(weights: dict[str, torch.Tensor], pruned: dict[str, torch.Tensor]) -> float:
    """The percentage of the adapter's weight update that pruning (or SafeLoRA's projection) removed:
    100 * sum over modules of ||dW - dW'||_F^2 / sum of ||dW||_F^2, with dW = B @ A from ``weights``
    and dW' from ``pruned`` (PEFT adapter tensors ``...lora_A.weight`` / ``...lora_B.weight``).
    LoRA's scaling multiplies every module's dW alike, so it cancels from the share."""
    removed = total = 0.0
    for a_name in sorted(n for n in weights if ".lora_A." in n):
        b_name = a_name.replace(".lora_A.", ".lora_B.")
        update = weights[b_name].double() @ weights[a_name].double()
        remaining = pruned[b_name].double() @ pruned[a_name].double()
        removed += float((update - remaining).square().sum())
        total += float(update.square().sum())
    return 100.0 * removed / total if total else 0.0
