"""The results table (one row per evaluated model, judge and harmful prompt set) and the paper-style
tables made from it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from .atomic import atomic_path, write_text
from .paths import pruned_name, safelora_name, safelora_setting
from .prune import DEFENSES

REFERENCE_MODELS = ["base", "aligned"]  # the models every run is compared with
# Rows read from the unaligned base, through the undefended fine-tune, to the defenses in registry order.
MODEL_ORDER = [*REFERENCE_MODELS, "sft", *DEFENSES]
# SafeLoRA's setting (prune.safelora): how it picks the modules it projects, and the count, fraction
# or threshold; empty for every other model (SafeLoRA has no alpha)
SAFELORA_COLUMNS = ["safelora_select", "safelora_value"]
COLUMNS = ["model", "task", "harmful_ratio", "learning_rate", "epochs", "n_samples", "alpha", *SAFELORA_COLUMNS, "seed",
           "judge", "harmful_set", "harmful_score", "benign_refusal", "finetune_accuracy", "update_removed",
           "n_test_prompts", "n_benign_prompts", "n_task_items", "task_data"]
# The settings a table or plot can be drawn against (the seed is averaged over instead).
AXES = ["harmful_ratio", "learning_rate", "epochs", "n_samples", "alpha"]
AXIS_SYMBOLS = {"harmful_ratio": "p", "learning_rate": "lr", "epochs": "ep", "n_samples": "n", "alpha": "alpha"}
# Numbers from different judges, prompt sets or task data never share a row: these lead every table
# (harmful_set only where the summary holds more than one set, see :func:`single_set_hidden`).
PROVENANCE = ["judge", "harmful_set", "n_test_prompts", "task_data", "task"]
# update_removed: the percentage of the adapter's update (||B A||_F^2) that pruning removed
METRICS = {"harmful_score": "HS", "benign_refusal": "BR", "finetune_accuracy": "FA", "update_removed": "removed"}
STATISTICS = [f"{short} {stat}" for short in METRICS.values() for stat in ("mean", "std")]


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; numbers with one decimal, missing values blank."""
    def cell(value):
        if pd.api.types.is_scalar(value) and pd.isna(value):
            return ""
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 0.1 or value == 0 else f"{value:g}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def model_rank(models: pd.Series) -> pd.Series:
    """Position in MODEL_ORDER, so that rows read from the unaligned base to the defenses."""
    return models.map({m: i for i, m in enumerate(MODEL_ORDER)})


def collect_summary(metric_files: list[str | Path], parquet: str | Path, csv: str | Path,
                    markdown: str | Path) -> pd.DataFrame:
    table = pd.concat([pd.read_parquet(f) for f in metric_files], ignore_index=True)
    extra = [c for c in table.columns if c not in COLUMNS]
    table = table.reindex(columns=COLUMNS + extra)  # metrics written before a column existed leave it empty
    table = (table.assign(_rank=model_rank(table["model"]))
             .sort_values(["task", "judge", "harmful_set", "harmful_ratio", "learning_rate", "epochs", "n_samples",
                           "seed", "_rank", "alpha", *SAFELORA_COLUMNS], na_position="first", kind="stable")
             .drop(columns="_rank").reset_index(drop=True))
    with atomic_path(parquet) as temp:
        table.to_parquet(temp, index=False)
    with atomic_path(csv) as temp:
        table.to_csv(temp, index=False)
    # the markdown leaves out the benign and task item counts, and SafeLoRA's columns where it has no rows
    shown = [c for c in COLUMNS if c not in ("n_benign_prompts", "n_task_items")
             and (c not in SAFELORA_COLUMNS or table[c].notna().any())]
    write_text(markdown, markdown_table(single_set_hidden(table[shown], table)))
    return table


def single_set_hidden(table: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """``table`` without its harmful_set column where ``summary`` holds one harmful set (the
    default: the built-in split), so that a single-set run reads as before; with several sets
    the column tells their rows apart."""
    if "harmful_set" in table and summary["harmful_set"].nunique(dropna=False) <= 1:
        return table.drop(columns="harmful_set")
    return table


def run_axes(runs: Mapping[str, dict]) -> dict[str, list]:
    """The values each axis takes over the runs of a grid (``antidote.config.expand_runs``)."""
    values = {axis: sorted({run[axis] for run in runs.values()}) for axis in AXES if axis != "alpha"}
    return {**values, "alpha": sorted({a for run in runs.values() for a in run["alphas"]})}


def swept_axes(values: Mapping[str, Iterable]) -> list[str]:
    """The axes with more than one value (missing values aside): only these get a table or plot of
    their own. Takes config lists (to name a rule's outputs) or summary columns (to write them)."""
    return [axis for axis in AXES if pd.Series(list(values[axis]), dtype=float).nunique() > 1]


def table_names(axes: Iterable[str]) -> list[str]:
    """The main comparison, then one table per swept axis."""
    return ["main", *(f"by_{axis}" for axis in axes)]


def safelora_settings(rows: pd.DataFrame) -> pd.DataFrame:
    """The SafeLoRA columns of ``rows`` (empty where a table made before them lacks them)."""
    return rows.reindex(columns=SAFELORA_COLUMNS)


def setting_labels(rows: pd.DataFrame) -> pd.Series:
    """SafeLoRA's setting, short (k10), in its rows; empty in the others."""
    settings = safelora_settings(rows)
    return pd.Series([safelora_setting(s, v) if pd.notna(s) else None
                      for s, v in zip(settings["safelora_select"], settings["safelora_value"])], index=rows.index)


def defense_labels(rows: pd.DataFrame, fold_alpha: bool) -> pd.Categorical:
    """The model name, with alpha folded in (antidote-a0.1, the workflow's :func:`pruned_name`) so
    that pruned rows of different alphas stay apart, and SafeLoRA's setting always (safelora-k10,
    :func:`safelora_name`: it has no alpha); ordered base, aligned, sft, then each defense by its
    setting, so that every table and legend lists them the same way."""
    settings = safelora_settings(rows)
    labels = pd.Series([safelora_name(s, v) if pd.notna(s) else pruned_name(m, a) if fold_alpha and pd.notna(a) else m
                        for m, a, s, v in zip(rows["model"], rows["alpha"], settings["safelora_select"],
                                              settings["safelora_value"])], index=rows.index)
    order = (pd.DataFrame({"label": labels, "rank": model_rank(rows["model"]), "alpha": rows["alpha"], **settings})
             .sort_values(["rank", "alpha", *SAFELORA_COLUMNS])["label"].unique())
    return pd.Categorical(labels, categories=order, ordered=True)


def _counts_as_integers(table: pd.DataFrame) -> pd.DataFrame:
    """Epochs and sample counts read 2 and 200, not 2.0 and 200.0 (fractional epochs stay floats;
    missing values stay missing)."""
    whole = [c for c in ("epochs", "n_samples") if c in table and (table[c].dropna() % 1 == 0).all()]
    return table.astype({c: "Int64" for c in whole})


def seed_statistics(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of HS, BR and FA per `keys` (std is NaN where
    there is one seed), and how many runs each row averages."""
    grouped = rows.groupby(keys, dropna=False, observed=True)
    stats = grouped[list(METRICS)].agg(["mean", "std"])
    stats.columns = [f"{METRICS[metric]} {stat}" for metric, stat in stats.columns]
    return _counts_as_integers(stats.assign(runs=grouped.size()).reset_index())


def main_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Every model at every configured setting (base and aligned as references), seeds averaged."""
    rows = summary.assign(defense=defense_labels(summary, fold_alpha=summary["alpha"].nunique() > 1))
    return seed_statistics(rows, [*PROVENANCE, "defense", *AXES])


def _alpha_free_at_every_alpha(rows: pd.DataFrame) -> pd.DataFrame:
    """sft (not pruned) and SafeLoRA (no alpha) have no alpha: their numbers stand under every
    alpha, as each column's reference."""
    alphas = pd.DataFrame({"alpha": sorted(rows["alpha"].dropna().unique())})
    free = rows["alpha"].isna()
    spread = rows[free].drop(columns="alpha").merge(alphas, how="cross")
    return pd.concat([rows[~free], spread], ignore_index=True)


def axis_statistics(summary: pd.DataFrame, axis: str) -> pd.DataFrame:
    """HS, BR and FA of the defenses over seeds, one row per defense and value of `axis`. The other
    swept axes stay columns, so that no number averages over different settings; alpha is folded
    into the defense unless it is the axis."""
    rows = summary[summary["model"].isin(["sft", *DEFENSES])]
    if axis == "alpha":
        rows = _alpha_free_at_every_alpha(rows)
    fold_alpha = axis != "alpha" and rows["alpha"].nunique() > 1
    rows = rows.assign(defense=defense_labels(rows, fold_alpha))
    others = [a for a in swept_axes(rows) if a not in (axis, "alpha")]
    return seed_statistics(rows, [*PROVENANCE, "defense", *others, axis])


def axis_table(summary: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The paper's layout: a row per defense, and HS, BR and FA (mean, std) under each value of `axis`."""
    stats = axis_statistics(summary, axis)
    keys = [c for c in stats.columns if c not in (axis, "runs", *STATISTICS)]
    wide = stats.set_index([*keys, axis])[STATISTICS].unstack(axis)
    wide = wide.reorder_levels([1, 0], axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    wide.columns = [f"{stat} ({AXIS_SYMBOLS[axis]}={value:g})" for value, stat in wide.columns]
    return wide.reset_index()


def summary_tables(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The main comparison and a table per axis with more than one value in the results (the
    harmful_set column only where there are several sets)."""
    axes = swept_axes(summary)
    tables = [main_table(summary), *(axis_table(summary, axis) for axis in axes)]
    return dict(zip(table_names(axes), [single_set_hidden(table, summary) for table in tables]))


def mean_std_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Each "X mean ..." column and its "X std ..." column as one "X ..." column of "mean ± std"
    strings (just the mean with one seed), as the paper prints them."""
    def cell(mean, std):
        return "" if pd.isna(mean) else f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f} ± {std:.1f}"

    columns = {}
    for name in table.columns:
        if " mean" in name:
            std = table[name.replace(" mean", " std")]
            columns[name.replace(" mean", "")] = [cell(m, s) for m, s in zip(table[name], std)]
        elif " std" not in name:
            columns[name] = table[name]
    return pd.DataFrame(columns)


def write_tables(summary: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Each table as <name>.csv (numbers, mean and std apart) and <name>.md (mean ± std)."""
    folder = Path(folder)
    written = []
    for name, table in summary_tables(summary).items():
        with atomic_path(folder / f"{name}.csv") as temp:
            table.to_csv(temp, index=False)
        write_text(folder / f"{name}.md", markdown_table(mean_std_cells(table)))
        written += [folder / f"{name}.csv", folder / f"{name}.md"]
    return written
