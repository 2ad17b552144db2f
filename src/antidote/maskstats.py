"""Where the masks sit: overlap between the masks of a run's defenses, and the density of pruned
entries per layer, module and LoRA matrix. Read from the mask files of stage 4 (Parquet)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, write_text
from .maskfile import read_masks
from .paths import pruned_name
from .prune import DEFENSES, mask_agreement

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight -> layer 3, q_proj, A
_ADAPTER_NAME = re.compile(r"layers\.(?P<layer>\d+)\..*?(?P<module>[A-Za-z0-9_]+)\.lora_(?P<matrix>[AB])\.")


def where(name: str) -> dict:
    """Layer, module and LoRA matrix (A or B) of an adapter weight's name."""
    found = _ADAPTER_NAME.search(name)
    if not found:
        raise ValueError(f"not a LoRA weight of a decoder layer: {name!r}")
    return {"layer": int(found["layer"]), "module": found["module"], "matrix": found["matrix"]}


def overlap(masks: dict, other: dict, matrix: str | None = None) -> float:
    """Percentage of the entries ``masks`` prunes that ``other`` prunes too, over every weight or
    over the lora_A or lora_B matrices only (masks of one alpha prune as many entries each)."""
    chosen = {n: m for n, m in masks.items() if matrix is None or where(n)["matrix"] == matrix}
    if not any(m.any() for m in chosen.values()):
        return float("nan")  # nothing pruned there: no share to speak of
    return 100.0 * mask_agreement(chosen, other)


def overlap_table(masks: dict[tuple[str, str], dict], pruned: dict[str, dict]) -> pd.DataFrame:
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
            rows.append({"run": run, "alpha": alpha, "defense": first, "other": second, "overlap": overlap(a, b),
                         "overlap lora_A": overlap(a, b, "A"), "overlap lora_B": overlap(a, b, "B")})
    return pd.DataFrame(rows, columns=["run", "alpha", "defense", "other", "overlap", "overlap lora_A",
                                       "overlap lora_B"])


def density_table(masks: dict[tuple[str, str], dict], pruned: dict[str, dict]) -> pd.DataFrame:
    """Percentage of entries pruned per run, model, layer, module and matrix."""
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


def write_mask_stats(mask_files: dict[tuple[str, str], str | Path], pruned: dict[str, dict],
                     tables: str | Path, plots: str | Path) -> None:
    """mask_overlap.csv/.md and mask_density.csv under ``tables``, mask_density.png under ``plots``."""
    from .results import markdown_table

    masks = {key: read_masks(path)[0] for key, path in mask_files.items()}
    tables, plots = Path(tables), Path(plots)
    overlaps = overlap_table(masks, pruned)
    with atomic_path(tables / "mask_overlap.csv") as temp:
        overlaps.to_csv(temp, index=False)
    write_text(tables / "mask_overlap.md", markdown_table(overlaps))
    density = density_table(masks, pruned)
    with atomic_path(tables / "mask_density.csv") as temp:
        density.to_csv(temp, index=False)
    plot_density(density, plots / "mask_density.png")
