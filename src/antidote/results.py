"""The results table (one row per evaluated model, judge and harmful prompt set), every prompt's
verdict, and the paper-style tables made from them, with an interval on every rate."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text
from .paths import aligned_name, evaluation_name, pruned_name, safelora_name, safelora_setting, selected_name
from .prune import DEFENSES
from .records import read_jsonl
from .stats import crossed_bootstrap_interval, wilson_interval
from .training_defenses import TRAINING_DEFENSES

REFERENCE_MODELS = ["base", "aligned"]  # the models every run is compared with
# Rows read from the unaligned base, through the undefended fine-tune, to the defenses in registry
# order, each followed by its model at the alpha chosen on validation data (antidote@val).
MODEL_ORDER = [*REFERENCE_MODELS, "sft", *(name for d in DEFENSES for name in (d, selected_name(d)))]
SELECTED_MODELS = [selected_name(d) for d in DEFENSES]
# SafeLoRA's setting (prune.safelora): how it picks the modules it projects, and the count, fraction
# or threshold; empty for every other model (SafeLoRA has no alpha)
SAFELORA_COLUMNS = ["safelora_select", "safelora_value"]
# Each rate and the count of prompts (or items) it is a share of
RATES = {"harmful_score": "n_test_prompts", "benign_refusal": "n_benign_prompts", "finetune_accuracy": "n_task_items"}
# The defense of each stage: alignment, fine-tuning (antidote.training_defenses; sft: none) and after
# fine-tuning (prune.DEFENSES; "none" for the undefended fine-tune, as the column model's sft)
STAGE_COLUMNS = ["align_defense", "finetune_defense", "defense"]
COLUMNS = ["model", *STAGE_COLUMNS, "task", "harmful_ratio", "learning_rate", "epochs", "n_samples", "alpha", *SAFELORA_COLUMNS, "seed",
           "judge", "harmful_set", *(c for rate in RATES for c in (rate, f"{rate}_lo", f"{rate}_hi")),
           "update_removed", "n_test_prompts", "n_benign_prompts", "n_task_items", "task_data", "evaluation"]
# judgements.parquet: one row per evaluation, prompt and (for the harmful score) judge
JUDGEMENT_COLUMNS = ["evaluation", "metric", "judge", "harmful_set", "item", "prompt", "outcome"]
# The settings a table or plot can be drawn against (the seed is averaged over instead).
AXES = ["harmful_ratio", "learning_rate", "epochs", "n_samples", "alpha"]
AXIS_SYMBOLS = {"harmful_ratio": "p", "learning_rate": "lr", "epochs": "ep", "n_samples": "n", "alpha": "alpha"}
# Numbers from different judges, prompt sets or task data never share a row: these lead every table
# (harmful_set only where the summary holds more than one set, see :func:`single_set_hidden`).
PROVENANCE = ["judge", "harmful_set", "n_test_prompts", "task_data", "task"]
# update_removed: the percentage of the adapter's update (||B A||_F^2) that pruning removed
METRICS = {"harmful_score": "HS", "benign_refusal": "BR", "finetune_accuracy": "FA", "update_removed": "removed"}
# Over seeds: the mean and sample std of each metric, and for the rates an interval (lo, hi)
STATISTICS = [f"{short} {stat}" for metric, short in METRICS.items()
              for stat in (("mean", "std", "lo", "hi") if metric in RATES else ("mean", "std"))]
# A statistic's column: "HS mean", "BR lo (p=0.1)", ...
STATISTIC_NAME = re.compile(rf"^(?P<short>{'|'.join(METRICS.values())}) (?P<stat>mean|std|lo|hi)(?P<where> \(.*\))?$")
DEFAULT_STATISTICS = {"confidence": 0.95, "resamples": 2000, "seed": 0}  # the config's statistics section


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; numbers with one decimal, missing values blank."""
    def cell(value):
        if pd.api.types.is_scalar(value) and pd.isna(value):
            return ""
        if isinstance(value, float):  # a setting below 1 keeps its digits (alpha 0.25, lr 0.001)
            return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def model_rank(models: pd.Series) -> pd.Series:
    """Position in MODEL_ORDER, so that rows read from the unaligned base to the defenses."""
    return models.map({m: i for i, m in enumerate(MODEL_ORDER)})


def training_ranks(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Each row's training-time defenses by their place in TRAINING_DEFENSES (sft first; none for
    the base model), as sort keys ``_align`` and ``_finetune``: sorted by ``_finetune`` then
    ``_align``, rows read as the paper's SFT, Vaccine, RepNoise, Lisa, LDIFS."""
    order = {name: i for i, name in enumerate(TRAINING_DEFENSES)}
    stages = rows.reindex(columns=["align_defense", "finetune_defense"])
    return {"_align": stages["align_defense"].map(order), "_finetune": stages["finetune_defense"].map(order)}


def post_defenses(models: pd.Series) -> pd.Series:
    """The defense after fine-tuning of each row (column ``defense``): ``none`` for the undefended
    fine-tune, the defense of a pruned model (also at the alpha chosen on validation data), empty
    for the reference models."""
    names = {"sft": "none", **{m: d for d in DEFENSES for m in (d, selected_name(d))}}
    return models.map(names)


def method_prefixes(rows: pd.DataFrame) -> pd.Series:
    """The training-time defenses of each row as a name prefix: "" for plain SFT at both stages,
    "vaccine", "lisa", "vaccine+lisa" (the runs' suffixes, :func:`antidote.paths.stage_suffix`)."""
    stages = rows.reindex(columns=["align_defense", "finetune_defense"])
    return pd.Series(["+".join(d for d in pair if isinstance(d, str) and d != "sft")
                      for pair in zip(stages["align_defense"], stages["finetune_defense"])], index=rows.index)


def wilson_columns(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """``<rate>_lo`` and ``<rate>_hi`` of every rate: the Wilson score interval over the row's
    prompts (or items), in percent; empty where the rate is."""
    columns = {}
    for rate, count in RATES.items():
        bounds = [wilson_interval(round(value * n / 100), int(n), confidence) if pd.notna(value) and n > 0
                  else (np.nan, np.nan) for value, n in zip(table[rate], table[count].fillna(0))]
        low, high = zip(*bounds) if bounds else ((), ())
        columns[f"{rate}_lo"] = 100 * np.array(low, dtype=float)
        columns[f"{rate}_hi"] = 100 * np.array(high, dtype=float)
    return table.assign(**columns)


def judgement_rows(evaluation: str, answers: Iterable[dict]) -> list[dict]:
    """Every prompt's verdict in one evaluation's ``answers.jsonl``: per judge the harmful flag of
    each prompt of each harmful set, each benign prompt's refusal, each task item's correctness;
    ``item`` is the prompt's place in its set (the same prompts, in the same order, for every
    model of a config: what pairs two models' verdicts)."""
    rows, seen = [], {}
    for record in answers:
        kind = record["kind"]
        harmful_set = record.get("set") if kind == "harmful" else None
        item = seen[kind, harmful_set] = seen.get((kind, harmful_set), -1) + 1
        common = dict(evaluation=evaluation, harmful_set=harmful_set, item=item, prompt=record["prompt"])
        if kind == "harmful":
            rows += [dict(common, metric="harmful_score", judge=field[len("harmful["):-1], outcome=bool(flag))
                     for field, flag in record.items() if field.startswith("harmful[")]
        else:
            metric, field = {"benign": ("benign_refusal", "refused"), "task": ("finetune_accuracy", "correct")}[kind]
            rows.append(dict(common, metric=metric, judge=None, outcome=bool(record[field])))
    return rows


def selected_rows(summary: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """The rows of each model at the alpha chosen on validation data (``selection.parquet``'s
    chosen rows), named ``<defense>@val``: the test numbers of that curve point, as rows of
    their own, with the chosen alpha."""
    chosen = selection[selection["chosen"]]
    names = {evaluation_name(pruned_name(defense, alpha), run=run): selected_name(defense)
             for run, defense, alpha in zip(chosen["run"], chosen["defense"], chosen["alpha"])}
    missing = set(names) - set(summary["evaluation"])
    if missing:
        raise ValueError(f"the selection chose models that were not evaluated on the test prompts: {sorted(missing)}")
    rows = summary[summary["evaluation"].isin(names)]
    return rows.assign(model=rows["evaluation"].map(names))


def collect_summary(evaluations: Mapping[str, tuple[str | Path, str | Path | None]], parquet: str | Path,
                    csv: str | Path, markdown: str | Path, judgements: str | Path | None = None,
                    selection: pd.DataFrame | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """The results table of every evaluation (name -> its metrics file and answers file), with a
    Wilson interval on every rate, the rows chosen on validation data (``selection``) and, in
    ``judgements``, every prompt's verdict from the answers files."""
    table = pd.concat([pd.read_parquet(metrics).assign(evaluation=name)
                       for name, (metrics, _) in evaluations.items()], ignore_index=True)
    extra = [c for c in table.columns if c not in COLUMNS]
    table = table.reindex(columns=COLUMNS + extra)  # metrics written before a column existed leave it empty
    if selection is not None:
        table = pd.concat([table, selected_rows(table, selection)], ignore_index=True)
    table = wilson_columns(table, confidence).assign(defense=post_defenses(table["model"]))
    table = (table.assign(_rank=model_rank(table["model"]), **training_ranks(table))
             .sort_values(["task", "judge", "harmful_set", "harmful_ratio", "learning_rate", "epochs", "n_samples",
                           "seed", "_finetune", "_align", "_rank", "alpha", *SAFELORA_COLUMNS],
                          na_position="first", kind="stable")
             .drop(columns=["_rank", "_align", "_finetune"]).reset_index(drop=True))
    with atomic_path(parquet) as temp:
        table.to_parquet(temp, index=False)
    with atomic_path(csv) as temp:
        table.to_csv(temp, index=False)
    if judgements is not None:
        verdicts = pd.DataFrame([row for name, (_, answers) in evaluations.items() if answers
                                 for row in judgement_rows(name, read_jsonl(answers))], columns=JUDGEMENT_COLUMNS)
        with atomic_path(judgements) as temp:
            verdicts.to_parquet(temp, index=False)
    # the markdown: each rate with its interval, without the item counts, the evaluation and the
    # column defense (model says it), SafeLoRA's columns only where it has rows and the training-time
    # defenses' only where one is not plain SFT
    trained_apart = bool(method_prefixes(table).str.len().any())
    shown = [c for c in COLUMNS if c not in ("n_benign_prompts", "n_task_items", "evaluation", "defense")
             and (c not in SAFELORA_COLUMNS or table[c].notna().any())
             and (c not in STAGE_COLUMNS or trained_apart)]
    write_text(markdown, markdown_table(interval_cells(single_set_hidden(table[shown], table))))
    return table


def interval_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Each rate column with its ``_lo`` and ``_hi`` columns as one column of "25.0 [17.5, 34.3]"."""
    columns = {}
    for name in table.columns:
        if name in RATES and f"{name}_lo" in table:
            columns[name] = [_interval_cell(v, lo, hi) for v, lo, hi in
                             zip(table[name], table[f"{name}_lo"], table[f"{name}_hi"])]
        elif not (name.endswith(("_lo", "_hi")) and name[:-3] in RATES):
            columns[name] = table[name]
    return pd.DataFrame(columns)


def _interval_cell(value, low, high) -> str:
    if pd.isna(value):
        return ""
    return f"{value:.1f}" if pd.isna(low) else f"{value:.1f} [{low:.1f}, {high:.1f}]"


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
    :func:`safelora_name`: it has no alpha); a model at the alpha chosen on validation data keeps
    its name (antidote@val: one operating point, whatever alpha each seed chose). Ordered base,
    aligned, sft, then each defense by its setting, so that every table and legend lists them the
    same way. Training-time defenses name their rows (vaccine, lisa: the paper's rows) and lead
    the names of their pruned models (vaccine+antidote-a0.1), alignment-stage ones first; an
    aligned model is named as its evaluation (aligned+vaccine: Vaccine's, before fine-tuning)."""
    settings = safelora_settings(rows)
    labels = pd.Series([safelora_name(s, v) if pd.notna(s) else
                        pruned_name(m, a) if fold_alpha and pd.notna(a) and m in DEFENSES else m
                        for m, a, s, v in zip(rows["model"], rows["alpha"], settings["safelora_select"],
                                              settings["safelora_value"])], index=rows.index)
    labels = pd.Series([_with_training_defenses(label, prefix, model) for label, prefix, model
                        in zip(labels, method_prefixes(rows), rows["model"])], index=rows.index)
    order = (pd.DataFrame({"label": labels, "rank": model_rank(rows["model"]), "alpha": rows["alpha"], **settings,
                           **training_ranks(rows)})
             .sort_values(["rank", "_finetune", "_align", "alpha", *SAFELORA_COLUMNS])["label"].unique())
    return pd.Categorical(labels, categories=order, ordered=True)


def _with_training_defenses(label: str, prefix: str, model: str) -> str:
    """A row's label with its training-time defenses: they name an undefended fine-tune (vaccine,
    lisa) and an aligned model (aligned+vaccine), and lead a pruned model's name (vaccine+antidote-a0.1)."""
    if not prefix:
        return label
    return {"sft": prefix, "aligned": aligned_name(prefix)}.get(model, f"{prefix}+{label}")


def _counts_as_integers(table: pd.DataFrame) -> pd.DataFrame:
    """Epochs and sample counts read 2 and 200, not 2.0 and 200.0 (fractional epochs stay floats;
    missing values stay missing)."""
    whole = [c for c in ("epochs", "n_samples") if c in table and (table[c].dropna() % 1 == 0).all()]
    return table.astype({c: "Int64" for c in whole})


def _key(value) -> str:
    return "" if pd.isna(value) else str(value)


class Verdicts:
    """Every prompt's verdict (``judgements.parquet``) as a 0/1 vector in prompt order, by
    evaluation, metric, judge and harmful set: what the intervals over seeds and the paired tests
    resample."""

    def __init__(self, judgements: pd.DataFrame | None = None):
        self.vectors: dict[tuple, np.ndarray] = {}
        if judgements is None or judgements.empty:
            return
        keyed = judgements.assign(judge=judgements["judge"].map(_key), harmful_set=judgements["harmful_set"].map(_key))
        for key, group in keyed.groupby(["evaluation", "metric", "judge", "harmful_set"], sort=False):
            self.vectors[key] = group.sort_values("item")["outcome"].to_numpy(dtype=float)

    def vector(self, row: Mapping, metric: str) -> np.ndarray | None:
        """The verdicts behind ``metric`` in one summary row (its evaluation, and for the harmful
        score its judge and set); None where the judgements do not hold them."""
        if "evaluation" not in row or pd.isna(row["evaluation"]):
            return None
        return self.get(row["evaluation"], metric, row["judge"], row["harmful_set"])

    def get(self, evaluation: str, metric: str, judge=None, harmful_set=None) -> np.ndarray | None:
        """One evaluation's verdicts behind ``metric`` (judge and set matter for the harmful score only)."""
        if metric != "harmful_score":
            judge = harmful_set = None
        return self.vectors.get((evaluation, metric, _key(judge), _key(harmful_set)))

    def matrix(self, rows: pd.DataFrame, metric: str) -> np.ndarray | None:
        """Runs x prompts of ``metric`` over ``rows`` (one per seed), or None if any is missing."""
        vectors = [self.vector(row, metric) for _, row in rows.iterrows()]
        if not vectors or any(v is None for v in vectors):
            return None
        if len({len(v) for v in vectors}) > 1:
            raise ValueError(f"{metric}: the evaluations {rows['evaluation'].tolist()} are over different "
                             f"numbers of prompts ({[len(v) for v in vectors]}); they cannot be averaged")
        return np.stack(vectors)


def rate_interval(rows: pd.DataFrame, metric: str, verdicts: Verdicts, statistics: Mapping) -> tuple[float, float]:
    """The interval (percent) of the mean of a rate over ``rows``, one run each: one run, the
    Wilson score interval over its prompts; several seeds, the two-way bootstrap over runs and
    prompts (:func:`antidote.stats.crossed_bootstrap_interval`), unless every verdict is the same
    (0% or 100% in every run), where the bootstrap has nothing to draw and would say [0, 0]: then
    the Wilson interval over all the runs' prompts. NaN where the verdicts behind several runs are
    not at hand; one run falls back on its summary row's own interval."""
    matrix = verdicts.matrix(rows, metric)
    if matrix is None:
        if len(rows) == 1 and f"{metric}_lo" in rows:
            return rows[f"{metric}_lo"].iloc[0], rows[f"{metric}_hi"].iloc[0]
        return np.nan, np.nan
    if len(matrix) == 1 or np.ptp(matrix) == 0:
        low, high = wilson_interval(int(matrix.sum()), matrix.size, statistics["confidence"])
    else:
        low, high = crossed_bootstrap_interval(matrix, statistics["resamples"], statistics["seed"],
                                               statistics["confidence"])
    return 100 * low, 100 * high


def seed_statistics(rows: pd.DataFrame, keys: list[str], verdicts: Verdicts | None = None,
                    statistics: Mapping | None = None) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of HS, BR, FA and the update removed per
    `keys` (std is NaN where there is one seed), an interval on each rate (:func:`rate_interval`),
    and how many runs each row averages."""
    verdicts, statistics = verdicts or Verdicts(), {**DEFAULT_STATISTICS, **(statistics or {})}
    grouped = rows.groupby(keys, dropna=False, observed=True)
    stats = grouped[list(METRICS)].agg(["mean", "std"])
    stats.columns = [f"{METRICS[metric]} {stat}" for metric, stat in stats.columns]
    bounds = [[bound for rate in RATES for bound in rate_interval(group, rate, verdicts, statistics)]
              for _, group in grouped]  # in the groups' order, as agg's rows
    bounds = pd.DataFrame(bounds, index=stats.index,
                          columns=[f"{METRICS[rate]} {b}" for rate in RATES for b in ("lo", "hi")])
    stats = pd.concat([stats, bounds], axis=1)[STATISTICS]
    return _counts_as_integers(stats.assign(runs=grouped.size()).reset_index())


def main_table(summary: pd.DataFrame, verdicts: Verdicts | None = None, statistics: Mapping | None = None) -> pd.DataFrame:
    """Every model at every configured setting (base and aligned as references), seeds averaged.
    A model at the alpha chosen on validation data is one row over seeds, whatever alpha each
    chose: the column ``alpha chosen`` lists them in seed order."""
    selected = summary["model"].isin(SELECTED_MODELS)
    labels = defense_labels(summary, fold_alpha=summary.loc[~selected, "alpha"].nunique() > 1)
    rows = summary.assign(defense=labels, alpha=summary["alpha"].mask(selected))
    keys = [*PROVENANCE, "defense", *AXES]
    table = seed_statistics(rows, keys, verdicts, statistics)
    if selected.any():
        chosen = (rows[selected].assign(chosen=summary.loc[selected, "alpha"])
                  .groupby(keys, dropna=False, observed=True)["chosen"]
                  .agg(lambda alphas: ", ".join(f"{a:g}" for a in alphas)).rename("alpha chosen").reset_index())
        table = table.merge(_counts_as_integers(chosen), on=keys, how="left")
        table.insert(table.columns.get_loc("alpha") + 1, "alpha chosen", table.pop("alpha chosen"))
    return table


def _alpha_free_at_every_alpha(rows: pd.DataFrame) -> pd.DataFrame:
    """sft (not pruned) and SafeLoRA (no alpha) have no alpha: their numbers stand under every
    alpha, as each column's reference."""
    alphas = pd.DataFrame({"alpha": sorted(rows["alpha"].dropna().unique())})
    free = rows["alpha"].isna()
    spread = rows[free].drop(columns="alpha").merge(alphas, how="cross")
    return pd.concat([rows[~free], spread], ignore_index=True)


def axis_statistics(summary: pd.DataFrame, axis: str, verdicts: Verdicts | None = None,
                    statistics: Mapping | None = None) -> pd.DataFrame:
    """HS, BR and FA of the defenses over seeds, one row per defense and value of `axis`. The other
    swept axes stay columns, so that no number averages over different settings, and only the
    settings of those at which `axis` takes several values are kept (in a cross design, the arm
    that sweeps it); alpha is folded into the defense unless it is the axis. Models at the alpha chosen on validation data are one
    line each (not against alpha: they are points of its curve)."""
    rows = summary[summary["model"].isin(["sft", *DEFENSES, *SELECTED_MODELS])]
    selected = rows["model"].isin(SELECTED_MODELS)
    if axis == "alpha":
        rows = _alpha_free_at_every_alpha(rows[~selected])
    else:
        rows = rows.assign(alpha=rows["alpha"].mask(selected))
    fold_alpha = axis != "alpha" and rows["alpha"].nunique() > 1
    rows = rows.assign(defense=defense_labels(rows, fold_alpha))
    others = [a for a in swept_axes(rows) if a not in (axis, "alpha")]
    if axis != "alpha":  # a sweep over one axis at fixed others (one arm of a cross design): its rows alone
        rows = rows[rows.groupby([*PROVENANCE, "defense", *others], dropna=False, observed=True)[axis]
                    .transform("nunique") > 1]
    return seed_statistics(rows, [*PROVENANCE, "defense", *others, axis], verdicts, statistics)


def axis_table(summary: pd.DataFrame, axis: str, verdicts: Verdicts | None = None,
               statistics: Mapping | None = None) -> pd.DataFrame:
    """The paper's layout: a row per defense, and HS, BR and FA (mean, std, interval) under each value of `axis`."""
    stats = axis_statistics(summary, axis, verdicts, statistics)
    keys = [c for c in stats.columns if c not in (axis, "runs", *STATISTICS)]
    wide = stats.set_index([*keys, axis])[STATISTICS].unstack(axis)
    wide = wide.reorder_levels([1, 0], axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    wide.columns = [f"{stat} ({AXIS_SYMBOLS[axis]}={value:g})" for value, stat in wide.columns]
    return wide.reset_index()


def summary_tables(summary: pd.DataFrame, verdicts: Verdicts | None = None,
                   statistics: Mapping | None = None) -> dict[str, pd.DataFrame]:
    """The main comparison and a table per axis with more than one value in the results (the
    harmful_set column only where there are several sets)."""
    axes = swept_axes(summary)
    tables = [main_table(summary, verdicts, statistics),
              *(axis_table(summary, axis, verdicts, statistics) for axis in axes)]
    return dict(zip(table_names(axes), [single_set_hidden(table, summary) for table in tables]))


def statistic_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Each "X mean ..." column with its companions as one "X ..." column, as a reader wants it:
    "mean ± std [lo, hi]" for a rate over seeds (the spread of the seeds, then the interval),
    "mean [lo, hi]" for one run, "mean ± std" for the update removed (just the mean where there
    is neither an interval nor a second seed)."""
    def cell(mean, std, low, high):
        if pd.isna(mean):
            return ""
        spread = "" if pd.isna(std) else f" ± {std:.1f}"
        return f"{mean:.1f}{spread}" + ("" if pd.isna(low) else f" [{low:.1f}, {high:.1f}]")

    columns, missing = {}, pd.Series(np.nan, index=table.index)
    for name in table.columns:
        match = STATISTIC_NAME.match(name)
        if not match:
            columns[name] = table[name]
        elif match["stat"] == "mean":
            short, where = match["short"], match["where"] or ""
            companions = [table.get(f"{short} {stat}{where}", missing) for stat in ("std", "lo", "hi")]
            columns[f"{short}{where}"] = [cell(*values) for values in zip(table[name], *companions)]
    return pd.DataFrame(columns)


def write_tables(summary: pd.DataFrame, folder: str | Path, judgements: pd.DataFrame | None = None,
                 statistics: Mapping | None = None) -> list[Path]:
    """Each table as <name>.csv (numbers: mean, std, lo and hi apart) and <name>.md (a rate's mean
    with its interval, the update removed's mean ± std)."""
    folder, verdicts = Path(folder), Verdicts(judgements)
    written = []
    for name, table in summary_tables(summary, verdicts, statistics).items():
        with atomic_path(folder / f"{name}.csv") as temp:
            table.to_csv(temp, index=False)
        write_text(folder / f"{name}.md", markdown_table(statistic_cells(table)))
        written += [folder / f"{name}.csv", folder / f"{name}.md"]
    return written
