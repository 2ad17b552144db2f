"""Choosing alpha on validation data (antidote.selection) on constructed curves."""

import pandas as pd
import pytest

from antidote.selection import choose_alpha, select_alphas, write_selection

MARGIN = {"criterion": "margin", "margin": 5}
ACCURACY = {"criterion": "accuracy", "max_hs": 30}


def curve(*points):
    """(alpha, validation HS, validation FA) points, in any order."""
    return pd.DataFrame(points, columns=["alpha", "harmful_score", "finetune_accuracy"])


def chosen(decision: pd.DataFrame) -> float:
    assert decision["chosen"].sum() == 1
    return decision.loc[decision["chosen"], "alpha"].item()


def test_margin_picks_the_smallest_alpha_within_the_margin_of_the_aligned_model():
    points = curve((0.2, 18, 0), (0.05, 40, 60), (0.1, 24, 30), (0.01, 80, 70))
    decision = choose_alpha(points, aligned_harmful_score=19, select=MARGIN)
    assert chosen(decision) == 0.1  # HS 24 <= 19 + 5; 0.05 (HS 40) is not
    assert decision["alpha"].tolist() == [0.01, 0.05, 0.1, 0.2]
    assert decision["eligible"].tolist() == [False, False, True, True] and decision["met"].all()
    assert (decision["threshold"] == 24).all()  # the bound itself qualifies
    assert chosen(choose_alpha(points, 19, {"criterion": "margin", "margin": 25})) == 0.05
    # 20 of 60 prompts is within 5 points of 17 of 60, however the percentages round
    at_bound = choose_alpha(curve((0.1, 100 * 20 / 60, 0), (0.2, 10, 0)), 100 * 17 / 60, MARGIN)
    assert chosen(at_bound) == 0.1 and at_bound["met"].all()
    # never below: the aligned level is a ceiling, not a target
    assert chosen(choose_alpha(curve((0.05, 2, 50), (0.1, 1, 10)), 19, MARGIN)) == 0.05


def test_accuracy_picks_the_best_validation_accuracy_under_max_hs():
    points = curve((0.05, 40, 60), (0.1, 25, 30), (0.2, 18, 0), (0.15, 28, 30))
    assert chosen(choose_alpha(points, 19, ACCURACY)) == 0.1  # FA 30 ties with 0.15; HS 25 < 28
    assert chosen(choose_alpha(points, 19, {"criterion": "accuracy", "max_hs": 45})) == 0.05
    assert chosen(choose_alpha(curve((0.1, 20, 30), (0.2, 20, 30)), 19, ACCURACY)) == 0.1  # then the smaller alpha


def test_no_alpha_qualifying_takes_the_lowest_validation_hs_and_says_so():
    points = curve((0.05, 60, 60), (0.1, 45, 30), (0.2, 45, 0))
    for select in (MARGIN, ACCURACY):
        decision = choose_alpha(points, 19, select)
        assert chosen(decision) == 0.1 and not decision["met"].any() and not decision["eligible"].any()


def test_a_curve_that_cannot_be_chosen_from_is_refused():
    with pytest.raises(ValueError, match="no alpha to choose from"):
        choose_alpha(curve(), 19, MARGIN)
    with pytest.raises(ValueError, match="distinct numbers"):
        choose_alpha(curve((0.1, 20, 30), (0.1, 25, 40)), 19, MARGIN)
    with pytest.raises(ValueError, match="reads the validation finetune_accuracy"):
        choose_alpha(curve((0.1, 20, None)), 19, ACCURACY)
    with pytest.raises(ValueError, match="aligned model's validation harmful score"):
        choose_alpha(curve((0.1, 20, 30)), float("nan"), MARGIN)


def validation_rows(run, defense, points, harmful_set="harmful_validation"):
    return pd.DataFrame([dict(run=run, task="sst2", seed=0, defense=defense, alpha=a, harmful_set=harmful_set,
                              judge="refusal", harmful_score=hs, finetune_accuracy=fa, n_test_prompts=60,
                              n_task_items=0) for a, hs, fa in points])


def test_every_run_and_defense_gets_its_own_alpha_and_only_validation_numbers_are_read():
    curves = pd.concat([validation_rows("s0", "antidote", [(0.05, 40, None), (0.1, 20, None)]),
                        validation_rows("s1", "antidote", [(0.05, 22, None), (0.1, 15, None)]),
                        validation_rows("s0", "random", [(0.05, 90, None), (0.1, 85, None)])])
    aligned = pd.DataFrame([dict(task="sst2", judge="refusal", harmful_set="harmful_validation", harmful_score=19.0)])
    table = select_alphas(curves, aligned, MARGIN)
    picks = table[table["chosen"]].set_index(["run", "defense"])
    assert picks["alpha"].to_dict() == {("s0", "antidote"): 0.1, ("s1", "antidote"): 0.05, ("s0", "random"): 0.1}
    assert picks["met"].to_dict() == {("s0", "antidote"): True, ("s1", "antidote"): True, ("s0", "random"): False}
    assert (table["aligned_harmful_score"] == 19).all() and (table["n_validation_prompts"] == 60).all()
    with pytest.raises(ValueError, match=r"the curve's metrics are over \['harmful_test'\]"):
        select_alphas(validation_rows("s0", "antidote", [(0.1, 20, None)], "harmful_test"), aligned, MARGIN)
    with pytest.raises(ValueError, match=r"aligned model's metrics are over \['harmful_test'\]"):
        select_alphas(curves, aligned.assign(harmful_set="harmful_test"), MARGIN)
    with pytest.raises(ValueError, match="no validation evaluation of the aligned model on sst2 by judge 'refusal'"):
        select_alphas(curves, aligned.assign(judge="other"), MARGIN)


def test_write_selection_reads_the_metrics_files_it_is_given(tmp_path):
    files, models = [], []
    for alpha, hs in [(0.05, 40.0), (0.1, 20.0), (0.2, 18.0)]:
        files.append(tmp_path / f"a{alpha}.parquet")
        validation_rows("s0", "antidote", [(alpha, hs, None)]).drop(columns=["run", "defense", "alpha"]) \
            .assign(model="antidote", alpha=alpha).to_parquet(files[-1])
        models.append(dict(run="s0", model=f"antidote-a{alpha}", defense="antidote", alpha=alpha))
    reference = tmp_path / "aligned.parquet"
    pd.DataFrame([dict(task="sst2", judge="refusal", harmful_set="harmful_validation", harmful_score=19.0,
                       model="aligned")]).to_parquet(reference)
    table = write_selection(files, models, [reference], MARGIN, tmp_path / "selection.parquet", tmp_path / "sel.md")
    assert table.loc[table["chosen"], "alpha"].tolist() == [0.1]
    assert pd.read_parquet(tmp_path / "selection.parquet").equals(table)
    assert "| s0 | sst2 | 0 | antidote | 0.1 | 20.0 |" in (tmp_path / "sel.md").read_text()
    with pytest.raises(ValueError, match="3 metrics files for 2 models"):
        write_selection(files, models[:2], [reference], MARGIN, tmp_path / "x.parquet", tmp_path / "x.md")
