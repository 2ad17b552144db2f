"""Tables and plots of the results on a synthetic summary whose means and stds are known."""

import itertools

import pandas as pd
import pytest

from antidote.config import expand_runs
from antidote.plots import plot_names, write_plots
from antidote.results import (COLUMNS, collect_summary, main_table, markdown_table, run_axes, statistic_cells,
                              summary_tables, swept_axes, table_names, write_tables)

# HS = level + 100 p - 100 alpha + 2 seed (+5 under the moderation judge, -7 on the set "mine"): over
# seeds 0, 1, 2 the mean is the seed-0 value + 2 and the std is 2. FA = level - 10 alpha + seed:
# mean + 1, std 1. BR (benign refusal) = level + 100 alpha + seed, whatever the judge and set.
HS_LEVEL = {"sft": 80, "antidote": 20, "random": 70, "magnitude": 60}
FA_LEVEL = {"sft": 90, "antidote": 85, "random": 80, "magnitude": 75}
BR_LEVEL = {"base": 0, "aligned": 6, "sft": 2, "antidote": 30, "random": 4, "magnitude": 8}
JUDGE_OFFSET = {"refusal": 0, "moderation": 5}
SET_OFFSET = {"harmful_test": 0, "mine": -7}
SET_PROMPTS = {"harmful_test": 100, "mine": 30}


def grid_config(harmful_ratio=(0.1, 0.2), alpha=(0.05, 0.1), seed=(0, 1, 2)):
    return {"finetune": {"task": ["sst2"], "harmful_ratio": list(harmful_ratio), "learning_rate": [1e-3],
                         "epochs": [2], "n_samples": [200], "seed": list(seed)},
            "prune": {"alpha": list(alpha)}}


def synthetic_summary(config, judges=("refusal", "moderation"), sets=("harmful_test",)) -> pd.DataFrame:
    """What rule collect writes for `config`'s grid, with known numbers."""
    settings = ["harmful_ratio", "learning_rate", "epochs", "n_samples", "seed"]
    variants = [("sft", None), *itertools.product(["antidote", "random", "magnitude"], config["prune"]["alpha"])]
    rows = []
    for judge, harmful_set in itertools.product(judges, sets):
        offset = JUDGE_OFFSET[judge] + SET_OFFSET[harmful_set]
        common = dict(task="sst2", judge=judge, harmful_set=harmful_set, n_test_prompts=SET_PROMPTS[harmful_set])
        rows += [dict(common, model=m, harmful_score=hs + offset, benign_refusal=float(BR_LEVEL[m]),
                      finetune_accuracy=0.0, update_removed=None) for m, hs in [("base", 90.0), ("aligned", 10.0)]]
        for values in itertools.product(*(config["finetune"][s] for s in settings)):
            run = dict(common, **dict(zip(settings, values)))
            for model, alpha in variants:
                hs = HS_LEVEL[model] + 100 * run["harmful_ratio"] - 100 * (alpha or 0) + 2 * run["seed"]
                rows.append(dict(run, model=model, alpha=alpha, harmful_score=hs + offset,
                                 benign_refusal=BR_LEVEL[model] + 100 * (alpha or 0) + run["seed"],
                                 finetune_accuracy=FA_LEVEL[model] - 10 * (alpha or 0) + run["seed"],
                                 update_removed=500 * (alpha or 0)))
    table = pd.DataFrame(rows).assign(n_benign_prompts=50, n_task_items=50, task_data="stand-in")
    return table.reindex(columns=COLUMNS).astype({c: float for c in [*settings, "alpha"]})


@pytest.fixture(scope="module")
def summary():
    return synthetic_summary(grid_config())


def one_row(table: pd.DataFrame, **where) -> pd.Series:
    match = table[(table[list(where)] == pd.Series(where)).all(axis=1)]
    assert len(match) == 1, match
    return match.iloc[0]


def test_main_table_has_mean_and_std_over_seeds(summary):
    table = main_table(summary)
    row = one_row(table, judge="refusal", defense="antidote-a0.1", harmful_ratio=0.2)
    assert row["HS mean"] == pytest.approx(20 + 20 - 10 + 2) and row["HS std"] == pytest.approx(2)
    assert row["FA mean"] == pytest.approx(85 - 1 + 1) and row["FA std"] == pytest.approx(1)
    assert row["BR mean"] == pytest.approx(30 + 10 + 1) and row["BR std"] == pytest.approx(1)
    assert row["runs"] == 3
    aligned = one_row(table, judge="refusal", defense="aligned")
    assert aligned["HS mean"] == 10 and pd.isna(aligned["HS std"]) and aligned["runs"] == 1


def test_defenses_are_listed_in_model_order_then_by_alpha(summary):
    order = main_table(summary).query("judge == 'refusal'")["defense"].astype(str).unique().tolist()
    assert order == ["base", "aligned", "sft", "antidote-a0.05", "antidote-a0.1", "random-a0.05", "random-a0.1",
                     "magnitude-a0.05", "magnitude-a0.1"]


def test_axis_table_has_the_papers_layout(summary):
    table = summary_tables(summary)["by_harmful_ratio"]
    assert "base" not in set(table["defense"]) and "aligned" not in set(table["defense"])
    row = one_row(table, judge="refusal", defense="antidote-a0.05")
    assert row["HS mean (p=0.1)"] == pytest.approx(20 + 10 - 5 + 2) and row["HS std (p=0.1)"] == pytest.approx(2)
    assert row["HS mean (p=0.2)"] == pytest.approx(20 + 20 - 5 + 2)
    assert row["FA mean (p=0.2)"] == pytest.approx(85 - 0.5 + 1) and row["FA std (p=0.2)"] == pytest.approx(1)
    assert {"judge", "n_test_prompts", "task_data"} <= set(table.columns)


def test_by_alpha_keeps_other_swept_axes_apart_and_repeats_sft_under_every_alpha(summary):
    table = summary_tables(summary)["by_alpha"]
    assert set(table["defense"]) == {"sft", "antidote", "random", "magnitude"}
    sft = one_row(table, judge="refusal", defense="sft", harmful_ratio=0.1)
    assert sft["HS mean (alpha=0.05)"] == sft["HS mean (alpha=0.1)"] == pytest.approx(80 + 10 + 2)
    antidote = one_row(table, judge="refusal", defense="antidote", harmful_ratio=0.2)
    assert antidote["HS mean (alpha=0.1)"] == pytest.approx(20 + 20 - 10 + 2)


def test_axes_with_one_value_have_no_table_and_the_rule_names_the_same_files():
    for config, expected in [(grid_config(), ["main", "by_harmful_ratio", "by_alpha"]),
                             (grid_config(alpha=[0.1]), ["main", "by_harmful_ratio"]),
                             (grid_config(harmful_ratio=[0.2], alpha=[0.1], seed=[0]), ["main"])]:
        assert list(summary_tables(synthetic_summary(config))) == expected
        assert table_names(swept_axes(run_axes(expand_runs(config)))) == expected


def test_tables_never_mix_judges(summary):
    both = summary_tables(summary)
    for judge in JUDGE_OFFSET:
        alone = summary_tables(summary[summary["judge"] == judge])
        for name, table in both.items():
            mine = table[table["judge"] == judge].reset_index(drop=True)
            pd.testing.assert_frame_equal(mine, alone[name], check_categorical=False)


def test_several_harmful_sets_stay_apart_in_every_table():
    config = grid_config()
    both = synthetic_summary(config, sets=("harmful_test", "mine"))
    tables = summary_tables(both)
    for harmful_set in SET_OFFSET:
        alone = summary_tables(synthetic_summary(config, sets=(harmful_set,)))
        for name, table in tables.items():
            assert "harmful_set" in table.columns and table.columns[1] == "harmful_set"
            mine = table[table["harmful_set"] == harmful_set].drop(columns="harmful_set").reset_index(drop=True)
            pd.testing.assert_frame_equal(mine, alone[name], check_categorical=False)
    row = one_row(tables["main"], judge="refusal", harmful_set="mine", defense="antidote-a0.1", harmful_ratio=0.2)
    assert row["HS mean"] == pytest.approx(20 + 20 - 10 + 2 - 7) and row["n_test_prompts"] == 30
    assert row["BR mean"] == pytest.approx(30 + 10 + 1)  # over-refusal does not depend on the harmful set
    text = markdown_table(statistic_cells(tables["by_alpha"]))
    assert "| judge | harmful_set | n_test_prompts | task_data | task | defense | harmful_ratio |" in text
    assert "| refusal | mine | 30 | stand-in | sst2 | antidote | 0.2 | 30.0 ± 2.0 | 36.0 ± 1.0 |" in text


def test_summary_markdown_shows_benign_refusal_and_the_set_only_when_there_are_several(tmp_path):
    one = synthetic_summary(grid_config(harmful_ratio=[0.2], alpha=[0.1], seed=[0]), judges=("refusal",))
    two = synthetic_summary(grid_config(harmful_ratio=[0.2], alpha=[0.1], seed=[0]), judges=("refusal",),
                            sets=("harmful_test", "mine"))
    for name, table in [("one", one), ("two", two)]:
        files = {}
        for i, model in enumerate(table["model"].unique()):  # one metrics file per model, as rule evaluate writes
            files[model] = (tmp_path / f"{name}-{i}.parquet", None)
            table[table["model"] == model].drop(columns="evaluation").to_parquet(files[model][0])
        out = {ext: tmp_path / f"{name}.{ext}" for ext in ("parquet", "csv", "md")}
        collected = collect_summary(dict(reversed(files.items())), out["parquet"], out["csv"], out["md"])
        assert list(collected.columns) == COLUMNS and len(collected) == len(table)
    header = ("| model | task | harmful_ratio | learning_rate | epochs | n_samples | alpha | seed | judge | "
              "harmful_score | benign_refusal | finetune_accuracy | update_removed | n_test_prompts | task_data |")
    assert (tmp_path / "one.md").read_text().splitlines()[0] == header
    # each rate with its Wilson interval over the row's prompts: 30 of 100, 20 of 50, 42 of 50
    assert ("| antidote | sst2 | 0.2 | 0.001 | 2.0 | 200.0 | 0.1 | 0.0 | refusal | 30.0 [21.9, 39.6] | "
            "40.0 [27.6, 53.8] | 84.0 [71.5, 91.7] | 50.0 | 100 | stand-in |") \
        in (tmp_path / "one.md").read_text()
    lines = (tmp_path / "two.md").read_text().splitlines()
    assert lines[0] == header.replace("| judge | harmful_score |", "| judge | harmful_set | harmful_score |")
    # each set is a block of its own, in model order
    assert [line.split(" | ")[0].strip("| ") for line in lines[2:]] == ["base", "aligned", "sft", "antidote",
                                                                       "random", "magnitude"] * 2
    assert [line.split(" | ")[9] for line in lines[2:]] == ["harmful_test"] * 6 + ["mine"] * 6
    assert ("| antidote | sst2 | 0.2 | 0.001 | 2.0 | 200.0 | 0.1 | 0.0 | refusal | mine | 23.0 [11.8, 40.9] | "
            "40.0 [27.6, 53.8] | 84.0 [71.5, 91.7] | 50.0 | 30 |") \
        in "\n".join(lines)


def test_one_seed_leaves_the_std_blank():
    table = main_table(synthetic_summary(grid_config(seed=[0])))
    assert table["HS std"].isna().all() and (table["runs"] == 1).all()
    text = markdown_table(statistic_cells(table.drop(columns="harmful_set")))
    assert "±" not in text
    assert "| refusal | 100 | stand-in | sst2 | sft | 0.1 | 0.001 | 2 | 200 |  | 90.0 | 2.0 | 90.0 | 0.0 | 1 |" in text


def test_write_tables_writes_csv_with_numbers_and_markdown_with_mean_std(summary, tmp_path):
    written = write_tables(summary, tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.{ext}" for n in ["main", "by_harmful_ratio", "by_alpha"]
                                                     for ext in ("csv", "md"))
    csv = pd.read_csv(tmp_path / "by_harmful_ratio.csv")
    assert csv["HS std (p=0.1)"].dropna().eq(2).all()
    markdown = (tmp_path / "by_harmful_ratio.md").read_text()
    # one harmful set (the default): no harmful_set column, the tables read as before plus BR
    assert "| judge | n_test_prompts | task_data | task | defense | HS (p=0.1) | BR (p=0.1) | FA (p=0.1) |" in markdown
    assert "| refusal | 100 | stand-in | sst2 | antidote-a0.05 | 27.0 ± 2.0 | 36.0 ± 1.0 | 85.5 ± 1.0 |" in markdown


@pytest.mark.parametrize("config,sets", [(grid_config(), ("harmful_test",)),
                                         (grid_config(harmful_ratio=[0.2], alpha=[0.1], seed=[0]), ("harmful_test",)),
                                         (grid_config(alpha=[0.1], seed=[0]), ("harmful_test", "mine"))])
def test_plots_are_written_as_png(config, sets, tmp_path):
    summary = synthetic_summary(config, sets=sets)
    written = write_plots(summary, tmp_path)
    assert [p.stem for p in written] == plot_names(swept_axes(run_axes(expand_runs(config))))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    for path in written:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def with_safelora(summary: pd.DataFrame, settings=(("count", 10), ("threshold", 0.5))) -> pd.DataFrame:
    """``summary`` plus SafeLoRA rows (no alpha) at each setting: sft's numbers, HS lower by the value."""
    sft = summary[summary["model"] == "sft"]
    rows = [sft.assign(model="safelora", safelora_select=select, safelora_value=float(value),
                       harmful_score=sft["harmful_score"] - value, update_removed=40.0 + value)
            for select, value in settings]
    return pd.concat([summary, *rows], ignore_index=True)


def test_safelora_rows_are_named_by_their_setting_and_repeat_under_every_alpha(summary):
    both = with_safelora(summary)
    main = main_table(both)
    order = main.query("judge == 'refusal'")["defense"].astype(str).unique().tolist()
    assert order[-2:] == ["safelora-k10", "safelora-t0.5"]  # after the masking defenses, by setting
    row = one_row(main, judge="refusal", defense="safelora-k10", harmful_ratio=0.2)
    assert row["HS mean"] == pytest.approx(80 + 20 + 2 - 10) and row["runs"] == 3 and pd.isna(row["alpha"])
    by_alpha = summary_tables(both)["by_alpha"]
    threshold = one_row(by_alpha, judge="refusal", defense="safelora-t0.5", harmful_ratio=0.1)
    assert threshold["HS mean (alpha=0.05)"] == threshold["HS mean (alpha=0.1)"] == pytest.approx(80 + 10 + 2 - 0.5)
    by_ratio = summary_tables(both)["by_harmful_ratio"]
    assert one_row(by_ratio, judge="refusal", defense="safelora-k10")["HS mean (p=0.1)"] == pytest.approx(82)
    # and without SafeLoRA the tables are those of before
    for name, table in summary_tables(summary).items():
        mine = summary_tables(both)[name]
        mine = mine[~mine["defense"].astype(str).str.startswith("safelora")].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, table, check_categorical=False)


def test_summary_markdown_shows_safelora_settings_only_with_safelora_rows(tmp_path):
    table = with_safelora(synthetic_summary(grid_config(harmful_ratio=[0.2], alpha=[0.1], seed=[0]),
                                            judges=("refusal",)), settings=[("count", 10)])
    table.to_parquet(tmp_path / "metrics.parquet")
    out = {ext: tmp_path / f"summary.{ext}" for ext in ("parquet", "csv", "md")}
    collected = collect_summary({"all": (tmp_path / "metrics.parquet", None)}, out["parquet"], out["csv"], out["md"])
    assert collected["model"].tolist()[-1] == "safelora"
    lines = out["md"].read_text().splitlines()
    assert "| alpha | safelora_select | safelora_value | seed |" in lines[0]
    assert lines[-1].startswith("| safelora | sst2 | 0.2 | 0.001 | 2.0 | 200.0 |  | count | 10.0 | 0.0 | refusal |")


def test_plots_with_safelora_are_written(summary, tmp_path):
    written = write_plots(with_safelora(summary), tmp_path)
    assert [p.stem for p in written] == ["tradeoff", "by_update_removed", "by_alpha", "by_harmful_ratio"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_safelora_alone_has_no_alpha_plot(tmp_path):
    only = with_safelora(synthetic_summary(grid_config(alpha=[0.1])))
    only = only[~only["model"].isin(["antidote", "random", "magnitude"])]
    written = write_plots(only, tmp_path)
    assert [p.stem for p in written] == plot_names(swept_axes(only), masked=False) == [
        "tradeoff", "by_update_removed", "by_harmful_ratio"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
