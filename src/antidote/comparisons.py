"""Paired comparisons: two models that answered the same prompts, tested on the pairs (rule paired).

Every defended model of a run (each defense at each alpha, each SafeLoRA setting, each model at
the alpha chosen on validation data) is compared with the run's fine-tuned model (``sft``) and
with the aligned model of its task; ``sft`` with the aligned model; and each defense with its
controls at the same alpha (:data:`CONTROLS`: Antidote against ``antidote-benign`` and
``antidote-setdiff``). Per metric (the harmful score per judge and harmful set, the benign
refusal, the fine-tune accuracy) and setting, over the seeds:

- one run: the difference in points (first model minus second), Newcombe's score interval for
  paired proportions, and the exact McNemar test on the discordant prompts;
- several seeds: the mean difference, the two-way bootstrap interval over runs and prompts, and
  the exact McNemar test on the discordant prompts of all seeds pooled (stratified by seed).

``p_value`` is each comparison's own; ``p_holm`` adjusts the whole table as one family (Holm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text
from .paths import pruned_name, selected_name
from .prune import DEFENSES
from .results import (DEFAULT_STATISTICS, METRICS, RATES, REFERENCE_MODELS, Verdicts, defense_labels, markdown_table,
                      method_prefixes, swept_axes)
from .stats import crossed_bootstrap_interval, holm, mcnemar_exact, paired_difference_interval

# A defense's controls, compared with it at the same alpha (and at the alpha each chose on validation data)
CONTROLS = {"antidote": ["antidote-benign", "antidote-setdiff"]}
RUN_SETTINGS = ["task", "harmful_ratio", "learning_rate", "epochs", "n_samples"]  # with the seed: a run
PAIRED_COLUMNS = ["metric", "judge", "harmful_set", "n_test_prompts", "task_data", *RUN_SETTINGS, "defense", "against",
                  "runs", "prompts", "difference", "lo", "hi", "p_value", "p_holm", "discordant", "first_only",
                  "second_only", "method"]
METHODS = {"one run": "Newcombe interval, exact McNemar",
           "seeds": "bootstrap over runs and prompts, exact McNemar on the seeds' pooled discordant prompts",
           "seeds, no discordant prompt": "Newcombe interval and exact McNemar on the seeds' pooled prompts"}
_DEFENSE_OF = {selected_name(d): d for d in DEFENSES}


def _partners(model: str, alpha: float) -> list[str]:
    """The labels (as :func:`antidote.results.defense_labels` with alpha folded in) a run's model is
    compared with: sft (unless it is sft), the aligned model, its controls at the same alpha."""
    partners = (["sft"] if model != "sft" else []) + ["aligned"]
    if model in CONTROLS:
        partners += [pruned_name(control, alpha) for control in CONTROLS[model]]
    elif model in _DEFENSE_OF:
        partners += [selected_name(control) for control in CONTROLS.get(_DEFENSE_OF[model], [])]
    return partners


def comparison_pairs(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per compared pair of evaluations and metric: the settings, ``defense`` and
    ``against`` (labels), ``first`` and ``second`` (evaluation names). A control that did not
    run (antidote-setdiff in the default run) is no pair. An alignment-stage defense's aligned
    model (aligned+vaccine) is compared with SFT's, before any fine-tuning."""
    rows = summary.assign(defense=defense_labels(summary, fold_alpha=True).astype(str))
    references = rows[rows["model"].isin(REFERENCE_MODELS)]
    runs = rows[~rows["model"].isin(REFERENCE_MODELS)]
    by_label = {(*(r[k] for k in RUN_SETTINGS), r["seed"], r["judge"], r["harmful_set"], r["defense"]): r["evaluation"]
                for _, r in runs.iterrows()}
    # every run against SFT's aligned model (a Vaccine or RepNoise aligned model is a reference row of its own)
    aligned_rows = references[references["model"] == "aligned"]
    sft_aligned = method_prefixes(aligned_rows) == ""
    aligned = {(r["task"], r["judge"], r["harmful_set"]): r["evaluation"]
               for _, r in aligned_rows[sft_aligned].iterrows()}
    candidates = [(row, partner, aligned.get((row["task"], row["judge"], row["harmful_set"])) if partner == "aligned"
                   else by_label.get((*(row[k] for k in RUN_SETTINGS), row["seed"], row["judge"], row["harmful_set"],
                                      partner)))
                  for _, row in runs.iterrows() for partner in _partners(row["model"], row["alpha"])]
    # and each alignment-stage defense's aligned model against SFT's, before any fine-tuning
    candidates += [(row, "aligned", aligned.get((row["task"], row["judge"], row["harmful_set"])))
                   for _, row in aligned_rows[~sft_aligned].iterrows()]
    pairs = []
    for row, partner, second in candidates:
        if second is None:
            continue
        settings = {k: row[k] for k in ["judge", "harmful_set", "n_test_prompts", "task_data", *RUN_SETTINGS, "seed"]}
        for metric in RATES:  # benign refusal and accuracy do not depend on the judge or set: kept once below
            only_harm = {} if metric == "harmful_score" else dict(judge=None, harmful_set=None, n_test_prompts=None)
            pairs.append({**settings, **only_harm, "metric": metric, "defense": row["defense"], "against": partner,
                          "first": row["evaluation"], "second": second})
    pairs = pd.DataFrame(pairs)
    if pairs.empty:
        return pairs
    # antidote@val shares its evaluation with a curve point: the labels, not the files, tell pairs apart
    return pairs.drop_duplicates(["metric", "judge", "harmful_set", "defense", "against", "first", "second"])


def compare(first: np.ndarray, second: np.ndarray, statistics: Mapping) -> dict:
    """One comparison of two models' verdicts (runs x prompts each, the same prompts in each run).
    Over seeds without a single discordant prompt the bootstrap would say [0, 0]: the seeds'
    prompts are then pooled as one run's."""
    both = int((first * second).sum())
    first_only = int((first * (1 - second)).sum())
    second_only = int(((1 - first) * second).sum())
    neither = first.size - both - first_only - second_only
    if len(first) == 1 or first_only + second_only == 0:
        difference, low, high = paired_difference_interval(both, first_only, second_only, neither,
                                                           statistics["confidence"])
        method = METHODS["one run" if len(first) == 1 else "seeds, no discordant prompt"]
    else:
        difference = float((first - second).mean())
        low, high = crossed_bootstrap_interval(first - second, statistics["resamples"], statistics["seed"],
                                               statistics["confidence"])
        method = METHODS["seeds"]
    return dict(runs=len(first), prompts=first.shape[1], difference=100 * difference, lo=100 * low, hi=100 * high,
                p_value=mcnemar_exact(first_only, second_only), discordant=first_only + second_only,
                first_only=first_only, second_only=second_only, method=method)


def paired_table(summary: pd.DataFrame, judgements: pd.DataFrame, statistics: Mapping | None = None) -> pd.DataFrame:
    """Every comparison of :func:`comparison_pairs`, over the seeds of each setting (the run
    settings that take one value in the summary are left out of the table)."""
    statistics = {**DEFAULT_STATISTICS, **(statistics or {})}
    pairs, verdicts = comparison_pairs(summary), Verdicts(judgements)
    if pairs.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    keys = [c for c in PAIRED_COLUMNS[:PAIRED_COLUMNS.index("runs")]]
    rows = []
    for key, group in pairs.groupby(keys, dropna=False, sort=False):
        metric, judge, harmful_set = key[:3]
        first, second = ([verdicts.get(e, metric, judge, harmful_set) for e in group[side]]
                         for side in ("first", "second"))
        missing = [e for e, v in zip([*group["first"], *group["second"]], first + second) if v is None]
        if missing:
            raise ValueError(f"judgements.parquet holds no {metric} verdicts of {sorted(set(missing))}")
        rows.append({**dict(zip(keys, key)), **compare(np.stack(first), np.stack(second), statistics)})
    table = pd.DataFrame(rows).astype({"n_test_prompts": "Int64"})
    table["p_holm"] = holm(table["p_value"])
    order = {name: i for i, name in enumerate(defense_labels(summary, fold_alpha=True).categories)}
    table = (table.assign(_metric=table["metric"].map({m: i for i, m in enumerate(RATES)}),
                          _defense=table["defense"].map(order), _against=table["against"].map(order))
             .sort_values(["_metric", "judge", "harmful_set", "task", "_against", "_defense", *RUN_SETTINGS[1:]],
                          kind="stable", na_position="first")
             .drop(columns=["_metric", "_defense", "_against"]))
    constant = [axis for axis in RUN_SETTINGS[1:] if axis not in swept_axes(summary)]
    return table[[c for c in PAIRED_COLUMNS if c not in constant]].reset_index(drop=True)


def _difference_cell(row) -> str:
    return f"{row['difference']:+.1f} [{row['lo']:+.1f}, {row['hi']:+.1f}]"


def _p_cell(p: float) -> str:
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def write_paired(summary: pd.DataFrame, judgements: pd.DataFrame, csv: str | Path, markdown: str | Path,
                 statistics: Mapping | None = None) -> pd.DataFrame:
    """``paired.csv`` (every column) and ``paired.md`` (the difference with its interval, the
    p-values and the discordant prompts, first model's / second's)."""
    table = paired_table(summary, judgements, statistics)
    with atomic_path(csv) as temp:
        table.to_csv(temp, index=False)
    shown = table.assign(metric=table["metric"].map(METRICS), difference=table.apply(_difference_cell, axis=1)
                         if len(table) else [],
                         p=table["p_value"].map(_p_cell), **{"p (Holm)": table["p_holm"].map(_p_cell)},
                         discordant=[f"{d} ({a}/{b})" for d, a, b in
                                     zip(table["discordant"], table["first_only"], table["second_only"])])
    hidden = ["lo", "hi", "p_value", "p_holm", "first_only", "second_only", "method", "prompts"]
    if summary["harmful_set"].nunique(dropna=True) <= 1:
        hidden.append("harmful_set")
    write_text(markdown, markdown_table(shown.drop(columns=hidden)))
    return table
