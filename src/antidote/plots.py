"""Figures of the results table (PNG, drawn by Agg): the safety/accuracy trade-off, and HS, BR and
FA against alpha and against every other swept axis, each rate with its interval as error bars.
One row of panels per judge and harmful prompt set (and task), so that numbers of different
judges or sets never share a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .prune import DEFENSES
from .paths import selected_name
from .results import (AXES, AXIS_SYMBOLS, MODEL_ORDER, PROVENANCE, REFERENCE_MODELS, SAFELORA_COLUMNS, SELECTED_MODELS,
                      STATISTICS, Verdicts, axis_statistics, defense_labels, method_prefixes, safelora_settings,
                      seed_statistics, setting_labels, swept_axes)

AXIS_TITLES = {
    "harmful_ratio": "harmful ratio p (fraction of fine-tuning samples)",
    "learning_rate": "fine-tuning learning rate",
    "epochs": "fine-tuning epochs",
    "n_samples": "fine-tuning samples n",
    "alpha": "pruning ratio α (fraction of each row's weights)",
}
METRIC_TITLES = {"HS": "harmful score HS (%)", "BR": "benign refusal BR (%)", "FA": "fine-tune accuracy FA (%)"}
PERCENT_LIMITS = (-3, 103)
# Colour and marker of each model in the trade-off plot. The defenses take matplotlib's cycle
# colours (C0, C1, ...) in registry order, so that the line plots (which use the cycle) colour them alike.
# A defense at the alpha chosen on validation data is a large star of its defense's colour.
STYLE = {"base": ("tab:gray", "X"), "aligned": ("tab:purple", "*"), "sft": ("black", "o"),
         **{defense: (f"C{i}", "s^Dvp<>h"[i % 8]) for i, defense in enumerate(DEFENSES)},
         **{selected_name(defense): (f"C{i}", "*") for i, defense in enumerate(DEFENSES)}}


def error_bars(mean: pd.Series, low: pd.Series, high: pd.Series) -> np.ndarray:
    """Matplotlib's asymmetric error bars (below, above) of an interval; none where it is missing."""
    return np.vstack([(mean - low).fillna(0).clip(lower=0), (high - mean).fillna(0).clip(lower=0)])


def plotted_axes(axes: Iterable[str], masked: bool = True) -> list[str]:
    """Alpha always (it is Antidote's one setting) unless no model is ``masked`` (SafeLoRA alone
    has no alpha), then every other swept axis."""
    return [*(["alpha"] if masked else []), *(axis for axis in AXES if axis in axes and axis != "alpha")]


def plot_names(axes: Iterable[str], masked: bool = True) -> list[str]:
    """The trade-off scatter, HS and FA against the update removed, then one plot per plotted axis."""
    return ["tradeoff", "by_update_removed", *(f"by_{axis}" for axis in plotted_axes(axes, masked))]


def _panels(table: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    return list(table.groupby(PROVENANCE, dropna=False, sort=True))


def _panel_title(key: tuple) -> str:
    judge, harmful_set, n_test_prompts, task_data, task = key
    prompts = f"{n_test_prompts} harmful prompts" + ("" if pd.isna(harmful_set) else f" ({harmful_set})")
    return f"judge: {judge}\n{task} ({task_data} task data), {prompts}"


def new_figure(rows: int, columns: int):
    """A figure on an Agg canvas, without pyplot's global state. matplotlib is imported here so
    that the rule files, which read plot_names, do not pay for it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6 * columns, 4.5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def save_figure(figure, path: str | Path) -> None:
    with atomic_path(path) as temp:  # its name hides the file type from matplotlib: given here
        figure.savefig(temp, dpi=110, format=Path(path).suffix[1:])


def plot_tradeoff(summary: pd.DataFrame, path: str | Path) -> None:
    """HS against FA, one point per fine-tuning run and alpha (or SafeLoRA setting), with each
    run's Wilson intervals as thin error bars, base and aligned as reference markers, and each
    defense at the alpha chosen on validation data as a star: a good defense sits low (safe) and
    to the right (still accurate)."""
    panels = _panels(summary)
    figure, axes = new_figure(len(panels), 1)
    several_alphas = summary["alpha"].nunique() > 1
    several_settings = setting_labels(summary).nunique() > 1
    for ax, (key, rows) in zip(axes[:, 0], panels):
        settings = setting_labels(rows)
        for model in [m for m in MODEL_ORDER if m in set(rows["model"])]:
            points = rows[rows["model"] == model]
            color, marker = STYLE[model]
            if {"harmful_score_lo", "finetune_accuracy_lo"} <= set(points.columns):
                ax.errorbar(points["finetune_accuracy"], points["harmful_score"], fmt="none", ecolor=color,
                            alpha=0.3, linewidth=0.8,
                            xerr=error_bars(*(points[f"finetune_accuracy{s}"] for s in ("", "_lo", "_hi"))),
                            yerr=error_bars(*(points[f"harmful_score{s}"] for s in ("", "_lo", "_hi"))))
            ax.scatter(points["finetune_accuracy"], points["harmful_score"], color=color, marker=marker,
                       s=160 if model in REFERENCE_MODELS or model in SELECTED_MODELS else 50, alpha=0.8,
                       label=model, edgecolors="black" if model in SELECTED_MODELS else "face")
            for alpha, setting, x, y in zip(points["alpha"], settings[points.index], points["finetune_accuracy"],
                                            points["harmful_score"]):
                if model in SELECTED_MODELS:
                    continue  # a point of its defense's curve, whose alpha is written there
                if several_alphas and pd.notna(alpha):
                    text = f"α={alpha:g}"
                elif several_settings and pd.notna(setting):
                    text = setting
                else:
                    continue
                ax.annotate(text, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set(xlabel=METRIC_TITLES["FA"], ylabel=METRIC_TITLES["HS"], title=_panel_title(key),
               xlim=PERCENT_LIMITS, ylim=PERCENT_LIMITS)
        ax.legend(fontsize=8)
    save_figure(figure, path)


def _line_label(keys: list[str], values: tuple) -> str:
    """The defense, then the settings of the other swept axes that tell its lines apart."""
    defense, *settings = values
    return ", ".join([str(defense), *(f"{AXIS_SYMBOLS[k]}={v:g}" for k, v in zip(keys[1:], settings))])


def plot_against(summary: pd.DataFrame, axis: str, path: str | Path, verdicts: Verdicts | None = None,
                 statistics: Mapping | None = None) -> None:
    """HS, BR and FA (mean over seeds, the interval as error bars: :func:`antidote.results.rate_interval`)
    against one axis, a line per defense and setting of the other swept axes. Against alpha, sft
    (not pruned) is a dashed horizontal line, each SafeLoRA setting (no alpha) a dotted one."""
    stats = axis_statistics(summary, axis, verdicts, statistics)
    alpha_free = set(defense_labels(summary[summary["alpha"].isna()], fold_alpha=False))
    panels = _panels(stats)
    figure, axes = new_figure(len(panels), len(METRIC_TITLES))
    line_keys = [c for c in stats.columns if c not in (*PROVENANCE, axis, "runs", *STATISTICS)]
    for row, (key, panel) in zip(axes, panels):
        for values, line in panel.groupby(line_keys, observed=True, sort=True):
            label = _line_label(line_keys, values)
            for ax, metric in zip(row, METRIC_TITLES):
                mean = line[f"{metric} mean"]
                if axis == "alpha" and values[0] == "sft":
                    ax.axhline(mean.iloc[0], color="black", linestyle="--", label=f"{label} (not pruned)")
                elif axis == "alpha" and values[0] in alpha_free:
                    ax.axhline(mean.iloc[0], linestyle=":", label=f"{label} (no alpha)")
                else:
                    ax.errorbar(line[axis].astype(float), mean, marker="o", capsize=3, label=label,
                                yerr=error_bars(mean, line[f"{metric} lo"], line[f"{metric} hi"]),
                                color="black" if values[0] == "sft" else None)
        for ax, metric in zip(row, METRIC_TITLES):
            if axis == "learning_rate":
                ax.set_xscale("log")
            ticks = sorted(panel[axis].astype(float).unique())
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.set(xlabel=AXIS_TITLES[axis], ylabel=METRIC_TITLES[metric], title=_panel_title(key),
                   ylim=PERCENT_LIMITS)
        row[0].legend(fontsize=8)
    save_figure(figure, path)


def plot_against_removed(summary: pd.DataFrame, path: str | Path, verdicts: Verdicts | None = None,
                         statistics: Mapping | None = None) -> None:
    """HS, BR and FA (mean over seeds, the interval as error bars) against the share of the
    adapter's update that pruning removed, a line per defense through its alphas (SafeLoRA: its
    settings), sft at 0 and the aligned model as a dashed reference: defenses compared at an
    equal intervention rather than at an equal alpha."""
    keys = [*PROVENANCE, "model", "alpha", *SAFELORA_COLUMNS, *(a for a in swept_axes(summary) if a != "alpha")]
    rows = summary[summary["model"].isin(["aligned", "sft", *DEFENSES])]
    stats = seed_statistics(rows.assign(**safelora_settings(rows)), keys, verdicts, statistics)
    panels = _panels(stats)
    figure, axes = new_figure(len(panels), len(METRIC_TITLES))
    others = [k for k in keys if k not in (*PROVENANCE, "model", "alpha", *SAFELORA_COLUMNS)]
    for row, (key, panel) in zip(axes, panels):
        sft = panel[panel["model"] == "sft"]
        for ax, metric in zip(row, METRIC_TITLES):
            for value in panel.loc[panel["model"] == "aligned", f"{metric} mean"].dropna():
                ax.axhline(value, color=STYLE["aligned"][0], linestyle="--", label="aligned")
            ax.errorbar(sft["removed mean"], sft[f"{metric} mean"], fmt="o", color="black", label="sft (not pruned)",
                        yerr=error_bars(*(sft[f"{metric} {stat}"] for stat in ("mean", "lo", "hi"))))
            for (model, *settings), line in panel[panel["model"].isin(DEFENSES)].groupby(["model", *others],
                                                                                         sort=False):
                line = line.sort_values(["alpha", *SAFELORA_COLUMNS])
                ax.errorbar(line["removed mean"], line[f"{metric} mean"], color=STYLE[model][0],
                            marker=STYLE[model][1], capsize=2, label=_line_label(["model", *others], (model, *settings)),
                            yerr=error_bars(*(line[f"{metric} {stat}"] for stat in ("mean", "lo", "hi"))))
            # SafeLoRA's C is no projector: it can remove more than the whole update
            right = max(PERCENT_LIMITS[1], panel["removed mean"].max() + 3)
            ax.set(xlabel="update removed (% of ||ΔW||²)", ylabel=METRIC_TITLES[metric], title=_panel_title(key),
                   xlim=(PERCENT_LIMITS[0], right), ylim=PERCENT_LIMITS)
        row[0].legend(fontsize=8)
    save_figure(figure, path)


def write_plots(summary: pd.DataFrame, folder: str | Path, judgements: pd.DataFrame | None = None,
                statistics: Mapping | None = None) -> list[Path]:
    """The plots plot_names lists: tradeoff.png, by_update_removed.png, by_<axis>.png; the
    intervals over seeds come from every prompt's verdict (``judgements``)."""
    folder, axes, masked = Path(folder), swept_axes(summary), summary["alpha"].notna().any()
    verdicts = Verdicts(judgements)
    # the post-fine-tuning defenses on plainly trained runs (a training-time baseline's undefended
    # fine-tune is no sft point); the baselines have their own lines in by_<axis>.png
    plain = summary[method_prefixes(summary) == ""]
    plot_tradeoff(plain, folder / "tradeoff.png")
    plot_against_removed(plain, folder / "by_update_removed.png", verdicts, statistics)
    for axis in plotted_axes(axes, masked):
        plot_against(summary, axis, folder / f"by_{axis}.png", verdicts, statistics)
    return [folder / f"{name}.png" for name in plot_names(axes, masked)]
