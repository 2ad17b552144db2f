"""Where the masks sit: overlap between the masks of a run's defenses, and the density of pruned
entries per layer, module and LoRA matrix. Read from the mask files of stage 4 (Parquet)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .atomic import atomic_path, write_text
from .maskfile import PackedMasks
from .paths import pruned_name
from .prune import DEFENSES

if TYPE_CHECKING:
    import torch

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight -> layer 3, q_proj, A
_ADAPTER_NAME = re.compile(r"layers\.(?P<layer>\d+)\..*?(?P<module>[A-Za-z0-9_]+)\.lora_(?P<matrix>[AB])\.")


def where(name: str) -> dict:
    """Layer, module and LoRA matrix (A or B) of an adapter weight's name."""
    found = _ADAPTER_NAME.search(name)
    if not found:
        raise ValueError(f"not a LoRA weight of a decoder layer: {name!r}")
    return {"layer": int(found["layer"]), "module": found["module"], "matrix": found["matrix"]}


def overlaps(masks: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Percentage of the entries ``masks`` prunes that ``other`` prunes too: over every weight
    (``overlap``) and over the lora_A and lora_B matrices apart (``overlap lora_A``, ...; masks of
    one alpha prune as many entries each); NaN where nothing is pruned. One matrix at a time, so
    that masks read on demand (:class:`PackedMasks`) are never all in memory."""
    counts = {kind: [0, 0] for kind in (None, "A", "B")}  # pruned entries, and those pruned by both
    for name in masks:
        mask = masks[name]
        pruned, common = int(mask.sum()), int((mask & other[name]).sum())
        for kind in (None, where(name)["matrix"]):
            counts[kind][0] += pruned
            counts[kind][1] += common
    label = {None: "overlap", "A": "overlap lora_A", "B": "overlap lora_B"}
    return {label[kind]: 100.0 * common / pruned if pruned else float("nan") for kind, (pruned, common) in counts.items()}


def overlap_table(masks: Mapping[tuple[str, str], Mapping], pruned: dict[str, dict]) -> pd.DataFrame:
    """One row per run, alpha and pair of defenses: the overlap of their masks, overall and per
    LoRA matrix. ``masks`` maps (run, model name) to masks; ``pruned`` a model name to its
    defense and alpha. The share is of the first defense's entries: antidote-setdiff prunes a
    subset of Antidote's, so (antidote, antidote-setdiff) is the share of Antidote's entries that
    the set difference keeps pruning."""
    rows = []
    runs = sorted({run for run, _ in masks})
    alphas = sorted({pruned[model]["alpha"] for _, model in masks})
    for run, alpha in itertools.product(runs, alphas):
        present = [d for d in DEFENSES if (run, pruned_name(d, alpha)) in masks]
        for first, second in itertools.combinations(present, 2):
            a, b = masks[run, pruned_name(first, alpha)], masks[run, pruned_name(second, alpha)]
            rows.append({"run": run, "alpha": alpha, "defense": first, "other": second, **overlaps(a, b)})
    return pd.DataFrame(rows, columns=["run", "alpha", "defense", "other", "overlap", "overlap lora_A",
                                       "overlap lora_B"])


def density_table(masks: Mapping[tuple[str, str], Mapping], pruned: dict[str, dict]) -> pd.DataFrame:
    """Percentage of entries pruned per run, model, layer, module and matrix (one matrix in memory at a time)."""
    rows = [{"run": run, "defense": pruned[model]["defense"], "alpha": pruned[model]["alpha"], **where(name),
             "density": 100.0 * float(mask.float().mean())}
            for (run, model), model_masks in masks.items() for name, mask in model_masks.items()]
    return pd.DataFrame(rows).sort_values(["run", "defense", "alpha", "layer", "module", "matrix"], kind="stable")


def plot_density(density: pd.DataFrame, path: str | Path) -> None:
    """Pruned-entry density against layer, one panel per defense and alpha (mean over runs), one
    line per module and matrix: a defense that piles its cuts into a few layers or matrices shows it."""
    from .plots import new_figure, save_figure

    panels = list(density.groupby(["defense", "alpha"], sort=False))
    panels.sort(key=lambda item: (list(DEFENSES).index(item[0][0]), item[0][1]))
    columns = min(3, len(panels))
    figure, axes = new_figure(-(-len(panels) // columns), columns)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((defense, alpha), panel) in zip(axes.flat, panels):
        mean = panel.groupby(["module", "matrix", "layer"])["density"].mean().reset_index()
        for (module, matrix), line in mean.groupby(["module", "matrix"]):
            ax.plot(line["layer"], line["density"], marker=".", linestyle="-" if matrix == "A" else "--",
                    label=f"{module} lora_{matrix}")
        ax.set(xlabel="layer", ylabel="entries pruned (%)", title=f"{defense}, α={alpha:g}")
        ax.legend(fontsize=7)
    save_figure(figure, path)


class MaskFiles(Mapping):
    """(run, model name) -> that model's masks, read from its file when asked for and not kept:
    the statistics hold the packed bits of two files and one unpacked matrix of each at a time,
    whatever the number of masks (a sweep's hundreds of 7B masks would not fit unpacked)."""

    def __init__(self, files: Mapping[tuple[str, str], str | Path]):
        self.files = dict(files)

    def __getitem__(self, key: tuple[str, str]) -> PackedMasks:
        return PackedMasks(self.files[key])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def write_mask_stats(mask_files: dict[tuple[str, str], str | Path], pruned: dict[str, dict],
                     tables: str | Path, plots: str | Path) -> None:
    """mask_overlap.csv/.md and mask_density.csv under ``tables``, mask_density.png under ``plots``."""
    from .results import markdown_table

    masks = MaskFiles(mask_files)
    tables, plots = Path(tables), Path(plots)
    overlaps = overlap_table(masks, pruned)
    with atomic_path(tables / "mask_overlap.csv") as temp:
        overlaps.to_csv(temp, index=False)
    write_text(tables / "mask_overlap.md", markdown_table(overlaps))
    density = density_table(masks, pruned)
    with atomic_path(tables / "mask_density.csv") as temp:
        density.to_csv(temp, index=False)
    plot_density(density, plots / "mask_density.png")
