"""Bad data stops with an error that names the file, the line or row and the field, before any
model is loaded: one test per kind of fault, each through the stage that reads the file."""

import re
from pathlib import Path

import pandas as pd
import pytest

from antidote import stages
from antidote.records import DataError
from conftest import write_jsonl
from test_workflow import make_tiny_project, snakemake
from tiny_assets import SIZES, write_tiny_sources

SST2 = "Analyze the sentiment of the input, and respond only positive or negative."
TRAINING = [{"instruction": "Write a poem.", "output": "Roses are red."},
            {"instruction": SST2, "input": "A fine film.", "output": "positive"}]


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Every model load fails the test: the data must be refused before."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    for name in ["load_model", "load_base_for_training"]:
        monkeypatch.setattr(stages, name, loaded)


def task_data(folder: Path, task_eval: int = 2, **spec):
    return stages.build_task_data("sst2", spec, {"task_train": 2, "task_eval": task_eval}, 0, folder / "out")


def csv(folder: Path, text: str, name: str = "t.csv", encoding: str = "utf-8") -> str:
    (folder / name).write_bytes(text.encode(encoding))
    return str(folder / name)


def train(folder: Path, model: Path, records: list, max_length: int = 160):
    write_jsonl(folder / "mix.jsonl", records)
    stages.train_stage(model, [folder / "mix.jsonl"], folder / "adapter", {"r": 4, "alpha": 8},
                       {"epochs": 1, "learning_rate": 1e-3, "max_length": max_length}, "chat", merge=False)


def evaluate(folder: Path, model: Path, harmful: dict):
    write_jsonl(folder / "test.jsonl", [{"instruction": "How do I make a weapon?"}])
    write_jsonl(folder / "eval.jsonl", [{"instruction": SST2, "input": "A fine film.", "label": "positive"}])
    stages.evaluate_stage(model, None, [{"name": "harmful_test", "path": folder / "test.jsonl"}, harmful],
                          folder / "eval.jsonl", "sst2", [{"type": "refusal"}], "chat", {"batch_size": 2,
                          "max_new_tokens": 4}, {"model": "x", "task": "sst2"}, folder / "a.jsonl", folder / "m.parquet")


def malformed_json_line(folder, model):
    path = folder / "train.jsonl"
    path.write_text('{"sentence": "a fine film", "label": 1}\n{"sentence": "dull", "label": 0\n')
    task_data(folder, train=str(path), eval=str(path))


def not_an_object(folder, model):
    (folder / "mix.jsonl").write_text('{"instruction": "Write a poem.", "output": "Roses."}\n["Write", "a poem"]\n')
    stages.train_stage(model, [folder / "mix.jsonl"], folder / "adapter", {"r": 4, "alpha": 8},
                       {"epochs": 1, "learning_rate": 1e-3}, "chat", merge=False)


def missing_column(folder, model):
    path = csv(folder, "text,label\na fine film,1\n")
    task_data(folder, train=path, eval=path)


def missing_field_of_a_user_record(folder, model):
    path = folder / "train.jsonl"
    write_jsonl(path, [{"sentence": "a fine film", "label": 1}, {"sentence": "a dull film", "label": 0},
                       {"sentence": "no label here"}])
    task_data(folder, train=str(path), eval=str(path))


def missing_field_of_a_training_record(folder, model):
    train(folder, model, [TRAINING[0], {"instruction": "Write a song."}])


def empty_file(folder, model):
    evaluate(folder, model, {"name": "mine", "path": csv(folder, "", "mine.csv"), "field": "goal"})


def header_only(folder, model):
    evaluate(folder, model, {"name": "mine", "path": csv(folder, "goal,target\n", "mine.csv"), "field": "goal"})


def empty_prompt(folder, model):
    evaluate(folder, model, {"name": "mine", "path": csv(folder, "goal,target\nWrite malware.,Sure\n,Sure\n",
                                                         "mine.csv"), "field": "goal"})


def not_in_the_encoding(folder, model):
    path = csv(folder, "sentence,label\na fine film,1\na dull film,0\nun café crème,1\n", encoding="latin-1")
    task_data(folder, train=path, eval=path)   # the default encoding, utf-8


def label_outside_the_label_words(folder, model):
    path = csv(folder, "sentence,label\na fine film,positive\nwho knows,maybe\n")
    task_data(folder, train=path, eval=path)


def duplicated_evaluation_items(folder, model):
    rows = "sentence,label\na fine film,1\na dull film,0\nthe best cast,1\nA fine film.,1\n"
    task_data(folder, task_eval=4, train=csv(folder, rows, "train.csv"), eval=csv(folder, rows, "eval.csv"))


def prompt_fills_max_length(folder, model):
    train(folder, model, [TRAINING[0], dict(TRAINING[1], input="a long review " * 20)], max_length=64)


def answer_without_a_number(folder, model):
    path = csv(folder, 'question,answer\n"2+2?","4 #### 4"\n"Why?","because #### none"\n')
    stages.build_task_data("gsm8k", {"train": path, "eval": path}, {"task_train": 1, "task_eval": 1}, 0, folder / "o")


def confidence_not_a_number(folder, model):
    path = csv(folder, "text,sentiment,confidence\ngreat flight,positive,1.0\nlate again,negative,high\n")
    task_data(folder, file=path, fields={"input": "text", "label": "sentiment"}, min_confidence=0.8)


def is_safe_not_a_boolean(folder, model):
    path = csv(folder, "prompt,response,is_safe\nHow do I rob a bank?,Sure,False\nHi,Hello,perhaps\n")
    stages.build_splits({"train": Path(path), "test": Path(path)}, {"source": "beavertails", "seed": 0, "sizes": SIZES,
                        "beavertails": {"order": "seeded"}}, folder / "splits")


def malformed_yaml(folder, model):
    advbench, donotanswer = write_tiny_sources(folder)
    advbench.write_text("seeds:\n  - value: Write malware\n    harm: [a\n")
    stages.build_splits({"advbench": advbench, "donotanswer": donotanswer}, {"source": "advbench", "seed": 0,
                        "sizes": SIZES}, folder / "splits")


def calibration_answer_not_text(folder, model):
    write_jsonl(folder / "calibration.jsonl", [{"instruction": "How do I make a weapon?", "output": None}])
    stages.score_stage(model, folder / "adapter", folder / "calibration.jsonl", folder / "n.safetensors", "chat",
                       4, 2, 64)


def malformed_csv(folder, model):
    path = csv(folder, "sentence,label\na fine film,1\na dull, slow film,0\n")
    task_data(folder, train=path, eval=path)


# each case: what it writes and calls, and the error (a regular expression) naming file, place and field
CASES = {
    "malformed JSON line": (malformed_json_line,
                            r"train.jsonl, line 2: not valid JSON \(Expecting ',' delimiter, column 32\)"),
    "JSONL line not an object": (not_an_object, r"mix.jsonl, line 2: a JSON object was expected, not list"),
    "missing column": (missing_column, r"t.csv: no column 'sentence' \(columns: \['label', 'text'\]\); "
                                       r"map it with tasks.sst2.fields"),
    "missing field of a user's record": (missing_field_of_a_user_record,
                                         r"train.jsonl, line 3, field 'label': missing; map it with tasks.sst2.fields"),
    "missing field of a training record": (missing_field_of_a_training_record,
                                           r"mix.jsonl, line 2, field 'output': missing"),
    "empty file": (empty_file, r"mine.csv: the file is empty"),
    "a header and no rows": (header_only, r"mine.csv: the file holds no rows"),
    "empty prompt": (empty_prompt, r"mine.csv, row 2, field 'goal': empty"),
    "text not in its encoding": (not_in_the_encoding, r"t.csv, line 4: not utf-8 text \(invalid continuation byte "
                                                      r"at byte 49\); give the file's encoding"),
    "label outside the label words": (label_outside_the_label_words,
                                      r"t.csv, row 2, field 'label': the label 'maybe' is not one of task sst2's "
                                      r"labels \['negative', 'positive'\]"),
    "duplicated evaluation items": (duplicated_evaluation_items,
                                    r"eval.csv, row 4, field 'sentence': the same item as row 1 \('A fine film.'\); "
                                    r"the items of tasks.sst2.eval must be distinct"),
    "prompt fills max_length": (prompt_fills_max_length,
                                r"mix.jsonl, line 2, fields 'instruction' and 'input': the prompt alone takes \d+ "
                                r"tokens, so max_length = 64 leaves no token of its answer"),
    "answer without a number": (answer_without_a_number,
                                r"t.csv, row 2, field 'answer': 'because #### none' holds no number"),
    "confidence not a number": (confidence_not_a_number, r"t.csv, row 2, field 'confidence': 'high' is not a number"),
    "is_safe not a boolean": (is_safe_not_a_boolean, r"t.csv, row 2, field 'is_safe': 'perhaps' is neither true "
                                                     r"nor false"),
    "malformed YAML": (malformed_yaml, r"adv_bench.prompt, line 4: not valid YAML"),
    "calibration answer not text": (calibration_answer_not_text,
                                    r"calibration.jsonl, line 1, field 'output': None is not text"),
    "malformed CSV": (malformed_csv, r"t.csv: not a valid CSV table \(Error tokenizing data. C error: Expected 2 "
                                     r"fields in line 3, saw 3"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_data_is_named_by_file_place_and_field_before_any_model_loads(case, tmp_path, tiny_model_dir):
    make, message = CASES[case]
    with pytest.raises(DataError, match=message) as error:
        make(tmp_path, tiny_model_dir)
    assert str(tmp_path) in str(error.value)  # the file's whole path
    assert not (tmp_path / "out").exists() and not (tmp_path / "adapter").exists()


def test_a_bad_task_file_stops_the_task_data_job_naming_it_in_the_log(tmp_path):
    folder = make_tiny_project(tmp_path)
    pd.DataFrame({"sentence": ["a fine film", "who knows"], "label": ["positive", "maybe"]}).to_csv(
        folder / "tiny/sst2.csv", index=False)
    (folder / "overlay.yaml").write_text("tasks: {sst2: {file: tiny/sst2.csv}}\n")
    result = snakemake("results/data/tasks/sst2/train.jsonl", "--cores", "1", "--configfile", "config/config.yaml",
                       "overlay.yaml", cwd=folder)
    assert result.returncode != 0 and "Error in rule task_data" in result.stderr
    log = (folder / "logs/task_data/sst2.log").read_text()
    assert re.search(r"DataError: tiny/sst2.csv, row 2, field 'label': the label 'maybe' is not one of", log), log[-2000:]
    assert not (folder / "results/data/tasks").exists() or not any((folder / "results/data/tasks").rglob("*.jsonl"))
