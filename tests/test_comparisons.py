"""Intervals over seeds and paired comparisons, on results built from known per-prompt verdicts."""

import numpy as np
import pandas as pd
import pytest

from antidote.comparisons import paired_table, write_paired
from antidote.paths import evaluation_name, pruned_name, selected_name
from antidote.results import COLUMNS, Verdicts, judgement_rows, main_table, selected_rows, wilson_columns
from antidote.stats import crossed_bootstrap_interval, mcnemar_exact, paired_difference_interval, wilson_interval

PROMPTS, BENIGN, ITEMS = 40, 20, 30
RATES = {"sft": 0.9, "antidote": 0.3, "antidote-benign": 0.35, "aligned": 0.2}  # how often a prompt is flagged


def run_name(seed):
    return f"sst2-p0.2-lr0.001-ep2-n200-s{seed}"


def answers(rng, rate):
    """An answers.jsonl of random verdicts: harmful prompts flagged with probability ``rate``."""
    return ([{"kind": "harmful", "set": "harmful_test", "prompt": f"h{i}", "answer": "", "harmful[refusal]": bool(f)}
             for i, f in enumerate(rng.random(PROMPTS) < rate)]
            + [{"kind": "benign", "prompt": f"b{i}", "answer": "", "refused": bool(f)}
               for i, f in enumerate(rng.random(BENIGN) < rate / 2)]
            + [{"kind": "task", "prompt": f"t{i}", "answer": "", "label": "positive", "correct": bool(f)}
               for i, f in enumerate(rng.random(ITEMS) < 1 - rate)])


def world(seeds=(0, 1, 2)):
    """A summary (as rule collect writes it) and its judgements: aligned, and per seed sft,
    antidote at alpha 0.1 and antidote-benign at alpha 0.1, their rates computed from the verdicts."""
    rng = np.random.default_rng(0)
    records, rows = {}, []
    models = [("aligned", None, None)] + [(m, s, 0.1 if m != "sft" else None) for s in seeds
                                          for m in ("sft", "antidote", "antidote-benign")]
    for model, seed, alpha in models:
        name = (evaluation_name(model, task="sst2") if seed is None else
                evaluation_name(model if alpha is None else pruned_name(model, alpha), run=run_name(seed)))
        records[name] = answers(rng, RATES[model])
        verdicts = pd.DataFrame(judgement_rows(name, records[name]))
        rate = verdicts.groupby("metric")["outcome"].mean() * 100
        settings = {} if seed is None else dict(harmful_ratio=0.2, learning_rate=1e-3, epochs=2.0, n_samples=200.0,
                                                seed=float(seed))
        rows.append(dict(model=model, task="sst2", alpha=alpha, judge="refusal", harmful_set="harmful_test",
                         harmful_score=rate["harmful_score"], benign_refusal=rate["benign_refusal"],
                         finetune_accuracy=rate["finetune_accuracy"], update_removed=None if seed is None else 10.0,
                         n_test_prompts=PROMPTS, n_benign_prompts=BENIGN, n_task_items=ITEMS, task_data="stand-in",
                         evaluation=name, **settings))
    summary = wilson_columns(pd.DataFrame(rows).reindex(columns=COLUMNS))
    judgements = pd.DataFrame([r for name, rec in records.items() for r in judgement_rows(name, rec)])
    return summary, judgements


def matrix(judgements, names, metric="harmful_score"):
    verdicts = Verdicts(judgements)
    return np.stack([verdicts.get(n, metric, "refusal", "harmful_test") for n in names])


def antidote_names(seeds, model="antidote"):
    return [evaluation_name(pruned_name(model, 0.1), run=run_name(s)) for s in seeds]


def test_judgements_pair_prompts_by_their_place_in_each_set():
    records = [{"kind": "harmful", "set": "a", "prompt": "x", "answer": "", "harmful[refusal]": True,
                "harmful[guard:g]": False},
               {"kind": "harmful", "set": "b", "prompt": "y", "answer": "", "harmful[refusal]": False,
                "harmful[guard:g]": False},
               {"kind": "harmful", "set": "a", "prompt": "z", "answer": "", "harmful[refusal]": False,
                "harmful[guard:g]": True},
               {"kind": "benign", "prompt": "w", "answer": "", "refused": True},
               {"kind": "task", "prompt": "v", "answer": "", "label": "positive", "correct": False}]
    rows = pd.DataFrame(judgement_rows("e", records))
    assert len(rows) == 8
    harmful = rows[rows["metric"] == "harmful_score"].set_index(["judge", "harmful_set", "item"])["outcome"]
    assert harmful.to_dict() == {("refusal", "a", 0): True, ("guard:g", "a", 0): False, ("refusal", "b", 0): False,
                                 ("guard:g", "b", 0): False, ("refusal", "a", 1): False, ("guard:g", "a", 1): True}
    other = rows[rows["metric"] != "harmful_score"]
    assert other[["metric", "item", "outcome"]].values.tolist() == [["benign_refusal", 0, True],
                                                                   ["finetune_accuracy", 0, False]]
    assert other["judge"].isna().all()


def test_the_main_table_interval_is_wilson_for_one_run_and_the_seed_and_prompt_bootstrap_for_several():
    summary, judgements = world()
    table = main_table(summary, Verdicts(judgements), {"resamples": 1000, "seed": 3})
    antidote = table[table["defense"] == "antidote"].iloc[0]
    low, high = crossed_bootstrap_interval(matrix(judgements, antidote_names([0, 1, 2])), 1000, 3)
    assert (antidote["HS lo"], antidote["HS hi"]) == (pytest.approx(100 * low), pytest.approx(100 * high))
    assert antidote["HS lo"] < antidote["HS mean"] < antidote["HS hi"] and antidote["runs"] == 3
    aligned = table[table["defense"] == "aligned"].iloc[0]
    flagged = round(aligned["HS mean"] * PROMPTS / 100)
    assert (aligned["HS lo"], aligned["HS hi"]) == tuple(pytest.approx(100 * b) for b in wilson_interval(flagged, PROMPTS))
    # the same results and seed give the same table; another seed other bootstrap bounds
    pd.testing.assert_frame_equal(table, main_table(summary, Verdicts(judgements), {"resamples": 1000, "seed": 3}))
    other = main_table(summary, Verdicts(judgements), {"resamples": 1000, "seed": 4})
    assert other.loc[other["defense"] == "antidote", "HS lo"].item() != antidote["HS lo"]
    # without the verdicts a table over seeds has no interval, one run still its Wilson one
    bare = main_table(summary)
    assert bare.loc[bare["defense"] == "antidote", "HS lo"].isna().all()
    assert bare.loc[bare["defense"] == "aligned", "HS lo"].item() == pytest.approx(aligned["HS lo"])


def test_one_run_is_compared_by_newcombe_and_exact_mcnemar():
    summary, judgements = world(seeds=(0,))
    table = paired_table(summary, judgements)
    first, second = matrix(judgements, antidote_names([0])), matrix(judgements, antidote_names([0], "antidote-benign"))
    only_first, only_second = int((first * (1 - second)).sum()), int(((1 - first) * second).sum())
    both = int((first * second).sum())
    row = table[(table["metric"] == "harmful_score") & (table["defense"] == "antidote-a0.1")
                & (table["against"] == "antidote-benign-a0.1")].iloc[0]
    difference, low, high = paired_difference_interval(both, only_first, only_second,
                                                       PROMPTS - both - only_first - only_second)
    assert row["difference"] == pytest.approx(100 * difference)
    assert (row["lo"], row["hi"]) == (pytest.approx(100 * low), pytest.approx(100 * high))
    assert row["p_value"] == mcnemar_exact(only_first, only_second)
    assert (row["first_only"], row["second_only"], row["discordant"]) == (only_first, only_second,
                                                                          only_first + only_second)
    assert row["runs"] == 1 and row["prompts"] == PROMPTS and "Newcombe" in row["method"]
    # every defended model against sft and aligned, sft against aligned, antidote against its benign control;
    # antidote-setdiff did not run, so it is no pair
    pairs = table[table["metric"] == "harmful_score"][["defense", "against"]].values.tolist()
    assert sorted(pairs) == sorted([["sft", "aligned"], ["antidote-a0.1", "aligned"], ["antidote-benign-a0.1", "aligned"],
                                    ["antidote-a0.1", "sft"], ["antidote-benign-a0.1", "sft"],
                                    ["antidote-a0.1", "antidote-benign-a0.1"]])
    # benign refusal and accuracy once each, without judge or set
    assert (table["metric"].value_counts() == 6).all()
    assert table.loc[table["metric"] != "harmful_score", ["judge", "harmful_set"]].isna().all().all()
    assert table["p_holm"].ge(table["p_value"]).all()


def test_seeds_are_pooled_for_the_test_and_bootstrapped_for_the_interval():
    summary, judgements = world()
    table = paired_table(summary, judgements, {"resamples": 1000, "seed": 0})
    first, second = matrix(judgements, antidote_names([0, 1, 2])), matrix(judgements, ["reference/sst2/aligned"] * 3)
    row = table[(table["metric"] == "harmful_score") & (table["defense"] == "antidote-a0.1")
                & (table["against"] == "aligned")].iloc[0]
    only_first, only_second = int((first * (1 - second)).sum()), int(((1 - first) * second).sum())
    assert row["runs"] == 3 and (row["first_only"], row["second_only"]) == (only_first, only_second)
    assert row["p_value"] == mcnemar_exact(only_first, only_second)
    assert row["difference"] == pytest.approx(100 * (first - second).mean())
    low, high = crossed_bootstrap_interval(first - second, 1000, 0)
    assert (row["lo"], row["hi"]) == (pytest.approx(100 * low), pytest.approx(100 * high))
    # sft (flagged 90% of the time) against aligned (20%): a clear difference
    sft = table[(table["metric"] == "harmful_score") & (table["defense"] == "sft")].iloc[0]
    assert sft["lo"] > 40 and sft["p_value"] < 1e-10


def test_a_model_at_the_alpha_chosen_on_validation_data_is_compared_as_its_own_defense(tmp_path):
    summary, judgements = world(seeds=(0,))
    selection = pd.DataFrame([dict(run=run_name(0), defense=d, alpha=0.1, chosen=True)
                              for d in ("antidote", "antidote-benign")])
    with_selected = pd.concat([summary, selected_rows(summary, selection)], ignore_index=True)
    table = write_paired(with_selected, judgements, tmp_path / "paired.csv", tmp_path / "paired.md")
    hs = table[table["metric"] == "harmful_score"].set_index(["defense", "against"])
    at_val = hs.loc[(selected_name("antidote"), selected_name("antidote-benign"))]
    at_alpha = hs.loc[("antidote-a0.1", "antidote-benign-a0.1")]
    assert at_val[["difference", "lo", "hi", "p_value"]].equals(at_alpha[["difference", "lo", "hi", "p_value"]])
    assert (selected_name("antidote"), "sft") in hs.index and (selected_name("antidote"), "aligned") in hs.index
    text = (tmp_path / "paired.md").read_text()
    assert text.startswith("| metric | judge | n_test_prompts | task_data | task | defense | against | runs | "
                           "difference | discordant | p | p (Holm) |")
    assert f"| HS | refusal | {PROMPTS} | stand-in | sst2 | antidote@val | antidote-benign@val | 1 | " in text
    assert pd.read_csv(tmp_path / "paired.csv").shape == table.shape


def test_the_command_line_collects_and_compares_without_snakemake(tmp_path):
    from antidote.cli import main
    from antidote.records import write_jsonl
    from antidote.results import COLUMNS as SUMMARY_COLUMNS

    summary, judgements = world(seeds=(0,))
    metrics = []
    for name, rows in summary.groupby("evaluation"):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        rows.drop(columns="evaluation").to_parquet(folder / "metrics.parquet")
        verdicts = judgements[judgements["evaluation"] == name]
        write_jsonl(folder / "answers.jsonl",
                    [{"kind": "harmful", "set": "harmful_test", "prompt": p, "answer": "", "harmful[refusal]": o}
                     for p, o in verdicts[verdicts["metric"] == "harmful_score"][["prompt", "outcome"]].values]
                    + [{"kind": "benign", "prompt": p, "answer": "", "refused": o}
                       for p, o in verdicts[verdicts["metric"] == "benign_refusal"][["prompt", "outcome"]].values]
                    + [{"kind": "task", "prompt": p, "answer": "", "label": "positive", "correct": o}
                       for p, o in verdicts[verdicts["metric"] == "finetune_accuracy"][["prompt", "outcome"]].values])
        metrics.append(str(folder / "metrics.parquet"))
    assert main(["collect", *metrics, "--out", str(tmp_path / "summary")]) in (0, None)
    collected = pd.read_parquet(tmp_path / "summary.parquet")
    assert list(collected.columns) == SUMMARY_COLUMNS and (tmp_path / "judgements.parquet").exists()
    assert main(["paired", str(tmp_path / "summary.parquet"), "--out", str(tmp_path / "paired")]) in (0, None)
    table = pd.read_csv(tmp_path / "paired.csv")
    row = table[(table["metric"] == "harmful_score") & (table["defense"] == "antidote-a0.1")
                & (table["against"] == "antidote-benign-a0.1")]
    expected = paired_table(summary, judgements)
    expected = expected[(expected["metric"] == "harmful_score") & (expected["defense"] == "antidote-a0.1")
                        & (expected["against"] == "antidote-benign-a0.1")]
    assert row["p_value"].item() == pytest.approx(expected["p_value"].item())
    assert row["difference"].item() == pytest.approx(expected["difference"].item())


def test_verdicts_alike_everywhere_fall_back_on_the_pooled_prompts():
    """0% in every run, or two models that never disagree: the bootstrap has nothing to draw and
    would say [0, 0]; the interval is then the one-run method's over the seeds' pooled prompts."""
    from antidote.results import rate_interval

    summary, judgements = world()
    zero = judgements.assign(outcome=judgements["outcome"] & (judgements["metric"] != "finetune_accuracy"))
    rows = summary[summary["model"] == "antidote"]
    low, high = rate_interval(rows, "finetune_accuracy", Verdicts(zero), {"confidence": 0.95, "resamples": 500, "seed": 0})
    assert (low, high) == (0.0, pytest.approx(100 * wilson_interval(0, 3 * ITEMS)[1]))
    same = judgements.copy()
    benign = same["evaluation"].isin(antidote_names([0, 1, 2], "antidote-benign"))
    for name, twin in zip(antidote_names([0, 1, 2], "antidote-benign"), antidote_names([0, 1, 2])):
        same.loc[same["evaluation"] == name, "outcome"] = same.loc[same["evaluation"] == twin, "outcome"].to_numpy()
    assert benign.any()
    table = paired_table(summary, same)
    row = table[(table["metric"] == "harmful_score") & (table["defense"] == "antidote-a0.1")
                & (table["against"] == "antidote-benign-a0.1")].iloc[0]
    flagged = int(matrix(same, antidote_names([0, 1, 2])).sum())
    expected = paired_difference_interval(flagged, 0, 0, 3 * PROMPTS - flagged)
    assert (row["difference"], row["lo"], row["hi"]) == tuple(pytest.approx(100 * v) for v in expected)
    assert row["lo"] < 0 < row["hi"] and row["p_value"] == 1 and "pooled" in row["method"]


def test_runs_are_compared_with_sfts_aligned_model_and_another_aligned_model_is_a_row_of_its_own():
    """Vaccine's aligned model, a reference row beside SFT's (model aligned, align_defense
    vaccine), flags every prompt: the runs' comparisons with the aligned model stay those with
    SFT's, Vaccine's aligned model is compared with SFT's, and the main table names it aligned+vaccine."""
    summary, judgements = world(seeds=(0,))
    summary = summary.assign(align_defense="sft")
    name = evaluation_name("aligned+vaccine", task="sst2")
    vaccine = summary[summary["model"] == "aligned"].assign(align_defense="vaccine", evaluation=name, harmful_score=100.0)
    flagged = judgements[judgements["evaluation"] == "reference/sst2/aligned"].assign(evaluation=name)
    flagged.loc[flagged["metric"] == "harmful_score", "outcome"] = True
    expected = paired_table(summary, judgements)
    table = paired_table(pd.concat([summary, vaccine], ignore_index=True), pd.concat([judgements, flagged]))
    own = table["defense"] == "aligned+vaccine"
    columns = [c for c in table.columns if c != "p_holm"]   # Holm's adjustment counts the new comparisons
    pd.testing.assert_frame_equal(table.loc[~own, columns].reset_index(drop=True), expected[columns])
    harm = table[own & (table["metric"] == "harmful_score")].iloc[0]
    aligned_flags = matrix(judgements, ["reference/sst2/aligned"])
    assert harm["against"] == "aligned" and harm["runs"] == 1
    assert harm["difference"] == pytest.approx(100 * (1 - aligned_flags.mean()))
    assert (harm["first_only"], harm["second_only"]) == (int((1 - aligned_flags).sum()), 0)
    labels = main_table(pd.concat([summary, vaccine], ignore_index=True))["defense"].astype(str).tolist()
    assert labels[:2] == ["aligned", "aligned+vaccine"]
