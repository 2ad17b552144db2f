"""Choosing a masking defense's alpha on validation data only (rule select_alpha).

Per fine-tuning run and defense, the curve (each alpha's harmful score, and fine-tune accuracy
where the criterion reads it, on the ``harmful_validation`` prompts and the task's validation
items, never on test prompts) and the aligned model's validation harmful score on the same
prompts give one alpha, by the criterion of ``prune.select``:

- ``margin`` (default): the smallest alpha whose validation HS is at most the aligned model's
  plus ``margin`` points: the least pruning that brings the harmful score back to the aligned
  model's level;
- ``accuracy``: among the alphas whose validation HS is at most ``max_hs``, the one of the
  highest validation FA (ties: the lower HS, then the smaller alpha).

Where no alpha qualifies, the alpha of the lowest validation HS (ties: the smaller alpha) is
taken and its row says ``met: false``. The chosen model's *test* metrics then stand in the
results as their own rows (``antidote@val``; :func:`antidote.results.selected_rows`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from .atomic import atomic_path, write_text
from .results import markdown_table

VALIDATION_SET = "harmful_validation"  # the only harmful prompts a selection may read
# selection.parquet: one row per run, defense and alpha of the curve
SELECTION_COLUMNS = ["run", "task", "seed", "defense", "alpha", "harmful_score", "finetune_accuracy",
                     "aligned_harmful_score", "criterion", "threshold", "eligible", "chosen", "met", "judge",
                     "n_validation_prompts", "n_validation_items"]


def choose_alpha(curve: pd.DataFrame, aligned_harmful_score: float, select: Mapping) -> pd.DataFrame:
    """The curve (columns ``alpha``, ``harmful_score`` and, for criterion accuracy,
    ``finetune_accuracy``; validation numbers, 0-100) sorted by alpha, with the criterion's
    ``threshold``, each alpha's ``eligible``, the one ``chosen`` and whether it ``met`` the
    criterion. A curve without an alpha, with an alpha twice, or without the numbers its
    criterion reads is refused."""
    if curve.empty:
        raise ValueError("the curve has no alpha to choose from")
    if curve["alpha"].isna().any() or curve["alpha"].duplicated().any():
        raise ValueError(f"the curve's alphas must be distinct numbers, not {curve['alpha'].tolist()}")
    criterion = select["criterion"]
    needed = ["harmful_score", *(["finetune_accuracy"] if criterion == "accuracy" else [])]
    for column in needed:
        if column not in curve or curve[column].isna().any():
            raise ValueError(f"criterion {criterion!r} reads the validation {column}, which the curve lacks")
    curve = curve.sort_values("alpha").reset_index(drop=True)
    if criterion == "margin":
        if pd.isna(aligned_harmful_score):
            raise ValueError("criterion 'margin' needs the aligned model's validation harmful score")
        threshold = aligned_harmful_score + select["margin"]
        ranking = ["alpha"]
    elif criterion == "accuracy":
        threshold = select["max_hs"]
        curve = curve.assign(_minus_accuracy=-curve["finetune_accuracy"])
        ranking = ["_minus_accuracy", "harmful_score", "alpha"]
    else:
        raise ValueError(f"unknown criterion {criterion!r}: margin or accuracy")
    # rates are shares of prompts: 17 of 60 prompts plus a 5-point margin (3 prompts) must admit
    # 20 of 60, whatever the last bits of the two floating-point percentages
    eligible = curve["harmful_score"] <= threshold + 1e-9
    met = bool(eligible.any())
    candidates = curve[eligible].sort_values(ranking) if met else curve.sort_values(["harmful_score", "alpha"])
    chosen = curve.index == candidates.index[0]
    return (curve.drop(columns="_minus_accuracy", errors="ignore")
            .assign(criterion=criterion, threshold=float(threshold), eligible=eligible, chosen=chosen, met=met))


def select_alphas(curves: pd.DataFrame, references: pd.DataFrame, select: Mapping) -> pd.DataFrame:
    """Every run's and defense's choice. ``curves``: one row per run, defense and alpha with the
    validation metrics (columns ``run``, ``task``, ``seed``, ``defense``, ``alpha``,
    ``harmful_set``, ``judge``, ``harmful_score``, ``finetune_accuracy``, ``n_test_prompts``,
    ``n_task_items``); ``references``: the aligned model's validation rows (``task``,
    ``harmful_set``, ``judge``, ``harmful_score``). Only validation numbers are accepted."""
    for name, table in [("curve", curves), ("aligned model", references)]:
        other = set(table["harmful_set"]) - {VALIDATION_SET}
        if other:
            raise ValueError(f"the {name}'s metrics are over {sorted(other)}; alpha is chosen on {VALIDATION_SET} only")
    aligned = references.set_index(["task", "judge"])["harmful_score"]
    chosen = []
    for (run, defense), curve in curves.groupby(["run", "defense"], sort=False):
        task, judge = curve["task"].iloc[0], curve["judge"].iloc[0]
        if (task, judge) not in aligned.index:
            raise ValueError(f"no validation evaluation of the aligned model on {task} by judge {judge!r}")
        decision = choose_alpha(curve, aligned[(task, judge)], select)
        chosen.append(decision.assign(aligned_harmful_score=aligned[(task, judge)]))
    table = pd.concat(chosen, ignore_index=True)
    table = table.rename(columns={"n_test_prompts": "n_validation_prompts", "n_task_items": "n_validation_items"})
    return table.reindex(columns=SELECTION_COLUMNS)


def write_selection(curve_files: list[str | Path], models: list[Mapping], reference_files: list[str | Path],
                    select: Mapping, parquet: str | Path, markdown: str | Path) -> pd.DataFrame:
    """Rule select_alpha: the validation metrics files of every curve point (``models``: their
    ``run``, ``defense`` and ``alpha``, in the same order) and of the aligned model per task ->
    ``selection.parquet`` and a Markdown table of it."""
    if len(curve_files) != len(models):
        raise ValueError(f"{len(curve_files)} metrics files for {len(models)} models")
    curves = pd.concat([pd.read_parquet(path).assign(run=m["run"], defense=m["defense"], alpha=m["alpha"])
                        for path, m in zip(curve_files, models)], ignore_index=True)
    references = pd.concat([pd.read_parquet(path) for path in reference_files], ignore_index=True)
    table = select_alphas(curves, references, select)
    with atomic_path(parquet) as temp:
        table.to_parquet(temp, index=False)
    write_text(markdown, markdown_table(table.drop(columns=["criterion"])))
    return table
